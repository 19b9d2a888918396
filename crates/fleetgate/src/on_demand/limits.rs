//! Fleet-wide limits on new on-demand names, counted in the store (`on-demand/limits/*`) under
//! one lease, as `certs::limits` counts orders: per minute for the fleet, per client address
//! per minute, per registered domain per hour. Only names `ask` allowed get here, so a flood of
//! unknown names costs no store write.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use store::{LockName, Storage, StorageKey};

use crate::on_demand_config::OnDemandConfig;

/// The lease held while counting and recording a new name.
pub const LOCK: &str = "on-demand-limits";
pub const LOCK_TTL: Duration = Duration::from_secs(30);
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
const MINUTE: u64 = 60;
const HOUR: u64 = 3600;

/// Timestamps (unix seconds) inside a sliding window.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Window {
    at: Vec<u64>,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key(kind: &str, name: &str) -> Option<StorageKey> {
    StorageKey::new("on-demand")
        .ok()?
        .join("limits")
        .ok()?
        .join(kind)
        .ok()?
        .join(&format!("{}.json", store::sanitize_segment(name)))
        .ok()
}

pub fn lock_name() -> LockName {
    LockName::new(LOCK)
}

/// Which limit a new name would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitReached(pub String);

/// Checks the three windows and, when none is full, counts the name in each. Call with the
/// [`LOCK`] lease held; `lease` fences the writes.
pub async fn reserve(
    store: &Arc<dyn Storage>,
    config: &OnDemandConfig,
    name: &certs::DomainName,
    client: IpAddr,
    lease: &store::Lease,
) -> Result<Result<(), LimitReached>, store::Error> {
    let now = now_unix();
    let registered = certs::limits::registered_domain(name);
    let windows = [
        ("fleet", "all".to_string(), MINUTE, config.names_per_minute),
        (
            "client",
            client.to_string(),
            MINUTE,
            config.names_per_client_per_minute,
        ),
        ("domain", registered, HOUR, config.names_per_domain_per_hour),
    ];
    let mut loaded = Vec::new();
    for (kind, what, width, max) in windows {
        if max == 0 {
            continue;
        }
        let Some(k) = key(kind, &what) else { continue };
        let mut w: Window = match store.get(&k).await? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => Window::default(),
        };
        w.at.retain(|t| *t + width > now);
        if w.at.len() as u64 >= u64::from(max) {
            return Ok(Err(LimitReached(format!(
                "{} new on-demand names for {kind} {what} in the last {width} s (limit {max})",
                w.at.len()
            ))));
        }
        loaded.push((k, w));
    }
    for (k, mut w) in loaded {
        w.at.push(now);
        let bytes = serde_json::to_vec(&w).map_err(|e| store::Error::Corrupt {
            key: k.to_string(),
            detail: e.to_string(),
        })?;
        store.put_fenced(&k, &bytes, lease).await?;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config(per_minute: u32, per_client: u32, per_domain: u32) -> OnDemandConfig {
        let raw: crate::on_demand_config::RawOnDemand = toml::from_str(&format!(
            "ask = \"http://127.0.0.1:1/\"\nsite = \"app.test\"\nnames_per_minute = {per_minute}\nnames_per_client_per_minute = {per_client}\nnames_per_domain_per_hour = {per_domain}\n"
        ))
        .unwrap();
        crate::on_demand_config::parse(&raw, &["app.test".to_string()]).unwrap()
    }

    async fn reserve_n(config: &OnDemandConfig, names: &[(&str, &str)]) -> Vec<bool> {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Storage> =
            Arc::new(store::DirStore::open(dir.path().to_path_buf()).unwrap());
        let guard = store::lock(&store, &lock_name(), "t", LOCK_TTL, LOCK_WAIT)
            .await
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        for (name, client) in names {
            let name = certs::DomainName::parse(name).unwrap();
            let client: IpAddr = client.parse().unwrap();
            out.push(
                reserve(&store, config, &name, client, &guard.lease())
                    .await
                    .unwrap()
                    .is_ok(),
            );
        }
        out
    }

    #[tokio::test]
    async fn each_window_refuses_past_its_limit() {
        let names = [
            ("a.one.test", "192.0.2.1"),
            ("b.one.test", "192.0.2.1"),
            ("c.two.test", "192.0.2.2"),
            ("d.three.test", "192.0.2.3"),
        ];
        // Fleet: 3 a minute.
        assert_eq!(
            reserve_n(&config(3, 0, 0), &names).await,
            [true, true, true, false]
        );
        // Per client: 1 a minute (192.0.2.1's second name refused).
        assert_eq!(
            reserve_n(&config(0, 1, 0), &names).await,
            [true, false, true, true]
        );
        // Per registered domain: 1 an hour (one.test's second name refused).
        assert_eq!(
            reserve_n(&config(0, 0, 1), &names).await,
            [true, false, true, true]
        );
        // Without limits every name fits.
        assert_eq!(reserve_n(&config(0, 0, 0), &names).await, [true; 4]);
    }
}
