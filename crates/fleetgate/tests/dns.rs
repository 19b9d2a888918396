//! The delegated DNS-01 zone through the binary: `fleetgate dns delegate` prints the owner's
//! record, `fleetgate run` with `[dns] listen` answers for the zone and gets a wildcard
//! certificate from Pebble, which validates through BIND 9 (the owner's CNAME, the zone forwarded
//! to the node), and `fleetgate dns check` says what is there and what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::{Node, served_serial};
use testkit::{Bind, Pebble};

const ISSUE_DEADLINE: Duration = Duration::from_secs(90);
const ZONE: &str = "acme.ops.test";

fn dns_section(listen: SocketAddr) -> String {
    format!("[dns]\nlisten = \"{listen}\"\nzone = \"{ZONE}\"\nns = [\"ns1.ops.test\"]\n")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn delegate_run_issue_a_wildcard_and_check() -> anyhow::Result<()> {
    let ip = testkit::loopback_ip();
    let dns_addr = testkit::free_addr(ip);
    let mut node = Node::new(
        ip,
        testkit::free_port(),
        testkit::free_port(),
        &dns_section(dns_addr),
    )?;

    // The record for the owner, stable across calls; no node runs yet.
    let first = node.command(&["dns", "delegate", "shop.test"]);
    ensure!(first.status.success(), "{first:?}");
    let record = stdout(&first);
    let target = record
        .trim()
        .strip_prefix("_acme-challenge.shop.test. CNAME ")
        .and_then(|t| t.strip_suffix('.'))
        .with_context(|| format!("unexpected record {record:?}"))?
        .to_string();
    ensure!(target.ends_with(&format!(".{ZONE}")), "{target}");
    ensure!(stdout(&node.command(&["dns", "delegate", "shop.test"])) == record);
    // A second name, delegated but never CNAMEd by its owner.
    ensure!(
        node.command(&["dns", "delegate", "lazy.test"])
            .status
            .success()
    );

    let bind = Bind::builder()
        .primary_zone(
            "shop.test",
            &format!("@ IN A 127.0.0.1\n_acme-challenge IN CNAME {target}.\n"),
        )
        .primary_zone("lazy.test", "@ IN A 127.0.0.1\n")
        .forward_zone(ZONE, &[dns_addr])
        .start()
        .await?;
    let pebble = Pebble::builder().dns_server(bind.addr()).start().await?;
    let root = pebble.issuing_root_pem().await?;
    node.write_config(&format!(
        r#"
[acme]
directory = "{dir_url}"
ca_root = "{ca_root}"
challenges = ["dns-01"]

{dns}

[[site]]
domains = ["*.shop.test", "shop.test"]
respond = {{ status = 200, body = "shop" }}
"#,
        dir_url = pebble.directory_url(),
        ca_root = pebble.listener_ca_path().display(),
        dns = dns_section(dns_addr),
    ))?;
    let check = node.command(&["check"]);
    ensure!(check.status.success(), "{check:?}");
    node.start().await?;

    for name in ["www.shop.test", "shop.test"] {
        testkit::wait_for_ok(&format!("a certificate for {name}"), ISSUE_DEADLINE, || {
            served_serial(node.https, name, &root)
        })
        .await
        .with_context(|| format!("{}\nnamed:\n{}", node.log(), bind.log_contents()))?;
    }

    let resolver = bind.addr().to_string();
    let ok = node.command(&["dns", "check", "shop.test", "--resolver", &resolver]);
    let text = stdout(&ok);
    ensure!(
        ok.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    ensure!(
        text.contains(&format!("_acme-challenge.shop.test CNAME {target}.")),
        "{text}"
    );
    // The count may still be 2: BIND keeps even a TTL-0 answer for the rest of its second.
    ensure!(text.contains(&format!("{target} answers (")), "{text}");

    let lazy = node.command(&["dns", "check", "lazy.test", "--resolver", &resolver]);
    let text = stdout(&lazy);
    ensure!(!lazy.status.success(), "{text}");
    ensure!(text.contains("_acme-challenge.lazy.test has no CNAME (no such name); the domain's owner must add: _acme-challenge.lazy.test. CNAME "), "{text}");

    let status = node.stop().await?;
    ensure!(status.success(), "{status:?}\n{}", node.log());
    Ok(())
}

#[test]
fn delegate_needs_a_dns_section() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("f.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nkind = \"dir\"\npath = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = common::run_cli(&["dns", "delegate", "shop.test"], &config);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [dns] section"));
}

/// `fleetgate check` on a config body (with a dir store); Err(stderr) when refused.
fn check_config(body: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("f.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nkind = \"dir\"\npath = \"{}\"\n{body}",
            dir.path().join("data").display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = common::run_cli(&["check"], &config);
    if out.status.success() {
        Ok(stdout(&out))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const ACME_DNS: &str = r#"
[acme]
directory = "https://ca.test/dir"
challenges = ["dns-01", "http-01"]

[dns]
listen = "127.0.0.1:5353"
zone = "acme.ops.test"
ns = ["ns1.ops.test"]
"#;

#[test]
fn config_wildcards_with_dns01() {
    let ok = check_config(&format!(
        "{ACME_DNS}\n[[site]]\ndomains = [\"*.shop.test\", \"shop.test\"]\nrespond = {{ status = 200, body = \"ok\" }}\n"
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn config_wildcards_without_dns01_say_why() {
    let e = check_config(
        "[acme]\ndirectory = \"https://ca.test/dir\"\n[[site]]\ndomains = [\"*.shop.test\"]\nrespond = { status = 200, body = \"ok\" }\n",
    )
    .unwrap_err();
    assert!(e.contains("DNS-01 only"), "{e}");
}

#[test]
fn config_dns01_without_a_zone_and_bad_dns_sections_are_refused() {
    for (body, needle) in [
        (
            "[acme]\ndirectory = \"https://ca.test/dir\"\nchallenges = [\"dns-01\"]\n",
            "[dns]",
        ),
        ("[dns]\nzone = \"acme.ops.test\"\n", "dns.ns"),
        (
            "[dns]\nzone = \"acme.ops.test\"\nns = [\"ns1.acme.ops.test\"]\n",
            "inside the zone",
        ),
        (
            "[dns]\nzone = \"a b\"\nns = [\"ns1.ops.test\"]\n",
            "dns.zone",
        ),
        (
            "[dns]\nlisten = \"53\"\nzone = \"acme.ops.test\"\nns = [\"ns1.ops.test\"]\n",
            "dns.listen",
        ),
        (
            "[dns]\nzone = \"acme.ops.test\"\nns = [\"ns1.ops.test\"]\nttl = 5\n",
            "ttl",
        ),
        ("[dns]\nlisten = \"127.0.0.1:53\"\n", "dns.zone"),
        ("[dns]\n", "empty [dns] section"),
        (
            "[[dns.rfc2136]]\nserver = \"127.0.0.1:53\"\nzone = \"shop.test\"\ntsig_key = \"k\"\n",
            "go together",
        ),
        (
            "[[dns.rfc2136]]\nserver = \"127.0.0.1:53\"\nzone = \"shop.test\"\ntsig_key = \"k\"\ntsig_secret_file = \"/nonexistent/tsig.key\"\n",
            "no such file",
        ),
        (
            "[[dns.rfc2136]]\nserver = \"ns.shop.test\"\nzone = \"shop.test\"\n",
            "dns.rfc2136[0].server",
        ),
    ] {
        let e = check_config(body).unwrap_err();
        assert!(e.contains(needle), "{body}: {e}");
    }
}

const TSIG_SECRET: &str = "ZmxlZXRnYXRlLXRzaWctc2VjcmV0LWZvci10ZXN0cyE=";

/// `[[dns.rfc2136]]` only (no delegated zone): the node updates BIND, the primary of `upd.test`,
/// with TSIG, and Pebble validates through the same BIND.
#[tokio::test(flavor = "multi_thread")]
async fn rfc2136_through_the_binary() -> anyhow::Result<()> {
    let bind = Bind::builder()
        .updatable_zone(
            "upd.test",
            "@ IN A 127.0.0.1\n",
            "fleetgate-node",
            "hmac-sha256",
            TSIG_SECRET,
        )
        .start()
        .await?;
    let pebble = Pebble::builder().dns_server(bind.addr()).start().await?;
    let root = pebble.issuing_root_pem().await?;
    let ip = testkit::loopback_ip();
    let mut node = Node::new(ip, testkit::free_port(), testkit::free_port(), "")?;
    let secret_file = node.path("tsig.key");
    std::fs::write(&secret_file, format!("{TSIG_SECRET}\n"))?;
    node.write_config(&format!(
        r#"
[acme]
directory = "{dir_url}"
ca_root = "{ca_root}"
challenges = ["dns-01"]

[[dns.rfc2136]]
server = "{server}"
zone = "upd.test"
tsig_key = "fleetgate-node"
tsig_secret_file = "{secret}"

[[site]]
domains = ["*.upd.test", "upd.test"]
respond = {{ status = 200, body = "upd" }}
"#,
        dir_url = pebble.directory_url(),
        ca_root = pebble.listener_ca_path().display(),
        server = bind.addr(),
        secret = secret_file.display(),
    ))?;
    let check = node.command(&["dns", "check", "upd.test"]);
    ensure!(check.status.success(), "{check:?}");
    ensure!(
        stdout(&check).contains("is in the RFC 2136 zone upd.test: the primary"),
        "{}",
        stdout(&check)
    );
    node.start().await?;
    testkit::wait_for_ok("a certificate for www.upd.test", ISSUE_DEADLINE, || {
        served_serial(node.https, "www.upd.test", &root)
    })
    .await
    .with_context(|| format!("{}\nnamed:\n{}", node.log(), bind.log_contents()))?;
    // The primary no longer holds the values.
    let primary = dns::Rfc2136::new(
        bind.addr(),
        "upd.test",
        Some(dns::TsigKey::new(
            "fleetgate-node",
            "hmac-sha256",
            TSIG_SECRET,
        )?),
    )?;
    testkit::wait_for_ok(
        "the TXT values removed",
        Duration::from_secs(10),
        || async {
            let left = primary.txt("_acme-challenge.upd.test").await?;
            ensure!(left.is_empty(), "still there: {left:?}");
            Ok(())
        },
    )
    .await?;
    let status = node.stop().await?;
    ensure!(status.success(), "{status:?}");

    // A secret the primary does not know: check says so and fails.
    std::fs::write(
        &secret_file,
        "bm90LXRoZS1zZWNyZXQtdGhlLXByaW1hcnkta25vd3M=\n",
    )?;
    let check = node.command(&["dns", "check", "upd.test"]);
    ensure!(!check.status.success(), "{check:?}");
    ensure!(stdout(&check).contains("PROBLEM:"), "{}", stdout(&check));
    Ok(())
}

/// Two nodes share a store and both answer for the delegated zone; one is killed (SIGKILL),
/// then the other is given a wildcard site (SIGHUP) and gets its certificate through the
/// resolver, which finds the dead node's address silent and asks the live one.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_one_killed_before_the_order() -> anyhow::Result<()> {
    let (ip_a, ip_b) = (testkit::loopback_ip(), testkit::loopback_ip());
    let (dns_a, dns_b) = (testkit::free_addr(ip_a), testkit::free_addr(ip_b));
    let dir_a = tempfile::tempdir()?;
    let data = dir_a.path().join("data");
    let mut a = Node::with_data(
        dir_a,
        data.clone(),
        ip_a,
        testkit::free_port(),
        testkit::free_port(),
        &dns_section(dns_a),
    )?;
    let delegate = a.command(&["dns", "delegate", "shop.test"]);
    ensure!(delegate.status.success(), "{delegate:?}");
    let target = stdout(&delegate)
        .trim()
        .strip_prefix("_acme-challenge.shop.test. CNAME ")
        .and_then(|t| t.strip_suffix('.'))
        .context("the record")?
        .to_string();
    let bind = Bind::builder()
        .primary_zone(
            "shop.test",
            &format!("_acme-challenge IN CNAME {target}.\n"),
        )
        .forward_zone(ZONE, &[dns_a, dns_b])
        .start()
        .await?;
    let pebble = Pebble::builder().dns_server(bind.addr()).start().await?;
    let root = pebble.issuing_root_pem().await?;
    let acme = format!(
        "[acme]\ndirectory = \"{}\"\nca_root = \"{}\"\nchallenges = [\"dns-01\"]\n\n",
        pebble.directory_url(),
        pebble.listener_ca_path().display()
    );
    a.write_config(&format!("{acme}{}", dns_section(dns_a)))?;
    let mut b = Node::with_data(
        tempfile::tempdir()?,
        data,
        ip_b,
        testkit::free_port(),
        testkit::free_port(),
        &format!("{acme}{}", dns_section(dns_b)),
    )?;
    a.start().await?;
    b.start().await?;
    // Both answer for the zone from the shared store.
    for server in [dns_a, dns_b] {
        let answer = dns::lookup::query(server, &target, dns::hickory::rr::RecordType::TXT).await?;
        ensure!(
            answer.response_code() == dns::hickory::op::ResponseCode::NoError,
            "{server}: {answer:?}"
        );
    }

    a.signal(testkit::Signal::Kill)?;
    b.write_config(&format!(
        "{acme}{}\n[[site]]\ndomains = [\"*.shop.test\", \"shop.test\"]\nrespond = {{ status = 200, body = \"shop\" }}\n",
        dns_section(dns_b)
    ))?;
    b.signal(testkit::Signal::Hup)?;
    testkit::wait_for_ok("a certificate for www.shop.test", ISSUE_DEADLINE, || {
        served_serial(b.https, "www.shop.test", &root)
    })
    .await
    .with_context(|| format!("{}\nnamed:\n{}", b.log(), bind.log_contents()))?;
    ensure!(
        b.log().contains("certificate issued"),
        "issued on the first attempt: {}",
        b.log()
    );
    ensure!(!b.log().contains("order failed"), "{}", b.log());
    let status = b.stop().await?;
    ensure!(status.success(), "{status:?}");
    Ok(())
}
