//! A client speaking raw HTTP/1.1 bytes over TCP, reading responses as they come off the wire.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::common::DEADLINE;

/// How a response body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length,
    Chunked,
    /// Until the connection closed.
    Close,
}

/// A response read off the wire: status line, header fields as sent, body (de-chunked).
#[derive(Debug)]
pub struct WireResponse {
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
}

impl WireResponse {
    /// The status code from the status line (0 when it has none).
    pub fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Every value of field `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of field `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    /// Whether a comma-separated field `name` lists `token` (case-insensitive).
    pub fn lists(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// What the testkit upstream saw (from its echo body).
    pub fn echo(&self) -> testkit::Echo {
        testkit::Echo::parse(&String::from_utf8_lossy(&self.body))
            .unwrap_or_else(|e| panic!("not an echo body ({e}): {self:?}"))
    }
}

/// A client connection speaking raw bytes; what was read beyond one response stays buffered
/// for the next.
pub struct Wire {
    pub tcp: TcpStream,
    pub buf: Vec<u8>,
}

impl Wire {
    pub async fn connect(addr: SocketAddr) -> Wire {
        let tcp = TcpStream::connect(addr).await.expect("connect to the edge");
        Wire {
            tcp,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write to the edge");
    }

    /// Reads more bytes into the buffer within [`DEADLINE`]; false at EOF or on a reset.
    pub async fn fill(&mut self) -> bool {
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
    pub async fn line(&mut self) -> String {
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
    pub async fn take(&mut self, n: usize) -> Vec<u8> {
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
    pub async fn until_close(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Reads one response (a 1xx one too): head up to the empty line, then the body by
    /// `Transfer-Encoding: chunked`, `Content-Length` or until close. `head` says it answers a
    /// HEAD request (no body whatever the fields say).
    pub async fn response(&mut self, head: bool) -> WireResponse {
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
pub fn get_bytes(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}
