//! The HTTP/1.1 proxy as a client sees it on the wire: raw bytes over TCP (pipelining,
//! `Connection: close`, HEAD, re-framed bodies, the header read timeout on a kept-alive
//! connection, `Date` and `Via`, `Expect: 100-continue`, response fields passed or dropped).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod proxy_support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use edge::{CertMap, Limits, Proxy};
use proxy_support::wire::*;
use proxy_support::*;
use testkit::Upstream;
use tokio::time::{Instant, timeout};

/// An edge proxying `host` to `upstream` (a URL), plain HTTP, default limits.
async fn proxy_to(host: &str, upstream: String) -> TestEdge {
    start(vec![site(&[host], Proxy::new(vec![upstream]))]).await
}

/// Seconds since the Unix epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, the
/// format a sender must generate, RFC 9110 5.6.7); None for anything else, a wrong weekday
/// included.
fn imf_fixdate_secs(date: &str) -> Option<u64> {
    // httpdate reads the obsolete formats too: only a date it writes back unchanged is one.
    let time = httpdate::parse_http_date(date).ok()?;
    (httpdate::fmt_http_date(time) == date)
        .then(|| time.duration_since(UNIX_EPOCH).ok())
        .flatten()
        .map(|since| since.as_secs())
}

#[test]
fn imf_fixdate_parses_the_rfc_example_only() {
    assert_eq!(
        imf_fixdate_secs("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(784_111_777)
    );
    assert_eq!(imf_fixdate_secs("Mon, 06 Nov 1994 08:49:37 GMT"), None);
    assert_eq!(imf_fixdate_secs("Sunday, 06-Nov-94 08:49:37 GMT"), None);
    assert_eq!(imf_fixdate_secs("Sun Nov  6 08:49:37 1994"), None);
}

#[tokio::test]
async fn pipelined_gets_in_one_write_are_answered_in_order_on_the_connection() {
    let up = Upstream::start("u0").await.expect("start the upstream");
    let edge = proxy_to("app.test", up.url()).await;
    let mut wire = Wire::connect(edge.http).await;
    // A first answer of 200 kB, streamed by the upstream in several chunks: the second request
    // is already there while it goes through.
    let mut both = get_bytes("app.test", "/bytes/200000");
    both.extend_from_slice(&get_bytes("app.test", "/second"));
    wire.send(&both).await;

    let first = wire.response(false).await;
    assert_eq!(first.status(), 200, "{}", first.status_line);
    let second = wire.response(false).await;
    assert_eq!(second.status(), 200, "{second:?}");
    assert_eq!(second.echo().request_line, "GET /second HTTP/1.1");
    assert_eq!(up.requests(), 2);
    // The first body is what the upstream serves, byte for byte.
    let direct = testkit::http_get(up.addr(), "app.test", "/bytes/200000")
        .await
        .expect("GET from the upstream directly");
    assert_eq!(direct.body.len(), 200_000);
    assert!(first.body == direct.body, "first body differs");
    // Nothing else came, and the connection is still usable.
    assert!(
        wire.buf.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&wire.buf)
    );
    wire.send(&get_bytes("app.test", "/third")).await;
    let third = wire.response(false).await;
    assert_eq!(third.echo().request_line, "GET /third HTTP/1.1");
}

#[tokio::test]
async fn connection_close_request_is_answered_with_connection_close_then_closed() {
    let up = Upstream::start("u0").await.expect("start the upstream");
    let edge = proxy_to("app.test", up.url()).await;
    let mut wire = Wire::connect(edge.http).await;
    wire.send(b"GET /bye HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await;
    let reply = wire.response(false).await;
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(reply.echo().request_line, "GET /bye HTTP/1.1");
    assert!(reply.lists("connection", "close"), "{:?}", reply.headers);
    let started = Instant::now();
    let rest = wire.until_close().await;
    assert!(
        rest.is_empty(),
        "bytes after the answer: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
}

#[tokio::test]
async fn head_gets_status_and_length_without_body_bytes_and_the_connection_goes_on() {
    let (addr, upstream) = raw_upstream(|method, _| match method {
        "HEAD" => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n",
            false,
        ),
        _ => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
            false,
        ),
    })
    .await;
    let edge = proxy_to("raw.test", format!("http://{addr}")).await;
    let mut wire = Wire::connect(edge.http).await;
    for _ in 0..2 {
        wire.send(b"HEAD /doc HTTP/1.1\r\nHost: raw.test\r\n\r\n")
            .await;
        let head = wire.response(true).await;
        assert_eq!(head.status(), 200, "{head:?}");
        assert_eq!(head.header("content-length"), Some("11"), "{head:?}");
        assert_eq!(head.header("content-type"), Some("text/plain"));
        // Body bytes sent for the HEAD would come before the next status line.
        wire.send(&get_bytes("raw.test", "/doc")).await;
        let get = wire.response(false).await;
        assert_eq!(get.status(), 200, "{get:?}");
        assert_eq!(get.body, b"hello world");
    }
    assert!(
        wire.buf.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&wire.buf)
    );
    upstream.abort();
}

#[tokio::test]
async fn get_post_with_a_body_and_get_are_answered_on_one_connection() {
    let up = Upstream::start("u0").await.expect("start the upstream");
    let edge = proxy_to("app.test", up.url()).await;
    let mut wire = Wire::connect(edge.http).await;

    wire.send(&get_bytes("app.test", "/before")).await;
    let reply = wire.response(false).await;
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(reply.echo().request_line, "GET /before HTTP/1.1");

    let body = "name=fleetgate&n=42&pad=".to_owned() + &"x".repeat(3000);
    let post = format!(
        "POST /form HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    wire.send(post.as_bytes()).await;
    let reply = wire.response(false).await;
    assert_eq!(reply.status(), 200, "{reply:?}");
    let seen = reply.echo();
    assert_eq!(seen.request_line, "POST /form HTTP/1.1");
    assert_eq!(
        seen.all("content-length"),
        [body.len().to_string().as_str()]
    );
    assert_eq!(
        reply.header("x-body-bytes"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(up.body_bytes(), body.len() as u64);

    wire.send(&get_bytes("app.test", "/after")).await;
    let reply = wire.response(false).await;
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(reply.echo().request_line, "GET /after HTTP/1.1");
    assert_eq!(reply.header("x-body-bytes"), Some("0"));
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn chunked_and_until_close_upstream_bodies_reach_a_kept_alive_client_intact() {
    let (addr, upstream) = raw_upstream(|_, path| match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/close" => (
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the upstream closes",
            true,
        ),
        _ => (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
    })
    .await;
    let edge = proxy_to("raw.test", format!("http://{addr}")).await;
    let mut wire = Wire::connect(edge.http).await;
    for path in ["/chunked", "/close", "/chunked", "/close"] {
        wire.send(&get_bytes("raw.test", path)).await;
        let reply = wire.response(false).await;
        assert_eq!(reply.status(), 200, "{path}: {reply:?}");
        let expected: &[u8] = if path == "/chunked" {
            b"hello, world"
        } else {
            b"until the upstream closes"
        };
        assert_eq!(
            reply.body,
            expected,
            "{path}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        // Framed for the client (an until-close body re-framed), so the connection goes on.
        assert!(
            matches!(reply.framing, Framing::Chunked | Framing::Length),
            "{path}: {:?}",
            reply.framing
        );
        assert!(!reply.lists("connection", "close"), "{path}: {reply:?}");
    }
    wire.send(&get_bytes("raw.test", "/missing")).await;
    assert_eq!(wire.response(false).await.status(), 404);
    upstream.abort();
}

#[tokio::test]
async fn half_a_request_head_on_a_kept_alive_connection_is_cut_off_after_the_header_read_timeout() {
    let up = Upstream::start("u0").await.expect("start the upstream");
    let timeout_ = Duration::from_millis(500);
    let edge = TestEdge::start(
        vec![site(&["app.test"], Proxy::new(vec![up.url()]))],
        Arc::new(CertMap::new()),
        Limits {
            header_read_timeout: timeout_,
            ..Limits::default()
        },
    )
    .await;
    let mut wire = Wire::connect(edge.http).await;
    wire.send(&get_bytes("app.test", "/first")).await;
    let reply = wire.response(false).await;
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(reply.echo().request_line, "GET /first HTTP/1.1");

    // From here the edge waits for the next head (its timer may start now or at the first
    // byte of it).
    let started = Instant::now();
    wire.send(b"GET /second HTTP/1.1\r\nHost: app.te").await;
    let rest = wire.until_close().await;
    let waited = started.elapsed();
    // Cut off, not answered (a 408 would do as well).
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(waited >= timeout_ / 2, "closed too early: {waited:?}");
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn every_proxied_response_has_one_date_and_via() {
    let (addr, upstream) = raw_upstream(|_, _| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-From: raw\r\n\r\nok",
            false,
        )
    })
    .await;
    let up = Upstream::start("u0").await.expect("start the upstream");
    let edge = start(vec![
        site(&["raw.test"], Proxy::new(vec![format!("http://{addr}")])),
        site(&["app.test"], Proxy::new(vec![up.url()])),
    ])
    .await;
    let mut wire = Wire::connect(edge.http).await;
    // The raw upstream sends no Date; the testkit one (hyper) sends its own.
    for host in ["raw.test", "app.test", "raw.test"] {
        wire.send(&get_bytes(host, "/")).await;
        let reply = wire.response(false).await;
        assert_eq!(reply.status(), 200, "{host}: {reply:?}");
        let dates = reply.all("date");
        assert_eq!(dates.len(), 1, "{host}: {:?}", reply.headers);
        let date = imf_fixdate_secs(dates[0])
            .unwrap_or_else(|| panic!("{host}: not an IMF-fixdate: {:?}", dates[0]));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        assert!(now.abs_diff(date) <= 60, "{host}: Date {:?}", dates[0]);
        assert_eq!(reply.all("via"), ["1.1 fleetgate"], "{host}");
        if host == "raw.test" {
            assert_eq!(reply.header("x-from"), Some("raw"));
            assert_eq!(reply.body, b"ok");
        }
    }
    upstream.abort();
}

#[tokio::test]
async fn expect_100_continue_gets_continue_or_the_answer_and_the_body_reaches_the_upstream() {
    let up = Upstream::start("u0").await.expect("start the upstream");
    let edge = proxy_to("app.test", up.url()).await;
    let mut wire = Wire::connect(edge.http).await;
    let body = b"small body";
    wire.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    // Like curl: wait a while for 100 Continue, then send the body anyway.
    let interim = timeout(Duration::from_secs(2), wire.fill()).await;
    let mut got_continue = false;
    let final_ = if interim.is_ok() {
        let first = wire.response(false).await;
        if first.status() == 100 {
            got_continue = true;
            wire.send(body).await;
            wire.response(false).await
        } else {
            first
        }
    } else {
        wire.send(body).await;
        wire.response(false).await
    };
    eprintln!("100 Continue received: {got_continue}");
    assert_eq!(final_.status(), 200, "{final_:?}");
    assert_eq!(final_.echo().request_line, "POST /upload HTTP/1.1");
    // The expectation is for this hop; the upstream gets the body.
    assert!(final_.echo().header("expect").is_none(), "{final_:?}");
    assert_eq!(
        final_.header("x-body-bytes"),
        Some(body.len().to_string().as_str())
    );
    // The connection is in step for the next request.
    wire.send(&get_bytes("app.test", "/next")).await;
    let next = wire.response(false).await;
    assert_eq!(next.echo().request_line, "GET /next HTTP/1.1");
}

#[tokio::test]
async fn upstream_fields_arrive_unchanged_and_hop_by_hop_ones_are_dropped() {
    let (addr, upstream) = raw_upstream(|_, _| {
        (
            b"HTTP/1.1 200 OK\r\nX-Custom: Some Value\r\nX-Multi: first\r\nKeep-Alive: timeout=5, max=100\r\n\
              Proxy-Connection: keep-alive\r\nConnection: x-drop\r\nX-Drop: secret\r\n\
              X-Multi: second, third\r\nCache-Control: no-cache, private\r\nContent-Length: 6\r\n\r\nfields",
            false,
        )
    })
    .await;
    let edge = proxy_to("raw.test", format!("http://{addr}")).await;
    let mut wire = Wire::connect(edge.http).await;
    for _ in 0..2 {
        wire.send(&get_bytes("raw.test", "/")).await;
        let reply = wire.response(false).await;
        assert_eq!(reply.status(), 200, "{reply:?}");
        assert_eq!(reply.body, b"fields");
        assert_eq!(reply.all("x-custom"), ["Some Value"], "{:?}", reply.headers);
        assert_eq!(
            reply.all("x-multi"),
            ["first", "second, third"],
            "{:?}",
            reply.headers
        );
        assert_eq!(reply.all("cache-control"), ["no-cache, private"]);
        for gone in ["keep-alive", "proxy-connection", "x-drop"] {
            assert!(reply.header(gone).is_none(), "{gone}: {:?}", reply.headers);
        }
        assert!(!reply.lists("connection", "x-drop"), "{:?}", reply.headers);
        assert_eq!(reply.all("via"), ["1.1 fleetgate"]);
    }
    upstream.abort();
}
