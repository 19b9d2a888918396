//! The reverse proxy: a site's requests forwarded to its upstream web servers.
//!
//! - [`Proxy`] is the site's settings; [`Forwarder`] is what the routes hold: the upstreams
//!   and their health ([`balancer`]), the keep-alive connections ([`pool`], dialled by
//!   [`connector`]) and the background tasks (active health checks, [`health`]; the idle
//!   connection sweep), which stop when the forwarder is dropped with its routes.
//! - Bodies stream both ways frame by frame with hyper's backpressure ([`body`]); nothing is
//!   buffered whole.
//! - [`headers`] rewrites hop-by-hop fields, X-Forwarded-*, Forwarded and Via.
//! - [`tunnel`] carries WebSocket and other HTTP/1.1 upgrades.

mod access;
mod balancer;
pub(crate) mod body;
mod config;
mod connector;
pub(crate) mod h1;
mod headers;
mod health;
mod pool;
pub(crate) mod request_body;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

pub(crate) use access::AccessLog;
pub(crate) use body::ResponseBody;
pub use config::{HealthCheck, HostHeader, Policy, Proxy};

use crate::error::EdgeError;
use crate::framing;
use crate::observe::Observer;
use balancer::{Balancer, InFlight, Tried, Upstream};
use body::UpstreamBody;
use connector::ClientSettings;
use headers::{Forwarding, SetHost, Target};
use pool::{PooledBody, UpstreamClient, UpstreamError};
use request_body::{RequestBody, RequestBodyError};

impl Proxy {
    /// Checks one upstream URL as [`crate::Routes::new`] will (`http[s]://host[:port]`, no
    /// path), so a configuration can point at the faulty entry.
    pub fn check_upstream(url: &str) -> Result<(), EdgeError> {
        Upstream::parse(url).map(|_| ())
    }
}

/// The client side of a request, as the connection saw it.
pub(crate) struct Downstream {
    pub(crate) peer: SocketAddr,
    pub(crate) https: bool,
    /// The connection's handler: the edge's shutdown and drain timeout, which also end
    /// upgraded tunnels.
    pub(crate) conn: Arc<dyn ClientConn>,
}

/// What the proxy needs of the client's connection, implemented by the layer above (the
/// request handler), so that the proxy does not depend on it.
pub(crate) trait ClientConn: Send + Sync {
    /// The edge's shutdown.
    fn shutdown(&self) -> &CancellationToken;
    /// How long requests in flight may drain after shutdown.
    fn drain_timeout(&self) -> Duration;
}

/// `host_header` with the literal made into a header value once.
#[derive(Debug)]
enum HostPolicy {
    Pass,
    Upstream,
    Literal(HeaderValue),
}

/// A proxy site ready to forward requests.
pub(crate) struct Forwarder {
    balancer: Arc<Balancer>,
    client: UpstreamClient,
    host: HostPolicy,
    response_header_timeout: Duration,
    max_body: Option<u64>,
    retries: u32,
    drop_underscore_fields: bool,
    /// Cancels the background tasks when the forwarder goes (with its routes).
    _tasks: Option<DropGuard>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("balancer", &self.balancer)
            .field("host", &self.host)
            .field("response_header_timeout", &self.response_header_timeout)
            .field("max_body", &self.max_body)
            .field("retries", &self.retries)
            .field("drop_underscore_fields", &self.drop_underscore_fields)
            .field("tasks", &self._tasks.is_some())
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Checks the settings, builds the client and, inside a tokio runtime, starts the health
    /// checks. Outside a runtime (e.g. validating a configuration) nothing is started.
    /// `site_id` and `observer`: where the upstreams' health and response times are reported.
    pub(crate) fn new(
        proxy: &Proxy,
        site_id: &str,
        observer: &dyn Observer,
    ) -> Result<Forwarder, EdgeError> {
        let invalid = |what: &str, reason: &str| EdgeError::InvalidProxy {
            what: what.to_owned(),
            reason: reason.to_owned(),
        };
        if proxy.upstreams.is_empty() {
            return Err(invalid("upstreams", "at least one upstream is needed"));
        }
        let upstreams = proxy
            .upstreams
            .iter()
            .map(|u| {
                Upstream::parse(u).map(|mut u| {
                    u.observer = observer.upstream(site_id, &u.name);
                    u
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (what, value) in [
            ("connect_timeout", proxy.connect_timeout),
            ("response_header_timeout", proxy.response_header_timeout),
            ("read_timeout", proxy.read_timeout),
            ("idle_timeout", proxy.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(what, "must be more than zero"));
            }
        }
        let host = match &proxy.host_header {
            HostHeader::Pass => HostPolicy::Pass,
            HostHeader::Upstream => HostPolicy::Upstream,
            HostHeader::Literal(value) => HostPolicy::Literal(
                crate::host::Host::parse(value.as_bytes())
                    .ok()
                    .and_then(|_| HeaderValue::from_str(value).ok())
                    .ok_or_else(|| invalid("host_header", "not a valid host[:port]"))?,
            ),
        };
        if let Some(check) = &proxy.health {
            if !check.path.starts_with('/') || check.path.parse::<PathAndQuery>().is_err() {
                return Err(invalid(
                    "health.path",
                    "expected an absolute path like /healthz",
                ));
            }
            if check.interval.is_zero() || check.timeout.is_zero() {
                return Err(invalid(
                    "health",
                    "interval and timeout must be more than zero",
                ));
            }
        }
        let connector = connector::connector(&ClientSettings {
            connect_timeout: proxy.connect_timeout,
            any_https: upstreams.iter().any(Upstream::is_https),
            ca_root_pem: proxy.ca_root_pem.as_deref(),
        })?;
        let client = UpstreamClient::new(
            connector,
            upstreams.len(),
            proxy.idle_timeout,
            proxy.read_timeout,
        );
        let balancer = Arc::new(Balancer::new(
            upstreams,
            proxy.policy,
            proxy.fail_after,
            proxy.fail_timeout,
        ));
        let tasks = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let stop = CancellationToken::new();
            if let Some(check) = &proxy.health {
                let checker = health::Checker {
                    balancer: Arc::clone(&balancer),
                    client: client.clone(),
                    check: check.clone(),
                    host_header: proxy.host_header.clone(),
                };
                runtime.spawn(checker.run(stop.clone()));
            }
            runtime.spawn(sweep(client.clone(), stop.clone()));
            stop.drop_guard()
        });
        Ok(Forwarder {
            balancer,
            client,
            host,
            response_header_timeout: proxy.response_header_timeout,
            max_body: proxy.max_body,
            retries: proxy.retries,
            drop_underscore_fields: proxy.drop_underscore_fields,
            _tasks: tasks,
        })
    }

    /// Forwards `req` to an upstream and returns its response, streaming, or answers 502 (no
    /// upstream available, connection failed), 504 (no response head in time) or 413 (body
    /// over the limit).
    ///
    /// Takes everything it uses by value: the future is boxed as it is, with no async wrapper
    /// around it (see [`crate::handler::Reply`]).
    ///
    /// `req` has no body (`None`) on the express lane, which also asks for the upstream's head
    /// written out for the client (`client_head`, see [`ResponseBody::take_client_head`]).
    pub(crate) async fn forward(
        self: Arc<Self>,
        mut req: Request<Option<Incoming>>,
        down: Downstream,
        log: Option<AccessLog>,
        client_head: bool,
    ) -> Response<ResponseBody> {
        if req.method() == Method::CONNECT {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n", log);
        }
        if let Some(max) = self.max_body
            && req.body().as_ref().map_or(0, |b| b.size_hint().lower()) > max
        {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
                log,
            );
        }
        let upgrade = headers::upgrade_request(req.headers(), req.version());
        let is_upgrade = upgrade.is_some();
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let original_host = match parts.uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => parts.headers.get(header::HOST).cloned(),
        };
        let fwd = Forwarding {
            client: down.peer.ip(),
            https: down.https,
            host: original_host.as_ref(),
            drop_underscore_fields: self.drop_underscore_fields,
        };
        let host = match (&self.host, &original_host) {
            // An origin-form HTTP/1 request: its `Host` is the host it asked for.
            (HostPolicy::Pass, Some(_)) if parts.uri.authority().is_none() => SetHost::Keep,
            (HostPolicy::Pass, Some(h)) => SetHost::To(h.clone()),
            (HostPolicy::Pass, None) => SetHost::Remove,
            // Set per attempt, for the upstream chosen.
            (HostPolicy::Upstream, _) => SetHost::Remove,
            (HostPolicy::Literal(value), _) => SetHost::To(value.clone()),
        };
        // The forwarding fields of a pooled request are written by our client after the map's:
        // see `Target::Lines`. One allocation: room for the six fields with an IPv4 client and
        // a host of up to about 70 characters (X-Forwarded-Host and Forwarded repeat it).
        let mut lines = BytesMut::new();
        let target = if is_upgrade {
            Target::Map
        } else {
            lines.reserve(320);
            Target::Lines(&mut lines)
        };
        headers::to_upstream(
            &mut parts.headers,
            parts.version,
            &fwd,
            host,
            upgrade,
            target,
        );
        let lines = lines.freeze();
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));

        // Only a request that can be sent again unchanged is retried: idempotent, no body.
        let mut retries_left =
            if is_idempotent(&parts.method) && body.as_ref().is_none_or(Body::is_end_stream) {
                self.retries
                    .min(u32::try_from(self.balancer.len() - 1).unwrap_or(u32::MAX))
            } else {
                0
            };
        let mut body = Some(RequestBody::new(body, self.max_body));
        let mut tried = Tried::default();
        let mut client_upgrade = client_upgrade;
        loop {
            let Some(in_flight) = self.balancer.pick(down.peer.ip(), tried) else {
                return error(StatusCode::BAD_GATEWAY, "no healthy upstream\n", log);
            };
            tried.add(in_flight.index());
            let upstream = in_flight.upstream();
            let mut out = Request::new(body.take().unwrap_or_else(RequestBody::empty));
            *out.method_mut() = parts.method.clone();
            // Origin-form: the connection already names the upstream.
            *out.uri_mut() = Uri::from(path_and_query.clone());
            *out.version_mut() = Version::HTTP_11;
            *out.headers_mut() = if retries_left > 0 {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            if let HostPolicy::Upstream = self.host {
                out.headers_mut()
                    .insert(header::HOST, upstream.host_value.clone());
            }

            let index = in_flight.index();
            // Each upstream tried gets the whole timeout (a stale connection's retry shares it).
            let deadline = tokio::time::Instant::now() + self.response_header_timeout;
            // Futures are awaited where they are made (a future held in a local first is
            // stored twice in this one's state), and the cold paths are boxed: the state of
            // this future is moved on every request.
            // The clock is read only for an observed upstream.
            let sent = upstream
                .observer
                .as_ref()
                .map(|_| std::time::Instant::now());
            let answer = if is_upgrade {
                Box::pin(self.client.send_upgrade(upstream, out, deadline)).await
            } else {
                // The retry is awaited after this match, not in its arm: the first send's
                // state would otherwise be kept alongside it.
                match self
                    .client
                    .send(index, upstream, out, &lines, true, client_head, deadline)
                    .await
                {
                    // A kept-alive connection the upstream had closed: once more on a new one.
                    Err(UpstreamError::Stale { source, retry }) => {
                        debug!(upstream = %upstream.name, error = %source, "reused upstream connection was closed; sending again");
                        Box::pin(self.client.send(
                            index,
                            upstream,
                            *retry,
                            &lines,
                            false,
                            client_head,
                            deadline,
                        ))
                        .await
                    }
                    result => result,
                }
            };
            match answer {
                Ok(response) => {
                    if let (Some(observer), Some(sent)) = (&upstream.observer, sent) {
                        observer.response(sent.elapsed());
                    }
                    in_flight.succeeded();
                    return respond(response, in_flight, client_upgrade.take(), &down, log);
                }
                Err(err) if err.is_timeout() => {
                    in_flight.failed();
                    warn!(
                        upstream = %upstream.name,
                        timeout = ?self.response_header_timeout,
                        "upstream response timed out"
                    );
                    return error(StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n", log);
                }
                Err(err) => {
                    match body_error(&err) {
                        Some(RequestBodyError::TooLarge) => {
                            return error(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "request body too large\n",
                                log,
                            );
                        }
                        Some(RequestBodyError::Client(_)) => {
                            debug!(error = %ErrorChain(&err), "client request body failed");
                            return error(StatusCode::BAD_REQUEST, "bad request body\n", log);
                        }
                        None => {}
                    }
                    in_flight.failed();
                    // Connecting failed, or the connection closed or reset before a byte of a
                    // response: an idempotent request without a body may go to another
                    // upstream. After an answer, even a broken one, it is not sent again.
                    if retries_left > 0 && err.unanswered() {
                        retries_left -= 1;
                        debug!(
                            upstream = %upstream.name,
                            connect = err.is_connect(),
                            error = %ErrorChain(&err),
                            "upstream connection failed; trying another upstream"
                        );
                        continue;
                    }
                    warn!(upstream = %upstream.name, error = %ErrorChain(&err), "upstream request failed");
                    return error(StatusCode::BAD_GATEWAY, "bad gateway\n", log);
                }
            }
        }
    }
}

/// The upstream's response on its way to the client; a 101 for a forwarded upgrade starts
/// the tunnel.
fn respond(
    mut response: Response<PooledBody>,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    down: &Downstream,
    log: Option<AccessLog>,
) -> Response<ResponseBody> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            warn!(upstream = %in_flight.upstream().name, "upstream switched protocols unasked");
            return error(StatusCode::BAD_GATEWAY, "bad gateway\n", log);
        };
        let Some(upstream_upgrade) = response
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>()
        else {
            warn!(upstream = %in_flight.upstream().name, "upstream switched protocols on a pooled connection");
            return error(StatusCode::BAD_GATEWAY, "bad gateway\n", log);
        };
        let (mut parts, _) = response.into_parts();
        headers::to_client(&mut parts.headers, parts.version, true);
        parts.version = Version::HTTP_11;
        if let Some(log) = log {
            log.finish(101, Some(&in_flight.upstream().name), 0);
        }
        tunnel::spawn(
            client_upgrade,
            upstream_upgrade,
            in_flight,
            down.conn.shutdown().clone(),
            down.conn.drain_timeout(),
        );
        return Response::from_parts(parts, ResponseBody::empty());
    }
    let (mut parts, body) = response.into_parts();
    if !body.head_for_client() {
        headers::to_client(&mut parts.headers, parts.version, false);
    }
    if body.decoded_by_hyper() {
        // Framed by hyper's client (the pooled client's heads are framed as they are parsed).
        framing::decoded(parts.status, body.size_hint().exact()).set_fields(&mut parts.headers);
    }
    // The client's connection decides the version the edge answers with.
    parts.version = Version::default();
    let status = parts.status.as_u16();
    Response::from_parts(
        parts,
        ResponseBody::Upstream(UpstreamBody::new(body, in_flight, log, status)),
    )
}

/// Closes idle upstream connections past the idle timeout, every half timeout, until `stop`.
async fn sweep(client: UpstreamClient, stop: CancellationToken) {
    let mut ticks = interval((client.idle_timeout() / 2).max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => client.sweep(),
        }
    }
}

/// A short text answer from the proxy itself, logged at once.
fn error(status: StatusCode, body: &'static str, log: Option<AccessLog>) -> Response<ResponseBody> {
    if let Some(log) = log {
        log.finish(status.as_u16(), None, body.len() as u64);
    }
    let mut response = Response::new(ResponseBody::fixed(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// RFC 9110 9.2.2.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The request body's own error, if that is why the request failed.
fn body_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a RequestBodyError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(body) = e.downcast_ref::<RequestBodyError>() {
            return Some(body);
        }
        cause = e.source();
    }
    None
}

/// An error with its causes, `: `-separated, for logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}
