//! The storage key layout of the delegated zone: the one place that names `dns/` keys.
//!
//! ```text
//! dns/delegations/<name>.json      Delegation {name, id}: _acme-challenge.<name> CNAMEs to <id>.<zone>
//! dns/ids/<id>.json                the same Delegation, found by id (the listener's "does this name exist")
//! dns/txt/<fqdn>/<hash>.json       TxtRecord {name, value, created_ms}: one object per value,
//!                                  <hash> = the first 32 hex digits of SHA-256(value)
//! dns/acme-dns/<username>.json     an acme-dns account: subdomain, allowfrom, PBKDF2 hash of the
//!                                  password (never the password)
//! ```
//!
//! Lock: `dns-delegate-<name>`, held while a delegation is created (two nodes delegating one
//! name at once get the same id).
//!
//! One object per TXT value, not one object per name: a wildcard and its base name (`*.shop.example`
//! and `shop.example`) put two values on one name during one order, possibly from two nodes at once,
//! and separate objects need no read-modify-write (no lock). A name's values are `list` of its prefix.
//! Names are lower-case ASCII without the trailing dot; `sanitize_segment` keeps every character a
//! DNS name checked by [`crate::records`] can have, so a segment maps back to exactly one name.

use store::{LockName, StorageKey};

/// Every key below is built from fixed segments and `sanitize_segment` output (at most 200 bytes
/// each, well under the 512-byte limit), which `StorageKey::new` always accepts; so this cannot fail.
#[allow(clippy::expect_used)]
fn key(text: String) -> StorageKey {
    StorageKey::new(text).expect("dns layout builds valid storage keys")
}

pub fn delegation(name: &str) -> StorageKey {
    key(format!(
        "dns/delegations/{}.json",
        store::sanitize_segment(name)
    ))
}

pub fn delegation_lock(name: &str) -> LockName {
    LockName::new(&format!("dns-delegate-{name}"))
}

pub fn delegations_prefix() -> StorageKey {
    key("dns/delegations".to_string())
}

pub fn delegation_id(id: &str) -> StorageKey {
    key(format!("dns/ids/{}.json", store::sanitize_segment(id)))
}

pub fn acme_dns_account(username: &str) -> StorageKey {
    key(format!(
        "dns/acme-dns/{}.json",
        store::sanitize_segment(username)
    ))
}

/// The prefix holding every TXT value of `fqdn`.
pub fn txt_prefix(fqdn: &str) -> StorageKey {
    key(format!("dns/txt/{}", store::sanitize_segment(fqdn)))
}

pub fn txt(fqdn: &str, value: &str) -> StorageKey {
    key(format!(
        "dns/txt/{}/{}.json",
        store::sanitize_segment(fqdn),
        value_hash(value)
    ))
}

fn value_hash(value: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    digest
        .as_ref()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn values_differing_in_case_get_their_own_keys() {
        let a = txt("x.acme.example", "AbC");
        let b = txt("x.acme.example", "abc");
        assert_ne!(a, b);
        assert!(a.starts_with(&txt_prefix("x.acme.example")));
        assert!(!a.starts_with(&txt_prefix("acme.example")));
    }

    #[test]
    fn underscore_names_survive() {
        assert_eq!(
            txt_prefix("_acme-challenge.shop.example").as_str(),
            "dns/txt/_acme-challenge.shop.example"
        );
    }
}
