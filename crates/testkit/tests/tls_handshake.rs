//! `tls_handshake` and `https_get` against a tiny in-test tokio-rustls server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use testkit::{
    LeafKey, ca_and_leaf, ca_and_leaf_with, free_addr, https_get, loopback_ip, pem_certs,
    tls_handshake,
};

/// Serves TLS with the given leaf; answers every request with a fixed HTTP/1.1 response.
async fn serve(cert_pem: &str, key_pem: &str) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            pem_certs(cert_pem).unwrap(),
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(free_addr(loopback_ip())).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-test: yes\r\n\r\nhello")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn handshake_verifies_chain_for_the_exact_name() {
    let (ca, cert, key) = ca_and_leaf(&["shop.test", "*.wild.test"]);
    let addr = serve(&cert, &key).await;

    let info = tls_handshake(addr, "shop.test", &ca, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(info.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(info.peer_chain.len(), 1);
    assert_eq!(info.leaf.dns_names, vec!["shop.test", "*.wild.test"]);
    assert!(info.leaf.not_after > std::time::SystemTime::now());

    let info = tls_handshake(addr, "a.wild.test", &ca, &[]).await.unwrap();
    assert_eq!(info.alpn, None);

    // A name the certificate does not cover, and a root that did not sign it, both fail.
    let err = tls_handshake(addr, "other.test", &ca, &[])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("not valid for name"), "{err:#}");
    let (other_ca, _, _) = ca_and_leaf(&["shop.test"]);
    let err = tls_handshake(addr, "shop.test", &other_ca, &[])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("UnknownIssuer"), "{err:#}");
}

#[tokio::test]
async fn https_get_over_verified_tls_with_pkcs1_key() {
    let pki = ca_and_leaf_with(&["shop.test"], LeafKey::Rsa2048Pkcs1).unwrap();
    let addr = serve(&pki.leaf_cert_pem, &pki.leaf_key_pem).await;
    let resp = https_get(addr, "shop.test", &pki.ca_pem, "/")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-test"), Some("yes"));
    assert_eq!(resp.text(), "hello");
}
