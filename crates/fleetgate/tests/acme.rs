//! fleetgate against a real ACME CA (Pebble): three sites, HTTP-01 only and TLS-ALPN-01 only,
//! renewal for real, and restart without new orders.

mod common;

use std::time::Duration;

use common::{Node, served_serial};
use testkit::Pebble;

const ISSUE_DEADLINE: Duration = Duration::from_secs(90);

struct Setup {
    pebble: Pebble,
    node: Node,
    root: String,
    files_ca: String,
}

/// Pebble validating against a fresh node; two redirect sites on ACME and one on a files cert.
async fn setup(challenge: &str, validity: Option<Duration>) -> anyhow::Result<Setup> {
    let ip = testkit::loopback_ip();
    let (http_port, https_port) = (testkit::free_port(), testkit::free_port());
    let mut builder = Pebble::builder()
        .http_port(http_port)
        .tls_port(https_port)
        .resolve_to(ip);
    if let Some(v) = validity {
        builder = builder.validity(v);
    }
    let pebble = builder.start().await?;
    let root = pebble.issuing_root_pem().await?;

    let dir = tempfile::tempdir()?;
    let pki = testkit::ca_and_leaf_with(&["main.fleet.test"], testkit::LeafKey::EcdsaP256Pkcs8)?;
    std::fs::write(dir.path().join("main.pem"), &pki.leaf_cert_pem)?;
    std::fs::write(dir.path().join("main.key"), &pki.leaf_key_pem)?;
    let body = format!(
        r#"
[acme]
directory = "{dir_url}"
ca_root = "{ca_root}"
email = "ops@fleet.test"
challenges = ["{challenge}"]

[[site]]
domains = ["old.fleet.test", "www.old.fleet.test", "older.fleet.test"]
redirect = {{ to = "https://main.fleet.test", status = 301, keep_path = true }}

[[site]]
domains = ["typo.fleet.test", "www.typo.fleet.test"]
redirect = {{ to = "https://main.fleet.test/welcome", status = 302, keep_path = false }}

[[site]]
domains = ["main.fleet.test"]
tls = {{ cert = "{files}/main.pem", key = "{files}/main.key" }}
respond = {{ status = 200, body = "main site" }}
"#,
        dir_url = pebble.directory_url(),
        ca_root = pebble.listener_ca_path().display(),
        files = dir.path().display(),
    );
    let data = dir.path().join("data");
    let mut node = Node::with_data(dir, data, ip, http_port, https_port, &body)?;
    node.start().await?;
    Ok(Setup {
        pebble,
        node,
        root,
        files_ca: pki.ca_pem,
    })
}

const ACME_NAMES: [&str; 5] = [
    "old.fleet.test",
    "www.old.fleet.test",
    "older.fleet.test",
    "typo.fleet.test",
    "www.typo.fleet.test",
];

async fn check_all_sites(s: &Setup) -> anyhow::Result<()> {
    let https = s.node.https;
    for name in ACME_NAMES {
        testkit::wait_for_ok(
            &format!("a valid certificate for {name}"),
            ISSUE_DEADLINE,
            || served_serial(https, name, &s.root),
        )
        .await
        .map_err(|e| e.context(s.node.log()))?;
    }
    // The files certificate, verified against its own CA.
    let main = testkit::https_get(https, "main.fleet.test", &s.files_ca, "/").await?;
    assert_eq!(main.status, 200);
    assert_eq!(main.text(), "main site");

    // Redirects over HTTPS.
    let r = testkit::https_get(https, "www.old.fleet.test", &s.root, "/path/x?q=1").await?;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://main.fleet.test/path/x?q=1")
    );
    let r = testkit::https_get(https, "typo.fleet.test", &s.root, "/anything?z").await?;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("https://main.fleet.test/welcome")
    );

    // Over plain HTTP: first to HTTPS on the same host.
    let r = testkit::http_get(s.node.http, "older.fleet.test", "/p?q").await?;
    assert_eq!(r.status, 308);
    let expected = format!("https://older.fleet.test:{}/p?q", s.node.https.port());
    assert_eq!(r.header("location"), Some(expected.as_str()));

    // `fleetgate certs` reports the Pebble-issued certificates as valid.
    let out = s.node.command(&["certs"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(table.matches(" valid ").count(), 3, "{table}");
    assert!(table.contains("acme") && table.contains("files"), "{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn http01_only_three_sites() -> anyhow::Result<()> {
    let s = setup("http-01", None).await?;
    check_all_sites(&s).await?;
    let log = s.pebble.pebble_log();
    assert!(!log.contains("tls-alpn-01"), "TLS-ALPN-01 was used:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn01_only_three_sites() -> anyhow::Result<()> {
    let s = setup("tls-alpn-01", None).await?;
    check_all_sites(&s).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_serves_from_storage_and_places_no_order() -> anyhow::Result<()> {
    let mut s = setup("http-01", None).await?;
    let https = s.node.https;
    let mut before = Vec::new();
    for name in ACME_NAMES {
        before.push(
            testkit::wait_for_ok(&format!("a certificate for {name}"), ISSUE_DEADLINE, || {
                served_serial(https, name, &s.root)
            })
            .await?,
        );
    }
    let issued_before = s.node.log().matches("certificate issued").count();
    assert_eq!(issued_before, 2, "one order per site:\n{}", s.node.log());
    let orders_before = s.pebble.pebble_log().matches("POST /order-plz").count();
    assert!(
        orders_before >= 2,
        "Pebble's log shows no orders:\n{}",
        s.pebble.pebble_log()
    );

    let status = s.node.stop().await?;
    assert!(status.success(), "{status:?}");
    s.node.start().await?;
    for (name, serial) in ACME_NAMES.iter().zip(&before) {
        let after = testkit::wait_for_ok(
            &format!("{name} after restart"),
            Duration::from_secs(20),
            || served_serial(https, name, &s.root),
        )
        .await?;
        assert_eq!(&after, serial, "{name} was re-issued after a restart");
    }
    assert_eq!(
        s.node.log().matches("certificate issued").count(),
        issued_before,
        "{}",
        s.node.log()
    );
    assert_eq!(
        s.pebble.pebble_log().matches("POST /order-plz").count(),
        orders_before
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_certificates_are_renewed_without_dropping_connections() -> anyhow::Result<()> {
    // 30 s certificates: the lifetime rule (half of a short lifetime) renews after ~15 s.
    let s = setup("http-01", Some(Duration::from_secs(30))).await?;
    let https = s.node.https;
    let name = "old.fleet.test";
    let first = testkit::wait_for_ok("the first certificate", ISSUE_DEADLINE, || {
        served_serial(https, name, &s.root)
    })
    .await?;

    // An open keep-alive connection from before the renewal.
    let config = std::sync::Arc::new(testkit::client_config(&s.root, &[b"http/1.1"])?);
    let tls = testkit::tls_connect(https, name, config).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let request = || {
        http::Request::get("/before")
            .header("host", name)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
    };
    let resp = sender.send_request(request()?).await?;
    assert_eq!(resp.status(), 301);
    // Read each body to its end: hyper only reuses a connection whose last body was consumed.
    http_body_util::BodyExt::collect(resp.into_body()).await?;

    // Keep using the connection (a request every poll) until a new certificate is served.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let second = loop {
        // hyper marks the connection ready for the next request only once its task has seen
        // the end of the previous response: wait for that instead of racing it.
        sender.ready().await?;
        let resp = sender.send_request(request()?).await?;
        assert_eq!(resp.status(), 301, "the open connection broke");
        http_body_util::BodyExt::collect(resp.into_body()).await?;
        if let Ok(serial) = served_serial(https, name, &s.root).await
            && serial != first
        {
            break serial;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no renewal within 90 s:\n{}",
            s.node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(first, second);
    assert!(s.node.log().contains("certificate issued"));

    // The connection opened before the renewal still works.
    sender.ready().await?;
    let resp = sender.send_request(request()?).await?;
    assert_eq!(resp.status(), 301);
    Ok(())
}
