//! The request handler: host checks, ACME HTTP-01, the HTTPS redirect and site actions.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use rustls::sign::CertifiedKey;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::challenge::ChallengeResponder;
use crate::host::Host;
use crate::limits::Limits;
use crate::observe::{Count, Observer, SiteTally};
use crate::proxy::{AccessLog, ClientConn, Downstream, Forwarder};
use crate::redirect::https_location;
use crate::resolver::CertMap;
use crate::routes::{Prepared, Route, Routes};

/// Response body type of every answer: fixed, or an upstream's streamed through.
pub(crate) type Body = crate::proxy::ResponseBody;

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the connection a request came on looks like.
pub(crate) enum Transport {
    Plain,
    Tls {
        /// The (lower-case) SNI of the handshake.
        sni: String,
        /// The certificate presented in the handshake.
        key: Arc<CertifiedKey>,
    },
}

/// What every connection's handler reads: the sites, the certificates (for a request's name
/// against the handshake's), challenge answers, limits. Held by [`crate::Edge`], shared with its
/// connections.
pub(crate) struct Shared {
    pub(crate) routes: ArcSwap<Routes>,
    pub(crate) certs: Arc<CertMap>,
    pub(crate) challenges: Arc<dyn ChallengeResponder>,
    pub(crate) limits: Limits,
    pub(crate) https_port: u16,
    /// Where connections and handshakes are reported.
    pub(crate) observer: Arc<dyn Observer>,
    /// Requests are timed and counted (an observer was set).
    pub(crate) observing: bool,
    /// Where requests that match no site are counted, and HTTP-01 challenges.
    pub(crate) unknown: SiteTally,
    pub(crate) acme: SiteTally,
}

impl Shared {
    /// The time a request's head was read, if requests are counted.
    #[inline]
    pub(crate) fn clock(&self) -> Option<std::time::Instant> {
        self.observing.then(std::time::Instant::now)
    }
}

/// Handles the requests of one connection.
pub(crate) struct Handler {
    pub(crate) shared: Arc<Shared>,
    pub(crate) transport: Transport,
    /// The client's address (for X-Forwarded-For, Forwarded and ip_hash).
    pub(crate) peer: SocketAddr,
    /// The edge's shutdown (upgraded tunnels end with it).
    pub(crate) shutdown: CancellationToken,
}

impl ClientConn for Handler {
    fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    fn drain_timeout(&self) -> Duration {
        self.shared.limits.drain_timeout
    }
}

/// The future of one request's answer: ready at once, or the proxy's or challenge lookup's.
// The ready answer is kept inline on purpose: boxing it would cost an allocation on the
// requests answered at once, the most frequent kind.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Reply {
    Ready(Option<Response<Body>>, Count),
    /// The future, and the `Strict-Transport-Security` value to add to its response. (Added
    /// here rather than by an async wrapper: each async layer around the proxy's future
    /// made the boxed state larger, and that state is moved into its box per request.)
    Pending(
        Pin<Box<dyn Future<Output = Response<Body>> + Send>>,
        Option<HeaderValue>,
        Count,
    ),
}

impl Future for Reply {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            // Polled again after it was ready only if hyper broke the Future contract; an
            // empty 500 beats a panic.
            Reply::Ready(response, count) => {
                let response = response
                    .take()
                    .unwrap_or_else(|| text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"));
                count.finish(response.status().as_u16());
                Poll::Ready(Ok(response))
            }
            Reply::Pending(future, hsts, count) => {
                let mut response = ready!(future.as_mut().poll(cx));
                count.finish(response.status().as_u16());
                if let Some(hsts) = hsts.take() {
                    response
                        .headers_mut()
                        .insert(header::STRICT_TRANSPORT_SECURITY, hsts);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// A site action decided while the routes were borrowed, run after they were let go.
pub(crate) enum Next {
    Done(Response<Body>, SiteTally),
    /// An HTTP-01 challenge request for this token (empty if malformed).
    Http01(Host, String),
    Proxy(Proxied),
}

/// A request the site's proxy is to forward, as decided by [`Handler::decide`].
pub(crate) struct Proxied {
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) log: Option<AccessLog>,
    /// The request came over TLS.
    pub(crate) https: bool,
    /// `Strict-Transport-Security` for the response.
    pub(crate) hsts: Option<HeaderValue>,
    /// Where the request is counted.
    pub(crate) tally: SiteTally,
}

impl Handler {
    /// Answers a request. Everything but the proxy and the challenge lookup is decided without
    /// awaiting, and answered with a ready future; only those two get a (boxed) future of their
    /// own, so the many requests answered at once do not carry the proxy's state around.
    pub(crate) fn call(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let start = self.shared.clock();
        // hyper decodes chunked and refuses codings it does not know as the last one, but takes
        // `gzip, chunked`: the body would reach the upstream still gzip-coded, with nothing to
        // say so (RFC 9112 6.1: 501). (The lane takes no request with a body.)
        if req.headers().contains_key(header::TRANSFER_ENCODING) && !only_chunked(req.headers()) {
            let mut response = text(
                StatusCode::NOT_IMPLEMENTED,
                "transfer coding not implemented\n",
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Reply::Ready(Some(response), Count::new(self.shared.unknown, start));
        }
        // Each pending kind gets its own future: one enum of both would be as large as the
        // larger (the challenge lookup), and the proxy's is moved into its box per request.
        match self.decide(&req) {
            Next::Done(response, tally) => Reply::Ready(Some(response), Count::new(tally, start)),
            Next::Http01(host, token) => {
                let count = Count::new(self.shared.acme, start);
                Reply::Pending(
                    Box::pin(async move { self.http01(&host, &token).await }),
                    None,
                    count,
                )
            }
            Next::Proxy(Proxied {
                forwarder,
                log,
                https,
                hsts,
                tally,
            }) => {
                let down = Downstream {
                    peer: self.peer,
                    https,
                    conn: self,
                };
                Reply::Pending(
                    Box::pin(forwarder.forward(req.map(Some), down, log, false)),
                    hsts,
                    Count::new(tally, start),
                )
            }
        }
    }

    /// What to do with `req`: answer it at once (the answer is logged), look up a challenge,
    /// or proxy it. Without side effects but for the access log of an answer.
    pub(crate) fn decide<B>(&self, req: &Request<B>) -> Next {
        // hyper's read buffer bounds a head that arrives alone, not one that came in the same
        // read as the request before it (pipelined): both the lane and hyper see it here.
        if req.version() < Version::HTTP_2 && head_len(req) > self.shared.limits.h1_max_head() {
            debug!("request head over the limit");
            let mut response = text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large\n",
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Next::Done(response, self.shared.unknown);
        }
        let host = match request_host(req) {
            Ok(host) => host,
            Err(reason) => {
                debug!(reason, "bad host");
                let mut response = text(
                    StatusCode::BAD_REQUEST,
                    "bad request: invalid or missing host\n",
                );
                // A client this confused gets no second chance on the connection. (HTTP/2 has
                // no Connection header; its requests carry a parsed :authority anyway.)
                if req.version() < Version::HTTP_2 {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                return Next::Done(response, self.shared.unknown);
            }
        };
        match &self.transport {
            Transport::Plain => self.plain(req, host),
            Transport::Tls { sni, key } => self.tls(req, &host, sni, key),
        }
    }

    fn plain<B>(&self, req: &Request<B>, host: Host) -> Next {
        // A challenge is answered for any host, served here or not (yet): the token is the
        // secret, and the CA may ask any node behind the balancer about a name this node's
        // sites do not list. Unknown tokens get 404 (the responder keeps misses off its store).
        if let Some(token) = challenge_token(req) {
            return Next::Http01(host, token.to_owned());
        }
        let routes = self.shared.routes.load();
        let Some(route) = host.name().and_then(|name| routes.lookup(name)) else {
            return Next::Done(
                text(StatusCode::NOT_FOUND, "unknown host\n"),
                self.shared.unknown,
            );
        };
        if route.https_redirect {
            return Next::Done(
                match https_location(&host, self.shared.https_port, req.uri()) {
                    Some(location) => redirect(StatusCode::PERMANENT_REDIRECT, location),
                    None => text(StatusCode::BAD_REQUEST, "bad request\n"),
                },
                route.tally,
            );
        }
        // The routes guard is let go on return, before an upstream answers.
        prepare(route, req, &host, self.peer, false, None)
    }

    fn tls<B>(&self, req: &Request<B>, host: &Host, sni: &str, key: &Arc<CertifiedKey>) -> Next {
        let Some(name) = host.name() else {
            return Next::Done(misdirected(), self.shared.unknown);
        };
        // Another name on the same connection is fine only if the certificate presented in the
        // handshake is the one for that name too (HTTP/2 connection reuse, RFC 9113 9.1.1).
        if name != sni
            && !self
                .shared
                .certs
                .lookup(name)
                .is_some_and(|k| Arc::ptr_eq(&k, key))
        {
            return Next::Done(misdirected(), self.shared.unknown);
        }
        let routes = self.shared.routes.load();
        let Some(route) = routes.lookup(name) else {
            return Next::Done(misdirected(), self.shared.unknown);
        };
        prepare(route, req, host, self.peer, true, route.hsts.clone())
    }

    async fn http01(&self, host: &Host, token: &str) -> Response<Body> {
        if token.is_empty() {
            return text(StatusCode::NOT_FOUND, "no such challenge\n");
        }
        let name = host.as_str();
        let lookup = self.shared.challenges.http01(name, token);
        match timeout(self.shared.limits.challenge_timeout, lookup).await {
            Ok(Some(key_authorization)) => {
                debug!(host = name, token, "answered HTTP-01 challenge");
                let mut response = Response::new(Body::fixed(key_authorization));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, text_plain());
                response
            }
            Ok(None) => text(StatusCode::NOT_FOUND, "no such challenge\n"),
            Err(_) => {
                debug!(host = name, token, "HTTP-01 lookup timed out");
                text(StatusCode::NOT_FOUND, "no such challenge\n")
            }
        }
    }
}

/// Starts the site's action: answers at once, or hands over to the proxy. With `access_log`
/// on, a ready answer is logged here; the proxy logs its own. `hsts` is added to the answer.
fn prepare<B>(
    route: &Route,
    req: &Request<B>,
    host: &Host,
    peer: SocketAddr,
    https: bool,
    hsts: Option<HeaderValue>,
) -> Next {
    let log = route
        .access_log
        .then(|| AccessLog::start(req, host.as_str(), peer.ip()));
    if let Prepared::Proxy(forwarder) = &route.action {
        return Next::Proxy(Proxied {
            forwarder: Arc::clone(forwarder),
            log,
            https,
            hsts,
            tally: route.tally,
        });
    }
    let mut response = act(route, req);
    if let Some(log) = log {
        let bytes = response.body().size_hint().exact().unwrap_or(0);
        log.finish(response.status().as_u16(), None, bytes);
    }
    if let Some(hsts) = hsts {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts);
    }
    Next::Done(response, route.tally)
}

/// The site's own action (not the proxy's).
fn act<B>(route: &Route, req: &Request<B>) -> Response<Body> {
    match &route.action {
        Prepared::Redirect(r) => match r.location(req.uri()) {
            Some(location) => redirect(r.status(), location),
            None => text(StatusCode::BAD_REQUEST, "bad request\n"),
        },
        Prepared::Respond { status, body } => {
            let mut response = Response::new(Body::fixed(body.clone()));
            *response.status_mut() = *status;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, text_plain());
            response
        }
        // Never reached: `prepare` hands proxied sites over before calling this.
        Prepared::Proxy(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
    }
}

/// The HTTP-01 token if this is a challenge request (GET or HEAD, a token of base64url
/// characters).
fn challenge_token<B>(req: &Request<B>) -> Option<&str> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let token = req.uri().path().strip_prefix(CHALLENGE_PREFIX)?;
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    // A request for a malformed token still belongs to the challenge path: answer it with 404
    // rather than redirecting it.
    Some(if valid { token } else { "" })
}

/// The host a request is for: the URI's authority (HTTP/2 `:authority`, HTTP/1.1 absolute-form)
/// takes precedence over `Host`, as RFC 9112 3.2.2 and RFC 9113 8.3.1 require. HTTP/1.1 needs
/// exactly one `Host` header.
fn request_host<B>(req: &Request<B>) -> Result<Host, &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err("several Host headers");
    }
    let raw = match (req.uri().authority(), header) {
        (Some(authority), _) => authority.as_str().as_bytes(),
        (None, Some(value)) => value.as_bytes(),
        (None, None) if req.version() == Version::HTTP_11 => return Err("no Host header"),
        (None, None) => return Err("no host"),
    };
    Host::parse(raw).map_err(|_| "invalid host")
}

/// Whether the request's `Transfer-Encoding` fields name exactly one coding, chunked.
fn only_chunked(headers: &http::HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty());
    codings
        .next()
        .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

/// The length of an HTTP/1 request head written plainly: request line, `name: value` lines
/// and the empty line. (The bytes as received may hold a little more whitespace.)
fn head_len<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 3)
        + uri.scheme_str().map_or(0, str::len);
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + fields + 2
}

fn redirect(status: StatusCode, location: HeaderValue) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response.headers_mut().insert(header::LOCATION, location);
    response
}

fn misdirected() -> Response<Body> {
    text(
        StatusCode::MISDIRECTED_REQUEST,
        "misdirected request: this host is not served on this connection\n",
    )
}

fn text_plain() -> HeaderValue {
    HeaderValue::from_static("text/plain; charset=utf-8")
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::fixed(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, text_plain());
    response
}
