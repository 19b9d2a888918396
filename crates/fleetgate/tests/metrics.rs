//! `GET /metrics` on a real fleet: three nodes sharing PostgreSQL behind HAProxy, certificates
//! from Pebble. Every node's not-after for every certificate equals the one it serves; the
//! orders counted by the fleet are exactly the certificates Pebble issued; `promtool check
//! metrics` accepts every scrape; a killed database shows in the store error counter and the
//! event lag.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use common::cluster::{Backend, Cluster};
use common::scrape::{Sample, parse, promtool_check, scrape, sum};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_issuance_on_three_nodes_and_a_killed_store() -> Result<()> {
    let mut pg = testkit::Postgres::start().await?;
    let cluster = Cluster::builder()
        .backend(Backend::Postgres(pg.url()))
        .sites(3, 2)
        .admin()
        .start()
        .await?;
    let cluster = &cluster;
    common::cluster::wait_all_served(cluster, Duration::from_secs(120))
        .await
        .with_context(|| cluster.logs())?;
    let ids: Vec<String> = cluster.sites.iter().map(|s| s[0].clone()).collect();
    let ids = &ids;

    // Every node reports, for every certificate, the not-after of the one it serves, and it
    // is valid; the event lag is known (each node has heard its peers' probes).
    let scrapes = testkit::wait_for_ok(
        "every node's metrics show every certificate",
        Duration::from_secs(30),
        || async move {
            let mut scrapes = Vec::new();
            for (i, node) in cluster.nodes.iter().enumerate() {
                let text = scrape(cluster.admin_addr(i).unwrap()).await?;
                let samples = parse(&text);
                for id in ids {
                    let served =
                        testkit::tls_handshake(node.https, id, &cluster.root, &[b"http/1.1"])
                            .await?;
                    let served = served.leaf.not_after.duration_since(UNIX_EPOCH)?.as_secs();
                    let reported = sum(
                        &samples,
                        "fleetgate_certificate_not_after_seconds",
                        &[("cert", id), ("source", "acme")],
                    );
                    anyhow::ensure!(
                        reported == served as f64,
                        "node {i}, {id}: not-after {reported}, served {served}"
                    );
                    let valid = sum(
                        &samples,
                        "fleetgate_certificate_renewal_state",
                        &[("cert", id), ("state", "valid")],
                    );
                    anyhow::ensure!(valid == 1.0, "node {i}, {id}: not valid");
                }
                anyhow::ensure!(
                    samples
                        .iter()
                        .any(|s| s.name == "fleetgate_store_event_lag_seconds"),
                    "node {i}: no event lag yet"
                );
                let heard = samples
                    .iter()
                    .filter(|x| x.name == "fleetgate_node_last_heard_seconds")
                    .count();
                anyhow::ensure!(
                    heard == cluster.nodes.len(),
                    "node {i}: {heard} nodes heard"
                );
                scrapes.push(text);
            }
            Ok(scrapes)
        },
    )
    .await?;

    // The orders the fleet counted are exactly the certificates Pebble issued: one per site.
    let samples: Vec<Vec<Sample>> = scrapes.iter().map(|t| parse(t)).collect();
    let issued: f64 = samples
        .iter()
        .map(|s| sum(s, "fleetgate_acme_orders_total", &[("outcome", "issued")]))
        .sum();
    let failed: f64 = samples
        .iter()
        .map(|s| sum(s, "fleetgate_acme_orders_total", &[("outcome", "failed")]))
        .sum();
    let pebble_issued = cluster.ca_issued_serials().len();
    assert_eq!(issued, pebble_issued as f64, "orders counted vs Pebble's");
    assert_eq!(pebble_issued, ids.len());
    assert_eq!(failed, 0.0);
    let durations: f64 = samples
        .iter()
        .map(|s| sum(s, "fleetgate_acme_order_duration_seconds_count", &[]))
        .sum();
    assert_eq!(durations, issued, "one duration per order");
    // Pebble validates each challenge three times, through the balancer: the fleet answered
    // at least that many.
    let answered: f64 = samples
        .iter()
        .map(|s| {
            sum(
                s,
                "fleetgate_acme_challenges_answered_total",
                &[("type", "http-01")],
            )
        })
        .sum();
    assert!(
        answered >= (3 * 2 * ids.len()) as f64,
        "challenges answered: {answered}"
    );
    for (i, s) in samples.iter().enumerate() {
        assert!(
            sum(
                s,
                "fleetgate_store_operation_duration_seconds_count",
                &[("backend", "postgres"), ("op", "get")]
            ) > 0.0,
            "node {i}: no timed store calls"
        );
        assert!(
            s.iter().any(|x| x.name == "fleetgate_leases_held"),
            "node {i}: no leases_held"
        );
        assert_eq!(
            sum(
                s,
                "fleetgate_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
        let lag = sum(s, "fleetgate_store_event_lag_seconds", &[]);
        assert!((0.0..2.0).contains(&lag), "node {i}: event lag {lag}");
    }
    for text in &scrapes {
        promtool_check(text)?;
    }
    eprintln!("--- node 0's scrape:\n{}", scrapes[0]);

    // Kill the database: the error counter climbs and the event lag grows past the probe
    // interval on every node (while each keeps serving).
    let errors_before: Vec<f64> = samples
        .iter()
        .map(|s| {
            sum(
                s,
                "fleetgate_store_errors_total",
                &[("backend", "postgres")],
            )
        })
        .collect();
    let errors_before = &errors_before;
    pg.kill().await?;
    testkit::wait_for_ok(
        "store errors and event lag on every node",
        Duration::from_secs(60),
        || async move {
            for (i, before) in errors_before.iter().enumerate() {
                let text = scrape(cluster.admin_addr(i).unwrap()).await?;
                let s = parse(&text);
                let errors = sum(
                    &s,
                    "fleetgate_store_errors_total",
                    &[("backend", "postgres")],
                );
                let lag = sum(&s, "fleetgate_store_event_lag_seconds", &[]);
                anyhow::ensure!(
                    errors > *before && lag > 10.0,
                    "node {i}: errors {errors} (before {before}), lag {lag}"
                );
            }
            Ok(())
        },
    )
    .await?;
    for node in &cluster.nodes {
        common::served_serial(node.https, &ids[0], &cluster.root).await?;
    }
    Ok(())
}
