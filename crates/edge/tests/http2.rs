//! HTTP/2 streams are polled in their connection's task (http2.rs): a stream that waits must not
//! hold up the others on its connection, many streams at once are all answered, and a stream
//! still waiting when the connection is told to close finishes first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod proxy_support;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use edge::{CertMap, Limits, Proxy};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use proxy_support::site;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// An upstream answering `GET /slow` only once `release` is notified, anything else at once;
/// each answer is the path.
async fn gated_upstream(release: Arc<Notify>) -> String {
    gated_upstream_counting(release, Arc::new(Notify::new()), Arc::new(Notify::new())).await
}

/// As [`gated_upstream`], notifying `arrived` whenever a `/slow` request comes in and `closed`
/// whenever a connection waiting in `/slow` is closed by the edge.
async fn gated_upstream_counting(
    release: Arc<Notify>,
    arrived: Arc<Notify>,
    closed: Arc<Notify>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let release = Arc::clone(&release);
            let arrived = Arc::clone(&arrived);
            let closed = Arc::clone(&closed);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let text = String::from_utf8_lossy(&head[..end]).into_owned();
                        head.drain(..end + 4);
                        let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                        if path == "/slow" {
                            arrived.notify_one();
                            tokio::select! {
                                () = release.notified() => {}
                                // The edge gave up on the request: its end of the socket closed.
                                _ = socket.read(&mut buf) => {
                                    closed.notify_one();
                                    return;
                                }
                            }
                        }
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                            path.len()
                        );
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

async fn h2_edge(upstream: String) -> (TestEdge, Ca) {
    let ca = Ca::new();
    let certs = Arc::new(CertMap::new());
    certs
        .insert("h2", ["h2.test"], ca.leaf(&["h2.test"]))
        .unwrap();
    let edge = TestEdge::start(
        vec![site(&["h2.test"], Proxy::new(vec![upstream]))],
        certs,
        Limits::default(),
    )
    .await;
    (edge, ca)
}

/// A second handle on the connection's HTTP/2 client, for requests in parallel.
fn sender(conn: &Conn) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    match &conn.client {
        Client::H2(send) => send.clone(),
        Client::H1(_) => panic!("not HTTP/2"),
    }
}

async fn get(
    mut send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
) -> (StatusCode, Bytes) {
    let req = Request::get(format!("https://h2.test{path}"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.ready().await.unwrap();
    let response = send.send_request(req).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_stream_does_not_hold_up_the_others_on_its_connection() {
    let release = Arc::new(Notify::new());
    let (edge, ca) = h2_edge(gated_upstream(Arc::clone(&release)).await).await;
    let conn = Conn::open(edge.https, "h2.test", tls_config(ca.root_pem(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    let slow = tokio::spawn(get(sender(&conn), "/slow"));
    // Many streams at once, while /slow waits, all answered on the same connection.
    let fast: Vec<_> = (0..150)
        .map(|i| tokio::spawn(get(sender(&conn), if i % 2 == 0 { "/a" } else { "/b" })))
        .collect();
    for (i, task) in fast.into_iter().enumerate() {
        let (status, body) = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("a fast stream waited for the slow one")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, if i % 2 == 0 { "/a" } else { "/b" });
    }
    assert!(!slow.is_finished());
    release.notify_one();
    let (status, body) = tokio::time::timeout(DEADLINE, slow).await.unwrap().unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"/slow"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_at_shutdown_is_answered_before_the_connection_closes() {
    let release = Arc::new(Notify::new());
    let (edge, ca) = h2_edge(gated_upstream(Arc::clone(&release)).await).await;
    let conn = Conn::open(edge.https, "h2.test", tls_config(ca.root_pem(), &[b"h2"]))
        .await
        .unwrap();
    let slow = tokio::spawn(get(sender(&conn), "/slow"));
    // /slow was accepted (its stream is running) once a stream opened after it is answered.
    assert_eq!(get(sender(&conn), "/a").await.0, StatusCode::OK);
    edge.shutdown.cancel();
    release.notify_one();
    let (status, body) = tokio::time::timeout(DEADLINE, slow).await.unwrap().unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"/slow"[..]));
    // Then the connection ends (GOAWAY, closed).
    tokio::time::timeout(DEADLINE, conn.closed)
        .await
        .expect("the connection stays open after its last stream")
        .unwrap();
}

/// What a raw HTTP/2 client sees first: the server's SETTINGS, hyper's defaults but for the
/// header list size, which is `Limits::max_header_bytes`. The per-connection builder
/// (`http2::Settings`) must keep giving exactly these.
#[tokio::test]
async fn settings_frame_a_raw_client_sees() {
    let (edge, ca) = h2_edge("http://127.0.0.1:9".to_owned()).await;
    let mut tls = testkit::tls_connect(edge.https, "h2.test", tls_config(ca.root_pem(), &[b"h2"]))
        .await
        .unwrap();
    // The preface, then an empty SETTINGS frame.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(DEADLINE, tls.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    assert_eq!((head[3], head[4]), (0x4, 0), "a SETTINGS frame without ACK");
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    let max_header_list = u32::try_from(Limits::default().max_header_bytes).unwrap();
    assert_eq!(
        settings,
        [
            (0x3, 200),             // MAX_CONCURRENT_STREAMS
            (0x4, 1024 * 1024),     // INITIAL_WINDOW_SIZE
            (0x5, 16 * 1024),       // MAX_FRAME_SIZE
            (0x6, max_header_list), // MAX_HEADER_LIST_SIZE
        ]
    );
}

/// A client that goes away while its stream waits for the upstream: the connection's task
/// ends the stream (its upstream request is dropped) rather than leaving it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waiting_when_its_client_vanishes_is_dropped() {
    let (arrived, closed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let upstream = gated_upstream_counting(
        Arc::new(Notify::new()),
        Arc::clone(&arrived),
        Arc::clone(&closed),
    )
    .await;
    let (edge, ca) = h2_edge(upstream).await;
    let conn = Conn::open(edge.https, "h2.test", tls_config(ca.root_pem(), &[b"h2"]))
        .await
        .unwrap();
    let slow = tokio::spawn(get(sender(&conn), "/slow"));
    assert_eq!(get(sender(&conn), "/a").await.0, StatusCode::OK);
    // The slow request must be waiting upstream before its client goes (on a loaded machine
    // the spawned request may not have been sent yet).
    tokio::time::timeout(DEADLINE, arrived.notified())
        .await
        .expect("the slow request reaches the upstream");
    // Gone: the client's connection task (and with it the socket) and every handle on it.
    slow.abort();
    conn.closed.abort();
    drop(conn.client);
    tokio::time::timeout(DEADLINE, closed.notified())
        .await
        .expect("the upstream request outlived its client");
}
