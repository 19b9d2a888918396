//! The directory backend: one node, or several nodes sharing a local or NFS directory.
//!
//! ```text
//! <root>/objects/<key>          one file per object, mode 0600, replaced by rename
//! <root>/locks/<name>.lease     JSON {owner, token, expires (unix ms), released}
//! <root>/locks/<name>.mutex     short-lived, created with O_EXCL around every lease change
//! ```
//!
//! Every write goes to a temporary file (`.tmp~<random>`, a name no key can have) in the target's
//! directory, is fsynced, renamed over the target, and the directory is fsynced: readers see the
//! old or the new bytes, and a crash leaves one of them. `put_many_fenced` writes and syncs all
//! its temporary files first, then takes the lock's mutex once for the lease check and the
//! renames, and syncs each directory once: a batch costs one sync per object instead of two.
//!
//! **Locks.** `flock`/`fcntl` locks are unreliable on NFS and die with the process that holds the
//! descriptor, so a lease is a file and changes to it are serialised by a mutex file created with
//! `O_EXCL` (atomic on local filesystems and on NFSv3+). The mutex is held only for one
//! read-modify-write of the lease file (and, for [`Storage::put_fenced`], the object write), a few
//! milliseconds. The lease file is never deleted: a released lease keeps its token, so the next
//! grant gets a larger one, also across restarts.
//!
//! **Change events** come from this process's writes at once, and from other processes sharing the
//! directory through the change journal (`<root>/changes.log`, see `journal.rs`) within about
//! 200 ms. Subscribers still resync periodically: the journal is best effort.
//!
//! Lease expiry and mutex staleness compare wall clocks: nodes sharing a directory need clocks in
//! sync (NTP) to well under a second.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    Change, Error, FencingToken, Lease, LockHolder, LockName, Result, Storage, StorageKey,
};

/// A mutex file older than this is taken to belong to a crashed (or hung) process and is broken.
///
/// Trade-off: a process that dies holding the mutex blocks its lock name for this long; a
/// process that holds it longer than this (a stalled NFS server, a paused VM) may lose it to a
/// breaker. Holders shrink that risk by refusing to commit after [`MUTEX_MAX_HOLD`], and a breaker
/// only ever deletes a file that is itself older than this, so two breakers cannot delete a
/// fresh mutex between them. What remains is a holder frozen between that check and its rename.
const MUTEX_STALE_AFTER: Duration = Duration::from_secs(5);
/// A holder that has held the mutex this long does not commit its write (it reports
/// [`Error::Unavailable`]): by then a peer may be about to break the mutex.
const MUTEX_MAX_HOLD: Duration = Duration::from_secs(2);
/// How long to wait for a busy mutex before reporting [`Error::Unavailable`]; longer than
/// [`MUTEX_STALE_AFTER`] so that a crashed holder's mutex is broken within one call.
const MUTEX_WAIT: Duration = Duration::from_secs(8);
/// Pause between attempts to create a busy mutex file (jittered up to twice this).
const MUTEX_POLL: Duration = Duration::from_millis(2);
/// The default bound on every call ([`DirStore::with_timeout`]).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Buffered change events per subscriber; a slower subscriber gets `Lagged` and must resync.
/// A node issuing certificates at full speed writes about 2,500 objects a second, and a
/// subscriber that lags reads everything again (the site registry: 100,000 sites), so the
/// buffer holds several seconds of that (about 1 MB).
const EVENT_CAPACITY: usize = 16 * 1024;

/// Storage in a directory. Cheap to clone; clones share the change channel.
#[derive(Clone)]
pub struct DirStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    objects: PathBuf,
    locks: PathBuf,
    events: Arc<broadcast::Sender<Change>>,
    /// Tells this process's journal lines from other processes'.
    instance: String,
    follower: std::sync::Once,
    timeout: Duration,
}

impl std::fmt::Debug for DirStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirStore")
            .field("objects", &self.inner.objects)
            .field("locks", &self.inner.locks)
            .finish_non_exhaustive()
    }
}

impl DirStore {
    /// Open (creating with mode 0700 where missing) the store rooted at `path`.
    ///
    /// This does blocking file I/O; call it at startup, not on a busy runtime thread.
    pub fn open(path: impl Into<PathBuf>) -> Result<DirStore> {
        let root = path.into();
        let objects = root.join("objects");
        let locks = root.join("locks");
        for dir in [&root, &objects, &locks] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_err(dir, e))?;
        }
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let instance = format!("{}-{:016x}", std::process::id(), fastrand::u64(..));
        Ok(DirStore {
            inner: Arc::new(Inner {
                root,
                objects,
                locks,
                events: Arc::new(events),
                instance,
                follower: std::sync::Once::new(),
                timeout: DEFAULT_TIMEOUT,
            }),
        })
    }

    /// Bound every call by `timeout` (default 30 s); a call that takes longer reports
    /// [`Error::Unavailable`]. The file operation itself runs to completion (or failure) in the
    /// background, so the store is left unchanged or with the complete write.
    pub fn with_timeout(self, timeout: Duration) -> DirStore {
        let inner = Inner {
            root: self.inner.root.clone(),
            objects: self.inner.objects.clone(),
            locks: self.inner.locks.clone(),
            events: self.inner.events.clone(),
            instance: self.inner.instance.clone(),
            follower: std::sync::Once::new(),
            timeout,
        };
        DirStore {
            inner: Arc::new(inner),
        }
    }

    /// Run `op` on the blocking pool, bounded by the timeout. The whole operation (including
    /// taking and releasing a lock mutex) runs there, so dropping the returned future never
    /// leaves a mutex file behind or a write half done.
    async fn blocking<T, F>(&self, what: String, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || op(&inner));
        match tokio::time::timeout(self.inner.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(Error::Unavailable {
                what: format!("{what}: blocking task failed"),
                source: Some(Box::new(join)),
            }),
            Err(_) => Err(Error::Unavailable {
                what: format!("{what}: timed out after {:?}", self.inner.timeout),
                source: None,
            }),
        }
    }

    fn notify(&self, change: Change) {
        // An error only means nobody is subscribed.
        let _ = self.inner.events.send(change);
    }

    /// Journal a change for other processes (runs on the blocking pool, inside the write's
    /// closure, so the line is appended after the write is durable).
    fn journal(inner: &Inner, change: &Change) {
        crate::journal::append(&inner.root, &inner.instance, change);
    }
}

#[async_trait::async_trait]
impl Storage for DirStore {
    async fn put(&self, key: &StorageKey, value: &[u8]) -> Result<()> {
        let (k, value) = (key.clone(), value.to_vec());
        self.blocking(format!("put {key}"), move |inner| {
            let path = inner.object_path(&k);
            write_atomic(&path, &value, None).map_err(|e| io_err(&path, e))?;
            DirStore::journal(inner, &Change::Put(k));
            Ok(())
        })
        .await?;
        self.notify(Change::Put(key.clone()));
        Ok(())
    }

    async fn put_fenced(&self, key: &StorageKey, value: &[u8], lease: &Lease) -> Result<()> {
        let (k, value, lease) = (key.clone(), value.to_vec(), lease.clone());
        self.blocking(
            format!("put {key} under lock {}", lease.name),
            move |inner| {
                let mutex = inner.lock_mutex(&lease.name)?;
                let lease_path = inner.lease_path(&lease.name);
                let record = read_lease(&lease_path)?;
                if !is_current(record.as_ref(), &lease, unix_millis(SystemTime::now())) {
                    return Err(lease_lost(&lease));
                }
                let path = inner.object_path(&k);
                write_atomic(&path, &value, Some(&mutex)).map_err(|e| io_err(&path, e))?;
                drop(mutex);
                DirStore::journal(inner, &Change::Put(k));
                Ok(())
            },
        )
        .await?;
        self.notify(Change::Put(key.clone()));
        Ok(())
    }

    async fn put_many_fenced(
        &self,
        objects: &[(StorageKey, Vec<u8>)],
        lease: &Lease,
    ) -> Result<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let (batch, lease) = (objects.to_vec(), lease.clone());
        let (committed, result) = self
            .blocking(
                format!("put {} objects under lock {}", objects.len(), lease.name),
                move |inner| {
                    let (committed, result) = put_many(inner, &batch, &lease);
                    for (key, _) in &batch[..committed] {
                        DirStore::journal(inner, &Change::Put(key.clone()));
                    }
                    Ok((committed, result))
                },
            )
            .await?;
        for (key, _) in &objects[..committed] {
            self.notify(Change::Put(key.clone()));
        }
        result
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>> {
        let k = key.clone();
        self.blocking(format!("get {key}"), move |inner| {
            let path = inner.object_path(&k);
            match fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if is_absent(&e) => Ok(None),
                Err(e) => Err(io_err(&path, e)),
            }
        })
        .await
    }

    async fn delete(&self, key: &StorageKey) -> Result<()> {
        let k = key.clone();
        let removed = self
            .blocking(format!("delete {key}"), move |inner| {
                let path = inner.object_path(&k);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if is_absent(&e) => return Ok(false),
                    Err(e) => return Err(io_err(&path, e)),
                }
                inner.prune_empty_dirs(&path);
                DirStore::journal(inner, &Change::Deleted(k));
                Ok(true)
            })
            .await?;
        if removed {
            self.notify(Change::Deleted(key.clone()));
        }
        Ok(())
    }

    async fn list(&self, prefix: &StorageKey) -> Result<Vec<StorageKey>> {
        let p = prefix.clone();
        self.blocking(format!("list {prefix}"), move |inner| {
            let path = inner.object_path(&p);
            let mut out = Vec::new();
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => out.push(p),
                Ok(meta) if meta.is_dir() => walk(&path, p.as_str(), &mut out)?,
                Ok(_) => {}
                Err(e) if is_absent(&e) => {}
                Err(e) => return Err(io_err(&path, e)),
            }
            Ok(out)
        })
        .await
    }

    async fn try_lock(
        &self,
        name: &LockName,
        owner: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lease, LockHolder>> {
        let (name, owner) = (name.clone(), owner.to_string());
        self.blocking(format!("lock {name}"), move |inner| {
            let mutex = inner.lock_mutex(&name)?;
            let path = inner.lease_path(&name);
            let now = unix_millis(SystemTime::now());
            let previous = read_lease(&path)?;
            if let Some(held) = previous.as_ref().filter(|r| r.is_held(now)) {
                return Ok(Err(LockHolder {
                    name,
                    owner: held.owner.clone(),
                    token: FencingToken(held.token),
                    expires: from_unix_millis(held.expires),
                }));
            }
            let token = previous
                .map_or(0, |r| r.token)
                .checked_add(1)
                .ok_or_else(|| Error::Corrupt {
                    key: path.display().to_string(),
                    detail: "fencing token overflow".into(),
                })?;
            let record = LeaseRecord {
                owner,
                token,
                expires: now.saturating_add(duration_millis(ttl)),
                released: false,
            };
            write_lease(&path, &record, &mutex)?;
            Ok(Ok(record.into_lease(name)))
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let lease = lease.clone();
        self.blocking(format!("renew lock {}", lease.name), move |inner| {
            let mutex = inner.lock_mutex(&lease.name)?;
            let path = inner.lease_path(&lease.name);
            let now = unix_millis(SystemTime::now());
            let Some(mut record) = read_lease(&path)?.filter(|r| r.is_grant_of(&lease, now)) else {
                return Err(lease_lost(&lease));
            };
            record.expires = now.saturating_add(duration_millis(ttl));
            write_lease(&path, &record, &mutex)?;
            Ok(record.into_lease(lease.name))
        })
        .await
    }

    async fn unlock(&self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.blocking(format!("unlock {}", lease.name), move |inner| {
            let mutex = inner.lock_mutex(&lease.name)?;
            let path = inner.lease_path(&lease.name);
            let now = unix_millis(SystemTime::now());
            // Releasing a lost lease succeeds and must not touch the current holder's grant.
            let Some(mut record) = read_lease(&path)?
                .filter(|r| !r.released && r.token == lease.token.0 && r.owner == lease.owner)
            else {
                return Ok(());
            };
            record.released = true;
            record.expires = record.expires.min(now);
            write_lease(&path, &record, &mutex)
        })
        .await
    }

    async fn locks(&self) -> Result<Vec<LockHolder>> {
        self.blocking("list locks".to_string(), |inner| {
            let now = unix_millis(SystemTime::now());
            let entries = fs::read_dir(&inner.locks).map_err(|e| io_err(&inner.locks, e))?;
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| io_err(&inner.locks, e))?;
                let file_name = entry.file_name();
                let Some(name) = file_name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".lease"))
                    .filter(|n| StorageKey::new(*n).is_ok())
                else {
                    continue;
                };
                // Lease files are replaced by rename, so reading without the mutex is safe.
                if let Some(record) = read_lease(&entry.path())?.filter(|r| r.is_held(now)) {
                    out.push(LockHolder {
                        name: LockName::new(name),
                        owner: record.owner,
                        token: FencingToken(record.token),
                        expires: from_unix_millis(record.expires),
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        let receiver = self.inner.events.subscribe();
        let inner = &self.inner;
        inner.follower.call_once(|| {
            crate::journal::spawn(
                inner.root.clone(),
                inner.instance.clone(),
                Arc::downgrade(&inner.events),
            );
        });
        receiver
    }
}

impl Inner {
    fn object_path(&self, key: &StorageKey) -> PathBuf {
        // A StorageKey has only non-empty segments other than `.`/`..`: a safe relative path.
        self.objects.join(key.as_str())
    }

    fn lease_path(&self, name: &LockName) -> PathBuf {
        self.locks.join(format!("{name}.lease"))
    }

    fn lock_mutex(&self, name: &LockName) -> Result<MutexFile> {
        MutexFile::acquire(self.locks.join(format!("{name}.mutex")))
    }

    /// Remove the now-empty directories above a deleted object, up to `objects/`. A concurrent
    /// `put` into one of them either keeps it non-empty or retries its directory creation.
    fn prune_empty_dirs(&self, removed: &Path) {
        let mut dir = removed.parent();
        while let Some(d) = dir.filter(|d| *d != self.objects && d.starts_with(&self.objects)) {
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// Collect the object keys under `dir`, which holds the objects under `prefix`.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<StorageKey>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // Pruned by a concurrent delete.
        Err(e) if is_absent(&e) => return Ok(()),
        Err(e) => return Err(io_err(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let file_name = entry.file_name();
        // Temporary files (`.tmp~…`) and anything else that is not a key segment are skipped.
        let Some(key) = file_name
            .to_str()
            .and_then(|seg| StorageKey::new(format!("{prefix}/{seg}")).ok())
        else {
            continue;
        };
        let file_type = entry.file_type().map_err(|e| io_err(&entry.path(), e))?;
        if file_type.is_dir() {
            walk(&entry.path(), key.as_str(), out)?;
        } else if file_type.is_file() {
            out.push(key);
        }
    }
    Ok(())
}

/// The lease file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    /// The token of the latest grant; kept after release so that tokens keep growing.
    token: u64,
    /// Unix time in milliseconds.
    expires: u64,
    #[serde(default)]
    released: bool,
}

impl LeaseRecord {
    fn is_held(&self, now_ms: u64) -> bool {
        !self.released && self.expires > now_ms
    }

    fn is_grant_of(&self, lease: &Lease, now_ms: u64) -> bool {
        self.is_held(now_ms) && self.token == lease.token.0 && self.owner == lease.owner
    }

    fn into_lease(self, name: LockName) -> Lease {
        Lease {
            name,
            owner: self.owner,
            token: FencingToken(self.token),
            expires: from_unix_millis(self.expires),
        }
    }
}

fn is_current(record: Option<&LeaseRecord>, lease: &Lease, now_ms: u64) -> bool {
    record.is_some_and(|r| r.is_grant_of(lease, now_ms))
}

fn read_lease(path: &Path) -> Result<Option<LeaseRecord>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Corrupt {
            key: path.display().to_string(),
            detail: e.to_string(),
        })
}

fn write_lease(path: &Path, record: &LeaseRecord, mutex: &MutexFile) -> Result<()> {
    let bytes = serde_json::to_vec(record).map_err(|e| Error::Corrupt {
        key: path.display().to_string(),
        detail: e.to_string(),
    })?;
    write_atomic(path, &bytes, Some(mutex)).map_err(|e| io_err(path, e))
}

/// An `O_EXCL`-created file whose existence means "someone is changing this lease".
struct MutexFile {
    path: PathBuf,
    nonce: String,
    acquired: Instant,
}

impl MutexFile {
    fn acquire(path: PathBuf) -> Result<MutexFile> {
        let nonce = format!("{}-{:016x}", std::process::id(), fastrand::u64(..));
        let deadline = Instant::now() + MUTEX_WAIT;
        loop {
            let created = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            match created {
                Ok(mut file) => {
                    let acquired = Instant::now();
                    // The nonce lets `drop` tell its own file from a successor's. If writing it
                    // failed the file is empty, and an empty file is what `drop` looks for.
                    let nonce = match file.write_all(nonce.as_bytes()) {
                        Ok(()) => nonce,
                        Err(_) => String::new(),
                    };
                    return Ok(MutexFile {
                        path,
                        nonce,
                        acquired,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => break_if_stale(&path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // The locks directory was removed under us: recreate it.
                    if let Some(dir) = path.parent() {
                        create_dirs(dir).map_err(|e| io_err(dir, e))?;
                    }
                }
                Err(e) => return Err(io_err(&path, e)),
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable {
                    what: format!("lock mutex {} busy for {MUTEX_WAIT:?}", path.display()),
                    source: None,
                });
            }
            std::thread::sleep(MUTEX_POLL + MUTEX_POLL.mul_f64(fastrand::f64()));
        }
    }

    /// Whether the holder may still commit a write (see [`MUTEX_MAX_HOLD`]).
    fn check_fresh(&self) -> io::Result<()> {
        if self.acquired.elapsed() > MUTEX_MAX_HOLD {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "held lock mutex {} too long; not committing",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for MutexFile {
    fn drop(&mut self) {
        // Remove the file only while it is still ours: if a peer broke it and took it since, it
        // is theirs now. (Check and remove are two steps; see MUTEX_STALE_AFTER.)
        let mut content = String::new();
        let ours = fs::File::open(&self.path)
            .and_then(|mut f| f.read_to_string(&mut content))
            .is_ok_and(|_| content == self.nonce);
        if ours && let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove lock mutex");
        }
    }
}

/// Break the mutex at `path` if it is older than [`MUTEX_STALE_AFTER`]: move it aside under a
/// unique name, and delete it only if the file moved aside is itself stale; a fresh one (taken
/// by someone between our check and our rename) is linked back, which fails harmlessly if yet
/// another mutex exists by then.
fn break_if_stale(path: &Path) {
    if !is_stale(path) {
        return;
    }
    let aside = path.with_extension(format!("mutex.stale~{:016x}", fastrand::u64(..)));
    if fs::rename(path, &aside).is_err() {
        return; // Gone already: released or broken by someone else.
    }
    if is_stale(&aside) {
        tracing::warn!(path = %path.display(), "broke a stale lock mutex");
    } else {
        let _ = fs::hard_link(&aside, path);
    }
    let _ = fs::remove_file(&aside);
}

fn is_stale(path: &Path) -> bool {
    let Ok(modified) = fs::metadata(path).and_then(|m| m.modified()) else {
        return false;
    };
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age > MUTEX_STALE_AFTER)
}

/// Replace `path` with `bytes` atomically and durably (mode 0600). With `mutex`, refuse to
/// commit if it was held too long.
fn write_atomic(path: &Path, bytes: &[u8], mutex: Option<&MutexFile>) -> io::Result<()> {
    let tmp = stage(path, bytes)?;
    let result = (|| {
        if let Some(mutex) = mutex {
            mutex.check_fresh()?;
        }
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent(path)?)
}

/// Write and fsync `bytes` to a new temporary file (mode 0600) beside `path`, for a rename over
/// `path`; its directory is created if missing.
fn stage(path: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let dir = parent(path)?;
    // A concurrent delete may prune the directory between creating it and creating the
    // temporary file in it; try again then.
    let mut attempts = 0;
    let (tmp, file) = loop {
        create_dirs(dir)?;
        let tmp = dir.join(format!(".tmp~{:016x}", fastrand::u64(..)));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(file) => break (tmp, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        let mut file = file;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The objects of one `put_many_fenced`: each staged under a temporary name first (written and
/// synced, before the mutex is taken), then, under the mutex and only while `lease` is current,
/// renamed into place in order; each directory that gained an entry is synced once at the end.
/// Returns the keys renamed into place (all of them, or a prefix when it failed part-way) and the
/// outcome.
fn put_many(
    inner: &Inner,
    objects: &[(StorageKey, Vec<u8>)],
    lease: &Lease,
) -> (usize, Result<()>) {
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(objects.len());
    let mut committed = 0;
    let result = (|| {
        for (key, value) in objects {
            let path = inner.object_path(key);
            let tmp = stage(&path, value).map_err(|e| io_err(&path, e))?;
            staged.push((tmp, path));
        }
        let mutex = inner.lock_mutex(&lease.name)?;
        let record = read_lease(&inner.lease_path(&lease.name))?;
        if !is_current(record.as_ref(), lease, unix_millis(SystemTime::now())) {
            return Err(lease_lost(lease));
        }
        for (tmp, path) in &staged {
            mutex.check_fresh().map_err(|e| io_err(path, e))?;
            fs::rename(tmp, path).map_err(|e| io_err(path, e))?;
            committed += 1;
        }
        drop(mutex);
        let dirs: std::collections::BTreeSet<&Path> = staged
            .iter()
            .filter_map(|(_, path)| path.parent())
            .collect();
        for dir in dirs {
            sync_dir(dir).map_err(|e| io_err(dir, e))?;
        }
        Ok(())
    })();
    for (tmp, _) in staged.iter().skip(committed) {
        let _ = fs::remove_file(tmp);
    }
    (committed, result)
}

fn parent(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))
}

/// Create `dir` and its missing parents with mode 0700, fsyncing each parent that gained an
/// entry so the new object survives a crash.
fn create_dirs(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return if fs::metadata(dir)?.is_dir() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is an object, not a directory", dir.display()),
                ))
            };
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = dir.parent().ok_or(e)?;
            create_dirs(parent)?;
            return create_dirs(dir);
        }
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Not found, or a path component is an object file (so the key cannot exist either).
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn lease_lost(lease: &Lease) -> Error {
    Error::LeaseLost {
        name: lease.name.clone(),
        token: lease.token,
    }
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, duration_millis)
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn from_unix_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
