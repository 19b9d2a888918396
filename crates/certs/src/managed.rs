//! What the manager keeps current: [`ManagedCert`], its identity and [`CertSource`].

use std::path::PathBuf;
use std::sync::Arc;

use store::StorageKey;

use crate::acme::AcmeSettings;
use crate::{CertBundle, DomainName, KeyType, SourceKind, layout};

/// The identity of a managed certificate: its site's first domain.
pub type CertId = String;

/// Where a managed certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// Shared: every ACME certificate of a node has the same settings (100,000 copies of the
    /// directory URL, contact and EAB otherwise).
    Acme(Arc<AcmeSettings>),
    Internal,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

impl PartialEq for CertSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (CertSource::Acme(a), CertSource::Acme(b)) => {
                a.directory == b.directory
                    && a.email == b.email
                    && a.ca_root == b.ca_root
                    && a.challenges == b.challenges
                    && a.eab.as_ref().map(|e| (&e.kid, &e.hmac_key))
                        == b.eab.as_ref().map(|e| (&e.kid, &e.hmac_key))
            }
            (CertSource::Internal, CertSource::Internal) => true,
            (CertSource::Files { cert: c1, key: k1 }, CertSource::Files { cert: c2, key: k2 }) => {
                c1 == c2 && k1 == k2
            }
            _ => false,
        }
    }
}

impl CertSource {
    pub fn kind(&self) -> SourceKind {
        match self {
            CertSource::Acme(_) => SourceKind::Acme,
            CertSource::Internal => SourceKind::Internal,
            CertSource::Files { .. } => SourceKind::Files,
        }
    }
}

/// One certificate the manager keeps current.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedCert {
    pub id: CertId,
    pub domains: Vec<DomainName>,
    pub source: CertSource,
    pub key_type: KeyType,
}

impl ManagedCert {
    /// The storage key of this certificate's bundle; `None` for files, which are not stored.
    pub fn storage_key(&self) -> Option<StorageKey> {
        match &self.source {
            CertSource::Acme(s) => Some(layout::cert(
                &layout::issuer_acme(&layout::ca_id(&s.directory)),
                &self.id,
            )),
            CertSource::Internal => Some(layout::cert(layout::ISSUER_INTERNAL, &self.id)),
            CertSource::Files { .. } => None,
        }
    }

    /// Whether `bundle` names exactly this certificate's domains.
    pub(crate) fn wants(&self, bundle: &CertBundle) -> bool {
        let mut have: Vec<&str> = bundle.meta.names.iter().map(String::as_str).collect();
        let mut want: Vec<&str> = self.domains.iter().map(DomainName::as_str).collect();
        have.sort_unstable();
        have.dedup();
        want.sort_unstable();
        want.dedup();
        have == want
    }
}
