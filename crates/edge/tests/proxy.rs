//! The reverse proxy against real upstream servers: balancing policies, header rewriting, Host
//! handling, HTTP/2 clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod proxy_support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use common::*;
use edge::{CertMap, HostHeader, Limits, Policy, Proxy};
use http::{Request, header};
use proxy_support::*;
use testkit::Upstream;

async fn upstreams(n: usize) -> Vec<Upstream> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Upstream::start(&format!("u{i}")).await.unwrap());
    }
    out
}

fn proxy(ups: &[Upstream], policy: Policy) -> Proxy {
    let mut proxy = Proxy::new(ups.iter().map(Upstream::url).collect());
    proxy.policy = policy;
    proxy
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_kept_alive_connections() {
    let ups = upstreams(3).await;
    let edge = start(vec![site(&["app.test"], proxy(&ups, Policy::RoundRobin))]).await;
    let counts = tally(edge.http, "app.test", 30).await;
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );
    // Sequential requests reuse the pooled connection of each upstream: a connection is back
    // in the pool before the client has the end of its response.
    for u in &ups {
        assert_eq!(u.requests(), 10);
        assert_eq!(u.connections_opened(), 1, "{}", u.name());
    }
}

#[tokio::test]
async fn pooled_connections_the_upstream_closed_are_replaced_unnoticed() {
    let ups = upstreams(1).await;
    let u = &ups[0];
    let edge = start(vec![site(&["app.test"], proxy(&ups, Policy::RoundRobin))]).await;
    for round in 1..=3u64 {
        for _ in 0..3 {
            let reply = get(edge.http, "app.test", "/").await.unwrap();
            assert_eq!(reply.status, 200, "round {round}");
        }
        assert_eq!(u.connections_opened(), round);
        // The upstream closes the idle kept-alive connection, as its keep-alive timeout would;
        // the next request notices when it takes the connection and dials a new one.
        u.close_connections();
        testkit::wait_for(
            "the upstream to close its connections",
            DEADLINE,
            || async { (u.connections_open() == 0).then_some(()) },
        )
        .await
        .unwrap();
    }
    assert_eq!(u.requests(), 9);
}

#[tokio::test]
async fn ip_hash_sticks_each_client_to_one_upstream() {
    let ups = upstreams(3).await;
    let edge = start(vec![site(&["app.test"], proxy(&ups, Policy::IpHash))]).await;
    let mut used = BTreeSet::new();
    for client in 10..26u8 {
        let from = Ipv4Addr::new(127, 0, 0, client);
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            let reply = send(Some(from), edge.http, get_request("app.test", "/"))
                .await
                .unwrap();
            assert_eq!(reply.status, 200);
            seen.insert(answered_by(&reply));
        }
        assert_eq!(seen.len(), 1, "client {from} went to {seen:?}");
        used.extend(seen);
    }
    assert!(used.len() >= 2, "16 clients all hashed to {used:?}");
}

#[tokio::test]
async fn least_conn_prefers_the_idle_upstream() {
    let ups = upstreams(2).await;
    let edge = start(vec![site(&["app.test"], proxy(&ups, Policy::LeastConn))]).await;
    // One request held open by an upstream.
    let addr = edge.http;
    let held = tokio::spawn(async move { get(addr, "app.test", "/hang").await });
    let busy = testkit::wait_for(
        "the held request to reach an upstream",
        DEADLINE,
        || async { ups.iter().position(|u| u.requests() == 1) },
    )
    .await
    .unwrap();
    let idle = 1 - busy;
    let counts = tally(edge.http, "app.test", 8).await;
    assert_eq!(counts.get(ups[idle].name()), Some(&8), "{counts:?}");
    // Once the held request is gone, both take requests again.
    held.abort();
    testkit::wait_for("the held connection to close", DEADLINE, || async {
        (ups[busy].connections_open() == 0).then_some(())
    })
    .await
    .unwrap();
    let counts = tally(edge.http, "app.test", 4).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
}

#[tokio::test]
async fn request_and_response_headers_are_rewritten() {
    let ups = upstreams(1).await;
    let edge = start(vec![site(&["app.test"], proxy(&ups, Policy::RoundRobin))]).await;
    let host = format!("app.test:{}", edge.http.port());
    let req = Request::get("/path?q=1")
        .header(header::HOST, &host)
        .header(header::CONNECTION, "keep-alive, X-Secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header(header::TE, "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("proxy", "http://evil.test")
        .header("x-forwarded-for", "203.0.113.1")
        .header("forwarded", "for=203.0.113.1;proto=https")
        .header("via", "1.1 balancer")
        .header("x-kept", "yes")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = send(Some(Ipv4Addr::new(127, 0, 0, 77)), edge.http, req)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let seen = echo(&reply);
    assert_eq!(seen.request_line, "GET /path?q=1 HTTP/1.1");
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy",
        "transfer-encoding",
    ] {
        assert!(
            seen.header(gone).is_none(),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(seen.all("host"), [host.as_str()]);
    assert_eq!(seen.all("x-forwarded-for"), ["203.0.113.1, 127.0.0.77"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), [host.as_str()]);
    assert_eq!(
        seen.all("forwarded"),
        [
            format!("for=203.0.113.1;proto=https, for=127.0.0.77;host=\"{host}\";proto=http")
                .as_str()
        ]
    );
    assert_eq!(seen.all("via"), ["1.1 balancer", "1.1 fleetgate"]);
    assert_eq!(seen.all("x-kept"), ["yes"]);

    // The upstream's hop-by-hop fields stay between it and the proxy.
    assert!(reply.header("keep-alive").is_none(), "{:?}", reply.headers);
    assert!(reply.header("x-private").is_none(), "{:?}", reply.headers);
    assert_ne!(reply.header("connection"), Some("x-private"));
    assert_eq!(reply.header("via"), Some("1.1 fleetgate"));
    assert_eq!(reply.header("x-upstream"), Some("u0"));
}

#[tokio::test]
async fn host_header_pass_upstream_or_literal() {
    let ups = upstreams(1).await;
    let mut to_upstream = proxy(&ups, Policy::RoundRobin);
    to_upstream.host_header = HostHeader::Upstream;
    let mut literal = proxy(&ups, Policy::RoundRobin);
    literal.host_header = HostHeader::Literal("backend.internal:8080".to_owned());
    let edge = start(vec![
        site(&["pass.test"], proxy(&ups, Policy::RoundRobin)),
        site(&["upstream.test"], to_upstream),
        site(&["literal.test"], literal),
    ])
    .await;
    let host_seen = |reply: &Reply| echo(reply).header("host").map(str::to_owned);
    let reply = get(edge.http, "pass.test", "/").await.unwrap();
    assert_eq!(host_seen(&reply).as_deref(), Some("pass.test"));
    let reply = get(edge.http, "upstream.test", "/").await.unwrap();
    assert_eq!(host_seen(&reply), Some(ups[0].addr().to_string()));
    // X-Forwarded-Host still tells the upstream what the client asked for.
    assert_eq!(
        echo(&reply).header("x-forwarded-host"),
        Some("upstream.test")
    );
    let reply = get(edge.http, "literal.test", "/").await.unwrap();
    assert_eq!(host_seen(&reply).as_deref(), Some("backend.internal:8080"));
}

#[tokio::test]
async fn https_and_http2_clients_are_proxied_over_http1() {
    let ups = upstreams(1).await;
    let ca = Ca::new();
    let certs = Arc::new(CertMap::new());
    certs
        .insert("app", ["app.test"], ca.leaf(&["app.test"]))
        .unwrap();
    let mut site = site(&["app.test"], proxy(&ups, Policy::RoundRobin));
    site.hsts = Some(edge::Hsts {
        max_age: std::time::Duration::from_secs(60),
        include_subdomains: false,
    });
    let edge = TestEdge::start(vec![site], certs, Limits::default()).await;

    let mut h2 = Conn::open(edge.https, "app.test", tls_config(ca.root_pem(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    for _ in 0..3 {
        let reply = h2.get("app.test", "/h2?x=1").await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.version, http::Version::HTTP_2);
        assert_eq!(
            reply.header("strict-transport-security"),
            Some("max-age=60")
        );
        let seen = echo(&reply);
        assert_eq!(seen.request_line, "GET /h2?x=1 HTTP/1.1");
        assert_eq!(seen.all("host"), ["app.test"]);
        assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
        assert_eq!(seen.all("via"), ["2 fleetgate"]);
    }
    let mut h1 = Conn::open(
        edge.https,
        "app.test",
        tls_config(ca.root_pem(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let reply = h1.get("app.test", "/h1").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(echo(&reply).all("via"), ["1.1 fleetgate"]);
    assert!(
        ups[0].connections_opened() <= 2,
        "{}",
        ups[0].connections_opened()
    );
}

/// Connections handed to worker runtimes (as `fleetgate run` does) are served there: redirects,
/// proxied requests with one pooled upstream connection per worker, and a graceful stop after
/// which the workers end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_on_worker_runtimes_pool_upstream_connections_per_worker() {
    let up = Upstream::start("u0").await.unwrap();
    let shards = Arc::new(edge::Shards::start(2).unwrap());
    let mut edge = TestEdge::start_with(
        vec![
            site(&["app.test"], Proxy::new(vec![up.url()])),
            redirect(&["old.test"], "https://app.test", 301, true),
        ],
        Arc::new(CertMap::new()),
        Limits::default(),
        Some(Arc::clone(&shards)),
    )
    .await;

    // Each request on a connection of its own: the connections alternate between the workers.
    for i in 0..10 {
        let reply = get(edge.http, "app.test", &format!("/{i}")).await.unwrap();
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(echo(&reply).request_line, format!("GET /{i} HTTP/1.1"));
    }
    for _ in 0..4 {
        let reply = get(edge.http, "old.test", "/x").await.unwrap();
        assert!(reply.status.is_redirection(), "{}", reply.status);
        assert!(reply.header("location").is_some());
    }
    // Each worker dials its own upstream connection (one shared pool would have used one for
    // these sequential requests) and reuses it (a connection is back in the pool a moment
    // after its response, so a request may now and then find none and dial).
    assert_eq!(up.requests(), 10);
    let opened = up.connections_opened();
    assert!((2..=4).contains(&opened), "{opened} upstream connections");

    edge.shutdown.cancel();
    for task in [edge.http_task.take(), edge.https_task.take()]
        .into_iter()
        .flatten()
    {
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("listeners drained in time")
            .unwrap();
    }
    shards.stop();
    drop(edge);
    // The workers end: dropping the last handle joins their threads.
    let joined = tokio::task::spawn_blocking(move || drop(shards));
    tokio::time::timeout(DEADLINE, joined)
        .await
        .expect("worker threads ended in time")
        .unwrap();
}
