//! Starts a real Pebble + challtestsrv and checks what tests of other crates rely on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use testkit::{Pebble, cert_info, https_get, loopback_ip, pem_certs};

#[tokio::test]
async fn pebble_serves_directory_and_issuing_root() {
    let ip = loopback_ip();
    let pebble = Pebble::builder()
        .resolve_to(ip)
        .validity(Duration::from_secs(120))
        .start()
        .await
        .unwrap();

    assert!(pebble.directory_url().starts_with("https://127.0.0.1:"));
    assert_eq!(
        std::fs::read_to_string(pebble.listener_ca_path()).unwrap(),
        pebble.listener_ca_pem()
    );

    // The directory, verified against the listener CA (by path too, as fleetgate reads it).
    let dir = https_get(
        pebble.acme_addr(),
        "127.0.0.1",
        pebble.listener_ca_pem(),
        "/dir",
    )
    .await
    .unwrap();
    assert_eq!(dir.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&dir.body).unwrap();
    for key in ["newNonce", "newAccount", "newOrder"] {
        assert!(json[key].as_str().is_some(), "{key} missing in {json}");
    }

    // The issuing root and intermediate parse as CA certificates; the intermediate chains to it.
    let root = pem_certs(&pebble.issuing_root_pem().await.unwrap()).unwrap();
    assert_eq!(root.len(), 1);
    let root = cert_info(&root[0]).unwrap();
    assert!(root.subject.contains("Pebble Root CA"), "{root:?}");
    let inter = pem_certs(&pebble.intermediate_pem().await.unwrap()).unwrap();
    let inter = cert_info(&inter[0]).unwrap();
    assert_eq!(inter.issuer, root.subject, "{inter:?}");

    // challtestsrv answers what the VA will see, and accepts overrides.
    assert_eq!(pebble.lookup_a("any.test").await.unwrap(), [ip]);
    let other = Ipv4Addr::new(127, 0, 0, 9);
    pebble.add_a("a.test", other).await.unwrap();
    assert_eq!(pebble.lookup_a("a.test").await.unwrap(), [other]);
    assert_eq!(pebble.lookup_a("b.a.test").await.unwrap(), [ip]);
    pebble.clear_a("a.test").await.unwrap();
    assert_eq!(pebble.lookup_a("a.test").await.unwrap(), [ip]);
    pebble.set_default_ipv4(other).await.unwrap();
    assert_eq!(pebble.lookup_a("a.test").await.unwrap(), [other]);
    assert_eq!(
        pebble.http01_addr().ip(),
        ip,
        "http01_addr reports the builder's address"
    );
}
