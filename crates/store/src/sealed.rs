//! Sealing at rest: a [`Storage`] wrapper that encrypts the values under chosen prefixes with
//! AES-256-GCM before they reach the backend, so a shared database or mount never holds a private
//! key in the clear.
//!
//! Format of a sealed value: `FGSEAL1` (7 bytes) || nonce (12 bytes, random per write) ||
//! ciphertext || tag (16 bytes). The storage key is the additional authenticated data, so a value
//! copied to another key does not open. Values without the magic prefix are returned as they are,
//! so a store written before sealing was turned on stays readable (and is sealed on its next write).

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};

use crate::{Change, Error, Lease, LockHolder, LockName, Result, Storage, StorageKey};

const MAGIC: &[u8] = b"FGSEAL1";
const NONCE_LEN: usize = 12;

/// A 256-bit sealing key. `Debug` does not show it.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

/// Why a sealing key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a sealing key must be 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`")]
pub struct SealKeyError;

impl SealKey {
    /// Parse 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<SealKey, SealKeyError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(SealKeyError);
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            let pair = text.get(i * 2..i * 2 + 2).ok_or(SealKeyError)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| SealKeyError)?;
        }
        Ok(SealKey(key))
    }
}

/// Seals values under `prefixes` on their way into `inner`, and opens them on the way out.
pub struct SealedStore {
    inner: Arc<dyn Storage>,
    key: RandomizedNonceKey,
    prefixes: Vec<StorageKey>,
}

impl std::fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStore")
            .field("inner", &self.inner)
            .field("prefixes", &self.prefixes)
            .finish_non_exhaustive()
    }
}

impl SealedStore {
    pub fn new(inner: Arc<dyn Storage>, key: &SealKey, prefixes: Vec<StorageKey>) -> SealedStore {
        // AES-256-GCM takes any 32-byte key; `SealKey` always holds exactly 32 bytes.
        #[allow(clippy::expect_used)]
        let key = RandomizedNonceKey::new(&AES_256_GCM, &key.0).expect("a 32-byte AES-256 key");
        SealedStore {
            inner,
            key,
            prefixes,
        }
    }

    fn sealed(&self, key: &StorageKey) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }

    fn seal(&self, key: &StorageKey, value: &[u8]) -> Result<Vec<u8>> {
        if !self.sealed(key) {
            return Ok(value.to_vec());
        }
        let mut body = value.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(key.as_str().as_bytes()), &mut body)
            .map_err(|_| Error::Corrupt {
                key: key.to_string(),
                detail: "sealing failed".into(),
            })?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open(&self, key: &StorageKey, value: Vec<u8>) -> Result<Vec<u8>> {
        let Some(rest) = value.strip_prefix(MAGIC) else {
            return Ok(value);
        };
        let corrupt = |detail: &str| Error::Corrupt {
            key: key.to_string(),
            detail: detail.to_string(),
        };
        if rest.len() < NONCE_LEN {
            return Err(corrupt("sealed value too short"));
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt("bad nonce"))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(key.as_str().as_bytes()), &mut body)
            .map_err(|_| corrupt("cannot open the sealed value: wrong sealing key, or tampered"))?;
        Ok(plain.to_vec())
    }
}

#[async_trait::async_trait]
impl Storage for SealedStore {
    async fn put(&self, key: &StorageKey, value: &[u8]) -> Result<()> {
        let value = self.seal(key, value)?;
        self.inner.put(key, &value).await
    }

    async fn put_fenced(&self, key: &StorageKey, value: &[u8], lease: &Lease) -> Result<()> {
        let value = self.seal(key, value)?;
        self.inner.put_fenced(key, &value, lease).await
    }

    async fn put_many_fenced(
        &self,
        objects: &[(StorageKey, Vec<u8>)],
        lease: &Lease,
    ) -> Result<()> {
        let sealed = objects
            .iter()
            .map(|(key, value)| Ok((key.clone(), self.seal(key, value)?)))
            .collect::<Result<Vec<_>>>()?;
        self.inner.put_many_fenced(&sealed, lease).await
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>> {
        match self.inner.get(key).await? {
            Some(value) => self.open(key, value).map(Some),
            None => Ok(None),
        }
    }

    async fn delete(&self, key: &StorageKey) -> Result<()> {
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &StorageKey) -> Result<Vec<StorageKey>> {
        self.inner.list(prefix).await
    }

    async fn try_lock(
        &self,
        name: &LockName,
        owner: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lease, LockHolder>> {
        self.inner.try_lock(name, owner, ttl).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        self.inner.renew(lease, ttl).await
    }

    async fn unlock(&self, lease: &Lease) -> Result<()> {
        self.inner.unlock(lease).await
    }

    async fn locks(&self) -> Result<Vec<LockHolder>> {
        self.inner.locks().await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.inner.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::DirStore;

    fn key(text: &str) -> StorageKey {
        StorageKey::new(text).unwrap()
    }

    #[tokio::test]
    async fn seals_chosen_prefixes_and_opens_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Storage> = Arc::new(DirStore::open(dir.path()).unwrap());
        let seal = SealKey::from_hex(&"ab".repeat(32)).unwrap();
        let sealed = SealedStore::new(raw.clone(), &seal, vec![key("certs")]);

        sealed
            .put(&key("certs/a.json"), b"-----BEGIN PRIVATE KEY-----")
            .await
            .unwrap();
        sealed.put(&key("status/a.json"), b"plain").await.unwrap();
        let at_rest = raw.get(&key("certs/a.json")).await.unwrap().unwrap();
        assert!(at_rest.starts_with(MAGIC));
        assert!(!at_rest.windows(7).any(|w| w == b"PRIVATE"));
        assert_eq!(
            raw.get(&key("status/a.json")).await.unwrap().unwrap(),
            b"plain"
        );
        assert_eq!(
            sealed.get(&key("certs/a.json")).await.unwrap().unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );

        // A value moved to another key, or read with another key, does not open.
        raw.put(&key("certs/b.json"), &at_rest).await.unwrap();
        assert!(matches!(
            sealed.get(&key("certs/b.json")).await,
            Err(Error::Corrupt { .. })
        ));
        let other = SealedStore::new(
            raw.clone(),
            &SealKey::from_hex(&"cd".repeat(32)).unwrap(),
            vec![key("certs")],
        );
        assert!(matches!(
            other.get(&key("certs/a.json")).await,
            Err(Error::Corrupt { .. })
        ));

        // Values written before sealing was turned on stay readable.
        raw.put(&key("certs/old.json"), b"legacy").await.unwrap();
        assert_eq!(
            sealed.get(&key("certs/old.json")).await.unwrap().unwrap(),
            b"legacy"
        );
    }

    #[test]
    fn key_parsing() {
        assert!(SealKey::from_hex(&"0f".repeat(32)).is_ok());
        assert!(SealKey::from_hex("short").is_err());
        assert!(SealKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(format!("{:?}", SealKey::from_hex(&"0f".repeat(32)).unwrap()).contains("redacted"));
    }
}
