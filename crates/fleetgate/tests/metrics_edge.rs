//! The request path's metrics through the real binary (`fleetgate run` with `[admin]`):
//! requests through the HTTP/1.1 lane and through hyper (POST), plain and over TLS, unknown
//! hosts and ACME challenges; TLS handshakes served and with an unknown SNI; connections held
//! open; a proxy site's upstream taken down by its health check. Each series is checked
//! against exactly what was sent, and `promtool check metrics` accepts the scrape.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use common::scrape::{Sample, promtool_check, samples, scrape, sum};
use common::{Node, served_serial};
use http::{Request, header};
use testkit::Upstream;

const APP: &str = "app.localhost";
const HELLO: &str = "hello.localhost";
const REQUESTS: &str = "fleetgate_http_requests_total";
const DURATION_COUNT: &str = "fleetgate_http_request_duration_seconds_count";
const HANDSHAKES: &str = "fleetgate_tls_handshakes_total";
const OPEN: &str = "fleetgate_connections_open";
const UP: &str = "fleetgate_upstream_up";
const UPSTREAM_COUNT: &str = "fleetgate_upstream_response_seconds_count";

fn config(a: &Upstream, b: &Upstream, admin: SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "{admin}"

[[site]]
domains = ["{APP}"]
tls = "internal"
https_redirect = false
proxy = {{ upstreams = ["{}", "{}"], policy = "round_robin", health = {{ path = "/healthz", interval = "100ms" }} }}

[[site]]
domains = ["{HELLO}"]
tls = "internal"
respond = {{ status = 200, body = "hello" }}
"#,
        a.url(),
        b.url(),
    )
}

fn request(method: &str, host: &str, path: &str, body: &'static [u8]) -> Request<Bytes> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .body(Bytes::from_static(body))
        .unwrap()
}

/// Waits until the scrape's `name{labels}` is `value`.
async fn wait_value(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    value: f64,
) -> Result<()> {
    testkit::wait_for_ok(
        &format!("{name}{labels:?} = {value}"),
        Duration::from_secs(20),
        || async move {
            let now = sum(&samples(admin).await?, name, labels);
            anyhow::ensure!(now == value, "{name}{labels:?} is {now}");
            Ok(())
        },
    )
    .await
}

/// A scrape whose request and handshake totals the next scrape, 50 ms later, repeats.
async fn settled(admin: SocketAddr) -> Result<Vec<Sample>> {
    let totals = |s: &[Sample]| (sum(s, REQUESTS, &[]), sum(s, HANDSHAKES, &[]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = samples(admin).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = samples(admin).await?;
        if totals(&now) == totals(&last) {
            return Ok(now);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "request and handshake totals still moving after 20 s"
        );
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_path_metrics_count_what_was_sent() -> Result<()> {
    let a = Upstream::start("a").await?;
    let b = Upstream::start("b").await?;
    let ip = testkit::loopback_ip();
    let admin = SocketAddr::from((ip, testkit::free_port()));
    let mut node = Node::new(
        ip,
        testkit::free_port(),
        testkit::free_port(),
        &config(&a, &b, admin),
    )?;
    node.start().await?;
    // `ca export` may meet the starting node making the CA under its lease: asked again then.
    let root = testkit::wait_for_ok(
        "the built-in CA's root",
        Duration::from_secs(20),
        || async { node.ca_root() },
    )
    .await?;
    for name in [APP, HELLO] {
        testkit::wait_for_ok(
            &format!("a certificate for {name}"),
            Duration::from_secs(20),
            || served_serial(node.https, name, &root),
        )
        .await
        .with_context(|| node.log())?;
    }
    // The readiness probes' last handshake may be counted just after the probe returned (the
    // server counts it when the client's Finished arrives): start from settled totals.
    let before = settled(admin).await?;
    // Both upstreams are up from the start.
    for u in [&a, &b] {
        assert_eq!(
            sum(&before, UP, &[("site", APP), ("upstream", &u.url())]),
            1.0
        );
    }

    // Through the lane: bodiless GETs, proxied over plain HTTP.
    for _ in 0..6 {
        let reply = testkit::http_get(node.http, APP, "/lane").await?;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // Through hyper: POSTs with a body.
    for _ in 0..3 {
        let reply =
            testkit::http_request(node.http, request("POST", APP, "/post", b"body")).await?;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // No site: unknown hosts, and an ACME challenge nobody set.
    for _ in 0..2 {
        let reply = testkit::http_get(node.http, "nope.localhost", "/").await?;
        assert_eq!(reply.status, 404);
    }
    let reply = testkit::http_get(node.http, APP, "/.well-known/acme-challenge/abc").await?;
    assert_eq!(reply.status, 404);
    // Over TLS: two handshakes served, two with a name that has no certificate.
    for _ in 0..2 {
        let reply = testkit::https_get(node.https, HELLO, &root, "/").await?;
        assert_eq!(reply.status, 200);
    }
    for _ in 0..2 {
        let refused =
            testkit::tls_handshake(node.https, "nope.localhost", &root, &[b"http/1.1"]).await;
        assert!(
            refused.is_err(),
            "a handshake for an unknown name succeeded"
        );
    }

    // A request is counted once its response is written, which can be just after the client
    // has read it (on a loaded machine, the worker may not run again before the scrape): wait
    // for the totals, then check where each one went. One counted twice never settles.
    let requests = sum(&before, REQUESTS, &[]) + 14.0;
    wait_value(admin, REQUESTS, &[], requests).await?;
    let handshakes = sum(&before, HANDSHAKES, &[]) + 4.0;
    wait_value(admin, HANDSHAKES, &[], handshakes).await?;
    let after = samples(admin).await?;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sum(&after, name, labels) - sum(&before, name, labels)
    };
    assert_eq!(delta(REQUESTS, &[("site", APP), ("code", "200")]), 9.0);
    assert_eq!(delta(REQUESTS, &[("site", APP)]), 9.0);
    assert_eq!(delta(DURATION_COUNT, &[("site", APP)]), 9.0);
    assert_eq!(
        delta(REQUESTS, &[("site", "_unknown"), ("code", "404")]),
        2.0
    );
    assert_eq!(delta(DURATION_COUNT, &[("site", "_unknown")]), 2.0);
    assert_eq!(delta(REQUESTS, &[("site", "_acme"), ("code", "404")]), 1.0);
    assert_eq!(delta(REQUESTS, &[("site", HELLO), ("code", "200")]), 2.0);
    assert_eq!(
        delta(REQUESTS, &[]),
        14.0,
        "no request counted twice or elsewhere"
    );
    assert_eq!(delta(HANDSHAKES, &[("result", "ok")]), 2.0);
    assert_eq!(delta(HANDSHAKES, &[("result", "no_certificate")]), 2.0);
    assert_eq!(delta(HANDSHAKES, &[("result", "failed")]), 0.0);
    assert_eq!(delta(HANDSHAKES, &[("result", "acme_challenge")]), 0.0);
    // Each upstream timed the requests it answered (round robin: some each).
    for u in [&a, &b] {
        let timed = delta(UPSTREAM_COUNT, &[("site", APP), ("upstream", &u.url())]);
        assert_eq!(timed, u.requests() as f64, "{}", u.url());
        assert!(timed > 0.0, "{} answered nothing", u.url());
    }
    assert_eq!(delta(UPSTREAM_COUNT, &[("site", APP)]), 9.0);

    // Connections: counted while open, per listener, and no more once closed.
    wait_value(admin, OPEN, &[("listener", "http")], 0.0).await?;
    wait_value(admin, OPEN, &[("listener", "https")], 0.0).await?;
    let plain = [
        tokio::net::TcpStream::connect(node.http).await?,
        tokio::net::TcpStream::connect(node.http).await?,
    ];
    let config = Arc::new(testkit::client_config(&root, &[b"http/1.1"])?);
    let tls = testkit::tls_connect(node.https, HELLO, config).await?;
    wait_value(admin, OPEN, &[("listener", "http")], 2.0).await?;
    wait_value(admin, OPEN, &[("listener", "https")], 1.0).await?;
    drop(plain);
    drop(tls);
    wait_value(admin, OPEN, &[("listener", "http")], 0.0).await?;
    wait_value(admin, OPEN, &[("listener", "https")], 0.0).await?;

    // An upstream whose health check fails is down; back up when it passes again.
    b.set_healthy(false);
    wait_value(admin, UP, &[("site", APP), ("upstream", &b.url())], 0.0).await?;
    assert_eq!(
        sum(
            &samples(admin).await?,
            UP,
            &[("site", APP), ("upstream", &a.url())]
        ),
        1.0
    );
    b.set_healthy(true);
    wait_value(admin, UP, &[("site", APP), ("upstream", &b.url())], 1.0).await?;

    let text = scrape(admin).await?;
    // The request path's series, for the test's output.
    for line in text.lines().filter(|l| {
        !l.starts_with('#')
            && !l.contains("_bucket")
            && [
                REQUESTS,
                "fleetgate_http_request_duration_seconds_count",
                HANDSHAKES,
                OPEN,
                UP,
                UPSTREAM_COUNT,
            ]
            .iter()
            .any(|n| l.starts_with(n))
    }) {
        eprintln!("{line}");
    }
    promtool_check(&text)?;
    Ok(())
}
