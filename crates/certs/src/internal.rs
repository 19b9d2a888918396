//! The built-in CA: a root kept in storage that issues for any configured name, so the quickstart
//! runs with no network.
//!
//! - **One root per cluster.** The root (ECDSA P-256, "fleetgate internal root", valid 10 years,
//!   `CA:TRUE, pathlen:0`, key usage certSign + cRLSign) lives at [`layout::internal_ca`] as JSON
//!   holding its certificate and key. The first node that needs it takes the
//!   [`layout::internal_ca_lock`] lease, **re-reads** (a peer may have created it meanwhile),
//!   generates it only if still missing, and writes it with `put_fenced`. Nodes that find the lock
//!   held wait with short jittered pauses (up to [`LOCK_WAIT`]), re-reading each time, and then
//!   report [`Error::Busy`]. Each [`InternalCa`] caches the root in memory once loaded.
//! - **Leaves.** [`InternalCa::issue`] signs a fresh key of the requested [`KeyType`] with the
//!   root: SANs are the domains (wildcards allowed), EKU serverAuth, valid [`LEAF_VALIDITY`] (7
//!   days, starting [`BACKDATE`] in the past to tolerate clock skew). The chain is leaf + root.
//!   Under the lifetime rule in [`crate::renewal`] (1/2 of the lifetime remaining, since 7 days is
//!   under 10) a leaf is renewed 3.5 days after issuance.
//! - **Trust.** Clients trust these leaves only after installing the root ([`InternalCa::root_pem`],
//!   exposed by the binary). The root can sign any name and its key sits in the store, so whoever
//!   can read the store can mint certificates those clients accept: protect the store accordingly.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde::{Deserialize, Serialize};
use store::{Lease, StorageKey};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use crate::{CertBundle, DomainName, Error, KeyType, Result, SourceKind, layout};

/// The root's subject common name.
pub const ROOT_COMMON_NAME: &str = "fleetgate internal root";
/// The root's validity: 10 years.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(3653 * 86_400);
/// A leaf's validity.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 86_400);
/// Validity starts this long before issuance, for peers whose clocks run a little behind.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// The lease taken while creating the root; creating it takes milliseconds.
pub const LOCK_TTL: Duration = Duration::from_secs(20);
/// How long to wait for a peer that holds the lock before giving up with [`Error::Busy`]. Longer
/// than [`LOCK_TTL`], so a lease abandoned by a crashed peer expires while we wait.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Pause between lock attempts: uniformly random in this range (milliseconds).
const LOCK_RETRY_MS: std::ops::Range<u64> = 50..250;

/// The stored form of the root.
#[derive(Serialize, Deserialize)]
struct StoredRoot {
    cert_pem: String,
    key_pem: String,
}

/// A loaded root, ready to sign.
struct Root {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// The built-in CA of one node. Cheap to share behind an `Arc`; nodes sharing a store share the
/// root.
pub struct InternalCa {
    store: Arc<dyn store::Storage>,
    node: String,
    root: OnceCell<Arc<Root>>,
}

impl fmt::Debug for InternalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InternalCa")
            .field("node", &self.node)
            .field("root_loaded", &self.root.initialized())
            .finish_non_exhaustive()
    }
}

impl InternalCa {
    /// `node` identifies this node as the lock owner.
    pub fn new(store: Arc<dyn store::Storage>, node: String) -> Self {
        InternalCa {
            store,
            node,
            root: OnceCell::new(),
        }
    }

    /// The root certificate (PEM), loading it from the store or creating it on first use.
    pub async fn root_pem(&self) -> Result<String> {
        Ok(self.root().await?.cert_pem.clone())
    }

    /// Issue a leaf for `domains` with a fresh key of `key_type`, signed by the root.
    pub async fn issue(&self, domains: &[DomainName], key_type: KeyType) -> Result<CertBundle> {
        if domains.is_empty() {
            return Err(Error::Config(
                "the internal CA needs at least one domain name".into(),
            ));
        }
        let root = self.root().await?;
        let names: Vec<String> = domains.iter().map(|d| d.as_str().to_owned()).collect();
        // RSA key generation takes tens of milliseconds: keep it off the async workers.
        let (chain_pem, key_pem) =
            tokio::task::spawn_blocking(move || sign_leaf(&root, &names, key_type))
                .await
                .map_err(|e| Error::Crypto(format!("leaf signing task failed: {e}")))??;
        CertBundle::from_pem(chain_pem, key_pem, SourceKind::Internal, None)
    }

    async fn root(&self) -> Result<Arc<Root>> {
        self.root
            .get_or_try_init(|| self.load_or_create())
            .await
            .cloned()
    }

    async fn load_or_create(&self) -> Result<Arc<Root>> {
        let key = layout::internal_ca();
        if let Some(root) = self.load(&key).await? {
            return Ok(root);
        }
        let lock = layout::internal_ca_lock();
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match self.store.try_lock(&lock, &self.node, LOCK_TTL).await? {
                Ok(lease) => {
                    let created = self.create_under(&key, &lease).await;
                    if let Err(e) = self.store.unlock(&lease).await {
                        // The lease expires by itself within LOCK_TTL.
                        tracing::warn!(error = %e, lock = %lock, "cannot release the internal CA lock");
                    }
                    match created {
                        // Our lease expired before the write (a very slow store): a peer may have
                        // taken over. Start again; the re-read will find its root.
                        Err(Error::Store(store::Error::LeaseLost { .. })) => {
                            tracing::warn!(lock = %lock, "lost the internal CA lock while creating the root");
                        }
                        other => return other,
                    }
                }
                Err(holder) => {
                    tracing::debug!(holder = %holder.owner, lock = %lock, "waiting for a peer creating the internal CA");
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Busy {
                    name: lock.to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(LOCK_RETRY_MS))).await;
            if let Some(root) = self.load(&key).await? {
                return Ok(root);
            }
        }
    }

    /// With the lease held: re-read, and create the root only if it is still missing.
    async fn create_under(&self, key: &StorageKey, lease: &Lease) -> Result<Arc<Root>> {
        if let Some(root) = self.load(key).await? {
            return Ok(root);
        }
        let stored = generate_root()?;
        let json = serde_json::to_vec_pretty(&stored)
            .map_err(|e| Error::Crypto(format!("cannot encode the root: {e}")))?;
        self.store.put_fenced(key, &json, lease).await?;
        tracing::info!(node = %self.node, "created the internal CA root");
        parse_root(key, &stored).map(Arc::new)
    }

    async fn load(&self, key: &StorageKey) -> Result<Option<Arc<Root>>> {
        let Some(bytes) = self.store.get(key).await? else {
            return Ok(None);
        };
        let stored: StoredRoot = serde_json::from_slice(&bytes).map_err(|e| corrupt(key, e))?;
        parse_root(key, &stored).map(|r| Some(Arc::new(r)))
    }
}

fn corrupt(key: &StorageKey, detail: impl fmt::Display) -> Error {
    Error::Store(store::Error::Corrupt {
        key: key.to_string(),
        detail: detail.to_string(),
    })
}

fn crypto(context: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Crypto(format!("{context}: {e}"))
}

fn parse_root(key: &StorageKey, stored: &StoredRoot) -> Result<Root> {
    // Checks that the PEM parses and that the key belongs to the certificate.
    crate::bundle::certified_key(&stored.cert_pem, &stored.key_pem, None)
        .map_err(|e| corrupt(key, format!("the stored root is unusable: {e}")))?;
    let key_pair =
        KeyPair::from_pem(&stored.key_pem).map_err(|e| corrupt(key, format!("root key: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(&stored.cert_pem, key_pair)
        .map_err(|e| corrupt(key, format!("root certificate: {e}")))?;
    Ok(Root {
        cert_pem: stored.cert_pem.clone(),
        issuer,
    })
}

fn generate_root() -> Result<StoredRoot> {
    let key = KeyType::EcdsaP256.generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, ROOT_COMMON_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fleetgate");
    let not_before = OffsetDateTime::now_utc() - BACKDATE;
    params.not_before = not_before;
    params.not_after = not_before + ROOT_VALIDITY;
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
        .self_signed(&key)
        .map_err(crypto("cannot create the root"))?;
    Ok(StoredRoot {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Returns the chain (leaf, root) and the leaf key, PEM.
fn sign_leaf(root: &Root, names: &[String], key_type: KeyType) -> Result<(String, String)> {
    let key = key_type.generate()?;
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(crypto("invalid name for a certificate"))?;
    params.distinguished_name = DistinguishedName::new();
    // X.509 caps a common name at 64 characters; the SANs carry the names anyway.
    if let Some(first) = names.first().filter(|n| n.len() <= 64) {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    let not_before = OffsetDateTime::now_utc() - BACKDATE;
    params.not_before = not_before;
    params.not_after = not_before + LEAF_VALIDITY;
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = match key_type {
        KeyType::Rsa2048 => vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => vec![KeyUsagePurpose::DigitalSignature],
    };
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &root.issuer)
        .map_err(crypto("cannot sign the leaf"))?;
    let mut chain = cert.pem();
    if !chain.ends_with('\n') {
        chain.push('\n');
    }
    chain.push_str(&root.cert_pem);
    Ok((chain, key.serialize_pem()))
}

/// 16 bytes from the system CSPRNG, positive and without a leading zero byte (RFC 5280: at most
/// 20 octets; the CA/B Forum asks for at least 64 unpredictable bits).
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| Error::Crypto("the system random generator failed".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}
