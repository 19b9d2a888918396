//! The proxy when upstreams fail: passive marking and retries, active health checks (and
//! their end when routes are replaced), 502/504, each timeout, the request body limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod proxy_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use edge::{HealthCheck, Proxy, Routes};
use http::{Request, StatusCode, header};
use http_body_util::Full;
use proxy_support::*;
use testkit::{Blackhole, Upstream};

fn proxy_to(urls: &[String]) -> Proxy {
    Proxy::new(urls.to_vec())
}

#[tokio::test]
async fn traffic_continues_when_an_upstream_dies_and_returns_when_it_is_back() {
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let b_addr = b.addr();
    let mut proxy = proxy_to(&[a.url(), b.url()]);
    proxy.fail_timeout = Duration::from_millis(300);
    let edge = start(vec![site(&["app.test"], proxy)]).await;
    let counts = tally(edge.http, "app.test", 10).await;
    assert_eq!(counts.len(), 2, "{counts:?}");

    // b dies with a pooled connection open to it: every GET still succeeds (retried on a),
    // and after fail_after (3) failures b is no longer even tried.
    b.kill();
    drop(b);
    let counts = tally(edge.http, "app.test", 20).await;
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");

    // b comes back on the same address: after fail_timeout one request tries it, succeeds,
    // and b is back in rotation.
    let b = Upstream::start_at("b", b_addr).await.unwrap();
    testkit::wait_for("b to get traffic again", DEADLINE, || async {
        let reply = get(edge.http, "app.test", "/").await.ok()?;
        assert_eq!(reply.status, 200);
        (answered_by(&reply) == "b").then_some(())
    })
    .await
    .unwrap();
    let counts = tally(edge.http, "app.test", 10).await;
    assert_eq!(counts.get("b"), Some(&5), "{counts:?}");
    assert!(b.requests() >= 6);
}

#[tokio::test]
async fn only_idempotent_requests_without_body_are_retried() {
    let a = Upstream::start("a").await.unwrap();
    let dead = Upstream::start("dead").await.unwrap();
    let dead_url = dead.url();
    drop(dead);
    let mut proxy = proxy_to(&[a.url(), dead_url]);
    // Never mark: every second request meets the dead upstream.
    proxy.fail_after = 1000;
    let edge = start(vec![site(&["app.test"], proxy)]).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let post = Request::post("/form")
            .header(header::HOST, "app.test")
            .body(Full::new(Bytes::from_static(b"a=1")))
            .unwrap();
        let reply = send(None, edge.http, post).await.unwrap();
        statuses.push(reply.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 502, 502]);
    for _ in 0..4 {
        let reply = get(edge.http, "app.test", "/").await.unwrap();
        assert_eq!(reply.status, 200);
        let delete = Request::delete("/thing")
            .header(header::HOST, "app.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(None, edge.http, delete).await.unwrap().status, 200);
    }
    assert_eq!(a.requests(), 2 + 8);
}

#[tokio::test]
async fn no_healthy_upstream_is_a_502() {
    let dead = Upstream::start("dead").await.unwrap();
    let url = dead.url();
    drop(dead);
    let edge = start(vec![site(&["app.test"], proxy_to(&[url]))]).await;
    for _ in 0..3 {
        let reply = get(edge.http, "app.test", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.body, "bad gateway\n");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    // Marked after fail_after (3) failures: not even tried now.
    let reply = get(edge.http, "app.test", "/").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.body, "no healthy upstream\n");
}

#[tokio::test]
async fn active_health_checks_take_upstreams_out_and_back() {
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let mut proxy = proxy_to(&[a.url(), b.url()]);
    proxy.health = Some(HealthCheck::new("/healthz", Duration::from_millis(50)));
    let edge = start(vec![site(&["app.test"], proxy)]).await;
    testkit::wait_for("health checks on both", DEADLINE, || async {
        (a.health_checks() > 0 && b.health_checks() > 0).then_some(())
    })
    .await
    .unwrap();

    b.set_healthy(false);
    let checks = b.health_checks();
    testkit::wait_for("b's failing check", DEADLINE, || async {
        (b.health_checks() > checks + 1).then_some(())
    })
    .await
    .unwrap();
    let counts = tally(edge.http, "app.test", 6).await;
    assert_eq!(counts.get("a"), Some(&6), "{counts:?}");

    b.set_healthy(true);
    testkit::wait_for("b back in rotation", DEADLINE, || async {
        let reply = get(edge.http, "app.test", "/").await.ok()?;
        (answered_by(&reply) == "b").then_some(())
    })
    .await
    .unwrap();

    // Both down by their checks: 502 without trying.
    a.set_healthy(false);
    b.set_healthy(false);
    testkit::wait_for("no upstream left", DEADLINE, || async {
        let reply = get(edge.http, "app.test", "/").await.ok()?;
        (reply.body == "no healthy upstream\n").then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn health_checks_stop_when_the_routes_are_replaced() {
    let u = Upstream::start("u").await.unwrap();
    let mut proxy = proxy_to(&[u.url()]);
    proxy.health = Some(HealthCheck::new("/healthz", Duration::from_millis(20)));
    let edge = start(vec![site(&["app.test"], proxy)]).await;
    testkit::wait_for("a few health checks", DEADLINE, || async {
        (u.health_checks() >= 3).then_some(())
    })
    .await
    .unwrap();
    assert!(u.connections_open() >= 1);

    // A reload without the proxy site: the old routes go, their checker stops, and with it the
    // last holder of the site's connection pool, so the pooled connection closes (idle
    // connections would otherwise stay for idle_timeout, 90 s).
    edge.edge
        .set_routes(Routes::new(vec![respond(&["other.test"], "other")]).unwrap());
    testkit::wait_for("the checker's connection to close", DEADLINE, || async {
        (u.connections_open() == 0).then_some(())
    })
    .await
    .unwrap();
    let (checks, opened) = (u.health_checks(), u.connections_opened());
    // Many check intervals' worth of other requests later, no check has arrived.
    for _ in 0..20 {
        let reply = get(edge.http, "other.test", "/").await.unwrap();
        assert_eq!(reply.status, 308);
    }
    assert_eq!(u.health_checks(), checks);
    assert_eq!(u.connections_opened(), opened);
}

#[tokio::test]
async fn connect_timeout_to_a_blackhole_is_a_502() {
    let hole = Blackhole::start().await.unwrap();
    let mut proxy = proxy_to(&[hole.url()]);
    proxy.connect_timeout = Duration::from_millis(300);
    let edge = start(vec![site(&["app.test"], proxy)]).await;
    let started = Instant::now();
    let reply = get(edge.http, "app.test", "/").await.unwrap();
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn response_header_timeout_is_a_504() {
    let u = Upstream::start("u").await.unwrap();
    let mut proxy = proxy_to(&[u.url()]);
    proxy.response_header_timeout = Duration::from_millis(300);
    let edge = start(vec![site(&["app.test"], proxy)]).await;
    let started = Instant::now();
    let reply = get(edge.http, "app.test", "/hang").await.unwrap();
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.body, "gateway timeout\n");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A timed-out request is not retried, and the upstream still answers other requests.
    assert_eq!(u.requests(), 1);
    assert_eq!(get(edge.http, "app.test", "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn idle_pooled_connections_are_closed_after_idle_timeout() {
    let u = Upstream::start("u").await.unwrap();
    let mut proxy = proxy_to(&[u.url()]);
    proxy.idle_timeout = Duration::from_millis(200);
    let edge = start(vec![site(&["app.test"], proxy)]).await;
    assert_eq!(get(edge.http, "app.test", "/").await.unwrap().status, 200);
    assert_eq!(u.connections_opened(), 1);
    testkit::wait_for(
        "the idle upstream connection to close",
        DEADLINE,
        || async { (u.connections_open() == 0).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(get(edge.http, "app.test", "/").await.unwrap().status, 200);
    assert_eq!(u.connections_opened(), 2);
}

#[tokio::test]
async fn request_bodies_over_max_body_are_a_413() {
    let u = Upstream::start("u").await.unwrap();
    let mut proxy = proxy_to(&[u.url()]);
    proxy.max_body = Some(100_000);
    let edge = start(vec![site(&["app.test"], proxy)]).await;

    // Announced by Content-Length: refused before anything is sent upstream.
    let post = |len: usize| {
        Request::post("/upload")
            .header(header::HOST, "app.test")
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap()
    };
    let reply = send(None, edge.http, post(100_001)).await.unwrap();
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(u.requests(), 0);
    let reply = send(None, edge.http, post(100_000)).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-body-bytes"), Some("100000"));

    // Chunked, no length known: cut off when the limit is crossed.
    let (tx, body) = testkit::channel_body(4);
    let req = Request::post("/upload")
        .header(header::HOST, "app.test")
        .body(body)
        .unwrap();
    let addr = edge.http;
    let reply = tokio::spawn(async move { send(None, addr, req).await });
    for _ in 0..4 {
        if tx.send(testkit::chunk(40_000)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let reply = reply.await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}
