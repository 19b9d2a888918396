//! End to end through the testkit's Pebble: an ACME client (instant-acme) gets a certificate over
//! HTTP-01 answered on `Pebble::http01_addr()`, and the issued chain verifies against
//! `issuing_root_pem()` with `tls_handshake`. Pins down the Pebble flags the testkit relies on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::ServerConfig;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use testkit::{Pebble, free_addr, loopback_ip, pem_certs, tls_handshake};

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// Answers `GET /.well-known/acme-challenge/<token>` from `tokens`.
async fn serve_http01(listener: TcpListener, tokens: Tokens) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&got);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let token = path
                .strip_prefix("/.well-known/acme-challenge/")
                .unwrap_or("");
            let reply = match tokens.lock().unwrap().get(token) {
                Some(body) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = tcp.write_all(reply.as_bytes()).await;
        });
    }
}

#[tokio::test]
async fn issues_over_http01_and_chain_verifies_against_issuing_root() {
    let ip = loopback_ip();
    let http01 = TcpListener::bind(free_addr(ip)).await.unwrap();
    let pebble = Pebble::builder()
        .resolve_to(ip)
        .http_port(http01.local_addr().unwrap().port())
        .validity(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    assert_eq!(pebble.http01_addr(), http01.local_addr().unwrap());
    let tokens = Tokens::default();
    tokio::spawn(serve_http01(http01, tokens.clone()));

    let (account, _) = Account::builder_with_root(pebble.listener_ca_path())
        .unwrap()
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            pebble.directory_url(),
            None,
        )
        .await
        .unwrap();
    let ids = [Identifier::Dns("e2e.test".to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz.unwrap();
        assert_eq!(authz.status, AuthorizationStatus::Pending);
        let mut challenge = authz.challenge(ChallengeType::Http01).unwrap();
        tokens.lock().unwrap().insert(
            challenge.token.clone(),
            challenge.key_authorization().as_str().to_owned(),
        );
        challenge.set_ready().await.unwrap();
    }
    let status = order.poll_ready(&RetryPolicy::default()).await.unwrap();
    assert_eq!(
        status,
        OrderStatus::Ready,
        "pebble log:\n{}",
        pebble.pebble_log()
    );
    let key_pem = order.finalize().await.unwrap();
    let chain_pem = order
        .poll_certificate(&RetryPolicy::default())
        .await
        .unwrap();

    // Pebble returns leaf + intermediate; the root is not in the chain.
    let chain = pem_certs(&chain_pem).unwrap();
    assert_eq!(chain.len(), 2, "{chain_pem}");

    // Serve the issued chain and verify it against the issuing root, for the exact name.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            chain,
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let tls = TcpListener::bind(free_addr(loopback_ip())).await.unwrap();
    let tls_addr = tls.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = tls.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    let root = pebble.issuing_root_pem().await.unwrap();
    let info = tls_handshake(tls_addr, "e2e.test", &root, &[])
        .await
        .unwrap();
    assert_eq!(info.leaf.dns_names, vec!["e2e.test"]);
    let lifetime = info
        .leaf
        .not_after
        .duration_since(info.leaf.not_before)
        .unwrap();
    println!(
        "validity 3600 s -> notBefore..notAfter = {lifetime:?}; notAfter in {:?}",
        info.leaf
            .not_after
            .duration_since(SystemTime::now())
            .unwrap()
    );
    assert!(lifetime <= Duration::from_secs(3600 + 1), "{lifetime:?}");
    let status = pebble.cert_status(&info.leaf.serial_hex).await.unwrap();
    assert_eq!(status["Status"], "Valid", "{status}");
}
