//! Storage for fleetgate: objects, leased locks with fencing tokens, and change events.
//!
//! **Architecture invariant:** this crate knows nothing about ACME, certificates or HTTP. It stores
//! opaque bytes under [`StorageKey`]s and hands out [`Lease`]s on [`LockName`]s.
//!
//! # The contract every backend keeps
//!
//! - **Objects.** `put` replaces the whole value atomically: a concurrent or later `get` sees either
//!   the old bytes or the new bytes, never a mix, and a crash never leaves a torn value. `get` of a
//!   missing key is `Ok(None)`, not an error. `delete` of a missing key is `Ok(())`. `list(prefix)`
//!   returns every key that starts with `prefix` (segment-wise, [`StorageKey::starts_with`],
//!   so `prefix` itself when it is an object), in no particular order. A key should not be both
//!   an object and the prefix of another object (`a` and `a/b`): the dir backend refuses the
//!   second write with [`Error::Io`].
//! - **Leases.** `try_lock` either grants a [`Lease`] or reports who holds it; it never blocks.
//!   A lease lasts `ttl` from the moment it was granted; its holder must `renew` it before then or
//!   lose it; renewing an expired lease fails with [`Error::LeaseLost`] even if nobody took it.
//!   A lease is not re-entrant: `try_lock` by the holder's own owner string reports the holder.
//!   An expired lease may be taken by anyone. [`lock`] waits for a lease and [`LeaseGuard`]
//!   keeps it renewed. Every grant of a name carries a
//!   [`FencingToken`] strictly greater than every earlier grant of that name, across processes and
//!   restarts of the store.
//! - **Fencing.** `put_fenced` writes only if the lease is still the current, unexpired grant of its
//!   name; the check and the write are one atomic step in the backend. A holder whose lease was
//!   lost (expired and taken, or released) gets [`Error::LeaseLost`] and nothing is written.
//! - **Re-check after acquiring.** A lock only says "nobody else is working on this now". The
//!   holder must re-read storage after acquiring: a peer may have finished the work just before.
//! - **Cancellation.** Every method is cancel-safe: dropping the future leaves the store either
//!   unchanged or with the complete write.
//! - **Change events.** [`Storage::subscribe`] delivers a [`Change`] for writes and deletes this
//!   process makes and, where the backend can, for writes by other processes. Delivery is best
//!   effort: a subscriber must also resync periodically. A backend whose event stream from other
//!   processes was interrupted sends [`Change::Missed`] once it is back, so subscribers re-read
//!   at once instead of at their next resync.
//! - **Timeouts.** Backends bound each call; a call that would hang reports
//!   [`Error::Unavailable`], which is retryable.

mod backoff;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod dir;
mod journal;
mod key;
mod lease;
mod lock;
mod postgres;
mod redis_store;
mod sealed;

use std::time::Duration;

pub use dir::DirStore;
pub use key::{KeyError, LockName, StorageKey, sanitize_segment};
pub use lease::{FencingToken, Lease, LockHolder};
pub use lock::{LeaseGuard, lock};
pub use postgres::{InvalidPostgresUrl, PostgresOptions, PostgresStore, PostgresUrl};
pub use redis_store::{RedisStore, RedisStoreBuilder};
pub use sealed::{SealKey, SealKeyError, SealedStore};

/// One change to stored objects, as seen by [`Storage::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(StorageKey),
    Deleted(StorageKey),
    /// Changes by other processes may have gone unreported: the backend's event stream was
    /// down (it just reconnected, or connected only after the store was opened). A subscriber
    /// re-reads everything it follows, as after `RecvError::Lagged`.
    Missed,
}

/// Errors from a storage backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lease is no longer the current grant of its lock; nothing was written.
    #[error("lease on {name} (token {token}) was lost")]
    LeaseLost { name: LockName, token: FencingToken },
    /// The backend cannot be reached or timed out. Retry with backoff.
    #[error("storage unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// An I/O error the backend cannot classify as transient.
    #[error("storage I/O error on {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Stored data could not be decoded: a bug or outside tampering.
    #[error("corrupt stored data at {key}: {detail}")]
    Corrupt { key: String, detail: String },
}

impl Error {
    /// Whether the same call may succeed later (the scheduler backs off and retries).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Io { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A storage backend. See the crate docs for the contract.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Store `value` under `key`, replacing any previous value atomically.
    async fn put(&self, key: &StorageKey, value: &[u8]) -> Result<()>;

    /// Like [`Storage::put`], but only while `lease` is the current grant of its lock.
    async fn put_fenced(&self, key: &StorageKey, value: &[u8], lease: &Lease) -> Result<()>;

    /// [`Storage::put_fenced`] of many objects under one lease, in order: when it returns `Ok`,
    /// every object is written and durable. Not atomic as a whole: on an error (the lease lost
    /// part-way included) a prefix of `objects` may be written, never a torn value. The default
    /// writes them one by one; the dir backend checks the lease once and syncs each directory
    /// once for the whole batch.
    async fn put_many_fenced(
        &self,
        objects: &[(StorageKey, Vec<u8>)],
        lease: &Lease,
    ) -> Result<()> {
        for (key, value) in objects {
            self.put_fenced(key, value, lease).await?;
        }
        Ok(())
    }

    /// The value under `key`, or `None` when there is none.
    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>>;

    /// Remove `key`. Removing a missing key succeeds.
    async fn delete(&self, key: &StorageKey) -> Result<()>;

    /// Every key under `prefix` (segment-wise: `certs/a` lists `certs/a/x`, not `certs/ab`).
    async fn list(&self, prefix: &StorageKey) -> Result<Vec<StorageKey>>;

    /// Take the lock `name` for `ttl` if it is free or its lease expired.
    /// `Ok(Err(holder))` says who holds it now.
    async fn try_lock(
        &self,
        name: &LockName,
        owner: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lease, LockHolder>>;

    /// Extend a lease held by the caller by `ttl` from now. [`Error::LeaseLost`] if it was lost.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease>;

    /// Release a lease. Releasing a lease that was already lost succeeds.
    async fn unlock(&self, lease: &Lease) -> Result<()>;

    /// Leases currently granted and unexpired (for `fleetgate status`).
    async fn locks(&self) -> Result<Vec<LockHolder>>;

    /// Change events; see the crate docs for the delivery guarantee.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change>;
}
