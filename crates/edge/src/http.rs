//! The request handler: host checks, ACME HTTP-01, the HTTPS redirect and site actions.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use rustls::sign::CertifiedKey;
use tokio::time::timeout;
use tracing::debug;

use crate::host::Host;
use crate::redirect::https_location;
use crate::routes::{Prepared, Route};
use crate::server::Edge;

/// Response body type of every answer.
pub(crate) type Body = Full<Bytes>;

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
}

impl Handler {
    pub(crate) async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
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
            Transport::Plain => self.plain(&req, &host).await,
            Transport::Tls { sni, key } => self.tls(&req, &host, sni, key),
        }
    }

    async fn plain<B>(&self, req: &Request<B>, host: &Host) -> Response<Body> {
        let routes = self.edge.routes.load();
        let Some(route) = host.name().and_then(|name| routes.lookup(name)) else {
            return text(StatusCode::NOT_FOUND, "unknown host\n");
        };
        if let Some(token) = challenge_token(req) {
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
        act(route, req)
    }

    fn tls<B>(
        &self,
        req: &Request<B>,
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
        let mut response = act(route, req);
        if let Some(hsts) = &route.hsts {
            response
                .headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        response
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
                let mut response = Response::new(Full::new(Bytes::from(key_authorization)));
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

/// The site's own action.
fn act<B>(route: &Route, req: &Request<B>) -> Response<Body> {
    match &route.action {
        Prepared::Redirect(r) => match r.location(req.uri()) {
            Some(location) => redirect(r.status(), location),
            None => text(StatusCode::BAD_REQUEST, "bad request\n"),
        },
        Prepared::Respond { status, body } => {
            let mut response = Response::new(Full::new(body.clone()));
            *response.status_mut() = *status;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, text_plain());
            response
        }
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
    let mut response = Response::new(Full::new(Bytes::new()));
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
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, text_plain());
    response
}
