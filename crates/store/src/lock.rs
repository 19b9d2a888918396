//! Waiting for a lock and keeping it: [`lock`] and [`LeaseGuard`], generic over any backend.
//!
//! ```no_run
//! # use std::{sync::Arc, time::Duration};
//! # use store::{LockName, Storage, StorageKey};
//! # async fn demo(store: Arc<dyn Storage>, key: StorageKey) -> store::Result<()> {
//! let name = LockName::new("cert-example.com");
//! let (ttl, wait) = (Duration::from_secs(30), Duration::from_secs(5));
//! if let Some(guard) = store::lock(&store, &name, "node-1", ttl, wait).await? {
//!     // Re-read storage first: a peer may have done the work just before.
//!     store.put_fenced(&key, b"...", &guard.lease()).await?;
//!     guard.release().await?;
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::{Error, Lease, LockName, Result, Storage};

/// The retry schedule while waiting for a busy lock: exponential, jittered to `[d/2, d]`.
const RETRY_FIRST: Duration = Duration::from_millis(5);
const RETRY_MAX: Duration = Duration::from_millis(250);

/// Take `name` for `ttl`, retrying [`Storage::try_lock`] with jittered backoff until `wait` has
/// elapsed. `Ok(None)` if someone else still holds it then. Retryable errors are retried within
/// `wait` too; the last one is returned if time runs out.
///
/// The returned guard renews the lease every `ttl / 3` until it is released or dropped.
pub async fn lock(
    store: &Arc<dyn Storage>,
    name: &LockName,
    owner: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<Option<LeaseGuard>> {
    let deadline = Instant::now() + wait;
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        match store.try_lock(name, owner, ttl).await {
            Ok(Ok(lease)) => return Ok(Some(LeaseGuard::new(Arc::clone(store), lease, ttl))),
            Ok(Err(holder)) => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                tracing::trace!(lock = %name, holder = %holder.owner, "lock busy; waiting");
            }
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tracing::debug!(lock = %name, error = %e, "try_lock failed; retrying");
            }
            Err(e) => return Err(e),
        }
        let pause = backoff
            .next()
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
    }
}

#[derive(Debug, Clone)]
struct GuardState {
    lease: Lease,
    lost: bool,
}

/// A held lease, renewed in the background every `ttl / 3`.
///
/// Use [`LeaseGuard::lease`] (the latest renewal) for [`Storage::put_fenced`], and stop working
/// when [`LeaseGuard::is_lost`] says so or [`LeaseGuard::lost`] completes. [`LeaseGuard::release`]
/// unlocks; dropping the guard stops renewing and, inside a tokio runtime, unlocks in the
/// background (otherwise the lease simply expires).
#[derive(Debug)]
pub struct LeaseGuard {
    store: Arc<dyn Storage>,
    state: watch::Receiver<GuardState>,
    renewer: JoinHandle<()>,
    released: bool,
}

impl LeaseGuard {
    /// Keep `lease` (granted for `ttl`) renewed until the guard is released or dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns the renewer).
    pub fn new(store: Arc<dyn Storage>, lease: Lease, ttl: Duration) -> LeaseGuard {
        let (tx, state) = watch::channel(GuardState { lease, lost: false });
        let renewer = tokio::spawn(renew_loop(Arc::clone(&store), tx, ttl));
        LeaseGuard {
            store,
            state,
            renewer,
            released: false,
        }
    }

    /// The latest lease (its token never changes; `expires` moves with each renewal).
    pub fn lease(&self) -> Lease {
        self.state.borrow().lease.clone()
    }

    /// Whether the lease was lost: a renewal was refused, or it expired unrenewed.
    pub fn is_lost(&self) -> bool {
        let state = self.state.borrow();
        state.lost || SystemTime::now() >= state.lease.expires
    }

    /// Completes once the lease is lost (never, while renewals succeed).
    pub async fn lost(&self) {
        let mut state = self.state.clone();
        // An error means the renewer stopped, which it does only once the lease is lost.
        let _ = state.wait_for(|s| s.lost).await;
    }

    /// Stop renewing and release the lease.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        self.renewer.abort();
        let lease = self.lease();
        self.store.unlock(&lease).await
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renewer.abort();
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, lease) = (Arc::clone(&self.store), self.lease());
            runtime.spawn(async move {
                if let Err(e) = store.unlock(&lease).await {
                    tracing::debug!(lock = %lease.name, error = %e, "unlock after drop failed");
                }
            });
        }
    }
}

async fn renew_loop(store: Arc<dyn Storage>, tx: watch::Sender<GuardState>, ttl: Duration) {
    let interval = ttl / 3;
    let mut wait = interval;
    loop {
        let lease = tx.borrow().lease.clone();
        let left = remaining(&lease);
        tokio::time::sleep(wait.min(left)).await;
        let left = remaining(&lease);
        if left.is_zero() {
            break;
        }
        // A renewal that cannot finish before the lease expires is as good as lost.
        match tokio::time::timeout(left, store.renew(&lease, ttl)).await {
            Ok(Ok(renewed)) => {
                tx.send_modify(|s| s.lease = renewed);
                wait = interval;
            }
            Ok(Err(Error::LeaseLost { .. })) => break,
            Ok(Err(e)) => {
                tracing::warn!(lock = %lease.name, error = %e, "lease renewal failed; retrying");
                wait = interval / 2;
            }
            Err(_) => {}
        }
    }
    tracing::warn!(lock = %tx.borrow().lease.name, "lease lost");
    tx.send_modify(|s| s.lost = true);
}

fn remaining(lease: &Lease) -> Duration {
    lease
        .expires
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}
