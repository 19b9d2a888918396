//! The acme-dns protocol's core, without HTTP: accounts that may set the TXT records of one
//! subdomain of the zone, as acme-dns (github.com/joohoi/acme-dns) defines them, so existing
//! ACME clients with an acme-dns provider (lego, certbot-dns-acmedns, cert-manager) can use the
//! fleet. The HTTP routes (`POST /register`, `POST /update` with `X-Api-User`/`X-Api-Key`,
//! `GET /health`) belong on the admin listener and map [`Error::Invalid`] to 400 and
//! [`Error::Denied`] to 401.
//!
//! - `register`: a fresh username (UUID), password (40 characters, shown once, stored only as a
//!   PBKDF2-HMAC-SHA256 hash) and subdomain (UUID) whose full name is `<subdomain>.<zone>`,
//!   optionally limited to source networks (`allowfrom`).
//! - `update`: with the right credentials, from an allowed address, for the account's own
//!   subdomain, a 43-character TXT value (base64url of a SHA-256, as DNS-01 uses) becomes one of
//!   the subdomain's two current values (the older of two is replaced, as acme-dns does, so a
//!   wildcard and its base name can be validated together).

use std::net::IpAddr;
use std::num::NonZeroU32;

use aws_lc_rs::pbkdf2;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::records::Records;
use crate::{Error, Result, layout};

/// Length of a DNS-01 TXT value: base64url (no padding) of a SHA-256 digest.
pub const TXT_LEN: usize = 43;
/// TXT values kept per subdomain (acme-dns keeps two).
const VALUES_KEPT: usize = 2;
const PASSWORD_LEN: usize = 40;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
/// PBKDF2 rounds: about 20 ms per check in an optimised build; updates are rare.
const ROUNDS: u32 = 100_000;

/// A new account, with its password: the only time the password is known.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    pub username: String,
    pub password: String,
    pub fulldomain: String,
    pub subdomain: String,
    pub allowfrom: Vec<String>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("fulldomain", &self.fulldomain)
            .field("allowfrom", &self.allowfrom)
            .finish()
    }
}

/// What the store keeps of an account.
#[derive(Serialize, Deserialize)]
struct Account {
    username: String,
    subdomain: String,
    /// Networks in CIDR form (`10.0.0.0/8`), checked when the account was made.
    allowfrom: Vec<String>,
    salt_hex: String,
    hash_hex: String,
    rounds: u32,
}

/// acme-dns accounts and updates over the zone's [`Records`].
#[derive(Debug, Clone)]
pub struct AcmeDns {
    records: Records,
    zone: String,
}

impl AcmeDns {
    pub fn new(records: Records, zone: &str) -> AcmeDns {
        AcmeDns {
            records,
            zone: zone.trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    /// A new account limited to `allowfrom` (CIDR networks or addresses; empty: anywhere).
    pub async fn register(&self, allowfrom: &[String]) -> Result<Registration> {
        let networks = parse_networks(allowfrom)?;
        let username = uuid()?;
        let subdomain = uuid()?;
        let password = random_password()?;
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| Error::Invalid("no randomness for a salt".to_string()))?;
        let account = Account {
            username: username.clone(),
            subdomain: subdomain.clone(),
            allowfrom: networks.iter().map(ToString::to_string).collect(),
            salt_hex: hex(&salt),
            hash_hex: hex(&hash(&salt, ROUNDS, &password)?),
            rounds: ROUNDS,
        };
        let bytes = serde_json::to_vec(&account).map_err(|e| Error::Invalid(e.to_string()))?;
        self.records
            .store()
            .put(&layout::acme_dns_account(&username), &bytes)
            .await?;
        Ok(Registration {
            fulldomain: format!("{subdomain}.{}", self.zone),
            username,
            password,
            subdomain,
            allowfrom: networks.iter().map(ToString::to_string).collect(),
        })
    }

    /// Set `txt` for `subdomain` as `username`/`key` from `client`. Nothing is stored unless
    /// every check passes.
    pub async fn update(
        &self,
        username: &str,
        key: &str,
        subdomain: &str,
        txt: &str,
        client: IpAddr,
    ) -> Result<()> {
        let denied = || Error::Denied("wrong X-Api-User or X-Api-Key".to_string());
        // Usernames are UUIDs: anything else cannot name an account (and no key is built from it).
        if !is_uuid(username) {
            return Err(denied());
        }
        let Some(bytes) = self
            .records
            .store()
            .get(&layout::acme_dns_account(username))
            .await?
        else {
            return Err(denied());
        };
        let account: Account = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("unreadable acme-dns account: {e}")))?;
        let salt = unhex(&account.salt_hex).ok_or_else(denied)?;
        let expected = unhex(&account.hash_hex).ok_or_else(denied)?;
        let rounds = NonZeroU32::new(account.rounds).ok_or_else(denied)?;
        if account.username != username
            || pbkdf2::verify(
                pbkdf2::PBKDF2_HMAC_SHA256,
                rounds,
                &salt,
                key.as_bytes(),
                &expected,
            )
            .is_err()
        {
            return Err(denied());
        }
        let networks = parse_networks(&account.allowfrom)?;
        if !networks.is_empty() && !networks.iter().any(|n| n.contains(&client)) {
            return Err(Error::Denied(format!(
                "{client} is not in this account's allowfrom"
            )));
        }
        if subdomain != account.subdomain {
            return Err(Error::Invalid("bad_subdomain".to_string()));
        }
        if txt.len() != TXT_LEN
            || !txt
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Invalid(format!(
                "bad_txt: expected {TXT_LEN} base64url characters"
            )));
        }
        let name = format!("{}.{}", account.subdomain, self.zone);
        self.records.add_txt(&name, txt).await?;
        // Keep the newest two, as acme-dns does.
        let entries = self.records.txt_entries(&name).await?;
        let excess = entries.len().saturating_sub(VALUES_KEPT);
        for (old, _) in entries.iter().filter(|(v, _)| v != txt).take(excess) {
            self.records.remove_txt(&name, old).await?;
        }
        Ok(())
    }
}

fn parse_networks(allowfrom: &[String]) -> Result<Vec<IpNet>> {
    allowfrom
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| Error::Invalid(format!("invalid allowfrom network {text:?}")))
        })
        .collect()
}

fn hash(salt: &[u8], rounds: u32, password: &str) -> Result<[u8; HASH_LEN]> {
    let rounds = NonZeroU32::new(rounds).ok_or_else(|| Error::Invalid("zero rounds".into()))?;
    let mut out = [0u8; HASH_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        password.as_bytes(),
        &mut out,
    );
    Ok(out)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Invalid("no randomness".to_string()))?;
    Ok(bytes)
}

/// A random (version 4) UUID, lower-case.
fn uuid() -> Result<String> {
    let mut b = random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// 40 characters of `A-Za-z0-9-_` (acme-dns's passwords are 40 characters too).
fn random_password() -> Result<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = random_bytes::<PASSWORD_LEN>()?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 63)]))
        .collect())
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const TXT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const TXT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const TXT_C: &str = "ccccccccccccccccccccccccccccccccccccccccccc";

    fn setup() -> (tempfile::TempDir, Records, AcmeDns) {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Arc::new(store::DirStore::open(dir.path()).unwrap()));
        let api = AcmeDns::new(records.clone(), "acme.ops.test.");
        (dir, records, api)
    }

    #[tokio::test]
    async fn register_update_keeps_the_newest_two() {
        let (dir, records, api) = setup();
        let reg = api.register(&[]).await.unwrap();
        assert!(is_uuid(&reg.username) && is_uuid(&reg.subdomain));
        assert_eq!(reg.password.len(), PASSWORD_LEN);
        assert_eq!(reg.fulldomain, format!("{}.acme.ops.test", reg.subdomain));
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        for txt in [TXT_A, TXT_B, TXT_C] {
            api.update(&reg.username, &reg.password, &reg.subdomain, txt, local)
                .await
                .unwrap();
        }
        assert_eq!(records.txt(&reg.fulldomain).await.unwrap(), [TXT_B, TXT_C]);
        // The password is nowhere in the store; its hash is.
        let mut files = vec![dir.path().to_path_buf()];
        let mut seen_account = false;
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains(&reg.password), "{}", path.display());
                seen_account |= text.contains("hash_hex");
            }
        }
        assert!(seen_account);
    }

    #[tokio::test]
    async fn bad_credentials_networks_subdomains_and_values_store_nothing() {
        let (_dir, records, api) = setup();
        let reg = api.register(&["10.0.0.0/8".to_string()]).await.unwrap();
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let cases = [
            (
                reg.username.as_str(),
                "wrong-password",
                reg.subdomain.as_str(),
                TXT_A,
                inside,
                "denied",
            ),
            (
                "not-a-uuid",
                reg.password.as_str(),
                reg.subdomain.as_str(),
                TXT_A,
                inside,
                "denied",
            ),
            (
                "00000000-0000-4000-8000-000000000000",
                reg.password.as_str(),
                reg.subdomain.as_str(),
                TXT_A,
                inside,
                "denied",
            ),
            (
                reg.username.as_str(),
                reg.password.as_str(),
                reg.subdomain.as_str(),
                TXT_A,
                outside,
                "denied",
            ),
            (
                reg.username.as_str(),
                reg.password.as_str(),
                "someone-else",
                TXT_A,
                inside,
                "bad_subdomain",
            ),
            (
                reg.username.as_str(),
                reg.password.as_str(),
                reg.subdomain.as_str(),
                "short",
                inside,
                "bad_txt",
            ),
            (
                reg.username.as_str(),
                reg.password.as_str(),
                reg.subdomain.as_str(),
                &"a".repeat(44),
                inside,
                "bad_txt",
            ),
            (
                reg.username.as_str(),
                reg.password.as_str(),
                reg.subdomain.as_str(),
                "a+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                inside,
                "bad_txt",
            ),
        ];
        for (user, key, sub, txt, from, expect) in cases {
            let err = api.update(user, key, sub, txt, from).await.unwrap_err();
            match expect {
                "denied" => assert!(
                    matches!(err, Error::Denied(_)),
                    "{user} {key} {from}: {err}"
                ),
                other => assert!(
                    matches!(&err, Error::Invalid(m) if m.starts_with(other)),
                    "{sub} {txt}: {err}"
                ),
            }
        }
        assert!(records.txt(&reg.fulldomain).await.unwrap().is_empty());
        api.update(&reg.username, &reg.password, &reg.subdomain, TXT_A, inside)
            .await
            .unwrap();
        assert_eq!(records.txt(&reg.fulldomain).await.unwrap(), [TXT_A]);
        assert!(api.register(&["not a network".to_string()]).await.is_err());
    }
}
