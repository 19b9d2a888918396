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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_upstream_framings_and_an_early_answer_reach_the_client() {
    let (addr, upstream) = raw_upstream(|_, path| match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/continue" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\
              Keep-Alive: timeout=5\r\nProxy-Agent: x\r\nX-Kept: yes\r\n\r\ndone",
            false,
        ),
        "/close" => (
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
            true,
        ),
        "/short" => (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", true),
        "/garbage" => (b"SPDY/3 what\r\n\r\n", true),
        // Answers before the body and closes without reading it.
        "/upload" => (
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
            true,
        ),
        _ => (b"HTTP/1.1 204 No Content\r\n\r\n", false),
    })
    .await;
    let edge = start(vec![site(
        &["raw.test"],
        Proxy::new(vec![format!("http://{addr}")]),
    )])
    .await;

    let reply = get(edge.http, "raw.test", "/chunked").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"hello, world");
    assert!(reply.header("x-trailer").is_none());
    // The same kept-alive upstream connection serves the next ones.
    let reply = get(edge.http, "raw.test", "/continue").await.unwrap();
    assert_eq!(
        (reply.status.as_u16(), &reply.body[..]),
        (201, &b"done"[..])
    );
    // Hop-by-hop fields stay between the upstream and the proxy; Via names the hop.
    assert!(reply.header("keep-alive").is_none(), "{:?}", reply.headers);
    assert!(reply.header("proxy-agent").is_none(), "{:?}", reply.headers);
    assert_eq!(reply.header("x-kept"), Some("yes"));
    assert_eq!(reply.header("via"), Some("1.1 fleetgate"));
    let reply = get(edge.http, "raw.test", "/close").await.unwrap();
    assert_eq!(
        (reply.status.as_u16(), &reply.body[..]),
        (200, &b"until the end"[..])
    );
    assert_eq!(reply.header("via"), Some("1.0 fleetgate"));
    let reply = get(edge.http, "raw.test", "/nothing").await.unwrap();
    assert_eq!(reply.status, 204);
    // A body shorter than announced aborts the client's response rather than ending it.
    assert!(get(edge.http, "raw.test", "/short").await.is_err());
    assert_eq!(
        get(edge.http, "raw.test", "/garbage").await.unwrap().status,
        502
    );

    // 8 MiB that the upstream never reads: its early answer is what the client gets. A raw
    // client reads while it writes: once the edge has answered it stops reading the body, and
    // the client's writes fail (an HTTP client library may report that instead of the answer).
    let tcp = TcpStream::connect(edge.http).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: raw.test\r\nContent-Length: {}\r\n\r\n",
            8 * MB
        );
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&vec![b'x'; 8 * MB as usize]).await;
    });
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt as _;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"too large") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("the edge answered in time");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.ends_with("too large"), "{answer}");
    writer.abort();
    upstream.abort();
}
