//! Calling the product's `ask` endpoint, as Caddy calls it (`GET ask?domain=NAME`, 2xx =
//! allowed) plus `&client_ip=IP`, with everything a flood could abuse bounded per node:
//! decisions cached (allowed 1 h, refused 5 min), at most `asks_per_second` calls started per
//! second, at most `ask_concurrency` in flight (a call waits up to `ask_timeout` for a slot). A
//! name over the limits is refused without asking and without caching (the next handshake may
//! ask); a timeout or any answer other than 2xx is a refusal that is cached.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::on_demand_config::OnDemandConfig;

/// How long an allowed name is not asked again on this node.
pub const ALLOWED_FOR: Duration = Duration::from_secs(3600);
/// How long a refused name is not asked again on this node.
pub const REFUSED_FOR: Duration = Duration::from_secs(300);
/// Decisions kept at most; past it, expired ones are dropped, then refused ones.
const CACHE_MAX: usize = 200_000;

/// What `ask` said about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused by the endpoint, or it did not answer in time: cached.
    Refused,
    /// Not asked (over the node's rate or concurrency): not cached.
    Busy,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The per-node `ask` client with its cache and bounds.
#[derive(Debug)]
pub struct Asker {
    client: Client<HttpConnector, Empty<Bytes>>,
    base: String,
    timeout: Duration,
    per_second: f64,
    bucket: Mutex<Bucket>,
    in_flight: Semaphore,
    cache: Mutex<HashMap<String, (bool, Instant)>>,
    /// Calls made to the endpoint (for logs and tests).
    pub calls: AtomicU64,
}

impl Asker {
    pub fn new(config: &OnDemandConfig) -> Asker {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.ask_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let sep = if config.ask.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        Asker {
            client,
            base: format!(
                "http://{}{}{sep}",
                config.ask.authority, config.ask.path_and_query
            ),
            timeout: config.ask_timeout,
            per_second: f64::from(config.asks_per_second),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(config.asks_per_second),
                at: Instant::now(),
            }),
            in_flight: Semaphore::new(config.ask_concurrency),
            cache: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        }
    }

    /// The cached decision for `name`, if one is fresh.
    pub fn cached(&self, name: &str) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(name) {
            Some((allowed, until)) if *until > Instant::now() => Some(if *allowed {
                Verdict::Allowed
            } else {
                Verdict::Refused
            }),
            _ => None,
        }
    }

    /// Forget what was decided about `name` (a customer removed, a pause that ended).
    pub fn forget(&self, name: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(name);
    }

    fn remember(&self, name: &str, allowed: bool) {
        let now = Instant::now();
        let until = now + if allowed { ALLOWED_FOR } else { REFUSED_FOR };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (allowed, _)| *allowed);
            }
        }
        cache.insert(name.to_owned(), (allowed, until));
    }

    fn take_token(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.per_second);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether `name` (a valid domain name, lower-case) may get a certificate, asking the
    /// endpoint unless a fresh decision is cached.
    pub async fn verdict(&self, name: &str, client: IpAddr) -> Verdict {
        if let Some(verdict) = self.cached(name) {
            return verdict;
        }
        if !self.take_token() {
            debug!(domain = name, "ask: over the rate; refused without asking");
            return Verdict::Busy;
        }
        // A burst of new customers waits for a free slot, within the time one call may take.
        let Ok(Ok(_permit)) = tokio::time::timeout(self.timeout, self.in_flight.acquire()).await
        else {
            debug!(
                domain = name,
                "ask: too many calls in flight; refused without asking"
            );
            return Verdict::Busy;
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        let client_ip = client.to_string().replace(':', "%3A");
        let uri = format!("{}domain={name}&client_ip={client_ip}", self.base);
        let allowed = match uri.parse::<hyper::Uri>() {
            Ok(uri) => match tokio::time::timeout(self.timeout, self.client.get(uri)).await {
                Ok(Ok(response)) => response.status().is_success(),
                Ok(Err(error)) => {
                    warn!(domain = name, %error, "ask: the endpoint did not answer; refused");
                    false
                }
                Err(_) => {
                    warn!(domain = name, timeout = ?self.timeout, "ask: no answer in time; refused");
                    false
                }
            },
            Err(error) => {
                warn!(domain = name, %error, "ask: cannot build the URL; refused");
                false
            }
        };
        self.remember(name, allowed);
        debug!(domain = name, allowed, "ask decided");
        if allowed {
            Verdict::Allowed
        } else {
            Verdict::Refused
        }
    }
}
