//! Bad and slow clients: malformed requests, oversized heads, slow heads, idle connections,
//! the connection limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use edge::{CertMap, Limits};
use http::StatusCode;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

async fn start(limits: Limits) -> (Ca, TestEdge) {
    let ca = Ca::new();
    let certs = Arc::new(CertMap::new());
    certs.insert("a", ["a.test"], ca.leaf(&["a.test"])).unwrap();
    let mut site = respond(&["a.test"], "a");
    site.https_redirect = false;
    let edge = TestEdge::start(vec![site], certs, limits).await;
    (ca, edge)
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let (_ca, edge) = start(Limits::default()).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a.test\r\nBad Header\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX: a\0b\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a.test\r\n\r\n",
        b"\x00\x01\x02garbage\r\n\r\n",
    ] {
        let reply = testkit::raw_http(edge.http, request).await.unwrap();
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{:?} -> {reply:?}",
            String::from_utf8_lossy(request)
        );
    }
    // The same server answers well-formed requests.
    let reply = testkit::raw_http(
        edge.http,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let (_ca, edge) = start(Limits {
        max_header_bytes: 16 * 1024,
        ..Limits::default()
    })
    .await;
    let request = |filler: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "x".repeat(filler)
        )
    };
    let reply = testkit::raw_http(edge.http, request(12 * 1024).as_bytes())
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "12 KiB head: {reply:?}");
    let reply = testkit::raw_http(edge.http, request(20 * 1024).as_bytes())
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 431"), "20 KiB head: {reply:?}");
    // Many small headers add up the same way.
    let many: String = (0..2000)
        .map(|i| format!("X-H{i}: 0123456789\r\n"))
        .collect();
    let request = format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many}\r\n");
    let reply = testkit::raw_http(edge.http, request.as_bytes())
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 431"), "2000 headers: {reply:?}");
}

#[tokio::test]
async fn slow_request_head_is_cut_off_after_the_header_read_timeout() {
    let (_ca, edge) = start(Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let mut tcp = TcpStream::connect(edge.http).await.unwrap();
    tcp.write_all(b"GET /slow HT").await.unwrap();
    let started = Instant::now();
    let reply = timeout(DEADLINE, read_to_close(&mut tcp)).await;
    let waited = started.elapsed();
    assert!(reply.is_ok(), "still open after {DEADLINE:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed too late: {waited:?}"
    );

    // A client that connects and never sends a byte meets the same limit.
    let mut tcp = TcpStream::connect(edge.http).await.unwrap();
    let started = Instant::now();
    assert!(timeout(DEADLINE, read_to_close(&mut tcp)).await.is_ok());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_http2_connection_is_closed_after_the_idle_timeout() {
    let (ca, edge) = start(Limits {
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let mut conn = Conn::open(edge.https, "a.test", tls_config(ca.root_pem(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(
        conn.get("a.test", "/").await.unwrap().status,
        StatusCode::OK
    );
    let started = Instant::now();
    timeout(DEADLINE, &mut conn.closed)
        .await
        .expect("idle connection closed")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
}

#[tokio::test]
async fn http2_connection_without_a_request_is_closed_after_the_header_read_timeout() {
    let (ca, edge) = start(Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let conn = Conn::open(edge.https, "a.test", tls_config(ca.root_pem(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    timeout(DEADLINE, conn.closed)
        .await
        .expect("connection closed")
        .unwrap();
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let (_ca, edge) = start(Limits {
        max_connections: 1,
        ..Limits::default()
    })
    .await;
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    // The first connection holds the only slot (an incomplete head keeps it open).
    let mut first = TcpStream::connect(edge.http).await.unwrap();
    first.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // The second is queued in the kernel's backlog and not served yet.
    let mut second = TcpStream::connect(edge.http).await.unwrap();
    second.write_all(request).await.unwrap();
    let early = timeout(Duration::from_millis(500), read_to_close(&mut second)).await;
    assert!(early.is_err(), "served beyond max_connections: {early:?}");
    // Finish the first request: its connection closes and frees the slot.
    first
        .write_all(b"Host: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = timeout(DEADLINE, read_to_close(&mut first)).await.unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    let reply = timeout(DEADLINE, read_to_close(&mut second)).await.unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

#[tokio::test]
async fn oversized_http2_header_list_gets_431() {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (ca, edge) = start(Limits::default()).await;
    let tls = testkit::tls_connect(edge.https, "a.test", tls_config(ca.root_pem(), &[b"h2"]))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (size, expected) in [
        (12 * 1024, StatusCode::OK),
        (20 * 1024, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
    ] {
        let req = http::Request::get("https://a.test/")
            .header("x-filler", "x".repeat(size))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = timeout(DEADLINE, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), expected, "{size} bytes");
        timeout(DEADLINE, response.into_body().collect())
            .await
            .unwrap()
            .unwrap();
    }
}
