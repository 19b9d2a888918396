//! The HTTP/1.1 lane (nicknamed the express lane): plain HTTP/1.1 requests served without
//! hyper's server.
//!
//! Serving a small request through hyper's server side cost more CPU than anything else
//! fleetgate does for it: the dispatcher, the encoding of every answer, and for the proxy a
//! `HeaderMap` built from the upstream's response head only to be written out again, and a
//! boxed future per request. On this lane a connection's task reads request heads with
//! `httparse` and routes them with the same [`Handler::decide`] as hyper's requests. Answers
//! of the edge's own (redirects, fixed responses, errors) are written at once; proxied
//! requests go to [`crate::proxy::Forwarder::forward`] (awaited in place), and the upstream's
//! head is written as the pooled client copied it out
//! ([`crate::proxy::ResponseBody::take_client_head`]), then the body, re-chunked when the
//! upstream's was chunked or ran until it closed.
//!
//! Only the plainest requests take the lane: HTTP/1.1 `GET` or `HEAD` in origin form, without
//! a body, `Expect`, `Upgrade` or a `Connection` other than `keep-alive`/`close`. The first
//! request that is anything else, or an ACME HTTP-01 request, hands the connection, with the
//! bytes read so far, to hyper for the rest of its life ([`Served::Handover`]); so does a head
//! that does not parse or is too large, and hyper answers it as it always did (400, 431...).
//! Everything a client can see is what hyper's side gives: keep-alive and pipelining,
//! `Connection: close`, `Date`, the header-read timeout on a kept-alive connection, a graceful
//! close on shutdown or when the connection's watchdog fires between requests.

use std::fmt::Write as _;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::{Instant, sleep_until};
use tokio_util::io::poll_read_buf;
use tracing::debug;

use crate::framing;
use crate::handler::{Body, Handler, Next, Proxied};
use crate::idle::{Activity, Watchdog};
use crate::observe::Count;
use crate::proxy::Downstream;
use crate::signal::Waiter;
use crate::wire::{put_date, put_field, put_status_line};

/// Fields in a request head on this lane (hyper's default limit; more go to hyper, which
/// refuses them).
const MAX_FIELDS: usize = 100;
/// Free space for each read.
const READ_SPACE: usize = 8 * 1024;
/// Response bytes gathered before they are written; a body piece this large is written as it
/// is rather than copied.
const WRITE_AT: usize = 16 * 1024;

/// How a connection left the lane.
pub(crate) enum Served {
    /// It is finished: the client closed it, it was closed after a response, it timed out, or
    /// the edge is shutting down.
    Closed,
    /// hyper serves the rest of it, starting with these bytes, read and not used.
    Handover(Bytes),
}

/// A request head the lane takes.
pub(crate) struct Parsed {
    /// Its bytes, which the request's target and values share.
    pub(crate) head: Bytes,
    pub(crate) request: Request<()>,
    /// The client asked for the connection to close after the response.
    pub(crate) close: bool,
}

/// Serves requests on `io` until the connection ends or a request needs hyper.
pub(crate) async fn serve<I>(
    io: &mut I,
    handler: &Arc<Handler>,
    activity: &Activity,
    watchdog: &mut Watchdog,
    stop: &mut Waiter,
) -> Served
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let header_read_timeout = handler.shared.limits.header_read_timeout;
    let max_head = handler.shared.limits.h1_max_head();
    // Empty between requests, and then without memory: see [`poll_read_head`].
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut fields = Fields::new();
    // The map of the last request answered here, emptied for the next one.
    let mut spare = HeaderMap::new();
    // One timer for the connection, set again for each head: hyper's header-read timeout,
    // which also closes a kept-alive connection left idle that long.
    let head_timer = sleep_until(Instant::now() + header_read_timeout);
    tokio::pin!(head_timer);
    let mut waiting = false;
    loop {
        // Blocks, so that the request, the response and what borrowed them end before each
        // wait: the connection's task keeps room for what lives across its waits.
        let (reply, response) = {
            let (answer, hsts, tally, start, close, head_request) = {
                let parsed = if buf.is_empty() {
                    None
                } else {
                    match parse(&mut buf, &mut fields, &mut spare) {
                        Ok(parsed) => parsed,
                        Err(()) => return Served::Handover(buf.freeze()),
                    }
                };
                let Some(Parsed {
                    head,
                    mut request,
                    close,
                }) = parsed
                else {
                    if buf.len() >= max_head {
                        return Served::Handover(buf.freeze());
                    }
                    if !waiting {
                        waiting = true;
                        head_timer
                            .as_mut()
                            .reset(Instant::now() + header_read_timeout);
                    }
                    tokio::select! {
                        biased;
                        read = poll_fn(|cx| poll_read_head(Pin::new(&mut *io), cx, &mut buf)) => match read {
                            Ok(0) | Err(_) => return Served::Closed,
                            Ok(_) => continue,
                        },
                        () = stop.fired() => return Served::Closed,
                        expiry = watchdog.expired() => {
                            debug!(?expiry, "closing quiet connection");
                            return Served::Closed;
                        }
                        () = &mut head_timer => {
                            debug!("no request head in time; closing connection");
                            return Served::Closed;
                        }
                    }
                };
                let head_request = request.method() == Method::HEAD;
                waiting = false;
                activity.request_started();
                let start = handler.shared.clock();
                let (answer, hsts, tally) = match handler.decide(&request) {
                    // The challenge lookup is hyper's (it is rare, and awaits the responder).
                    Next::Http01(..) => {
                        unread(head, &mut buf);
                        return Served::Handover(buf.freeze());
                    }
                    Next::Done(response, tally) => {
                        spare = std::mem::take(request.headers_mut());
                        spare.clear();
                        (Answer::Now(response), None, tally)
                    }
                    Next::Proxy(mut proxied) => {
                        let hsts = proxied.hsts.take();
                        let tally = proxied.tally.take();
                        // Boxed: the forwarding's state is most of the lane's, and a connection
                        // waiting for its next request would otherwise carry room for it.
                        let forwarding =
                            Box::pin(forward(io, &mut buf, max_head, handler, proxied, request));
                        (Answer::Forwarding(forwarding), hsts, tally)
                    }
                };
                (answer, hsts, tally, start, close, head_request)
            };
            let response = match answer {
                Answer::Now(response) => response,
                Answer::Forwarding(forwarding) => match forwarding.await {
                    Some(response) => response,
                    None => {
                        debug!("client went away; request cancelled");
                        return Served::Closed;
                    }
                },
            };
            // On shutdown the response says the connection closes, as hyper's graceful close
            // does; so does an answer that says so itself (to a bad request).
            Count::new(tally, start).finish(response.status().as_u16());
            let close = close || closes(response.headers()) || stop.has_fired();
            (
                Reply {
                    hsts,
                    close,
                    head_request,
                },
                response,
            )
        };
        let close = reply.close;
        if let Err(error) = reply.write(io, &mut out, response).await {
            debug!(%error, "response not sent whole; closing connection");
            return Served::Closed;
        }
        if close {
            // Errors here change nothing: the connection is done either way.
            let _ = io.shutdown().await;
            return Served::Closed;
        }
    }
}

/// Reads more of a request head into `buf`.
///
/// An empty `buf` (what a kept-alive connection has while it waits for its next request, for
/// as long as the idle timeout) is given up first, and the read goes to the stack: only bytes
/// that came are copied into a buffer of their size. A connection waiting idle then holds no
/// read buffer (8 KiB each, the largest part of an idle connection's memory before).
fn poll_read_head<I: AsyncRead>(
    io: Pin<&mut I>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if !buf.is_empty() {
        // The rest of a head that came in parts, or of requests pipelined.
        if buf.capacity() - buf.len() < READ_SPACE / 2 {
            buf.reserve(READ_SPACE);
        }
        return poll_read_buf(io, cx, buf);
    }
    // Even without room left, an empty `buf` split from a larger one keeps that alive.
    *buf = BytesMut::new();
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); READ_SPACE];
    let mut read = ReadBuf::uninit(&mut space);
    std::task::ready!(io.poll_read(cx, &mut read))?;
    buf.extend_from_slice(read.filled());
    Poll::Ready(Ok(read.filled().len()))
}

/// Forwards a request, reading the client's side meanwhile: a client that goes away cancels
/// the request (and its upstream connection), as with hyper, and gets `None`; what it sends
/// early (pipelined requests) is kept in `buf`.
async fn forward<I>(
    io: &mut I,
    buf: &mut BytesMut,
    max_head: usize,
    handler: &Arc<Handler>,
    proxied: Proxied,
    request: Request<()>,
) -> Option<Response<Body>>
where
    I: AsyncRead + Unpin,
{
    let Proxied {
        forwarder,
        log,
        https,
        hsts: _,  // taken by the caller, which adds it to the response
        tally: _, // taken by the caller, which counts the response
    } = proxied;
    let down = Downstream {
        peer: handler.peer,
        https,
        conn: Arc::<Handler>::clone(handler),
    };
    let mut forward = std::pin::pin!(forwarder.forward(request.map(|()| None), down, log, true));
    loop {
        tokio::select! {
            biased;
            response = forward.as_mut() => return Some(response),
            read = poll_fn(|cx| poll_read_head(Pin::new(&mut *io), cx, buf)), if buf.len() < max_head => {
                if matches!(read, Ok(0) | Err(_)) {
                    return None;
                }
            }
        }
    }
}

/// Whether an answer's fields say the connection closes after it.
fn closes(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONNECTION)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// The fields of a request head: each name, and where its value is in the head. Kept by the
/// connection so that parsing allocates nothing of its own.
pub(crate) type Fields = Vec<(HeaderName, (usize, usize))>;

/// The request head at the front of `buf`, split off it: `Ok(None)` if incomplete, `Err` if it
/// is not for this lane (or not valid: hyper then says why), `buf` as it was. The request's
/// target and field values share the head's bytes, as hyper's do; its map is `spare` (empty)
/// when there is one.
pub(crate) fn parse(
    buf: &mut BytesMut,
    fields: &mut Fields,
    spare: &mut HeaderMap,
) -> Result<Option<Parsed>, ()> {
    fields.clear();
    let (len, method, path, close) = {
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
        let mut parsed = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        let method = match parsed.method {
            Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            _ => return Err(()),
        };
        let path = parsed.path.ok_or(())?;
        if parsed.version != Some(1) || !path.starts_with('/') {
            return Err(());
        }
        let base = buf.as_ptr() as usize;
        let at = |part: &[u8]| (part.as_ptr() as usize - base, part.len());
        let mut close = false;
        for field in parsed.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ())?;
            match name {
                // A body, or a request hyper's machinery is for.
                http::header::CONTENT_LENGTH
                | http::header::TRANSFER_ENCODING
                | http::header::EXPECT
                | http::header::UPGRADE => return Err(()),
                http::header::CONNECTION => {
                    for token in field.value.split(|&b| b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                            return Err(());
                        }
                    }
                }
                _ => {}
            }
            fields.push((name, at(field.value)));
        }
        (len, method, at(path.as_bytes()), close)
    };
    let head = buf.split_to(len).freeze();
    let slice = |(at, len): (usize, usize)| head.slice(at..at + len);
    let built = (|| {
        let mut headers = std::mem::take(spare);
        headers.reserve(fields.len());
        for (name, value) in fields.drain(..) {
            headers.append(name, HeaderValue::from_maybe_shared(slice(value)).ok()?);
        }
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from_maybe_shared(slice(path)).ok()?;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some(request)
    })();
    match built {
        Some(request) => Ok(Some(Parsed {
            head,
            request,
            close,
        })),
        None => {
            unread(head, buf);
            Err(())
        }
    }
}

/// Puts a head split off `buf` back in front of it.
fn unread(head: Bytes, buf: &mut BytesMut) {
    let mut all = BytesMut::with_capacity(head.len() + buf.len());
    all.put(head);
    all.put(&buf[..]);
    *buf = all;
}

/// The answer to a request taken on the lane: the edge's own, or the proxy's on its way. It
/// lives only until the response is known (boxing the edge's own would cost every answer an
/// allocation).
#[allow(clippy::large_enum_variant)]
enum Answer<F> {
    Now(Response<Body>),
    Forwarding(Pin<Box<F>>),
}

/// How a response goes out on this connection.
struct Reply {
    hsts: Option<HeaderValue>,
    close: bool,
    head_request: bool,
}

/// One step of a body on its way out.
enum Step {
    Frame(Option<Result<Bytes, Box<dyn std::error::Error + Send + Sync>>>),
    /// Nothing more now: what is gathered goes out first.
    Stalled,
}

impl Reply {
    /// Writes `response` (the upstream's, with its head written out by the pooled client, or
    /// one of the edge's own answers) and its body. `out` is the connection's buffer.
    ///
    /// The head is put in `out` at once; the future returned writes it and the body, and holds
    /// only what that takes (the body), not the response: the connection's task keeps room for
    /// the largest of its states, this one among them.
    fn write<'a, I>(
        self,
        io: &'a mut I,
        out: &'a mut BytesMut,
        response: Response<Body>,
    ) -> impl Future<Output = io::Result<()>> + 'a
    where
        I: AsyncWrite + Unpin,
    {
        let (parts, mut body) = response.into_parts();
        out.clear();
        // The framing fields come from `framing`, on both kinds of response.
        let (chunked, bodiless) = match body.take_client_head() {
            Some(head) => {
                out.put_slice(&head.head);
                if !head.date {
                    put_date(out);
                }
                // A bodiless upstream response has an ended body: nothing is written.
                (head.chunked, false)
            }
            None => {
                // The edge's own answers (redirects, errors, the proxy's 502...): fixed bodies.
                put_status_line(out, parts.status);
                for (name, value) in &parts.headers {
                    // Written below from `close` and the framing.
                    if name != http::header::CONNECTION
                        && name != http::header::CONTENT_LENGTH
                        && name != http::header::TRANSFER_ENCODING
                    {
                        put_field(out, name.as_str().as_bytes(), value.as_bytes());
                    }
                }
                put_date(out);
                let decided = match body.size_hint().exact() {
                    Some(len) => framing::fixed(self.head_request, parts.status, len),
                    None => framing::streamed(self.head_request, parts.status),
                };
                decided.put_fields(out);
                (decided.chunked(), decided.body == framing::Body::None)
            }
        };
        if let Some(hsts) = &self.hsts {
            put_field(out, b"strict-transport-security", hsts.as_bytes());
        }
        if self.close {
            out.put_slice(b"connection: close\r\n");
        }
        out.put_slice(b"\r\n");
        // A response to HEAD has no body, whatever its fields say; nor has a 204 or 304.
        let with_body = !self.head_request && !bodiless;
        async move {
            if with_body {
                loop {
                    let step = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                        Poll::Pending if !out.is_empty() => Poll::Ready(Step::Stalled),
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(frame) => Poll::Ready(Step::Frame(
                            frame.map(|f| f.map(|f| f.into_data().unwrap_or_default())),
                        )),
                    })
                    .await;
                    match step {
                        Step::Stalled => {
                            io.write_all(out).await?;
                            io.flush().await?;
                            out.clear();
                        }
                        Step::Frame(Some(Ok(data))) if data.is_empty() => {}
                        Step::Frame(Some(Ok(data))) => {
                            if chunked {
                                // Writing into the buffer cannot fail.
                                let _ = write!(out, "{:x}\r\n", data.len());
                            }
                            if data.len() >= WRITE_AT {
                                io.write_all(out).await?;
                                out.clear();
                                io.write_all(&data).await?;
                            } else {
                                out.put_slice(&data);
                            }
                            if chunked {
                                out.put_slice(b"\r\n");
                            }
                            if out.len() >= WRITE_AT {
                                io.write_all(out).await?;
                                out.clear();
                            }
                        }
                        Step::Frame(Some(Err(error))) => {
                            // The client must not take a cut body for a whole one: the
                            // connection closes without the rest (hyper does the same).
                            return Err(io::Error::other(error));
                        }
                        Step::Frame(None) => {
                            if chunked {
                                out.put_slice(b"0\r\n\r\n");
                            }
                            break;
                        }
                    }
                }
            }
            io.write_all(out).await?;
            io.flush().await?;
            // The body goes (and its upstream connection back to the pool) before the next
            // request is read.
            drop(body);
            Ok(())
        }
    }
}

/// An IO stream with bytes already read from it put back in front: how a connection the lane
/// read from goes to hyper.
pub(crate) struct Rewind<I> {
    read: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub(crate) fn new(read: Bytes, inner: I) -> Self {
        Rewind { read, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// What `parse` makes of `head`: `Some(close)` for a request the lane takes.
    fn lane(head: &str) -> Option<bool> {
        let mut buf = BytesMut::from(head);
        match parse(&mut buf, &mut Fields::new(), &mut HeaderMap::new()) {
            Ok(Some(parsed)) => {
                assert_eq!(&parsed.head[..], head.as_bytes());
                assert!(buf.is_empty(), "{head:?}");
                Some(parsed.close)
            }
            Ok(None) => panic!("{head:?} taken for incomplete"),
            Err(()) => {
                assert_eq!(&buf[..], head.as_bytes(), "not left as it was");
                None
            }
        }
    }

    #[test]
    fn only_plain_bodiless_http11_requests_take_the_lane() {
        let host = "Host: a.test\r\n";
        // (request line, extra fields, taken (and with Connection: close))
        let cases: &[(&str, &str, Option<bool>)] = &[
            ("GET / HTTP/1.1", "", Some(false)),
            ("HEAD /x?y=1 HTTP/1.1", "", Some(false)),
            ("GET / HTTP/1.1", "Connection: keep-alive\r\n", Some(false)),
            ("GET / HTTP/1.1", "Connection: Close\r\n", Some(true)),
            (
                "GET / HTTP/1.1",
                "Connection: keep-alive, x-secret\r\n",
                None,
            ),
            ("GET / HTTP/1.0", "", None),
            ("POST / HTTP/1.1", "Content-Length: 0\r\n", None),
            ("DELETE / HTTP/1.1", "", None),
            ("GET / HTTP/1.1", "Content-Length: 0\r\n", None),
            ("GET / HTTP/1.1", "Transfer-Encoding: chunked\r\n", None),
            ("GET / HTTP/1.1", "Expect: 100-continue\r\n", None),
            (
                "GET / HTTP/1.1",
                "Upgrade: websocket\r\nConnection: upgrade\r\n",
                None,
            ),
            ("GET http://a.test/ HTTP/1.1", "", None),
            ("OPTIONS * HTTP/1.1", "", None),
            ("GET / HTTP/1.1", "Bad Name: x\r\n", None),
        ];
        for (line, fields, taken) in cases {
            let head = format!("{line}\r\n{host}{fields}\r\n");
            assert_eq!(lane(&head), *taken, "{head:?}");
        }
    }

    #[test]
    fn a_taken_request_keeps_its_fields_and_the_rest_of_the_buffer() {
        let head = "GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\nx-a: 2\r\n\r\n";
        let mut buf = BytesMut::from(format!("{head}GET /next").as_bytes());
        let parsed = parse(&mut buf, &mut Fields::new(), &mut HeaderMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(&parsed.head[..], head.as_bytes());
        assert_eq!(&buf[..], b"GET /next");
        // Put back, the head is in front again (a request hyper is to answer).
        unread(parsed.head, &mut buf);
        assert_eq!(&buf[..], format!("{head}GET /next").as_bytes());
        let req = parsed.request;
        assert_eq!(
            (req.method(), req.uri().to_string()),
            (&Method::GET, "/p?q=1".to_owned())
        );
        assert_eq!(req.version(), Version::HTTP_11);
        let values: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a"[..]);
        assert!(
            parse(&mut partial, &mut Fields::new(), &mut HeaderMap::new())
                .unwrap()
                .is_none()
        );
        let mut tls = BytesMut::from(&b"\x16\x03\x01 not http\r\n\r\n"[..]);
        assert!(parse(&mut tls, &mut Fields::new(), &mut HeaderMap::new()).is_err());
    }

    #[tokio::test]
    async fn a_connection_waiting_for_a_request_holds_no_read_buffer() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // What is left of the buffer once the last request was split off it.
        let mut buf = BytesMut::with_capacity(READ_SPACE);
        buf.put_slice(b"GET / HTTP/1.1\r\n\r\n");
        let _head = buf.split();
        assert!(poll_read_head(Pin::new(&mut server), &mut cx, &mut buf).is_pending());
        assert_eq!(buf.capacity(), 0);
        client.write_all(b"GET /a HTTP/1.1\r\n").await.unwrap();
        let read = poll_fn(|cx| poll_read_head(Pin::new(&mut server), cx, &mut buf)).await;
        assert_eq!(read.unwrap(), 17);
        assert_eq!(&buf[..], b"GET /a HTTP/1.1\r\n");
        assert!(buf.capacity() < READ_SPACE, "{}", buf.capacity());
        // The rest of a head goes after what came, with room to read it into.
        client.write_all(b"Host: a\r\n\r\n").await.unwrap();
        poll_fn(|cx| poll_read_head(Pin::new(&mut server), cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(&buf[..], b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn rewind_serves_the_bytes_read_before_the_stream() {
        use tokio::io::AsyncReadExt as _;
        let (mut near, far) = tokio::io::duplex(64);
        near.write_all(b" world").await.unwrap();
        drop(near);
        let mut io = Rewind::new(Bytes::from_static(b"hello"), far);
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    #[test]
    fn date_is_an_http_date() {
        let mut out = BytesMut::new();
        put_date(&mut out);
        let line = std::str::from_utf8(&out).unwrap();
        let value = line
            .strip_prefix("date: ")
            .unwrap()
            .strip_suffix("\r\n")
            .unwrap();
        assert!(httpdate::parse_http_date(value).is_ok(), "{line:?}");
    }
}
