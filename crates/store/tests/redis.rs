//! The Redis backend against a real redis-server (one per test: nextest runs each test in its
//! own process): the conformance suite, events between nodes, the documented key layout,
//! exclusion across processes, and outages (frozen, killed and restarted server).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::AsyncCommands as _;
use store::conformance;
use store::{Change, Error, LockName, RedisStore, Storage, StorageKey};
use testkit::RedisServer;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

/// The call timeout of stores in these tests (short, so outages are detected quickly).
const TIMEOUT: Duration = Duration::from_secs(1);
/// How much longer than [`TIMEOUT`] a call may take to report an outage (scheduling slack).
const SLACK: Duration = Duration::from_secs(2);
/// Bound on waiting for a recovery or an event.
const DEADLINE: Duration = Duration::from_secs(30);
const LONG_TTL: Duration = Duration::from_secs(30);

fn key(text: &str) -> StorageKey {
    StorageKey::new(text).unwrap()
}

fn prefix() -> String {
    format!("test-{}:", std::process::id())
}

async fn store(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix(prefix)
        .timeout(TIMEOUT)
        .connect()
        .await
        .unwrap()
}

/// Handles onto one redis-server started for this test, each a lazily connected store with its
/// own connections (like another node).
fn redis_backend() -> impl Fn() -> Arc<dyn Storage> {
    // `conformance_tests!` evaluates this inside its multi-thread runtime.
    let server = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(RedisServer::start())
    })
    .unwrap();
    let prefix = prefix();
    move || {
        let store = RedisStore::builder(server.url())
            .prefix(&prefix)
            .connect_lazy()
            .unwrap();
        Arc::new(store) as Arc<dyn Storage>
    }
}

store::conformance_tests!(redis_backend());

/// Receive until `want` arrives (other events are skipped).
async fn recv_until(rx: &mut broadcast::Receiver<Change>, want: &Change) {
    loop {
        match rx.recv().await {
            Ok(got) if &got == want => return,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => panic!("event stream ended"),
        }
    }
}

/// Keep writing fresh keys through `writer` until one of them reaches `rx`: proves that writes
/// work and that the subscription behind `rx` delivers again.
async fn wait_until_events_flow(
    writer: &RedisStore,
    rx: &mut broadcast::Receiver<Change>,
    scope: &str,
) {
    let deadline = Instant::now() + DEADLINE;
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "events did not flow again within {DEADLINE:?}"
        );
        let probe = key(&format!("{scope}/probe-{i}"));
        if writer.put(&probe, b"probe").await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let want = Change::Put(probe);
        if tokio::time::timeout(Duration::from_millis(500), recv_until(rx, &want))
            .await
            .is_ok()
        {
            return;
        }
    }
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, r: store::Result<T>, started: Instant) {
    let elapsed = started.elapsed();
    assert!(
        matches!(r, Err(Error::Unavailable { .. })),
        "{what}: expected Unavailable, got {r:?}"
    );
    assert!(
        elapsed <= TIMEOUT + SLACK,
        "{what}: took {elapsed:?} to report the outage"
    );
}

/// Every store call while Redis cannot answer reports `Unavailable` within the timeout.
async fn assert_all_unavailable(s: &RedisStore, scope: &str) {
    let (k, name) = (key(&format!("{scope}/during-outage")), LockName::new(scope));
    let t = Instant::now();
    assert_unavailable("get", s.get(&k).await, t);
    let t = Instant::now();
    assert_unavailable("put", s.put(&k, b"x").await, t);
    let t = Instant::now();
    assert_unavailable("list", s.list(&key(scope)).await, t);
    let t = Instant::now();
    assert_unavailable("try_lock", s.try_lock(&name, "a", LONG_TTL).await, t);
    let t = Instant::now();
    assert_unavailable("locks", s.locks().await, t);
    assert!(
        s.get(&k).await.unwrap_err().is_retryable(),
        "outage errors are retryable"
    );
}

/// Poll until `s` answers again.
async fn wait_until_answering(s: &RedisStore) {
    testkit::wait_for_ok("the store to answer again", DEADLINE, || async {
        s.get(&key("recovery/check")).await?;
        Ok(())
    })
    .await
    .unwrap();
}

/// Two stores (two nodes) see each other's writes, plain, fenced and deletes; a store reports
/// its own writes exactly once (not again when they come back over pub/sub).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_other_nodes_once() {
    let server = RedisServer::start().await.unwrap();
    let prefix = prefix();
    let (a, b) = (store(&server, &prefix).await, store(&server, &prefix).await);
    assert!(a.events_connected() && b.events_connected());
    let (mut rx_a, mut rx_b) = (a.subscribe(), b.subscribe());
    let k = key("certs/example.com.json");
    a.put(&k, b"1").await.unwrap();
    let lease = a
        .try_lock(&LockName::new("cert-example.com"), "node-a", LONG_TTL)
        .await
        .unwrap()
        .unwrap();
    a.put_fenced(&k, b"2", &lease).await.unwrap();
    a.delete(&k).await.unwrap();
    a.delete(&k).await.unwrap(); // Missing: no event.
    let expected = [
        Change::Put(k.clone()),
        Change::Put(k.clone()),
        Change::Deleted(k.clone()),
    ];
    for want in &expected {
        let got = tokio::time::timeout(DEADLINE, rx_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, want);
    }
    // B's write travels on the same channel after A's echoes: once it reaches A, any echo of
    // A's own messages would have arrived before it.
    let from_b = key("certs/other.example.json");
    b.put(&from_b, b"b").await.unwrap();
    let mut seen_by_a = Vec::new();
    while seen_by_a.last() != Some(&Change::Put(from_b.clone())) {
        let got = tokio::time::timeout(DEADLINE, rx_a.recv())
            .await
            .unwrap()
            .unwrap();
        seen_by_a.push(got);
    }
    let mut want_a = expected.to_vec();
    want_a.push(Change::Put(from_b.clone()));
    assert_eq!(seen_by_a, want_a);
    assert_eq!(
        tokio::time::timeout(DEADLINE, rx_b.recv())
            .await
            .unwrap()
            .unwrap(),
        Change::Put(from_b),
        "a store reports its own writes"
    );
    a.unlock(&lease).await.unwrap();
}

/// Stores with different prefixes on one Redis share nothing: objects, locks, events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_isolate_clusters() {
    let server = RedisServer::start().await.unwrap();
    let (a, b) = (
        store(&server, "cluster-a:").await,
        store(&server, "cluster-b:").await,
    );
    let mut rx_b = b.subscribe();
    let k = key("certs/x");
    a.put(&k, b"a").await.unwrap();
    assert_eq!(b.get(&k).await.unwrap(), None);
    assert!(b.list(&key("certs")).await.unwrap().is_empty());
    let name = LockName::new("shared-name");
    let lease_a = a.try_lock(&name, "a", LONG_TTL).await.unwrap().unwrap();
    let lease_b = b.try_lock(&name, "b", LONG_TTL).await.unwrap().unwrap();
    assert_eq!(b.locks().await.unwrap().len(), 1);
    // B's own write arrives; A's never did.
    b.put(&k, b"b").await.unwrap();
    let first = tokio::time::timeout(DEADLINE, rx_b.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, Change::Put(k.clone()));
    assert_eq!(a.get(&k).await.unwrap().as_deref(), Some(&b"a"[..]));
    a.unlock(&lease_a).await.unwrap();
    b.unlock(&lease_b).await.unwrap();
}

/// A store with the default prefix and a plain connection to the same server, to look at or
/// tamper with the raw keys.
async fn store_and_raw_connection(
    server: &RedisServer,
) -> (RedisStore, redis::aio::MultiplexedConnection) {
    let store = RedisStore::connect(&server.url(), RedisStore::DEFAULT_PREFIX)
        .await
        .unwrap();
    let raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (store, raw)
}

/// The key layout the module docs promise to operators: plain object keys, an index, a lease
/// hash that expires by itself, a token counter that outlives the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_layout_is_as_documented() {
    let server = RedisServer::start().await.unwrap();
    let (s, mut raw) = store_and_raw_connection(&server).await;
    let k = key("certs/acme/example.com.json");
    s.put(&k, b"pem").await.unwrap();
    let value: Vec<u8> = raw
        .get("fleetgate:obj:certs/acme/example.com.json")
        .await
        .unwrap();
    assert_eq!(value, b"pem");
    let indexed: Vec<String> = raw.zrange("fleetgate:index", 0, -1).await.unwrap();
    assert_eq!(indexed, vec![k.to_string()]);

    let name = LockName::new("cert-example.com");
    let lease = s
        .try_lock(&name, "node-1", LONG_TTL)
        .await
        .unwrap()
        .unwrap();
    let owner: String = raw
        .hget("fleetgate:lease:cert-example.com", "owner")
        .await
        .unwrap();
    assert_eq!(owner, "node-1");
    let pttl: i64 = raw.pttl("fleetgate:lease:cert-example.com").await.unwrap();
    assert!(
        pttl > 0 && pttl <= LONG_TTL.as_millis() as i64,
        "lease key expires by itself: {pttl}"
    );
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        lease.token.0 + 5_000 >= now_ms,
        "tokens are floored at the server's time in ms: {} vs {now_ms}",
        lease.token
    );
    s.unlock(&lease).await.unwrap();
    let exists: bool = raw
        .exists("fleetgate:lease:cert-example.com")
        .await
        .unwrap();
    assert!(!exists, "unlock deletes the lease");
    let token: u64 = raw.get("fleetgate:token:cert-example.com").await.unwrap();
    assert_eq!(token, lease.token.0, "the token counter outlives the lease");

    s.delete(&k).await.unwrap();
    let indexed: Vec<String> = raw.zrange("fleetgate:index", 0, -1).await.unwrap();
    assert!(indexed.is_empty());
}

/// Keys of the wrong type (outside tampering) are `Corrupt`, which is not retried, rather than
/// `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_keys_are_corrupt() {
    let server = RedisServer::start().await.unwrap();
    let (s, mut raw) = store_and_raw_connection(&server).await;
    let () = raw.set("fleetgate:lease:tampered", "junk").await.unwrap();
    let r = s.try_lock(&LockName::new("tampered"), "a", LONG_TTL).await;
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    let () = raw.set("fleetgate:index", "junk").await.unwrap();
    let r = s.list(&key("certs")).await;
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    assert!(!r.unwrap_err().is_retryable());
}

/// Nothing listens on the address: `connect` reports `Unavailable` within its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_is_unavailable_quickly() {
    let addr = testkit::free_addr(testkit::loopback_ip());
    let started = Instant::now();
    let r = RedisStore::builder(format!("redis://{addr}"))
        .timeout(TIMEOUT)
        .connect()
        .await;
    assert_unavailable("connect", r, started);
    assert!(matches!(
        RedisStore::builder("http://nope").connect_lazy(),
        Err(Error::Unavailable { .. })
    ));
}

/// redis-server frozen with SIGSTOP (connections open, no answers): every call reports
/// `Unavailable` within the timeout instead of hanging; after SIGCONT the same stores work
/// and events flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_is_unavailable_then_recovers() {
    let server = RedisServer::start().await.unwrap();
    let prefix = prefix();
    let (a, b) = (store(&server, &prefix).await, store(&server, &prefix).await);
    let mut rx_b = b.subscribe();
    let k = key("frozen/kept");
    a.put(&k, b"before").await.unwrap();

    server.pause().unwrap();
    assert_all_unavailable(&a, "frozen").await;
    server.resume().unwrap();

    wait_until_answering(&a).await;
    assert_eq!(a.get(&k).await.unwrap().as_deref(), Some(&b"before"[..]));
    wait_until_events_flow(&a, &mut rx_b, "frozen").await;
}

/// redis-server killed (SIGKILL) and restarted on the same port without persistence: calls
/// report `Unavailable` quickly while it is down; afterwards the same stores reconnect, a store
/// created during the outage starts working, events flow again, and fencing tokens keep
/// growing although Redis lost its counters (and, as documented, every object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_restarts_and_stores_reconnect() {
    let mut server = RedisServer::start().await.unwrap();
    let prefix = prefix();
    let (a, b) = (store(&server, &prefix).await, store(&server, &prefix).await);
    let mut rx_b = b.subscribe();
    let (k, name) = (key("killed/lost"), LockName::new("killed"));
    a.put(&k, b"before").await.unwrap();
    let before = a.try_lock(&name, "a", LONG_TTL).await.unwrap().unwrap();

    server.kill().await.unwrap();
    assert_all_unavailable(&a, "killed").await;
    // A node starting while Redis is down.
    let late = RedisStore::builder(server.url())
        .prefix(&prefix)
        .timeout(TIMEOUT)
        .connect_lazy()
        .unwrap();
    let mut rx_late = late.subscribe();
    assert!(!late.events_connected());
    server.restart().await.unwrap();

    wait_until_answering(&a).await;
    assert_eq!(
        a.get(&k).await.unwrap(),
        None,
        "no persistence: data is gone"
    );
    // The lease went with the data; fencing still refuses the old grant, and the next grant's
    // token is larger than any before the restart.
    assert!(matches!(
        a.put_fenced(&k, b"stale", &before).await,
        Err(Error::LeaseLost { .. })
    ));
    let after = a.try_lock(&name, "a", LONG_TTL).await.unwrap().unwrap();
    assert!(
        after.token > before.token,
        "{} <= {}",
        after.token,
        before.token
    );
    wait_until_events_flow(&a, &mut rx_b, "killed").await;
    wait_until_events_flow(&a, &mut rx_late, "killed-late").await;
    assert!(late.events_connected());
    a.unlock(&after).await.unwrap();
}

/// With the append-only file (the documented production setting) a restart keeps objects and
/// token counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_only_redis_keeps_data_across_restart() {
    let mut server = RedisServer::builder()
        .append_only(true)
        .start()
        .await
        .unwrap();
    let prefix = prefix();
    let a = store(&server, &prefix).await;
    let (k, name) = (key("durable/value"), LockName::new("durable"));
    let lease = a.try_lock(&name, "a", LONG_TTL).await.unwrap().unwrap();
    a.put_fenced(&k, b"kept", &lease).await.unwrap();

    server.restart().await.unwrap();
    wait_until_answering(&a).await;
    assert_eq!(a.get(&k).await.unwrap().as_deref(), Some(&b"kept"[..]));
    assert_eq!(a.list(&key("durable")).await.unwrap(), vec![k.clone()]);
    // The lease survived too: still held, still fencing.
    let holder = a.try_lock(&name, "b", LONG_TTL).await.unwrap().unwrap_err();
    assert_eq!(holder.token, lease.token);
    a.put_fenced(&k, b"again", &lease).await.unwrap();
    a.unlock(&lease).await.unwrap();
    let next = a.try_lock(&name, "b", LONG_TTL).await.unwrap().unwrap();
    assert!(next.token > lease.token);
}

const CHILD_URL_ENV: &str = "STORE_TEST_REDIS_URL";
const CHILD_PREFIX_ENV: &str = "STORE_TEST_REDIS_PREFIX";

/// Three copies of this test binary, each running [`multi_process_child`], increment one
/// counter under one lock in one Redis: no increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_process_exclusion() {
    let server = RedisServer::start().await.unwrap();
    let prefix = prefix();
    conformance::run_child_processes(
        "multi_process_child",
        &[
            (CHILD_URL_ENV, server.url()),
            (CHILD_PREFIX_ENV, prefix.clone()),
        ],
    )
    .await;
    let store: Arc<dyn Storage> = Arc::new(store(&server, &prefix).await);
    conformance::assert_no_child_increment_lost(&store).await;
}

/// The worker of [`multi_process_exclusion`]; does nothing unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_process_child() {
    let (Ok(url), Ok(prefix), Ok(owner)) = (
        std::env::var(CHILD_URL_ENV),
        std::env::var(CHILD_PREFIX_ENV),
        std::env::var(conformance::CHILD_OWNER_ENV),
    ) else {
        return;
    };
    let store: Arc<dyn Storage> = Arc::new(RedisStore::connect(&url, &prefix).await.unwrap());
    conformance::child_increments(&store, &owner).await;
}

/// `rediss://`: commands and the change subscription go over TLS verified against the given
/// root; a root the server's certificate does not chain to cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_connects_over_verified_tls() {
    let server = RedisServer::builder().tls(true).start().await.unwrap();
    let url = server.tls_url().unwrap();
    let root = server.tls_root().unwrap().to_owned();
    let over_tls = || {
        RedisStore::builder(url.clone())
            .prefix(prefix())
            .timeout(TIMEOUT)
            .ca_root_pem(root.clone())
            .connect()
    };
    let a = over_tls().await.unwrap();
    let b = over_tls().await.unwrap();
    let mut events = b.subscribe();
    a.put(&key("tls/x"), b"over tls").await.unwrap();
    assert_eq!(b.get(&key("tls/x")).await.unwrap().unwrap(), b"over tls");
    wait_until_events_flow(&a, &mut events, "tls").await;

    // The server counts the TLS clients: both stores' command and subscriber connections.
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    let tls_addr = url.trim_start_matches("rediss://");
    let over_tls_port = clients
        .lines()
        .filter(|l| l.contains(&format!(" laddr={tls_addr} ")))
        .count();
    assert!(over_tls_port >= 4, "{clients}");

    let (other_root, _, _) = testkit::ca_and_leaf(&["elsewhere.test"]);
    let refused = RedisStore::builder(url.clone())
        .prefix(prefix())
        .timeout(TIMEOUT)
        .ca_root_pem(other_root)
        .connect()
        .await;
    assert!(
        matches!(refused, Err(Error::Unavailable { .. })),
        "{refused:?}"
    );
}
