//! [`TimedStore`]: the node's store, timed. Every call's duration goes to
//! `fleetgate_store_operation_duration_seconds{backend, op}`, every failure but a lost lease (an
//! answer, not a fault) to `fleetgate_store_errors_total{backend}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{Counter, Histogram, counter, histogram};
use store::{Change, Error, Lease, LockHolder, LockName, Result, Storage, StorageKey};

use super::{STORE_ERRORS, STORE_OP_DURATION};

/// The operations of [`Storage`], in the order of [`Op`]'s discriminants.
const OPS: [&str; 9] = [
    "put",
    "put_fenced",
    "get",
    "delete",
    "list",
    "try_lock",
    "renew",
    "unlock",
    "locks",
];

#[derive(Clone, Copy)]
enum Op {
    Put,
    PutFenced,
    Get,
    Delete,
    List,
    TryLock,
    Renew,
    Unlock,
    Locks,
}

/// Wraps a store and times every call (handles registered once: a call costs a clock read and
/// two atomic updates).
pub struct TimedStore {
    inner: Arc<dyn Storage>,
    backend: &'static str,
    durations: [Histogram; OPS.len()],
    errors: Counter,
}

impl std::fmt::Debug for TimedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedStore")
            .field("backend", &self.backend)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl TimedStore {
    /// `backend`: `dir`, `postgres` or `redis` (the `backend` label).
    pub fn new(inner: Arc<dyn Storage>, backend: &'static str) -> TimedStore {
        TimedStore {
            inner,
            backend,
            durations: OPS
                .map(|op| histogram!(STORE_OP_DURATION, "backend" => backend, "op" => op)),
            errors: counter!(STORE_ERRORS, "backend" => backend),
        }
    }

    fn record<T>(&self, op: Op, started: Instant, result: &Result<T>) {
        self.durations[op as usize].record(started.elapsed().as_secs_f64());
        if let Err(e) = result
            && !matches!(e, Error::LeaseLost { .. })
        {
            self.errors.increment(1);
        }
    }
}

#[async_trait::async_trait]
impl Storage for TimedStore {
    async fn put(&self, key: &StorageKey, value: &[u8]) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.put(key, value).await;
        self.record(Op::Put, started, &result);
        result
    }

    async fn put_fenced(&self, key: &StorageKey, value: &[u8], lease: &Lease) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.put_fenced(key, value, lease).await;
        self.record(Op::PutFenced, started, &result);
        result
    }

    async fn put_many_fenced(
        &self,
        objects: &[(StorageKey, Vec<u8>)],
        lease: &Lease,
    ) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.put_many_fenced(objects, lease).await;
        self.record(Op::PutFenced, started, &result);
        result
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.record(Op::Get, started, &result);
        result
    }

    async fn delete(&self, key: &StorageKey) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.delete(key).await;
        self.record(Op::Delete, started, &result);
        result
    }

    async fn list(&self, prefix: &StorageKey) -> Result<Vec<StorageKey>> {
        let started = Instant::now();
        let result = self.inner.list(prefix).await;
        self.record(Op::List, started, &result);
        result
    }

    async fn try_lock(
        &self,
        name: &LockName,
        owner: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lease, LockHolder>> {
        let started = Instant::now();
        let result = self.inner.try_lock(name, owner, ttl).await;
        self.record(Op::TryLock, started, &result);
        result
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let started = Instant::now();
        let result = self.inner.renew(lease, ttl).await;
        self.record(Op::Renew, started, &result);
        result
    }

    async fn unlock(&self, lease: &Lease) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.unlock(lease).await;
        self.record(Op::Unlock, started, &result);
        result
    }

    async fn locks(&self) -> Result<Vec<LockHolder>> {
        let started = Instant::now();
        let result = self.inner.locks().await;
        self.record(Op::Locks, started, &result);
        result
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.inner.subscribe()
    }
}
