//! The ACME account: exactly one per CA directory per store, created by whichever node first needs
//! it, under the lock `account-<ca>`, and read back by every other node.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{Account, AccountBuilder, AccountCredentials, ExternalAccountKey, NewAccount};
use store::{Storage, StorageKey};

use super::problem::{call, call_fresh_nonce};
use super::{AcmeSettings, CALL_TIMEOUT};
use crate::{Error, Result, layout};

/// How long the account lock is leased for (renewed in the background while held).
const LOCK_TTL: Duration = Duration::from_secs(60);
/// How long to wait for a peer that is creating the account.
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// Creating an account is a directory fetch, a nonce and a newAccount POST.
const CREATE_TIMEOUT: Duration = Duration::from_secs(45);

/// The stored account for `ca`, or a new one registered with the CA and stored.
///
/// Protocol: read; if missing, take the lock, read again (a peer may have created it while we
/// waited), and only then register and store the credentials under the lease's fencing token.
///
/// With `stale`, the account with that id is known to be gone at the CA (`accountDoesNotExist`):
/// the stored one is used only if a peer already replaced it, otherwise a new one replaces it.
pub(super) async fn obtain(
    settings: &AcmeSettings,
    ca: &str,
    store: &Arc<dyn Storage>,
    node: &str,
    stale: Option<&str>,
) -> Result<Account> {
    let key = layout::account(ca);
    if stale.is_none()
        && let Some(stored) = read(store, &key).await?
    {
        return load(settings, stored).await;
    }
    let name = layout::account_lock(ca);
    let Some(guard) = store::lock(store, &name, node, LOCK_TTL, LOCK_WAIT).await? else {
        return Err(Error::Busy {
            name: name.to_string(),
        });
    };
    let result = async {
        if let Some(stored) = read(store, &key).await?
            && stale.is_none_or(|stale| stored.id != stale)
        {
            tracing::debug!("a peer stored the ACME account while we waited for the lock");
            return load(settings, stored).await;
        }
        let (account, credentials) = create(settings).await?;
        let bytes = serde_json::to_vec_pretty(&credentials)
            .map_err(|e| Error::Crypto(format!("cannot serialise the account credentials: {e}")))?;
        match store.put_fenced(&key, &bytes, &guard.lease()).await {
            Ok(()) => {}
            // Our lease ran out while the CA was slow and a peer may now be creating (or have
            // created) the account: ours stays unused at the CA, the next attempt loads theirs.
            Err(store::Error::LeaseLost { .. }) => {
                return Err(Error::Busy {
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        match stale {
            None => tracing::info!(account = account.id(), "ACME account created"),
            Some(stale) => tracing::warn!(
                account = account.id(),
                replaced = stale,
                "the CA no longer knows the stored ACME account; registered a new one"
            ),
        }
        Ok(account)
    }
    .await;
    if let Err(e) = guard.release().await {
        tracing::debug!(error = %e, "releasing the account lock failed; it will expire");
    }
    result
}

/// Stored credentials, with the account id readable (instant-acme keeps its fields private).
struct Stored {
    id: String,
    credentials: AccountCredentials,
}

async fn read(store: &Arc<dyn Storage>, key: &StorageKey) -> Result<Option<Stored>> {
    let Some(bytes) = store.get(key).await? else {
        return Ok(None);
    };
    let corrupt = |e: serde_json::Error| {
        Error::Store(store::Error::Corrupt {
            key: key.to_string(),
            detail: format!("not ACME account credentials: {e}"),
        })
    };
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    let Id { id } = serde_json::from_slice(&bytes).map_err(corrupt)?;
    let credentials = serde_json::from_slice(&bytes).map_err(corrupt)?;
    Ok(Some(Stored { id, credentials }))
}

async fn load(settings: &AcmeSettings, stored: Stored) -> Result<Account> {
    let account = call(
        "load the ACME account",
        CALL_TIMEOUT,
        builder(settings)?.from_credentials(stored.credentials),
    )
    .await?;
    tracing::debug!(account = account.id(), "ACME account loaded from the store");
    Ok(account)
}

async fn create(settings: &AcmeSettings) -> Result<(Account, AccountCredentials)> {
    let contact = settings
        .email
        .as_ref()
        .map(|email| format!("mailto:{email}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match &settings.eab {
        Some(eab) => {
            let key = decode_base64url(&eab.hmac_key).ok_or_else(|| {
                Error::Config(format!(
                    "the EAB HMAC key for kid {} is not base64url",
                    eab.kid
                ))
            })?;
            Some(ExternalAccountKey::new(eab.kid.clone(), &key))
        }
        None => None,
    };
    let new_account = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let created = call_fresh_nonce!(
        "create the ACME account",
        CREATE_TIMEOUT,
        builder(settings)?.create(&new_account, settings.directory.clone(), eab.as_ref()),
    )?;
    Ok(created)
}

/// An HTTP client trusting `ca_root` when set (Pebble, a private CA), else the platform roots.
fn builder(settings: &AcmeSettings) -> Result<AccountBuilder> {
    match &settings.ca_root {
        Some(path) => Account::builder_with_root(path).map_err(|e| {
            Error::Config(format!(
                "cannot use {} as the CA's TLS root: {e}",
                path.display()
            ))
        }),
        None => Account::builder()
            .map_err(|e| Error::Config(format!("cannot load the platform's TLS roots: {e}"))),
    }
}

/// Base64url (as CAs hand out EAB keys), tolerating padding and the standard alphabet.
fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim().trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // One character left over (6 bits) cannot encode a byte.
    (bits < 6).then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::decode_base64url;

    #[test]
    fn base64url() {
        assert_eq!(decode_base64url("").unwrap(), b"");
        assert_eq!(decode_base64url("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(decode_base64url("Zm9vYg").unwrap(), b"foob");
        assert_eq!(decode_base64url("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(decode_base64url("-_-_").unwrap(), vec![0xfb, 0xff, 0xbf]);
        assert_eq!(decode_base64url("+/+/").unwrap(), vec![0xfb, 0xff, 0xbf]);
        assert!(decode_base64url("Zm9vY").is_none());
        assert!(decode_base64url("Zm9v!").is_none());
    }
}
