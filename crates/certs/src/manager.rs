//! Decides, per managed certificate, when to load, order or renew, and deploys the result.
//! (Being written.)

use std::path::PathBuf;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::{DomainName, KeyType};

/// The identity of a managed certificate: its site's first domain.
pub type CertId = String;

/// Where a managed certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    Acme(crate::acme::AcmeSettings),
    Internal,
    Files { cert: PathBuf, key: PathBuf },
}

/// One certificate the manager keeps current.
#[derive(Debug, Clone)]
pub struct ManagedCert {
    pub id: CertId,
    pub domains: Vec<DomainName>,
    pub source: CertSource,
    pub key_type: KeyType,
}

/// The serving side, as the manager sees it.
pub trait Deployer: Send + Sync + 'static {
    /// Serve `key` for `names` from now on (replacing what was served for `id`).
    fn deploy(&self, id: &CertId, names: &[DomainName], key: Arc<CertifiedKey>);
    /// Stop serving what was deployed for `id`.
    fn retract(&self, id: &CertId);
}

pub struct Manager;
#[derive(Debug)]
pub struct CertStatus;
#[derive(Debug)]
pub enum CertState {}
