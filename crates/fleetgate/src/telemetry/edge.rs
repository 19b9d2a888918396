//! The request path's metrics: the binary's [`edge::Observer`], given to the edge by `run`
//! when `[admin]` is on (without it the edge reports to `edge::NoObserver`).
//!
//! Cost on the request path: a site's recorder is made once per site id and kept for the
//! process (the edge holds a `&'static` to it), so a request costs a clock read and three
//! relaxed atomic adds in this thread's own shard ([`super::tally`]): no allocation, no lock,
//! no reference count, no hashing of label strings, no cache line shared with another thread.
//! The status code is the only label not known in advance: the common codes have a counter
//! each; any other code goes through a short list under a lock. The request and upstream
//! series are rendered by [`EdgeMetrics::render`], after the `metrics` recorder's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ::metrics::{Counter, Gauge, counter, gauge};
use edge::{Handshake, Listener};

use super::tally::{self, Tally};
use super::{
    CONNECTIONS_OPEN, HTTP_REQUEST_DURATION, HTTP_REQUESTS, TLS_HANDSHAKES, UPSTREAM_DURATION,
    UPSTREAM_UP,
};

/// The status codes with a counter of their own, in counter order.
const COMMON_CODES: [u16; 12] = [200, 204, 301, 302, 304, 308, 400, 404, 421, 502, 503, 504];

/// Buckets of the request and upstream histograms: `super::FAST_BUCKETS` (in 1/10,000 s), then
/// `+Inf`.
const BUCKETS: usize = 15;
static BOUNDS: [u64; BUCKETS] = tally::bounds_nanos([
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 0,
]);

/// The counter of a common code (a jump table, no search).
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

/// An upstream's key: (site id, upstream).
type UpstreamKey = (Box<str>, Box<str>);

/// One site's request metrics: `fleetgate_http_requests_total{site, code}` and
/// `fleetgate_http_request_duration_seconds{site}`.
#[derive(Debug)]
pub struct SiteMetrics {
    site: Box<str>,
    /// The common codes' counters and the duration histogram.
    tally: Tally<{ COMMON_CODES.len() }, BUCKETS>,
    /// Any other code.
    other: RwLock<Vec<(u16, u64)>>,
}

impl SiteMetrics {
    fn new(site: &str) -> SiteMetrics {
        SiteMetrics {
            site: site.into(),
            tally: Tally::new(&BOUNDS),
            other: RwLock::new(Vec::new()),
        }
    }

    /// A response was decided for this site: its status and the time from the request head to
    /// the response head.
    pub fn request(&self, code: u16, elapsed: Duration) {
        let common = slot(code);
        self.tally.record(common, elapsed);
        if common.is_none() {
            let mut codes = match self.other.write() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            match codes.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => codes.push((code, 1)),
            }
        }
    }

    /// This site's samples: a counter per code answered, the histogram when it has any.
    fn render(&self, requests: &mut String, durations: &mut String) {
        let Some(totals) = self.tally.read() else {
            return;
        };
        let site = tally::label(&self.site);
        for (code, n) in COMMON_CODES.iter().zip(totals.counters) {
            if n > 0 {
                let labels = format!("site=\"{site}\",code=\"{code}\"");
                tally::render_counter(requests, HTTP_REQUESTS, &labels, n);
            }
        }
        let mut other = match self.other.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        other.sort_unstable();
        for (code, n) in other {
            let labels = format!("site=\"{site}\",code=\"{code}\"");
            tally::render_counter(requests, HTTP_REQUESTS, &labels, n);
        }
        tally::render_histogram(
            durations,
            HTTP_REQUEST_DURATION,
            &format!("site=\"{site}\""),
            &BOUNDS,
            &totals.buckets,
            totals.sum_seconds,
        );
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

/// One upstream of one proxy site: `fleetgate_upstream_up{site, upstream}` (through the
/// `metrics` recorder: it changes rarely) and `fleetgate_upstream_response_seconds{site,
/// upstream}` (a [`Tally`], rendered by [`EdgeMetrics::render`]).
#[derive(Debug)]
pub struct UpstreamMetrics {
    up: Gauge,
    response: Tally<0, BUCKETS>,
}

impl UpstreamMetrics {
    fn new(site: &str, upstream: &str) -> UpstreamMetrics {
        let labels = [
            ("site", site.to_string()),
            ("upstream", upstream.to_string()),
        ];
        UpstreamMetrics {
            up: gauge!(UPSTREAM_UP, &labels),
            response: Tally::new(&BOUNDS),
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
        self.response.record(None, elapsed);
    }
}

/// What `run` gives the edge with `[admin]` on. Made after the recorder is installed.
#[derive(Debug)]
pub struct EdgeMetrics {
    /// Every site's recorder by site id, made at the first request for it and kept for the
    /// process (the edge holds `&'static` references; a site's series outlive it).
    sites: Mutex<BTreeMap<Box<str>, &'static SiteMetrics>>,
    /// Every upstream's recorder by (site id, upstream), kept likewise (shared with the
    /// balancer, which holds an `Arc`).
    upstreams: Mutex<BTreeMap<UpstreamKey, Arc<UpstreamMetrics>>>,
    /// `fleetgate_tls_handshakes_total`, by [`handshake_result`].
    handshakes: [Counter; 4],
    http: ListenerMetrics,
    https: ListenerMetrics,
}

impl EdgeMetrics {
    pub fn new() -> EdgeMetrics {
        EdgeMetrics {
            sites: Mutex::default(),
            upstreams: Mutex::default(),
            handshakes: ["ok", "no_certificate", "acme_challenge", "failed"]
                .map(|result| counter!(TLS_HANDSHAKES, "result" => result)),
            http: ListenerMetrics::new("http"),
            https: ListenerMetrics::new("https"),
        }
    }

    /// The request and upstream series, appended to a scrape's text.
    pub fn render(&self, out: &mut String) {
        let sites: Vec<&'static SiteMetrics> = match self.sites.lock() {
            Ok(s) => s.values().copied().collect(),
            Err(poisoned) => poisoned.into_inner().values().copied().collect(),
        };
        let (mut requests, mut durations) = (String::new(), String::new());
        for site in sites {
            site.render(&mut requests, &mut durations);
        }
        if !requests.is_empty() {
            tally::render_head(
                out,
                HTTP_REQUESTS,
                "counter",
                "HTTP responses sent, by site and status code",
            );
            out.push_str(&requests);
            tally::render_head(
                out,
                HTTP_REQUEST_DURATION,
                "histogram",
                "Time from request head to response head, by site",
            );
            out.push_str(&durations);
        }
        let upstreams: Vec<(UpstreamKey, Arc<UpstreamMetrics>)> = match self.upstreams.lock() {
            Ok(u) => u.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(poisoned) => poisoned
                .into_inner()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let mut responses = String::new();
        for ((site, upstream), metrics) in upstreams {
            if let Some(totals) = metrics.response.read() {
                let labels = format!(
                    "site=\"{}\",upstream=\"{}\"",
                    tally::label(&site),
                    tally::label(&upstream)
                );
                tally::render_histogram(
                    &mut responses,
                    UPSTREAM_DURATION,
                    &labels,
                    &BOUNDS,
                    &totals.buckets,
                    totals.sum_seconds,
                );
            }
        }
        if !responses.is_empty() {
            tally::render_head(
                out,
                UPSTREAM_DURATION,
                "histogram",
                "Time from request sent to response head, by upstream",
            );
            out.push_str(&responses);
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
    fn site(&self, site_id: &str) -> Option<&'static dyn edge::SiteObserver> {
        let mut sites = match self.sites.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let site: &'static SiteMetrics = sites
            .entry(site_id.into())
            .or_insert_with(|| Box::leak(Box::new(SiteMetrics::new(site_id))));
        Some(site)
    }

    fn upstream(&self, site_id: &str, upstream: &str) -> Option<Arc<dyn edge::UpstreamObserver>> {
        let mut upstreams = match self.upstreams.lock() {
            Ok(u) => u,
            Err(poisoned) => poisoned.into_inner(),
        };
        let metrics = upstreams
            .entry((site_id.into(), upstream.into()))
            .or_insert_with(|| Arc::new(UpstreamMetrics::new(site_id, upstream)))
            .clone();
        Some(metrics)
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
