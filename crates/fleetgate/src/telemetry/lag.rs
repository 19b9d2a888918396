//! `fleetgate_store_event_lag_seconds`: how old a change is when this node hears of it.
//!
//! A change event carries only a key, and stored objects carry no write time. The cheapest
//! honest measure: every node writes a *probe*, an empty object whose key names its write time,
//! `telemetry/lag/<node>/<unix ms>`, every [`PROBE_EVERY`] (and deletes its previous one). A node
//! hearing a peer's probe knows the age without reading anything: its clock now minus the time
//! in the key. Cost: per node one put and one delete every 5 s, and nothing read.
//!
//! What it includes: the backend's whole event path (NOTIFY, pub/sub, the dir journal's poll)
//! plus the skew between the two nodes' clocks (NTP keeps it to milliseconds; the figure is
//! clamped at 0). A node's own writes are delivered to it in-process by every backend, so a
//! node alone hears no probe: the gauge appears once a peer is heard.
//!
//! While this node cannot write its own probe (the store is down), the gauge grows: it is the
//! larger of the last lag heard and the time since the first failed probe write.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use store::{Change, Storage, StorageKey};
use tokio_util::sync::CancellationToken;

/// How often each node writes its probe.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// The prefix of every probe.
pub fn probe_prefix() -> StorageKey {
    // A constant that passes StorageKey's rules.
    #[allow(clippy::expect_used)]
    StorageKey::new("telemetry/lag").expect("a valid key")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct State {
    /// The age of the last peer probe heard, in seconds.
    last_lag: Option<f64>,
    /// When this node's probe writes started failing (none while they succeed).
    failing_since: Option<Instant>,
}

/// The event lag as this node knows it.
#[derive(Debug, Default)]
pub struct EventLag {
    state: Mutex<State>,
}

impl EventLag {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The gauge's value now; `None` until a peer's probe was heard or a probe write failed.
    pub fn seconds(&self) -> Option<f64> {
        let state = self.state();
        let failing = state.failing_since.map(|t| t.elapsed().as_secs_f64());
        match (state.last_lag, failing) {
            (Some(lag), Some(f)) => Some(lag.max(f)),
            (lag, f) => lag.or(f),
        }
    }

    /// A change was heard: if it is a peer's probe (under `prefix`, not under `mine`: every
    /// backend also hands a process its own writes, at once), its age is the lag.
    fn heard(&self, key: &StorageKey, prefix: &StorageKey, mine: &StorageKey) {
        if !key.starts_with(prefix) || key.starts_with(mine) {
            return;
        }
        let Some(written) = key.segments().last().and_then(|s| s.parse::<u64>().ok()) else {
            return;
        };
        let lag = now_ms().saturating_sub(written) as f64 / 1000.0;
        self.state().last_lag = Some(lag);
    }

    fn wrote(&self, ok: bool) {
        let mut state = self.state();
        match (ok, state.failing_since) {
            (true, _) => state.failing_since = None,
            (false, None) => state.failing_since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// Write this node's probes and listen for the peers' until `shutdown`.
    pub fn spawn(
        self: std::sync::Arc<Self>,
        store: std::sync::Arc<dyn Storage>,
        node: &str,
        shutdown: CancellationToken,
    ) {
        let prefix = probe_prefix();
        let mine = match prefix.join(node) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "no event-lag probe for this node name");
                return;
            }
        };
        let mut events = store.subscribe();
        let listener = self.clone();
        let stop = shutdown.clone();
        let own = mine.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = events.recv() => event,
                };
                match event {
                    Ok(Change::Put(key)) => listener.heard(&key, &prefix, &own),
                    // A probe missed is only a sample missed: the next one comes in seconds.
                    Ok(Change::Deleted(_) | Change::Missed)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        tokio::spawn(async move {
            let mut previous: Option<StorageKey> = None;
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Ok(key) = mine.join(&now_ms().to_string()) else {
                    continue;
                };
                let written = tokio::time::timeout(PROBE_EVERY, store.put(&key, b"")).await;
                let ok = matches!(written, Ok(Ok(())));
                self.wrote(ok);
                if ok && let Some(old) = previous.replace(key) {
                    let _ = tokio::time::timeout(PROBE_EVERY, store.delete(&old)).await;
                }
            }
            if let Some(old) = previous {
                let _ = tokio::time::timeout(Duration::from_secs(1), store.delete(&old)).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_peer_probe_gives_its_age_and_a_failing_write_grows_the_lag() {
        let lag = EventLag::default();
        assert_eq!(lag.seconds(), None);
        let prefix = probe_prefix();
        let mine = prefix.join("a").unwrap();
        // Our own probe, handed back at once: not a measure.
        lag.heard(&mine.join(&now_ms().to_string()).unwrap(), &prefix, &mine);
        assert_eq!(lag.seconds(), None);
        let written = now_ms() - 1500;
        lag.heard(
            &prefix
                .join("b")
                .unwrap()
                .join(&written.to_string())
                .unwrap(),
            &prefix,
            &mine,
        );
        let seen = lag.seconds().unwrap();
        assert!((1.5..3.0).contains(&seen), "{seen}");
        // Not a probe: ignored.
        lag.heard(&StorageKey::new("certs/x/1").unwrap(), &prefix, &mine);
        assert!(lag.seconds().unwrap() >= 1.5);
        lag.wrote(false);
        assert!(lag.seconds().unwrap() >= 1.5);
        lag.wrote(true);
        assert!(lag.seconds().unwrap() < 3.0);
    }
}
