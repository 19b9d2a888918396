//! Certificates for fleetgate: where they come from (ACME, files, the internal CA), the shared
//! challenge state any node answers from, and when to renew.
//!
//! **Architecture invariant:** `certs` talks to storage only through [`store::Storage`] and to the
//! serving side only through [`Deployer`]; it never opens a socket to clients.

pub mod acme;
mod bundle;
mod challenge;
pub mod dns01;
mod domain;
mod due;
mod error;
pub mod files;
pub mod inspect;
pub mod internal;
mod keys;
pub mod layout;
pub mod limits;
mod managed;
mod manager;
mod notice;
pub mod renewal;
mod status;

pub use bundle::{CertBundle, CertMeta, LastError, SourceKind};
pub use challenge::{ChallengeKind, Challenges};
pub use dns01::Dns01;
pub use domain::{DomainError, DomainName};
pub use error::{AcmeProblem, Error};
pub use inspect::{Finding, Report, Severity, check_certificate};
pub use keys::KeyType;
pub use manager::{
    CertId, CertSource, Deployer, MAX_OBTAINING, ManagedCert, Manager, RenewRequest, Timings,
};
pub use status::{CertState, CertStatus, LiveStatus, StatusRecord};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A poisoned mutex only means another thread panicked while holding it; the maps behind this
/// crate's mutexes stay consistent enough to use, so the guard is taken anyway.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
