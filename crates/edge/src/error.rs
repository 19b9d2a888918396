//! The crate's error type. Every variant is a caller (configuration) fault: the edge answers peer
//! faults on the wire and never returns them.

use crate::host::HostError;

/// Errors from building [`crate::Routes`], [`crate::CertMap`] entries or an [`crate::Edge`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    /// A site or certificate name is not a valid hostname (or `*.` wildcard).
    #[error("invalid hostname {name:?}")]
    InvalidName {
        name: String,
        #[source]
        reason: HostError,
    },
    /// The same hostname appears in two sites, or twice in one.
    #[error("hostname {name:?} is configured twice")]
    DuplicateName { name: String },
    /// A site or certificate without any hostname.
    #[error("no hostnames given")]
    NoNames,
    /// A status code outside what the action allows.
    #[error("status {status} is not allowed for {action} (allowed: {allowed})")]
    InvalidStatus {
        status: u16,
        action: &'static str,
        allowed: &'static str,
    },
    /// A redirect target that is not an absolute http(s) URL usable as a Location prefix.
    #[error("redirect target {to:?}: {reason}")]
    InvalidRedirect { to: String, reason: &'static str },
    /// A proxy site's settings cannot be used (upstream URL, timeouts, roots, health check).
    #[error("proxy {what}: {reason}")]
    InvalidProxy { what: String, reason: String },
    /// rustls refused the TLS configuration.
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    /// A session ticket key could not be made (no randomness, or a key the cipher refused).
    #[error("TLS session ticket key: {0}")]
    TicketKey(&'static str),
}
