//! HTTP/1.1 requests for tests, plain or over verifying TLS, plus raw byte exchanges.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::tls_client::{client_config, tls_connect};

/// Upper bound for one whole request (connect, send, read the full body).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET path` over plain HTTP/1.1 to `addr` with `Host: host`.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<HttpResponse> {
    http_request(addr, get(host, path)?).await
}

/// `GET path` over HTTPS (HTTP/1.1, ALPN `http/1.1`) to `addr`, with SNI and `Host` set to
/// `host`, verifying the server's chain against `roots_pem`.
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    roots_pem: &str,
    path: &str,
) -> anyhow::Result<HttpResponse> {
    https_request(addr, host, roots_pem, get(host, path)?).await
}

/// Sends `req` over plain HTTP/1.1. The URI should be origin-form (`/path?q`) and `req` must
/// carry its own `Host` header.
pub async fn http_request(addr: SocketAddr, req: Request<Bytes>) -> anyhow::Result<HttpResponse> {
    let what = format!("{} {} to http://{addr}", req.method(), req.uri());
    let run = async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        send(tcp, req).await
    };
    with_timeout(&what, run).await
}

/// Sends `req` over HTTPS (HTTP/1.1) as `sni`, verifying against `roots_pem`. The URI should be
/// origin-form and `req` must carry its own `Host` header.
pub async fn https_request(
    addr: SocketAddr,
    sni: &str,
    roots_pem: &str,
    req: Request<Bytes>,
) -> anyhow::Result<HttpResponse> {
    let what = format!(
        "{} {} to https://{addr} as {sni:?}",
        req.method(),
        req.uri()
    );
    let config = Arc::new(client_config(roots_pem, &[b"http/1.1"])?);
    let run = async {
        let tls = tls_connect(addr, sni, config).await?;
        send(tls, req).await
    };
    with_timeout(&what, run).await
}

/// Writes `bytes` to `addr` as they are and returns everything the server sends until it closes
/// the connection (lossy UTF-8). If the server keeps the connection open, returns what arrived
/// within [`REQUEST_TIMEOUT`], or fails if nothing did.
pub async fn raw_http(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    tcp.write_all(bytes).await.context("write raw request")?;
    let mut reply = Vec::new();
    let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 8192];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match (outcome, reply.is_empty()) {
        // Got a reply: a later reset (server closed with unread input) or a kept-alive
        // connection does not matter.
        (_, false) => {}
        // Closed without a byte: the caller sees "".
        (Ok(Ok(())), true) => {}
        (Ok(Err(e)), true) => return Err(e).context("read raw reply"),
        (Err(_), true) => bail!("no reply from {addr} within {REQUEST_TIMEOUT:?}"),
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn get(host: &str, path: &str) -> anyhow::Result<Request<Bytes>> {
    Ok(Request::get(path)
        .header(header::HOST, host)
        .body(Bytes::new())?)
}

async fn with_timeout<T>(
    what: &str,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .with_context(|| format!("{what} took over {REQUEST_TIMEOUT:?}"))?
        .with_context(|| what.to_owned())
}

async fn send<IO>(io: IO, req: Request<Bytes>) -> anyhow::Result<HttpResponse>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP/1.1 handshake")?;
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req.map(Full::new))
        .await
        .context("send request")?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .context("read response body")?
        .to_bytes();
    drop(sender);
    conn.abort();
    Ok(HttpResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
