//! A listener that holds at most [`MAX_CONNECTIONS`] admin connections at once: the next accept
//! waits for a connection to close, so clients that hold connections open (or flood the port)
//! cost a bounded number of file descriptors and tasks, and never the node's. A connection
//! that moves no byte either way for the idle timeout (`limits.idle_timeout`) is closed, so
//! silent clients give their place back; the serve loop in `super` adds hyper's header read
//! timeout on top, which also catches a client that trickles a request head.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep, sleep};

/// Admin connections open at once; an operator's scripts need a handful.
pub const MAX_CONNECTIONS: usize = 64;

pub struct Capped<L> {
    inner: L,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
}

impl<L> Capped<L> {
    /// Connections from `inner`, closed after `idle_timeout` without a byte read or written.
    pub fn new(inner: L, idle_timeout: Duration) -> Capped<L> {
        Capped {
            inner,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            idle_timeout,
        }
    }
}

impl<L: Listener> Listener for Capped<L> {
    type Io = CappedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Invariant: the semaphore is never closed, so acquiring cannot fail; without a permit
        // (were it to) the connection is served uncapped rather than refused.
        let permit = self.permits.clone().acquire_owned().await.ok();
        let (io, addr) = self.inner.accept().await;
        (
            CappedIo {
                io,
                idle: Box::pin(sleep(self.idle_timeout)),
                idle_timeout: self.idle_timeout,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding its place under the cap until it is dropped.
pub struct CappedIo<T> {
    io: T,
    /// Fires `idle_timeout` after the last byte moved.
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T> CappedIo<T> {
    /// A byte moved: the idle clock starts over.
    fn moved(&mut self) {
        let at = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(at);
    }

    /// The peer is waited on: an error once the connection has been idle too long.
    fn waiting<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin connection idle past limits.idle_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> CappedIo<T> {
    /// A write's outcome: bytes taken restart the idle clock, a wait checks it.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.waiting(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CappedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.waiting(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CappedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
