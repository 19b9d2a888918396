//! Helpers shared by the proxy tests: proxy sites over plain HTTP, requests from a chosen
//! client address, upstream tallies.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod wire;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bytes::Bytes;
use edge::{Action, CertMap, Limits, Proxy, Site};
use http::{Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

use crate::common::{DEADLINE, Reply, TestEdge, names};

/// A proxy site served on plain HTTP too (no redirect to https).
pub fn site(hosts: &[&str], proxy: Proxy) -> Site {
    let mut site = Site::new(names(hosts), Action::Proxy(proxy));
    site.https_redirect = false;
    site
}

/// An edge with these sites and no certificates.
pub async fn start(sites: Vec<Site>) -> TestEdge {
    TestEdge::start(sites, Arc::new(CertMap::new()), Limits::default()).await
}

/// Sends `req` on a new HTTP/1.1 connection to `addr`, from `from` (a loopback address) when
/// given, and reads the whole response.
pub async fn send<B>(
    from: Option<Ipv4Addr>,
    addr: SocketAddr,
    req: Request<B>,
) -> anyhow::Result<Reply>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = format!("{} {} to {addr}", req.method(), req.uri());
    let run = async {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = from {
            socket.bind(SocketAddr::from((ip, 0)))?;
        }
        let tcp = socket.connect(addr).await.context("connect")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let conn = tokio::spawn(conn);
        let response = sender.send_request(req).await.context("send request")?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.context("read body")?.to_bytes();
        conn.abort();
        Ok::<_, anyhow::Error>(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(DEADLINE, run)
        .await
        .with_context(|| format!("{what} took over {DEADLINE:?}"))?
        .with_context(|| what)
}

/// `GET path` with `Host: host`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Reply> {
    send(None, addr, get_request(host, path)).await
}

pub fn get_request(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(header::HOST, host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// What the testkit upstream saw (from its echo body).
pub fn echo(reply: &Reply) -> testkit::Echo {
    testkit::Echo::parse(&String::from_utf8_lossy(&reply.body)).unwrap()
}

/// Which upstream answered (its `x-upstream` header).
pub fn answered_by(reply: &Reply) -> String {
    reply.header("x-upstream").unwrap_or("?").to_owned()
}

/// `n` sequential GETs of `/` for `host`; how many each upstream answered. Every answer must
/// be a 200.
pub async fn tally(addr: SocketAddr, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply = get(addr, host, "/").await.unwrap();
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        *counts.entry(answered_by(&reply)).or_insert(0) += 1;
    }
    counts
}

/// A bare-socket upstream: reads each request head and writes the bytes `answer` gives for
/// its method and path, then closes if told to. It reads no request body: for requests
/// without one.
pub async fn raw_upstream(
    answer: fn(&str, &str) -> (&'static [u8], bool),
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (addr, task, _, _) = spawn_raw(answer).await;
    (addr, task)
}

/// A bare-socket upstream (see [`raw_upstream`]) that keeps every request head it read;
/// stopped on drop.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
    /// Each request head as read (without the empty line), in order.
    pub heads: Heads,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
}

impl RawUpstream {
    pub async fn start(answer: fn(&str, &str) -> (&'static [u8], bool)) -> RawUpstream {
        let (addr, task, heads, connections) = spawn_raw(answer).await;
        RawUpstream {
            addr,
            task,
            heads,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request lines read so far.
    pub fn request_lines(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .map(|head| head.lines().next().unwrap_or("").to_owned())
            .collect()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type Heads = Arc<Mutex<Vec<String>>>;

async fn spawn_raw(
    answer: fn(&str, &str) -> (&'static [u8], bool),
) -> (
    SocketAddr,
    tokio::task::JoinHandle<()>,
    Heads,
    Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the raw upstream");
    let addr = listener.local_addr().expect("raw upstream address");
    let heads = Heads::default();
    let log = Arc::clone(&heads);
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                    seen.drain(..end + 4);
                    let mut words = head.split(' ');
                    let method = words.next().unwrap_or("").to_owned();
                    let path = words.next().unwrap_or("/").to_owned();
                    log.lock().unwrap().push(head);
                    let (bytes, close) = answer(&method, &path);
                    if stream.write_all(bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, task, heads, connections)
}
