//! The settings of a proxy site, as the binary hands them to the edge.

use std::time::Duration;

/// Forward a site's requests to its upstream web servers (`Action::Proxy`).
///
/// [`Proxy::new`] gives the defaults; every field is public so the caller overrides what the
/// configuration names. The values are checked when the [`crate::Routes`] are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `http://host:port` or `https://host:port` (port optional, no path, no query). Host is a
    /// DNS name or an IP literal; names are resolved when a connection is opened.
    pub upstreams: Vec<String>,
    pub policy: Policy,
    /// Active health checks; `None` relies on passive marking only.
    pub health: Option<HealthCheck>,
    /// The `Host` header sent upstream.
    pub host_header: HostHeader,
    /// Opening a connection to an upstream (TCP, and TLS for https upstreams). Default 5 s.
    pub connect_timeout: Duration,
    /// From handing the request to the upstream pool (connecting included) to the upstream's
    /// response head; then 504. Default 60 s.
    pub response_header_timeout: Duration,
    /// Between two reads of an upstream's response body: an upstream that sends nothing of
    /// the body for this long has its connection closed, and so has the client (which has
    /// the head already and must not take a cut body for a whole one). nginx's
    /// `proxy_read_timeout`. Default 60 s.
    pub read_timeout: Duration,
    /// A pooled keep-alive connection to an upstream unused this long is closed. Default 90 s.
    pub idle_timeout: Duration,
    /// The largest request body in bytes; a larger one gets 413 (at once when Content-Length
    /// says so, otherwise when the limit is crossed while streaming). `None`: no limit.
    /// Default 1 GiB.
    pub max_body: Option<u64>,
    /// Passive marking: an upstream is taken out after this many consecutive failures
    /// (connection failed, reset, or response-header timeout). Default 3; 0 counts as 1.
    pub fail_after: u32,
    /// How long a passively marked upstream stays out before one request tries it again (a
    /// success brings it back at once; a passing active check does too). Default 10 s.
    pub fail_timeout: Duration,
    /// How many other upstreams an idempotent request without a body (GET, HEAD, OPTIONS,
    /// TRACE, PUT, DELETE) is tried on when the connection to the chosen one fails before a
    /// byte of a response: connecting fails, or the connection closes or resets unanswered.
    /// A response head timeout (504) or a broken answer (502) is not retried, and no other
    /// request is ever sent twice (RFC 9110 9.2.2). Default 1.
    pub retries: u32,
    /// Request header fields with `_` in their name are dropped before the request goes
    /// upstream, as nginx does by default: applications that read `X_Forwarded_For` as
    /// `X-Forwarded-For` (CGI-style `HTTP_X_FORWARDED_FOR` mapping) would otherwise trust a
    /// look-alike the client wrote. Default true.
    pub drop_underscore_fields: bool,
    /// PEM roots trusted for https upstreams instead of the system's.
    pub ca_root_pem: Option<String>,
}

impl Proxy {
    /// Default request body limit: 1 GiB.
    pub const DEFAULT_MAX_BODY: u64 = 1 << 30;

    /// A proxy to `upstreams` with the default settings.
    pub fn new(upstreams: Vec<String>) -> Proxy {
        Proxy {
            upstreams,
            policy: Policy::RoundRobin,
            health: None,
            host_header: HostHeader::Pass,
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_body: Some(Proxy::DEFAULT_MAX_BODY),
            fail_after: 3,
            fail_timeout: Duration::from_secs(10),
            retries: 1,
            drop_underscore_fields: true,
            ca_root_pem: None,
        }
    }
}

/// How a request picks its upstream among the available ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// In turn.
    #[default]
    RoundRobin,
    /// The one with the fewest requests in flight (ties in turn).
    LeastConn,
    /// By a hash of the client's IP address: a client sticks to one upstream while it is
    /// available.
    IpHash,
}

impl Policy {
    /// The configuration name: `round_robin`, `least_conn`, `ip_hash`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastConn => "least_conn",
            Policy::IpHash => "ip_hash",
        }
    }
}

/// Active health checks: `GET path` on every upstream every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Absolute path (and query) to request, e.g. `/healthz`.
    pub path: String,
    pub interval: Duration,
    /// A check not answered within this fails. Default 5 s (never more than `interval`).
    pub timeout: Duration,
}

impl HealthCheck {
    /// Checks of `path` every `interval` with the default timeout.
    pub fn new(path: impl Into<String>, interval: Duration) -> HealthCheck {
        HealthCheck {
            path: path.into(),
            interval,
            timeout: Duration::from_secs(5),
        }
    }
}

/// The `Host` header of requests sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostHeader {
    /// The client's (the default).
    #[default]
    Pass,
    /// The upstream's `host[:port]` from its URL.
    Upstream,
    /// This value.
    Literal(String),
}
