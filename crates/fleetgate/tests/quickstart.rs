//! The quickstart, end to end: the built-in CA, redirects over HTTP and HTTPS, restart from storage.

mod common;

use std::time::Duration;

use common::{Node, served_serial};

const BODY: &str = r#"
[[site]]
domains = ["app.localhost"]
tls = "internal"
respond = { status = 200, body = "hello from fleetgate\n" }

[[site]]
domains = ["old.localhost", "www.old.localhost"]
tls = "internal"
redirect = { to = "https://app.localhost", status = 301, keep_path = true }
"#;

#[test]
fn shipped_quickstart_config_is_valid() {
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml");
    let out = common::run_cli(&["check"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("old.localhost"), "{stdout}");
    assert!(stdout.contains("tls internal"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_serves_redirects_and_restarts_from_storage() -> anyhow::Result<()> {
    let ip = testkit::loopback_ip();
    let mut node = Node::new(ip, testkit::free_port(), testkit::free_port(), BODY)?;
    node.start().await?;

    let root = node.ca_root()?;
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");

    // Every name gets a certificate that verifies against the exported root.
    let mut serials = Vec::new();
    for name in ["app.localhost", "old.localhost", "www.old.localhost"] {
        let serial = testkit::wait_for_ok(
            &format!("a certificate for {name}"),
            Duration::from_secs(20),
            || served_serial(node.https, name, &root),
        )
        .await?;
        serials.push(serial);
    }

    let resp = testkit::https_get(node.https, "app.localhost", &root, "/").await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello from fleetgate\n");

    let resp = testkit::https_get(node.https, "www.old.localhost", &root, "/a/b?c=d").await?;
    assert_eq!(resp.status, 301);
    assert_eq!(
        resp.header("location"),
        Some("https://app.localhost/a/b?c=d")
    );

    // Plain HTTP goes to HTTPS first (308), keeping the host, path and query.
    let resp = testkit::http_get(node.http, "old.localhost", "/x?y=1").await?;
    assert_eq!(resp.status, 308);
    // The HTTPS listener is not on 443 here, so the port is part of the target.
    let expected = format!("https://old.localhost:{}/x?y=1", node.https.port());
    assert_eq!(resp.header("location"), Some(expected.as_str()));

    // An unknown name fails the handshake.
    assert!(
        testkit::tls_handshake(node.https, "unknown.localhost", &root, &[])
            .await
            .is_err()
    );

    // `fleetgate certs` shows every certificate as valid.
    let certs = node.command(&["certs"]);
    let table = String::from_utf8_lossy(&certs.stdout);
    assert!(
        certs.status.success(),
        "{}",
        String::from_utf8_lossy(&certs.stderr)
    );
    assert_eq!(table.matches("valid").count(), 2, "{table}");

    // A restart serves the same certificates from storage and issues nothing new.
    let status = node.stop().await?;
    assert!(status.success(), "exit status {status:?}\n{}", node.log());
    node.start().await?;
    for (name, before) in ["app.localhost", "old.localhost", "www.old.localhost"]
        .iter()
        .zip(&serials)
    {
        let after = testkit::wait_for_ok(
            &format!("{name} served after restart"),
            Duration::from_secs(20),
            || served_serial(node.https, name, &root),
        )
        .await?;
        assert_eq!(
            &after, before,
            "{name} got a new certificate after a restart"
        );
    }
    Ok(())
}
