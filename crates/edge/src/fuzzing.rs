//! Entry points for the fuzz targets (`fuzz/` at the workspace root) and the regression tests
//! they leave behind: each takes the bytes a peer could send and reports, in plain types, what
//! the edge's own wire code made of them. The properties are checked by the callers.
//!
//! Not an API: nothing outside fleetgate's fuzzing and tests may use it.
//!
//! - [`lane_request`]: the express lane's request-head parser ([`crate::http1`]).
//! - [`upstream_response`]: the upstream client's response-head parser and body decoder
//!   (length, chunked, until close; [`crate::proxy::h1`]), driven through a real socket so the
//!   bytes can arrive cut wherever the caller says.
//! - [`proxy_header`]: the PROXY protocol header ([`crate::proxy_protocol`]).
//! - Host parsing is public already: [`crate::Host::parse`].

use std::future::{Future, poll_fn};
use std::io::Write as _;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use http::header::HeaderMap;
use http::{Method, Request};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;

use crate::http1;
use crate::proxy::h1::{Conn, Framing};
use crate::proxy::request_body::RequestBody;
use crate::proxy_protocol::{self, Origin};

/// What the lane's parser made of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneHead {
    /// More bytes are needed.
    Incomplete,
    /// Not for the lane (or not valid): the connection would go to hyper with the buffer.
    Refused,
    /// A request the lane serves.
    Taken(LaneRequest),
}

/// A request head the lane took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneRequest {
    /// The head's bytes, as split off the front of the buffer.
    pub head: Vec<u8>,
    pub method: String,
    /// The request target (origin form).
    pub target: String,
    pub version_11: bool,
    /// Names (lower case) and values, in order.
    pub fields: Vec<(String, Vec<u8>)>,
    /// The client asked for the connection to close.
    pub close: bool,
}

/// [`lane_request`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneOutcome {
    pub head: LaneHead,
    /// The buffer after the parse: what follows the head, or all of it if no head was taken.
    pub rest: Vec<u8>,
}

/// Parses `input` as the lane does when it is the connection's read buffer.
pub fn lane_request(input: &[u8]) -> LaneOutcome {
    let mut buf = BytesMut::from(input);
    let head = match http1::parse(&mut buf, &mut Vec::new(), &mut HeaderMap::new()) {
        Ok(None) => LaneHead::Incomplete,
        Err(()) => LaneHead::Refused,
        Ok(Some(parsed)) => {
            let request = &parsed.request;
            LaneHead::Taken(LaneRequest {
                head: parsed.head.to_vec(),
                method: request.method().as_str().to_owned(),
                target: request.uri().to_string(),
                version_11: request.version() == http::Version::HTTP_11,
                fields: request
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                    .collect(),
                close: parsed.close,
            })
        }
    };
    LaneOutcome {
        head,
        rest: buf.to_vec(),
    }
}

/// What [`proxy_header`] found: a header of `len` bytes, relayed for `client` (`None`: the
/// balancer's own connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub len: usize,
    pub client: Option<SocketAddr>,
}

/// Parses the PROXY header at the start of `input`: `Ok(None)` while more bytes are needed,
/// `Err` with the reason for a connection that is refused.
pub fn proxy_header(input: &[u8]) -> Result<Option<ProxyHeader>, String> {
    match proxy_protocol::parse(input) {
        Ok(None) => Ok(None),
        Ok(Some((len, origin))) => Ok(Some(ProxyHeader {
            len,
            client: match origin {
                Origin::Client(addr) => Some(addr),
                Origin::Balancer => None,
            },
        })),
        Err(e) => Err(e.to_string()),
    }
}

/// How [`upstream_response`] asks for the response.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// The request was `HEAD` (no body follows the head).
    pub head_request: bool,
    /// The head is written out for an HTTP/1.1 client (the lane) instead of parsed into a map.
    pub client_head: bool,
    /// Offsets in the input where the upstream's bytes are cut into separate writes (the
    /// reader may still find several pieces at once).
    pub cuts: Vec<usize>,
}

/// How the body after a response head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (HEAD, 1xx, 204, 304) or an empty one.
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response head the upstream client accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHead {
    pub status: u16,
    pub version_10: bool,
    pub framing: BodyFraming,
    /// The connection may take another request once the body is read.
    pub reusable: bool,
    /// Fields as a map (lower-case names, in order), when not asked for a client head.
    pub fields: Vec<(String, Vec<u8>)>,
    /// With [`Exchange::client_head`]: the head as the client gets it (status line and
    /// fields, without the final empty line), whether the body is re-chunked, and whether the
    /// upstream sent a `Date`.
    pub client_head: Option<(Vec<u8>, bool, bool)>,
}

/// How the body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    /// The decoder said the body is complete.
    Complete {
        /// Nothing but the body was read: the connection could go back to the pool.
        clean: bool,
    },
    /// The decoder failed (a short or broken body).
    Error(String),
    /// The decoder wanted more after the upstream had sent everything and closed: it would
    /// have waited forever.
    Stuck,
}

/// [`upstream_response`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamOutcome {
    /// The parsed head, or why it was refused.
    pub head: Result<UpstreamHead, String>,
    /// The body's pieces as the decoder gave them.
    pub body: Vec<Vec<u8>>,
    /// `None` when there was no head.
    pub end: Option<BodyEnd>,
}

/// The largest input [`upstream_response`] takes (a socket buffer must hold it).
pub const MAX_UPSTREAM_INPUT: usize = 64 * 1024;

/// Sends `GET /` (or `HEAD /`) on an upstream connection whose peer answers `input` (cut at
/// `exchange.cuts`) and then closes, and reads the response head and body as the proxy does.
///
/// Inputs over [`MAX_UPSTREAM_INPUT`] are cut short.
pub fn upstream_response(input: &[u8], exchange: &Exchange) -> UpstreamOutcome {
    thread_local! {
        static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok();
    }
    let input = &input[..input.len().min(MAX_UPSTREAM_INPUT)];
    RUNTIME.with(|runtime| match runtime {
        Some(runtime) => runtime
            .block_on(exchange_over_socket(input, exchange))
            .unwrap_or_else(|e| panic!("the fuzzing harness failed (not a finding): {e}")),
        None => panic!("the fuzzing harness has no runtime (not a finding)"),
    })
}

/// The bytes of the upstream's answer, written piece by piece to the connection's peer.
struct Peer<'a> {
    socket: UnixStream,
    pieces: Vec<&'a [u8]>,
    next: usize,
    closed: bool,
}

impl Peer<'_> {
    /// Sends the next piece, or closes after the last. `false` once closed.
    fn send(&mut self) -> std::io::Result<bool> {
        if let Some(piece) = self.pieces.get(self.next) {
            self.next += 1;
            self.socket.write_all(piece)?;
            Ok(true)
        } else if !self.closed {
            self.closed = true;
            self.socket.shutdown(Shutdown::Write)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Runs `fut` to its end, sending a piece whenever it waits for more. `None` if it still
    /// waits once everything is sent and the peer has closed.
    async fn drive<F: Future>(&mut self, fut: F) -> std::io::Result<Option<F::Output>> {
        let mut fut = std::pin::pin!(fut);
        loop {
            // One turn of the runtime, so that the connection sees what was sent.
            tokio::task::yield_now().await;
            if let Poll::Ready(out) = poll_once(fut.as_mut()).await {
                return Ok(Some(out));
            }
            if !self.send()? {
                // Everything is there: a reader that still waits would wait forever (a
                // generous bound, as the runtime may be slow under a sanitizer).
                return Ok(tokio::time::timeout(Duration::from_secs(5), fut).await.ok());
            }
        }
    }
}

async fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut fut = Some(fut);
    poll_fn(|cx| {
        Poll::Ready(match fut.take() {
            Some(fut) => fut.poll(cx),
            None => Poll::Pending,
        })
    })
    .await
}

async fn exchange_over_socket(
    input: &[u8],
    exchange: &Exchange,
) -> std::io::Result<UpstreamOutcome> {
    let (near, far) = UnixStream::pair()?;
    near.set_nonblocking(true)?;
    // The connection's type is TCP's; a stream socket of another family reads and writes the
    // same way.
    let near = tokio::net::TcpStream::from_std(std::net::TcpStream::from(OwnedFd::from(near)))?;
    let mut conn = Conn::new(TokioIo::new(MaybeHttpsStream::Http(TokioIo::new(near))), 0);
    let mut cuts: Vec<usize> = exchange
        .cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < input.len())
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut at = 0;
    for cut in cuts.into_iter().chain([input.len()]) {
        pieces.push(&input[at..cut]);
        at = cut;
    }
    let mut peer = Peer {
        socket: far,
        pieces,
        next: 0,
        closed: false,
    };
    let method = if exchange.head_request {
        Method::HEAD
    } else {
        Method::GET
    };
    let mut request = Request::new(RequestBody::empty());
    *request.method_mut() = method;
    *request.uri_mut() = http::Uri::from_static("/");
    let head = peer
        .drive(conn.exchange(
            request,
            b"host: upstream.test\r\n",
            exchange.client_head,
            // Far enough never to fire: `drive` says when the exchange is stuck.
            tokio::time::Instant::now() + std::time::Duration::from_secs(3600),
        ))
        .await?;
    let head = match head {
        None => {
            return Ok(UpstreamOutcome {
                head: Err("stuck: waited for more after the upstream closed".to_owned()),
                body: Vec::new(),
                end: None,
            });
        }
        Some(Err(error)) => {
            return Ok(UpstreamOutcome {
                head: Err(error.to_string()),
                body: Vec::new(),
                end: None,
            });
        }
        Some(Ok(head)) => head,
    };
    let mut framing = head.framing;
    let reported = UpstreamHead {
        status: head.response.status().as_u16(),
        version_10: head.response.version() == http::Version::HTTP_10,
        framing: match framing {
            Framing::Length(0) | Framing::Done => BodyFraming::None,
            Framing::Length(n) => BodyFraming::Length(n),
            Framing::UntilClose => BodyFraming::UntilClose,
            _ => BodyFraming::Chunked,
        },
        reusable: head.reusable,
        fields: head
            .response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
        client_head: head
            .client
            .map(|client| (client.head.to_vec(), client.chunked, client.date)),
    };
    let mut body = Vec::new();
    let end = loop {
        match peer
            .drive(poll_fn(|cx| conn.poll_body(&mut framing, cx)))
            .await?
        {
            None => break BodyEnd::Stuck,
            Some(None) => {
                break BodyEnd::Complete {
                    clean: conn.is_clean(),
                };
            }
            Some(Some(Ok(data))) => body.push(data.to_vec()),
            Some(Some(Err(error))) => break BodyEnd::Error(error.to_string()),
        }
    };
    Ok(UpstreamOutcome {
        head: Ok(reported),
        body,
        end: Some(end),
    })
}
