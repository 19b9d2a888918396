//! Cluster-wide issuance limits, kept in the store so every node counts the same orders.
//!
//! Let's Encrypt allows 300 new orders per account per 3 hours, 50 certificates per registered
//! domain per week, and 5 failed validations per name per hour. A cluster that counted per node
//! (as certmagic's throttle does) could burn them N times over, so the counters live in the store
//! (`limits/*`) and are updated under one lease. The defaults stay well under the CA's numbers.
//!
//! The registered domain is approximated by the last two labels (no public suffix list): under
//! `example.co.uk` every name counts against `co.uk`, which only errs on the side of caution.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use store::{Storage, StorageKey};

use crate::bundle::now_unix;
use crate::{DomainName, Error, Result};

/// The limits; `0` disables one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterLimits {
    /// New orders per ACME account (per CA) in any 3 hours.
    pub orders_per_3h: u32,
    /// Certificates per registered domain in any 7 days.
    pub certs_per_domain_per_week: u32,
    /// Failed validations per name in any hour before ordering for it pauses.
    pub failed_validations_per_hour: u32,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        ClusterLimits {
            orders_per_3h: 240,
            certs_per_domain_per_week: 45,
            failed_validations_per_hour: 4,
        }
    }
}

const HOUR: i64 = 3600;
const ORDER_WINDOW: i64 = 3 * HOUR;
const CERT_WINDOW: i64 = 7 * 24 * HOUR;
const FAILURE_WINDOW: i64 = HOUR;
const LOCK_TTL: Duration = Duration::from_secs(10);
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Timestamps (unix seconds) of events inside a sliding window.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Window {
    at: Vec<i64>,
}

impl Window {
    fn prune(&mut self, now: i64, width: i64) {
        self.at.retain(|t| *t > now - width);
    }

    /// When the oldest event leaves the window.
    fn frees_at(&self, width: i64) -> i64 {
        self.at.iter().min().map(|t| t + width).unwrap_or(0)
    }
}

fn key(text: String) -> StorageKey {
    crate::layout::limits_key(&text)
}

pub fn registered_domain(name: &DomainName) -> String {
    let labels: Vec<&str> = name.as_str().trim_start_matches("*.").split('.').collect();
    let n = labels.len();
    if n <= 2 {
        labels.join(".")
    } else {
        labels[n - 2..].join(".")
    }
}

/// Checks and records limits for one node; cheap to clone.
#[derive(Debug, Clone)]
pub struct Limiter {
    store: Arc<dyn Storage>,
    limits: ClusterLimits,
    node: String,
}

impl Limiter {
    pub fn new(store: Arc<dyn Storage>, limits: ClusterLimits, node: String) -> Self {
        Limiter {
            store,
            limits,
            node,
        }
    }

    async fn load(&self, key: &StorageKey) -> Result<Window> {
        Ok(match self.store.get(key).await? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => Window::default(),
        })
    }

    async fn save(&self, key: &StorageKey, window: &Window, lease: &store::Lease) -> Result<()> {
        let bytes = serde_json::to_vec(window).map_err(|e| Error::Crypto(e.to_string()))?;
        self.store.put_fenced(key, &bytes, lease).await?;
        Ok(())
    }

    /// Before placing an order for `domains` with the CA `ca`: refuse with
    /// [`Error::LimitReached`] if a limit would be passed, else count the order.
    pub async fn reserve_order(&self, ca: &str, domains: &[DomainName]) -> Result<()> {
        let guard = store::lock(
            &self.store,
            &crate::layout::limits_lock(),
            &self.node,
            LOCK_TTL,
            LOCK_WAIT,
        )
        .await?
        .ok_or_else(|| Error::Busy {
            name: "limits".into(),
        })?;
        let result = self.reserve_locked(ca, domains, &guard.lease()).await;
        let _ = guard.release().await;
        result
    }

    async fn reserve_locked(
        &self,
        ca: &str,
        domains: &[DomainName],
        lease: &store::Lease,
    ) -> Result<()> {
        let now = now_unix();
        if self.limits.failed_validations_per_hour > 0 {
            for d in domains {
                let mut w = self.load(&key(format!("failures/{}", d.as_str()))).await?;
                w.prune(now, FAILURE_WINDOW);
                if w.at.len() as u32 >= self.limits.failed_validations_per_hour {
                    return Err(limit(
                        format!("{} failed validations of {d} in the last hour", w.at.len()),
                        w.frees_at(FAILURE_WINDOW) - now,
                    ));
                }
            }
        }
        if self.limits.certs_per_domain_per_week > 0 {
            let mut seen = Vec::new();
            for d in domains {
                let reg = registered_domain(d);
                if seen.contains(&reg) {
                    continue;
                }
                let mut w = self.load(&key(format!("certs/{reg}"))).await?;
                w.prune(now, CERT_WINDOW);
                if w.at.len() as u32 >= self.limits.certs_per_domain_per_week {
                    return Err(limit(
                        format!("{} certificates for {reg} in the last week", w.at.len()),
                        w.frees_at(CERT_WINDOW) - now,
                    ));
                }
                seen.push(reg);
            }
        }
        if self.limits.orders_per_3h > 0 {
            let k = key(format!("orders/{ca}"));
            let mut w = self.load(&k).await?;
            w.prune(now, ORDER_WINDOW);
            if w.at.len() as u32 >= self.limits.orders_per_3h {
                return Err(limit(
                    format!("{} new orders with this CA in the last 3 hours", w.at.len()),
                    w.frees_at(ORDER_WINDOW) - now,
                ));
            }
            w.at.push(now);
            self.save(&k, &w, lease).await?;
        }
        Ok(())
    }

    /// After a certificate was issued for `domains`.
    pub async fn record_issued(&self, domains: &[DomainName]) {
        if self.limits.certs_per_domain_per_week == 0 {
            return;
        }
        let mut regs: Vec<String> = domains.iter().map(registered_domain).collect();
        regs.sort();
        regs.dedup();
        self.record(
            regs.into_iter()
                .map(|r| (format!("certs/{r}"), CERT_WINDOW))
                .collect(),
        )
        .await;
    }

    /// After the CA refused a validation for `domain`.
    pub async fn record_failed_validation(&self, domain: &str) {
        if self.limits.failed_validations_per_hour == 0 {
            return;
        }
        self.record(vec![(format!("failures/{domain}"), FAILURE_WINDOW)])
            .await;
    }

    async fn record(&self, entries: Vec<(String, i64)>) {
        let result: Result<()> = async {
            let guard = store::lock(
                &self.store,
                &crate::layout::limits_lock(),
                &self.node,
                LOCK_TTL,
                LOCK_WAIT,
            )
            .await?
            .ok_or_else(|| Error::Busy {
                name: "limits".into(),
            })?;
            let now = now_unix();
            for (k, width) in entries {
                let k = key(k);
                let mut w = self.load(&k).await?;
                w.prune(now, width);
                w.at.push(now);
                self.save(&k, &w, &guard.lease()).await?;
            }
            let _ = guard.release().await;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record an issuance limit event");
        }
    }
}

fn limit(what: String, wait_secs: i64) -> Error {
    Error::LimitReached {
        what,
        retry_after: Duration::from_secs(wait_secs.max(1) as u64),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn limiter(dir: &std::path::Path, limits: ClusterLimits) -> Limiter {
        let store: Arc<dyn Storage> = Arc::new(store::DirStore::open(dir).unwrap());
        Limiter::new(store, limits, "n1".into())
    }

    fn names(list: &[&str]) -> Vec<DomainName> {
        list.iter().map(|n| DomainName::parse(n).unwrap()).collect()
    }

    #[tokio::test]
    async fn orders_are_counted_across_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ClusterLimits {
            orders_per_3h: 3,
            ..ClusterLimits::default()
        };
        let a = limiter(dir.path(), limits);
        let b = limiter(dir.path(), limits);
        a.reserve_order("ca", &names(&["a.example"])).await.unwrap();
        b.reserve_order("ca", &names(&["b.example"])).await.unwrap();
        a.reserve_order("ca", &names(&["c.example"])).await.unwrap();
        let err = b
            .reserve_order("ca", &names(&["d.example"]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::LimitReached { .. }), "{err}");
        let wait = err.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(3 * 3600 - 60) && wait <= Duration::from_secs(3 * 3600),
            "{wait:?}"
        );
        // Another CA has its own count.
        b.reserve_order("other-ca", &names(&["d.example"]))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn failed_validations_pause_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let l = limiter(
            dir.path(),
            ClusterLimits {
                failed_validations_per_hour: 2,
                ..ClusterLimits::default()
            },
        );
        l.record_failed_validation("bad.example").await;
        l.reserve_order("ca", &names(&["bad.example"]))
            .await
            .unwrap();
        l.record_failed_validation("bad.example").await;
        let err = l
            .reserve_order("ca", &names(&["ok.example", "bad.example"]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("bad.example"), "{err}");
        l.reserve_order("ca", &names(&["ok.example"]))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn certificates_per_registered_domain() {
        let dir = tempfile::tempdir().unwrap();
        let l = limiter(
            dir.path(),
            ClusterLimits {
                certs_per_domain_per_week: 1,
                ..ClusterLimits::default()
            },
        );
        l.record_issued(&names(&["www.shop.example", "shop.example"]))
            .await;
        let err = l
            .reserve_order("ca", &names(&["api.shop.example"]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("shop.example"), "{err}");
        l.reserve_order("ca", &names(&["other.example"]))
            .await
            .unwrap();
    }

    #[test]
    fn registered_domains() {
        assert_eq!(
            registered_domain(&DomainName::parse("a.b.example.com").unwrap()),
            "example.com"
        );
        assert_eq!(
            registered_domain(&DomainName::parse("example.com").unwrap()),
            "example.com"
        );
        assert_eq!(
            registered_domain(&DomainName::parse("*.x.example.com").unwrap()),
            "example.com"
        );
    }
}
