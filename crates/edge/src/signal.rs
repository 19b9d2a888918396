//! [`Signal`]: a one-shot broadcast that a connection checks on every poll for the price of an
//! atomic load.
//!
//! A connection task is polled several times per request, and each poll polled the shutdown
//! and drain-timeout [`tokio_util::sync::CancellationToken`]s as well: every such poll takes
//! the token's mutex and its `Notify`'s mutex, shared by all connections of the listener, so
//! the worker threads contended on them per request. Here a waiter takes the lock only to
//! register its task's waker (once, or when the waker changes) and to leave; firing takes it
//! once to wake everyone.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Fired once; everything waiting on it wakes.
#[derive(Clone, Default)]
pub(crate) struct Signal {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    fired: AtomicBool,
    next_key: AtomicU64,
    waiters: Mutex<HashMap<u64, Waker>>,
}

impl Shared {
    fn waiters(&self) -> MutexGuard<'_, HashMap<u64, Waker>> {
        // Holds no invariant a panic could break halfway.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Signal {
    pub(crate) fn new() -> Signal {
        Signal::default()
    }

    /// Wakes every [`Waiter`], now and later.
    pub(crate) fn fire(&self) {
        self.shared.fired.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self.shared.waiters().drain().map(|(_, w)| w).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// A waiter for one task.
    pub(crate) fn waiter(&self) -> Waiter {
        Waiter {
            shared: Arc::clone(&self.shared),
            key: self.shared.next_key.fetch_add(1, Ordering::Relaxed),
            registered: None,
        }
    }
}

/// One task's wait for a [`Signal`]; it leaves the signal's list when dropped.
pub(crate) struct Waiter {
    shared: Arc<Shared>,
    key: u64,
    /// The waker the signal holds for this waiter, if any.
    registered: Option<Waker>,
}

impl Waiter {
    /// Ready once the signal has fired.
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let mut waiters = self.shared.waiters();
        // `fire` sets the flag before draining under this lock: checked again here, a waker
        // inserted now is either drained by it or not needed.
        if self.shared.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        waiters.insert(self.key, cx.waker().clone());
        drop(waiters);
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the signal has fired (nothing is registered).
    pub(crate) fn has_fired(&self) -> bool {
        self.shared.fired.load(Ordering::Acquire)
    }

    /// Completes once the signal has fired.
    pub(crate) async fn fired(&mut self) {
        poll_fn(|cx| self.poll_fired(cx)).await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.registered.is_some() {
            self.shared.waiters().remove(&self.key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fire_wakes_registered_and_later_waiters() {
        let signal = Signal::new();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut waiter = signal.waiter();
            tasks.push(tokio::spawn(async move { waiter.fired().await }));
        }
        // Every task is parked on the signal before it fires.
        tokio::time::timeout(Duration::from_secs(10), async {
            while signal.shared.waiters().len() < 4 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("all waiters registered");
        signal.fire();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("woken")
                .expect("task ran");
        }
        // A waiter made after the fact is ready at once.
        signal.waiter().fired().await;
    }

    #[tokio::test]
    async fn dropped_waiters_leave_the_list() {
        let signal = Signal::new();
        let mut waiter = signal.waiter();
        let polled = poll_fn(|cx| Poll::Ready(waiter.poll_fired(cx))).await;
        assert!(polled.is_pending());
        assert_eq!(signal.shared.waiters().len(), 1);
        drop(waiter);
        assert!(signal.shared.waiters().is_empty());
    }
}
