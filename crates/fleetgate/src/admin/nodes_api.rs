//! `/v1/nodes`: what `fleetgate status` shows — the store's health, the nodes seen, the
//! certificates needing work and the leases held.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AdminState;
use super::problem::{Problem, kind};
use crate::status::Heartbeat;

/// A node whose heartbeat is older than this is shown as gone (as `fleetgate status` does).
const NODE_GONE_AFTER: i64 = 60;

#[derive(Debug, Serialize)]
struct Nodes {
    store: StoreHealth,
    nodes: Vec<NodeView>,
    certificates_needing_work: Vec<CertWork>,
    locks: Vec<LockView>,
}

#[derive(Debug, Serialize)]
struct StoreHealth {
    ok: bool,
    latency_ms: u64,
}

#[derive(Debug, Serialize)]
struct NodeView {
    node: String,
    /// `up` or `gone`.
    state: &'static str,
    last_seen_secs_ago: i64,
    version: String,
    started_at: i64,
    certificates: usize,
    listen_http: String,
    listen_https: String,
}

#[derive(Debug, Serialize)]
struct CertWork {
    id: String,
    state: certs::CertState,
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct LockView {
    name: String,
    owner: String,
    token: String,
    expires_in_secs: Option<f64>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub async fn list(State(state): State<Arc<AdminState>>) -> Result<Response, Problem> {
    let store = state.store.clone();
    let started = Instant::now();
    let keys = match tokio::time::timeout(
        Duration::from_secs(10),
        store.list(&certs::layout::nodes_prefix()),
    )
    .await
    {
        Ok(Ok(keys)) => keys,
        Ok(Err(e)) => return Err(super::problem::store_unavailable(&e)),
        Err(_) => {
            return Err(Problem::new(
                kind::STORE_UNAVAILABLE,
                "the store did not answer within 10 s",
            ));
        }
    };
    let latency_ms = started.elapsed().as_millis() as u64;
    let now = now();
    let mut nodes = Vec::new();
    for key in keys {
        let Ok(Some(bytes)) = store.get(&key).await else {
            continue;
        };
        let Ok(beat) = serde_json::from_slice::<Heartbeat>(&bytes) else {
            continue;
        };
        let age = now - beat.last_seen;
        nodes.push(NodeView {
            node: beat.node,
            state: if age <= NODE_GONE_AFTER { "up" } else { "gone" },
            last_seen_secs_ago: age,
            version: beat.version,
            started_at: beat.started_at,
            certificates: beat.certificates,
            listen_http: beat.listen_http,
            listen_https: beat.listen_https,
        });
    }
    let entries = state.registry_entries().await?;
    let managed = state.catalog().managed_certs(&entries);
    let rows = state.cert_statuses(&managed).await;
    let certificates_needing_work = rows
        .into_iter()
        .filter(|r| r.state != certs::CertState::Valid)
        .map(|r| CertWork {
            id: r.id,
            state: r.state,
            last_error: r.last_error,
        })
        .collect();
    let locks = store
        .locks()
        .await
        .map_err(|e| super::problem::store_unavailable(&e))?
        .into_iter()
        .map(|lock| LockView {
            name: lock.name.to_string(),
            owner: lock.owner,
            token: lock.token.to_string(),
            expires_in_secs: lock
                .expires
                .duration_since(SystemTime::now())
                .ok()
                .map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
        })
        .collect();
    Ok(Json(Nodes {
        store: StoreHealth {
            ok: true,
            latency_ms,
        },
        nodes,
        certificates_needing_work,
        locks,
    })
    .into_response())
}
