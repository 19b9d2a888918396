//! The reverse proxy through the real binary: HTTPS with the built-in CA in front of testkit
//! upstreams and nginx; balancing, forwarded headers, 100 MB each way with the binary's memory
//! measured, WebSocket over TLS, the access log, and health checks ending on SIGHUP.
#![allow(clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use common::{Node, served_serial};
use http::{Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use testkit::{Echo, Nginx, Signal, Upstream, WsFrame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const MB: u64 = 1024 * 1024;
const BIG: u64 = 100 * MB;

fn config(a: &Upstream, b: &Upstream, nginx: &Nginx) -> String {
    format!(
        r#"
[[site]]
domains = ["app.localhost"]
tls = "internal"
access_log = true
proxy = {{ upstreams = ["{}", "{}"], policy = "round_robin", health = {{ path = "/healthz", interval = "100ms" }} }}

[[site]]
domains = ["static.localhost"]
tls = "internal"
proxy = {{ upstreams = ["{}"], max_body = "1MiB" }}
"#,
        a.url(),
        b.url(),
        nginx.url()
    )
}

/// One request over a new HTTPS (HTTP/1.1) connection; the response body is counted as it
/// streams, and kept only when it is small.
async fn https<B>(
    addr: SocketAddr,
    root: &str,
    host: &str,
    req: Request<B>,
) -> anyhow::Result<(http::response::Parts, u64, Bytes)>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = Arc::new(testkit::client_config(root, &[b"http/1.1"])?);
    let tls = testkit::tls_connect(addr, host, config).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let conn = tokio::spawn(conn);
    let response = sender.send_request(req).await.context("send request")?;
    let (parts, mut body) = response.into_parts();
    let mut total = 0u64;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.context("read body")?.data_ref() {
            total += data.len() as u64;
            if kept.len() < 64 * 1024 {
                kept.extend_from_slice(data);
            }
        }
    }
    conn.abort();
    Ok((parts, total, Bytes::from(kept)))
}

fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(header::HOST, host)
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_end_to_end_through_the_binary() -> anyhow::Result<()> {
    let a = Upstream::start("a").await?;
    let b = Upstream::start("b").await?;
    let nginx = Nginx::start("").await?;
    nginx.write_file("big.bin", BIG)?;
    let ip = testkit::loopback_ip();
    let mut node = Node::new(
        ip,
        testkit::free_port(),
        testkit::free_port(),
        &config(&a, &b, &nginx),
    )?;
    // Everything below runs with connections pinned to two worker threads.
    node.listen_extra = "workers = 2".to_owned();
    node.write_config(&config(&a, &b, &nginx))?;

    let check = node.command(&["check"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(stdout.contains("workers: 2"), "{stdout}");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains("proxy (round_robin) to http://"),
        "{stdout}"
    );

    node.start().await?;
    let root = node.ca_root()?;
    for name in ["app.localhost", "static.localhost"] {
        testkit::wait_for_ok(
            &format!("a certificate for {name}"),
            Duration::from_secs(20),
            || served_serial(node.https, name, &root),
        )
        .await?;
    }
    testkit::wait_for(
        "health checks on both upstreams",
        Duration::from_secs(10),
        || async { (a.health_checks() > 0 && b.health_checks() > 0).then_some(()) },
    )
    .await?;

    // Round robin over both, with the forwarded headers.
    let mut by = std::collections::BTreeMap::new();
    for _ in 0..6 {
        let (parts, _, body) = https(
            node.https,
            &root,
            "app.localhost",
            get("app.localhost", "/hello?x=1"),
        )
        .await?;
        assert_eq!(parts.status, 200);
        assert_eq!(
            parts.headers.get("via").and_then(|v| v.to_str().ok()),
            Some("1.1 fleetgate")
        );
        let echo = Echo::parse(&String::from_utf8_lossy(&body))?;
        assert_eq!(echo.request_line, "GET /hello?x=1 HTTP/1.1");
        assert_eq!(echo.all("host"), ["app.localhost"]);
        assert_eq!(echo.all("x-forwarded-proto"), ["https"]);
        assert_eq!(echo.all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(
            echo.all("forwarded"),
            ["for=127.0.0.1;host=app.localhost;proto=https"]
        );
        *by.entry(echo.upstream).or_insert(0) += 1;
    }
    assert_eq!(by.values().copied().collect::<Vec<_>>(), [3, 3], "{by:?}");

    // Plain HTTP still redirects to HTTPS (https_redirect defaults on).
    let resp = testkit::http_get(node.http, "app.localhost", "/x").await?;
    assert_eq!(resp.status, 308);

    // 100 MB up to a testkit upstream, streamed from a channel.
    let (tx, body) = testkit::channel_body(4);
    let upload = Request::post("/upload")
        .header(header::HOST, "app.localhost")
        .body(body)?;
    let (addr, root2) = (node.https, root.clone());
    let upload = tokio::spawn(async move { https(addr, &root2, "app.localhost", upload).await });
    let chunk = testkit::chunk(MB as usize);
    for _ in 0..100 {
        tx.send(chunk.clone()).await.context("upload aborted")?;
    }
    drop(tx);
    let (parts, _, _) = tokio::time::timeout(Duration::from_secs(60), upload)
        .await??
        .map_err(|e| e.context(node.log()))?;
    assert_eq!(parts.status, 200);
    assert_eq!(
        parts
            .headers
            .get("x-body-bytes")
            .and_then(|v| v.to_str().ok()),
        Some(BIG.to_string().as_str())
    );

    // 100 MB down from nginx.
    let (parts, bytes, _) = tokio::time::timeout(
        Duration::from_secs(60),
        https(
            node.https,
            &root,
            "static.localhost",
            get("static.localhost", "/big.bin"),
        ),
    )
    .await??;
    assert_eq!(parts.status, 200);
    assert_eq!(bytes, BIG);

    // The binary never held the bodies: its peak resident size stays far below 100 MB.
    let pid = node.child.as_ref().context("running")?.pid();
    let peak = testkit::proc_status_bytes(Some(pid), "VmHWM")?;
    eprintln!("fleetgate peak RSS after 2 x 100 MiB: {} MiB", peak / MB);
    assert!(peak < 48 * MB, "fleetgate peak RSS {} MiB", peak / MB);

    // The body limit of the static site: a body announced over it is refused before it is
    // sent (the client sends only the head, as one waiting for 100-continue would).
    let config = Arc::new(testkit::client_config(&root, &[b"http/1.1"])?);
    let mut tls = testkit::tls_connect(node.https, "static.localhost", config).await?;
    tls.write_all(b"POST / HTTP/1.1\r\nHost: static.localhost\r\nContent-Length: 2097152\r\nExpect: 100-continue\r\n\r\n").await?;
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut head)).await??;
    assert_eq!(&head, b"HTTP/1.1 413");
    drop(tls);

    // WebSocket over TLS.
    let config = Arc::new(testkit::client_config(&root, &[b"http/1.1"])?);
    let mut tls = testkit::tls_connect(node.https, "app.localhost", config).await?;
    testkit::ws_handshake(&mut tls, "app.localhost", "/ws").await?;
    let frame = WsFrame {
        opcode: 1,
        payload: b"hello through fleetgate".to_vec(),
    };
    testkit::ws_write(&mut tls, &frame, Some([1, 2, 3, 4])).await?;
    let echoed =
        tokio::time::timeout(Duration::from_secs(10), testkit::ws_read(&mut tls)).await??;
    assert_eq!(echoed, frame);
    drop(tls);

    // The access log: one structured line per request of the site that has it on.
    let log = node.log();
    let access: Vec<&str> = log.lines().filter(|l| l.contains("access:")).collect();
    assert!(
        access.iter().any(|l| l.contains("client=127.0.0.1")
            && l.contains("method=\"GET\"")
            && l.contains("host=\"app.localhost\"")
            && l.contains("path=\"/hello\"")
            && l.contains("status=200")
            && l.contains("upstream=\"http://")
            && l.contains("duration_ms=")
            && l.contains("bytes=")),
        "{log}"
    );
    assert!(access.iter().any(|l| l.contains("status=101")), "{log}");
    assert!(
        !access.iter().any(|l| l.contains("static.localhost")),
        "{log}"
    );

    // SIGHUP with the proxy site gone: its health checks stop, its pooled connections close.
    node.write_config(&format!(
        "[[site]]\ndomains = [\"static.localhost\"]\ntls = \"internal\"\nproxy = {{ upstreams = [\"{}\"] }}\n",
        nginx.url()
    ))?;
    node.signal(Signal::Hup)?;
    testkit::wait_for(
        "the old site's upstream connections to close",
        Duration::from_secs(10),
        || async { (a.connections_open() == 0 && b.connections_open() == 0).then_some(()) },
    )
    .await
    .map_err(|e| e.context(node.log()))?;
    let checks = (a.health_checks(), b.health_checks());
    let (parts, _, _) = https(
        node.https,
        &root,
        "static.localhost",
        get("static.localhost", "/echo"),
    )
    .await?;
    assert_eq!(parts.status, 200);
    assert_eq!((a.health_checks(), b.health_checks()), checks);

    let status = node.stop().await?;
    assert!(status.success(), "exit status {status:?}\n{}", node.log());
    Ok(())
}

/// `GET path` over plain HTTP/1.1 from the local address `from`, to its end (`Connection:
/// close`); `prefix` is written first (a PROXY header a client should not send).
async fn plain_get_from(
    from: std::net::Ipv4Addr,
    addr: SocketAddr,
    host: &str,
    path: &str,
    prefix: &[u8],
) -> anyhow::Result<String> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let mut tcp = socket.connect(addr).await?;
    tcp.write_all(prefix).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply)).await??;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn client_addresses_arrive_through_haproxy_with_the_proxy_protocol() -> anyhow::Result<()> {
    let upstream = Upstream::start("a").await?;
    let site = format!(
        "[[site]]\ndomains = [\"app.localhost\"]\ntls = \"internal\"\nhttps_redirect = false\naccess_log = true\nproxy = {{ upstreams = [\"{}\"] }}\n",
        upstream.url()
    );
    let ip = testkit::loopback_ip();
    let mut node = Node::new(ip, testkit::free_port(), testkit::free_port(), &site)?;
    // HAProxy connects to the node from 127.0.0.1 (set below): that address, and only it,
    // must send the header.
    node.listen_extra = "proxy_protocol_from = [\"127.0.0.1\"]".to_owned();
    node.write_config(&site)?;
    let check = node.command(&["check"]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("PROXY protocol from: 127.0.0.1/32"),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    node.start().await?;
    let root = node.ca_root()?;

    // Plain HTTP with the v1 (text) header, HTTPS with v2 (binary) before the ClientHello.
    let lb_ip = testkit::loopback_ip();
    let (lb_http, lb_https) = (
        SocketAddr::from((lb_ip, testkit::free_port())),
        SocketAddr::from((lb_ip, testkit::free_port())),
    );
    let _haproxy = testkit::Haproxy::tcp_round_robin_with(
        &[(lb_http, vec![node.http]), (lb_https, vec![node.https])],
        &[
            "send-proxy source 127.0.0.1",
            "send-proxy-v2 source 127.0.0.1",
        ],
    )
    .await?;

    let client = testkit::loopback_ip();
    let config = Arc::new(testkit::client_config(&root, &[b"http/1.1"])?);
    let tls = testkit::wait_for_ok(
        "a TLS handshake through HAProxy",
        Duration::from_secs(20),
        || testkit::tls_connect_from(Some(client), lb_https, "app.localhost", Arc::clone(&config)),
    )
    .await
    .map_err(|e| e.context(node.log()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(get("app.localhost", "/tls")).await?;
    let body = response.into_body().collect().await?.to_bytes();
    let echo = Echo::parse(&String::from_utf8_lossy(&body))?;
    assert_eq!(echo.all("x-forwarded-for"), [client.to_string()]);
    assert_eq!(
        echo.all("forwarded"),
        [format!("for={client};host=app.localhost;proto=https")]
    );

    let other = testkit::loopback_ip();
    let reply = plain_get_from(other, lb_http, "app.localhost", "/plain", b"").await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains(&format!("x-forwarded-for: {other}\n")),
        "{reply}"
    );

    // A direct client is served as itself; a header from it is not believed.
    let direct = testkit::loopback_ip();
    let reply = plain_get_from(direct, node.http, "app.localhost", "/direct", b"").await?;
    assert!(
        reply.contains(&format!("x-forwarded-for: {direct}\n")),
        "{reply}"
    );
    let forged = plain_get_from(
        direct,
        node.http,
        "app.localhost",
        "/forged",
        b"PROXY TCP4 203.0.113.9 127.0.0.1 1000 80\r\n",
    )
    .await?;
    assert!(forged.starts_with("HTTP/1.1 400"), "{forged}");

    // The balancer's own address without a header is refused: closed (or reset, as the
    // request was left unread), nothing answered.
    let bare = plain_get_from(
        std::net::Ipv4Addr::LOCALHOST,
        node.http,
        "app.localhost",
        "/bare",
        b"",
    )
    .await;
    assert!(
        bare.as_ref().is_ok_and(String::is_empty) || bare.is_err(),
        "{bare:?}"
    );
    assert_eq!(upstream.requests(), 3, "{}", node.log());
    // The access log names the clients too, not the balancer (each line is written as its
    // response ends, so it is waited for).
    for (who, path) in [(client, "/tls"), (other, "/plain"), (direct, "/direct")] {
        let line = (format!("client={who} "), format!("path=\"{path}\""));
        testkit::wait_for(
            &format!("the access log line of {path}"),
            Duration::from_secs(10),
            || {
                let log = node.log();
                let found = log
                    .lines()
                    .any(|l| l.contains("access:") && l.contains(&line.0) && l.contains(&line.1));
                async move { found.then_some(()) }
            },
        )
        .await
        .map_err(|e| e.context(node.log()))?;
    }
    Ok(())
}
