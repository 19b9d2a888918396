//! HTTP correctness on the proxy path, on the wire: one regression test for each defect a
//! raw-socket review found (issue 10), with raw upstreams and raw clients. Each request goes
//! both ways through the edge where that matters: on the express lane (a plain `GET`) and
//! through hyper's server (a `POST` hands the connection over; an HTTP/1.0 client never takes
//! the lane), and over HTTP/2 where the defect showed there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod proxy_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use edge::{CertMap, Limits, Policy, Proxy};
use proxy_support::wire::*;
use proxy_support::*;
use testkit::Upstream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

/// `POST path` with an empty body: hyper's server answers it (and the rest of the connection).
fn post_bytes(host: &str, path: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

/// The same request on the express lane (`GET`) and through hyper's server (`POST`).
fn both_paths(host: &str, path: &str) -> [(&'static str, Vec<u8>); 2] {
    [
        ("lane", get_bytes(host, path)),
        ("hyper", post_bytes(host, path)),
    ]
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Defect 1: `client_head()` dropped every field `Connection` named, the framing it relied
/// on included, so the body of the first of two pipelined responses never ended.
#[tokio::test]
async fn framing_fields_named_by_connection_still_frame_the_body() {
    let up = RawUpstream::start(|_, path| match path {
        "/length" => (
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
            false,
        ),
        "/close-length" => (
            b"HTTP/1.1 200 OK\r\nConnection: close, content-length\r\nContent-Length: 5\r\n\r\nhello",
            true,
        ),
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond", false),
    })
    .await;
    let edge = start(vec![site(&["raw.test"], Proxy::new(vec![up.url()]))]).await;
    for path in ["/length", "/close-length", "/chunked"] {
        for (way, first) in both_paths("raw.test", path) {
            let mut wire = Wire::connect(edge.http).await;
            let mut both = first;
            both.extend_from_slice(&get_bytes("raw.test", "/second"));
            wire.send(&both).await;
            let first = wire.response(false).await;
            assert_eq!(first.status(), 200, "{way} {path}: {first:?}");
            assert_eq!(first.body, b"hello", "{way} {path}: {first:?}");
            assert!(
                matches!(first.framing, Framing::Length | Framing::Chunked),
                "{way} {path}: {first:?}"
            );
            assert!(!first.lists("connection", "content-length"), "{first:?}");
            let second = wire.response(false).await;
            assert_eq!(second.body, b"second", "{way} {path}: {second:?}");
        }
    }
}

/// Defect 2: on hyper's path the upstream's `Content-Length` was kept next to a chunked (or
/// close-delimited) body, and the client got a truncated body, or none.
#[tokio::test]
async fn content_length_beside_transfer_encoding_is_dropped_on_every_path() {
    let up = RawUpstream::start(|_, path| match path {
        "/short" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        "/long" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        _ => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nhello",
            true,
        ),
    })
    .await;
    let edge = start(vec![site(&["raw.test"], Proxy::new(vec![up.url()]))]).await;
    for path in ["/short", "/long", "/gzip"] {
        for (way, request) in both_paths("raw.test", path) {
            let mut wire = Wire::connect(edge.http).await;
            wire.send(&request).await;
            let reply = wire.response(false).await;
            assert_eq!(reply.status(), 200, "{way} {path}: {reply:?}");
            assert_eq!(reply.body, b"hello", "{way} {path}: {reply:?}");
            assert!(reply.header("content-length").is_none(), "{reply:?}");
            // The connection goes on.
            wire.send(&get_bytes("raw.test", "/short")).await;
            assert_eq!(wire.response(false).await.body, b"hello", "{way} {path}");
        }
        // An HTTP/1.0 client: the body runs until the edge closes.
        let mut wire = Wire::connect(edge.http).await;
        wire.send(format!("GET {path} HTTP/1.0\r\nHost: raw.test\r\n\r\n").as_bytes())
            .await;
        let all = text(&wire.until_close().await);
        let (head, body) = all.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"));
        assert!(!head.to_lowercase().contains("content-length"), "{head}");
        assert_eq!(body, "hello", "HTTP/1.0 {path}");
    }
}

/// Defects 2 and 4 over HTTP/2: a length beside chunks made the stream malformed, and so did
/// a `Content-Length` on a 204.
#[tokio::test]
async fn http2_clients_get_consistent_framing() {
    let up = RawUpstream::start(|_, path| match path {
        "/short" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        "/204" => (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n",
            false,
        ),
        "/304" => (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 20\r\nETag: \"x\"\r\n\r\n",
            false,
        ),
        _ => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nhello",
            true,
        ),
    })
    .await;
    let ca = Ca::new();
    let certs = Arc::new(CertMap::new());
    certs
        .insert("raw", ["raw.test"], ca.leaf(&["raw.test"]))
        .unwrap();
    let edge = TestEdge::start(
        vec![site(&["raw.test"], Proxy::new(vec![up.url()]))],
        certs,
        Limits::default(),
    )
    .await;
    let mut h2 = Conn::open(edge.https, "raw.test", tls_config(ca.root_pem(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    for (path, status, body) in [
        ("/short", 200, &b"hello"[..]),
        ("/gzip", 200, b"hello"),
        ("/204", 204, b""),
        ("/304", 304, b""),
    ] {
        let reply = h2.get("raw.test", path).await.unwrap();
        assert_eq!(reply.status, status, "{path}: {reply:?}");
        assert_eq!(reply.body, body, "{path}");
        if status != 200 {
            assert!(reply.header("content-length").is_none(), "{reply:?}");
        }
    }
}

/// Defect 3: a `POST` whose stale pooled connection the upstream closed on (after reading
/// it) went out again on a new connection. Only idempotent requests are sent twice.
#[tokio::test]
async fn a_post_the_upstream_closed_on_is_sent_once() {
    let up = RawUpstream::start(|method, _| match method {
        // Read, then the connection closes without an answer.
        "POST" => (b"", true),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    })
    .await;
    let edge = start(vec![site(&["raw.test"], Proxy::new(vec![up.url()]))]).await;
    let mut wire = Wire::connect(edge.http).await;
    wire.send(&get_bytes("raw.test", "/")).await;
    assert_eq!(wire.response(false).await.body, b"ok");
    // The pooled connection must be idle for longer than the pool's stale threshold (1 s) for
    // the request to count as one a closed connection may have lost: that age is the
    // condition, so time has to pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    wire.send(&post_bytes("raw.test", "/form")).await;
    let reply = wire.response(false).await;
    assert_eq!(reply.status(), 502, "{reply:?}");
    assert_eq!(
        up.request_lines(),
        ["GET / HTTP/1.1", "POST /form HTTP/1.1"],
        "the POST reached the upstream more than once"
    );
}

/// Retries only for requests that got no byte of an answer: framing that cannot be trusted
/// is a 502, and the request does not go to another upstream.
#[tokio::test]
async fn an_untrusted_answer_is_502_and_not_sent_elsewhere() {
    let bad = RawUpstream::start(|_, _| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            false,
        )
    })
    .await;
    let good =
        RawUpstream::start(|_, _| (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false)).await;
    let mut proxy = Proxy::new(vec![bad.url(), good.url()]);
    proxy.policy = Policy::RoundRobin;
    // Passive marking would take the bad upstream out after its first failure.
    proxy.fail_after = 100;
    let edge = start(vec![site(&["raw.test"], proxy)]).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut wire = Wire::connect(edge.http).await;
        wire.send(&get_bytes("raw.test", "/")).await;
        statuses.push(wire.response(false).await.status());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 502, 502]);
    assert_eq!(bad.request_lines().len(), 2);
    assert_eq!(good.request_lines().len(), 2, "a broken answer was retried");
    // Each broken answer came on a connection of its own: none was reused.
    assert_eq!(bad.connections.load(Ordering::SeqCst), 2);
}

/// Defect 4: a 204 (and a 304) went to the client with the upstream's `Content-Length`.
#[tokio::test]
async fn no_content_and_not_modified_carry_no_framing_fields() {
    let up = RawUpstream::start(|_, path| match path {
        "/204" => (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n",
            false,
        ),
        "/304" => (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 20\r\nETag: \"x\"\r\n\r\n",
            false,
        ),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext", false),
    })
    .await;
    let edge = start(vec![site(&["raw.test"], Proxy::new(vec![up.url()]))]).await;
    for path in ["/204", "/304"] {
        for (way, request) in both_paths("raw.test", path) {
            let mut wire = Wire::connect(edge.http).await;
            wire.send(&request).await;
            let reply = wire.response(false).await;
            assert_eq!(reply.status(), path[1..].parse::<u16>().unwrap(), "{way}");
            for field in ["content-length", "transfer-encoding"] {
                assert!(reply.header(field).is_none(), "{way} {path}: {reply:?}");
            }
            // No body bytes came: the next response is the next thing on the wire.
            wire.send(&get_bytes("raw.test", "/next")).await;
            assert_eq!(wire.response(false).await.body, b"next", "{way} {path}");
        }
    }
}

/// Defect 5, upstream side: an upstream that stalls mid-body held the client for as long as
/// it liked. `read_timeout` bounds the wait between two reads of the body.
#[tokio::test]
async fn an_upstream_stalling_mid_body_is_cut_off_after_read_timeout() {
    let up = RawUpstream::start(|_, _| {
        // Half the body, then nothing (the connection stays open).
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", false)
    })
    .await;
    let mut proxy = Proxy::new(vec![up.url()]);
    let read_timeout = Duration::from_millis(300);
    proxy.read_timeout = read_timeout;
    let edge = start(vec![site(&["raw.test"], proxy)]).await;
    for (way, request) in both_paths("raw.test", "/") {
        let mut wire = Wire::connect(edge.http).await;
        let started = Instant::now();
        wire.send(&request).await;
        let all = text(&wire.until_close().await);
        let waited = started.elapsed();
        let (head, body) = all.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200"), "{way}: {head}");
        // The head said 10 bytes: the client sees a cut body, never a whole one.
        assert_eq!(body, "hello", "{way}");
        assert!(waited >= read_timeout, "{way}: closed after {waited:?}");
    }
}

/// Defect 5, client side: a client that stopped reading a large response was never let go.
/// `send_timeout` bounds the wait between two successful writes to it.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_send_timeout() {
    // An upstream with an endless body; it notes when the edge stops taking it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let upstream = tokio::spawn({
        let (cut, written) = (Arc::clone(&cut), Arc::clone(&written));
        async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "no request");
                head.extend_from_slice(&buf[..n]);
            }
            let chunk = vec![b'x'; 64 * 1024];
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
                .await;
            while stream.write_all(&chunk).await.is_ok() {
                written.fetch_add(chunk.len(), Ordering::SeqCst);
            }
            cut.store(true, Ordering::SeqCst);
        }
    });
    let send_timeout = Duration::from_millis(500);
    let edge = TestEdge::start(
        vec![site(
            &["raw.test"],
            Proxy::new(vec![format!("http://{addr}")]),
        )],
        Arc::new(CertMap::new()),
        Limits {
            send_timeout,
            ..Limits::default()
        },
    )
    .await;
    let mut wire = Wire::connect(edge.http).await;
    wire.send(&get_bytes("raw.test", "/endless")).await;
    // The client reads nothing from here.
    testkit::wait_for("the edge to let go of the upstream", DEADLINE, || {
        let cut = cut.load(Ordering::SeqCst);
        async move { cut.then_some(()) }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: {} bytes taken from the upstream",
            written.load(Ordering::SeqCst)
        )
    });
    // What the kernel buffered reaches the client, then the connection ends short.
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match tokio::time::timeout(DEADLINE, wire.tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the client connection is still open after {got} bytes"),
        }
    }
    assert!(got < 100_000_000_000, "{got}");
    upstream.abort();
}

/// Defect 6: a request head over the limit was forwarded when it came pipelined behind
/// another request (alone, it got 431).
#[tokio::test]
async fn pipelined_request_heads_over_the_limit_get_431() {
    let up = Upstream::start("u0").await.expect("start the upstream");
    let edge = start(vec![site(&["app.test"], Proxy::new(vec![up.url()]))]).await;
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(24 * 1024)
    );
    for (round, (way, first)) in both_paths("app.test", "/first").into_iter().enumerate() {
        let mut wire = Wire::connect(edge.http).await;
        let mut both = first;
        both.extend_from_slice(big.as_bytes());
        wire.send(&both).await;
        let first = wire.response(false).await;
        assert_eq!(first.status(), 200, "{way}: {first:?}");
        let second = wire.response(false).await;
        assert_eq!(second.status(), 431, "{way}: {second:?}");
        assert!(second.lists("connection", "close"), "{way}: {second:?}");
        assert!(wire.until_close().await.is_empty(), "{way}");
        assert_eq!(
            up.requests(),
            round as u64 + 1,
            "{way}: the big head went upstream"
        );
    }
    // Alone, the same head gets 431 too (from hyper's read buffer limit).
    let mut wire = Wire::connect(edge.http).await;
    wire.send(big.as_bytes()).await;
    assert_eq!(wire.response(false).await.status(), 431);
    assert_eq!(up.requests(), 2);
}

/// Defect 7: `X_Forwarded_For` and a client's `X-Real-IP` reached the upstream, where
/// frameworks that fold `_` into `-` or trust `X-Real-IP` believe them.
#[tokio::test]
async fn look_alike_forwarding_fields_do_not_reach_the_upstream() {
    let up = Upstream::start("u0").await.expect("start the upstream");
    let mut passing = Proxy::new(vec![up.url()]);
    passing.drop_underscore_fields = false;
    let edge = start(vec![
        site(&["app.test"], Proxy::new(vec![up.url()])),
        site(&["pass.test"], passing),
    ])
    .await;
    for host in ["app.test", "pass.test"] {
        for method in ["GET", "POST"] {
            // A GET without a body takes the lane; a POST goes through hyper.
            let length = if method == "POST" {
                "Content-Length: 0\r\n"
            } else {
                ""
            };
            let mut wire = Wire::connect(edge.http).await;
            wire.send(
                format!(
                    "{method} /fields HTTP/1.1\r\nHost: {host}\r\n{length}\
                     X_Forwarded_For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Real_IP: 6.6.6.6\r\n\
                     X-Kept: 1\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
            let reply = wire.response(false).await;
            assert_eq!(reply.status(), 200, "{host} {method}: {reply:?}");
            let seen = reply.echo();
            let client = seen
                .header("x-forwarded-for")
                .and_then(|v| v.rsplit(", ").next())
                .expect("x-forwarded-for")
                .to_owned();
            assert_eq!(seen.all("x-real-ip"), [client.as_str()], "{host} {method}");
            assert_eq!(seen.all("x-kept"), ["1"]);
            let underscored = ["x_forwarded_for", "x-real_ip"].map(|n| seen.all(n).len());
            if host == "app.test" {
                assert_eq!(underscored, [0, 0], "{host} {method}: {:?}", seen.headers);
            } else {
                assert_eq!(underscored, [1, 1], "{host} {method}: {:?}", seen.headers);
            }
        }
    }
}

/// A request body in a transfer coding other than chunked alone would reach the upstream
/// still coded, with nothing to say so: 501, as nginx answers.
#[tokio::test]
async fn request_transfer_codings_other_than_chunked_get_501() {
    let up = Upstream::start("u0").await.expect("start the upstream");
    let edge = start(vec![site(&["app.test"], Proxy::new(vec![up.url()]))]).await;
    for coding in ["gzip, chunked", "gzip,chunked", "identity, chunked"] {
        let mut wire = Wire::connect(edge.http).await;
        wire.send(
            format!(
                "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: {coding}\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let reply = wire.response(false).await;
        assert_eq!(reply.status(), 501, "{coding}: {reply:?}");
        assert!(reply.lists("connection", "close"), "{coding}: {reply:?}");
    }
    // Chunked alone goes through.
    let mut wire = Wire::connect(edge.http).await;
    wire.send(
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let reply = wire.response(false).await;
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(reply.header("x-body-bytes"), Some("5"));
    assert_eq!(up.requests(), 1);
}

/// Defect 1 over HTTPS (HTTP/1.1 by ALPN: the same lane behind TLS).
#[tokio::test]
async fn framing_fields_named_by_connection_still_frame_the_body_over_https() {
    let up = RawUpstream::start(|_, path| match path {
        "/length" => (
            b"HTTP/1.1 200 OK\r\nConnection: close, Content-Length\r\nContent-Length: 5\r\n\r\nhello",
            true,
        ),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond", false),
    })
    .await;
    let ca = Ca::new();
    let certs = Arc::new(CertMap::new());
    certs
        .insert("raw", ["raw.test"], ca.leaf(&["raw.test"]))
        .unwrap();
    let edge = TestEdge::start(
        vec![site(&["raw.test"], Proxy::new(vec![up.url()]))],
        certs,
        Limits::default(),
    )
    .await;
    let mut tls = testkit::tls_connect(
        edge.https,
        "raw.test",
        tls_config(ca.root_pem(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let mut both = get_bytes("raw.test", "/length");
    both.extend_from_slice(&get_bytes("raw.test", "/second"));
    tls.write_all(&both).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.ends_with(b"second") {
        let n = tokio::time::timeout(DEADLINE, tls.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("stalled after {:?}", text(&seen)))
            .unwrap();
        assert!(n > 0, "closed after {:?}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let all = text(&seen);
    let (first_head, rest) = all.split_once("\r\n\r\n").unwrap();
    assert!(
        first_head.to_lowercase().contains("\r\ncontent-length: 5"),
        "{first_head}"
    );
    assert!(rest.starts_with("helloHTTP/1.1 200 OK\r\n"), "{all}");
}
