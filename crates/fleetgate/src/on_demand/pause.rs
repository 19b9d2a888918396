//! Giving up on dead names. A name whose orders failed `failures_before_pause` times in a row
//! (its DNS no longer points at the fleet) is paused: the registry entry says until when, the
//! node serves it no route and no certificate task (so nothing is ordered), and handshakes for
//! it are refused. When the pause ends, the name is resumed (one more order is tried; failing,
//! it is paused again); a name first paused `remove_after` ago is removed from the registry.
//!
//! The node whose certificate task recorded the failure (`status/<id>.json` names it) pauses
//! the name; every node sweeps its copy of the registry for pauses that ended. Every write is
//! conditional on the entry's version, so two nodes never both apply one step.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use sites::{Entry, OnDemandState};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Inner, OnDemandService, limits::now_unix};

/// How often every node looks for pauses that ended.
const SWEEP: Duration = Duration::from_secs(1);

/// What is read of a certificate's status record (`certs` writes it).
#[derive(Debug, Deserialize)]
struct Status {
    state: String,
    node: String,
    failures: u32,
    updated_at: u64,
}

/// Follows certificate status changes (pausing dead names) and sweeps for pauses that ended
/// (resuming or removing them), until `shutdown`.
pub fn spawn_pause_watch(
    service: &OnDemandService,
    mut events: broadcast::Receiver<store::Change>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let inner = std::sync::Arc::clone(&service.inner);
    tokio::spawn(async move {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = sweep.tick() => inner.sweep().await,
                event = events.recv() => match event {
                    Ok(store::Change::Put(key)) => {
                        let statuses = status_keys(&inner);
                        if let Some(id) = statuses.get(&key.to_string()) {
                            inner.check_status(id).await;
                        }
                    }
                    Ok(store::Change::Deleted(_)) => {}
                    Ok(store::Change::Missed) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let ids: Vec<String> = inner.entries.load().keys().cloned().collect();
                        for id in ids {
                            inner.check_status(&id).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    })
}

/// The status keys of the on-demand sites, to their ids.
fn status_keys(inner: &Inner) -> HashMap<String, String> {
    inner
        .entries
        .load()
        .keys()
        .map(|id| (certs::layout::status(id).to_string(), id.clone()))
        .collect()
}

impl Inner {
    /// Pause site `id` when its last recorded attempt, made on this node, failed for the
    /// `failures_before_pause`th time in a row since it was allowed or resumed.
    async fn check_status(&self, id: &str) {
        let Some(entry) = self.entries.load().get(id).cloned() else {
            return;
        };
        let Some(state) = &entry.on_demand else {
            return;
        };
        let now = now_unix();
        if state.paused_at(now) {
            return;
        }
        let status = match self.store.get(&certs::layout::status(id)).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<Status>(&bytes) {
                Ok(status) => status,
                Err(_) => return,
            },
            _ => return,
        };
        // Failures recorded before the name was resumed led to the pause already.
        let counted_since = state
            .first_paused_at
            .map_or(state.allowed_at, |_| entry.updated_at);
        // Once resumed, one more failure pauses it again.
        let needed = if state.pauses == 0 {
            self.config.failures_before_pause
        } else {
            1
        };
        if status.state != "failing"
            || status.node != self.node
            || status.updated_at < counted_since
            || status.failures < needed
        {
            return;
        }
        self.pause(&entry, now).await;
    }

    async fn pause(&self, entry: &Entry, now: u64) {
        let Some(state) = &entry.on_demand else {
            return;
        };
        let first = state.first_paused_at.unwrap_or(now);
        if now.saturating_sub(first) >= self.config.remove_after.as_secs() {
            self.remove(entry, "paused for longer than on_demand.remove_after")
                .await;
            return;
        }
        let mut next = OnDemandState::clone(state);
        next.paused_until = Some(now + self.config.fail_pause.as_secs().max(1));
        next.first_paused_at = Some(first);
        next.pauses += 1;
        match (self.registry)
            .set_on_demand_state(&entry.id, entry.version, next)
            .await
        {
            Ok(e) => {
                warn!(domain = %entry.id, until = ?e.on_demand.as_ref().and_then(|s| s.paused_until), "on-demand: orders keep failing; name paused");
                self.asker.forget(&entry.id);
            }
            Err(e) => debug!(domain = %entry.id, error = %e, "on-demand: pause not written"),
        }
    }

    async fn remove(&self, entry: &Entry, why: &str) {
        match self.registry.delete(&entry.id, Some(entry.version)).await {
            Ok(()) => info!(domain = %entry.id, why, "on-demand: name removed"),
            Err(e) => debug!(domain = %entry.id, error = %e, "on-demand: removal not written"),
        }
    }

    /// Resume names whose pause ended, or remove them when first paused `remove_after` ago.
    async fn sweep(&self) {
        let now = now_unix();
        // Only the entries whose pause ended are copied: the sweep runs every second.
        let ended: Vec<Entry> = (self.entries.load().values())
            .filter(|e| {
                e.on_demand
                    .as_ref()
                    .and_then(|s| s.paused_until)
                    .is_some_and(|until| until <= now)
            })
            .cloned()
            .collect();
        for entry in ended {
            let Some(state) = &entry.on_demand else {
                continue;
            };
            let Some(until) = state.paused_until else {
                continue;
            };
            if until > now {
                continue;
            }
            let first = state.first_paused_at.unwrap_or(until);
            if now.saturating_sub(first) >= self.config.remove_after.as_secs() {
                self.remove(&entry, "paused for longer than on_demand.remove_after")
                    .await;
                continue;
            }
            let mut next = OnDemandState::clone(state);
            next.paused_until = None;
            match (self.registry)
                .set_on_demand_state(&entry.id, entry.version, next)
                .await
            {
                Ok(_) => {
                    info!(domain = %entry.id, "on-demand: pause ended; the name is tried again")
                }
                Err(e) => debug!(domain = %entry.id, error = %e, "on-demand: resume not written"),
            }
        }
    }
}
