//! Bounds on what one client can make the edge hold.

use std::time::Duration;

/// hyper refuses a smaller HTTP/1 read buffer.
const MIN_H1_BUFFER: usize = 8 * 1024;

/// Timeouts and size limits. `Default` gives production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long a client may take to send a request head. hyper starts this timer whenever an
    /// HTTP/1.1 connection waits for a request head, so it also closes an HTTP/1.1 keep-alive
    /// connection that stays idle this long. It also bounds the wait for the first request on
    /// any connection (HTTP/2 included), counted from accept or from the end of the TLS
    /// handshake. Default 10 s.
    pub header_read_timeout: Duration,
    /// A connection without any traffic for this long is shut down gracefully (HTTP/2 gets a
    /// GOAWAY; requests in flight finish). Checked every quarter of the timeout, so the close
    /// happens up to 25 % later. An idle HTTP/1.1 connection meets `header_read_timeout` first
    /// when that is shorter (see there). Default 60 s.
    pub idle_timeout: Duration,
    /// From accept to the end of the TLS handshake (including the ClientHello). Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// Between two successful writes to a client: a client that takes nothing of what the
    /// edge sends for this long (it stopped reading: its TCP window stays full) has its
    /// connection closed. The timer runs only while a write waits. nginx's `send_timeout`.
    /// (An HTTP/2 client that reads but grants no flow-control window stalls its streams
    /// without blocking a write: not covered; the idle timeout's graceful close waits for
    /// those streams.) Default 60 s.
    pub send_timeout: Duration,
    /// Connections served at once over all listeners of one [`crate::Edge`]. At the limit each
    /// listener holds one accepted connection unserved until a slot frees, and accepts no more
    /// (further clients wait in the kernel's backlog). Default 10 000; 0 counts as 1.
    pub max_connections: usize,
    /// The largest request head. An HTTP/1.1 head beyond it gets 431 (pipelined ones too:
    /// request line and fields counted as `name: value` lines); HTTP/2 header lists beyond it
    /// are refused by the h2 layer. hyper cannot go below 8 KiB for HTTP/1.1, so smaller
    /// values act as 8 KiB there. Default 16 KiB.
    pub max_header_bytes: usize,
    /// How long the [`crate::ChallengeResponder`] may take to answer an HTTP-01 request
    /// (then 404) or a TLS-ALPN-01 handshake (also bounded by `tls_handshake_timeout`).
    /// Default 5 s.
    pub challenge_timeout: Duration,
    /// After shutdown is requested, how long requests in flight may take before their
    /// connections are dropped. Default 10 s.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            challenge_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The most bytes an HTTP/1.1 request head may take before it is refused (431):
    /// `max_header_bytes`, but not below the 8 KiB hyper needs for its read buffer.
    pub(crate) fn h1_max_head(&self) -> usize {
        self.max_header_bytes.max(MIN_H1_BUFFER)
    }
}
