//! What the edge reports about its traffic, for the binary's metrics (issue 14). The edge
//! defines the interface and calls it; the binary implements it. Every method has a no-op
//! default, and [`NoObserver`] is what an [`crate::Edge`] reports to unless given another.
//!
//! Cost on the request path: a site's [`SiteObserver`] is asked for once, when the routes are
//! built, and kept in the route as a `&'static` reference (copied per request, no reference
//! count that the threads would contend on); a request then makes one call through it (and,
//! with no observer, an `Option` check and nothing else).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The outcome of one TLS handshake on an HTTPS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Completed with a site's certificate.
    Ok,
    /// No certificate for the SNI name, or no SNI (refused with an alert).
    NoCertificate,
    /// A TLS-ALPN-01 (`acme-tls/1`) handshake, answered or not.
    AcmeChallenge,
    /// A protocol error, a timeout or a client that gave up.
    Failed,
}

/// Which listener a connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Http,
    Https,
}

/// Site id of requests that match no site (unknown or invalid host, misdirected requests).
pub const UNKNOWN_SITE: &str = "_unknown";
/// Site id of ACME HTTP-01 challenge requests.
pub const ACME_SITE: &str = "_acme";

/// What the edge reports. Set by [`crate::Edge::with_observer`] and
/// [`crate::Routes::with_observer`].
pub trait Observer: Send + Sync + 'static {
    /// The recorder of one site's requests, asked for once when the routes are built (and for
    /// [`UNKNOWN_SITE`] and [`ACME_SITE`] when the edge is). `None`: not counted. It lives as
    /// long as the process (a site's series outlive the site, as Prometheus counters do): an
    /// implementation keeps one per site id and hands the same one out again.
    fn site(&self, _site_id: &str) -> Option<&'static dyn SiteObserver> {
        None
    }

    /// The recorder of one upstream of a proxy site, asked for once when the routes are built.
    fn upstream(&self, _site_id: &str, _upstream: &str) -> Option<Arc<dyn UpstreamObserver>> {
        None
    }

    fn handshake(&self, _result: Handshake) {}

    fn connection_opened(&self, _listener: Listener) {}

    fn connection_closed(&self, _listener: Listener) {}
}

/// One site's requests.
pub trait SiteObserver: Send + Sync {
    /// A response for this site is decided: its status, and the time from the request head
    /// to the response (its head, for a proxied one) being ready to write.
    fn response(&self, code: u16, elapsed: Duration);
}

/// One upstream of a proxy site.
pub trait UpstreamObserver: Send + Sync {
    /// The upstream's health as the balancer sees it: at start (up), then at each change.
    fn up(&self, up: bool);

    /// Time from sending a request (connecting included, for a new connection) to the
    /// upstream's response head.
    fn response(&self, elapsed: Duration);
}

impl std::fmt::Debug for dyn SiteObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiteObserver")
    }
}

impl std::fmt::Debug for dyn UpstreamObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamObserver")
    }
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// The site a request is counted under, if it is observed.
pub(crate) type SiteTally = Option<&'static dyn SiteObserver>;

/// A request to count once its response is decided: its site's recorder and when its head
/// was read. Empty when the edge does not observe or the site is not counted.
#[derive(Default)]
pub(crate) struct Count(Option<(&'static dyn SiteObserver, Instant)>);

impl Count {
    /// `start` is taken only when the edge observes (an `Option` check otherwise).
    #[inline]
    pub(crate) fn new(site: SiteTally, start: Option<Instant>) -> Count {
        match (site, start) {
            (Some(site), Some(start)) => Count(Some((site, start))),
            _ => Count(None),
        }
    }

    /// Counts the response (once).
    #[inline]
    pub(crate) fn finish(&mut self, code: u16) {
        if let Some((site, start)) = self.0.take() {
            site.response(code, start.elapsed());
        }
    }
}

/// Keeps one connection counted as open; made when it is accepted, dropped with its task
/// (wherever that runs).
pub(crate) struct OpenConnection {
    observer: Arc<dyn Observer>,
    listener: Listener,
}

impl OpenConnection {
    pub(crate) fn new(observer: &Arc<dyn Observer>, listener: Listener) -> OpenConnection {
        observer.connection_opened(listener);
        OpenConnection {
            observer: Arc::clone(observer),
            listener,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.observer.connection_closed(self.listener);
    }
}
