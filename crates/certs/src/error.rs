//! The one error type of this crate.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An ACME problem document (RFC 7807), kept for logs and `fleetgate certs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeProblem {
    pub r#type: Option<String>,
    pub detail: Option<String>,
    pub status: Option<u16>,
    /// `identifier: type: detail` for each subproblem.
    pub subproblems: Vec<String>,
}

impl std::fmt::Display for AcmeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})",
            self.detail.as_deref().unwrap_or("no detail"),
            self.r#type.as_deref().unwrap_or("no type")
        )?;
        for sub in &self.subproblems {
            write!(f, "; {sub}")?;
        }
        Ok(())
    }
}

fn join_findings(findings: &[crate::inspect::Finding]) -> String {
    let parts: Vec<String> = findings.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// Errors from obtaining, loading or storing certificates.
///
/// Three families, kept apart so the scheduler never matches strings: caller/config bugs
/// ([`Error::Config`], [`Error::InvalidCertificate`], [`Error::KeyMismatch`], [`Error::Rejected`]), faults of the CA
/// ([`Error::Acme`], [`Error::RateLimited`]), and transient infrastructure failures
/// ([`Error::Store`], [`Error::Network`], [`Error::Timeout`]); [`Error::Dns`] says which it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid certificate{}: {detail}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    InvalidCertificate {
        path: Option<PathBuf>,
        detail: String,
    },
    #[error("the private key{} does not match the certificate", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    KeyMismatch { path: Option<PathBuf> },
    /// [`crate::inspect::check_certificate`] found fatal problems; `findings` are the fatal ones.
    #[error("certificate{} refused: {}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default(), join_findings(.findings))]
    Rejected {
        path: Option<PathBuf>,
        findings: Vec<crate::inspect::Finding>,
    },
    #[error("the CA refused: {problem}")]
    Acme { problem: AcmeProblem },
    #[error("rate limited by the CA: {problem}")]
    RateLimited {
        problem: AcmeProblem,
        retry_after: Option<Duration>,
    },
    #[error("cannot reach the CA: {detail}")]
    Network { detail: String },
    #[error("timed out: {what}")]
    Timeout { what: String },
    #[error("validation failed for {domain}: {problem}")]
    Validation {
        domain: String,
        problem: AcmeProblem,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("another node holds the lock for {name}")]
    Busy { name: String },
    /// A cluster-wide issuance limit (see `limits`) would be passed; try after `retry_after`.
    #[error("issuance limit reached: {what}")]
    LimitReached { what: String, retry_after: Duration },
    #[error("cryptography: {0}")]
    Crypto(String),
    /// DNS-01 could not publish or check a value: no delegation yet for the name (retryable:
    /// the operator may add one), or the RFC 2136 primary refused or did not answer.
    #[error("DNS-01: {detail}")]
    Dns { detail: String, retryable: bool },
}

impl Error {
    /// Whether trying again later may succeed. Config errors and bad files are not retried by the
    /// scheduler (they are retried when the config or files change).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config(_)
            | Error::InvalidCertificate { .. }
            | Error::KeyMismatch { .. }
            | Error::Rejected { .. }
            | Error::Crypto(_) => false,
            Error::Io { .. }
            | Error::Acme { .. }
            | Error::RateLimited { .. }
            | Error::Network { .. }
            | Error::Timeout { .. }
            | Error::Validation { .. }
            | Error::Busy { .. }
            | Error::LimitReached { .. } => true,
            Error::Store(e) => e.is_retryable(),
            Error::Dns { retryable, .. } => *retryable,
        }
    }

    /// How long the CA asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            Error::LimitReached { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
