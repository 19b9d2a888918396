//! The request handler: host checks, ACME HTTP-01, the HTTPS redirect and site actions.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use rustls::sign::CertifiedKey;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::host::Host;
use crate::proxy::{AccessLog, Downstream, Forwarder};
use crate::redirect::https_location;
use crate::routes::{Prepared, Route};
use crate::server::Edge;

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

/// Handles the requests of one connection.
pub(crate) struct Handler {
    pub(crate) edge: Arc<Edge>,
    pub(crate) transport: Transport,
    /// The client's address (for X-Forwarded-For, Forwarded and ip_hash).
    pub(crate) peer: SocketAddr,
    /// The edge's shutdown (upgraded tunnels end with it).
    pub(crate) shutdown: CancellationToken,
}

/// A site action decided while the routes were borrowed, run after they were let go.
enum Next {
    Done(Response<Body>),
    Proxy(Arc<Forwarder>, Option<AccessLog>),
}

impl Handler {
    pub(crate) async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let host = match request_host(&req) {
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
                return response;
            }
        };
        match &self.transport {
            Transport::Plain => self.plain(req, &host).await,
            Transport::Tls { sni, key } => self.tls(req, &host, sni, key).await,
        }
    }

    async fn plain(&self, req: Request<Incoming>, host: &Host) -> Response<Body> {
        let routes = self.edge.routes.load();
        let Some(route) = host.name().and_then(|name| routes.lookup(name)) else {
            return text(StatusCode::NOT_FOUND, "unknown host\n");
        };
        if let Some(token) = challenge_token(&req) {
            // Not held across the responder's await: a long-lived guard slows arc-swap writers.
            drop(routes);
            return self.http01(host, token).await;
        }
        if route.https_redirect {
            return match https_location(host, self.edge.https_port, req.uri()) {
                Some(location) => redirect(StatusCode::PERMANENT_REDIRECT, location),
                None => text(StatusCode::BAD_REQUEST, "bad request\n"),
            };
        }
        let next = prepare(route, &req, host);
        // Not held while an upstream answers.
        drop(routes);
        self.run(next, req, false).await
    }

    async fn tls(
        &self,
        req: Request<Incoming>,
        host: &Host,
        sni: &str,
        key: &Arc<CertifiedKey>,
    ) -> Response<Body> {
        let Some(name) = host.name() else {
            return misdirected();
        };
        // Another name on the same connection is fine only if the certificate presented in the
        // handshake is the one for that name too (HTTP/2 connection reuse, RFC 9113 9.1.1).
        if name != sni
            && !self
                .edge
                .certs
                .lookup(name)
                .is_some_and(|k| Arc::ptr_eq(&k, key))
        {
            return misdirected();
        }
        let routes = self.edge.routes.load();
        let Some(route) = routes.lookup(name) else {
            return misdirected();
        };
        let next = prepare(route, &req, host);
        let hsts = route.hsts.clone();
        drop(routes);
        let mut response = self.run(next, req, true).await;
        if let Some(hsts) = hsts {
            response
                .headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts);
        }
        response
    }

    /// Finishes a site action: a ready answer, or the proxy's.
    async fn run(&self, next: Next, req: Request<Incoming>, https: bool) -> Response<Body> {
        match next {
            Next::Done(response) => response,
            Next::Proxy(forwarder, log) => {
                let down = Downstream {
                    peer: self.peer,
                    https,
                    shutdown: &self.shutdown,
                    drain_timeout: self.edge.limits.drain_timeout,
                };
                forwarder.forward(req, &down, log).await
            }
        }
    }

    async fn http01(&self, host: &Host, token: &str) -> Response<Body> {
        if token.is_empty() {
            return text(StatusCode::NOT_FOUND, "no such challenge\n");
        }
        let name = host.as_str();
        let lookup = self.edge.challenges.http01(name, token);
        match timeout(self.edge.limits.challenge_timeout, lookup).await {
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
/// on, a ready answer is logged here; the proxy logs its own.
fn prepare<B>(route: &Route, req: &Request<B>, host: &Host) -> Next {
    let log = route
        .access_log
        .then(|| AccessLog::start(req, host.as_str()));
    if let Prepared::Proxy(forwarder) = &route.action {
        return Next::Proxy(Arc::clone(forwarder), log);
    }
    let response = act(route, req);
    if let Some(log) = log {
        let bytes = response.body().size_hint().exact().unwrap_or(0);
        log.finish(response.status().as_u16(), None, bytes);
    }
    Next::Done(response)
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
