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

#[derive(Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub version: String,
    pub started_at: i64,
    pub last_seen: i64,
    pub listen_http: String,
    pub listen_https: String,
    pub certificates: usize,
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
        loop {
            let beat = Heartbeat {
                node: node.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at,
                last_seen: now(),
                listen_http: http.clone(),
                listen_https: https.clone(),
                certificates: certificates.ids().len(),
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

/// `fleetgate status`.
pub async fn status(config: &Config) -> anyhow::Result<()> {
    let (store, _) = crate::store_open::open_store(config).await?;
    let mut out = std::io::stdout().lock();
    let now = now();

    let started = Instant::now();
    let probe = tokio::time::timeout(
        Duration::from_secs(10),
        store.list(&certs::layout::nodes_prefix()),
    )
    .await;
    let node_keys = match probe {
        Ok(Ok(keys)) => {
            writeln!(out, "store: ok ({} ms)", started.elapsed().as_millis())?;
            keys
        }
        Ok(Err(e)) => {
            writeln!(out, "store: FAILING: {e}")?;
            anyhow::bail!("the store is not answering");
        }
        Err(_) => {
            writeln!(out, "store: FAILING: no answer within 10 s")?;
            anyhow::bail!("the store is not answering");
        }
    };

    writeln!(out, "\nnodes:")?;
    writeln!(
        out,
        "  {:<24} {:<6} {:>9} {:>6} {:<22} {:<22}",
        "NODE", "STATE", "LAST SEEN", "CERTS", "HTTP", "HTTPS"
    )?;
    for key in node_keys {
        let Ok(Some(bytes)) = store.get(&key).await else {
            continue;
        };
        let Ok(beat) = serde_json::from_slice::<Heartbeat>(&bytes) else {
            continue;
        };
        let age = now - beat.last_seen;
        let state = if age <= NODE_GONE_AFTER { "up" } else { "gone" };
        writeln!(
            out,
            "  {:<24} {:<6} {:>8}s {:>6} {:<22} {:<22}",
            beat.node, state, age, beat.certificates, beat.listen_http, beat.listen_https
        )?;
    }

    writeln!(out, "\ncertificates needing work:")?;
    let rows = certs::Manager::statuses(
        store.as_ref(),
        &crate::node_sites::managed_certs(config, store.clone()).await,
    )
    .await;
    let mut any = false;
    for row in rows.iter().filter(|r| r.state != certs::CertState::Valid) {
        any = true;
        writeln!(
            out,
            "  {:<40} {:<9} {}",
            row.id,
            row.state.to_string(),
            row.last_error.as_deref().unwrap_or("-")
        )?;
    }
    if !any {
        writeln!(out, "  none ({} valid)", rows.len())?;
    }

    writeln!(out, "\nlocks held:")?;
    let locks = store.locks().await?;
    if locks.is_empty() {
        writeln!(out, "  none")?;
    }
    for lock in locks {
        let left = lock
            .expires
            .duration_since(SystemTime::now())
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|_| "expired".to_string());
        writeln!(
            out,
            "  {:<40} held by {:<24} token {:<14} expires in {left}",
            lock.name.to_string(),
            lock.owner,
            lock.token.to_string()
        )?;
    }
    Ok(())
}
