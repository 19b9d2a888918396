//! `GET /v1/events`: the last [`KEEP`] things that happened to the fleet, as this node saw them
//! since it started: certificates stored (issued or renewed), orders failing (with the CA's
//! problem) and recovering, leases taken over, nodes joining, going silent and coming back.
//!
//! Certificates and their states come from the store's change events (one read of the object
//! named, when it changes); nodes and leases from a scan every [`SCAN_EVERY`] (heartbeats and
//! `locks()`), diffed against the previous scan. The first scan only learns what exists.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use store::{Change, Storage, StorageKey};
use tokio_util::sync::CancellationToken;

use super::AdminState;

/// How many events are kept.
pub const KEEP: usize = 100;
/// How often nodes and leases are scanned, at most.
const SCAN_EVERY: Duration = Duration::from_secs(5);
/// A scan waits at least this many times as long as the last one took. It reads every lease
/// the store keeps (a directory store keeps a file for every lease ever taken: 100,000 on a
/// node of 100,000 certificates), and an idle node scanning every 5 s used a tenth of a core.
const SCAN_SHARE: u32 = 50;
/// A node whose heartbeat is older than this went silent (as `fleetgate status` says).
const SILENT_AFTER: i64 = 60;
/// Bound on each store call of the watcher.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix seconds, when this node saw it.
    pub at: i64,
    /// `certificate`, `failed`, `recovered`, `lease-taken-over`, `node-joined`,
    /// `node-silent`, `node-back`.
    pub kind: &'static str,
    /// The certificate, lease or node.
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Events {
    /// Newest first.
    pub events: Vec<Event>,
}

/// The ring of recent events.
#[derive(Debug, Default)]
pub struct EventLog {
    ring: Mutex<VecDeque<Event>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl EventLog {
    fn ring(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        match self.ring.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn push(&self, kind: &'static str, subject: impl Into<String>, detail: impl Into<String>) {
        let mut ring = self.ring();
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(Event {
            at: now(),
            kind,
            subject: subject.into(),
            detail: detail.into(),
        });
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Event> {
        self.ring().iter().rev().cloned().collect()
    }

    /// Follow the store until `shutdown`.
    pub fn spawn(self: Arc<Self>, store: Arc<dyn Storage>, shutdown: CancellationToken) {
        let mut changes = store.subscribe();
        tokio::spawn(async move {
            let mut watcher = Watcher::default();
            let mut next_scan = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(next_scan) => {
                        let started = tokio::time::Instant::now();
                        watcher.scan(&self, store.as_ref()).await;
                        next_scan = tokio::time::Instant::now()
                            + SCAN_EVERY.max(started.elapsed() * SCAN_SHARE);
                    }
                    change = changes.recv() => match change {
                        Ok(Change::Put(key)) => watcher.changed(&self, store.as_ref(), &key).await,
                        Ok(Change::Deleted(_)) => {}
                        // The periodic scan catches up on what was missed.
                        Ok(Change::Missed)
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
    }
}

/// What the watcher knows from before.
#[derive(Debug, Default)]
struct Watcher {
    /// Certificate key -> serial last seen, both as hashes ([`digest`]): a node may hold
    /// 100,000 certificates, and the names and serials themselves took 17 MB.
    serials: HashMap<u64, u64>,
    /// The certificates last seen failing (only a change to or from failing makes an event).
    failing: HashSet<String>,
    /// Node -> up; `None` before the first scan.
    nodes: Option<HashMap<String, bool>>,
    /// Lease -> owner; `None` before the first scan.
    leases: Option<HashMap<String, String>>,
}

async fn get(store: &dyn Storage, key: &StorageKey) -> Option<Vec<u8>> {
    match tokio::time::timeout(CALL_TIMEOUT, store.get(key)).await {
        Ok(Ok(Some(bytes))) => Some(bytes),
        _ => None,
    }
}

impl Watcher {
    async fn changed(&mut self, log: &EventLog, store: &dyn Storage, key: &StorageKey) {
        if key.starts_with(&certs::layout::certs_prefix()) {
            let Some(bundle) = get(store, key)
                .await
                .and_then(|b| certs::CertBundle::from_json(&b).ok())
            else {
                return;
            };
            let id = json_id(key);
            let serial = bundle.meta.serial;
            let serial_digest = digest(&serial);
            let previous = self.serials.insert(digest(key), serial_digest);
            if previous == Some(serial_digest) {
                return;
            }
            let what = if previous.is_some() {
                "renewed"
            } else {
                "stored"
            };
            let expires = time::OffsetDateTime::from_unix_timestamp(bundle.meta.not_after)
                .map(|t| t.date().to_string())
                .unwrap_or_default();
            log.push(
                "certificate",
                id,
                format!("{what}: serial {serial}, expires {expires}"),
            );
        } else if key.starts_with(&certs::layout::status_prefix()) {
            let Some(record) = get(store, key)
                .await
                .and_then(|b| serde_json::from_slice::<certs::StatusRecord>(&b).ok())
            else {
                return;
            };
            let id = json_id(key);
            if record.state == certs::CertState::Failing {
                if !self.failing.contains(&id) {
                    let error = record
                        .last_error
                        .map(|e| e.message)
                        .unwrap_or_else(|| "no error recorded".to_string());
                    log.push(
                        "failed",
                        id.clone(),
                        format!("{error} (by {})", record.node),
                    );
                    self.failing.insert(id);
                }
            } else if self.failing.remove(&id) && record.state == certs::CertState::Valid {
                log.push("recovered", id, format!("valid again (by {})", record.node));
            }
        }
    }

    async fn scan(&mut self, log: &EventLog, store: &dyn Storage) {
        if let Ok(Ok(keys)) =
            tokio::time::timeout(CALL_TIMEOUT, store.list(&certs::layout::nodes_prefix())).await
        {
            let now = now();
            let mut nodes = HashMap::new();
            for key in keys {
                if let Some(beat) = get(store, &key)
                    .await
                    .and_then(|b| serde_json::from_slice::<crate::status::Heartbeat>(&b).ok())
                {
                    nodes.insert(beat.node, now - beat.last_seen <= SILENT_AFTER);
                }
            }
            if let Some(before) = &self.nodes {
                for (node, up) in &nodes {
                    match (before.get(node), up) {
                        (None, _) => log.push("node-joined", node.clone(), "first heartbeat"),
                        (Some(true), false) => log.push(
                            "node-silent",
                            node.clone(),
                            format!("no heartbeat for over {SILENT_AFTER} s"),
                        ),
                        (Some(false), true) => {
                            log.push("node-back", node.clone(), "heartbeats again")
                        }
                        _ => {}
                    }
                }
            }
            self.nodes = Some(nodes);
        }
        if let Ok(Ok(locks)) = tokio::time::timeout(CALL_TIMEOUT, store.locks()).await {
            let leases: HashMap<String, String> = locks
                .into_iter()
                .map(|l| (l.name.to_string(), l.owner))
                .collect();
            if let Some(before) = &self.leases {
                for (name, owner) in &leases {
                    if let Some(previous) = before.get(name)
                        && previous != owner
                    {
                        log.push(
                            "lease-taken-over",
                            name.clone(),
                            format!("{owner} took it over from {previous}"),
                        );
                    }
                }
            }
            self.leases = Some(leases);
        }
    }
}

pub async fn list(State(state): State<Arc<AdminState>>) -> Json<Events> {
    Json(Events {
        events: state.events.recent(),
    })
}

/// A 64-bit digest of `value`, the same for the life of the process.
fn digest(value: &(impl Hash + ?Sized)) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The id a `<prefix>/<id>.json` key names (the whole key when it is not of that form).
fn json_id(key: &store::StorageKey) -> String {
    key.segments()
        .last()
        .and_then(|s| s.strip_suffix(".json"))
        .unwrap_or(key.as_str())
        .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_change_to_or_from_failing_is_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::DirStore::open(dir.path()).unwrap();
        let (log, mut watcher) = (EventLog::default(), Watcher::default());
        let key = certs::layout::status("a.example");
        let mut seen = Vec::new();
        for state in [
            certs::CertState::Pending,
            certs::CertState::Failing,
            certs::CertState::Failing,
            certs::CertState::Renewing,
            certs::CertState::Valid,
            certs::CertState::Failing,
            certs::CertState::Valid,
            certs::CertState::Valid,
        ] {
            let record = certs::StatusRecord {
                state,
                updated_at: 0,
                node: "n1".into(),
                next_attempt: None,
                failures: 0,
                last_error: None,
            };
            store
                .put(&key, &serde_json::to_vec(&record).unwrap())
                .await
                .unwrap();
            watcher.changed(&log, &store, &key).await;
            seen.push(log.recent().len());
        }
        // Failing once (then again: nothing), renewing then valid (not a recovery from
        // failing), failing, valid (recovered), valid again (nothing).
        assert_eq!(seen, [0, 1, 1, 1, 1, 2, 3, 3]);
        let kinds: Vec<&str> = log.recent().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["recovered", "failed", "failed"]);
        assert!(watcher.failing.is_empty());
    }
}
