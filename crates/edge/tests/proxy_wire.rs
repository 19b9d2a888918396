//! The HTTP/1.1 proxy as a client sees it on the wire: raw bytes over TCP (pipelining,
//! `Connection: close`, HEAD, re-framed bodies, the header read timeout on a kept-alive
//! connection, `Date` and `Via`, `Expect: 100-continue`, response fields passed or dropped).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod proxy_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use edge::{CertMap, Limits, Proxy};
use proxy_support::*;
use testkit::Upstream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// How a response body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length,
    Chunked,
    /// Until the connection closed.
    Close,
}

/// A response read off the wire: status line, header fields as sent, body (de-chunked).
#[derive(Debug)]
struct WireResponse {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
}

impl WireResponse {
    /// The status code from the status line (0 when it has none).
    fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Every value of field `name` (case-insensitive), in order.
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of field `name`.
    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    /// Whether a comma-separated field `name` lists `token` (case-insensitive).
    fn lists(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// What the testkit upstream saw (from its echo body).
    fn echo(&self) -> testkit::Echo {
        testkit::Echo::parse(&String::from_utf8_lossy(&self.body))
            .unwrap_or_else(|e| panic!("not an echo body ({e}): {self:?}"))
    }
}

/// A client connection speaking raw bytes; what was read beyond one response stays buffered
/// for the next.
struct Wire {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn connect(addr: SocketAddr) -> Wire {
        let tcp = TcpStream::connect(addr).await.expect("connect to the edge");
        Wire {
            tcp,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write to the edge");
    }

    /// Reads more bytes into the buffer within [`DEADLINE`]; false at EOF or on a reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let read = timeout(DEADLINE, self.tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "nothing from the edge within {DEADLINE:?}; buffered: {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            });
        match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            assert!(
                self.fill().await,
                "connection closed inside a line: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Exactly `n` bytes.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "connection closed after {} of {n} body bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Everything until the edge closes the connection (buffered bytes included).
    async fn until_close(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Reads one response (a 1xx one too): head up to the empty line, then the body by
    /// `Transfer-Encoding: chunked`, `Content-Length` or until close. `head` says it answers a
    /// HEAD request (no body whatever the fields say).
    async fn response(&mut self, head: bool) -> WireResponse {
        let status_line = self.line().await;
        assert!(
            status_line.starts_with("HTTP/1.1 "),
            "not a status line: {status_line:?} (then {:?})",
            String::from_utf8_lossy(&self.buf)
        );
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a header field: {line:?}"));
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut response = WireResponse {
            status_line,
            headers,
            body: Vec::new(),
            framing: Framing::None,
        };
        let status = response.status();
        if head || (100..200).contains(&status) || status == 204 || status == 304 {
            return response;
        }
        if response.lists("transfer-encoding", "chunked") {
            response.framing = Framing::Chunked;
            loop {
                let size_line = self.line().await;
                let size = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    // Trailer fields, if any, up to the empty line.
                    while !self.line().await.is_empty() {}
                    break;
                }
                let data = self.take(size).await;
                response.body.extend_from_slice(&data);
                let end = self.line().await;
                assert!(end.is_empty(), "chunk data not followed by CRLF: {end:?}");
            }
        } else if let Some(length) = response.header("content-length") {
            let length = length
                .parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {length:?}"));
            response.framing = Framing::Length;
            response.body = self.take(length).await;
        } else {
            response.framing = Framing::Close;
            response.body = self.until_close().await;
        }
        response
    }
}

/// `GET path` with `Host: host` and nothing else, as raw bytes.
fn get_bytes(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

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
