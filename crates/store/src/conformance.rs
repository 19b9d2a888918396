//! The conformance suite every [`Storage`] backend must pass (feature `conformance`).
//!
//! Each check takes `make`, which opens a new handle onto one shared store (think: another node).
//! Checks use their own random key prefix and lock names, so they can share a store that is not
//! empty and run concurrently. The quickest way to run them all, one test each:
//!
//! ```ignore
//! fn backend() -> impl Fn() -> Arc<dyn Storage> {
//!     let dir = tempfile::tempdir().unwrap();
//!     move || Arc::new(DirStore::open(dir.path()).unwrap()) as Arc<dyn Storage>
//! }
//! store::conformance_tests!(backend());
//! ```
//!
//! Lease checks use short real TTLs (a few hundred milliseconds) because backends measure time on
//! their own clocks; they poll with deadlines, never sleep a fixed time.

// Test code: a failed check panics with a message, like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use crate::{Change, Error, FencingToken, Lease, LockHolder, LockName, Storage, StorageKey};

/// A lease TTL short enough to wait out in a test.
const SHORT_TTL: Duration = Duration::from_millis(300);
/// A TTL no check outlives.
const LONG_TTL: Duration = Duration::from_secs(30);
/// The bound on every poll for a condition.
const DEADLINE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(10);

/// Runs every check below, in order, against handles from `make`.
pub async fn run_all(make: impl Fn() -> Arc<dyn Storage>) {
    // Keep in step with `conformance_tests!`.
    objects_roundtrip(&make).await;
    overwrite_replaces_whole_value(&make).await;
    missing_keys(&make).await;
    list_is_segment_wise(&make).await;
    concurrent_puts_are_not_torn(&make).await;
    lock_excludes_under_contention(&make).await;
    try_lock_is_not_reentrant(&make).await;
    lease_expires_and_passes_on(&make).await;
    fencing_refuses_stale_holder(&make).await;
    put_many_is_fenced(&make).await;
    renew_extends_lease(&make).await;
    unlock_then_relock_grows_token(&make).await;
    locks_lists_current_leases(&make).await;
    guard_renews_and_releases(&make).await;
    change_events_for_put_and_delete(&make).await;
}

/// One `#[tokio::test]` per check. `$make` is evaluated once per test and must give an
/// `impl Fn() -> Arc<dyn Storage>` onto a store that lives as long as that value.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            objects_roundtrip,
            overwrite_replaces_whole_value,
            missing_keys,
            list_is_segment_wise,
            concurrent_puts_are_not_torn,
            lock_excludes_under_contention,
            try_lock_is_not_reentrant,
            lease_expires_and_passes_on,
            fencing_refuses_stale_holder,
            put_many_is_fenced,
            renew_extends_lease,
            unlock_then_relock_grows_token,
            locks_lists_current_leases,
            guard_renews_and_releases,
            change_events_for_put_and_delete,
        );
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let make = $make;
                $crate::conformance::$check(&make).await;
            }
        )*
    };
}

/// put, get, delete; delete twice.
pub async fn objects_roundtrip(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (store, scope) = (make(), scope("roundtrip"));
    let k = key(&format!("{scope}/a/value.json"));
    store.put(&k, b"hello").await.unwrap();
    assert_eq!(store.get(&k).await.unwrap().as_deref(), Some(&b"hello"[..]));
    // Another handle sees it too.
    assert_eq!(
        make().get(&k).await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    store.put(&k, b"").await.unwrap();
    assert_eq!(
        store.get(&k).await.unwrap().as_deref(),
        Some(&b""[..]),
        "empty value"
    );
    store.delete(&k).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), None);
    store.delete(&k).await.unwrap();
}

/// A shorter value fully replaces a longer one; binary data survives.
pub async fn overwrite_replaces_whole_value(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (store, scope) = (make(), scope("overwrite"));
    let k = key(&format!("{scope}/v"));
    let long: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    store.put(&k, &long).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(long));
    store.put(&k, b"short").await.unwrap();
    assert_eq!(store.get(&k).await.unwrap().as_deref(), Some(&b"short"[..]));
}

/// Missing keys: `get` is `None`, `delete` succeeds, `list` is empty.
pub async fn missing_keys(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (store, scope) = (make(), scope("missing"));
    let k = key(&format!("{scope}/nothing/here"));
    assert_eq!(store.get(&k).await.unwrap(), None);
    store.delete(&k).await.unwrap();
    assert!(store.list(&key(&scope)).await.unwrap().is_empty());
    // Under an existing object, as if it were a directory.
    let leaf = key(&format!("{scope}/leaf"));
    store.put(&leaf, b"x").await.unwrap();
    assert_eq!(
        store
            .get(&key(&format!("{scope}/leaf/below")))
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .list(&key(&format!("{scope}/leaf/below")))
            .await
            .unwrap()
            .is_empty()
    );
}

/// `list` matches whole segments, recurses, and includes the prefix itself when it is a key.
pub async fn list_is_segment_wise(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (store, scope) = (make(), scope("list"));
    for k in ["a/x", "a/y/z", "ab/w", "b", "a-c/v"] {
        store
            .put(&key(&format!("{scope}/{k}")), k.as_bytes())
            .await
            .unwrap();
    }
    let listed = |keys: Vec<StorageKey>| -> BTreeSet<String> {
        keys.iter()
            .map(|k| k.as_str()[scope.len() + 1..].to_string())
            .collect()
    };
    let got = listed(store.list(&key(&format!("{scope}/a"))).await.unwrap());
    assert_eq!(got, set(&["a/x", "a/y/z"]));
    let got = listed(store.list(&key(&scope)).await.unwrap());
    assert_eq!(got, set(&["a/x", "a/y/z", "ab/w", "b", "a-c/v"]));
    let got = listed(store.list(&key(&format!("{scope}/b"))).await.unwrap());
    assert_eq!(
        got,
        set(&["b"]),
        "a prefix that is itself a key lists that key"
    );
    store.delete(&key(&format!("{scope}/a/y/z"))).await.unwrap();
    let got = listed(store.list(&key(&format!("{scope}/a"))).await.unwrap());
    assert_eq!(got, set(&["a/x"]));
}

/// Concurrent writers of large values: every read is exactly one writer's value.
pub async fn concurrent_puts_are_not_torn(make: &dyn Fn() -> Arc<dyn Storage>) {
    const WRITERS: u8 = 8;
    const ROUNDS: usize = 15;
    const SIZE: usize = 256 * 1024;
    let k = key(&format!("{}/big", scope("torn")));
    let mut writers = Vec::new();
    for id in 1..=WRITERS {
        let (store, k) = (make(), k.clone());
        writers.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                store.put(&k, &vec![id; SIZE]).await.unwrap();
            }
        }));
    }
    let reader = make();
    let check = async {
        loop {
            if let Some(v) = reader.get(&k).await.unwrap() {
                assert_eq!(v.len(), SIZE, "torn value: wrong length");
                assert!(v.iter().all(|b| *b == v[0]), "torn value: mixed writers");
            }
            tokio::task::yield_now().await;
        }
    };
    let all_written = async {
        for w in writers {
            w.await.unwrap();
        }
    };
    tokio::select! {
        () = all_written => {}
        _ = check => unreachable!(),
    }
    let last = reader.get(&k).await.unwrap().unwrap();
    assert!(last.len() == SIZE && (1..=WRITERS).contains(&last[0]));
}

/// Increment the decimal counter at `counter` `times` times, each under `lock` and written with
/// `put_fenced`. Panics on any failure. Used by the contention checks, also across processes.
pub async fn increment_locked(
    store: &Arc<dyn Storage>,
    lock: &LockName,
    counter: &StorageKey,
    owner: &str,
    times: usize,
) {
    for _ in 0..times {
        let guard = crate::lock(store, lock, owner, LONG_TTL, Duration::from_secs(120))
            .await
            .unwrap()
            .expect("lock within 120 s");
        let n = read_counter(store, counter).await;
        store
            .put_fenced(counter, (n + 1).to_string().as_bytes(), &guard.lease())
            .await
            .unwrap();
        guard.release().await.unwrap();
    }
}

/// The decimal counter at `key`, 0 when missing.
pub async fn read_counter(store: &Arc<dyn Storage>, key: &StorageKey) -> u64 {
    store
        .get(key)
        .await
        .unwrap()
        .map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap())
}

/// 16 tasks, each on its own handle, increment one counter under one lock: no update is lost
/// and no two tasks ever hold the lock at once.
pub async fn lock_excludes_under_contention(make: &dyn Fn() -> Arc<dyn Storage>) {
    const TASKS: usize = 16;
    const EACH: usize = 8;
    let scope = scope("contention");
    let (name, counter) = (LockName::new(&scope), key(&format!("{scope}/counter")));
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, name, counter, inside) =
            (make(), name.clone(), counter.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("task-{t}");
            for _ in 0..EACH {
                let guard = crate::lock(&store, &name, &owner, LONG_TTL, Duration::from_secs(60))
                    .await
                    .unwrap()
                    .expect("lock within 60 s");
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                let n = read_counter(&store, &counter).await;
                tokio::task::yield_now().await;
                store
                    .put_fenced(&counter, (n + 1).to_string().as_bytes(), &guard.lease())
                    .await
                    .unwrap();
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(read_counter(&make(), &counter).await, (TASKS * EACH) as u64);
}

/// The holder asking again, with the same owner string, is told who holds the lock.
pub async fn try_lock_is_not_reentrant(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (store, name) = (make(), LockName::new(&scope("reentrant")));
    let lease = granted(store.try_lock(&name, "a", LONG_TTL).await);
    let holder = refused(store.try_lock(&name, "a", LONG_TTL).await);
    assert_eq!((holder.owner.as_str(), holder.token), ("a", lease.token));
    assert_eq!(holder.name, name);
    store.unlock(&lease).await.unwrap();
}

/// A lease not renewed expires; then another owner gets it with a larger token.
pub async fn lease_expires_and_passes_on(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (a, b, name) = (make(), make(), LockName::new(&scope("expiry")));
    let lease_a = granted(a.try_lock(&name, "a", SHORT_TTL).await);
    assert!(lease_a.expires > SystemTime::now());
    assert!(lease_a.expires <= SystemTime::now() + SHORT_TTL + Duration::from_secs(1));
    let holder = refused(b.try_lock(&name, "b", LONG_TTL).await);
    assert_eq!((holder.owner.as_str(), holder.token), ("a", lease_a.token));
    let lease_b = poll_lock(&b, &name, "b", LONG_TTL).await;
    assert!(
        SystemTime::now() >= lease_a.expires,
        "granted before the old lease expired"
    );
    assert!(lease_b.token > lease_a.token);
    b.unlock(&lease_b).await.unwrap();
}

/// A holder whose lease expired and was taken cannot write, renew, or release the new grant.
/// A lease that expired without being taken cannot write either.
pub async fn fencing_refuses_stale_holder(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (a, b, scope) = (make(), make(), scope("fencing"));
    let (name, k) = (LockName::new(&scope), key(&format!("{scope}/value")));
    let lease_a = granted(a.try_lock(&name, "a", SHORT_TTL).await);
    a.put_fenced(&k, b"a1", &lease_a).await.unwrap();
    let lease_b = poll_lock(&b, &name, "b", LONG_TTL).await;
    b.put_fenced(&k, b"b", &lease_b).await.unwrap();
    assert_lost(a.put_fenced(&k, b"a2", &lease_a).await, &lease_a);
    assert_lost(a.renew(&lease_a, LONG_TTL).await.map(drop), &lease_a);
    a.unlock(&lease_a).await.unwrap();
    assert_eq!(a.get(&k).await.unwrap().as_deref(), Some(&b"b"[..]));
    refused(a.try_lock(&name, "c", LONG_TTL).await);
    // A forged lease with the holder's token but another owner is refused too.
    let forged = Lease {
        owner: "mallory".into(),
        ..lease_b.clone()
    };
    assert_lost(a.put_fenced(&k, b"m", &forged).await, &forged);
    b.unlock(&lease_b).await.unwrap();

    // Expired, nobody took it: still refused.
    let lease_c = granted(a.try_lock(&name, "c", SHORT_TTL).await);
    wait_past(lease_c.expires).await;
    assert_lost(a.put_fenced(&k, b"c", &lease_c).await, &lease_c);
    assert_lost(a.renew(&lease_c, LONG_TTL).await.map(drop), &lease_c);
    assert_eq!(a.get(&k).await.unwrap().as_deref(), Some(&b"b"[..]));
}

/// `put_many_fenced` writes every object of the batch (in nested folders too), visible through
/// another handle, with a change event each; with a lost lease it writes none.
pub async fn put_many_is_fenced(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (a, b, scope) = (make(), make(), scope("many"));
    let name = LockName::new(&scope);
    let mut events = a.subscribe();
    let batch: Vec<(StorageKey, Vec<u8>)> = (0..50)
        .map(|i| {
            (
                key(&format!("{scope}/d{}/k{i}", i % 3)),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    let lease = granted(a.try_lock(&name, "a", LONG_TTL).await);
    a.put_many_fenced(&[], &lease).await.unwrap();
    a.put_many_fenced(&batch, &lease).await.unwrap();
    for (k, v) in &batch {
        assert_eq!(b.get(k).await.unwrap().as_deref(), Some(&v[..]), "{k}");
    }
    let mut seen = BTreeSet::new();
    while seen.len() < batch.len() {
        match tokio::time::timeout(DEADLINE, events.recv()).await.unwrap() {
            Ok(Change::Put(k)) if k.starts_with(&key(&scope)) => {
                seen.insert(k);
            }
            Ok(_) => {}
            Err(e) => panic!("change events: {e}"),
        }
    }
    a.unlock(&lease).await.unwrap();
    let other = key(&format!("{scope}/after-unlock"));
    let refused = a
        .put_many_fenced(&[(other.clone(), b"x".to_vec())], &lease)
        .await;
    assert_lost(refused, &lease);
    assert_eq!(b.get(&other).await.unwrap(), None);
}

/// `renew` moves expiry forward and keeps the token; the renewed lease outlives the first TTL.
pub async fn renew_extends_lease(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (a, b, scope) = (make(), make(), scope("renew"));
    let (name, k) = (LockName::new(&scope), key(&format!("{scope}/value")));
    let first = granted(a.try_lock(&name, "a", SHORT_TTL).await);
    let renewed = a.renew(&first, LONG_TTL).await.unwrap();
    assert_eq!(
        (renewed.token, &renewed.owner, &renewed.name),
        (first.token, &first.owner, &name)
    );
    assert!(renewed.expires > first.expires);
    wait_past(first.expires).await;
    let holder = refused(b.try_lock(&name, "b", LONG_TTL).await);
    assert_eq!(holder.token, first.token);
    // Both the old and the renewed copy name the current grant (fencing is by token).
    a.put_fenced(&k, b"a", &renewed).await.unwrap();
    a.put_fenced(&k, b"a", &first).await.unwrap();
    a.unlock(&renewed).await.unwrap();
}

/// Unlock frees the lock at once; the next grant, also by another handle, has a larger token;
/// a released lease cannot write.
pub async fn unlock_then_relock_grows_token(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (a, scope) = (make(), scope("relock"));
    let (name, k) = (LockName::new(&scope), key(&format!("{scope}/value")));
    let mut last: Option<FencingToken> = None;
    for round in 0..3 {
        let store = if round == 1 { make() } else { a.clone() };
        let lease = granted(
            store
                .try_lock(&name, &format!("owner-{round}"), LONG_TTL)
                .await,
        );
        assert!(last.is_none_or(|t| lease.token > t), "token did not grow");
        last = Some(lease.token);
        store.unlock(&lease).await.unwrap();
        store.unlock(&lease).await.unwrap();
        assert_lost(store.put_fenced(&k, b"x", &lease).await, &lease);
        assert_lost(store.renew(&lease, LONG_TTL).await.map(drop), &lease);
    }
    assert_eq!(a.get(&k).await.unwrap(), None);
}

/// `locks` lists granted, unexpired leases only.
pub async fn locks_lists_current_leases(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (store, scope) = (make(), scope("locks"));
    let names: Vec<LockName> = (0..3)
        .map(|i| LockName::new(&format!("{scope}-{i}")))
        .collect();
    let held = granted(store.try_lock(&names[0], "a", LONG_TTL).await);
    let released = granted(store.try_lock(&names[1], "b", LONG_TTL).await);
    store.unlock(&released).await.unwrap();
    let short = granted(store.try_lock(&names[2], "c", SHORT_TTL).await);
    let mine = |all: Vec<LockHolder>| -> Vec<LockHolder> {
        all.into_iter()
            .filter(|h| names.contains(&h.name))
            .collect()
    };
    let listed = mine(make().locks().await.unwrap());
    assert_eq!(listed.len(), 2, "{listed:?}");
    let first = listed
        .iter()
        .find(|h| h.name == names[0])
        .expect("held lock listed");
    assert_eq!((first.owner.as_str(), first.token), ("a", held.token));
    wait_past(short.expires).await;
    let listed = mine(store.locks().await.unwrap());
    assert_eq!(
        listed.iter().map(|h| &h.name).collect::<Vec<_>>(),
        vec![&names[0]]
    );
    store.unlock(&held).await.unwrap();
}

/// A [`crate::LeaseGuard`] keeps a short lease alive past many TTLs, `release` frees it, and
/// dropping a guard frees it too (in the background).
pub async fn guard_renews_and_releases(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (a, b, scope) = (make(), make(), scope("guard"));
    let (name, k) = (LockName::new(&scope), key(&format!("{scope}/value")));
    let guard = crate::lock(&a, &name, "a", SHORT_TTL, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let first = guard.lease();
    wait_past(first.expires + SHORT_TTL * 2).await;
    assert!(!guard.is_lost());
    assert_eq!(guard.lease().token, first.token);
    assert!(guard.lease().expires > first.expires);
    assert!(
        crate::lock(&b, &name, "b", LONG_TTL, Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    a.put_fenced(&k, b"a", &guard.lease()).await.unwrap();
    guard.release().await.unwrap();

    let guard = crate::lock(&b, &name, "b", LONG_TTL, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(guard.lease().token > first.token);
    drop(guard);
    let lease = poll_lock(&a, &name, "a", LONG_TTL).await;
    assert!(SystemTime::now() < lease.expires);
    a.unlock(&lease).await.unwrap();

    // A guard whose lease is taken away notices.
    let guard = crate::lock(&a, &name, "a", SHORT_TTL, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    a.unlock(&guard.lease()).await.unwrap();
    within(DEADLINE, guard.lost()).await;
    assert!(guard.is_lost());
}

/// `subscribe` reports this handle's puts (plain and fenced) and deletes.
pub async fn change_events_for_put_and_delete(make: &dyn Fn() -> Arc<dyn Storage>) {
    let (store, scope) = (make(), scope("events"));
    let mut events = store.subscribe();
    let k = key(&format!("{scope}/watched"));
    let mut expect = async |want: Change| {
        within(DEADLINE, async {
            loop {
                match events.recv().await {
                    Ok(got) if got == want => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("event stream ended: {e}"),
                }
            }
        })
        .await;
    };
    store.put(&k, b"1").await.unwrap();
    expect(Change::Put(k.clone())).await;
    let lease = granted(store.try_lock(&LockName::new(&scope), "a", LONG_TTL).await);
    store.put_fenced(&k, b"2", &lease).await.unwrap();
    expect(Change::Put(k.clone())).await;
    store.delete(&k).await.unwrap();
    expect(Change::Deleted(k.clone())).await;
    store.unlock(&lease).await.unwrap();
}

// ---- helpers ----

fn key(text: &str) -> StorageKey {
    StorageKey::new(text).unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A fresh key prefix (also usable as a lock name) for one run of one check.
fn scope(check: &str) -> String {
    format!("conformance/{check}-{:08x}", fastrand::u32(..))
}

fn granted(r: crate::Result<Result<Lease, LockHolder>>) -> Lease {
    match r.unwrap() {
        Ok(lease) => lease,
        Err(holder) => panic!("lock refused, held by {holder:?}"),
    }
}

fn refused(r: crate::Result<Result<Lease, LockHolder>>) -> LockHolder {
    match r.unwrap() {
        Ok(lease) => panic!("lock granted while it should be held: {lease:?}"),
        Err(holder) => holder,
    }
}

fn assert_lost(r: crate::Result<()>, lease: &Lease) {
    match r {
        Err(Error::LeaseLost { name, token }) => {
            assert_eq!((&name, token), (&lease.name, lease.token));
        }
        other => panic!("expected LeaseLost for {lease:?}, got {other:?}"),
    }
}

/// Poll `try_lock` until granted.
async fn poll_lock(store: &Arc<dyn Storage>, name: &LockName, owner: &str, ttl: Duration) -> Lease {
    within(DEADLINE, async {
        loop {
            if let Ok(lease) = store.try_lock(name, owner, ttl).await.unwrap() {
                return lease;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// Wait until the wall clock is past `t` (plus a margin for clock granularity).
async fn wait_past(t: SystemTime) {
    let t = t + Duration::from_millis(20);
    within(DEADLINE, async {
        while SystemTime::now() < t {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
}

async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("condition not met within {limit:?}"),
    }
}

/// The environment variable naming a child's lock owner in [`run_child_processes`].
pub const CHILD_OWNER_ENV: &str = "STORE_TEST_CHILD_OWNER";
/// How many processes [`run_child_processes`] starts, and how many increments each makes.
pub const CHILD_PROCESSES: usize = 3;
pub const CHILD_INCREMENTS: usize = 25;

/// The lock and counter key the multi-process exclusion check uses.
pub fn child_counter() -> (LockName, StorageKey) {
    (LockName::new("counter"), key("counter"))
}

/// A child's work in [`run_child_processes`]: [`CHILD_INCREMENTS`] locked increments of
/// [`child_counter`] as `owner`.
pub async fn child_increments(store: &Arc<dyn Storage>, owner: &str) {
    let (lock, counter) = child_counter();
    increment_locked(store, &lock, &counter, owner, CHILD_INCREMENTS).await;
}

/// After [`run_child_processes`]: every child's increments are in the counter, none lost.
pub async fn assert_no_child_increment_lost(store: &Arc<dyn Storage>) {
    let (_, counter) = child_counter();
    assert_eq!(
        read_counter(store, &counter).await,
        (CHILD_PROCESSES * CHILD_INCREMENTS) as u64
    );
}

/// Multi-process exclusion: re-run the current test binary [`CHILD_PROCESSES`] times as the test
/// `child_test` (which must run [`child_increments`] when [`CHILD_OWNER_ENV`] is set, and
/// nothing otherwise), each with `env` and its own owner, and wait for all of them. The caller
/// then checks the counter with [`assert_no_child_increment_lost`].
pub async fn run_child_processes(child_test: &str, env: &[(&str, String)]) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let children: Vec<_> = (0..CHILD_PROCESSES)
        .map(|i| {
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.args(["--exact", child_test, "--nocapture", "--test-threads=1"])
                .env(CHILD_OWNER_ENV, format!("process-{i}"))
                .kill_on_drop(true);
            for (name, value) in env {
                cmd.env(name, value);
            }
            cmd.output()
        })
        .collect();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(120), child)
            .await
            .expect("a child process finished within 120 s")
            .expect("a child process ran");
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {log}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            log.contains("1 passed"),
            "child did not run the worker: {log}"
        );
    }
}
