//! A certificate chain, its private key and what we know about it, stored as one object.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::{AcmeProblem, Error, Result};

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Acme,
    Internal,
    Files,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Acme => "acme",
            SourceKind::Internal => "internal",
            SourceKind::Files => "files",
        })
    }
}

/// What we know about a certificate besides its bytes. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertMeta {
    /// DNS names in the leaf's subjectAltName, lower-case.
    pub names: Vec<String>,
    pub source: SourceKind,
    /// The leaf's issuer, as a distinguished name.
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    /// The leaf's serial, hex.
    pub serial: String,
    /// The ACME order that produced it.
    #[serde(default)]
    pub order_url: Option<String>,
    /// The CA directory it was obtained from.
    #[serde(default)]
    pub directory: Option<String>,
    /// The ARI suggested renewal window (start, end), when the CA offers one.
    #[serde(default)]
    pub ari_window: Option<(i64, i64)>,
    /// When the ARI window was last fetched, and when to fetch it next.
    #[serde(default)]
    pub ari_checked_at: Option<i64>,
    #[serde(default)]
    pub ari_next_check: Option<i64>,
    /// When it was written to storage.
    pub stored_at: i64,
}

/// A chain (leaf first) and its private key, PEM, plus metadata. Stored as one JSON object so a
/// reader never sees a chain without its key.
#[derive(Clone, Serialize, Deserialize)]
pub struct CertBundle {
    pub chain_pem: String,
    pub key_pem: String,
    pub meta: CertMeta,
    /// The parsed form, kept from [`CertBundle::from_pem`] so deploying does not parse the key
    /// again (loading a key validates it, which is most of the cost of loading thousands).
    #[serde(skip)]
    parsed: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertBundle")
            .field("meta", &self.meta)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The last error for a certificate, kept beside it for `fleetgate certs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub at: i64,
    pub message: String,
    pub problem: Option<AcmeProblem>,
}

impl CertBundle {
    /// Parse and check a chain and key: the chain must parse, the leaf must carry names, and the
    /// key must match the leaf. `path` names the file in errors.
    pub fn from_pem(
        chain_pem: String,
        key_pem: String,
        source: SourceKind,
        path: Option<&Path>,
    ) -> Result<Self> {
        let certified = certified_key(&chain_pem, &key_pem, path)?;
        let meta = leaf_meta(&certified.cert[0], source, path)?;
        Ok(CertBundle {
            chain_pem,
            key_pem,
            meta,
            parsed: Some(Arc::new(certified)),
        })
    }

    /// A pair already parsed and checked by [`crate::inspect`] (the key matches the leaf).
    pub(crate) fn from_certified(
        chain_pem: String,
        key_pem: String,
        certified: CertifiedKey,
        source: SourceKind,
        path: Option<&Path>,
    ) -> Result<Self> {
        let leaf = certified
            .cert
            .first()
            .ok_or_else(|| invalid(path, "no CERTIFICATE block found"))?;
        let meta = leaf_meta(leaf, source, path)?;
        Ok(CertBundle {
            chain_pem,
            key_pem,
            meta,
            parsed: Some(Arc::new(certified)),
        })
    }

    /// The rustls form, ready for the SNI map.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>> {
        match &self.parsed {
            Some(parsed) => Ok(parsed.clone()),
            None => certified_key(&self.chain_pem, &self.key_pem, None).map(Arc::new),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Seconds of validity left at `now` (negative when expired).
    pub fn seconds_left(&self, now: i64) -> i64 {
        self.meta.not_after - now
    }
}

fn invalid(path: Option<&Path>, detail: impl Into<String>) -> Error {
    Error::InvalidCertificate {
        path: path.map(Path::to_path_buf),
        detail: detail.into(),
    }
}

/// Parse PEM chain + key into a rustls `CertifiedKey`, checking that the key matches the leaf.
/// Accepts PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys.
pub(crate) fn certified_key(
    chain_pem: &str,
    key_pem: &str,
    path: Option<&Path>,
) -> Result<CertifiedKey> {
    let mut chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| invalid(path, format!("bad PEM: {e}")))?;
    for ca in chain.iter_mut().skip(1) {
        *ca = held_once(std::mem::replace(ca, CertificateDer::from(&[][..])));
    }
    if chain.is_empty() {
        return Err(invalid(path, "no CERTIFICATE block found"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        invalid(
            path,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })?;
    let signing = crate::keys::signing_key(key)
        .map_err(|e| invalid(path, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(Error::KeyMismatch {
                path: path.map(Path::to_path_buf),
            })
        }
        // `Unknown` means the key type cannot report its public key; accept it as rustls does.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(invalid(path, e.to_string())),
    }
}

/// How many distinct CA certificates [`held_once`] keeps: far more than the intermediates a
/// fleet meets (a few per CA per year), and a bound if chains with their own CA each arrive.
const CA_HELD_MAX: usize = 4096;

/// `ca` (a chain's certificate after the leaf) as one copy shared by every chain that carries
/// it. 100,000 certificates from one CA held 100,000 copies of its ~450-byte intermediate, 10 %
/// of a node's heap at 10,000 registry sites (heaptrack). The copy is kept for the process's
/// life; past [`CA_HELD_MAX`] distinct ones, a chain keeps its own.
fn held_once(ca: CertificateDer<'static>) -> CertificateDer<'static> {
    static HELD: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<&'static [u8]>>> =
        std::sync::OnceLock::new();
    let mut held = HELD
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(&der) = held.get(ca.as_ref()) {
        return CertificateDer::from(der);
    }
    if held.len() >= CA_HELD_MAX {
        return ca;
    }
    let der: &'static [u8] = Box::leak(ca.as_ref().to_vec().into_boxed_slice());
    held.insert(der);
    CertificateDer::from(der)
}

fn leaf_meta(
    leaf: &CertificateDer<'_>,
    source: SourceKind,
    path: Option<&Path>,
) -> Result<CertMeta> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| invalid(path, format!("cannot parse the leaf certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        // Old certificates may carry the name only in the subject CN.
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        return Err(invalid(path, "the leaf certificate names no DNS name"));
    }
    Ok(CertMeta {
        names,
        source,
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        order_url: None,
        directory: None,
        ari_window: None,
        ari_checked_at: None,
        ari_next_check: None,
        stored_at: now_unix(),
    })
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chains_from_one_ca_share_its_certificate() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let pair = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let chain = format!("{}{}", leaf.pem(), ca_cert.pem());
            certified_key(&chain, &key.serialize_pem(), None).unwrap()
        };
        let (a, b) = (pair("a.example"), pair("b.example"));
        assert_eq!(a.cert[1].as_ref(), ca_cert.der().as_ref());
        assert_eq!(a.cert[1].as_ref().as_ptr(), b.cert[1].as_ref().as_ptr());
        assert_ne!(a.cert[0].as_ref().as_ptr(), b.cert[0].as_ref().as_ptr());
    }
}
