//! The PostgreSQL backend against a real server from `initdb` (testkit): the conformance suite,
//! change events between nodes, migrations, and outages (frozen and killed server).
//!
//! nextest runs each test in its own process, so each test starts its own server (~2 s).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use store::conformance;
use store::{
    Change, Error, LockName, PostgresOptions, PostgresStore, PostgresUrl, Storage, StorageKey,
};
use testkit::{Postgres, wait_for_ok};
use tokio::sync::broadcast;

/// The per-call bound used by the outage tests.
const SHORT_TIMEOUT: Duration = Duration::from_secs(1);
/// The bound on waiting for any condition.
const DEADLINE: Duration = Duration::from_secs(30);

/// One server for the test; every call of the closure connects a new store to it (a new node).
async fn postgres_backend() -> impl Fn() -> Arc<dyn Storage> {
    let pg = Postgres::start().await.unwrap();
    let url = pg.url();
    move || {
        let _server = &pg; // Lives as long as the closure.
        // `make` is synchronous; the conformance tests run on a multi-thread runtime.
        let store = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(PostgresStore::connect(&url))
        })
        .unwrap();
        Arc::new(store) as Arc<dyn Storage>
    }
}

store::conformance_tests!(postgres_backend().await);

fn key(s: &str) -> StorageKey {
    StorageKey::new(s).unwrap()
}

async fn connect(pg: &Postgres, timeout: Duration) -> PostgresStore {
    let url: PostgresUrl = pg.url().parse().unwrap();
    PostgresStore::connect_with(&url, PostgresOptions::default().timeout(timeout))
        .await
        .unwrap()
}

/// The next event, skipping over `Lagged`.
async fn next_event(events: &mut broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match events.recv().await {
                Ok(change) => return change,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("an event within the deadline")
}

/// Wait up to `limit` for `want`, ignoring other events.
async fn saw(events: &mut broadcast::Receiver<Change>, want: &Change, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(got) if &got == want => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .is_ok()
}

fn assert_unavailable<T: std::fmt::Debug>(result: store::Result<T>, what: &str) {
    match result {
        Err(e @ Error::Unavailable { .. }) => assert!(e.is_retryable()),
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

/// Puts on one node (plain, fenced) and deletes arrive as events on another node; each node
/// sees its own changes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_other_nodes_once() {
    let pg = Postgres::start().await.unwrap();
    let (a, b) = (
        connect(&pg, SHORT_TIMEOUT * 10).await,
        connect(&pg, SHORT_TIMEOUT * 10).await,
    );
    let (mut on_a, mut on_b) = (a.subscribe(), b.subscribe());
    let k = key("events/certs/a_b.json");

    a.put(&k, b"1").await.unwrap();
    assert_eq!(next_event(&mut on_b).await, Change::Put(k.clone()));
    let lease = a
        .try_lock(&LockName::new("events"), "a", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    a.put_fenced(&k, b"2", &lease).await.unwrap();
    assert_eq!(next_event(&mut on_b).await, Change::Put(k.clone()));
    a.delete(&k).await.unwrap();
    assert_eq!(next_event(&mut on_b).await, Change::Deleted(k.clone()));
    // Deleting a missing key changes nothing and reports nothing.
    a.delete(&k).await.unwrap();

    // A marker from b, delivered to a through LISTEN after every earlier notification: had a
    // received its own changes through LISTEN as well, they would come before it.
    let marker = key("events/marker");
    b.put(&marker, b"m").await.unwrap();
    let mut seen_by_a = Vec::new();
    loop {
        let change = next_event(&mut on_a).await;
        let done = change == Change::Put(marker.clone());
        seen_by_a.push(change);
        if done {
            break;
        }
    }
    assert_eq!(
        seen_by_a,
        vec![
            Change::Put(k.clone()),
            Change::Put(k.clone()),
            Change::Deleted(k.clone()),
            Change::Put(marker.clone()),
        ]
    );
    assert_eq!(next_event(&mut on_b).await, Change::Put(marker));
    a.unlock(&lease).await.unwrap();
}

/// Eight nodes starting at once apply each migration exactly once; connecting again changes
/// nothing; the tables belong to the ordinary role (no superuser needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_concurrently() {
    let pg = Postgres::start().await.unwrap();
    let url: PostgresUrl = pg.url().parse().unwrap();
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = url.clone();
        starting.spawn(async move {
            PostgresStore::connect_with(&url, PostgresOptions::default()).await
        });
    }
    let mut stores = Vec::new();
    while let Some(store) = starting.join_next().await {
        stores.push(store.unwrap().unwrap());
    }
    let admin = pg.admin_client().await.unwrap();
    let versions = |rows: Vec<tokio_postgres::Row>| -> Vec<i32> {
        rows.iter().map(|r| r.get::<_, i32>(0)).collect()
    };
    let q = "SELECT version FROM fleetgate_schema ORDER BY version";
    assert_eq!(versions(admin.query(q, &[]).await.unwrap()), vec![1]);

    let again = PostgresStore::connect(&pg.url()).await.unwrap();
    assert_eq!(versions(admin.query(q, &[]).await.unwrap()), vec![1]);
    let owners: Vec<String> = admin
        .query(
            "SELECT tableowner::text FROM pg_tables WHERE tablename LIKE 'fleetgate\\_%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, vec!["fleetgate"; 3]);

    // Every node works on the one schema.
    let k = key("migrations/value");
    stores[0].put(&k, b"x").await.unwrap();
    assert_eq!(again.get(&k).await.unwrap().as_deref(), Some(&b"x"[..]));
}

/// `list` escapes LIKE's wildcards: `_` in a prefix matches only `_`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_prefix_with_underscore_is_literal() {
    let pg = Postgres::start().await.unwrap();
    let store = connect(&pg, Duration::from_secs(10)).await;
    for k in ["esc/a_b/x", "esc/axb/y", "esc/a_bc/z", "esc/a_b"] {
        store.put(&key(k), b"v").await.unwrap();
    }
    let mut got: Vec<String> = store
        .list(&key("esc/a_b"))
        .await
        .unwrap()
        .iter()
        .map(|k| k.to_string())
        .collect();
    got.sort();
    assert_eq!(got, vec!["esc/a_b", "esc/a_b/x"]);
}

/// A frozen server (SIGSTOP): calls report Unavailable within the timeout instead of hanging;
/// after SIGCONT the same stores work again and events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_gives_unavailable_then_recovers() {
    let pg = Postgres::start().await.unwrap();
    let (a, b) = (
        connect(&pg, SHORT_TIMEOUT).await,
        connect(&pg, SHORT_TIMEOUT).await,
    );
    let k = key("outage/value");
    a.put(&k, b"before").await.unwrap();

    pg.pause().unwrap();
    let limit = SHORT_TIMEOUT + Duration::from_secs(1);
    let started = Instant::now();
    assert_unavailable(a.get(&k).await, "get");
    assert!(
        started.elapsed() < limit,
        "get took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let lock = LockName::new("outage-frozen");
    assert_unavailable(
        a.try_lock(&lock, "a", Duration::from_secs(1)).await,
        "try_lock",
    );
    assert!(
        started.elapsed() < limit,
        "try_lock took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_unavailable(
        PostgresStore::connect_with(
            &pg.url().parse().unwrap(),
            PostgresOptions::default().timeout(SHORT_TIMEOUT),
        )
        .await,
        "connect",
    );
    assert!(
        started.elapsed() < limit,
        "connect took {:?}",
        started.elapsed()
    );

    pg.resume().unwrap();
    let got = wait_for_ok("get after resume", DEADLINE, || async {
        Ok(a.get(&k).await?)
    })
    .await
    .unwrap();
    assert_eq!(got.as_deref(), Some(&b"before"[..]));
    assert_events_flow(&a, &b).await;
    assert_events_flow(&b, &a).await;
}

/// A killed server (SIGKILL, connections reset): calls report Unavailable at once; after a
/// restart on the same data the same stores reconnect, data is there, and the listeners resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_gives_unavailable_then_reconnects() {
    let mut pg = Postgres::start().await.unwrap();
    let (a, b) = (
        connect(&pg, SHORT_TIMEOUT * 2).await,
        connect(&pg, SHORT_TIMEOUT * 2).await,
    );
    let k = key("outage/value");
    a.put(&k, b"before").await.unwrap();
    let lease = a
        .try_lock(&LockName::new("outage-kill"), "a", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();

    pg.kill().await.unwrap();
    let started = Instant::now();
    assert_unavailable(a.get(&k).await, "get");
    assert_unavailable(a.put(&k, b"during").await, "put");
    assert_unavailable(a.renew(&lease, Duration::from_secs(60)).await, "renew");
    assert!(
        started.elapsed() < SHORT_TIMEOUT * 2 * 3 + Duration::from_secs(1),
        "calls took {:?}",
        started.elapsed()
    );

    pg.restart().await.unwrap();
    let got = wait_for_ok("get after restart", DEADLINE, || async {
        Ok(a.get(&k).await?)
    })
    .await
    .unwrap();
    assert_eq!(got.as_deref(), Some(&b"before"[..]));
    // The lease survived the restart with the database, and so did its fencing.
    let renewed = a.renew(&lease, Duration::from_secs(60)).await.unwrap();
    assert_eq!(renewed.token, lease.token);
    let holder = b
        .try_lock(&lease.name, "b", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!((holder.owner.as_str(), holder.token), ("a", lease.token));
    assert_events_flow(&a, &b).await;
    assert_events_flow(&b, &a).await;
    a.unlock(&renewed).await.unwrap();
}

/// Writes on `from` keep being made until `to` reports one of them: its listener is
/// (re)connected. Polls with a deadline; a write made before the listener is back is missed,
/// which the contract allows.
async fn assert_events_flow(from: &PostgresStore, to: &PostgresStore) {
    let events = tokio::sync::Mutex::new(to.subscribe());
    let mut n = 0u32;
    wait_for_ok("an event from another node", DEADLINE, || {
        n += 1;
        let marker = key(&format!("outage/marker-{n}"));
        let events = &events;
        async move {
            from.put(&marker, b"m").await?;
            let mut events = events.lock().await;
            anyhow::ensure!(
                saw(
                    &mut events,
                    &Change::Put(marker),
                    Duration::from_millis(500)
                )
                .await,
                "not seen yet"
            );
            Ok(())
        }
    })
    .await
    .unwrap();
}

/// The schema versions recorded in the database.
async fn schema_versions(pg: &Postgres) -> Vec<i32> {
    let admin = pg.admin_client().await.unwrap();
    admin
        .query("SELECT version FROM fleetgate_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0))
        .collect()
}

/// A lazily connected store is created while the server is down (only the URL is checked),
/// reports Unavailable until the server answers, then applies the migrations on its first
/// successful call and hears other nodes' changes once its listener is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_store_starts_while_the_server_is_down() {
    let mut pg = Postgres::start().await.unwrap();
    pg.kill().await.unwrap();
    let url: PostgresUrl = pg.url().parse().unwrap();
    let started = Instant::now();
    let lazy =
        PostgresStore::connect_lazy_with(&url, PostgresOptions::default().timeout(SHORT_TIMEOUT))
            .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "connect_lazy waited"
    );
    let k = key("lazy/value");
    assert_unavailable(lazy.get(&k).await, "get while down");
    assert_unavailable(lazy.put(&k, b"x").await, "put while down");
    assert_unavailable(
        lazy.try_lock(&LockName::new("lazy"), "a", Duration::from_secs(5))
            .await,
        "try_lock while down",
    );

    pg.restart().await.unwrap();
    wait_for_ok("a put once the server is back", DEADLINE, || async {
        Ok(lazy.put(&k, b"after").await?)
    })
    .await
    .unwrap();
    assert_eq!(lazy.get(&k).await.unwrap().as_deref(), Some(&b"after"[..]));
    assert_eq!(schema_versions(&pg).await, vec![1]);

    let eager = connect(&pg, SHORT_TIMEOUT * 10).await;
    assert_events_flow(&eager, &lazy).await;
    assert_events_flow(&lazy, &eager).await;
}

/// Migrations run once per store: many concurrent first calls wait for one run, and later calls
/// never run them again (dropping the version table afterwards goes unnoticed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_store_migrates_once() {
    let pg = Postgres::start().await.unwrap();
    let lazy = PostgresStore::connect_lazy(&pg.url()).unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let lazy = lazy.clone();
        calls.spawn(async move { lazy.put(&key(&format!("once/{i}")), b"v").await });
    }
    while let Some(result) = calls.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(schema_versions(&pg).await, vec![1]);

    let admin = pg.admin_client().await.unwrap();
    admin
        .batch_execute("DROP TABLE fleetgate_schema")
        .await
        .unwrap();
    lazy.put(&key("once/later"), b"v").await.unwrap();
    assert_eq!(lazy.list(&key("once")).await.unwrap().len(), 17);
    let exists: bool = admin
        .query_one("SELECT to_regclass('fleetgate_schema') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "a later call ran the migrations again");
}

/// Only the URL can make a lazy connect fail.
#[tokio::test]
async fn lazy_connect_rejects_an_invalid_url() {
    for bad in ["mysql://fleetgate@127.0.0.1/db", "not a url"] {
        let err = PostgresStore::connect_lazy(bad).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{bad}: {err:?}");
    }
}

const CHILD_URL_ENV: &str = "STORE_TEST_CHILD_POSTGRES_URL";

/// Three copies of this test binary, each running [`multi_process_child`], increment one
/// counter under one lock in one database: no increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_process_exclusion() {
    let pg = Postgres::start().await.unwrap();
    conformance::run_child_processes("multi_process_child", &[(CHILD_URL_ENV, pg.url())]).await;
    let store: Arc<dyn Storage> = Arc::new(PostgresStore::connect(&pg.url()).await.unwrap());
    conformance::assert_no_child_increment_lost(&store).await;
}

/// The worker of [`multi_process_exclusion`]; does nothing unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_process_child() {
    let (Ok(url), Ok(owner)) = (
        std::env::var(CHILD_URL_ENV),
        std::env::var(conformance::CHILD_OWNER_ENV),
    ) else {
        return;
    };
    let store: Arc<dyn Storage> = Arc::new(PostgresStore::connect(&url).await.unwrap());
    conformance::child_increments(&store, &owner).await;
}

/// `sslmode=require`: every connection (the pool's and the listener's) is TLS, verified against
/// the given root; the wrong root is a clear, non-retryable failure to connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_connects_over_verified_tls() {
    let pg = Postgres::start_tls().await.unwrap();
    let url: PostgresUrl = format!("{}?sslmode=require", pg.url()).parse().unwrap();
    let options = || PostgresOptions::default().timeout(Duration::from_secs(5));
    let a = PostgresStore::connect_with(&url, options().ca_root_pem(pg.tls_root().unwrap()))
        .await
        .unwrap();
    let b = PostgresStore::connect_with(&url, options().ca_root_pem(pg.tls_root().unwrap()))
        .await
        .unwrap();
    a.put(&key("tls/x"), b"over tls").await.unwrap();
    assert_eq!(b.get(&key("tls/x")).await.unwrap().unwrap(), b"over tls");
    assert_events_flow(&a, &b).await;

    // The server sees only TLS connections from the fleetgate role.
    let tls = pg.role_connections_tls().await.unwrap();
    assert!(!tls.is_empty());
    assert!(tls.iter().all(|&t| t), "a plain connection");

    // A root the server's certificate does not chain to: refused, and said so.
    let (other_root, _, _) = testkit::ca_and_leaf(&["elsewhere.test"]);
    let Err(err) = PostgresStore::connect_with(&url, options().ca_root_pem(other_root)).await
    else {
        panic!("an untrusted server must be refused");
    };
    let chain = format!("{err:#}");
    let mut text = chain.clone();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    assert!(text.contains("certificate"), "{text}");
}
