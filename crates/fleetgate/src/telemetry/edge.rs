//! The request path's metrics: the binary's [`edge::Observer`], given to the edge by `run`
//! when `[admin]` is on (without it the edge reports to `edge::NoObserver`).
//!
//! Cost on the request path: handles are made once per site (or listener, or upstream), when
//! the routes are built, and kept, so a request costs a clock read, a histogram record and a
//! counter increment: atomics, no allocation, no lock, no hashing of label strings. The status
//! code is the only label not known in advance: the common codes have a fixed slot each
//! (registered the first time the code is seen, then read without a lock); any other code
//! goes through a short list under a lock.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use edge::{Handshake, Listener};

use super::{
    CONNECTIONS_OPEN, HTTP_REQUEST_DURATION, HTTP_REQUESTS, TLS_HANDSHAKES, UPSTREAM_DURATION,
    UPSTREAM_UP,
};

/// The status codes with a fixed slot, in slot order.
const COMMON_CODES: [u16; 12] = [200, 204, 301, 302, 304, 308, 400, 404, 421, 502, 503, 504];

/// The slot of a common code (a jump table, no search).
fn slot(code: u16) -> Option<usize> {
    Some(match code {
        200 => 0,
        204 => 1,
        301 => 2,
        302 => 3,
        304 => 4,
        308 => 5,
        400 => 6,
        404 => 7,
        421 => 8,
        502 => 9,
        503 => 10,
        504 => 11,
        _ => return None,
    })
}

/// One site's request metrics: `fleetgate_http_requests_total{site, code}` and
/// `fleetgate_http_request_duration_seconds{site}`.
#[derive(Debug)]
pub struct SiteMetrics {
    site: Arc<str>,
    duration: Histogram,
    /// `COMMON_CODES`' counters, each registered when its code is first answered (so a site
    /// shows only the codes it answered).
    common: [OnceLock<Counter>; COMMON_CODES.len()],
    /// Any other code.
    other: RwLock<Vec<(u16, Counter)>>,
}

impl SiteMetrics {
    /// Made when the routes are built (one per site).
    pub fn new(site: &str) -> SiteMetrics {
        SiteMetrics {
            site: Arc::from(site),
            duration: histogram!(HTTP_REQUEST_DURATION, "site" => site.to_string()),
            common: Default::default(),
            other: RwLock::new(Vec::new()),
        }
    }

    /// A response was decided for this site: its status and the time from the request head to
    /// the response head.
    pub fn request(&self, code: u16, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        match slot(code) {
            Some(i) => self.common[i]
                .get_or_init(|| self.register(code))
                .increment(1),
            None => self.other(code).increment(1),
        }
    }

    fn register(&self, code: u16) -> Counter {
        counter!(HTTP_REQUESTS, "site" => self.site.to_string(), "code" => code.to_string())
    }

    fn other(&self, code: u16) -> Counter {
        {
            let codes = match self.other.read() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some((_, c)) = codes.iter().find(|(c, _)| *c == code) {
                return c.clone();
            }
        }
        let counter = self.register(code);
        let mut codes = match self.other.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !codes.iter().any(|(c, _)| *c == code) {
            codes.push((code, counter.clone()));
        }
        counter
    }
}

impl edge::SiteObserver for SiteMetrics {
    fn response(&self, code: u16, elapsed: Duration) {
        self.request(code, elapsed);
    }
}

/// The `result` label of a handshake.
fn handshake_result(result: Handshake) -> usize {
    match result {
        Handshake::Ok => 0,
        Handshake::NoCertificate => 1,
        Handshake::AcmeChallenge => 2,
        Handshake::Failed => 3,
    }
}

/// One listener's open connections (`fleetgate_connections_open{listener}`).
#[derive(Debug)]
pub struct ListenerMetrics {
    open: Gauge,
}

impl ListenerMetrics {
    /// `listener`: `http` or `https` (the `listener` label).
    pub fn new(listener: &'static str) -> ListenerMetrics {
        ListenerMetrics {
            open: gauge!(CONNECTIONS_OPEN, "listener" => listener),
        }
    }
}

/// One upstream of one proxy site: `fleetgate_upstream_up{site, upstream}` and
/// `fleetgate_upstream_response_seconds{site, upstream}`.
#[derive(Debug)]
pub struct UpstreamMetrics {
    up: Gauge,
    response: Histogram,
}

impl UpstreamMetrics {
    pub fn new(site: &str, upstream: &str) -> UpstreamMetrics {
        let labels = [
            ("site", site.to_string()),
            ("upstream", upstream.to_string()),
        ];
        UpstreamMetrics {
            up: gauge!(UPSTREAM_UP, &labels),
            response: histogram!(UPSTREAM_DURATION, &labels),
        }
    }
}

impl edge::UpstreamObserver for UpstreamMetrics {
    /// The balancer's health state changed (or was first decided).
    fn up(&self, up: bool) {
        self.up.set(if up { 1.0 } else { 0.0 });
    }

    /// Time from the request sent to the upstream's response head parsed.
    fn response(&self, elapsed: Duration) {
        self.response.record(elapsed.as_secs_f64());
    }
}

/// What `run` gives the edge with `[admin]` on. Made after the recorder is installed.
#[derive(Debug)]
pub struct EdgeMetrics {
    /// `fleetgate_tls_handshakes_total`, by [`handshake_result`].
    handshakes: [Counter; 4],
    http: ListenerMetrics,
    https: ListenerMetrics,
}

impl EdgeMetrics {
    pub fn new() -> EdgeMetrics {
        EdgeMetrics {
            handshakes: ["ok", "no_certificate", "acme_challenge", "failed"]
                .map(|result| counter!(TLS_HANDSHAKES, "result" => result)),
            http: ListenerMetrics::new("http"),
            https: ListenerMetrics::new("https"),
        }
    }

    fn listener(&self, listener: Listener) -> &ListenerMetrics {
        match listener {
            Listener::Http => &self.http,
            Listener::Https => &self.https,
        }
    }
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        EdgeMetrics::new()
    }
}

impl edge::Observer for EdgeMetrics {
    fn site(&self, site_id: &str) -> Option<Arc<dyn edge::SiteObserver>> {
        Some(Arc::new(SiteMetrics::new(site_id)))
    }

    fn upstream(&self, site_id: &str, upstream: &str) -> Option<Arc<dyn edge::UpstreamObserver>> {
        Some(Arc::new(UpstreamMetrics::new(site_id, upstream)))
    }

    fn handshake(&self, result: Handshake) {
        self.handshakes[handshake_result(result)].increment(1);
    }

    fn connection_opened(&self, listener: Listener) {
        self.listener(listener).open.increment(1.0);
    }

    fn connection_closed(&self, listener: Listener) {
        self.listener(listener).open.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_codes_have_their_own_slot() {
        for (i, code) in COMMON_CODES.iter().enumerate() {
            assert_eq!(slot(*code), Some(i));
        }
        assert_eq!(slot(418), None);
    }
}
