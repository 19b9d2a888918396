//! Keep-alive HTTP/1.1 connections to a site's upstreams, driven by the request that uses them.
//!
//! hyper's client connection is a future that must be polled for anything to happen on the
//! socket. A general-purpose client spawns it as its own task, so every request crosses tasks
//! (and often threads) twice: to hand the request over and to hand the response back. Here the
//! connection is polled by whoever is waiting on it instead: by [`UpstreamClient::send`] until
//! the response head arrives, then by the response body ([`PooledBody`]) as the edge streams it
//! to the client. One request, one task, no extra wake-ups.
//!
//! The price: an idle connection in the pool is polled by nobody, so an upstream closing it is
//! noticed when the connection is next taken (one poll reads the EOF and it is discarded), or
//! by the sweep that drops connections idle for longer than `idle_timeout`. A request that
//! could not be written at all goes out on another connection; one that a reused connection
//! lost after writing is reported as [`UpstreamError::Stale`] so the caller can send it again
//! when that is safe.
//!
//! Upgrade requests (WebSocket) get a connection of their own, spawned with upgrades enabled
//! and never pooled.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{TrySendError, http1};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service as _;
use tracing::debug;

use crate::proxy::balancer::Upstream;
use crate::proxy::body::RequestBody;
use crate::proxy::connector::{BoxError, Connector};

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
type Connection = http1::Connection<Io, RequestBody>;

/// Idle connections kept per upstream; more are closed when their request ends.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// A connection reused after at least this long idle may have been closed by the upstream
/// while the request was on its way: such a request is kept (without its body, so only a
/// bodiless one) to be sent again on a fresh connection.
const STALE_AFTER: Duration = Duration::from_secs(1);

/// Why a request got no response head from its upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connecting failed")]
    Connect(#[source] BoxError),
    #[error("HTTP/1.1 handshake failed")]
    Handshake(#[source] hyper::Error),
    /// The request failed on a connection that was fresh, or could not be sent again.
    #[error("request failed")]
    Request(#[source] hyper::Error),
    /// A connection reused after [`STALE_AFTER`] closed before answering; the request, without
    /// a body, can go again on a fresh connection.
    #[error("reused connection closed before answering")]
    Stale {
        source: hyper::Error,
        retry: Box<Request<RequestBody>>,
    },
}

impl UpstreamError {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// The connection pool of one proxy site: cheap to clone (the health checker holds one).
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    inner: Arc<Pool>,
}

struct Pool {
    connector: Connector,
    /// Idle connections per upstream (by the balancer's index), most recently used last.
    idle: Box<[Mutex<VecDeque<Idle>>]>,
    idle_timeout: Duration,
}

/// A connection with its request sender, owned by one request at a time.
struct Lease {
    sender: http1::SendRequest<RequestBody>,
    /// `None` once the connection future has finished (closed or failed).
    conn: Option<Pin<Box<Connection>>>,
}

struct Idle {
    lease: Box<Lease>,
    since: Instant,
}

impl Lease {
    /// Polls the connection future (it does the socket work); false once it has finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(conn) = self.conn.as_mut() {
            match conn.as_mut().poll(cx) {
                Poll::Pending => return true,
                Poll::Ready(Err(e)) => debug!(error = %e, "upstream connection ended"),
                Poll::Ready(Ok(())) => {}
            }
            self.conn = None;
        }
        false
    }

    /// Whether the connection takes a new request now; one poll of the connection lets it
    /// finish the previous exchange or notice that the upstream closed it.
    fn ready_now(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }

    /// Sends `req` and drives the connection until the response head arrives.
    async fn exchange(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        let conn = &mut self.conn;
        poll_fn(|cx| {
            if let Some(c) = conn.as_mut()
                && c.as_mut().poll(cx).is_ready()
            {
                // Finished: the response future below is settled by now, one way or the other.
                *conn = None;
            }
            response.as_mut().poll(cx)
        })
        .await
    }
}

impl UpstreamClient {
    pub(crate) fn new(connector: Connector, upstreams: usize, idle_timeout: Duration) -> Self {
        let idle = (0..upstreams)
            .map(|_| Mutex::new(VecDeque::new()))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        UpstreamClient {
            inner: Arc::new(Pool {
                connector,
                idle,
                idle_timeout,
            }),
        }
    }

    /// Sends `req` (origin-form URI, Host set) to upstream `index` on an idle connection
    /// (unless `reuse` is false) or a new one, and returns the response once its head is in.
    /// The body drives the connection and gives it back to the pool when it ends.
    pub(crate) async fn send(
        &self,
        index: usize,
        upstream: &Upstream,
        mut req: Request<RequestBody>,
        reuse: bool,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        while reuse && let Some((mut lease, idle_for)) = self.inner.checkout(index).await {
            let retry = (idle_for >= STALE_AFTER && req.body().is_end_stream())
                .then(|| Box::new(copy_bodiless(&req)));
            match lease.exchange(req).await {
                Ok(response) => return Ok(self.wrap(index, lease, response)),
                Err(mut err) => match err.take_message() {
                    // Not written: the connection was gone. Try the next one.
                    Some(back) => req = back,
                    None => {
                        let source = err.into_error();
                        return Err(match retry {
                            Some(retry) if source.is_incomplete_message() => {
                                UpstreamError::Stale { source, retry }
                            }
                            _ => UpstreamError::Request(source),
                        });
                    }
                },
            }
        }
        // Boxed: dialling (TCP, TLS, handshake) is the cold path, and its state would make
        // every request's future larger.
        let mut lease = Box::pin(self.inner.connect(upstream)).await?;
        match lease.exchange(req).await {
            Ok(response) => Ok(self.wrap(index, lease, response)),
            Err(err) => Err(UpstreamError::Request(err.into_error())),
        }
    }

    /// Sends an upgrade request (WebSocket) on a connection of its own, run as a task with
    /// upgrades enabled; it is never pooled. The response keeps hyper's
    /// [`hyper::upgrade::OnUpgrade`] in its extensions.
    pub(crate) async fn send_upgrade(
        &self,
        upstream: &Upstream,
        req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let io = self.inner.dial(upstream).await?;
        let (mut sender, conn) = http1::handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upgraded upstream connection ended");
            }
        });
        let response = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Request)?;
        Ok(response.map(|inner| PooledBody {
            inner,
            ended: false,
            lease: None,
            pool: Arc::clone(&self.inner),
            index: 0,
        }))
    }

    /// Closes idle connections unused for longer than `idle_timeout` (an upstream may have
    /// closed them already: their sockets wait in CLOSE_WAIT until dropped).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        for idle in &self.inner.idle {
            self.inner.expire(&mut lock(idle), now);
        }
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }

    fn wrap(
        &self,
        index: usize,
        lease: Box<Lease>,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        response.map(|inner| PooledBody {
            inner,
            ended: false,
            lease: Some(lease),
            pool: Arc::clone(&self.inner),
            index,
        })
    }
}

impl Pool {
    /// The most recently used idle connection of upstream `index` that is ready for a request,
    /// and how long it was idle.
    async fn checkout(&self, index: usize) -> Option<(Box<Lease>, Duration)> {
        loop {
            let mut idle = {
                let mut idle = lock(&self.idle[index]);
                self.expire(&mut idle, Instant::now());
                idle.pop_back()?
            };
            if poll_fn(|cx| Poll::Ready(idle.lease.ready_now(cx))).await {
                return Some((idle.lease, idle.since.elapsed()));
            }
            // Closed by the upstream (or not done with its last exchange): dropped.
        }
    }

    fn checkin(&self, index: usize, lease: Box<Lease>) {
        let now = Instant::now();
        let mut idle = lock(&self.idle[index]);
        self.expire(&mut idle, now);
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push_back(Idle { lease, since: now });
        }
    }

    /// Drops connections idle past the timeout: the oldest are at the front.
    fn expire(&self, idle: &mut VecDeque<Idle>, now: Instant) {
        while idle
            .front()
            .is_some_and(|i| now.saturating_duration_since(i.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
    }

    async fn dial(&self, upstream: &Upstream) -> Result<Io, UpstreamError> {
        let uri = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Connect(Box::new(e)))?;
        self.connector
            .clone()
            .call(uri)
            .await
            .map_err(UpstreamError::Connect)
    }

    /// A new connection; boxed once, as it moves between the pool and response bodies.
    async fn connect(&self, upstream: &Upstream) -> Result<Box<Lease>, UpstreamError> {
        let io = self.dial(upstream).await?;
        // Flat writes, as the server side does (see `Edge::new`).
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        Ok(Box::new(Lease {
            sender,
            conn: Some(Box::pin(conn)),
        }))
    }
}

/// An upstream response body that drives its connection while it is read, and returns the
/// connection to the pool once the body has ended (dropped earlier, the connection closes).
pub(crate) struct PooledBody {
    inner: Incoming,
    /// The body was read to its end (a chunked body says so only by ending).
    ended: bool,
    lease: Option<Box<Lease>>,
    pool: Arc<Pool>,
    index: usize,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("inner", &self.inner)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(lease) = this.lease.as_mut() {
            lease.drive(cx);
        }
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(_)) => {}
            Some(Err(_)) => this.lease = None,
            None => this.ended = true,
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so the end is checked here.
        if let Some(lease) = self.lease.take()
            && (self.ended || self.inner.is_end_stream())
            && lease.conn.is_some()
        {
            self.pool.checkin(self.index, lease);
        }
    }
}

/// `req`'s method, URI, version and headers with an empty body.
fn copy_bodiless(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// The idle list even if a thread panicked while holding it (it holds no invariant a panic
/// could break halfway).
fn lock(idle: &Mutex<VecDeque<Idle>>) -> MutexGuard<'_, VecDeque<Idle>> {
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}
