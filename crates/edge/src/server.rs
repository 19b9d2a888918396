//! [`Edge`]: the accept loops, per-connection limits and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info, warn};

use crate::challenge::ChallengeResponder;
use crate::error::EdgeError;
use crate::handler::{Handler, Shared, Transport};
use crate::http1::{self as lane, Rewind, Served};
use crate::http2;
use crate::idle::{Activity, Tracked, Watchdog};
use crate::limits::Limits;
use crate::observe::{self, NoObserver, Observer, OpenConnection};
use crate::proxy_protocol::{self, Origin, ProxyProtocol};
use crate::resolver::CertMap;
use crate::routes::Routes;
use crate::shards::Shards;
use crate::signal::{Signal, Waiter};
use crate::tickets::TicketKeys;
use crate::tls::{Handshake, TlsConfigs};

/// Pause after an accept error that is not about one connection (out of file descriptors...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn listener(self) -> observe::Listener {
        match self {
            Scheme::Http => observe::Listener::Http,
            Scheme::Https => observe::Listener::Https,
        }
    }
}

/// The HTTP and HTTPS front: serves the sites in [`Routes`] with certificates from a
/// [`CertMap`], answers ACME challenges through a [`ChallengeResponder`].
///
/// One `Edge` can serve any number of listeners; [`Limits::max_connections`] counts across all
/// of them.
pub struct Edge {
    /// The sites, certificates, challenge answers and limits every connection's handler reads.
    shared: Arc<Shared>,
    tls: TlsConfigs,
    /// The keys sealing TLS session tickets, replaced live by [`Edge::ticket_keys`]' holder.
    tickets: Arc<TicketKeys>,
    http1: http1::Builder,
    http2: http2::Settings,
    permits: Arc<Semaphore>,
    proxy_protocol: ProxyProtocol,
    /// Where connections run; on the accepting runtime without.
    shards: Option<Arc<Shards>>,
    /// HTTP/1.1 connections start on the express lane (else hyper serves them throughout).
    express_lane: bool,
}

impl Edge {
    /// Builds the TLS configuration and the HTTP connection settings once. Session tickets are
    /// sealed with a random key of this process until [`Edge::ticket_keys`] is given others.
    /// Fails only if rustls rejects the configuration or no ticket key could be made.
    pub fn new(
        routes: Routes,
        certs: Arc<CertMap>,
        challenges: Arc<dyn ChallengeResponder>,
        limits: Limits,
    ) -> Result<Edge, EdgeError> {
        let tickets = Arc::new(TicketKeys::new()?);
        let tls = TlsConfigs::new(Arc::clone(&certs), Arc::clone(&tickets))?;
        let mut http1 = http1::Builder::new();
        // One flat buffer per write instead of writev over head and body: the bodies here are
        // short (redirects, small proxied answers) and a copy is cheaper than the iovec (~5 %
        // less CPU per request, A/B alternated on scenarios 1 and 4).
        http1
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.h1_max_head());
        let http2 = http2::Settings {
            max_header_list_size: u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
        };
        let permits = Arc::new(Semaphore::new(
            limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
        ));
        Ok(Edge {
            shared: Arc::new(Shared {
                routes: ArcSwap::from_pointee(routes),
                certs,
                challenges,
                limits,
                https_port: 443,
                observer: Arc::new(NoObserver),
                observing: false,
                unknown: None,
                acme: None,
            }),
            tls,
            tickets,
            http1,
            http2,
            permits,
            proxy_protocol: ProxyProtocol::default(),
            shards: None,
            express_lane: true,
        })
    }

    /// The port plain-HTTP requests are redirected to (default 443, which is left out of the
    /// Location).
    pub fn with_https_port(mut self, port: u16) -> Edge {
        self.change_shared(|shared| shared.https_port = port);
        self
    }

    /// Reports connections, TLS handshakes and requests to `observer` (the default reports
    /// nothing). Sites and upstreams are counted as the routes were built: see
    /// [`Routes::with_observer`].
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Edge {
        self.change_shared(|shared| {
            shared.unknown = observer.site(observe::UNKNOWN_SITE);
            shared.acme = observer.site(observe::ACME_SITE);
            shared.observer = observer;
            shared.observing = true;
        });
        self
    }

    /// Changes the shared state while the edge is being built.
    fn change_shared(&mut self, change: impl FnOnce(&mut Shared)) {
        if Arc::get_mut(&mut self.shared).is_none() {
            // Connections of an `Edge` taken back out of its `Arc` still read the old one.
            let old = &self.shared;
            self.shared = Arc::new(Shared {
                routes: ArcSwap::new(old.routes.load_full()),
                certs: Arc::clone(&old.certs),
                challenges: Arc::clone(&old.challenges),
                limits: old.limits.clone(),
                https_port: old.https_port,
                observer: Arc::clone(&old.observer),
                observing: old.observing,
                unknown: old.unknown,
                acme: old.acme,
            });
        }
        // Unique now: made above if it was not.
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            change(shared);
        }
    }

    /// Connections from these balancers start with a PROXY protocol header (v1 or v2) naming
    /// the client, which then stands for the peer everywhere (X-Forwarded-For, Forwarded,
    /// `ip_hash`, logs). Their connections without a valid header are closed.
    pub fn with_proxy_protocol(mut self, proxy_protocol: ProxyProtocol) -> Edge {
        self.proxy_protocol = proxy_protocol;
        self
    }

    /// Accepted connections are handed to these worker runtimes in turn and served there for
    /// their whole life (see [`Shards`]); the accept loops stay where they are spawned.
    pub fn with_shards(mut self, shards: Arc<Shards>) -> Edge {
        self.shards = Some(shards);
        self
    }

    /// Whether HTTP/1.1 connections start on the express lane (the default) or are served by
    /// hyper from their first byte. The differential tests compare the two; it is also the way
    /// back to hyper alone should the lane be suspected of a fault.
    pub fn with_express_lane(mut self, on: bool) -> Edge {
        self.express_lane = on;
        self
    }

    /// Replaces the sites; requests already being handled finish with the old ones.
    pub fn set_routes(&self, routes: Routes) {
        self.shared.routes.store(Arc::new(routes));
    }

    /// The sites in force.
    pub fn routes(&self) -> Arc<Routes> {
        self.shared.routes.load_full()
    }

    /// The keys that seal and open TLS session tickets on every HTTPS listener of this edge; set
    /// the fleet's keys here ([`TicketKeys::set`]) so tickets resume on every node.
    pub fn ticket_keys(&self) -> &Arc<TicketKeys> {
        &self.tickets
    }

    /// The certificate map the HTTPS listeners use.
    pub fn certs(&self) -> &Arc<CertMap> {
        &self.shared.certs
    }

    /// Serves plain HTTP (ACME HTTP-01, redirects to https, site actions) on `listener` until
    /// `shutdown` is cancelled; then stops accepting, lets requests in flight finish for up to
    /// [`Limits::drain_timeout`], drops what remains and returns.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.run(listener, shutdown, Scheme::Http).await;
    }

    /// Serves HTTPS (HTTP/1.1 and HTTP/2 by ALPN, TLS-ALPN-01 challenges) on `listener`, with the
    /// same shutdown behaviour as [`Edge::serve_http`].
    pub async fn serve_https(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.run(listener, shutdown, Scheme::Https).await;
    }

    async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        scheme: Scheme,
    ) {
        // For logs: the address, or why it is unknown (never a Debug `Some(..)`).
        let local = listener
            .local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |addr| addr.to_string());
        info!(%local, scheme = scheme.as_str(), "listening");
        let connections = TaskTracker::new();
        // Connections wait on these rather than on `shutdown` itself: see [`Signal`].
        let stop = Signal::new();
        let drop_all = Signal::new();
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "accept failed");
                        if !is_per_connection(&error) {
                            tokio::select! {
                                () = shutdown.cancelled() => break,
                                () = sleep(ACCEPT_BACKOFF) => {}
                            }
                        }
                        continue;
                    }
                },
            };
            // The permit is taken after accepting, so that an idle listener holds none; at the
            // limit, each listener holds one accepted connection unserved and accepts no more.
            let permit = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    // The semaphore is never closed; stop rather than spin if it were.
                    Err(_) => break,
                },
            };
            let _ = stream.set_nodelay(true);
            let edge = Arc::clone(&self);
            let shutdown = shutdown.clone();
            let mut dropped = drop_all.waiter();
            let stop = stop.waiter();
            let span = debug_span!("conn", %peer, scheme = scheme.as_str());
            // On a shard the socket is registered with that runtime's IO driver instead.
            let (handle, stream) = match &self.shards {
                Some(shards) => match stream.into_std() {
                    Ok(stream) => (Some(shards.pick().clone()), Accepted::Moving(stream)),
                    Err(error) => {
                        debug!(%error, "cannot hand the connection to a worker");
                        continue;
                    }
                },
                None => (None, Accepted::Here(stream)),
            };
            // Counted from here; the task owns the count, on whichever runtime it runs.
            let open = self
                .shared
                .observing
                .then(|| OpenConnection::new(&self.shared.observer, scheme.listener()));
            let task = async move {
                let _permit = permit;
                let _open = open;
                let stream = match stream {
                    Accepted::Here(stream) => stream,
                    Accepted::Moving(stream) => match TcpStream::from_std(stream) {
                        Ok(stream) => stream,
                        Err(error) => {
                            debug!(%error, "worker cannot take the connection");
                            return;
                        }
                    },
                };
                tokio::select! {
                    biased;
                    () = dropped.fired() => debug!("dropped at drain timeout"),
                    () = edge.connection(stream, peer, scheme, &shutdown, stop) => {}
                }
            }
            .instrument(span);
            match handle {
                Some(handle) => connections.spawn_on(task, &handle),
                None => connections.spawn(task),
            };
        }
        drop(listener);
        stop.fire();
        connections.close();
        info!(
            %local,
            open = connections.len(),
            "stopped accepting; draining connections"
        );
        if timeout(self.shared.limits.drain_timeout, connections.wait())
            .await
            .is_err()
        {
            warn!(
                %local,
                open = connections.len(),
                "drain timeout reached; dropping connections"
            );
            drop_all.fire();
            connections.wait().await;
        }
        info!(%local, "listener stopped");
    }

    async fn connection(
        self: &Arc<Self>,
        mut stream: TcpStream,
        mut peer: SocketAddr,
        scheme: Scheme,
        shutdown: &CancellationToken,
        stop: Waiter,
    ) {
        if self.proxy_protocol.expects_header(peer.ip()) {
            // A balancer's connection: the client's address comes first, within the time a
            // request head may take.
            match timeout(
                self.shared.limits.header_read_timeout,
                proxy_protocol::read_header(&mut stream),
            )
            .await
            {
                Ok(Ok(Origin::Client(client))) => peer = client,
                Ok(Ok(Origin::Balancer)) => {}
                Ok(Err(error)) => {
                    debug!(%error, "closing connection from a balancer");
                    return;
                }
                Err(_) => {
                    debug!("no PROXY header in time; closing connection from a balancer");
                    return;
                }
            }
        }
        match scheme {
            // Plain HTTP is HTTP/1.1 only (no h2c): no sniffing for the HTTP/2 preface.
            Scheme::Http => {
                self.serve(stream, peer, Transport::Plain, false, shutdown, stop)
                    .await;
            }
            Scheme::Https => {
                // Boxed, as the other states a connection leaves behind (see [`Edge::serve`]).
                let handshake = Box::pin(self.tls.handshake(
                    stream,
                    peer.ip(),
                    &self.shared.certs,
                    &*self.shared.challenges,
                    &self.shared.limits,
                    &*self.shared.observer,
                ))
                .await;
                if let Handshake::Serve { stream, sni, key } = handshake {
                    // ALPN decides the protocol (RFC 9113 3.2); without it, HTTP/1.1.
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let transport = Transport::Tls { sni, key };
                    self.serve(stream, peer, transport, h2, shutdown, stop)
                        .await;
                }
            }
        }
    }

    /// Serves HTTP/2 (`h2`) or HTTP/1.1 on one connection until the client leaves, the connection has
    /// been quiet too long, or shutdown; the last two close it gracefully. HTTP/1.1 starts on the
    /// express lane ([`lane::serve`]) and goes to hyper at the first request the lane does
    /// not take. An HTTP/1.1 protocol switch (WebSocket) hands the connection to the proxy's
    /// tunnel and ends this.
    async fn serve<I>(
        self: &Arc<Self>,
        io: I,
        peer: SocketAddr,
        transport: Transport,
        h2: bool,
        shutdown: &CancellationToken,
        mut stop: Waiter,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let handler = Arc::new(Handler {
            shared: Arc::clone(&self.shared),
            transport,
            peer,
            shutdown: shutdown.clone(),
        });
        let service = {
            let activity = Arc::clone(&activity);
            let handler = Arc::clone(&handler);
            service_fn(move |req| {
                activity.request_started();
                Arc::clone(&handler).call(req)
            })
        };
        let mut io = Tracked::new(io, Arc::clone(&activity), self.shared.limits.send_timeout);
        let mut watchdog = Watchdog::new(
            Arc::clone(&activity),
            self.shared.limits.header_read_timeout,
            self.shared.limits.idle_timeout,
        );
        // A connection's task is as large as its largest state, whichever it is in: the
        // states other than the express lane's (the TLS handshake before, hyper's HTTP/2 and
        // HTTP/1.1 connections) are boxed, so that an idle HTTP/1.1 connection, the most
        // common kind, holds no room for them.
        if h2 {
            Box::pin(http2::serve(
                &self.http2,
                TokioIo::new(io),
                service,
                watchdog,
                stop,
            ))
            .await;
            return;
        }
        let served = if self.express_lane {
            lane::serve(&mut io, &handler, &activity, &mut watchdog, &mut stop).await
        } else {
            Served::Handover(bytes::Bytes::new())
        };
        let read = match served {
            Served::Closed => return,
            Served::Handover(read) => read,
        };
        let io = TokioIo::new(Rewind::new(read, io));
        let conn = self.http1.serve_connection(io, service).with_upgrades();
        Box::pin(supervise(conn, watchdog, stop)).await;
    }
}

/// An accepted connection: on this runtime, or on its way to a shard's.
enum Accepted {
    Here(TcpStream),
    Moving(std::net::TcpStream),
}

/// A hyper server connection that can be asked to finish gracefully.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    Self: Future<Output = Result<(), hyper::Error>>,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// Drives `conn` to its end; on shutdown (`stop`) or when the watchdog fires, closes it
/// gracefully.
async fn supervise<C: Graceful>(conn: C, mut watchdog: Watchdog, mut stop: Waiter) {
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(error) = result {
                    debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = stop.fired(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            expiry = watchdog.expired(), if !closing => {
                debug!(?expiry, "closing quiet connection");
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("routes", &self.shared.routes.load())
            .field("certs", &self.shared.certs)
            .field("limits", &self.shared.limits)
            .field("https_port", &self.shared.https_port)
            .finish_non_exhaustive()
    }
}

/// Accept errors that concern only the connection being accepted.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}
