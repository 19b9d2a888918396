//! Upstream web servers for reverse-proxy tests: a small hyper server that says which instance
//! answered and what it received, nginx as a real upstream, a connect "blackhole", streaming
//! request bodies, a hand-written WebSocket client, and memory readings from `/proc`.
//!
//! [`Upstream`] answers, by path:
//! - `/healthz`: `200 ok`, or `503` after [`Upstream::set_healthy`]`(false)`; counted apart.
//! - `/hang`: never answers (until the client goes away).
//! - `/bytes/N`: `N` bytes of generated data, streamed.
//! - an HTTP/1.1 `Upgrade: websocket` request: a WebSocket echo.
//! - anything else: reads the whole request body (counting it as it arrives, see
//!   [`Upstream::body_bytes`]) and answers `200` with `x-upstream: NAME` and
//!   `x-body-bytes: N` headers and an [`Echo`] body: the request line and headers received.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::address::loopback_ip;
use crate::poll::wait_for_ok;
use crate::process::ChildGuard;

/// How long [`Nginx::start`] waits for nginx to accept connections.
pub const NGINX_STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// Chunk size of generated bodies.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    health_checks: AtomicU64,
    connections_opened: AtomicU64,
    connections_open: AtomicU64,
    body_bytes: AtomicU64,
    unhealthy: AtomicBool,
    /// Wakes every connection task to close its connection.
    close_all: tokio::sync::Notify,
}

/// A small HTTP/1.1 + HTTP/2 server on a loopback address; stopped (every connection cut) by
/// [`Upstream::kill`] or on drop.
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream named `name` on a fresh `127.0.0.x` address.
    pub async fn start(name: &str) -> anyhow::Result<Upstream> {
        Self::start_at(name, SocketAddr::from((loopback_ip(), 0))).await
    }

    /// Starts an upstream on `addr` (e.g. the address of one that was killed).
    pub async fn start_at(name: &str, addr: SocketAddr) -> anyhow::Result<Upstream> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind upstream {name} on {addr}"))?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept_loop(listener, Arc::from(name), Arc::clone(&stats)));
        Ok(Upstream {
            name: name.to_owned(),
            addr,
            stats,
            task,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered or being answered, health checks excluded.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// `/healthz` requests received.
    pub fn health_checks(&self) -> u64 {
        self.stats.health_checks.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connections_opened(&self) -> u64 {
        self.stats.connections_opened.load(Ordering::Relaxed)
    }

    /// TCP connections open now.
    pub fn connections_open(&self) -> u64 {
        self.stats.connections_open.load(Ordering::Relaxed)
    }

    /// Request body bytes received so far, over all requests (updated as data arrives).
    pub fn body_bytes(&self) -> u64 {
        self.stats.body_bytes.load(Ordering::Relaxed)
    }

    /// Makes `/healthz` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.stats.unhealthy.store(!healthy, Ordering::Relaxed);
    }

    /// Closes every open connection (as an upstream's keep-alive timeout closes idle ones) and
    /// keeps accepting new ones.
    pub fn close_connections(&self) {
        self.stats.close_all.notify_waiters();
    }

    /// Stops at once: the listener closes (connections are refused) and every open connection
    /// is cut, as when the process dies.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, name: Arc<str>, stats: Arc<Stats>) {
    // Dropped (aborting every connection) when this task is aborted.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Reap finished connection tasks.
        while connections.try_join_next().is_some() {}
        stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        let open = OpenConnection(Arc::clone(&stats));
        let name = Arc::clone(&name);
        let stats = Arc::clone(&stats);
        let close_stats = Arc::clone(&stats);
        connections.spawn(async move {
            let _open = open;
            // Registered before serving, so a close_connections() from now on reaches it.
            let close = close_stats.close_all.notified();
            tokio::pin!(close);
            close.as_mut().enable();
            let _ = stream.set_nodelay(true);
            let service = service_fn(move |req| {
                let name = Arc::clone(&name);
                let stats = Arc::clone(&stats);
                async move { Ok::<_, Infallible>(answer(req, &name, &stats).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let serve = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = serve => {}
                () = close => {}
            }
        });
    }
}

/// Counts a connection as open until dropped (also when its task is aborted).
struct OpenConnection(Arc<Stats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

type UpstreamBody = http_body_util::Either<http_body_util::Full<Bytes>, GeneratedBody>;

async fn answer(mut req: Request<Incoming>, name: &str, stats: &Stats) -> Response<UpstreamBody> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        stats.health_checks.fetch_add(1, Ordering::Relaxed);
        return if stats.unhealthy.load(Ordering::Relaxed) {
            fixed(StatusCode::SERVICE_UNAVAILABLE, name, "unhealthy\n")
        } else {
            fixed(StatusCode::OK, name, "ok\n")
        };
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let Ok(n) = n.parse::<u64>() else {
            return fixed(StatusCode::BAD_REQUEST, name, "bad size\n");
        };
        let mut response = Response::new(http_body_util::Either::Right(GeneratedBody::new(n)));
        response.headers_mut().insert(
            "x-upstream",
            HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("?")),
        );
        return response;
    }
    if is_websocket(&req) {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return fixed(StatusCode::BAD_REQUEST, name, "no key\n");
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let _ = ws_echo(TokioIo::new(upgraded)).await;
            }
        });
        let mut response = fixed(StatusCode::SWITCHING_PROTOCOLS, name, "");
        let headers = response.headers_mut();
        headers.remove(header::CONTENT_TYPE);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&ws_accept(key.as_bytes())) {
            headers.insert("sec-websocket-accept", accept);
        }
        return response;
    }

    let mut echo = format!(
        "upstream {name}\nrequest {} {} {:?}\n",
        req.method(),
        req.uri(),
        req.version()
    );
    for (k, v) in req.headers() {
        echo.push_str(k.as_str());
        echo.push_str(": ");
        echo.push_str(&String::from_utf8_lossy(v.as_bytes()));
        echo.push('\n');
    }
    let mut body = req.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    received += data.len() as u64;
                    stats
                        .body_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Err(_) => return fixed(StatusCode::BAD_REQUEST, name, "body failed\n"),
        }
    }
    let mut response = fixed(StatusCode::OK, name, &echo);
    response
        .headers_mut()
        .insert("x-body-bytes", HeaderValue::from(received));
    response
}

fn fixed(status: StatusCode, name: &str, body: &str) -> Response<UpstreamBody> {
    let mut response = Response::new(http_body_util::Either::Left(http_body_util::Full::new(
        Bytes::from(body.to_owned()),
    )));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        "x-upstream",
        HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("?")),
    );
    // Hop-by-hop fields the proxy must not pass on.
    headers.insert("keep-alive", HeaderValue::from_static("timeout=30"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("x-private"));
    headers.insert("x-private", HeaderValue::from_static("1"));
    response
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// What an [`Upstream`] saw of a request, parsed from its echo body.
#[derive(Debug, Clone)]
pub struct Echo {
    /// The upstream's name.
    pub upstream: String,
    /// `METHOD URI VERSION` as received.
    pub request_line: String,
    /// Header fields in the order received (names lower-case).
    pub headers: Vec<(String, String)>,
}

impl Echo {
    pub fn parse(text: &str) -> anyhow::Result<Echo> {
        let mut lines = text.lines();
        let upstream = lines
            .next()
            .and_then(|l| l.strip_prefix("upstream "))
            .context("no upstream line in the echo")?
            .to_owned();
        let request_line = lines
            .next()
            .and_then(|l| l.strip_prefix("request "))
            .context("no request line in the echo")?
            .to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Echo {
            upstream,
            request_line,
            headers,
        })
    }

    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only (or first) value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
}

/// A body of `len` generated bytes, produced chunk by chunk as the reader polls (so it is
/// never in memory whole).
#[derive(Debug)]
pub struct GeneratedBody {
    left: u64,
    chunk: Bytes,
}

impl GeneratedBody {
    pub fn new(len: u64) -> GeneratedBody {
        let chunk: Vec<u8> = (0..CHUNK).map(|i| b"fleetgate-"[i % 10]).collect();
        GeneratedBody {
            left: len,
            chunk: Bytes::from(chunk),
        }
    }
}

impl Body for GeneratedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(self.left).map_or(CHUNK, |left| left.min(CHUNK));
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A request body fed by the test through a channel, chunk by chunk: the test decides when
/// each part is sent (e.g. waits for the upstream to see the start before sending the rest).
/// The body ends when every sender is dropped.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

/// A [`ChannelBody`] and its sender; at most `capacity` chunks wait in between.
pub fn channel_body(capacity: usize) -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (tx, ChannelBody { rx })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// A generated chunk of `len` bytes for [`ChannelBody`] senders.
pub fn chunk(len: usize) -> Bytes {
    Bytes::from(vec![b'x'; len])
}

/// A TCP address that accepts no connection and never refuses one: connecting to it hangs
/// until the connector's own timeout, like a host that drops packets.
///
/// It is a listener with an accept queue of one, already filled by a connection it holds and
/// never accepts; Linux drops further SYNs, and clients retransmit until they give up.
pub struct Blackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    pub async fn start() -> anyhow::Result<Blackhole> {
        let addr = SocketAddr::from((loopback_ip(), 0));
        let socket = TcpSocket::new_v4()?;
        socket.bind(addr)?;
        let listener = socket.listen(0)?;
        let addr = listener.local_addr()?;
        let mut fillers = Vec::new();
        // Fill the queue until a connection attempt hangs (proof the hole works).
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                Ok(Err(e)) => bail!("connecting to the blackhole {addr} failed: {e}"),
                Err(_) => {
                    return Ok(Blackhole {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    });
                }
            }
        }
        bail!("the accept queue of {addr} never filled up")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// nginx (`/usr/sbin/nginx`) serving static files from [`Nginx::www`] on a loopback address, in
/// the foreground, with its pid, logs and temp files in a temporary directory. Killed on drop.
///
/// Besides the files, it answers `/healthz` and `/echo` (a text line with the `Host`,
/// `X-Forwarded-For`, `X-Forwarded-Proto` and `Via` it received).
pub struct Nginx {
    addr: SocketAddr,
    tls: bool,
    dir: tempfile::TempDir,
    child: ChildGuard,
}

impl Nginx {
    /// Starts nginx on a fresh `127.0.0.x`; `extra` is added to its `server {}` block.
    pub async fn start(extra: &str) -> anyhow::Result<Nginx> {
        Self::start_on(loopback_ip(), extra).await
    }

    /// Starts nginx on `ip`; `extra` is added to its `server {}` block.
    pub async fn start_on(ip: Ipv4Addr, extra: &str) -> anyhow::Result<Nginx> {
        Self::launch(ip, extra, None).await
    }

    /// Starts nginx serving HTTPS (only) on `ip` with this certificate chain and key (PEM); the
    /// certificate should name `ip`.
    pub async fn start_tls_on(
        ip: Ipv4Addr,
        cert_pem: &str,
        key_pem: &str,
        extra: &str,
    ) -> anyhow::Result<Nginx> {
        Self::launch(ip, extra, Some((cert_pem, key_pem))).await
    }

    async fn launch(ip: Ipv4Addr, extra: &str, tls: Option<(&str, &str)>) -> anyhow::Result<Nginx> {
        let binary = Path::new("/usr/sbin/nginx");
        if !binary.exists() {
            bail!("nginx is not installed (/usr/sbin/nginx; Debian package nginx)");
        }
        let dir = tempfile::Builder::new()
            .prefix("testkit-nginx-")
            .tempdir()?;
        let root = dir.path();
        let www = root.join("www");
        std::fs::create_dir_all(&www)?;
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(root.join("tmp").join(sub))?;
        }
        let addr = crate::address::free_addr(ip);
        let d = root.display();
        let listen = match tls {
            Some((cert, key)) => {
                std::fs::write(root.join("cert.pem"), cert)?;
                std::fs::write(root.join("key.pem"), key)?;
                format!(
                    "listen {addr} ssl;\n        ssl_certificate {d}/cert.pem;\n        ssl_certificate_key {d}/key.pem;"
                )
            }
            None => format!("listen {addr};"),
        };
        let config = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        {listen}
        root {www};
        location = /healthz {{ default_type text/plain; return 200 "ok\n"; }}
        location = /echo {{
            default_type text/plain;
            return 200 "nginx host=$http_host xff=$http_x_forwarded_for proto=$http_x_forwarded_proto via=$http_via\n";
        }}
        {extra}
    }}
}}
"#,
            www = www.display()
        );
        let conf = root.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.arg("-p")
            .arg(root)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(root.join("error.log"));
        let child = ChildGuard::spawn_logging_to(cmd, "nginx", &root.join("nginx.log"))?;
        let nginx = Nginx {
            addr,
            tls: tls.is_some(),
            dir,
            child,
        };
        let error_log = nginx.dir.path().join("error.log");
        wait_for_ok(
            "nginx accepting connections",
            NGINX_STARTUP_DEADLINE,
            || async {
                TcpStream::connect(addr).await?;
                Ok(())
            },
        )
        .await
        .with_context(|| std::fs::read_to_string(&error_log).unwrap_or_default())?;
        Ok(nginx)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, or `https://ADDR` when started with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The document root.
    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// Writes a file of `len` generated bytes under the document root.
    pub fn write_file(&self, name: &str, len: u64) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        let path = self.www().join(name);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let chunk: Vec<u8> = (0..CHUNK).map(|i| b"fleetgate-"[i % 10]).collect();
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        file.flush()?;
        Ok(path)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

// ---- WebSocket (RFC 6455), just enough for echo tests ------------------------------------------

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn ws_accept(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(WS_GUID.as_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64(digest.as_ref())
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A WebSocket frame: opcode and payload (1 text, 2 binary, 8 close, 9 ping, 10 pong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Writes one final frame, masked (as clients must) when `mask` is given.
pub async fn ws_write<W: AsyncWrite + Unpin>(
    io: &mut W,
    frame: &WsFrame,
    mask: Option<[u8; 4]>,
) -> anyhow::Result<()> {
    let mut out = BytesMut::with_capacity(frame.payload.len() + 14);
    out.extend_from_slice(&[0x80 | (frame.opcode & 0x0f)]);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = frame.payload.len();
    if len < 126 {
        out.extend_from_slice(&[mask_bit | len as u8]);
    } else if let Ok(len) = u16::try_from(len) {
        out.extend_from_slice(&[mask_bit | 126]);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.extend_from_slice(&[mask_bit | 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(
                frame
                    .payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[i % 4]),
            );
        }
        None => out.extend_from_slice(&frame.payload),
    }
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one frame (unmasking it if masked). Fragmented messages are returned frame by frame.
pub async fn ws_read<R: AsyncRead + Unpin>(io: &mut R) -> anyhow::Result<WsFrame> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await.context("read frame head")?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => u64::from(io.read_u16().await?),
        127 => io.read_u64().await?,
        n => u64::from(n),
    };
    if len > 64 * 1024 * 1024 {
        bail!("frame of {len} bytes is too large for a test");
    }
    let mut key = [0u8; 4];
    if masked {
        io.read_exact(&mut key).await?;
    }
    let mut payload = vec![0u8; usize::try_from(len)?];
    io.read_exact(&mut payload)
        .await
        .context("read frame payload")?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok(WsFrame { opcode, payload })
}

/// Echoes frames until a close frame (answered) or EOF.
async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> anyhow::Result<()> {
    loop {
        let frame = ws_read(&mut io).await?;
        let reply = match frame.opcode {
            9 => WsFrame {
                opcode: 10,
                payload: frame.payload,
            },
            _ => frame,
        };
        ws_write(&mut io, &reply, None).await?;
        if reply.opcode == 8 {
            return Ok(());
        }
    }
}

/// Sends a WebSocket handshake for `host` and `path` on `io` and reads the response head.
/// Returns the head (status line and headers) once a `101` with the right
/// `Sec-WebSocket-Accept` arrived; the stream then carries frames ([`ws_write`], [`ws_read`]).
pub async fn ws_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    host: &str,
    path: &str,
) -> anyhow::Result<String> {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    // Byte by byte up to the blank line, so no frame byte is consumed with the head.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            bail!("response head too long");
        }
        head.push(io.read_u8().await.context("read the handshake response")?);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        bail!("no protocol switch:\n{head}");
    }
    let expected = ws_accept(key.as_bytes());
    let accepted = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == expected
        })
    });
    if !accepted {
        bail!("wrong or missing Sec-WebSocket-Accept:\n{head}");
    }
    Ok(head)
}

// ---- memory of a process -----------------------------------------------------------------------

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`...) in bytes; `pid` `None` is this
/// process.
pub fn proc_status_bytes(pid: Option<u32>, field: &str) -> anyhow::Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in {path}"))?;
    let kib: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{field} in {path}: {line:?}"))?;
    Ok(kib * 1024)
}

/// Resets this process's peak resident set size (`VmHWM`) to its current size (Linux 4.0+:
/// `5` written to `/proc/self/clear_refs`).
pub fn reset_peak_rss() -> anyhow::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
        .context("reset VmHWM through /proc/self/clear_refs")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455() {
        // RFC 6455 section 1.3.
        assert_eq!(
            ws_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        for len in [0, 5, 125, 126, 70_000] {
            let frame = WsFrame {
                opcode: 2,
                payload: vec![7; len],
            };
            ws_write(&mut a, &frame, Some([1, 2, 3, 4])).await.unwrap();
            assert_eq!(ws_read(&mut b).await.unwrap(), frame);
        }
    }

    #[test]
    fn proc_status_is_readable() {
        assert!(proc_status_bytes(None, "VmRSS").unwrap() > 0);
        assert!(proc_status_bytes(None, "VmHWM").unwrap() > 0);
    }
}
