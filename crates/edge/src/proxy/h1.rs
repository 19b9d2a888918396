//! The proxy's side of an HTTP/1.1 upstream connection: one request at a time, written and
//! read by the task that forwards it.
//!
//! hyper's client connection is a general tool: a dispatcher future that takes requests from a
//! channel, answers through a oneshot and hands the response body over another channel. On the
//! proxy's hot path that machinery cost more CPU than everything else fleetgate does per
//! request. A proxy needs much less: write the head (and stream the body), parse the response
//! head with `httparse`, then decode the body (length, chunked or until close) straight from
//! the socket as the client's side asks for it. Upgrades (WebSocket) still use hyper's client,
//! see [`super::pool::UpstreamClient::send_upgrade`].

use std::future::{Future as _, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::io::poll_read_buf;

use crate::framing::{self, ResponseFraming};
use crate::proxy::connector::Io;
use crate::proxy::headers;
use crate::proxy::request_body::{RequestBody, RequestBodyError};
use crate::wire;

/// An upstream connection's transport (TCP, or TLS over TCP), with tokio's IO traits.
pub(crate) type Stream = TokioIo<Io>;

/// A response head may be this large, fields included.
const MAX_HEAD: usize = 64 * 1024;
/// Fields in a response head.
const MAX_FIELDS: usize = 128;
/// Free space for each read. More than a typical small response, so that a read that
/// drains the socket says so (tokio then knows the socket is not readable without asking the
/// kernel again).
const READ_SPACE: usize = 16 * 1024;
/// Less free space than this, and the buffer is replaced (or grown) before a read.
const MIN_READ_SPACE: usize = 4 * 1024;
/// A chunk-size line (with extensions) or a trailer line may be this long.
const MAX_LINE: usize = 4 * 1024;
/// Between two reads of a body, unless the connection is given its site's
/// ([`Conn::with_read_timeout`]); the same as [`crate::Proxy::read_timeout`]'s default.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error("writing the request failed")]
    Write(#[source] io::Error),
    #[error("reading the response failed")]
    Read(#[source] io::Error),
    /// Before a single byte of a response arrived.
    #[error("the upstream closed the connection without answering")]
    Closed,
    #[error("the upstream's response head is invalid: {0}")]
    InvalidHead(&'static str),
    #[error("the upstream's response head is over 64 KiB")]
    HeadTooLarge,
    #[error("the request body failed")]
    Body(#[source] RequestBodyError),
    #[error("the upstream closed the connection before the body ended")]
    ShortBody,
    #[error("the upstream's chunked body is invalid: {0}")]
    InvalidChunk(&'static str),
    #[error("the upstream sent nothing of the body for {0:?}")]
    ReadTimeout(Duration),
    /// No response head by the deadline (the site's `response_header_timeout`).
    #[error("no response head in time")]
    HeadTimeout,
}

impl H1Error {
    /// The upstream answered nothing (it had closed or reset the connection): a request that
    /// can be sent again safely may go out on another connection.
    pub(crate) fn unanswered(&self) -> bool {
        match self {
            H1Error::Closed => true,
            H1Error::Write(e) | H1Error::Read(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// How a response body is delimited (RFC 9112 6.3), and where its decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Content-Length: this many bytes left.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk: this many bytes left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer fields after the last chunk, until an empty line.
    Trailers,
    /// Everything until the upstream closes (the connection cannot be reused).
    UntilClose,
    /// The body has ended (or there was none).
    Done,
}

impl Framing {
    /// Where decoding starts for a body delimited so.
    fn start(body: framing::Body) -> Framing {
        match body {
            framing::Body::None => Framing::Done,
            framing::Body::Length(n) => Framing::Length(n),
            framing::Body::Chunked => Framing::ChunkSize,
            framing::Body::UntilClose => Framing::UntilClose,
        }
    }

    /// Nothing of the body is left to read.
    pub(crate) fn ended(self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }
}

/// A response head as the proxy forwards it.
pub(crate) struct Head {
    /// Status and version; the fields too, unless the head was asked for as [`ClientHead`].
    pub(crate) response: Response<()>,
    pub(crate) framing: Framing,
    /// The upstream allows another request on the connection once the body is read.
    pub(crate) reusable: bool,
    /// The fields are ready for the client (hop-by-hop ones left out, `Via` added: what
    /// [`headers::to_client`] does), which is so unless `Connection` lists other fields.
    pub(crate) for_client: bool,
    /// The head as the client's HTTP/1.1 connection gets it, when asked for.
    pub(crate) client: Option<ClientHead>,
}

/// A response head written out for an HTTP/1.1 client, for the server side that writes heads
/// itself ([`crate::http1`]): no `HeaderMap` is built, the fields are copied as they came.
#[derive(Debug)]
pub(crate) struct ClientHead {
    /// The status line and the fields, without the empty line that ends the head: the
    /// upstream's end-to-end fields (those named by its `Connection` left out too, framing
    /// fields never), `Via`, and the framing fields [`framing::response`] decided.
    pub(crate) head: Bytes,
    /// The body is to be sent chunked: the upstream's was chunked or ran until it closed.
    pub(crate) chunked: bool,
    /// The upstream sent a `Date`.
    pub(crate) date: bool,
}

/// One keep-alive connection to an upstream.
pub(crate) struct Conn {
    /// The pool's idle list this connection belongs to (the runtime that dialled it).
    pub(crate) home: usize,
    io: Stream,
    /// What was read and not yet used.
    buf: BytesMut,
    /// Request heads are written here (kept: no allocation per request).
    out: Vec<u8>,
    /// The response head's fields as offsets (kept, as `out`).
    spans: Vec<Span>,
    /// How long a body read may wait for the upstream (the site's `read_timeout`).
    read_timeout: Duration,
    /// The connection's one timer: the response head's deadline during an exchange, then the
    /// read timeout while a body read waits. Made once and kept with the connection: moving
    /// a registered timer's deadline later costs no lock, a new timer per request two (its
    /// registration and its removal from the runtime's timer wheel).
    timer: Option<Pin<Box<Sleep>>>,
    /// A body read is waiting and `timer` is set for it.
    waiting: bool,
}

/// Where a field's name and value are in a response head.
#[derive(Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
    hop_by_hop: bool,
    /// `Content-Length` (`Transfer-Encoding` is hop-by-hop): the client gets the edge's own.
    framing: bool,
}

impl Conn {
    pub(crate) fn new(io: Stream, home: usize) -> Conn {
        Conn {
            home,
            io,
            buf: BytesMut::with_capacity(READ_SPACE),
            out: Vec::with_capacity(512),
            spans: Vec::with_capacity(16),
            read_timeout: DEFAULT_READ_TIMEOUT,
            timer: None,
            waiting: false,
        }
    }

    /// The connection with body reads limited to `read_timeout` between two reads.
    pub(crate) fn with_read_timeout(mut self, read_timeout: Duration) -> Conn {
        self.read_timeout = read_timeout;
        self
    }

    /// Whether an idle connection can take a request: nothing is waiting to be read and the
    /// upstream has not closed it. Costs no system call when the last read drained the socket.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        // Pending: nothing to read. Bytes, end of file or an error: not reusable.
        self.poll_fill(cx).is_pending()
    }

    /// Reads what is there into `buf`; `Ok(0)` at end of file.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // What is left of the buffer serves many small responses before a new one is needed.
        if self.buf.capacity() - self.buf.len() < MIN_READ_SPACE {
            self.buf.reserve(READ_SPACE);
        }
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Writes `req` (origin-form target, headers already rewritten) and `lines` (ready field
    /// lines) with its body, then reads the response head: into a `HeaderMap`, or written out
    /// for the client if `client_head` ([`Head::client`]). Fails with [`H1Error::HeadTimeout`]
    /// if the head is not in by `deadline`.
    pub(crate) async fn exchange(
        &mut self,
        req: Request<RequestBody>,
        lines: &[u8],
        client_head: bool,
        deadline: Instant,
    ) -> Result<Head, H1Error> {
        let mut timer = match self.timer.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(sleep_until(deadline)),
        };
        self.waiting = false;
        let result = {
            // Pinned here and raced by reference: `timeout()` would move the exchange's state
            // into its own.
            let mut exchange = std::pin::pin!(self.untimed_exchange(req, lines, client_head));
            poll_fn(|cx| match exchange.as_mut().poll(cx) {
                Poll::Ready(result) => Poll::Ready(result),
                Poll::Pending => timer.as_mut().poll(cx).map(|()| Err(H1Error::HeadTimeout)),
            })
            .await
        };
        self.timer = Some(timer);
        result
    }

    async fn untimed_exchange(
        &mut self,
        req: Request<RequestBody>,
        lines: &[u8],
        client_head: bool,
    ) -> Result<Head, H1Error> {
        let (parts, mut body) = req.into_parts();
        let head_request = parts.method == Method::HEAD;
        match self.write_request(&parts, lines, &mut body).await {
            Ok(()) => self.read_head(head_request, client_head).await,
            // An upstream may answer early (a 413, say) and close without reading the rest:
            // its answer is what the client should get, on a connection not used again.
            Err(H1Error::Write(error)) => match self.read_head(head_request, client_head).await {
                Ok(head) => Ok(Head {
                    reusable: false,
                    ..head
                }),
                Err(_) => Err(H1Error::Write(error)),
            },
            Err(error) => Err(error),
        }
    }

    async fn write_request(
        &mut self,
        parts: &http::request::Parts,
        lines: &[u8],
        body: &mut RequestBody,
    ) -> Result<(), H1Error> {
        self.out.clear();
        let chunked = encode_head(parts, lines, body, &mut self.out);
        self.io.write_all(&self.out).await.map_err(H1Error::Write)?;
        if !body.is_end_stream() {
            self.write_body(body, chunked).await?;
        }
        self.io.flush().await.map_err(H1Error::Write)
    }

    async fn write_body(&mut self, body: &mut RequestBody, chunked: bool) -> Result<(), H1Error> {
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            let frame = frame.map_err(H1Error::Body)?;
            // Trailers are not forwarded.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                let size = format!("{:x}\r\n", data.len());
                self.io
                    .write_all(size.as_bytes())
                    .await
                    .map_err(H1Error::Write)?;
                self.io.write_all(&data).await.map_err(H1Error::Write)?;
                self.io.write_all(b"\r\n").await.map_err(H1Error::Write)?;
            } else {
                self.io.write_all(&data).await.map_err(H1Error::Write)?;
            }
        }
        if chunked {
            self.io
                .write_all(b"0\r\n\r\n")
                .await
                .map_err(H1Error::Write)?;
        }
        Ok(())
    }

    async fn read_head(&mut self, head_request: bool, client_head: bool) -> Result<Head, H1Error> {
        let mut answered = false;
        loop {
            if !self.buf.is_empty() {
                answered = true;
                if let Some(parsed) = self.parse_head(head_request, client_head)? {
                    return Ok(parsed);
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(H1Error::HeadTooLarge);
                }
            }
            match self.fill().await {
                Ok(0) if answered => {
                    return Err(H1Error::InvalidHead("connection closed inside it"));
                }
                Ok(0) => return Err(H1Error::Closed),
                Ok(_) => {}
                Err(e) => return Err(H1Error::Read(e)),
            }
        }
    }

    /// A complete response head from `buf` (1xx interim responses are skipped), or `None` if
    /// more bytes are needed.
    fn parse_head(
        &mut self,
        head_request: bool,
        client_head: bool,
    ) -> Result<Option<Head>, H1Error> {
        loop {
            let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                &self.buf,
                &mut fields,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(H1Error::InvalidHead("more than 128 fields"));
                }
                Err(_) => return Err(H1Error::InvalidHead("not HTTP/1.x")),
            };
            let code = parsed.code.unwrap_or(0);
            let status =
                StatusCode::from_u16(code).map_err(|_| H1Error::InvalidHead("bad status code"))?;
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                // 100 Continue, 103 Early Hints...: the final response follows.
                self.buf.advance(len);
                continue;
            }
            let version = match parsed.version {
                Some(0) => Version::HTTP_10,
                _ => Version::HTTP_11,
            };
            // The framing fields are read here, from the raw head; the others as offsets, so
            // that the values can share the head's bytes once it is split off.
            let mut message = Message::default();
            let base = self.buf.as_ptr() as usize;
            self.spans.clear();
            for field in parsed.headers.iter() {
                message.field(field.name.as_bytes(), field.value)?;
                self.spans.push(Span {
                    name: (field.name.as_ptr() as usize - base, field.name.len()),
                    value: (field.value.as_ptr() as usize - base, field.value.len()),
                    hop_by_hop: headers::is_hop_by_hop(field.name.as_bytes()),
                    framing: field.name.eq_ignore_ascii_case("content-length"),
                });
            }
            let (decided, reusable) = message.framing(head_request, status, version)?;
            let (headers, for_client, client) = if client_head {
                let client = self.client_head(status, version, &decided, message.lists_fields);
                self.buf.advance(len);
                (HeaderMap::new(), true, Some(client))
            } else {
                let for_client = !message.lists_fields;
                (
                    self.head_map(len, version, for_client, &decided)?,
                    for_client,
                    None,
                )
            };
            let mut response = Response::new(());
            *response.status_mut() = status;
            *response.version_mut() = version;
            *response.headers_mut() = headers;
            return Ok(Some(Head {
                response,
                framing: Framing::start(decided.body),
                reusable,
                for_client,
                client,
            }));
        }
    }

    /// The fields of the head at the front of `buf` (in `spans`), split off it, with the
    /// framing fields `decided` (the upstream's left out); with `for_client`, the hop-by-hop
    /// ones are left out and `Via` is added.
    fn head_map(
        &mut self,
        len: usize,
        version: Version,
        for_client: bool,
        decided: &ResponseFraming,
    ) -> Result<HeaderMap, H1Error> {
        let head = self.buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(self.spans.len() + 2);
        for span in &self.spans {
            if (for_client && span.hop_by_hop) || span.framing {
                continue;
            }
            let (at, len) = span.name;
            let name = HeaderName::from_bytes(&head[at..at + len])
                .map_err(|_| H1Error::InvalidHead("bad field name"))?;
            let (at, len) = span.value;
            let value = HeaderValue::from_maybe_shared(head.slice(at..at + len))
                .map_err(|_| H1Error::InvalidHead("bad field value"))?;
            headers.append(name, value);
        }
        decided.set_fields(&mut headers);
        if for_client {
            headers.append(header::VIA, headers::via(version));
        }
        Ok(headers)
    }

    /// The head at the front of `buf` (its fields in `spans`) written out for the client:
    /// what [`headers::to_client`] leaves of it, `Via`, and the framing fields `decided`.
    fn client_head(
        &self,
        status: StatusCode,
        version: Version,
        decided: &ResponseFraming,
        lists_fields: bool,
    ) -> ClientHead {
        let field = |(at, len): (usize, usize)| &self.buf[at..at + len];
        // The fields that `Connection` names are hop-by-hop too (RFC 9110 7.6.1).
        let listed = |name: &[u8]| {
            lists_fields
                && self.spans.iter().any(|span| {
                    field(span.name).eq_ignore_ascii_case(b"connection")
                        && field(span.value)
                            .split(|&b| b == b',')
                            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
                })
        };
        let mut out = BytesMut::with_capacity(self.buf.len().min(MAX_HEAD) + 64);
        wire::put_status_line(&mut out, status);
        let mut date = false;
        for span in &self.spans {
            let name = field(span.name);
            // The client's framing fields are the edge's, written below.
            if span.hop_by_hop || span.framing || listed(name) {
                continue;
            }
            date |= name.eq_ignore_ascii_case(b"date");
            wire::put_field(&mut out, name, field(span.value));
        }
        wire::put_field(&mut out, b"via", headers::via(version).as_bytes());
        decided.put_fields(&mut out);
        ClientHead {
            head: out.freeze(),
            chunked: decided.chunked(),
            date,
        }
    }

    /// The next piece of a response body, decoding `framing` (which it advances). `None` once
    /// the body has ended. A read that waits the read timeout for the upstream fails.
    pub(crate) fn poll_body(
        &mut self,
        framing: &mut Framing,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, H1Error>>> {
        loop {
            match *framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Framing::Length(left) | Framing::ChunkData(left) if !self.buf.is_empty() => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    let data = self.buf.split_to(take).freeze();
                    let left = left - take as u64;
                    *framing = match *framing {
                        Framing::Length(_) if left == 0 => Framing::Done,
                        Framing::Length(_) => Framing::Length(left),
                        _ if left == 0 => Framing::ChunkEnd,
                        _ => Framing::ChunkData(left),
                    };
                    return Poll::Ready(Some(Ok(data)));
                }
                Framing::UntilClose if !self.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(self.buf.split().freeze())));
                }
                Framing::ChunkSize | Framing::ChunkEnd | Framing::Trailers => {
                    if let Some(line_len) = memchr::memchr(b'\n', &self.buf) {
                        // Too long however it arrives (it passed when read in one piece and
                        // failed when cut).
                        if line_len > MAX_LINE {
                            return Poll::Ready(Some(Err(H1Error::InvalidChunk("line too long"))));
                        }
                        let line = self.buf.split_to(line_len + 1);
                        let line = line
                            .strip_suffix(b"\n")
                            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                            .unwrap_or(&line);
                        *framing = match *framing {
                            Framing::ChunkSize => match chunk_size(line)? {
                                0 => Framing::Trailers,
                                size => Framing::ChunkData(size),
                            },
                            Framing::ChunkEnd if line.is_empty() => Framing::ChunkSize,
                            Framing::ChunkEnd => {
                                return Poll::Ready(Some(Err(H1Error::InvalidChunk(
                                    "no line end after the data",
                                ))));
                            }
                            // Trailer fields are dropped; an empty line ends the body.
                            _ if line.is_empty() => Framing::Done,
                            _ => Framing::Trailers,
                        };
                        continue;
                    }
                    if self.buf.len() > MAX_LINE {
                        return Poll::Ready(Some(Err(H1Error::InvalidChunk("line too long"))));
                    }
                }
                _ => {}
            }
            // More bytes are needed.
            let filled = match self.poll_fill(cx) {
                Poll::Ready(filled) => filled,
                Poll::Pending => return self.poll_read_timer(cx),
            };
            self.waiting = false;
            match filled {
                Ok(0) if *framing == Framing::UntilClose => {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(H1Error::ShortBody))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(H1Error::Read(e)))),
            }
        }
    }

    /// A body read waits: pending until the read timeout has passed since the wait began, then
    /// the timeout error. The connection's timer is reset for it (a small body comes with its
    /// head and never waits).
    fn poll_read_timer(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, H1Error>>> {
        let read_timeout = self.read_timeout;
        let timer = if self.waiting {
            match self.timer.as_mut() {
                Some(timer) => timer,
                // Not reached: `waiting` is set only with the timer.
                None => return Poll::Pending,
            }
        } else {
            self.waiting = true;
            let deadline = Instant::now() + read_timeout;
            match &mut self.timer {
                Some(timer) => {
                    timer.as_mut().reset(deadline);
                    timer
                }
                None => self.timer.insert(Box::pin(sleep_until(deadline))),
            }
        };
        ready!(timer.as_mut().poll(cx));
        self.waiting = false;
        Poll::Ready(Some(Err(H1Error::ReadTimeout(read_timeout))))
    }

    /// Whether the connection holds nothing but what the finished exchange left: bytes past
    /// the end of a response mean the upstream is confused, and the connection is not reused.
    pub(crate) fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Writes the request line and fields into `out`, then `lines` (whole field lines), then the
/// body's framing (the body decides it: its exact size, or chunked). Returns whether the body
/// is to be chunked.
fn encode_head(
    parts: &http::request::Parts,
    lines: &[u8],
    body: &RequestBody,
    out: &mut Vec<u8>,
) -> bool {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str)
            .as_bytes(),
    );
    out.put_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        wire::put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.put_slice(lines);
    let mut chunked = false;
    if body.is_end_stream() {
        // An empty body is announced where one is expected (or was announced to us).
        if had_length || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            out.put_slice(b"content-length: 0\r\n");
        }
    } else if let Some(len) = body.size_hint().exact() {
        out.put_slice(b"content-length: ");
        out.put_slice(len.to_string().as_bytes());
        out.put_slice(b"\r\n");
    } else {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        chunked = true;
    }
    out.put_slice(b"\r\n");
    chunked
}

/// What a response head's connection and framing fields say, read as the fields are parsed.
#[derive(Debug, Default)]
struct Message {
    close: bool,
    keep_alive: bool,
    /// `Connection` names fields to remove besides the fixed hop-by-hop set.
    lists_fields: bool,
    framing: framing::Fields,
}

impl Message {
    fn field(&mut self, name: &[u8], value: &[u8]) -> Result<(), H1Error> {
        if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                self.lists_fields |= !token.is_empty() && headers::connection_lists_field(token);
            }
        } else {
            self.framing
                .field(name, value)
                .map_err(|framing::Untrusted(why)| H1Error::InvalidHead(why))?;
        }
        Ok(())
    }

    /// The body's framing ([`framing::response`]) and whether the connection stays open
    /// after it (RFC 9112 9.3).
    fn framing(
        &self,
        head_request: bool,
        status: StatusCode,
        version: Version,
    ) -> Result<(ResponseFraming, bool), H1Error> {
        let persistent = match version {
            Version::HTTP_10 => self.keep_alive && !self.close,
            _ => !self.close,
        };
        let decided = framing::response(head_request, status, version, &self.framing)
            .map_err(|framing::Untrusted(why)| H1Error::InvalidHead(why))?;
        // A 101 here is refused by the caller and the connection is not reused.
        let reusable = persistent && decided.reusable && status != StatusCode::SWITCHING_PROTOCOLS;
        Ok((decided, reusable))
    }
}

/// The size on a chunk-size line (extensions after `;` are ignored).
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(H1Error::InvalidChunk("bad chunk size"));
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char)
            .to_digit(16)
            .ok_or(H1Error::InvalidChunk("bad chunk size"))?;
        Ok(n * 16 + u64::from(v))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The framing and reuse a response head with these fields gets, or its error.
    fn framing(
        head_request: bool,
        status: StatusCode,
        version: Version,
        fields: &[(&str, &str)],
    ) -> Result<(Framing, bool), H1Error> {
        let mut message = Message::default();
        for (name, value) in fields {
            message.field(name.as_bytes(), value.as_bytes())?;
        }
        let (decided, reusable) = message.framing(head_request, status, version)?;
        Ok((Framing::start(decided.body), reusable))
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use Framing::{ChunkSize, Done, Length, UntilClose};
        let (ok, not_modified) = (StatusCode::OK, StatusCode::NOT_MODIFIED);
        let (v10, v11) = (Version::HTTP_10, Version::HTTP_11);
        // (HEAD request, status, version, fields, framing, reusable)
        type Case<'a> = (
            bool,
            StatusCode,
            Version,
            &'a [(&'a str, &'a str)],
            Framing,
            bool,
        );
        let cases: &[Case<'_>] = &[
            (false, ok, v11, &[("content-length", "5")], Length(5), true),
            (
                false,
                ok,
                v11,
                &[("content-length", "5, 5")],
                Length(5),
                true,
            ),
            (
                false,
                ok,
                v11,
                &[("transfer-encoding", "gzip, chunked")],
                ChunkSize,
                true,
            ),
            (
                false,
                ok,
                v11,
                &[("transfer-encoding", "gzip")],
                UntilClose,
                false,
            ),
            (
                false,
                ok,
                v11,
                &[("transfer-encoding", "chunked"), ("content-length", "3")],
                ChunkSize,
                false,
            ),
            (false, ok, v11, &[], UntilClose, false),
            (true, ok, v11, &[("content-length", "5")], Done, true),
            (false, not_modified, v11, &[], Done, true),
            (
                false,
                ok,
                v11,
                &[("connection", "close"), ("content-length", "1")],
                Length(1),
                false,
            ),
            (false, ok, v10, &[("content-length", "1")], Length(1), false),
            (
                false,
                ok,
                v10,
                &[("connection", "Keep-Alive"), ("content-length", "1")],
                Length(1),
                true,
            ),
        ];
        for &(head_request, status, version, fields, expected, reusable) in cases {
            let got = framing(head_request, status, version, fields).unwrap();
            assert_eq!(got, (expected, reusable), "{fields:?}");
        }
        for bad in ["5, 6", "-1"] {
            assert!(framing(false, ok, v11, &[("content-length", bad)]).is_err());
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"0").unwrap(), 0);
        assert_eq!(chunk_size(b"FF;name=value").unwrap(), 255);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"xyz").is_err());
        assert!(chunk_size(b"1234567890abcdef0").is_err());
    }
}
