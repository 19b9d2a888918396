//! The HTTPS listener's TLS: SNI selection, unknown names, TLS-ALPN-01, certificate swaps,
//! HTTP/2 by ALPN, session resumption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use edge::{CertMap, Limits};
use http::StatusCode;
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn start(ca: &Ca) -> TestEdge {
    let certs = Arc::new(CertMap::new());
    certs
        .insert("a", ["a.test", "b.test"], ca.leaf(&["a.test", "b.test"]))
        .unwrap();
    // new.test is configured but has no certificate yet: what a new domain looks like while its
    // first order is being validated.
    let sites = vec![
        respond(&["a.test"], "a"),
        respond(&["b.test"], "b"),
        respond(&["new.test"], "new"),
    ];
    TestEdge::start(sites, certs, Limits::default()).await
}

#[tokio::test]
async fn serves_a_verifiable_chain_for_the_exact_name() {
    let ca = Ca::new();
    let edge = start(&ca).await;
    let info = testkit::tls_handshake(edge.https, "a.test", ca.root_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(info.leaf.dns_names.contains(&"a.test".to_owned()));
    // A client with another root refuses it: the chain really is verified.
    let other = Ca::new();
    assert!(
        testkit::tls_handshake(edge.https, "a.test", other.root_pem(), &[])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn unknown_or_missing_sni_fails_the_handshake_with_an_alert() {
    let ca = Ca::new();
    let edge = start(&ca).await;
    let config = tls_config(ca.root_pem(), &[b"http/1.1"]);
    let err = testkit::tls_connect(edge.https, "unknown.test", Arc::clone(&config))
        .await
        .expect_err("handshake for an unknown name must fail");
    assert_eq!(
        received_alert(&err),
        Some(AlertDescription::UnrecognisedName),
        "{err:#}"
    );

    // rustls sends no SNI for an IP address.
    let ip = edge.https.ip().to_string();
    let err = testkit::tls_connect(edge.https, &ip, config)
        .await
        .expect_err("handshake without SNI must fail");
    assert_eq!(
        received_alert(&err),
        Some(AlertDescription::HandshakeFailure),
        "{err:#}"
    );
}

#[tokio::test]
async fn tls_alpn_01_handshake_presents_the_challenge_certificate() {
    let ca = Ca::new();
    let edge = start(&ca).await;
    // A challenge for a name with a normal certificate, and one for a name without any.
    let challenge_a = self_signed("a.test");
    let challenge_new = self_signed("new.test");
    edge.challenges.add_alpn("a.test", Arc::clone(&challenge_a));
    edge.challenges
        .add_alpn("new.test", Arc::clone(&challenge_new));

    // A name no site serves (yet) is answered too: another node ordered its certificate, and
    // the CA asks this one (issue 12).
    let challenge_other = self_signed("other.test");
    edge.challenges
        .add_alpn("other.test", Arc::clone(&challenge_other));

    for (name, expected) in [
        ("a.test", &challenge_a),
        ("new.test", &challenge_new),
        ("other.test", &challenge_other),
    ] {
        let config = any_cert_config(&[b"acme-tls/1"]);
        let mut tls = testkit::tls_connect(edge.https, name, config)
            .await
            .unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(session.alpn_protocol(), Some(&b"acme-tls/1"[..]));
        let served = session.peer_certificates().unwrap();
        assert_eq!(served.len(), 1);
        assert_eq!(
            served[0], expected.cert[0],
            "{name}: challenge certificate served"
        );
        // The server closes right after the handshake.
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(DEADLINE, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(
            n, 0,
            "{name}: connection closed after the challenge handshake"
        );
    }

    // No challenge for the name, served or not: the handshake is refused.
    for name in ["b.test", "nobody.test"] {
        let err = testkit::tls_connect(edge.https, name, any_cert_config(&[b"acme-tls/1"]))
            .await
            .expect_err("no challenge: no handshake");
        assert_eq!(
            received_alert(&err),
            Some(AlertDescription::UnrecognisedName),
            "{name}: {err:#}"
        );
    }
    // Without acme-tls/1, a name no site serves gets no certificate.
    let err = testkit::tls_handshake(edge.https, "other.test", ca.root_pem(), &[b"h2"])
        .await
        .expect_err("no site: no handshake");
    assert_eq!(
        received_alert(&err),
        Some(AlertDescription::UnrecognisedName),
        "{err:#}"
    );

    // Without acme-tls/1 offered, the normal certificate is served.
    let info = testkit::tls_handshake(edge.https, "a.test", ca.root_pem(), &[b"h2"])
        .await
        .unwrap();
    assert_eq!(info.peer_chain[0], ca_leaf_of(&edge, "a.test"));
}

fn ca_leaf_of(edge: &TestEdge, name: &str) -> rustls::pki_types::CertificateDer<'static> {
    edge.certs.lookup(name).unwrap().cert[0].clone()
}

#[tokio::test]
async fn swapped_certificate_serves_new_handshakes_and_keeps_open_connections() {
    let ca = Ca::new();
    let edge = start(&ca).await;
    let config = tls_config(ca.root_pem(), &[b"http/1.1"]);
    let mut old_conn = Conn::open(edge.https, "a.test", Arc::clone(&config))
        .await
        .unwrap();
    let old_cert = old_conn.peer_cert.clone();
    assert_eq!(
        old_conn.get("a.test", "/").await.unwrap().status,
        StatusCode::OK
    );

    // Renewal: same id, new key and certificate.
    let renewed = ca.leaf(&["a.test", "b.test"]);
    edge.certs
        .insert("a", ["a.test", "b.test"], Arc::clone(&renewed))
        .unwrap();

    // A fresh client: with `config`, the handshake would resume the old session, whose
    // certificate is the old one (resumption skips the certificate; that is fine for a renewal).
    let fresh = tls_config(ca.root_pem(), &[b"http/1.1"]);
    let mut new_conn = Conn::open(edge.https, "a.test", fresh).await.unwrap();
    assert_eq!(new_conn.peer_cert, renewed.cert[0]);
    assert_ne!(new_conn.peer_cert, old_cert);
    assert_eq!(
        new_conn.get("a.test", "/").await.unwrap().status,
        StatusCode::OK
    );

    // The connection opened before the swap still works.
    let r = old_conn.get("a.test", "/again").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"a");
    // b.test on the old connection: its certificate is no longer the one for b.test -> 421.
    let r = old_conn.get("b.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);

    // Removal: the name is no longer served to new handshakes, resumed ones included.
    assert!(edge.certs.remove("a"));
    let err = testkit::tls_connect(edge.https, "a.test", config)
        .await
        .err()
        .unwrap();
    assert_eq!(
        received_alert(&err),
        Some(AlertDescription::UnrecognisedName),
        "{err:#}"
    );
    assert_eq!(
        old_conn.get("a.test", "/third").await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn http2_by_alpn_with_connection_reuse_across_names() {
    let ca = Ca::new();
    let edge = start(&ca).await;
    let config = tls_config(ca.root_pem(), &[b"h2", b"http/1.1"]);
    let mut conn = Conn::open(edge.https, "a.test", config).await.unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    let r = conn.get("a.test", "/").await.unwrap();
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"a");
    // b.test shares the certificate: the same connection may serve it.
    let r = conn.get("b.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"b");
    let r = conn.get("c.test", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    // :authority is parsed as strictly as Host.
    let r = conn.get("a.test:99999", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        conn.get("a.test", "/").await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sessions_resume_with_tickets() {
    let ca = Ca::new();
    let edge = start(&ca).await;
    let config = tls_config(ca.root_pem(), &[b"http/1.1"]);
    // The TLS 1.3 tickets arrive after the handshake: make a request so they are read.
    let mut first = Conn::open(edge.https, "a.test", Arc::clone(&config))
        .await
        .unwrap();
    assert_eq!(
        first.get("a.test", "/").await.unwrap().status,
        StatusCode::OK
    );
    let mut tls = testkit::tls_connect(edge.https, "a.test", config)
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut reply)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

/// One connection with `config` (its session cache shared across calls): handshake, a request
/// read to the end (TLS 1.3 tickets come after the handshake); how the handshake went.
async fn visit(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> rustls::HandshakeKind {
    let mut tls = testkit::tls_connect(addr, "a.test", Arc::clone(config))
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(DEADLINE, tls.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    kind
}

#[tokio::test]
async fn edges_given_the_same_ticket_keys_resume_each_others_sessions() {
    use edge::TicketKey;
    use rustls::HandshakeKind::{Full, Resumed};
    let ca = Ca::new();
    let (one, two, stranger) = (start(&ca).await, start(&ca).await, start(&ca).await);
    let shared = TicketKey::generate().unwrap();
    for e in [&one, &two] {
        e.edge.ticket_keys().set(shared.clone(), vec![]);
    }
    let client = || tls_config(ca.root_pem(), &[b"http/1.1"]);

    let config = client();
    assert_eq!(visit(one.https, &config).await, Full);
    assert_eq!(visit(two.https, &config).await, Resumed);
    // An edge with a key of its own cannot open the others' tickets: a full handshake.
    let config = client();
    assert_eq!(visit(one.https, &config).await, Full);
    assert_eq!(visit(stranger.https, &config).await, Full);

    // Rotated live: the old key only opens; a session sealed with it still resumes.
    let config = client();
    assert_eq!(visit(one.https, &config).await, Full);
    let next = TicketKey::generate().unwrap();
    two.edge
        .ticket_keys()
        .set(next.clone(), vec![shared.clone()]);
    assert_eq!(visit(two.https, &config).await, Resumed);
    // Retired: a session sealed with a forgotten key is a full handshake.
    let config = client();
    assert_eq!(visit(one.https, &config).await, Full);
    two.edge.ticket_keys().set(next, vec![]);
    assert_eq!(visit(two.https, &config).await, Full);
}

#[tokio::test]
async fn silent_tls_client_is_dropped_after_the_handshake_timeout() {
    let ca = Ca::new();
    let certs = Arc::new(CertMap::new());
    certs.insert("a", ["a.test"], ca.leaf(&["a.test"])).unwrap();
    let limits = Limits {
        tls_handshake_timeout: std::time::Duration::from_secs(1),
        ..Limits::default()
    };
    let edge = TestEdge::start(vec![respond(&["a.test"], "a")], certs, limits).await;
    let mut tcp = tokio::net::TcpStream::connect(edge.https).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // the start of a record, then silence
    let started = tokio::time::Instant::now();
    let closed = tokio::time::timeout(DEADLINE, read_to_close(&mut tcp)).await;
    assert!(closed.is_ok(), "connection still open after {DEADLINE:?}");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
}
