//! Node heartbeats and `fleetgate status`: which nodes are alive, whether the store answers, which
//! orders are pending and which leases are held by whom.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How often a node writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A node whose heartbeat is older than this is shown as gone.
const NODE_GONE_AFTER: i64 = 60;
/// A running node prunes old heartbeats every this many beats (an hour).
const PRUNE_EVERY_BEATS: u64 = 360;
/// A node that stopped cleanly is shown as `stopped` this long, then dropped.
const STOPPED_SHOWN_FOR: i64 = 10 * 60;
/// A node silent this long is dropped (its heartbeat deleted): it is not coming back under
/// that name (default names end in the process id).
const SILENT_DROPPED_AFTER: i64 = 24 * 60 * 60;

#[derive(Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub version: String,
    pub started_at: i64,
    pub last_seen: i64,
    pub listen_http: String,
    pub listen_https: String,
    pub certificates: usize,
    /// When the node stopped after a clean drain (SIGTERM/SIGINT); `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<i64>,
}

/// How `fleetgate status` sees a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// A heartbeat within [`NODE_GONE_AFTER`].
    Up,
    /// Stopped cleanly, less than [`STOPPED_SHOWN_FOR`] ago.
    Stopped,
    /// Silent for more than [`NODE_GONE_AFTER`] (crashed, killed, partitioned), less than
    /// [`SILENT_DROPPED_AFTER`].
    Gone,
}

impl NodeState {
    /// The state of `beat` at `now`; `None`: no longer worth listing (and its heartbeat is
    /// deleted).
    fn of(beat: &Heartbeat, now: i64) -> Option<NodeState> {
        let age = now - beat.last_seen;
        match beat.stopped_at {
            Some(at) if now - at > STOPPED_SHOWN_FOR => None,
            Some(_) => Some(NodeState::Stopped),
            None if age > SILENT_DROPPED_AFTER => None,
            None if age > NODE_GONE_AFTER => Some(NodeState::Gone),
            None => Some(NodeState::Up),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Stopped => "stopped",
            NodeState::Gone => "gone",
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Write this node's heartbeat every [`HEARTBEAT`] until `shutdown`.
pub fn spawn_heartbeat(
    store: Arc<dyn store::Storage>,
    config: &Config,
    node: String,
    certificates: Arc<edge::CertMap>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let started_at = now();
    let (http, https) = (
        config.listen_http.to_string(),
        config.listen_https.to_string(),
    );
    tokio::spawn(async move {
        let key = certs::layout::node(&node);
        // The first beat a moment after start, when stored certificates are deployed.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let mut beats: u64 = 0;
        loop {
            // Now and then (at the first beat, then hourly) drop the heartbeats of nodes no
            // longer worth listing, so they do not pile up where nobody runs `fleetgate status`.
            if beats.is_multiple_of(PRUNE_EVERY_BEATS) {
                prune(store.as_ref()).await;
            }
            beats += 1;
            let beat = Heartbeat {
                node: node.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at,
                last_seen: now(),
                listen_http: http.clone(),
                listen_https: https.clone(),
                certificates: certificates.ids().len(),
                stopped_at: None,
            };
            if let Ok(bytes) = serde_json::to_vec(&beat)
                && let Err(e) = store.put(&key, &bytes).await
            {
                tracing::debug!(error = %e, "heartbeat not written");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
    })
}

/// Record that `node` stopped cleanly (after its drain), so `fleetgate status` shows it as
/// `stopped` and then drops it. Best effort: a store that does not answer within 2 s leaves the
/// heartbeat to age into `gone`.
pub async fn mark_stopped(store: &dyn store::Storage, node: &str) {
    let key = certs::layout::node(node);
    let write = async {
        let bytes = store.get(&key).await?;
        let Some(mut beat) = bytes.and_then(|b| serde_json::from_slice::<Heartbeat>(&b).ok())
        else {
            return Ok(());
        };
        let now = now();
        beat.last_seen = now;
        beat.stopped_at = Some(now);
        let bytes = serde_json::to_vec(&beat).unwrap_or_default();
        store.put(&key, &bytes).await
    };
    match tokio::time::timeout(Duration::from_secs(2), write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "stopped heartbeat not written"),
        Err(_) => tracing::debug!("stopped heartbeat not written within 2 s"),
    }
}

/// One node of `fleetgate status`.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    pub node: String,
    pub state: NodeState,
    pub last_seen_secs_ago: i64,
    pub version: String,
    pub started_at: i64,
    pub stopped_at: Option<i64>,
    pub certificates: usize,
    pub listen_http: String,
    pub listen_https: String,
}

/// The nodes worth listing, by name; heartbeats of nodes no longer worth listing (stopped
/// more than [`STOPPED_SHOWN_FOR`] ago, silent more than [`SILENT_DROPPED_AFTER`]) are deleted.
async fn node_rows(store: &dyn store::Storage, keys: Vec<store::StorageKey>) -> Vec<NodeRow> {
    let now = now();
    let mut rows = Vec::new();
    for key in keys {
        let Ok(Some(bytes)) = store.get(&key).await else {
            continue;
        };
        let Ok(beat) = serde_json::from_slice::<Heartbeat>(&bytes) else {
            continue;
        };
        let Some(state) = NodeState::of(&beat, now) else {
            if let Err(e) = store.delete(&key).await {
                tracing::debug!(error = %e, node = %beat.node, "old heartbeat not deleted");
            }
            continue;
        };
        rows.push(NodeRow {
            node: beat.node,
            state,
            last_seen_secs_ago: now - beat.last_seen,
            version: beat.version,
            started_at: beat.started_at,
            stopped_at: beat.stopped_at,
            certificates: beat.certificates,
            listen_http: beat.listen_http,
            listen_https: beat.listen_https,
        });
    }
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    rows
}

/// Delete the heartbeats of nodes no longer worth listing (see [`NodeState::of`]).
async fn prune(store: &dyn store::Storage) {
    let keys = match store.list(&certs::layout::nodes_prefix()).await {
        Ok(keys) => keys,
        Err(e) => {
            tracing::debug!(error = %e, "heartbeats not listed");
            return;
        }
    };
    node_rows(store, keys).await;
}

/// `fleetgate status --json`.
#[derive(Debug, Serialize)]
struct StatusJson<'a> {
    store: StoreHealth,
    nodes: &'a [NodeRow],
    certificates_needing_work: Vec<CertWork<'a>>,
    certificates_valid: usize,
    locks: Vec<LockRow>,
}

#[derive(Debug, Serialize)]
struct StoreHealth {
    ok: bool,
    latency_ms: Option<u64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct CertWork<'a> {
    id: &'a str,
    state: certs::CertState,
    last_error: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct LockRow {
    name: String,
    owner: String,
    token: String,
    /// Seconds left; negative: expired, not yet taken over.
    expires_in_secs: f64,
}

/// `fleetgate status` (`json`: one JSON document instead of the tables).
pub async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let (store, _) = crate::store_open::open_store(config).await?;
    let mut out = std::io::stdout().lock();

    let started = Instant::now();
    let probe = tokio::time::timeout(
        Duration::from_secs(10),
        store.list(&certs::layout::nodes_prefix()),
    )
    .await;
    let failing = match probe {
        Ok(Ok(keys)) => Ok(keys),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 10 s".to_string()),
    };
    let node_keys = match failing {
        Ok(keys) => keys,
        Err(error) => {
            if json {
                let health = StoreHealth {
                    ok: false,
                    latency_ms: None,
                    error: Some(error),
                };
                serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "store": health }))?;
                writeln!(out)?;
            } else {
                writeln!(out, "store: FAILING: {error}")?;
            }
            anyhow::bail!("the store is not answering");
        }
    };
    let latency_ms = started.elapsed().as_millis() as u64;
    let nodes = node_rows(store.as_ref(), node_keys).await;
    let rows = certs::Manager::statuses(
        store.as_ref(),
        &crate::node_sites::managed_certs(config, store.clone()).await,
    )
    .await;
    let needing_work: Vec<CertWork<'_>> = rows
        .iter()
        .filter(|r| r.state != certs::CertState::Valid)
        .map(|r| CertWork {
            id: r.id.as_str(),
            state: r.state,
            last_error: r.last_error.as_deref(),
        })
        .collect();
    let now_sys = SystemTime::now();
    let locks: Vec<LockRow> = store
        .locks()
        .await?
        .into_iter()
        .map(|lock| LockRow {
            name: lock.name.to_string(),
            owner: lock.owner,
            token: lock.token.to_string(),
            expires_in_secs: match lock.expires.duration_since(now_sys) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            },
        })
        .collect();

    if json {
        let doc = StatusJson {
            store: StoreHealth {
                ok: true,
                latency_ms: Some(latency_ms),
                error: None,
            },
            nodes: &nodes,
            certificates_valid: rows.len() - needing_work.len(),
            certificates_needing_work: needing_work,
            locks,
        };
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }

    writeln!(out, "store: ok ({latency_ms} ms)")?;
    writeln!(out, "\nnodes:")?;
    writeln!(
        out,
        "  {:<24} {:<7} {:>9} {:>6} {:<22} {:<22}",
        "NODE", "STATE", "LAST SEEN", "CERTS", "HTTP", "HTTPS"
    )?;
    if nodes.is_empty() {
        writeln!(out, "  none")?;
    }
    for node in &nodes {
        writeln!(
            out,
            "  {:<24} {:<7} {:>8}s {:>6} {:<22} {:<22}",
            node.node,
            node.state.as_str(),
            node.last_seen_secs_ago,
            node.certificates,
            node.listen_http,
            node.listen_https
        )?;
    }

    writeln!(out, "\ncertificates needing work:")?;
    for row in &needing_work {
        writeln!(
            out,
            "  {:<40} {:<9} {}",
            row.id,
            row.state.to_string(),
            row.last_error.unwrap_or("-")
        )?;
    }
    if needing_work.is_empty() {
        writeln!(out, "  none ({} valid)", rows.len())?;
    }

    writeln!(out, "\nlocks held:")?;
    if locks.is_empty() {
        writeln!(out, "  none")?;
    }
    for lock in locks {
        let left = if lock.expires_in_secs >= 0.0 {
            format!("{:.1}s", lock.expires_in_secs)
        } else {
            "expired".to_string()
        };
        writeln!(
            out,
            "  {:<40} held by {:<24} token {:<14} expires in {left}",
            lock.name, lock.owner, lock.token
        )?;
    }
    Ok(())
}
