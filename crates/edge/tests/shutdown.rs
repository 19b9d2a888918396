//! Graceful shutdown: stop accepting, finish requests in flight, drop them at the drain timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use edge::{CertMap, Limits};
use http::StatusCode;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

const TOKEN_PATH: &str = "/.well-known/acme-challenge/slow";

/// An edge whose HTTP-01 answers wait for the test's go-ahead.
async fn start(limits: Limits) -> TestEdge {
    let ca = Ca::new();
    let certs = Arc::new(CertMap::new());
    certs.insert("a", ["a.test"], ca.leaf(&["a.test"])).unwrap();
    let limits = Limits {
        challenge_timeout: Duration::from_secs(60),
        ..limits
    };
    let edge = TestEdge::start(vec![respond(&["a.test"], "a")], certs, limits).await;
    edge.challenges.add_http01("a.test", "slow", "slow.key");
    *edge.challenges.hold.lock().unwrap() = true;
    edge
}

async fn refuses_connections(addr: std::net::SocketAddr) -> Option<()> {
    TcpStream::connect(addr).await.is_err().then_some(())
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight() {
    let mut edge = start(Limits::default()).await;
    let addr = edge.http;
    let in_flight =
        tokio::spawn(async move { testkit::http_get(addr, "a.test", TOKEN_PATH).await });
    timeout(DEADLINE, edge.challenges.entered.notified())
        .await
        .expect("request reached the responder");

    edge.shutdown.cancel();
    testkit::wait_for("the listener to close", DEADLINE, || {
        refuses_connections(addr)
    })
    .await
    .unwrap();
    let http_task = edge.http_task.take().unwrap();
    assert!(
        !http_task.is_finished(),
        "returned while a request was in flight"
    );

    edge.challenges.release.notify_one();
    let reply = timeout(DEADLINE, in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "slow.key");
    // The request was the last thing holding the server: it returns now.
    timeout(DEADLINE, http_task)
        .await
        .expect("serve_http returned")
        .unwrap();
    timeout(DEADLINE, edge.https_task.take().unwrap())
        .await
        .expect("serve_https returned")
        .unwrap();
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let mut edge = start(Limits::default()).await;
    let mut idle = TcpStream::connect(edge.http).await.unwrap();
    // Make sure the connection is being served (not just queued) before shutting down.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = timeout(DEADLINE, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 308"));

    let started = Instant::now();
    edge.shutdown.cancel();
    timeout(DEADLINE, edge.http_task.take().unwrap())
        .await
        .expect("serve_http returned")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let rest = timeout(DEADLINE, read_to_close(&mut idle)).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn drain_timeout_drops_requests_that_do_not_finish() {
    let mut edge = start(Limits {
        drain_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let addr = edge.http;
    let in_flight =
        tokio::spawn(async move { testkit::http_get(addr, "a.test", TOKEN_PATH).await });
    timeout(DEADLINE, edge.challenges.entered.notified())
        .await
        .expect("request reached the responder");

    let started = Instant::now();
    edge.shutdown.cancel();
    timeout(DEADLINE, edge.http_task.take().unwrap())
        .await
        .expect("serve_http returned")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "returned before the drain timeout: {waited:?}"
    );
    let reply = timeout(DEADLINE, in_flight).await.unwrap().unwrap();
    assert!(
        reply.is_err(),
        "the unfinished request was dropped: {reply:?}"
    );
}
