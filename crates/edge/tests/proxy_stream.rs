//! Streaming through the proxy: 100 MB each way with bounded memory, nginx as a real upstream,
//! WebSocket echo through an HTTP/1.1 upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod proxy_support;

use std::time::Duration;

use common::*;
use edge::Proxy;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use proxy_support::*;
use testkit::{Nginx, Upstream, WsFrame};
use tokio::net::TcpStream;

const MB: u64 = 1024 * 1024;
const BIG: u64 = 100 * MB;

/// Downloads `path` for `host` over one HTTP/1.1 connection, counting the body as it streams
/// (never holding it); returns (status, bytes).
async fn download(addr: std::net::SocketAddr, host: &str, path: &str) -> (StatusCode, u64) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let response = sender.send_request(get_request(host, path)).await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            total += data.len() as u64;
        }
    }
    conn.abort();
    (status, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_each_way_stream_with_bounded_memory() {
    let up = Upstream::start("up").await.unwrap();
    let nginx = Nginx::start("").await.unwrap();
    nginx.write_file("big.bin", BIG).unwrap();
    let edge = start(vec![
        site(&["upload.test"], Proxy::new(vec![up.url()])),
        site(&["nginx.test"], Proxy::new(vec![nginx.url()])),
    ])
    .await;
    // Warm up (thread stacks, pools, TLS-free code paths) before measuring.
    assert_eq!(
        get(edge.http, "upload.test", "/").await.unwrap().status,
        200
    );
    testkit::reset_peak_rss().unwrap();
    let baseline = testkit::proc_status_bytes(None, "VmHWM").unwrap();

    // Upload: the client sends 1 MiB chunks only when the test says so. The upstream must see
    // data arrive while most of the body has not been sent yet: the proxy does not wait for the
    // whole body.
    let (tx, body) = testkit::channel_body(2);
    let req = Request::post("/upload")
        .header(header::HOST, "upload.test")
        .body(body)
        .unwrap();
    let addr = edge.http;
    let upload = tokio::spawn(async move { send(None, addr, req).await });
    let chunk = testkit::chunk(MB as usize);
    for _ in 0..8 {
        tx.send(chunk.clone()).await.unwrap();
    }
    testkit::wait_for(
        "the upstream to receive the start of the body",
        DEADLINE,
        || async { (up.body_bytes() >= MB).then_some(()) },
    )
    .await
    .unwrap();
    assert!(up.body_bytes() <= 8 * MB);
    for _ in 8..100 {
        tx.send(chunk.clone()).await.unwrap();
    }
    drop(tx);
    let reply = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-body-bytes"), Some(BIG.to_string().as_str()));

    // Download from nginx (sendfile from disk), counted as it streams.
    let (status, bytes) = tokio::time::timeout(
        Duration::from_secs(60),
        download(edge.http, "nginx.test", "/big.bin"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(bytes, BIG);

    // Everything (client, proxy, upstream) runs in this process: 200 MB went through it.
    let peak = testkit::proc_status_bytes(None, "VmHWM").unwrap();
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "peak RSS grew by {} KiB (baseline {} KiB)",
        grew / 1024,
        baseline / 1024
    );
    assert!(
        grew < 40 * MB,
        "peak RSS grew by {} MiB while streaming 2 x 100 MiB",
        grew / MB
    );
}

#[tokio::test]
async fn nginx_as_upstream_sees_forwarded_headers() {
    let nginx = Nginx::start("").await.unwrap();
    let edge = start(vec![site(&["app.test"], Proxy::new(vec![nginx.url()]))]).await;
    for _ in 0..3 {
        let reply = get(edge.http, "app.test", "/echo").await.unwrap();
        assert_eq!(reply.status, 200, "{}", nginx.error_log());
        assert_eq!(
            String::from_utf8_lossy(&reply.body),
            "nginx host=app.test xff=127.0.0.1 proto=http via=1.1 fleetgate\n"
        );
        assert_eq!(reply.header("via"), Some("1.1 fleetgate"));
    }
    let reply = get(edge.http, "app.test", "/missing").await.unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn websocket_echo_through_an_upgrade() {
    let up = Upstream::start("ws").await.unwrap();
    let edge = start(vec![site(&["app.test"], Proxy::new(vec![up.url()]))]).await;
    let mut tcp = TcpStream::connect(edge.http).await.unwrap();
    let head = testkit::ws_handshake(&mut tcp, "app.test", "/chat")
        .await
        .unwrap();
    assert!(
        head.to_ascii_lowercase().contains("via: 1.1 fleetgate"),
        "{head}"
    );
    for (i, len) in [5usize, 200, 70_000].into_iter().enumerate() {
        let frame = WsFrame {
            opcode: if i == 0 { 1 } else { 2 },
            payload: vec![b'a' + i as u8; len],
        };
        testkit::ws_write(&mut tcp, &frame, Some([9, 8, 7, 6]))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(DEADLINE, testkit::ws_read(&mut tcp))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, frame);
    }
    let close = WsFrame {
        opcode: 8,
        payload: vec![3, 232],
    };
    testkit::ws_write(&mut tcp, &close, Some([1, 2, 3, 4]))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(DEADLINE, testkit::ws_read(&mut tcp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed.opcode, 8);
    // The upstream closed its side: so does the edge.
    let rest = tokio::time::timeout(DEADLINE, read_to_close(&mut tcp))
        .await
        .unwrap();
    assert!(rest.is_empty());
    // The tunnel is gone, and with it the upstream connection.
    testkit::wait_for("the upstream connection to close", DEADLINE, || async {
        (up.connections_open() == 0).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn https_upstream_verified_against_the_sites_own_root() {
    let ip = testkit::loopback_ip();
    let pki = testkit::ca_and_leaf_with(&[&ip.to_string()], testkit::LeafKey::default()).unwrap();
    let nginx = Nginx::start_tls_on(ip, &pki.leaf_cert_pem, &pki.leaf_key_pem, "")
        .await
        .unwrap();
    assert!(nginx.url().starts_with("https://"));
    let mut trusted = Proxy::new(vec![nginx.url()]);
    trusted.ca_root_pem = Some(pki.ca_pem.clone());
    // Another CA's root: the upstream's certificate does not verify.
    let other = testkit::ca_and_leaf_with(&["other.test"], testkit::LeafKey::default()).unwrap();
    let mut untrusted = Proxy::new(vec![nginx.url()]);
    untrusted.ca_root_pem = Some(other.ca_pem);
    let edge = start(vec![
        site(&["trusted.test"], trusted),
        site(&["untrusted.test"], untrusted),
    ])
    .await;
    for _ in 0..2 {
        let reply = get(edge.http, "trusted.test", "/echo").await.unwrap();
        assert_eq!(reply.status, 200, "{}", nginx.error_log());
        assert_eq!(
            String::from_utf8_lossy(&reply.body),
            "nginx host=trusted.test xff=127.0.0.1 proto=http via=1.1 fleetgate\n"
        );
    }
    let reply = get(edge.http, "untrusted.test", "/echo").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
}

#[test]
fn bad_roots_and_upstreams_are_refused_when_routes_are_built() {
    let mut proxy = Proxy::new(vec!["https://127.0.0.1:1".to_owned()]);
    proxy.ca_root_pem = Some("not a certificate".to_owned());
    let err = edge::Routes::new(vec![site(&["a.test"], proxy)]).unwrap_err();
    assert!(err.to_string().contains("ca_root"), "{err}");
    let err = edge::Routes::new(vec![site(&["a.test"], Proxy::new(vec![]))]).unwrap_err();
    assert!(err.to_string().contains("upstreams"), "{err}");
    let err = edge::Routes::new(vec![site(
        &["a.test"],
        Proxy::new(vec!["http://h/x".into()]),
    )])
    .unwrap_err();
    assert!(err.to_string().contains("no path"), "{err}");
}
