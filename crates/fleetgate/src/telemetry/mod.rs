//! Metrics (issue 14): the Prometheus recorder, what is computed at each scrape, and the
//! recording interface of the request path.
//!
//! Two kinds of metric, rendered one after the other by `GET /metrics` (admin listener):
//! - *events* (orders, challenges answered, store calls, requests) are recorded as they happen
//!   through the `metrics` facade into the process's recorder ([`Telemetry::install`]);
//! - *state* (certificates' not-after and renewal state, leases held, event lag) is read at
//!   each scrape into a recorder made for that scrape ([`Telemetry::render`]), so a certificate
//!   or lease that is gone is gone from the next scrape.
//!
//! The request path's series (requests, their durations, upstream response times) are counted
//! apart, in per-thread shards (`tally`), and rendered by [`edge::EdgeMetrics::render`] after
//! the recorder's: the facade's shared handles cost the HTTP redirect 6-7 % of its throughput.
//!
//! Layers: `tally` (sharded counters and histograms) -> `edge` (the request path's recorders);
//! `timed` (the store, timed), `lag` (event lag probes), `edge` -> this file (names, recorder,
//! scrape).

pub mod edge;
mod lag;
mod tally;
mod timed;

pub use lag::EventLag;
pub use timed::TimedStore;

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

pub const NOT_AFTER: &str = "fleetgate_certificate_not_after_seconds";
pub const RENEWAL_STATE: &str = "fleetgate_certificate_renewal_state";
pub const ORDERS: &str = certs::acme::METRIC_ORDERS;
pub const ORDER_DURATION: &str = certs::acme::METRIC_ORDER_DURATION;
pub const CHALLENGES_ANSWERED: &str = "fleetgate_acme_challenges_answered_total";
pub const STORE_OP_DURATION: &str = "fleetgate_store_operation_duration_seconds";
pub const STORE_ERRORS: &str = "fleetgate_store_errors_total";
pub const STORE_EVENT_LAG: &str = "fleetgate_store_event_lag_seconds";
pub const LEASES_HELD: &str = "fleetgate_leases_held";
pub const NODE_LAST_HEARD: &str = "fleetgate_node_last_heard_seconds";
pub const HTTP_REQUESTS: &str = "fleetgate_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "fleetgate_http_request_duration_seconds";
pub const TLS_HANDSHAKES: &str = "fleetgate_tls_handshakes_total";
pub const CONNECTIONS_OPEN: &str = "fleetgate_connections_open";
pub const UPSTREAM_UP: &str = "fleetgate_upstream_up";
pub const UPSTREAM_DURATION: &str = "fleetgate_upstream_response_seconds";
pub const BUILD_INFO: &str = "fleetgate_build_info";

/// Histogram buckets (seconds). Orders take seconds to minutes; store calls and requests
/// milliseconds.
const ORDER_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];
const FAST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long a scrape waits for the store (leases, renewal states) before leaving them out.
const SCRAPE_STORE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the renewal states read from the store serve scrapes: they cost two reads per
/// certificate, and several Prometheus servers (or a fast one) must not multiply that.
const STATES_FRESH_FOR: Duration = Duration::from_secs(10);

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Renewal states as read at an instant.
type StatesRead = (std::time::Instant, Arc<Vec<certs::CertStatus>>);

/// The process's recorder (installed once) and the event lag.
#[derive(Debug, Clone)]
pub struct Telemetry {
    handle: PrometheusHandle,
    /// The request path's recorders (the edge's observer).
    pub edge: Arc<edge::EdgeMetrics>,
    pub lag: Arc<EventLag>,
    /// The renewal states last read, and when.
    states: Arc<tokio::sync::Mutex<Option<StatesRead>>>,
}

fn builder() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ORDER_DURATION.into()), ORDER_BUCKETS)?
        .set_buckets(FAST_BUCKETS)?)
}

impl Telemetry {
    /// Install the process-wide recorder (once per process: `fleetgate run` calls it).
    pub fn install() -> anyhow::Result<Telemetry> {
        let handle = builder()?.install_recorder()?;
        describe();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Ok(Telemetry {
            handle,
            edge: Arc::new(edge::EdgeMetrics::new()),
            lag: Arc::new(EventLag::default()),
            states: Arc::default(),
        })
    }

    /// The renewal states of `managed`: read from the store at most every
    /// [`STATES_FRESH_FOR`] (a scrape that waits on another's read shares its result).
    async fn states(
        &self,
        manager: &certs::Manager,
        store: &dyn store::Storage,
        managed: &[certs::ManagedCert],
    ) -> Arc<Vec<certs::CertStatus>> {
        let mut cached = self.states.lock().await;
        if let Some((at, states)) = &*cached
            && at.elapsed() < STATES_FRESH_FOR
            && states.len() == managed.len()
        {
            return states.clone();
        }
        let states = Arc::new(manager.statuses_served(store, managed).await);
        *cached = Some((std::time::Instant::now(), states.clone()));
        states
    }

    /// Fold histogram samples into buckets regularly, so memory stays bounded without scrapes.
    pub fn spawn_upkeep(&self, shutdown: CancellationToken) {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        });
    }

    /// The text of one scrape: the recorded events, then the state read now from `manager`
    /// (what this node serves) and `store` (renewal states, leases).
    /// `node`: this node's name (its lease count is shown even when 0).
    pub async fn render(
        &self,
        manager: &certs::Manager,
        store: &dyn store::Storage,
        node: &str,
    ) -> String {
        let mut out = self.handle.render();
        self.edge.render(&mut out);
        out.push_str(&self.render_state(manager, store, node).await);
        out
    }

    async fn render_state(
        &self,
        manager: &certs::Manager,
        store: &dyn store::Storage,
        node: &str,
    ) -> String {
        let mut live = manager.live_statuses();
        live.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let managed: Vec<certs::ManagedCert> = live.iter().map(|(c, _)| c.clone()).collect();
        let (states, locks, beats) = tokio::join!(
            tokio::time::timeout(SCRAPE_STORE_TIMEOUT, self.states(manager, store, &managed)),
            tokio::time::timeout(SCRAPE_STORE_TIMEOUT, store.locks()),
            tokio::time::timeout(SCRAPE_STORE_TIMEOUT, heartbeats(store)),
        );
        let recorder = PrometheusBuilder::new().build_recorder();
        ::metrics::with_local_recorder(&recorder, || {
            describe_gauge!(
                NOT_AFTER,
                ::metrics::Unit::Seconds,
                "Not-after (Unix time) of the certificate this node serves"
            );
            describe_gauge!(
                RENEWAL_STATE,
                "1 for the certificate's current state (pending, valid, renewing, failing, expired)"
            );
            describe_gauge!(
                LEASES_HELD,
                "Leases held in the store, by holder (the whole fleet, as this node sees it)"
            );
            describe_gauge!(
                STORE_EVENT_LAG,
                ::metrics::Unit::Seconds,
                "Age of a peer's change when this node heard it; grows while the store cannot be written"
            );
            for (cert, status) in &live {
                if let Some((_, not_after)) = &status.serving {
                    gauge!(NOT_AFTER, "cert" => cert.id.clone(), "source" => cert.source.kind().to_string())
                        .set(*not_after as f64);
                }
            }
            if let Ok(states) = &states {
                for row in states.iter() {
                    for state in [
                        certs::CertState::Pending,
                        certs::CertState::Valid,
                        certs::CertState::Renewing,
                        certs::CertState::Failing,
                        certs::CertState::Expired,
                    ] {
                        let value = if row.state == state { 1.0 } else { 0.0 };
                        gauge!(RENEWAL_STATE, "cert" => row.id.clone(), "state" => state.to_string())
                            .set(value);
                    }
                }
            }
            if let Ok(Ok(locks)) = &locks {
                let mut held = std::collections::BTreeMap::<&str, f64>::new();
                held.insert(node, 0.0);
                for lock in locks {
                    *held.entry(lock.owner.as_str()).or_default() += 1.0;
                }
                for (node, n) in held {
                    gauge!(LEASES_HELD, "node" => node.to_string()).set(n);
                }
            }
            describe_gauge!(
                NODE_LAST_HEARD,
                ::metrics::Unit::Seconds,
                "Unix time of each node's last heartbeat in the store (every 10 s while it runs)"
            );
            if let Ok(beats) = &beats {
                for beat in beats {
                    gauge!(NODE_LAST_HEARD, "node" => beat.node.clone()).set(beat.last_seen as f64);
                }
            }
            if let Some(lag) = self.lag.seconds() {
                gauge!(STORE_EVENT_LAG).set(lag);
            }
        });
        recorder.handle().render()
    }
}

/// Every node's last heartbeat, as the store holds them (unreadable ones left out).
async fn heartbeats(store: &dyn store::Storage) -> Vec<crate::status::Heartbeat> {
    let Ok(keys) = store.list(&certs::layout::nodes_prefix()).await else {
        return Vec::new();
    };
    let mut beats = Vec::with_capacity(keys.len());
    for key in keys {
        if let Ok(Some(bytes)) = store.get(&key).await
            && let Ok(beat) = serde_json::from_slice(&bytes)
        {
            beats.push(beat);
        }
    }
    beats
}

/// HELP lines of the event metrics.
fn describe() {
    describe_counter!(ORDERS, "ACME orders placed by this node, by CA and outcome");
    describe_histogram!(
        ORDER_DURATION,
        ::metrics::Unit::Seconds,
        "Time from placing an ACME order to its certificate or failure"
    );
    describe_counter!(
        CHALLENGES_ANSWERED,
        "ACME challenge requests this node answered, by type"
    );
    describe_histogram!(
        STORE_OP_DURATION,
        ::metrics::Unit::Seconds,
        "Duration of each storage call, by backend and operation"
    );
    describe_counter!(
        STORE_ERRORS,
        "Storage calls that failed (a lost lease is not counted)"
    );
    describe_counter!(TLS_HANDSHAKES, "TLS handshakes, by result");
    describe_gauge!(CONNECTIONS_OPEN, "Client connections open, by listener");
    describe_gauge!(
        UPSTREAM_UP,
        "1 while the balancer counts the upstream healthy"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version in a label");
}

/// Count one challenge request answered (`type`: `http-01` or `tls-alpn-01`).
pub fn challenge_answered(kind: &'static str) {
    ::metrics::counter!(CHALLENGES_ANSWERED, "type" => kind).increment(1);
}
