//! HTTP-01 and TLS-ALPN-01 challenge state shared by every node (DNS-01 lives in
//! [`crate::dns01`]): written to the store before a challenge is triggered,
//! answered by whichever node the CA reaches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use store::Storage;

use crate::{DomainName, Error, Result, layout, lock};

/// The ACME challenge types fleetgate solves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChallengeKind {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// Solved through the delegated DNS zone ([`crate::Dns01`]); the only kind for wildcards.
    #[serde(rename = "dns-01")]
    Dns01,
}

impl ChallengeKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "http-01" => Some(ChallengeKind::Http01),
            "tls-alpn-01" => Some(ChallengeKind::TlsAlpn01),
            "dns-01" => Some(ChallengeKind::Dns01),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Http01Record {
    domain: String,
    key_authorization: String,
}

#[derive(Serialize, Deserialize)]
struct TlsAlpn01Record {
    domain: String,
    /// SHA-256 of the key authorization, hex.
    digest_hex: String,
}

/// How long a lookup that found nothing is remembered, so random tokens cannot hammer the store.
const MISS_TTL: Duration = Duration::from_secs(2);
/// How long a TLS-ALPN-01 answer read from the store (published by a peer) is reused. Short: the
/// peer may withdraw it and publish another for the same name with the next order.
const PEER_ANSWER_TTL: Duration = Duration::from_secs(1);

/// Challenge responses, published to the store and answered from memory or the store.
/// An acme-tls/1 certificate, with when it was read from the store (`None`: we published it).
type AlpnAnswer = (Arc<CertifiedKey>, Option<Instant>);

#[derive(Debug)]
pub struct Challenges {
    store: Arc<dyn Storage>,
    http: Mutex<HashMap<String, (String, String)>>,
    /// Our own published answers (no expiry) and peers' answers read from the store (expiring).
    alpn: Mutex<HashMap<String, AlpnAnswer>>,
    misses: Mutex<HashMap<String, Instant>>,
}

impl Challenges {
    pub fn new(store: Arc<dyn Storage>) -> Self {
        Challenges {
            store,
            http: Mutex::default(),
            alpn: Mutex::default(),
            misses: Mutex::default(),
        }
    }

    /// Publish an HTTP-01 response: in the store first (so every node can answer), then locally.
    pub async fn publish_http01(
        &self,
        domain: &DomainName,
        token: &str,
        key_auth: &str,
    ) -> Result<()> {
        let record = Http01Record {
            domain: domain.to_string(),
            key_authorization: key_auth.to_string(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Crypto(e.to_string()))?;
        self.store.put(&layout::http01(token), &bytes).await?;
        lock(&self.http).insert(
            token.to_string(),
            (domain.to_string(), key_auth.to_string()),
        );
        lock(&self.misses).clear();
        Ok(())
    }

    /// Publish a TLS-ALPN-01 response for `domain` with the SHA-256 digest of the key authorization.
    pub async fn publish_tls_alpn01(&self, domain: &DomainName, digest: &[u8]) -> Result<()> {
        let record = TlsAlpn01Record {
            domain: domain.to_string(),
            digest_hex: hex(digest),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Crypto(e.to_string()))?;
        self.store.put(&layout::tls_alpn01(domain), &bytes).await?;
        let cert = alpn_certificate(domain.as_str(), digest)?;
        lock(&self.alpn).insert(domain.to_string(), (cert, None));
        lock(&self.misses).clear();
        Ok(())
    }

    /// Remove a finished HTTP-01 challenge.
    pub async fn withdraw_http01(&self, token: &str) -> Result<()> {
        lock(&self.http).remove(token);
        self.store.delete(&layout::http01(token)).await?;
        Ok(())
    }

    /// Remove a finished TLS-ALPN-01 challenge.
    pub async fn withdraw_tls_alpn01(&self, domain: &DomainName) -> Result<()> {
        lock(&self.alpn).remove(domain.as_str());
        self.store.delete(&layout::tls_alpn01(domain)).await?;
        Ok(())
    }

    /// The key authorization for `token` if it was published for `host`.
    /// The caller only asks for hosts it serves.
    pub async fn http01(&self, host: &str, token: &str) -> Option<String> {
        if let Some((domain, ka)) = lock(&self.http).get(token) {
            return (domain == host).then(|| ka.clone());
        }
        let miss_key = format!("h/{token}");
        if self.recent_miss(&miss_key) {
            return None;
        }
        let found = match self.store.get(&layout::http01(token)).await {
            Ok(Some(bytes)) => serde_json::from_slice::<Http01Record>(&bytes).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "challenge lookup in the store failed");
                None
            }
        };
        match found {
            Some(rec) if rec.domain == host => Some(rec.key_authorization),
            _ => {
                lock(&self.misses).insert(miss_key, Instant::now());
                None
            }
        }
    }

    /// The acme-tls/1 certificate for `host`, if a TLS-ALPN-01 challenge is published for it.
    pub async fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        if let Some((cert, loaded)) = lock(&self.alpn).get(host)
            && loaded.is_none_or(|at| at.elapsed() < PEER_ANSWER_TTL)
        {
            return Some(cert.clone());
        }
        let miss_key = format!("a/{host}");
        if self.recent_miss(&miss_key) {
            return None;
        }
        let domain = DomainName::parse(host).ok()?;
        let rec = match self.store.get(&layout::tls_alpn01(&domain)).await {
            Ok(Some(bytes)) => serde_json::from_slice::<TlsAlpn01Record>(&bytes).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "challenge lookup in the store failed");
                None
            }
        };
        let Some(rec) = rec.filter(|r| r.domain == host) else {
            lock(&self.misses).insert(miss_key, Instant::now());
            return None;
        };
        let digest = unhex(&rec.digest_hex)?;
        let cert = alpn_certificate(host, &digest).ok()?;
        lock(&self.alpn).insert(host.to_string(), (cert.clone(), Some(Instant::now())));
        Some(cert)
    }

    fn recent_miss(&self, key: &str) -> bool {
        let mut misses = lock(&self.misses);
        if misses.len() > 10_000 {
            misses.retain(|_, at| at.elapsed() < MISS_TTL);
        }
        misses.get(key).is_some_and(|at| at.elapsed() < MISS_TTL)
    }
}

/// A self-signed certificate for `domain` with the acmeIdentifier extension (RFC 8737).
fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>> {
    let crypto = |e: rcgen::Error| Error::Crypto(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(crypto)?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key).map_err(crypto)?;
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = crate::keys::signing_key(key_der).map_err(|e| Error::Crypto(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Lowercase hex (the stored form).
fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Hex of either case; `None` for anything else (odd length, other characters).
fn unhex(text: &str) -> Option<Vec<u8>> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .ok()
}
