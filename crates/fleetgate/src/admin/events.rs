//! `GET /v1/events`: the last [`KEEP`] things that happened to the fleet, as this node saw them
//! since it started: certificates stored (issued or renewed), orders failing (with the CA's
//! problem) and recovering, leases taken over, nodes joining, going silent and coming back.
//!
//! Certificates and their states come from the store's change events (one read of the object
//! named, when it changes); nodes and leases from a scan every [`SCAN_EVERY`] (heartbeats and
//! `locks()`), diffed against the previous scan. The first scan only learns what exists.

use std::collections::{HashMap, VecDeque};
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
/// How often nodes and leases are scanned.
const SCAN_EVERY: Duration = Duration::from_secs(5);
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
            let mut tick = tokio::time::interval(SCAN_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => watcher.scan(&self, store.as_ref()).await,
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
    /// Certificate key -> serial last seen.
    serials: HashMap<StorageKey, String>,
    /// Certificate id -> state last seen.
    states: HashMap<String, certs::CertState>,
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
            let serial = bundle.meta.serial.clone();
            let previous = self.serials.insert(key.clone(), serial.clone());
            if previous.as_deref() == Some(serial.as_str()) {
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
            let before = self.states.insert(id.clone(), record.state);
            match (before, record.state) {
                (b, certs::CertState::Failing) if b != Some(certs::CertState::Failing) => {
                    let error = record
                        .last_error
                        .map(|e| e.message)
                        .unwrap_or_else(|| "no error recorded".to_string());
                    log.push("failed", id, format!("{error} (by {})", record.node));
                }
                (Some(certs::CertState::Failing), certs::CertState::Valid) => {
                    log.push("recovered", id, format!("valid again (by {})", record.node));
                }
                _ => {}
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

/// The id a `<prefix>/<id>.json` key names (the whole key when it is not of that form).
fn json_id(key: &store::StorageKey) -> String {
    key.segments()
        .last()
        .and_then(|s| s.strip_suffix(".json"))
        .unwrap_or(key.as_str())
        .to_string()
}
