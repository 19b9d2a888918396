//! fleetgate's delegated DNS zone for DNS-01: the domain's owner CNAMEs
//! `_acme-challenge.<name>` to `<id>.<zone>` once, and every node answers that zone's TXT
//! records from the shared store, so the delegation has no single point of failure.
//!
//! Layers, each using only the ones below it:
//! - `server`: the UDP/TCP listener ([`DnsServer`]): framing, limits, timeouts, shutdown.
//! - `zone`: the answers ([`Zone`]): SOA/NS at the apex, TXT from the store, NXDOMAIN/NODATA,
//!   REFUSED outside the zone.
//! - `wire`: the DNS wire format through hickory-proto (decode, classify, encode, truncate).
//! - `lookup`: a stub-resolver client (UDP, TCP on truncation) for checks; the listener does
//!   not use it.
//! - `update`: RFC 2136 updates with TSIG to a primary the operator runs ([`Rfc2136`]), for
//!   zones this crate does not serve.
//! - `acme_dns`: the acme-dns protocol without HTTP ([`AcmeDns`]: accounts with hashed
//!   passwords, updates checked for key, network, subdomain and value), over `records`.
//! - `records`: the zone's data in the store ([`Records`]: TXT values, delegations), with the
//!   key layout in `layout`.
//!
//! **Architecture invariant:** `dns` knows nothing about ACME; it serves whatever TXT values
//! [`Records`] holds.

pub mod acme_dns;
pub mod layout;
pub mod lookup;
pub mod records;
pub mod server;
pub mod update;
pub mod wire;
pub mod zone;

pub use acme_dns::{AcmeDns, Registration};
/// The DNS types answers are made of, for callers that read them (`fleetgate dns check`).
pub use hickory_proto as hickory;
pub use records::{Delegation, Records};
pub use server::{DnsServer, Limits};
pub use update::{Rfc2136, TsigKey};
pub use zone::Zone;

/// Errors of the DNS crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration that cannot work (the zone, its name servers).
    #[error("{0}")]
    Config(String),
    /// Bad input: a name or TXT value that cannot be stored or served.
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Store(#[from] store::Error),
    /// Credentials or source address refused (acme-dns: HTTP 401).
    #[error("{0}")]
    Denied(String),
    /// A DNS server answered an error rcode (an RFC 2136 primary refusing an update).
    #[error("cannot {what}: the server answered {rcode}")]
    Rejected {
        what: String,
        rcode: String,
        retryable: bool,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying again later may succeed (storage outages).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(e) => e.is_retryable(),
            Error::Io { .. } => true,
            Error::Rejected { retryable, .. } => *retryable,
            Error::Config(_) | Error::Invalid(_) | Error::Denied(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
