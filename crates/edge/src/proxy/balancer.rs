//! The upstreams of one proxy site, their health, and the choice of one per request.
//!
//! Everything a request touches here is an atomic: choosing an upstream takes no lock.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme, Uri};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::EdgeError;
use crate::observe::UpstreamObserver;
use crate::proxy::config::Policy;

/// One upstream web server and what is known about its health.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// `scheme://authority`, for logs.
    pub(crate) name: Box<str>,
    /// `authority` as a header value, for `host_header = "upstream"` and health checks.
    pub(crate) host_value: HeaderValue,
    /// Requests sent and not finished (response body not yet through).
    in_flight: AtomicUsize,
    /// Consecutive failures seen by requests (passive marking).
    fails: AtomicU32,
    /// While `fails >= fail_after`: the upstream is skipped until this time (milliseconds
    /// since the balancer's epoch).
    retry_at_ms: AtomicU64,
    /// The last active check's verdict (true until a check fails).
    active_ok: AtomicBool,
    /// Told of health changes and response times, if the site is observed.
    pub(crate) observer: Option<Arc<dyn UpstreamObserver>>,
}

impl Upstream {
    /// Parses `http[s]://host[:port]` (a trailing `/` is allowed, nothing more).
    pub(crate) fn parse(url: &str) -> Result<Upstream, EdgeError> {
        let invalid = |reason: &str| EdgeError::InvalidProxy {
            what: format!("upstream {url:?}"),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.trim().parse().map_err(|_| invalid("not a URL"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .filter(|s| *s == Scheme::HTTP || *s == Scheme::HTTPS)
            .ok_or_else(|| invalid("expected http:// or https://"))?;
        let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user info is not allowed"));
        }
        if authority.host().is_empty() {
            return Err(invalid("no host"));
        }
        if let Some(pq) = uri.path_and_query()
            && (pq.query().is_some() || !matches!(pq.path(), "" | "/"))
        {
            return Err(invalid(
                "an upstream URL has no path or query: requests keep their own",
            ));
        }
        let host_value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| invalid("host is not a valid header value"))?;
        Ok(Upstream {
            name: format!("{scheme}://{authority}").into_boxed_str(),
            scheme,
            authority,
            host_value,
            in_flight: AtomicUsize::new(0),
            fails: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
            active_ok: AtomicBool::new(true),
            observer: None,
        })
    }

    pub(crate) fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

/// The upstreams of a site and the policy choosing among them.
#[derive(Debug)]
pub(crate) struct Balancer {
    upstreams: Box<[Upstream]>,
    policy: Policy,
    /// Round-robin position (also breaks least_conn ties).
    next: AtomicUsize,
    fail_after: u32,
    fail_timeout: Duration,
    epoch: Instant,
}

/// Upstreams already tried by a request, by index (indexes past 63 are never excluded).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tried(u64);

impl Tried {
    pub(crate) fn add(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }
}

impl Balancer {
    pub(crate) fn new(
        upstreams: Vec<Upstream>,
        policy: Policy,
        fail_after: u32,
        fail_timeout: Duration,
    ) -> Balancer {
        for u in &upstreams {
            if let Some(observer) = &u.observer {
                observer.up(true);
            }
        }
        Balancer {
            upstreams: upstreams.into_boxed_slice(),
            policy,
            next: AtomicUsize::new(0),
            fail_after: fail_after.max(1),
            fail_timeout,
            epoch: Instant::now(),
        }
    }

    pub(crate) fn get(&self, index: usize) -> &Upstream {
        &self.upstreams[index]
    }

    pub(crate) fn len(&self) -> usize {
        self.upstreams.len()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `u` may take requests. `now` is read only when passive marking needs it.
    fn available(&self, u: &Upstream, now: &mut Option<u64>) -> bool {
        if !u.active_ok.load(Ordering::Relaxed) {
            return false;
        }
        if u.fails.load(Ordering::Relaxed) < self.fail_after {
            return true;
        }
        let now = *now.get_or_insert_with(|| self.now_ms());
        now >= u.retry_at_ms.load(Ordering::Relaxed)
    }

    /// Chooses an available upstream not in `tried` for a client at `client`, and counts a
    /// request in flight on it (released by [`InFlight`]'s drop).
    pub(crate) fn pick(self: &Arc<Self>, client: IpAddr, tried: Tried) -> Option<InFlight> {
        let n = self.upstreams.len();
        let mut now = None;
        let usable = |i: usize, now: &mut Option<u64>| {
            !tried.contains(i) && self.available(&self.upstreams[i], now)
        };
        // The counters are shared by every thread serving the site: each write to one moves
        // its cache line between cores, so none is written that nothing will read.
        let turn = || {
            if n == 1 {
                0
            } else {
                self.next.fetch_add(1, Ordering::Relaxed)
            }
        };
        let index = match self.policy {
            Policy::RoundRobin => {
                let start = turn();
                (0..n)
                    .map(|k| (start.wrapping_add(k)) % n)
                    .find(|&i| usable(i, &mut now))
            }
            Policy::LeastConn => {
                let start = turn();
                let mut best: Option<(usize, usize)> = None;
                for k in 0..n {
                    let i = start.wrapping_add(k) % n;
                    if !usable(i, &mut now) {
                        continue;
                    }
                    let load = self.upstreams[i].in_flight.load(Ordering::Relaxed);
                    if best.is_none_or(|(_, l)| load < l) {
                        best = Some((i, load));
                    }
                }
                best.map(|(i, _)| i)
            }
            Policy::IpHash => {
                let start = ip_hash(client) as usize;
                (0..n)
                    .map(|k| (start.wrapping_add(k)) % n)
                    .find(|&i| usable(i, &mut now))
            }
        }?;
        if self.counts_in_flight() {
            self.upstreams[index]
                .in_flight
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(InFlight {
            balancer: Arc::clone(self),
            index,
        })
    }

    /// Only least_conn reads the requests in flight.
    fn counts_in_flight(&self) -> bool {
        self.policy == Policy::LeastConn
    }

    /// A request got a response from upstream `index`.
    pub(crate) fn succeeded(&self, index: usize) {
        let u = &self.upstreams[index];
        // Read first: the common case (no failures) writes nothing shared.
        if u.fails.load(Ordering::Relaxed) != 0 {
            let before = u.fails.swap(0, Ordering::Relaxed);
            if before >= self.fail_after {
                info!(upstream = %u.name, "upstream answers again; back in rotation");
                self.report(u);
            }
        }
    }

    /// A request failed at upstream `index` (connection failed or reset, or timed out).
    pub(crate) fn failed(&self, index: usize) {
        let u = &self.upstreams[index];
        let fails = u.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if fails >= self.fail_after {
            let until = self
                .now_ms()
                .saturating_add(u64::try_from(self.fail_timeout.as_millis()).unwrap_or(u64::MAX));
            u.retry_at_ms.store(until, Ordering::Relaxed);
            if fails == self.fail_after {
                warn!(
                    upstream = %u.name,
                    fails,
                    retry_in = ?self.fail_timeout,
                    "upstream failing; taken out of rotation"
                );
                self.report(u);
            }
        }
    }

    /// Records an active check's verdict; a passing check also clears passive marking.
    pub(crate) fn checked(&self, index: usize, ok: bool) {
        let u = &self.upstreams[index];
        let was = u.active_ok.swap(ok, Ordering::Relaxed);
        if ok {
            let fails = u.fails.swap(0, Ordering::Relaxed);
            if !was || fails >= self.fail_after {
                info!(upstream = %u.name, "health check passes; upstream in rotation");
                self.report(u);
            }
        } else if was {
            warn!(upstream = %u.name, "health check fails; upstream out of rotation");
            self.report(u);
        }
    }

    /// Tells the upstream's observer whether it is in rotation now (called on changes only).
    fn report(&self, u: &Upstream) {
        if let Some(observer) = &u.observer {
            let up = u.active_ok.load(Ordering::Relaxed)
                && u.fails.load(Ordering::Relaxed) < self.fail_after;
            observer.up(up);
        }
    }
}

/// A request in flight on one upstream (counted for least_conn); dropped when its response
/// is done.
#[derive(Debug)]
pub(crate) struct InFlight {
    balancer: Arc<Balancer>,
    index: usize,
}

impl InFlight {
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn upstream(&self) -> &Upstream {
        self.balancer.get(self.index)
    }

    pub(crate) fn succeeded(&self) {
        self.balancer.succeeded(self.index);
    }

    pub(crate) fn failed(&self) {
        self.balancer.failed(self.index);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.balancer.counts_in_flight() {
            self.balancer.upstreams[self.index]
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// FNV-1a over the address bytes: stable across processes and nodes, so every node of a fleet
/// sends a client to the same upstream.
fn ip_hash(ip: IpAddr) -> u64 {
    let ip = ip.to_canonical();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match ip {
        IpAddr::V4(v4) => eat(&v4.octets()),
        IpAddr::V6(v6) => eat(&v6.octets()),
    }
    hash
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn balancer(n: usize, policy: Policy) -> Arc<Balancer> {
        let ups = (0..n)
            .map(|i| Upstream::parse(&format!("http://10.0.0.{i}:80")).unwrap())
            .collect();
        Arc::new(Balancer::new(ups, policy, 2, Duration::from_secs(10)))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_upstreams() {
        let u = Upstream::parse("https://app.internal:8443/").unwrap();
        assert_eq!(&*u.name, "https://app.internal:8443");
        assert!(u.is_https());
        assert_eq!(u.host_value, "app.internal:8443");
        let u = Upstream::parse("http://[::1]:8080").unwrap();
        assert_eq!(&*u.name, "http://[::1]:8080");
        for bad in [
            "10.0.0.1:80",
            "ftp://a.example",
            "http://a.example/app",
            "http://a.example/?q",
            "http://user@a.example",
            "",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_robin_is_even_and_skips_the_down() {
        let b = balancer(3, Policy::RoundRobin);
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[b.pick(ip("192.0.2.1"), Tried::default()).unwrap().index()] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
        b.failed(1);
        b.failed(1);
        for _ in 0..10 {
            assert_ne!(
                b.pick(ip("192.0.2.1"), Tried::default()).unwrap().index(),
                1
            );
        }
        b.succeeded(1);
        let seen: Vec<_> = (0..3)
            .map(|_| b.pick(ip("192.0.2.1"), Tried::default()).unwrap().index())
            .collect();
        assert!(seen.contains(&1), "{seen:?}");
    }

    #[test]
    fn ip_hash_is_sticky_and_falls_over() {
        let b = balancer(4, Policy::IpHash);
        let first = b
            .pick(ip("198.51.100.7"), Tried::default())
            .unwrap()
            .index();
        for _ in 0..10 {
            assert_eq!(
                b.pick(ip("198.51.100.7"), Tried::default())
                    .unwrap()
                    .index(),
                first
            );
        }
        // The mapped form of an IPv4 address is the same client.
        let mapped = ip("::ffff:198.51.100.7");
        assert_eq!(b.pick(mapped, Tried::default()).unwrap().index(), first);
        let spread: std::collections::HashSet<_> = (0..64)
            .map(|i| {
                b.pick(ip(&format!("203.0.113.{i}")), Tried::default())
                    .unwrap()
                    .index()
            })
            .collect();
        assert!(spread.len() >= 3, "{spread:?}");
        b.checked(first, false);
        let other = b
            .pick(ip("198.51.100.7"), Tried::default())
            .unwrap()
            .index();
        assert_ne!(other, first);
        b.checked(first, true);
        assert_eq!(
            b.pick(ip("198.51.100.7"), Tried::default())
                .unwrap()
                .index(),
            first
        );
    }

    #[test]
    fn least_conn_prefers_idle_and_counts_in_flight() {
        let b = balancer(3, Policy::LeastConn);
        let held: Vec<_> = (0..3)
            .map(|_| b.pick(ip("192.0.2.1"), Tried::default()).unwrap())
            .collect();
        let distinct: std::collections::HashSet<_> = held.iter().map(InFlight::index).collect();
        assert_eq!(distinct.len(), 3);
        let mut held = held.into_iter();
        let freed = held.next().unwrap();
        let idle = freed.index();
        drop(freed);
        // The other two still have a request each: the idle one is chosen every time.
        for _ in 0..6 {
            assert_eq!(
                b.pick(ip("192.0.2.1"), Tried::default()).unwrap().index(),
                idle
            );
        }
    }

    #[test]
    fn tried_upstreams_are_skipped_and_all_down_is_none() {
        let b = balancer(2, Policy::RoundRobin);
        let mut tried = Tried::default();
        let first = b.pick(ip("192.0.2.1"), tried).unwrap().index();
        tried.add(first);
        let second = b.pick(ip("192.0.2.1"), tried).unwrap().index();
        assert_ne!(first, second);
        tried.add(second);
        assert!(b.pick(ip("192.0.2.1"), tried).is_none());
        b.checked(0, false);
        b.checked(1, false);
        assert!(b.pick(ip("192.0.2.1"), Tried::default()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn passive_marking_expires_after_fail_timeout() {
        let b = balancer(1, Policy::RoundRobin);
        b.failed(0);
        assert!(b.pick(ip("192.0.2.1"), Tried::default()).is_some());
        b.failed(0);
        assert!(b.pick(ip("192.0.2.1"), Tried::default()).is_none());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.pick(ip("192.0.2.1"), Tried::default()).is_some());
        // Still failing: out again at once.
        b.failed(0);
        assert!(b.pick(ip("192.0.2.1"), Tried::default()).is_none());
    }
}
