//! Helpers shared by the proxy tests: proxy sites over plain HTTP, requests from a chosen
//! client address, upstream tallies.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

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
