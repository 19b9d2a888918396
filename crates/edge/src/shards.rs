//! [`Shards`]: single-threaded tokio runtimes (one per core, typically), each running the
//! connections the accept loops hand it, as nginx runs one worker process per core.
//!
//! On tokio's work-stealing runtime a connection's task wakes on whichever thread polled the
//! IO driver and may be stolen by another, so a request's state moves between cores and the
//! threads wake each other. A connection placed on a shard stays on that thread for its whole
//! life, with its upstream connections (the pool prefers connections made on the same shard,
//! see [`current`]) and its timers. Measured on the 2-core benchmark machine (load generator
//! and upstream on the same cores): proxying 15-25 % faster than one runtime with two workers
//! (HTTP/1.1 and HTTP/2), plain-HTTP redirects about 15 % slower, as each pinned thread wakes
//! for almost every request where one shared thread took them in batches. `fleetgate` starts
//! one per core unless told otherwise (`listen.workers`).
//!
//! The accept loops themselves, certificate work, health checks and reloads stay on the main
//! runtime.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    /// The shard this thread runs, if it runs one.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard the calling thread runs (`None` off the shards: the main runtime, tests).
pub(crate) fn current() -> Option<usize> {
    SHARD.with(Cell::get)
}

/// The worker threads and their runtimes. Dropping this stops them (tasks still on them are
/// dropped): stop the listeners and let them drain first.
pub struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl Shards {
    /// Starts `count` (at least one) worker threads, each with a current-thread runtime.
    pub fn start(count: usize) -> io::Result<Shards> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fleetgate-worker-{index}"))
                    .spawn(move || {
                        SHARD.with(|s| s.set(Some(index)));
                        runtime.block_on(stop.cancelled());
                        // Blocking tasks still running are not waited for long.
                        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                    })?,
            );
        }
        Ok(Shards {
            handles,
            next: AtomicUsize::new(0),
            stop,
            threads,
        })
    }

    /// Lets the worker threads end (what still runs on them is dropped); they are joined when
    /// this is dropped.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The runtime for the next connection, in turn.
    pub(crate) fn pick(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            // A worker that panicked has nothing left to give back.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("count", &self.handles.len())
            .finish_non_exhaustive()
    }
}
