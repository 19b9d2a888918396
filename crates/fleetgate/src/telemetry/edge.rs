#![allow(dead_code)] // Called by the edge once wired: /work/notes/metrics-edge.md (phase 2 of issue 14).
//! The request path's metrics, for the edge to call once its layering work has merged (see
//! `/work/notes/metrics-edge.md` for where). Nothing calls this yet.
//!
//! Cost on the request path: handles are looked up once per site (or listener, or upstream) and
//! kept, so a request costs a clock read, a counter increment and a histogram record: atomics,
//! no allocation, no hashing of label strings. The status code is the only label not known in
//! advance; the few codes a site answers are kept in a small list read through a lock that is
//! only written the first time a code is seen.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::{
    CONNECTIONS_OPEN, HTTP_REQUEST_DURATION, HTTP_REQUESTS, TLS_HANDSHAKES, UPSTREAM_DURATION,
    UPSTREAM_UP,
};

/// One site's request metrics: `fleetgate_http_requests_total{site, code}` and
/// `fleetgate_http_request_duration_seconds{site}`.
#[derive(Debug)]
pub struct SiteMetrics {
    site: Arc<str>,
    duration: Histogram,
    codes: RwLock<Vec<(u16, Counter)>>,
}

impl SiteMetrics {
    /// Made when the routes are built (one per site).
    pub fn new(site: &str) -> SiteMetrics {
        SiteMetrics {
            site: Arc::from(site),
            duration: histogram!(HTTP_REQUEST_DURATION, "site" => site.to_string()),
            codes: RwLock::new(Vec::new()),
        }
    }

    /// A response was sent for this site: its status and the time from the request head to the
    /// end of the response head.
    pub fn request(&self, code: u16, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        self.code(code).increment(1);
    }

    fn code(&self, code: u16) -> Counter {
        {
            let codes = match self.codes.read() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some((_, c)) = codes.iter().find(|(c, _)| *c == code) {
                return c.clone();
            }
        }
        let counter =
            counter!(HTTP_REQUESTS, "site" => self.site.to_string(), "code" => code.to_string());
        let mut codes = match self.codes.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !codes.iter().any(|(c, _)| *c == code) {
            codes.push((code, counter.clone()));
        }
        counter
    }
}

/// The outcome of one TLS handshake (`fleetgate_tls_handshakes_total{result}`).
#[derive(Debug, Clone, Copy)]
pub enum Handshake {
    Ok,
    /// No certificate for the SNI name (or no SNI).
    NoCertificate,
    /// An acme-tls/1 challenge answered.
    AcmeChallenge,
    /// Protocol error, timeout or the client gave up.
    Failed,
}

/// Counters the accept path uses; one per node, made at start.
#[derive(Debug)]
pub struct ListenerMetrics {
    handshakes: [Counter; 4],
    open: Gauge,
}

impl ListenerMetrics {
    /// `listener`: `http` or `https` (the `listener` label).
    pub fn new(listener: &'static str) -> ListenerMetrics {
        ListenerMetrics {
            handshakes: ["ok", "no_certificate", "acme_challenge", "failed"]
                .map(|result| counter!(TLS_HANDSHAKES, "result" => result)),
            open: gauge!(CONNECTIONS_OPEN, "listener" => listener),
        }
    }

    pub fn handshake(&self, result: Handshake) {
        self.handshakes[result as usize].increment(1);
    }

    /// A connection was accepted; the gauge goes down when the guard is dropped.
    pub fn connection(&self) -> ConnectionGuard {
        self.open.increment(1.0);
        ConnectionGuard(self.open.clone())
    }
}

/// Keeps one connection counted in `fleetgate_connections_open`.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
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

    /// The balancer's health state changed (or was first decided).
    pub fn set_up(&self, up: bool) {
        self.up.set(if up { 1.0 } else { 0.0 });
    }

    /// Time from the request written to the upstream's response head parsed.
    pub fn response(&self, elapsed: Duration) {
        self.response.record(elapsed.as_secs_f64());
    }
}
