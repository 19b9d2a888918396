//! Per-connection activity tracking: the idle timeout, the first-request deadline and the
//! send timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until};

/// Counters shared by a connection's IO, its request handler and its watchdog.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Bumped on every read or write that moved bytes.
    io_events: AtomicU64,
    /// Bumped when a request reaches the handler.
    requests: AtomicU64,
}

impl Activity {
    pub(crate) fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn touched(&self) {
        self.io_events.fetch_add(1, Ordering::Relaxed);
    }
}

/// An IO stream that records traffic in an [`Activity`], and fails a write (or flush) that
/// has waited `send_timeout` for the client to take anything: a client that stopped reading
/// is let go, whichever protocol serves it.
pub(crate) struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
    send_timeout: Duration,
    /// Made on the first write that waits, then kept with the connection: a client that
    /// keeps up never costs a timer.
    send_timer: Option<Pin<Box<Sleep>>>,
    /// A write is waiting and `send_timer` is set for it.
    send_waiting: bool,
}

impl<T> Tracked<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>, send_timeout: Duration) -> Self {
        Tracked {
            inner,
            activity,
            send_timeout,
            send_timer: None,
            send_waiting: false,
        }
    }

    /// What a write (or flush) that returned `poll` becomes: progress stops the send timer; a
    /// wait starts it (once per wait) and fails once it has run out.
    fn sent<R>(&mut self, poll: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.send_waiting = false;
            return poll;
        }
        let timer = if self.send_waiting {
            match self.send_timer.as_mut() {
                Some(timer) => timer,
                // Not reached: `send_waiting` is set only with the timer.
                None => return Poll::Pending,
            }
        } else {
            self.send_waiting = true;
            let deadline = Instant::now() + self.send_timeout;
            match &mut self.send_timer {
                Some(timer) => {
                    timer.as_mut().reset(deadline);
                    timer
                }
                None => self.send_timer.insert(Box::pin(sleep_until(deadline))),
            }
        };
        std::task::ready!(timer.as_mut().poll(cx));
        self.send_waiting = false;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took nothing for the send timeout",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touched();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touched();
        }
        self.sent(poll, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touched();
        }
        self.sent(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.sent(poll, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.sent(poll, cx)
    }
}

/// Why a watchdog fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// No request arrived within the header-read timeout.
    NoRequest,
    /// No traffic for the idle timeout.
    Idle,
}

/// Decides when a connection has been quiet too long.
///
/// Instead of reading the clock on every IO call, it samples the traffic counter every quarter
/// of the idle timeout: a connection is idle when the counter has not moved for a whole idle
/// timeout, which it notices at most a quarter late.
pub(crate) struct Watchdog {
    activity: Arc<Activity>,
    first_request_by: Instant,
    idle_timeout: Duration,
    check_every: Duration,
    last_events: u64,
    quiet_since: Instant,
    sleep: Pin<Box<Sleep>>,
    /// The timer is set and was polled (it holds the task's waker).
    armed: bool,
}

impl Watchdog {
    pub(crate) fn new(
        activity: Arc<Activity>,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        let idle_timeout = idle_timeout.max(Duration::from_millis(1));
        Watchdog {
            last_events: activity.io_events.load(Ordering::Relaxed),
            activity,
            first_request_by: now + header_read_timeout,
            idle_timeout,
            check_every: idle_timeout / 4,
            quiet_since: now,
            sleep: Box::pin(sleep_until(now)),
            armed: false,
        }
    }

    /// Ready when the connection should be shut down.
    ///
    /// The connection's task polls this on each of its wake-ups, several per request. An armed
    /// timer keeps the waker it was polled with (a task's waker does not change), so until it
    /// has fired there is nothing to do but one atomic load; polling the timer itself each time
    /// cost more than the rest of the watchdog.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expiry> {
        if self.armed && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if !self.armed {
                let waiting_for_first = self.activity.requests.load(Ordering::Relaxed) == 0;
                let mut next =
                    (Instant::now() + self.check_every).min(self.quiet_since + self.idle_timeout);
                if waiting_for_first {
                    next = next.min(self.first_request_by);
                }
                self.sleep.as_mut().reset(next);
                self.armed = true;
            }
            std::task::ready!(self.sleep.as_mut().poll(cx));
            self.armed = false;
            let now = Instant::now();
            let events = self.activity.io_events.load(Ordering::Relaxed);
            if events != self.last_events {
                self.last_events = events;
                self.quiet_since = now;
            }
            if self.activity.requests.load(Ordering::Relaxed) == 0 && now >= self.first_request_by {
                return Poll::Ready(Expiry::NoRequest);
            }
            if now >= self.quiet_since + self.idle_timeout {
                return Poll::Ready(Expiry::Idle);
            }
        }
    }

    /// Completes when the connection should be shut down.
    pub(crate) async fn expired(&mut self) -> Expiry {
        std::future::poll_fn(|cx| self.poll_expired(cx)).await
    }
}
