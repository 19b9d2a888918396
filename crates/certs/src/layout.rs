//! The storage key layout: the one place that names keys and locks (certmagic's KeyBuilder).
//!
//! ```text
//! acme/<ca>/account.json                 ACME account credentials for one CA directory
//! certs/<issuer>/<cert-id>.json          CertBundle (chain, key, meta) — <issuer> is acme-<ca> or internal
//! status/<cert-id>.json                  last error and state for `fleetgate certs`
//! renew/<cert-id>.json                   a request to renew now (`Manager::request_renewal`)
//! challenges/http-01/<token>.json        HTTP-01 key authorization (+ domain)
//! challenges/tls-alpn-01/<domain>.json   TLS-ALPN-01 key authorization digest
//! internal/ca.json                       the built-in CA's root certificate and key
//! nodes/<node>.json                      each node's heartbeat (for `fleetgate status`)
//! limits/{orders,certs,failures}/<name>  sliding-window counters of the cluster-wide limits
//! tls-tickets/keys.json                  the fleet's TLS session ticket keys (sealed)
//! ```
//! Lock names: `cert-<cert-id>`, `account-<ca>`, `internal-ca`, `limits`, `tls-tickets`.

use store::{LockName, StorageKey};

use crate::DomainName;

/// Every key below is built from fixed segments and `sanitize_segment` output, which
/// `StorageKey::new` always accepts (a property test in `store` checks that); so this cannot fail.
#[allow(clippy::expect_used)]
fn key(text: String) -> StorageKey {
    StorageKey::new(text).expect("layout builds valid storage keys")
}

/// A short, stable, safe name for a CA directory URL: host and path, sanitised.
pub fn ca_id(directory_url: &str) -> String {
    let without_scheme = directory_url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(directory_url);
    store::sanitize_segment(&without_scheme.replace('/', "-"))
}

pub fn account(ca: &str) -> StorageKey {
    key(format!("acme/{}/account.json", store::sanitize_segment(ca)))
}

pub fn account_lock(ca: &str) -> LockName {
    LockName::new(&format!("account-{ca}"))
}

/// `acme-<ca>` or `internal`.
pub fn issuer_acme(ca: &str) -> String {
    format!("acme-{ca}")
}

pub const ISSUER_INTERNAL: &str = "internal";

pub fn certs_prefix() -> StorageKey {
    key("certs".to_string())
}

pub fn cert(issuer: &str, cert_id: &str) -> StorageKey {
    key(format!(
        "certs/{}/{}.json",
        store::sanitize_segment(issuer),
        store::sanitize_segment(cert_id)
    ))
}

pub fn cert_lock(cert_id: &str) -> LockName {
    LockName::new(&format!("cert-{cert_id}"))
}

pub fn status(cert_id: &str) -> StorageKey {
    key(format!("status/{}.json", store::sanitize_segment(cert_id)))
}

/// A request to renew `cert_id` now, honoured by whichever node takes the certificate's lease.
pub fn renew_request(cert_id: &str) -> StorageKey {
    key(format!("renew/{}.json", store::sanitize_segment(cert_id)))
}

pub fn http01(token: &str) -> StorageKey {
    key(format!(
        "challenges/http-01/{}.json",
        store::sanitize_segment(token)
    ))
}

pub fn tls_alpn01(domain: &DomainName) -> StorageKey {
    key(format!(
        "challenges/tls-alpn-01/{}.json",
        store::sanitize_segment(domain.as_str())
    ))
}

pub fn internal_ca() -> StorageKey {
    key("internal/ca.json".to_string())
}

pub fn internal_ca_lock() -> LockName {
    LockName::new("internal-ca")
}

/// The fleet's TLS session ticket keys (previous, current, next), one object.
pub fn ticket_keys() -> StorageKey {
    key("tls-tickets/keys.json".to_string())
}

/// Held while a node rotates the ticket keys.
pub fn ticket_keys_lock() -> LockName {
    LockName::new("tls-tickets")
}

/// The prefixes whose objects hold private keys (and the TLS ticket keys, which open every
/// session ticket), sealed at rest when a sealing key is configured.
pub fn sealed_prefixes() -> Vec<StorageKey> {
    ["certs", "acme", "internal", "tls-tickets"]
        .into_iter()
        .map(|p| key(p.to_string()))
        .collect()
}

/// Where node `name` writes its heartbeat.
pub fn node(name: &str) -> StorageKey {
    key(format!("nodes/{}.json", store::sanitize_segment(name)))
}

pub fn nodes_prefix() -> StorageKey {
    key("nodes".to_string())
}

pub fn status_prefix() -> StorageKey {
    key("status".to_string())
}

/// A limits counter: `what` is `orders/<ca>`, `certs/<domain>` or `failures/<name>`.
pub fn limits_key(what: &str) -> StorageKey {
    let mut parts = what.splitn(2, '/');
    let kind = store::sanitize_segment(parts.next().unwrap_or("other"));
    let name = store::sanitize_segment(parts.next().unwrap_or("_"));
    key(format!("limits/{kind}/{name}.json"))
}

pub fn limits_lock() -> LockName {
    LockName::new("limits")
}
