//! The zone's data in the shared store: TXT values and delegations ([`crate::layout`] names the
//! keys). Any node writes, every node's listener reads; nothing here is cached, so a value is
//! visible to every node as soon as `add_txt` returns.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use store::Storage;

use crate::{Error, Result, layout};

/// Longest TXT value: one character-string (RFC 1035 §3.3.14).
pub const MAX_TXT_LEN: usize = 255;
/// Length of a delegation id (lower-case letters and digits; about 103 bits).
const ID_LEN: usize = 20;
/// The lock held while a delegation is made: its lease, and how long to wait for a peer's.
const DELEGATE_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(10);
const DELEGATE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// `_acme-challenge.<name>` is a CNAME to `<id>.<zone>`, whose TXT records this fleet serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The customer's name (`shop.example`; a wildcard's base name).
    pub name: String,
    /// The label under the zone.
    pub id: String,
}

impl Delegation {
    /// The name inside `zone` that holds the TXT records: `<id>.<zone>`.
    pub fn target(&self, zone: &str) -> String {
        format!("{}.{}", self.id, zone.trim_end_matches('.'))
    }

    /// The record for the name's owner, in zone-file form.
    pub fn cname_record(&self, zone: &str) -> String {
        format!(
            "_acme-challenge.{}. CNAME {}.",
            self.name,
            self.target(zone)
        )
    }
}

#[derive(Serialize, Deserialize)]
struct TxtRecord {
    name: String,
    value: String,
    /// When it was added, Unix milliseconds (0 in records written before this field).
    #[serde(default)]
    created_ms: u64,
}

/// TXT values and delegations in the shared store.
#[derive(Debug, Clone)]
pub struct Records {
    store: Arc<dyn Storage>,
}

impl Records {
    pub fn new(store: Arc<dyn Storage>) -> Records {
        Records { store }
    }

    /// The store underneath (for the other objects of the zone's layout).
    pub(crate) fn store(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    /// Add `value` to the TXT records of `name` (other values stay). Idempotent.
    pub async fn add_txt(&self, name: &str, value: &str) -> Result<()> {
        let name = normalize_name(name)?;
        check_txt_value(value)?;
        let record = TxtRecord {
            name: name.clone(),
            value: value.to_string(),
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Invalid(e.to_string()))?;
        self.store.put(&layout::txt(&name, value), &bytes).await?;
        Ok(())
    }

    /// Remove `value` from the TXT records of `name`; removing a missing value is fine.
    pub async fn remove_txt(&self, name: &str, value: &str) -> Result<()> {
        let name = normalize_name(name)?;
        self.store.delete(&layout::txt(&name, value)).await?;
        Ok(())
    }

    /// The TXT values of `name`, sorted.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>> {
        let mut values: Vec<String> = self
            .txt_entries(name)
            .await?
            .into_iter()
            .map(|(value, _)| value)
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }

    /// The TXT values of `name` with when each was added (Unix milliseconds), oldest first.
    /// Objects that do not belong to `name` (a sanitised key shared by two names cannot happen
    /// for valid names, but the value says) are skipped.
    pub async fn txt_entries(&self, name: &str) -> Result<Vec<(String, u64)>> {
        let name = normalize_name(name)?;
        let keys = self.store.list(&layout::txt_prefix(&name)).await?;
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            // Withdrawn between `list` and `get`: simply gone.
            let Some(bytes) = self.store.get(&key).await? else {
                continue;
            };
            match serde_json::from_slice::<TxtRecord>(&bytes) {
                Ok(record) if record.name == name => {
                    entries.push((record.value, record.created_ms))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%key, error = %e, "unreadable TXT record in the store"),
            }
        }
        entries.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        Ok(entries)
    }

    /// The delegation of `name`, created (with a fresh random id) when there is none. Created
    /// under a lock, so concurrent callers (two nodes) agree on one id.
    pub async fn delegate(&self, name: &str) -> Result<Delegation> {
        let name = normalize_name(name.strip_prefix("*.").unwrap_or(name))?;
        if let Some(existing) = self.delegation(&name).await? {
            return Ok(existing);
        }
        let owner = format!("dns-{}-{:016x}", std::process::id(), fastrand::u64(..));
        let guard = store::lock(
            &self.store,
            &layout::delegation_lock(&name),
            &owner,
            DELEGATE_LOCK_TTL,
            DELEGATE_LOCK_WAIT,
        )
        .await?
        .ok_or_else(|| {
            Error::Invalid(format!(
                "another process has been delegating {name} for {DELEGATE_LOCK_WAIT:?}; try again"
            ))
        })?;
        // Re-check under the lock: a peer may have just made it.
        let result = match self.delegation(&name).await {
            Ok(Some(existing)) => Ok(existing),
            Ok(None) => self.create_delegation(name).await,
            Err(e) => Err(e),
        };
        if let Err(e) = guard.release().await {
            tracing::debug!(error = %e, "releasing the delegation lock failed; it expires");
        }
        result
    }

    async fn create_delegation(&self, name: String) -> Result<Delegation> {
        let delegation = Delegation {
            id: std::iter::repeat_with(|| {
                let n = fastrand::u8(0..36);
                char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 })
            })
            .take(ID_LEN)
            .collect(),
            name,
        };
        let bytes = serde_json::to_vec(&delegation).map_err(|e| Error::Invalid(e.to_string()))?;
        // The id first: a delegation that can be found by name always exists by id too.
        self.store
            .put(&layout::delegation_id(&delegation.id), &bytes)
            .await?;
        self.store
            .put(&layout::delegation(&delegation.name), &bytes)
            .await?;
        Ok(delegation)
    }

    /// The delegation of `name` (a wildcard's base name), if one was made.
    pub async fn delegation(&self, name: &str) -> Result<Option<Delegation>> {
        let name = normalize_name(name.strip_prefix("*.").unwrap_or(name))?;
        self.read_delegation(&layout::delegation(&name))
            .await
            .map(|found| found.filter(|d| d.name == name))
    }

    /// The delegation whose id is `id`.
    pub async fn delegation_by_id(&self, id: &str) -> Result<Option<Delegation>> {
        let id = id.to_ascii_lowercase();
        self.read_delegation(&layout::delegation_id(&id))
            .await
            .map(|found| found.filter(|d| d.id == id))
    }

    /// Every delegation, sorted by name.
    pub async fn delegations(&self) -> Result<Vec<Delegation>> {
        let mut all = Vec::new();
        for key in self.store.list(&layout::delegations_prefix()).await? {
            if let Some(d) = self.read_delegation(&key).await? {
                all.push(d);
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn read_delegation(&self, key: &store::StorageKey) -> Result<Option<Delegation>> {
        let Some(bytes) = self.store.get(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("unreadable delegation {key}: {e}")))
    }
}

/// A DNS name as the store keeps it: lower-case, no trailing dot, labels of `a-z0-9_-` (1 to 63
/// bytes), at most 253 bytes.
pub fn normalize_name(name: &str) -> Result<String> {
    let bad = |reason: &str| Error::Invalid(format!("invalid DNS name {name:?}: {reason}"));
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    if lower.is_empty() {
        return Err(bad("empty"));
    }
    if lower.len() > 253 {
        return Err(bad("longer than 253 bytes"));
    }
    for label in lower.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("every label needs 1 to 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("only letters, digits, '-' and '_' are allowed"));
        }
    }
    Ok(lower)
}

fn check_txt_value(value: &str) -> Result<()> {
    if value.len() > MAX_TXT_LEN {
        return Err(Error::Invalid(format!(
            "a TXT value has at most {MAX_TXT_LEN} bytes, this one {}",
            value.len()
        )));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::Invalid(
            "a TXT value here is printable ASCII".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn records() -> (tempfile::TempDir, Records) {
        let dir = tempfile::tempdir().unwrap();
        let store = store::DirStore::open(dir.path()).unwrap();
        (dir, Records::new(Arc::new(store)))
    }

    #[tokio::test]
    async fn several_values_per_name() {
        let (_dir, r) = records();
        r.add_txt("X.acme.example.", "one").await.unwrap();
        r.add_txt("x.acme.example", "Two").await.unwrap();
        r.add_txt("x.acme.example", "one").await.unwrap();
        assert_eq!(r.txt("x.acme.example").await.unwrap(), ["Two", "one"]);
        r.remove_txt("x.acme.example", "one").await.unwrap();
        r.remove_txt("x.acme.example", "one").await.unwrap();
        assert_eq!(r.txt("x.acme.example").await.unwrap(), ["Two"]);
        assert!(r.txt("acme.example").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn delegation_is_stable_and_found_by_id() {
        let (_dir, r) = records();
        let d = r.delegate("*.shop.example").await.unwrap();
        assert_eq!(d.name, "shop.example");
        assert_eq!(d.id.len(), ID_LEN);
        assert_eq!(r.delegate("shop.example").await.unwrap(), d);
        assert_eq!(r.delegation_by_id(&d.id).await.unwrap(), Some(d.clone()));
        assert_eq!(
            d.cname_record("acme.ops.example."),
            format!(
                "_acme-challenge.shop.example. CNAME {}.acme.ops.example.",
                d.id
            )
        );
        assert_eq!(r.delegations().await.unwrap(), [d]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_delegations_agree_on_one_id() {
        let (_dir, r) = records();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.delegate("race.example").await.unwrap() })
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.unwrap().id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(r.delegations().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bad_input_is_refused() {
        let (_dir, r) = records();
        assert!(r.add_txt("a..b", "v").await.is_err());
        assert!(r.add_txt("a b.example", "v").await.is_err());
        assert!(r.add_txt("a.example", &"v".repeat(256)).await.is_err());
        assert!(r.add_txt("a.example", "tab\there").await.is_err());
    }
}
