//! Keep-alive HTTP/1.1 connections to a site's upstreams, used by the request that takes them.
//!
//! A connection ([`Conn`]) does nothing on its own: the request that took it from the pool
//! writes to it and reads the response head ([`UpstreamClient::send`]), then the response body
//! ([`PooledBody`]) reads the rest as the edge streams it to the client, and gives the
//! connection back once the body has ended. One request, one task, no hand-offs.
//!
//! The price: an idle connection in the pool is watched by nobody, so an upstream closing it is
//! noticed when the connection is next taken (one read finds the end of file, without a system
//! call when there is nothing to read, and it is discarded), or by the sweep that drops
//! connections idle for longer than `idle_timeout`. A request that a reused connection lost
//! without an answer is reported as [`UpstreamError::Stale`] so the caller can send it again
//! when that is safe.
//!
//! Upgrade requests (WebSocket) get a connection of their own through hyper's client, spawned
//! with upgrades enabled and never pooled.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tower_service::Service as _;
use tracing::debug;

use crate::proxy::balancer::Upstream;
use crate::proxy::connector::{BoxError, Connector, Io};
use crate::proxy::h1::{ClientHead, Conn, Framing, H1Error, Head};
use crate::proxy::request_body::RequestBody;

/// Idle connections kept per upstream; more are closed when their request ends.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// A connection reused after at least this long idle may have been closed by the upstream
/// while the request was on its way: such a request is kept (without its body, so only a
/// bodiless one, and only an idempotent one) to be sent again on a fresh connection.
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
    Request(#[source] H1Error),
    /// An upgrade request (on hyper's client) failed.
    #[error("upgrade request failed")]
    Upgrade(#[source] hyper::Error),
    /// A connection reused after [`STALE_AFTER`] closed before answering; the request,
    /// idempotent and without a body, can go again on a fresh connection.
    #[error("reused connection closed before answering")]
    Stale {
        source: H1Error,
        retry: Box<Request<RequestBody>>,
    },
    /// No response head by the deadline (connecting included).
    #[error("no response head in time")]
    Timeout,
}

impl UpstreamError {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// The response head did not come by the deadline.
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(
            self,
            UpstreamError::Timeout | UpstreamError::Request(H1Error::HeadTimeout)
        )
    }

    /// No byte of a response came: connecting failed, or the connection closed or was reset
    /// before the upstream answered. (An idempotent request may then go elsewhere; after an
    /// answer, even a broken one, it is not sent again.)
    pub(crate) fn unanswered(&self) -> bool {
        match self {
            UpstreamError::Connect(_) => true,
            UpstreamError::Request(e) | UpstreamError::Stale { source: e, .. } => e.unanswered(),
            UpstreamError::Handshake(_) | UpstreamError::Upgrade(_) | UpstreamError::Timeout => {
                false
            }
        }
    }
}

/// The connection pool of one proxy site: cheap to clone (the health checker holds one).
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    inner: Arc<Pool>,
}

struct Pool {
    connector: Connector,
    /// Idle connections per upstream (by the balancer's index), then per runtime that made
    /// them ([`home`]), most recently used last. A connection's socket answers to the IO
    /// driver of the runtime that dialled it, so a request takes only connections of its own.
    idle: Box<[Mutex<Vec<VecDeque<Idle>>>]>,
    idle_timeout: Duration,
    /// Between two reads of a response body.
    read_timeout: Duration,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl UpstreamClient {
    pub(crate) fn new(
        connector: Connector,
        upstreams: usize,
        idle_timeout: Duration,
        read_timeout: Duration,
    ) -> Self {
        let idle = (0..upstreams)
            .map(|_| Mutex::new(Vec::new()))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        UpstreamClient {
            inner: Arc::new(Pool {
                connector,
                idle,
                idle_timeout,
                read_timeout,
            }),
        }
    }

    /// Sends `req` (origin-form URI, Host set), with `lines` (ready `name: value\r\n` fields)
    /// after its own, to upstream `index` on an idle connection (unless `reuse` is false) or a
    /// new one, and returns the response once its head is in; with `client_head`, the head is
    /// written out for an HTTP/1.1 client instead of parsed into the response's map (see
    /// [`PooledBody::take_client_head`]). A head not in by `deadline` (connecting included)
    /// fails the request ([`UpstreamError::is_timeout`]): the connection's own timer keeps
    /// the time, no timer is made per request.
    /// The body drives the connection and gives it back to the pool when it ends.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send(
        &self,
        index: usize,
        upstream: &Upstream,
        req: Request<RequestBody>,
        lines: &[u8],
        reuse: bool,
        client_head: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if reuse && let Some((mut conn, idle_for)) = self.inner.checkout(index).await {
            // Only an idempotent request may be sent twice (RFC 9110 9.2.2): the upstream may
            // have acted on it before closing.
            let retry = (idle_for >= STALE_AFTER
                && super::is_idempotent(req.method())
                && req.body().is_end_stream())
            .then(|| Box::new(copy_bodiless(&req)));
            return match conn.exchange(req, lines, client_head, deadline).await {
                Ok(head) => Ok(self.wrap(index, conn, head)),
                Err(source) => Err(match retry {
                    Some(retry) if source.unanswered() => UpstreamError::Stale { source, retry },
                    _ => UpstreamError::Request(source),
                }),
            };
        }
        // Boxed: dialling (TCP, TLS) is the cold path, and its state would make every
        // request's future larger.
        let mut conn = Box::pin(tokio::time::timeout_at(
            deadline,
            self.inner.connect(upstream),
        ))
        .await
        .map_err(|_| UpstreamError::Timeout)??;
        match conn.exchange(req, lines, client_head, deadline).await {
            Ok(head) => Ok(self.wrap(index, conn, head)),
            Err(source) => Err(UpstreamError::Request(source)),
        }
    }

    /// Sends an upgrade request (WebSocket) on a connection of its own, run as a task with
    /// upgrades enabled; it is never pooled. The response keeps hyper's
    /// [`hyper::upgrade::OnUpgrade`] in its extensions.
    pub(crate) async fn send_upgrade(
        &self,
        upstream: &Upstream,
        req: Request<RequestBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        tokio::time::timeout_at(deadline, self.untimed_upgrade(upstream, req))
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    async fn untimed_upgrade(
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
            .map_err(UpstreamError::Upgrade)?;
        Ok(response.map(|body| PooledBody(Source::Hyper(body))))
    }

    /// Closes idle connections unused for longer than `idle_timeout` (an upstream may have
    /// closed them already: their sockets wait in CLOSE_WAIT until dropped).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        for idle in &self.inner.idle {
            for list in lock(idle).iter_mut() {
                self.inner.expire(list, now);
            }
        }
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }

    fn wrap(&self, index: usize, conn: Box<Conn>, head: Head) -> Response<PooledBody> {
        head.response.map(|()| {
            PooledBody(Source::Pooled {
                conn: Some(conn),
                framing: head.framing,
                reusable: head.reusable,
                for_client: head.for_client,
                client: head.client,
                pool: Arc::clone(&self.inner),
                index,
            })
        })
    }
}

impl Pool {
    /// The most recently used idle connection of upstream `index` that is ready for a request,
    /// and how long it was idle.
    async fn checkout(&self, index: usize) -> Option<(Box<Conn>, Duration)> {
        loop {
            let now = Instant::now();
            let mut idle = {
                let mut lists = lock(&self.idle[index]);
                let idle = lists.get_mut(home())?;
                self.expire(idle, now);
                idle.pop_back()?
            };
            if poll_fn(|cx| Poll::Ready(idle.conn.poll_idle(cx))).await {
                return Some((idle.conn, now.saturating_duration_since(idle.since)));
            }
            // Closed by the upstream, or it sent something unasked: dropped.
        }
    }

    fn checkin(&self, index: usize, conn: Box<Conn>) {
        let now = Instant::now();
        let mut lists = lock(&self.idle[index]);
        let home = conn.home;
        if lists.len() <= home {
            lists.resize_with(home + 1, VecDeque::new);
        }
        let idle = &mut lists[home];
        self.expire(idle, now);
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push_back(Idle { conn, since: now });
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
    async fn connect(&self, upstream: &Upstream) -> Result<Box<Conn>, UpstreamError> {
        let io = self.dial(upstream).await?;
        Ok(Box::new(
            Conn::new(TokioIo::new(io), home()).with_read_timeout(self.read_timeout),
        ))
    }
}

/// An upstream response body: read from its pooled connection as the client's side asks for
/// it, the connection going back to the pool once the body has ended (dropped earlier, the
/// connection closes). Upgrade responses come from hyper's client instead.
pub(crate) struct PooledBody(Source);

enum Source {
    Pooled {
        conn: Option<Box<Conn>>,
        framing: Framing,
        /// The upstream allows another request on the connection.
        reusable: bool,
        /// The response's fields are ready for the client (see [`Head::for_client`]).
        for_client: bool,
        /// The head written out for the client, if asked for (see [`Head::client`]).
        client: Option<ClientHead>,
        pool: Arc<Pool>,
        index: usize,
    },
    Hyper(Incoming),
}

impl PooledBody {
    /// Whether the response's fields were made ready for the client as they were parsed.
    pub(crate) fn head_for_client(&self) -> bool {
        matches!(
            self.0,
            Source::Pooled {
                for_client: true,
                ..
            }
        )
    }

    /// The body comes through hyper's client (an upgrade request's answer), which decoded
    /// its framing.
    pub(crate) fn decoded_by_hyper(&self) -> bool {
        matches!(self.0, Source::Hyper(_))
    }

    /// The response head written out for an HTTP/1.1 client, if the request asked for it.
    pub(crate) fn take_client_head(&mut self) -> Option<ClientHead> {
        match &mut self.0 {
            Source::Pooled { client, .. } => client.take(),
            Source::Hyper(_) => None,
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::Pooled { framing, index, .. } => f
                .debug_struct("PooledBody")
                .field("framing", framing)
                .field("index", index)
                .finish_non_exhaustive(),
            Source::Hyper(inner) => f.debug_tuple("PooledBody").field(inner).finish(),
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Source::Pooled { conn, framing, .. } => {
                let Some(c) = conn.as_mut() else {
                    return Poll::Ready(None);
                };
                match ready!(c.poll_body(framing, cx)) {
                    Some(Ok(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Some(Err(e)) => {
                        *conn = None;
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                    None => Poll::Ready(None),
                }
            }
            Source::Hyper(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Source::Pooled { framing, .. } => framing.ended(),
            Source::Hyper(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Source::Pooled { framing, .. } => match framing {
                Framing::Done => SizeHint::with_exact(0),
                Framing::Length(n) => SizeHint::with_exact(*n),
                _ => SizeHint::default(),
            },
            Source::Hyper(inner) => inner.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so the end is checked here.
        if let Source::Pooled {
            conn,
            framing,
            reusable: true,
            pool,
            index,
            ..
        } = &mut self.0
            && framing.ended()
            && let Some(conn) = conn.take()
            && conn.is_clean()
        {
            pool.checkin(*index, conn);
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

/// Which idle lists the calling thread's runtime uses: 0 off the shards, shard + 1 on one.
fn home() -> usize {
    crate::shards::current().map_or(0, |shard| shard + 1)
}

/// The idle lists even if a thread panicked while holding them (it holds no invariant a panic
/// could break halfway).
fn lock(idle: &Mutex<Vec<VecDeque<Idle>>>) -> MutexGuard<'_, Vec<VecDeque<Idle>>> {
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}
