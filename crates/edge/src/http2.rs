//! The HTTP/2 connection: hyper's server, with each stream's future polled in the connection's
//! own task instead of a task of its own.
//!
//! hyper hands every accepted stream (the service's future and the sending of its response) to
//! an executor. With tokio's, that is a task per request: allocated, scheduled, often run on
//! the other worker thread, where it takes h2's stream lock that the connection's task holds,
//! and wakes the connection's task to write the response. Here the executor only queues the
//! stream; [`serve`] polls the queued streams right after the connection (a `FuturesUnordered`,
//! each stream woken on its own) and, when some finished, polls the connection once more, so
//! the answers to one read go out in the same write, as nginx does. A stream that has to wait
//! (the proxy, a challenge lookup) waits in the same set. The connection is one task as on
//! HTTP/1.1: all its requests run on one thread at a time, and a panic in one would end the
//! connection, not only its stream (the request path does not panic: see STYLE).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use hyper::server::conn::http2;
use hyper_util::rt::TokioTimer;
use tracing::debug;

use crate::idle::Watchdog;
use crate::signal::Waiter;

/// The future of one stream (or of an upgraded stream's tunnel).
type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor given to one connection's hyper server: it keeps the streams hyper starts
/// for [`serve`] to poll. (hyper's executor is per builder, so each connection gets a builder.)
#[derive(Clone, Default)]
pub(crate) struct Streams {
    // Filled and emptied by the connection's own task; the mutex is never contended, it only
    // makes the executor `Sync` as hyper's bounds want.
    started: Arc<Mutex<Vec<Stream>>>,
}

impl Streams {
    /// Moves the streams started since the last call into `running`; `spare` is an empty
    /// vector swapped in for the queue, so neither allocates again once grown.
    fn start(&self, running: &mut FuturesUnordered<Stream>, spare: &mut Vec<Stream>) {
        std::mem::swap(
            &mut *self.started.lock().unwrap_or_else(PoisonError::into_inner),
            spare,
        );
        running.extend(spare.drain(..));
    }
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(stream));
    }
}

/// The HTTP/2 settings of every connection, applied to each connection's builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub(crate) max_header_list_size: u32,
}

impl Settings {
    fn builder(&self, streams: Streams) -> http2::Builder<Streams> {
        let mut builder = http2::Builder::new(streams);
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(self.max_header_list_size);
        builder
    }
}

/// How many times one wake-up polls the connection after streams finished, before leaving the
/// rest to the wake-ups h2 sends (bounds the time one connection holds its thread).
const REPOLLS: usize = 4;

/// Serves one HTTP/2 connection on `io` until the client leaves, or until it has closed
/// gracefully after `stop` fired or the watchdog found it quiet too long. Streams still running
/// when the connection ends are driven to their end (as tasks of their own would have been).
pub(crate) async fn serve<I, S, B>(
    settings: &Settings,
    io: I,
    service: S,
    mut watchdog: Watchdog,
    mut stop: Waiter,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let streams = Streams::default();
    let conn = settings
        .builder(streams.clone())
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut running: FuturesUnordered<Stream> = FuturesUnordered::new();
    let mut spare = Vec::new();
    let mut open = true;
    let mut closing = false;
    std::future::poll_fn(|cx| {
        let mut repolls = 0;
        loop {
            if open && let Poll::Ready(result) = conn.as_mut().poll(cx) {
                if let Err(error) = result {
                    debug!(%error, "connection ended with an error");
                }
                open = false;
            }
            streams.start(&mut running, &mut spare);
            let mut finished = false;
            while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {
                finished = true;
            }
            if !open {
                // `running` is empty only when its poll said so (it registers no waker then).
                return if running.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            }
            if !closing && let Some(why) = close_reason(&mut stop, &mut watchdog, cx) {
                debug!(why, "closing connection gracefully");
                closing = true;
                conn.as_mut().graceful_shutdown();
                continue;
            }
            // Streams that finished queued their frames: write them now rather than on the
            // wake-up h2 has sent this task.
            if !finished || repolls == REPOLLS {
                return Poll::Pending;
            }
            repolls += 1;
        }
    })
    .await;
}

/// Why the connection should close gracefully now, if it should: shutdown, or the watchdog.
fn close_reason(
    stop: &mut Waiter,
    watchdog: &mut Watchdog,
    cx: &mut std::task::Context<'_>,
) -> Option<&'static str> {
    if stop.poll_fired(cx).is_ready() {
        return Some("shutdown");
    }
    match watchdog.poll_expired(cx) {
        Poll::Ready(expiry) => {
            debug!(?expiry, "closing quiet connection");
            Some("quiet")
        }
        Poll::Pending => None,
    }
}
