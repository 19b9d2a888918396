//! Faults in a running cluster (the harness is `common::cluster`): a lock holder killed or frozen
//! mid-order, the shared store down under load, the CA down, the CA rejecting nonces.
//!
//! Orders are caught mid-way by freezing Pebble (SIGSTOP) before a site is added: whichever node
//! takes the new certificate's lease then waits on the CA, holding the lease, for as long as the
//! test needs. Leases last 3 s here (`storage.lease_ttl`), so a lost holder is replaced quickly.

mod common;

use std::time::Duration;

use anyhow::Context;
use common::cluster::{
    Backend, Cluster, HandshakeLoad, SerialWatch, cert_lock, check_cluster, issued_serials,
    normalize_serial, wait_all_served, wait_served,
};
use testkit::{Postgres, RedisServer, Signal, wait_for, wait_for_ok};

/// How long a certificate may take to be issued and served everywhere.
const ISSUE_DEADLINE: Duration = Duration::from_secs(60);
/// How long to wait for a node to take a lease (a peer's lease must expire first: 3 s, and peers
/// look every 2 s).
const LEASE_DEADLINE: Duration = Duration::from_secs(20);
/// How long a failed certificate is watched for a retry that should not come yet.
const BACKOFF_WINDOW: Duration = Duration::from_secs(12);
/// The site added while the CA is frozen.
const LATE: &str = "late.cluster.test";

/// A small cluster with short leases, every certificate issued and served.
async fn small_cluster(backend: Backend) -> anyhow::Result<Cluster> {
    let cluster = Cluster::builder()
        .backend(backend)
        .sites(2, 1)
        .lease_ttl("3s")
        .resync_interval("5s")
        .start()
        .await?;
    wait_all_served(&cluster, ISSUE_DEADLINE).await?;
    Ok(cluster)
}

/// The serial of the certificate `id` stored in PostgreSQL (a `CertBundle`, `meta.serial` hex).
async fn pg_stored_serial(pg: &Postgres, id: &str) -> anyhow::Result<Option<String>> {
    let client = pg.admin_client().await?;
    let sql = format!("SELECT value FROM fleetgate_objects WHERE key LIKE 'certs/%/{id}.json'");
    let Some(row) = client.query_opt(&sql, &[]).await? else {
        return Ok(None);
    };
    let bytes: Vec<u8> = row.try_get(0)?;
    let bundle: serde_json::Value = serde_json::from_slice(&bytes)?;
    let serial = bundle["meta"]["serial"]
        .as_str()
        .context("no meta.serial in the stored bundle")?;
    Ok(Some(normalize_serial(serial)))
}

/// With Pebble frozen, add [`LATE`] and wait until a node holds its lease (waiting on the CA):
/// that node's index and its fencing token.
async fn freeze_ca_and_catch_holder(cluster: &mut Cluster) -> anyhow::Result<(usize, u64)> {
    cluster.pebble.pebble_process().stop()?;
    cluster.add_site(&[LATE])?;
    let lock = cert_lock(LATE);
    let cluster = &*cluster;
    let (owner, token) = wait_for_ok(
        "a node to take the new certificate's lease",
        LEASE_DEADLINE,
        || async {
            cluster
                .lock_holder(0, &lock)
                .await?
                .context("nobody holds it yet")
        },
    )
    .await?;
    let holder = cluster
        .node_named(&owner)
        .with_context(|| format!("no node named {owner}"))?;
    Ok((holder, token))
}

/// The holder of a certificate's lease dies (SIGKILL) while it waits on the CA: once the lease
/// expires another node takes it and obtains the certificate, which every surviving node serves.
/// The dead node's order never reached the CA's finalize step, so the CA issued one certificate.
#[tokio::test(flavor = "multi_thread")]
async fn killed_lock_holder_is_replaced_mid_order() -> anyhow::Result<()> {
    let mut cluster = small_cluster(Backend::Dir).await?;
    let issued_before = cluster.ca_issued_serials().len();
    let (holder, _) = freeze_ca_and_catch_holder(&mut cluster).await?;
    cluster.crash(holder).await?;
    cluster.pebble.pebble_process().cont()?;

    let survivors: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != holder).collect();
    wait_served(
        &cluster,
        &survivors,
        &[LATE.to_string()],
        &cluster.root,
        ISSUE_DEADLINE,
    )
    .await?;
    let issued = cluster.log_lines(&["certificate issued", LATE]);
    assert_eq!(issued.len(), 1, "one node issued it: {issued:#?}");
    let holder_ip = cluster.nodes[holder].ip.to_string();
    assert!(
        !issued[0].starts_with(&holder_ip),
        "the dead holder issued it? {issued:#?}"
    );
    let stored = cluster
        .stored_serial(LATE)?
        .context("the certificate is stored")?;
    assert_eq!(
        issued_serials(&issued[0], LATE),
        vec![stored],
        "the stored certificate is the one issued"
    );
    let failures = cluster.log_lines(&["obtaining the certificate failed"]);
    assert!(
        failures.is_empty(),
        "the new holder succeeded on its first attempt, but:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        cluster.ca_issued_serials().len(),
        issued_before + 1,
        "one certificate from the CA"
    );
    Ok(())
}

/// The holder of a certificate's lease freezes (SIGSTOP) past its TTL; another node takes the
/// lease. Thawed (SIGCONT), the old holder finishes its order, but the store refuses its write
/// (fencing). Every node ends up serving the certificate the new holder stored, and no node ever
/// serves the refused one.
#[tokio::test(flavor = "multi_thread")]
async fn frozen_lock_holder_cannot_overwrite_after_its_lease() -> anyhow::Result<()> {
    // PostgreSQL: a process frozen in the middle of a dir-backend lock operation holds that
    // lock's mutex file until it goes stale (5 s), which stalls every node's lock calls on it and
    // makes the frozen node's own pending write fail; one SQL statement holds nothing for a
    // frozen client.
    let pg = Postgres::start().await?;
    let mut cluster = small_cluster(Backend::Postgres(pg.url())).await?;
    let (holder, token) = freeze_ca_and_catch_holder(&mut cluster).await?;
    cluster.nodes[holder].signal(Signal::Stop)?;
    cluster.pebble.pebble_process().cont()?;

    let lock = cert_lock(LATE);
    let holder_ip = cluster.nodes[holder].ip.to_string();
    let (taker, taker_token) =
        wait_for_ok("another node to take the lease", LEASE_DEADLINE, || async {
            match cluster.lock_holder(0, &lock).await? {
                Some((owner, t)) if owner != holder_ip => Ok((owner, t)),
                other => anyhow::bail!("held by {other:?}"),
            }
        })
        .await?;
    assert!(
        taker_token > token,
        "tokens grow: {token} then {taker_token}"
    );
    // Thaw the old holder at once: it is still in the balancer's rotation and the new holder's
    // validation requests may reach it.
    cluster.nodes[holder].signal(Signal::Cont)?;
    let watch = SerialWatch::start(cluster.https_addrs(), LATE, &cluster.root);

    let refused = "could not store the new certificate; discarding it";
    wait_for(
        "the old holder's late write to be refused",
        ISSUE_DEADLINE,
        || {
            let log = cluster.nodes[holder].log();
            async move { log.contains(refused).then_some(()) }
        },
    )
    .await
    .with_context(|| cluster.logs())?;
    let taker = cluster.node_named(&taker).context("the taker is a node")?;
    let stored = wait_for_ok(
        "the new holder's certificate in the store",
        ISSUE_DEADLINE,
        || async { pg_stored_serial(&pg, LATE).await?.context("not stored yet") },
    )
    .await?;
    let late_serials = issued_serials(&cluster.nodes[holder].log(), LATE);
    let taker_serials = issued_serials(&cluster.nodes[taker].log(), LATE);
    assert_eq!(
        taker_serials,
        vec![stored.clone()],
        "the stored certificate is the new holder's"
    );
    assert_eq!(
        late_serials.len(),
        1,
        "the old holder obtained one: {late_serials:?}"
    );
    assert_ne!(late_serials[0], stored);

    watch
        .wait_serving(&cluster.https_addrs(), &stored, ISSUE_DEADLINE)
        .await?;
    let seen = watch.stop().await;
    assert!(
        !seen.contains(&late_serials[0]),
        "a node served the refused certificate: {seen:?}"
    );
    assert_eq!(
        seen,
        [stored].into_iter().collect(),
        "only the stored certificate was ever served"
    );

    let certs = cluster.nodes[holder].command(&["certs"]);
    let table = String::from_utf8_lossy(&certs.stdout);
    let row = table
        .lines()
        .find(|l| l.contains(LATE))
        .with_context(|| format!("no row for {LATE}: {table}"))?;
    assert!(
        row.contains("valid"),
        "the certificate is valid, whoever wrote last: {table}"
    );
    Ok(())
}

/// Pebble rejects half of all valid nonces (`badNonce`): every certificate is still obtained on
/// its first attempt, with one order finalized per certificate (`check_cluster`).
#[tokio::test(flavor = "multi_thread")]
async fn issuance_survives_bad_nonces() -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .sites(6, 2)
        .nonce_reject(50)
        .start()
        .await?;
    check_cluster(&cluster).await?;
    let pebble_log = cluster.pebble.pebble_log();
    assert!(
        pebble_log.contains("reject 50% of good nonces"),
        "{pebble_log}"
    );
    // instant-acme sends a request at most 3 times, so one request in 8 fails with badNonce
    // there; an order makes about ten. fleetgate sends such a request again (`refused our nonce
    // again` in its debug log, a few times per run), without which most orders here would fail.
    Ok(())
}

/// Attempts to obtain `LATE` logged so far, cluster-wide.
fn failed_attempts(cluster: &Cluster) -> Vec<String> {
    cluster.log_lines(&["obtaining the certificate failed", &format!("cert={LATE}")])
}

/// The CA goes away (Pebble killed): serving the certificates already obtained is unaffected,
/// and the certificate added meanwhile is tried once and then backs off for about a minute,
/// cluster-wide, instead of being retried by node after node. The CA comes back having forgotten
/// everything (a new Pebble process); a reload (SIGHUP) makes the failing node try again at
/// once: it registers a new account and obtains the certificate, which every node serves.
#[tokio::test(flavor = "multi_thread")]
async fn ca_outage_keeps_serving_and_backs_off() -> anyhow::Result<()> {
    let mut cluster = small_cluster(Backend::Dir).await?;
    let names = cluster
        .names()
        .into_iter()
        .map(|n| (n, cluster.root.clone()))
        .collect();
    let load = HandshakeLoad::start(cluster.https_addrs(), names, 2);
    cluster.pebble.pebble_process().kill()?;
    cluster.add_site(&[LATE])?;

    let first = wait_for("a failed attempt", ISSUE_DEADLINE, || {
        let first = failed_attempts(&cluster).into_iter().next();
        async move { first }
    })
    .await?;
    let retry_in: u64 = first
        .split("retry_in_secs=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("retry_in_secs in the log line")?
        .parse()?;
    assert!(
        retry_in >= 54,
        "backs off about a minute (60 s -10 % jitter): {first}"
    );
    // Every node looks again within the window (peers every 2 s while it is leased, every
    // resync_interval = 5 s otherwise): none may try again.
    let window = std::time::Instant::now();
    while window.elapsed() < BACKOFF_WINDOW {
        let attempts = failed_attempts(&cluster);
        assert_eq!(
            attempts.len(),
            1,
            "retried within {:?}:\n{}",
            window.elapsed(),
            attempts.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    cluster.pebble.restart().await?;
    let new_root = cluster.pebble.issuing_root_pem().await?;
    cluster.reload()?;
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    wait_served(
        &cluster,
        &all,
        &[LATE.to_string()],
        &new_root,
        ISSUE_DEADLINE,
    )
    .await?;
    let report = load.stop().await;
    assert!(
        report.failures.is_empty(),
        "handshakes failed during the CA outage:\n{}",
        report.failures.join("\n")
    );
    assert!(report.ok > 100, "only {} handshakes", report.ok);

    let replaced =
        cluster.log_lines(&["no longer knows the stored ACME account; registered a new one"]);
    assert_eq!(
        replaced.len(),
        1,
        "one node registered a new account:\n{}",
        cluster.logs()
    );
    assert_eq!(
        failed_attempts(&cluster).len(),
        1,
        "the retry after the reload succeeded"
    );
    Ok(())
}

/// How long the shared store stays down in the outage tests.
const STORE_OUTAGE: Duration = Duration::from_secs(20);
/// The site added once the store is back.
const AFTER: &str = "after.cluster.test";

/// The shared store of an outage test and how it goes down.
enum SharedStore {
    /// Frozen (SIGSTOP): connections stay open and nothing answers, so every call runs into
    /// fleetgate's timeout (10 s): a hung server, or a network partition.
    FrozenPostgres(Postgres),
    /// Killed (SIGKILL) and later restarted on the same address and data (append-only file):
    /// connections are refused.
    KilledRedis(RedisServer),
}

impl SharedStore {
    fn backend(&self) -> Backend {
        match self {
            SharedStore::FrozenPostgres(pg) => Backend::Postgres(pg.url()),
            SharedStore::KilledRedis(redis) => Backend::Redis(redis.url()),
        }
    }

    async fn down(&mut self) -> anyhow::Result<()> {
        match self {
            SharedStore::FrozenPostgres(pg) => pg.pause(),
            SharedStore::KilledRedis(redis) => redis.kill().await,
        }
    }

    async fn up(&mut self) -> anyhow::Result<()> {
        match self {
            SharedStore::FrozenPostgres(pg) => pg.resume(),
            SharedStore::KilledRedis(redis) => redis.restart().await,
        }
    }
}

/// The shared store goes down for [`STORE_OUTAGE`] while a loop of TLS handshakes for the
/// certificates already obtained runs against every node: none fails. Meanwhile one node is
/// restarted: it serves every certificate from its local cache. Once the store is back, a site
/// added by a reload is ordered and served by every node, and nothing else was ordered again.
async fn store_outage(mut store: SharedStore) -> anyhow::Result<()> {
    let mut cluster = Cluster::builder()
        .backend(store.backend())
        .sites(4, 2)
        .resync_interval("5s")
        .start()
        .await?;
    wait_all_served(&cluster, ISSUE_DEADLINE).await?;
    let issued_before = cluster.ca_issued_serials().len();
    let names = cluster.names();
    let load = HandshakeLoad::start(
        cluster.https_addrs(),
        names
            .iter()
            .map(|n| (n.clone(), cluster.root.clone()))
            .collect(),
        2,
    );

    let restarted = 1;
    let ids: Vec<String> = cluster.sites.iter().map(|site| site[0].clone()).collect();
    wait_for(
        "the local cache to hold every certificate",
        ISSUE_DEADLINE,
        || {
            let all = ids.iter().all(|id| cluster.cached(restarted, id));
            async move { all.then_some(()) }
        },
    )
    .await?;
    store.down().await?;
    let down = std::time::Instant::now();
    load.exclude(restarted).await?;
    cluster.nodes[restarted].stop().await?;
    cluster.nodes[restarted].start().await?;
    let started = std::time::Instant::now();
    wait_served(&cluster, &[restarted], &names, &cluster.root, STORE_OUTAGE).await?;
    let to_serve = started.elapsed();
    load.include(restarted);
    let log = cluster.nodes[restarted].log();
    assert!(
        log.contains("serving the locally cached certificate"),
        "{log}"
    );
    // Sooner than the store's timeout: it does not wait for the store before serving.
    assert!(
        to_serve < Duration::from_secs(5),
        "the restarted node took {to_serve:?} to serve from its cache"
    );
    anyhow::ensure!(
        down.elapsed() < STORE_OUTAGE,
        "the restart took the whole outage ({:?})",
        down.elapsed()
    );
    // The rest of the outage, under load.
    while down.elapsed() < STORE_OUTAGE {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    store.up().await?;

    cluster.add_site(&[AFTER])?;
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    wait_served(
        &cluster,
        &all,
        &[AFTER.to_string()],
        &cluster.root,
        ISSUE_DEADLINE,
    )
    .await?;
    let report = load.stop().await;
    assert!(
        report.failures.is_empty(),
        "handshakes failed during the store outage:\n{}",
        report.failures.join("\n")
    );
    assert!(report.ok > 100, "only {} handshakes", report.ok);
    assert_eq!(
        cluster.ca_issued_serials().len(),
        issued_before + 1,
        "only the new site was ordered:\n{}",
        cluster.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_frozen_for_20s_under_load() -> anyhow::Result<()> {
    store_outage(SharedStore::FrozenPostgres(Postgres::start().await?)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_for_20s_under_load() -> anyhow::Result<()> {
    let redis = RedisServer::builder().append_only(true).start().await?;
    store_outage(SharedStore::KilledRedis(redis)).await
}
