//! The directory backend: the conformance suite, file-level properties, and exclusion across
//! processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use store::conformance;
use store::{Change, DirStore, LockName, Storage, StorageKey};

/// Handles onto one DirStore in a temporary directory that lives as long as the closure.
fn dir_backend() -> impl Fn() -> Arc<dyn Storage> {
    let dir = tempfile::tempdir().unwrap();
    move || Arc::new(DirStore::open(dir.path()).unwrap()) as Arc<dyn Storage>
}

store::conformance_tests!(dir_backend());

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn files_are_private_and_no_temporaries_remain() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = DirStore::open(&root).unwrap();
    let key = StorageKey::new("certs/acme-x/example.com.json").unwrap();
    store.put(&key, b"secret").await.unwrap();
    store.put(&key, b"secret2").await.unwrap();
    let lease = store
        .try_lock(&LockName::new("cert-x"), "me", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    store.put_fenced(&key, b"secret3", &lease).await.unwrap();

    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("objects/certs/acme-x")), 0o700);
    assert_eq!(
        mode(&root.join("objects/certs/acme-x/example.com.json")),
        0o600
    );
    assert_eq!(mode(&root.join("locks/cert-x.lease")), 0o600);
    let in_dir: Vec<_> = std::fs::read_dir(root.join("objects/certs/acme-x"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        in_dir,
        vec!["example.com.json"],
        "temporary files left behind"
    );
    assert!(
        !root.join("locks/cert-x.mutex").exists(),
        "mutex left behind"
    );

    // Deleting the last object prunes its now-empty directories.
    store.delete(&key).await.unwrap();
    assert!(!root.join("objects/certs").exists());
    assert!(root.join("objects").is_dir());
}

#[tokio::test]
async fn tokens_survive_reopening_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let name = LockName::new("reopen");
    let ttl = Duration::from_secs(30);
    let first = {
        let store = DirStore::open(dir.path()).unwrap();
        let lease = store.try_lock(&name, "a", ttl).await.unwrap().unwrap();
        store.unlock(&lease).await.unwrap();
        lease
    };
    let store = DirStore::open(dir.path()).unwrap();
    let second = store.try_lock(&name, "a", ttl).await.unwrap().unwrap();
    assert!(second.token > first.token);
    let record = std::fs::read_to_string(dir.path().join("locks/reopen.lease")).unwrap();
    assert!(record.contains("\"owner\":\"a\""), "{record}");
}

#[tokio::test]
async fn stale_mutex_of_a_crashed_process_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path()).unwrap();
    let mutex = dir.path().join("locks/crashed.mutex");
    let file = std::fs::File::create(&mutex).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    drop(file);
    let lease = store
        .try_lock(&LockName::new("crashed"), "a", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(lease.is_ok());
    assert!(!mutex.exists());
}

#[tokio::test]
async fn busy_fresh_mutex_is_respected_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path()).unwrap();
    let mutex = dir.path().join("locks/busy.mutex");
    std::fs::write(&mutex, b"someone-else").unwrap();
    let attempt = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .try_lock(&LockName::new("busy"), "a", Duration::from_secs(5))
                .await
        }
    });
    // The attempt waits while the fresh mutex exists...
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while tokio::time::Instant::now() < deadline {
        assert!(!attempt.is_finished(), "went past a fresh mutex");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and proceeds once it is removed.
    std::fs::remove_file(&mutex).unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap()
        .unwrap();
    assert!(lease.unwrap().is_ok());
}

#[tokio::test]
async fn key_that_is_also_a_prefix_is_refused_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path()).unwrap();
    let (a, ab) = (
        StorageKey::new("a").unwrap(),
        StorageKey::new("a/b").unwrap(),
    );
    store.put(&a, b"1").await.unwrap();
    assert!(store.put(&ab, b"2").await.is_err());
    assert_eq!(store.get(&a).await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(store.get(&ab).await.unwrap(), None);
}

const CHILD_DIR_ENV: &str = "STORE_TEST_CHILD_DIR";

/// Three copies of this test binary, each running [`multi_process_child`], increment one
/// counter under one lock in one directory: no increment is lost.
#[tokio::test]
async fn multi_process_exclusion() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_child_processes(
        "multi_process_child",
        &[(CHILD_DIR_ENV, dir.path().display().to_string())],
    )
    .await;
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(dir.path()).unwrap());
    conformance::assert_no_child_increment_lost(&store).await;
}

/// The worker of [`multi_process_exclusion`]; does nothing unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_process_child() {
    let (Some(dir), Some(owner)) = (
        std::env::var_os(CHILD_DIR_ENV),
        std::env::var(conformance::CHILD_OWNER_ENV).ok(),
    ) else {
        return;
    };
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(dir).unwrap());
    conformance::child_increments(&store, &owner).await;
}

/// Two handles on one directory are two processes as far as the journal is concerned: a write
/// through one reaches the other's subscribers without waiting for a resync.
#[tokio::test(flavor = "multi_thread")]
async fn other_handles_hear_writes_through_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn Storage> = Arc::new(DirStore::open(dir.path()).unwrap());
    let b: Arc<dyn Storage> = Arc::new(DirStore::open(dir.path()).unwrap());
    let mut events = b.subscribe();
    // The follower starts at the journal's end; give it a moment to open it by writing until
    // an event arrives (each attempt is a real write).
    let key = StorageKey::new("certs/x.json").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        a.put(&key, b"v").await.unwrap();
        match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
            Ok(Ok(Change::Put(k))) if k == key => break,
            Ok(Ok(other)) => panic!("unexpected event {other:?}"),
            Ok(Err(e)) => panic!("channel error {e}"),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "no event through the journal"
            ),
        }
    }
    a.delete(&key).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Change::Deleted(key));
}
