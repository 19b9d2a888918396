//! The acme-dns API through the binary: certbot with the certbot-dns-acmedns plugin (a client
//! nobody here wrote; Debian's lego is built without its acme-dns provider) gets a wildcard
//! certificate from Pebble, which validates through BIND 9
//! (the owner's CNAME to the account's `fulldomain`, the zone forwarded to the node); bad input
//! gets acme-dns's status and `{"error"}` body and stores nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::Node;
use serde_json::Value;
use testkit::{Bind, Pebble};

const ZONE: &str = "acme.ops.test";
const TOKEN: &str = "acme-dns-test-token-0123456789";
/// certbot with the certbot-dns-acmedns plugin (PyPI), in the virtualenv scripts/test makes;
/// `FLEETGATE_CERTBOT` names another.
fn certbot() -> String {
    std::env::var("FLEETGATE_CERTBOT")
        .unwrap_or_else(|_| "/opt/fleetgate-acmedns/bin/certbot".to_string())
}

const TXT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// One request with curl: (status, body).
fn curl(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    if let Some(body) = body {
        cmd.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = cmd.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("<no error field in {body:?}>"))
}

async fn txt_at(server: SocketAddr, name: &str) -> anyhow::Result<Vec<String>> {
    let answer = dns::lookup::query(server, name, dns::hickory::rr::RecordType::TXT).await?;
    Ok(answer
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            dns::hickory::rr::RData::TXT(t) => Some(t.to_string()),
            _ => None,
        })
        .collect())
}

struct Fleet {
    node: Node,
    dns: SocketAddr,
    /// `http://ADMIN/acme-dns`
    base: String,
    /// `http://ACME_DNS_LISTEN/acme-dns`
    alone: String,
}

async fn start(open_registration: bool) -> anyhow::Result<Fleet> {
    let ip = testkit::loopback_ip();
    let dns = testkit::free_addr(ip);
    let admin = testkit::free_addr(ip);
    let alone = testkit::free_addr(ip);
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let body = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\n[dns]\nlisten = \"{dns}\"\nzone = \"{ZONE}\"\nns = [\"ns1.ops.test\"]\nacme_dns_listen = \"{alone}\"\nacme_dns_open_registration = {open_registration}\n",
        token_file.display()
    );
    let data = dir.path().join("data");
    let mut node = Node::with_data(
        dir,
        data,
        ip,
        testkit::free_port(),
        testkit::free_port(),
        &body,
    )?;
    node.start().await?;
    let fleet = Fleet {
        node,
        dns,
        base: format!("http://{admin}/acme-dns"),
        alone: format!("http://{alone}/acme-dns"),
    };
    for base in [&fleet.base, &fleet.alone] {
        let url = format!("{base}/health");
        testkit::wait_for_ok("acme-dns health", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let (status, body) = curl("GET", &url, &[], None);
                ensure!(status == 200, "{status} {body}");
                Ok(())
            }
        })
        .await
        .with_context(|| fleet.node.log())?;
    }
    Ok(fleet)
}

fn register(base: &str, body: Option<&str>) -> anyhow::Result<Value> {
    let auth = format!("Bearer {TOKEN}");
    let (status, text) = curl(
        "POST",
        &format!("{base}/register"),
        &[("authorization", &auth)],
        body,
    );
    ensure!(status == 201, "{status} {text}");
    Ok(serde_json::from_str(&text)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn certbot_dns_acmedns_gets_a_wildcard_certificate() -> anyhow::Result<()> {
    let mut fleet = start(false).await?;
    let account = register(&fleet.base, None)?;
    let fulldomain = account["fulldomain"]
        .as_str()
        .context("fulldomain")?
        .to_string();
    ensure!(fulldomain.ends_with(&format!(".{ZONE}")), "{account}");

    let bind = Bind::builder()
        .primary_zone(
            "shop.test",
            &format!("@ IN A 127.0.0.1\n_acme-challenge IN CNAME {fulldomain}.\n"),
        )
        .forward_zone(ZONE, &[fleet.dns])
        .start()
        .await?;
    let pebble = Pebble::builder().dns_server(bind.addr()).start().await?;

    // The plugin's registration file (pyacmedns's storage, as it writes it after registering;
    // pre-registered here with the admin token, since registration is not open).
    let work = tempfile::tempdir()?;
    let registrations = work.path().join("acme-dns.json");
    let entry = serde_json::json!({
        "fulldomain": account["fulldomain"],
        "subdomain": account["subdomain"],
        "username": account["username"],
        "password": account["password"],
    });
    std::fs::write(
        &registrations,
        serde_json::json!({ "shop.test": entry }).to_string(),
    )?;
    let credentials = work.path().join("acme-dns.ini");
    std::fs::write(
        &credentials,
        format!(
            "dns_acmedns_api_url = {}\ndns_acmedns_registration_file = {}\n",
            fleet.base,
            registrations.display()
        ),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        for file in [&credentials, &registrations] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let dirs = work.path();
    let mut cmd = std::process::Command::new("timeout");
    cmd.arg("120")
        .arg(certbot())
        .args([
            "certonly",
            "--non-interactive",
            "--agree-tos",
            "-m",
            "ops@shop.test",
        ])
        .arg("--server")
        .arg(pebble.directory_url())
        .arg("--config-dir")
        .arg(dirs.join("config"))
        .arg("--work-dir")
        .arg(dirs.join("work"))
        .arg("--logs-dir")
        .arg(dirs.join("logs"))
        .args([
            "--authenticator",
            "dns-acmedns",
            "--dns-acmedns-credentials",
        ])
        .arg(&credentials)
        .args(["--dns-acmedns-propagation-seconds", "0"])
        .args([
            "--cert-name",
            "shop",
            "-d",
            "*.shop.test",
            "-d",
            "shop.test",
        ])
        .env("REQUESTS_CA_BUNDLE", pebble.listener_ca_path());
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let client_log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "certbot: {client_log}\n{}\nnode:\n{}\nnamed:\n{}",
        std::fs::read_to_string(dirs.join("logs/letsencrypt.log")).unwrap_or_default(),
        fleet.node.log(),
        bind.log_contents()
    );
    let cert = std::fs::read_to_string(dirs.join("config/live/shop/cert.pem"))
        .with_context(|| client_log.clone())?;
    ensure!(cert.contains("BEGIN CERTIFICATE"), "{cert}");
    println!("{client_log}");
    // Both values of the order (the wildcard's and the name's) went through /update.
    let log = fleet.node.log();
    ensure!(!log.contains("acme-dns update refused"), "{log}");

    let status = fleet.node.stop().await?;
    ensure!(status.success(), "{status:?}\n{}", fleet.node.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_acme_dns_errors_and_stores_nothing() -> anyhow::Result<()> {
    let mut fleet = start(false).await?;
    let base = fleet.base.clone();
    // Registration needs the admin token (open registration is off); the other routes do not.
    let (status, body) = curl("POST", &format!("{base}/register"), &[], None);
    ensure!(
        status == 401 && error_of(&body).starts_with("forbidden"),
        "{status} {body}"
    );
    let (status, body) = curl(
        "POST",
        &format!("{base}/register"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Some(r#"{"allowfrom": ["not a network"]}"#),
    );
    ensure!(
        status == 400 && error_of(&body) == "invalid_allowfrom_cidr",
        "{status} {body}"
    );

    let mine = register(&fleet.alone, Some("{}"))?;
    let other = register(&base, None)?;
    let fenced = register(&base, Some(r#"{"allowfrom": ["192.0.2.0/24"]}"#))?;
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let update = |account: &Value, key: &str, sub: &str, txt: &str| {
        let body = serde_json::json!({ "subdomain": sub, "txt": txt }).to_string();
        curl(
            "POST",
            &format!("{base}/update"),
            &[("x-api-user", &s(account, "username")), ("x-api-key", key)],
            Some(&body),
        )
    };
    let (user_key, user_sub) = (s(&mine, "password"), s(&mine, "subdomain"));
    let cases = [
        // wrong API key
        (
            update(
                &mine,
                "wrong-key-0123456789012345678901234567",
                &user_sub,
                TXT_A,
            ),
            401,
            "forbidden",
        ),
        // TXT of the wrong length
        (update(&mine, &user_key, &user_sub, "short"), 400, "bad_txt"),
        (
            update(&mine, &user_key, &user_sub, &"a".repeat(44)),
            400,
            "bad_txt",
        ),
        // another account's subdomain
        (
            update(&mine, &user_key, &s(&other, "subdomain"), TXT_A),
            401,
            "forbidden",
        ),
        // a source outside allowfrom
        (
            update(
                &fenced,
                &s(&fenced, "password"),
                &s(&fenced, "subdomain"),
                TXT_A,
            ),
            401,
            "forbidden",
        ),
        // not JSON
        (
            curl(
                "POST",
                &format!("{base}/update"),
                &[
                    ("x-api-user", &s(&mine, "username")),
                    ("x-api-key", &user_key),
                ],
                Some("{"),
            ),
            400,
            "malformed_json",
        ),
        // no credentials
        (
            curl(
                "POST",
                &format!("{base}/update"),
                &[],
                Some(r#"{"subdomain":"x","txt":"y"}"#),
            ),
            401,
            "forbidden",
        ),
    ];
    for (i, ((status, body), want_status, want_error)) in cases.iter().enumerate() {
        ensure!(
            *status == *want_status && error_of(body) == *want_error,
            "case {i}: {status} {body}, expected {want_status} {want_error}"
        );
    }
    for account in [&mine, &other, &fenced] {
        let name = s(account, "fulldomain");
        let left = txt_at(fleet.dns, &name).await?;
        ensure!(left.is_empty(), "{name}: {left:?}");
    }
    // The admin API itself still wants its token; acme-dns credentials are no token.
    let (status, _) = curl(
        "GET",
        &base.replace("/acme-dns", "/v1/nodes"),
        &[
            ("x-api-user", &s(&mine, "username")),
            ("x-api-key", &user_key),
        ],
        None,
    );
    ensure!(status == 401, "{status}");
    // The acme-dns listener serves nothing else.
    let (status, _) = curl(
        "GET",
        &fleet.alone.replace("/acme-dns", "/v1/nodes"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        None,
    );
    ensure!(status == 404, "{status}");

    // The right request is stored and served at once.
    let (status, body) = update(&mine, &user_key, &user_sub, TXT_A);
    ensure!(status == 200, "{status} {body}");
    let served = txt_at(fleet.dns, &s(&mine, "fulldomain")).await?;
    ensure!(served.iter().any(|t| t == TXT_A), "{served:?}");

    let status = fleet.node.stop().await?;
    ensure!(status.success(), "{status:?}\n{}", fleet.node.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn open_registration_and_update_rate_limit() -> anyhow::Result<()> {
    let mut fleet = start(true).await?;
    let (status, body) = curl("POST", &format!("{}/register", fleet.alone), &[], None);
    ensure!(status == 201, "{status} {body}");
    let account: Value = serde_json::from_str(&body)?;
    let user = account["username"]
        .as_str()
        .context("username")?
        .to_string();
    let url = format!("{}/update", fleet.base);
    let mut limited = false;
    for _ in 0..40 {
        let (status, body) = curl(
            "POST",
            &url,
            &[("x-api-user", &user), ("x-api-key", "guess")],
            Some(&format!(
                r#"{{"subdomain":"{}","txt":"{TXT_A}"}}"#,
                account["subdomain"].as_str().unwrap_or_default()
            )),
        );
        if status == 429 {
            ensure!(error_of(&body) == "too_many_requests", "{body}");
            limited = true;
            break;
        }
        ensure!(status == 401, "{status} {body}");
    }
    ensure!(limited, "40 wrong keys in a row were all checked");
    let status = fleet.node.stop().await?;
    ensure!(status.success(), "{status:?}\n{}", fleet.node.log());
    Ok(())
}

#[test]
fn acme_dns_listen_needs_admin_and_a_zone() {
    for (body, needle) in [
        (
            "[dns]\nzone = \"acme.ops.test\"\nns = [\"ns1.ops.test\"]\nacme_dns_listen = \"127.0.0.1:8053\"\n",
            "add an [admin] section",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:9000\"\n[[dns.rfc2136]]\nserver = \"127.0.0.1:53\"\nzone = \"shop.test\"\n[dns]\nacme_dns_listen = \"127.0.0.1:8053\"\n",
            "dns.acme_dns_listen",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:9000\"\n[dns]\nzone = \"acme.ops.test\"\nns = [\"ns1.ops.test\"]\nacme_dns_listen = \"8053\"\n",
            "dns.acme_dns_listen",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("f.toml");
        std::fs::write(
            &config,
            format!(
                "[storage]\nkind = \"dir\"\npath = \"{}\"\n{body}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let out = common::run_cli(&["check"], &config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{body}: {stderr}"
        );
    }
}
