//! The optional access log: one structured `tracing` event per request, target `access`, level
//! INFO, with `client` (the peer's address, or the one a trusted balancer's PROXY header named),
//! `method`, `host`, `path` (without the query, which often carries secrets),
//! `status`, `upstream` (empty when the edge answered itself), `duration_ms` (until the response
//! body was sent or the client left) and `bytes` (response body bytes sent). A request whose
//! client went away before a response head is logged with status 499 (nginx's "client closed
//! request").

use std::net::IpAddr;

use http::{Method, Request};
use tokio::time::Instant;
use tracing::info;

/// A request being logged; [`AccessLog::finish`] writes the line.
#[derive(Debug)]
pub(crate) struct AccessLog {
    client: IpAddr,
    method: Method,
    host: String,
    path: String,
    started: Instant,
    done: bool,
}

impl AccessLog {
    pub(crate) fn start<B>(req: &Request<B>, host: &str, client: IpAddr) -> AccessLog {
        AccessLog {
            client: client.to_canonical(),
            method: req.method().clone(),
            host: host.to_owned(),
            path: req.uri().path().to_owned(),
            started: Instant::now(),
            done: false,
        }
    }

    pub(crate) fn finish(mut self, status: u16, upstream: Option<&str>, bytes: u64) {
        self.done = true;
        self.emit(status, upstream, bytes);
    }

    fn emit(&self, status: u16, upstream: Option<&str>, bytes: u64) {
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        info!(
            target: "access",
            client = %self.client,
            method = self.method.as_str(),
            host = self.host.as_str(),
            path = self.path.as_str(),
            status,
            upstream = upstream.unwrap_or(""),
            duration_ms,
            bytes,
            "request"
        );
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if !self.done {
            self.emit(499, None, 0);
        }
    }
}
