//! The operator's side of issue 13, through the binary: config mistakes said in the user's
//! words, `status` after a clean stop and for long-silent nodes, `certs --json` and `--wide`,
//! output into a closed pipe, and the hint for a privileged port without the capability.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use common::{Node, bin, run_cli};
use store::Storage;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `fleetgate check` on `body` (after a `[storage]` section): exit 1 and stderr's one line.
fn check_error(dir: &Path, body: &str) -> Result<(String, String)> {
    let config = dir.join("fleetgate.toml");
    let text_in = format!(
        "[storage]\npath = \"{}\"\n\n{body}",
        dir.join("data").display()
    );
    std::fs::write(&config, text_in)?;
    let out = run_cli(&["check"], &config);
    anyhow::ensure!(
        out.status.code() == Some(1),
        "check accepted:\n{body}\n{}",
        text(&out.stdout)
    );
    Ok((config.display().to_string(), text(&out.stderr)))
}

#[test]
fn config_mistakes_name_the_key_and_say_what_was_expected() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let site = "[[site]]\ndomains = [\"a.fleet.test\"]\ntls = \"internal\"\n";
    let cases = [
        // `[site]` for `[[site]]`: line 4 is `[site]`, after the three lines of [storage].
        (
            "[site]\ndomains = [\"a.fleet.test\"]\ntls = \"internal\"\nrespond = { status = 200 }\n"
                .to_string(),
            ":4: site: write [[site]] (two brackets) to start each site",
        ),
        (
            format!(
                "{site}proxy = {{ upstreams = [\"127.0.0.1:9\"], connect_timeout = 5 }}\n"
            ),
            ":7: site[0].proxy.connect_timeout: expected a duration like \"5s\"",
        ),
        (
            format!("{site}[site.proxy]\nupstreams = [\"127.0.0.1:9\"]\nread_timeout = 30\n"),
            ":9: site[0].proxy.read_timeout: expected a duration like \"5s\"",
        ),
        (
            "[limits]\nidle_timeout = 60\n".to_string(),
            ":5: limits.idle_timeout: expected a duration like \"5s\" (in quotes; units ms, s, m, h, d), got 60",
        ),
        (
            "[limits]\nmax_connections = \"many\"\n".to_string(),
            ":5: limits.max_connections: expected a whole number, 0 or more, got \"many\"",
        ),
        (
            format!("{site}redirect = {{ to = \"https://b.fleet.test\", keep_path = \"yes\" }}\n"),
            ":7: site[0].redirect.keep_path: expected true or false, got \"yes\"",
        ),
        (
            "[[site]]\ndomains = \"a.fleet.test\"\n".to_string(),
            ":5: site[0].domains: expected a list in brackets, like [\"a\", \"b\"], got \"a.fleet.test\"",
        ),
        (
            "[listen]\nhttp = 80\n".to_string(),
            ":5: listen.http: expected an address like \"0.0.0.0:443\" (in quotes), got 80",
        ),
    ];
    for (body, says) in cases {
        let (config, stderr) = check_error(dir.path(), &body)?;
        let expected = format!("error: {config}{says}");
        assert!(
            stderr.starts_with(&expected),
            "for\n{body}\nexpected {expected}\ngot {stderr}"
        );
        eprintln!("{}", stderr.trim_end());
    }
    Ok(())
}

/// A heartbeat as a node writes it (`nodes/<name>.json`).
fn heartbeat(node: &str, last_seen: i64, stopped_at: Option<i64>) -> serde_json::Value {
    serde_json::json!({
        "node": node,
        "version": "0.0.0",
        "started_at": last_seen - 3600,
        "last_seen": last_seen,
        "listen_http": "127.0.0.1:1",
        "listen_https": "127.0.0.1:2",
        "certificates": 0,
        "stopped_at": stopped_at,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_a_clean_stop_and_drops_long_silent_nodes() -> Result<()> {
    let mut node = Node::new(
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        "[[site]]\ndomains = [\"app.fleet.test\"]\ntls = \"internal\"\nrespond = { status = 200 }\n",
    )?;
    node.start().await?;
    let name = node.ip.to_string();
    let up = testkit::wait_for("the node up in status", Duration::from_secs(20), || async {
        let out = node.command(&["status"]);
        let table = text(&out.stdout);
        table
            .lines()
            .any(|l| l.contains(&name) && l.contains(" up "))
            .then_some(table)
    })
    .await?;
    eprintln!("{up}");
    let status = node.stop().await?;
    assert!(status.success(), "{status:?}");

    // Stopped cleanly: said at once, in the table and in JSON.
    let out = node.command(&["status"]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        table
            .lines()
            .any(|l| l.contains(&name) && l.contains(" stopped ")),
        "{table}"
    );
    eprintln!("{table}");

    // Nodes as the store holds them after a while: one stopped 20 minutes ago, one silent
    // for two days (killed), one silent for five minutes.
    let store = store::DirStore::open(&node.data)?;
    let t = now();
    for (who, beat) in [
        (
            "stopped-long-ago",
            heartbeat("stopped-long-ago", t - 1200, Some(t - 1200)),
        ),
        (
            "killed-2-days-ago",
            heartbeat("killed-2-days-ago", t - 2 * 86_400, None),
        ),
        ("silent-5-min", heartbeat("silent-5-min", t - 300, None)),
    ] {
        store
            .put(&certs::layout::node(who), &serde_json::to_vec(&beat)?)
            .await?;
    }
    let out = node.command(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("status --json is not JSON: {}", text(&out.stdout)))?;
    assert_eq!(doc["store"]["ok"], true, "{doc}");
    let states: Vec<(String, String)> = doc["nodes"]
        .as_array()
        .context("nodes is an array")?
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or_default().to_string(),
                n["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut expected = vec![
        (name.clone(), "stopped".to_string()),
        ("silent-5-min".to_string(), "gone".to_string()),
    ];
    expected.sort();
    assert_eq!(states, expected, "{doc}");
    // The dropped nodes' heartbeats are gone from the store, the listed ones are kept.
    for (who, kept) in [
        ("stopped-long-ago", false),
        ("killed-2-days-ago", false),
        ("silent-5-min", true),
        (name.as_str(), true),
    ] {
        let present = store.get(&certs::layout::node(who)).await?.is_some();
        assert_eq!(present, kept, "heartbeat of {who}");
    }
    let table = text(&node.command(&["status"]).stdout);
    assert!(!table.contains("killed-2-days-ago"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("silent-5-min") && l.contains(" gone ")),
        "{table}"
    );

    // Running nodes prune too, so heartbeats do not pile up where nobody runs `status`.
    let old = certs::layout::node("killed-3-days-ago");
    let beat = heartbeat("killed-3-days-ago", now() - 3 * 86_400, None);
    store.put(&old, &serde_json::to_vec(&beat)?).await?;
    node.start().await?;
    testkit::wait_for(
        "the running node to delete the old heartbeat",
        Duration::from_secs(20),
        || async { store.get(&old).await.ok().flatten().is_none().then_some(()) },
    )
    .await?;
    node.stop().await?;
    Ok(())
}

/// A node (not started) with a files site of many domains whose leaf comes without its chain.
fn chainless_node(domains: &[&str]) -> Result<Node> {
    let pki = testkit::ca_and_leaf_with(domains, testkit::LeafKey::default())?;
    let node = Node::new(testkit::loopback_ip(), 1, 2, "")?;
    std::fs::write(node.path("shop.pem"), &pki.leaf_cert_pem)?;
    std::fs::write(node.path("shop.key"), &pki.leaf_key_pem)?;
    let list: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
    node.write_config(&format!(
        "[[site]]\ndomains = [{}]\ntls = {{ cert = \"shop.pem\", key = \"shop.key\" }}\nrespond = {{ status = 200 }}\n",
        list.join(", ")
    ))?;
    Ok(node)
}

const MANY: [&str; 4] = [
    "shop.fleet.test",
    "www.shop.fleet.test",
    "shop-old-brand.fleet.test",
    "www.shop-old-brand.fleet.test",
];

#[test]
fn certs_json_parses_and_wide_shows_every_domain_and_finding() -> Result<()> {
    let node = chainless_node(&MANY)?;
    let out = node.command(&["certs", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("certs --json is not JSON: {}", text(&out.stdout)))?;
    let rows = doc.as_array().context("an array")?;
    assert_eq!(rows.len(), 1, "{doc}");
    let row = &rows[0];
    assert_eq!(row["id"], "shop.fleet.test");
    assert_eq!(row["source"], "files");
    assert_eq!(row["state"], "valid");
    assert_eq!(
        row["domains"].as_array().map(Vec::len),
        Some(MANY.len()),
        "{row}"
    );
    // (The testkit leaf lives 30 days: an `expires-soon` warning may come with it.)
    let finding = row["findings"]
        .as_array()
        .and_then(|all| all.iter().find(|f| f["finding"] == "chain-incomplete"))
        .with_context(|| format!("no chain-incomplete finding: {row}"))?;
    assert_eq!(finding["severity"], "warning", "{row}");
    assert_eq!(finding["finding"], "chain-incomplete", "{row}");
    assert!(
        finding["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the chain is incomplete")),
        "{row}"
    );
    assert!(row["days_left"].as_f64().is_some_and(|d| d > 29.0), "{row}");

    let narrow = text(&node.command(&["certs"]).stdout);
    assert!(!narrow.contains(&MANY.join(",")), "{narrow}");
    let out = node.command(&["certs", "--wide"]);
    let wide = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(wide.contains(&MANY.join(",")), "{wide}");
    assert!(
        wide.lines().any(|l| l
            .trim_start()
            .starts_with("warning: the chain is incomplete")),
        "{wide}"
    );
    eprintln!("{wide}");
    Ok(())
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_with_status_0() -> Result<()> {
    let node = chainless_node(&MANY)?;
    // As typed: the pipeline's status is fleetgate's own when it fails (pipefail).
    let out = Command::new("bash")
        .arg("-o")
        .arg("pipefail")
        .arg("-c")
        .arg(format!(
            "'{}' certs --config '{}' | head -1",
            bin(),
            node.config_path.display()
        ))
        .output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    assert!(text(&out.stdout).starts_with("DOMAINS"));

    // The reader gone before the first byte is written: every command meets EPIPE for sure.
    for args in [
        &["certs"][..],
        &["certs", "--wide"],
        &["certs", "--json"],
        &["status"],
        &["status", "--json"],
        &["check"],
        &["ca", "export"],
        &["sites", "list"],
    ] {
        let mut child = Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&node.config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        drop(child.stdout.take());
        let out = child.wait_with_output()?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "fleetgate {}: {}",
            args.join(" "),
            text(&out.stderr)
        );
        // `check` warns about the chain on stderr; nothing else may be said.
        let stderr = text(&out.stderr);
        assert!(
            stderr.lines().all(|l| l.starts_with("warning: ")),
            "fleetgate {}: {stderr}",
            args.join(" ")
        );
    }
    Ok(())
}

/// The lowest port this machine reserves for privileged processes.
fn unprivileged_port_start() -> Result<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .unwrap_or_else(|_| "1024".to_string());
    Ok(text.trim().parse()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_privileged_port_without_the_capability_says_how_to_fix_it() -> Result<()> {
    let start = unprivileged_port_start()?;
    if start == 0 {
        bail!("net.ipv4.ip_unprivileged_port_start is 0 here: no port needs a privilege");
    }
    let port = 80.min(start - 1);
    // A config and data directory a non-root user can use.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777))?;
    let ip = testkit::loopback_ip();
    let config = dir.path().join("fleetgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"{ip}:{port}\"\nhttps = \"{ip}:{}\"\n\n[storage]\npath = \"{}\"\n",
            testkit::free_port(),
            data.display()
        ),
    )?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
    // As root, run as `nobody` (setpriv drops every capability with the user id).
    let root = text(&Command::new("id").arg("-u").output()?.stdout).trim() == "0";
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(bin());
        c
    } else {
        Command::new(bin())
    };
    cmd.arg("run").arg("--config").arg(&config);
    let mut child = testkit::ChildGuard::spawn(tokio::process::Command::from(cmd), "fleetgate")?;
    let status = child
        .wait_exit(Duration::from_secs(30))
        .await
        .context("fleetgate run as an unprivileged user did not exit")?;
    let log = child.log_contents();
    assert_eq!(status.code(), Some(1), "{log}");
    for needle in [
        format!("cannot listen on {ip}:{port} (listen.http): Permission denied"),
        "CAP_NET_BIND_SERVICE".to_string(),
        "dist/fleetgate.service (AmbientCapabilities=CAP_NET_BIND_SERVICE)".to_string(),
        "setcap cap_net_bind_service=+ep $(command -v fleetgate)".to_string(),
        "let the load balancer forward port".to_string(),
    ] {
        assert!(log.contains(&needle), "missing {needle:?} in:\n{log}");
    }
    eprintln!("{log}");
    Ok(())
}
