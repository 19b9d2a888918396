//! The listener: one UDP socket and one TCP listener on the same address, answering from the
//! [`Zone`]. Bounded everywhere: UDP queries in flight, TCP connections, TCP frame size, idle
//! and write timeouts, a deadline on every store lookup. `serve` stops on its shutdown future.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::records::Records;
use crate::wire::{self, Decoded, Reply, Request};
use crate::zone::Zone;
use crate::{Error, Result};

/// The listener's bounds. [`Limits::default`] suits a node answering a CA's resolvers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// UDP queries answered at once; more are dropped (the resolver retries).
    pub udp_in_flight: usize,
    /// TCP connections open at once; more are closed at once.
    pub tcp_connections: usize,
    /// Largest TCP query frame; a larger length prefix closes the connection. Queries are small:
    /// one question, perhaps an OPT record.
    pub tcp_max_frame: usize,
    /// How long a TCP connection may wait for its next query.
    pub tcp_idle: Duration,
    /// How long one query frame (after its length) or one answer may take to cross.
    pub tcp_io: Duration,
    /// Bound on the store lookups of one answer; past it the answer is SERVFAIL.
    pub lookup: Duration,
    /// How long `serve` waits for answers in flight after shutdown.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            udp_in_flight: 1024,
            tcp_connections: 256,
            tcp_max_frame: 4096,
            tcp_idle: Duration::from_secs(10),
            tcp_io: Duration::from_secs(5),
            lookup: Duration::from_secs(3),
            drain: Duration::from_secs(5),
        }
    }
}

/// A bound listener, not yet serving.
#[derive(Debug)]
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
    zone: Arc<Zone>,
    records: Records,
    limits: Limits,
}

/// Tries to find a port free for both UDP and TCP when the caller asked for port 0.
const BIND_ATTEMPTS: usize = 8;

impl DnsServer {
    /// Bind UDP and TCP on `addr` (port 0: one free port for both).
    pub async fn bind(addr: SocketAddr, zone: Zone, records: Records) -> Result<DnsServer> {
        let io = |what: String| move |source| Error::Io { what, source };
        let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(io(format!("bind DNS (UDP) on {addr}")))?;
            let port_addr = udp
                .local_addr()
                .map_err(io("read the UDP socket's address".to_string()))?;
            match TcpListener::bind(port_addr).await {
                Ok(tcp) => {
                    return Ok(DnsServer {
                        udp,
                        tcp,
                        zone: Arc::new(zone),
                        records,
                        limits: Limits::default(),
                    });
                }
                Err(e) => last = Some(io(format!("bind DNS (TCP) on {port_addr}"))(e)),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config(format!("cannot bind DNS on {addr}"))))
    }

    pub fn with_limits(mut self, limits: Limits) -> DnsServer {
        self.limits = limits;
        self
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.udp.local_addr().map_err(|source| Error::Io {
            what: "read the DNS socket's address".to_string(),
            source,
        })
    }

    /// Answer until `shutdown` completes, then stop accepting and wait up to `limits.drain` for
    /// answers in flight.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let addr = self.local_addr()?;
        tracing::info!(%addr, zone = self.zone.apex(), "DNS listener serving");
        let shared = Arc::new(Shared {
            zone: self.zone,
            records: self.records,
            limits: self.limits,
        });
        tracker.spawn(udp_loop(
            Arc::new(self.udp),
            Arc::clone(&shared),
            token.clone(),
            tracker.clone(),
        ));
        tracker.spawn(tcp_loop(self.tcp, shared, token.clone(), tracker.clone()));
        shutdown.await;
        token.cancel();
        tracker.close();
        if tokio::time::timeout(self.limits.drain, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(%addr, "DNS answers still in flight after the drain deadline");
        }
        tracing::info!(%addr, "DNS listener stopped");
        Ok(())
    }
}

#[derive(Debug)]
struct Shared {
    zone: Arc<Zone>,
    records: Records,
    limits: Limits,
}

impl Shared {
    /// The encoded answer to `request` within `limit` bytes; SERVFAIL when the store fails or is
    /// too slow.
    async fn respond(&self, request: &Request, limit: usize) -> Vec<u8> {
        let name = request.query.name();
        let qtype = request.query.query_type();
        let reply = match tokio::time::timeout(
            self.limits.lookup,
            self.zone.answer(request, &self.records),
        )
        .await
        {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                tracing::warn!(%name, %qtype, error = %e, "DNS lookup failed; answering SERVFAIL");
                servfail()
            }
            Err(_) => {
                tracing::warn!(%name, %qtype, timeout = ?self.limits.lookup, "DNS lookup timed out; answering SERVFAIL");
                servfail()
            }
        };
        tracing::debug!(%name, %qtype, rcode = %reply.rcode, answers = reply.answers.len(), "DNS query");
        wire::encode(request, &reply, limit)
    }
}

fn servfail() -> Reply {
    Reply {
        rcode: ResponseCode::ServFail,
        authoritative: false,
        answers: Vec::new(),
        authority: Vec::new(),
    }
}

/// Largest UDP query read; anything longer arrives cut and is answered FORMERR.
const UDP_READ_BUFFER: usize = 4096;

async fn udp_loop(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let in_flight = Arc::new(Semaphore::new(shared.limits.udp_in_flight));
    let mut buf = vec![0u8; UDP_READ_BUFFER];
    loop {
        let (n, peer) = tokio::select! {
            () = token.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems; the socket
                    // itself stays usable.
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    continue;
                }
            },
        };
        let request = match wire::decode(&buf[..n]) {
            Decoded::Ignore => continue,
            Decoded::Error { rcode, bytes } => {
                tracing::debug!(%peer, %rcode, "DNS error answer (UDP)");
                let _ = socket.send_to(&bytes, peer).await;
                continue;
            }
            Decoded::Query(request) => request,
        };
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            tracing::debug!(%peer, "DNS UDP queries at their limit; one dropped");
            continue;
        };
        let socket = Arc::clone(&socket);
        let shared = Arc::clone(&shared);
        tracker.spawn(async move {
            let bytes = shared.respond(&request, request.udp_limit()).await;
            if let Err(e) = socket.send_to(&bytes, peer).await {
                tracing::debug!(%peer, error = %e, "DNS UDP send failed");
            }
            drop(permit);
        });
    }
}

async fn tcp_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let connections = Arc::new(Semaphore::new(shared.limits.tcp_connections));
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "DNS TCP accept failed");
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!(%peer, "DNS TCP connections at their limit; one closed");
            continue;
        };
        let shared = Arc::clone(&shared);
        let token = token.clone();
        tracker.spawn(async move {
            if let Err(reason) = tcp_connection(stream, &shared, &token).await {
                tracing::debug!(%peer, reason, "DNS TCP connection closed");
            }
            drop(permit);
        });
    }
}

/// Serve one TCP connection: length-prefixed queries, one after the other, until the peer
/// closes, idles, misbehaves or shutdown starts.
async fn tcp_connection(
    mut stream: TcpStream,
    shared: &Shared,
    token: &CancellationToken,
) -> std::result::Result<(), &'static str> {
    let limits = shared.limits;
    loop {
        let mut prefix = [0u8; 2];
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            read = tokio::time::timeout(limits.tcp_idle, stream.read_exact(&mut prefix)) => match read {
                Err(_) => return Err("idle"),
                Ok(Err(_)) => return Ok(()),
                Ok(Ok(_)) => {}
            },
        }
        let len = usize::from(u16::from_be_bytes(prefix));
        if len == 0 {
            return Err("empty frame");
        }
        if len > limits.tcp_max_frame {
            return Err("frame over the size limit");
        }
        let mut frame = vec![0u8; len];
        match tokio::time::timeout(limits.tcp_io, stream.read_exact(&mut frame)).await {
            Err(_) => return Err("frame too slow"),
            Ok(Err(_)) => return Err("frame cut short"),
            Ok(Ok(_)) => {}
        }
        let bytes = match wire::decode(&frame) {
            Decoded::Ignore => return Err("not a query"),
            Decoded::Error { bytes, .. } => bytes,
            Decoded::Query(request) => shared.respond(&request, wire::TCP_LIMIT).await,
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return Err("answer too long");
        };
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
        match tokio::time::timeout(limits.tcp_io, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err("write failed"),
            Err(_) => return Err("write too slow"),
        }
    }
}
