//! The fleet-wide site registry: one store object per site under `sites/<id>`.
//!
//! Each object is JSON `{id, version, spec, updated_at, updated_by}`. Every write happens under
//! the lease `sites-registry`: take the lease, re-read what the write depends on (the site's
//! version, every other site's domains), check, and write with `put_fenced`, so writes from any
//! node or CLI are read-check-write atomic across the fleet and a writer that stalled past its
//! lease writes nothing. Reads take no lease.
//!
//! A removed site leaves a tombstone (`spec` absent) so versions never repeat: a stale
//! `If-Match` cannot match a site removed and added again. Tombstones are not listed.
//!
//! Each domain of a registry site is claimed under `site-domains/<domain>` (the site's id) before
//! the site is written, so a write checks its domains with one read each; a claim counts only
//! while the site it names is live and lists the domain, so stale claims need no clean-up.
//!
//! Conflicts: a domain belongs to one site. The config file's sites come first (the caller
//! passes their domains); the registry never takes a domain the file holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use store::{LockName, StorageKey};

use crate::field::{FieldError, FieldPath};
use crate::spec::SiteSpec;
use crate::validate::SiteEnv;

/// The lease every registry write holds.
pub const LOCK: &str = "sites-registry";
/// The lease's TTL (renewed by the guard while a write runs).
const LOCK_TTL: Duration = Duration::from_secs(30);
/// The prefix of domain claims ([`Claim`]).
const CLAIMS: &str = "site-domains";
/// Sites read at once by `list`.
const LIST_CONCURRENCY: usize = 16;
/// How long a write waits for a concurrent writer to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// One registry site as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The first domain, lower-cased.
    pub id: String,
    /// 1 when created, +1 on every update (and on removal, see the module docs).
    pub version: u64,
    pub spec: SiteSpec,
    /// Unix seconds.
    pub updated_at: u64,
    /// The node (or CLI user) that wrote this version.
    pub updated_by: String,
    /// Set for a site added at a handshake by on-demand TLS (and how it fares); `None` for a
    /// site added through the API or the CLI.
    pub on_demand: Option<Box<OnDemandState>>,
}

/// An on-demand site's state: when `ask` allowed it, and whether it is paused because its
/// orders kept failing (its DNS no longer points at the fleet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandState {
    /// Unix seconds.
    pub allowed_at: u64,
    /// The address of the client whose handshake brought the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// While set and in the future: refused at handshakes, no certificate ordered (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<u64>,
    /// When it was first paused (unix seconds); removal counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_paused_at: Option<u64>,
    /// How many times it was paused.
    #[serde(default)]
    pub pauses: u32,
}

impl OnDemandState {
    /// Paused at `now` (unix seconds)?
    pub fn paused_at(&self, now: u64) -> bool {
        self.paused_until.is_some_and(|until| until > now)
    }
}

/// The stored form: an [`Entry`], or a tombstone without `spec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) spec: Option<SiteSpec>,
    updated_at: u64,
    updated_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_demand: Option<OnDemandState>,
}

impl Record {
    pub(crate) fn entry(self) -> Option<Entry> {
        Some(Entry {
            spec: self.spec?,
            id: self.id,
            version: self.version,
            updated_at: self.updated_at,
            updated_by: self.updated_by,
            on_demand: self.on_demand.map(Box::new),
        })
    }
}

/// Where a conflicting site lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A node's config file.
    File,
    /// The registry in the shared store.
    Registry,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::File => "file",
            Source::Registry => "registry",
        })
    }
}

/// Why a registry call did nothing.
///
/// (`Display` and `Error` by hand: thiserror would take the `source` field of `DomainTaken` for
/// the error's cause.)
#[derive(Debug)]
#[non_exhaustive]
pub enum RegistryError {
    /// The spec breaks a site rule.
    Invalid(FieldError),
    /// A domain is listed twice in one batch ([`Registry::create_many`]): by `site`, earlier in
    /// the batch, and again.
    DomainRepeated {
        domain: String,
        site: String,
    },
    /// A domain already belongs to another site.
    DomainTaken {
        domain: String,
        site: String,
        source: Source,
    },
    NotFound {
        id: String,
    },
    /// A conditional write named a version that is not the current one.
    VersionMismatch {
        id: String,
        current: u64,
    },
    /// A site with this id (first domain) exists already.
    IdTaken {
        id: String,
    },
    /// The store failed, or another writer held the registry lease too long. Retry.
    Store(store::Error),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Invalid(e) => write!(f, "invalid site: {e}"),
            RegistryError::DomainTaken {
                domain,
                site,
                source,
            } => write!(f, "{domain} already belongs to the {source} site {site}"),
            RegistryError::DomainRepeated { domain, site } => {
                write!(
                    f,
                    "{domain} is also a domain of {site}, earlier in the same batch"
                )
            }
            RegistryError::NotFound { id } => write!(f, "no registry site {id}"),
            RegistryError::VersionMismatch { id, current } => {
                write!(f, "site {id} is at version {current}")
            }
            RegistryError::IdTaken { id } => write!(f, "site {id} exists already"),
            RegistryError::Store(e) => write!(f, "the site registry is unavailable: {e}"),
        }
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RegistryError::Invalid(e) => Some(e),
            RegistryError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<store::Error> for RegistryError {
    fn from(e: store::Error) -> Self {
        RegistryError::Store(e)
    }
}

impl RegistryError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Store(e) if e.is_retryable())
    }
}

/// Registry sites in a shared store.
#[derive(Debug, Clone)]
pub struct Registry {
    pub(crate) store: Arc<dyn store::Storage>,
    owner: String,
}

impl Registry {
    /// `owner` names this writer in the lease and in `updated_by` (the node name).
    pub fn new(store: Arc<dyn store::Storage>, owner: String) -> Registry {
        Registry { store, owner }
    }

    /// The storage key prefix of every registry site.
    pub fn prefix() -> StorageKey {
        #[allow(clippy::expect_used)]
        // Invariant: "sites" is one segment of allowed characters.
        StorageKey::new("sites").expect("\"sites\" is a valid storage key")
    }

    /// The storage key of site `id`, as change events name it; `None` when no key can hold it
    /// (too long to be a domain).
    pub fn key_of(id: &str) -> Option<StorageKey> {
        Registry::key(id)
    }

    /// The storage key prefix of the domain claims ([`Claim`]).
    pub(crate) fn claims_prefix() -> StorageKey {
        #[allow(clippy::expect_used)]
        // Invariant: CLAIMS is one segment of allowed characters.
        StorageKey::new(CLAIMS).expect("the claims prefix is a valid storage key")
    }

    pub(crate) fn key(id: &str) -> Option<StorageKey> {
        Registry::prefix().join(&id.to_ascii_lowercase()).ok()
    }

    pub(crate) async fn record(&self, key: &StorageKey) -> Result<Option<Record>, RegistryError> {
        let Some(bytes) = self.store.get(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            RegistryError::Store(store::Error::Corrupt {
                key: key.to_string(),
                detail: e.to_string(),
            })
        })
    }

    /// Every registry site, sorted by id. A record that cannot be read as a site is skipped
    /// with a warning, so one bad object does not take the registry down.
    pub async fn list(&self) -> Result<Vec<Entry>, RegistryError> {
        use futures_util::StreamExt as _;
        let keys = self.store.list(&Registry::prefix()).await?;
        let mut out = Vec::with_capacity(keys.len());
        let mut reads = futures_util::stream::iter(keys)
            .map(|key| async move { self.record(&key).await })
            .buffer_unordered(LIST_CONCURRENCY);
        while let Some(read) = reads.next().await {
            match read {
                Ok(Some(record)) => out.extend(record.entry()),
                Ok(None) => {} // removed since listed
                Err(RegistryError::Store(store::Error::Corrupt { key, detail })) => {
                    tracing::warn!(%key, %detail, "unreadable registry site skipped");
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The site stored under `key` (a key under [`Registry::prefix`], as change events name
    /// them); `None` when there is none, or a removed site's tombstone.
    pub async fn entry_at(&self, key: &StorageKey) -> Result<Option<Entry>, RegistryError> {
        if !key.starts_with(&Registry::prefix()) {
            return Ok(None);
        }
        Ok(self.record(key).await?.and_then(Record::entry))
    }

    /// Site `id`, if the registry has it.
    pub async fn get(&self, id: &str) -> Result<Option<Entry>, RegistryError> {
        let Some(key) = Registry::key(id) else {
            return Ok(None);
        };
        Ok(self
            .record(&key)
            .await?
            .filter(|r| r.id.eq_ignore_ascii_case(id))
            .and_then(Record::entry))
    }

    /// Add a site; its id is its first domain. `file_domains` maps each domain the config file
    /// holds (lower-case) to the id of the file site holding it.
    pub async fn create(
        &self,
        spec: SiteSpec,
        env: &SiteEnv,
        file_domains: &HashMap<String, String>,
    ) -> Result<Entry, RegistryError> {
        self.create_with(spec, env, file_domains, None).await
    }

    /// [`Registry::create`] for a site added by on-demand TLS, recorded with its `state`.
    pub async fn create_on_demand(
        &self,
        spec: SiteSpec,
        env: &SiteEnv,
        file_domains: &HashMap<String, String>,
        state: OnDemandState,
    ) -> Result<Entry, RegistryError> {
        self.create_with(spec, env, file_domains, Some(state)).await
    }

    /// Replace the on-demand state of site `id` (its spec unchanged), only while the site is at
    /// version `if_match`.
    pub async fn set_on_demand_state(
        &self,
        id: &str,
        if_match: u64,
        state: OnDemandState,
    ) -> Result<Entry, RegistryError> {
        let id = id.to_ascii_lowercase();
        let key = Registry::key(&id).ok_or_else(|| RegistryError::NotFound { id: id.clone() })?;
        let guard = self.lock().await?;
        let result = async {
            let current = self.current(&key, &id, Some(if_match)).await?;
            let spec = current
                .spec
                .ok_or_else(|| RegistryError::NotFound { id: id.clone() })?;
            self.write_entry(&key, &id, current.version + 1, spec, Some(state), &guard)
                .await
        }
        .await;
        release(guard).await;
        result
    }

    async fn create_with(
        &self,
        spec: SiteSpec,
        env: &SiteEnv,
        file_domains: &HashMap<String, String>,
        on_demand: Option<OnDemandState>,
    ) -> Result<Entry, RegistryError> {
        let (id, key, domains) = new_site(&spec, env, file_domains)?;
        let guard = self.lock().await?;
        let result = async {
            let previous = self.record(&key).await?;
            if previous.as_ref().is_some_and(|r| r.spec.is_some()) {
                return Err(RegistryError::IdTaken { id: id.clone() });
            }
            self.registry_conflict(&domains, None).await?;
            let version = previous.map_or(1, |r| r.version + 1);
            self.claim(&domains, &id, &guard).await?;
            self.write_entry(&key, &id, version, spec, on_demand, &guard)
                .await
        }
        .await;
        release(guard).await;
        result
    }

    /// Replace site `id`'s spec. With `if_match`, only while the site is at that version. The
    /// first domain is the id and cannot change.
    pub async fn update(
        &self,
        id: &str,
        spec: SiteSpec,
        if_match: Option<u64>,
        env: &SiteEnv,
        file_domains: &HashMap<String, String>,
    ) -> Result<Entry, RegistryError> {
        let site = spec.validate(env).map_err(RegistryError::Invalid)?;
        let id = id.to_ascii_lowercase();
        if site.id() != id {
            return Err(RegistryError::Invalid(FieldError::new(
                FieldPath::root().key("domains").index(0),
                format!(
                    "the first domain is the site's id ({id}); to rename a site, add the new one and remove this one"
                ),
            )));
        }
        let domains: Vec<String> = site.domains.iter().map(ToString::to_string).collect();
        file_conflict(&domains, file_domains)?;
        let key = Registry::key(&id).ok_or_else(|| RegistryError::NotFound { id: id.clone() })?;
        let guard = self.lock().await?;
        let result = async {
            let current = self.current(&key, &id, if_match).await?;
            self.registry_conflict(&domains, Some(&id)).await?;
            self.claim(&domains, &id, &guard).await?;
            self.write_entry(&key, &id, current.version + 1, spec, None, &guard)
                .await
        }
        .await;
        release(guard).await;
        result
    }

    /// Remove site `id`. With `if_match`, only while the site is at that version.
    pub async fn delete(&self, id: &str, if_match: Option<u64>) -> Result<(), RegistryError> {
        let id = id.to_ascii_lowercase();
        let key = Registry::key(&id).ok_or_else(|| RegistryError::NotFound { id: id.clone() })?;
        let guard = self.lock().await?;
        let result = async {
            let current = self.current(&key, &id, if_match).await?;
            self.write(&key, &id, current.version + 1, None, None, &guard)
                .await
                .map(|_| ())
        }
        .await;
        release(guard).await;
        result
    }

    /// The live record of `id`, checked against `if_match`.
    async fn current(
        &self,
        key: &StorageKey,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<Record, RegistryError> {
        let current = self
            .record(key)
            .await?
            .filter(|r| r.spec.is_some() && r.id == id)
            .ok_or_else(|| RegistryError::NotFound { id: id.to_owned() })?;
        if let Some(want) = if_match
            && want != current.version
        {
            return Err(RegistryError::VersionMismatch {
                id: id.to_owned(),
                current: current.version,
            });
        }
        Ok(current)
    }

    /// The first of `domains` held by a registry site other than `except`: each domain's claim
    /// names a site, which holds the domain if it is live and still lists it (a claim left by a
    /// removed site, an update that dropped the domain, or a write that never finished is
    /// stale and ignored).
    pub(crate) async fn registry_conflict(
        &self,
        domains: &[String],
        except: Option<&str>,
    ) -> Result<(), RegistryError> {
        for domain in domains {
            let Some(key) = claim_key(domain) else {
                continue;
            };
            let Some(bytes) = self.store.get(&key).await? else {
                continue;
            };
            let Ok(claim) = serde_json::from_slice::<Claim>(&bytes) else {
                tracing::warn!(%key, "unreadable domain claim ignored");
                continue;
            };
            if Some(claim.site.as_str()) == except {
                continue;
            }
            let Some(holder) = self.get(&claim.site).await? else {
                continue;
            };
            if holder.spec.domains.iter().any(|d| normalized(d) == *domain) {
                return Err(RegistryError::DomainTaken {
                    domain: domain.clone(),
                    site: holder.id,
                    source: Source::Registry,
                });
            }
        }
        Ok(())
    }

    /// Claim `domains` for site `id` (before the site itself is written).
    async fn claim(
        &self,
        domains: &[String],
        id: &str,
        guard: &store::LeaseGuard,
    ) -> Result<(), RegistryError> {
        for (key, bytes) in claims(domains, id)? {
            self.store.put_fenced(&key, &bytes, &guard.lease()).await?;
        }
        Ok(())
    }

    pub(crate) async fn lock(&self) -> Result<store::LeaseGuard, RegistryError> {
        store::lock(
            &self.store,
            &LockName::new(LOCK),
            &self.owner,
            LOCK_TTL,
            LOCK_WAIT,
        )
        .await?
        .ok_or_else(|| {
            RegistryError::Store(store::Error::Unavailable {
                what: format!(
                    "the {LOCK} lease stayed held by another writer for {}s",
                    LOCK_WAIT.as_secs()
                ),
                source: None,
            })
        })
    }

    /// Write `spec` (a tombstone when `None`) as `version` of `id`, fenced by the lease.
    async fn write(
        &self,
        key: &StorageKey,
        id: &str,
        version: u64,
        spec: Option<SiteSpec>,
        on_demand: Option<OnDemandState>,
        guard: &store::LeaseGuard,
    ) -> Result<Record, RegistryError> {
        let record = self.new_record(id, version, spec, on_demand);
        let bytes = Registry::encode(key, &record)?;
        self.store.put_fenced(key, &bytes, &guard.lease()).await?;
        Ok(record)
    }

    /// `version` of `id` as this writer writes it now.
    pub(crate) fn new_record(
        &self,
        id: &str,
        version: u64,
        spec: Option<SiteSpec>,
        on_demand: Option<OnDemandState>,
    ) -> Record {
        Record {
            id: id.to_owned(),
            version,
            spec,
            on_demand,
            updated_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            updated_by: self.owner.clone(),
        }
    }

    pub(crate) fn encode(key: &StorageKey, record: &Record) -> Result<Vec<u8>, RegistryError> {
        serde_json::to_vec(record).map_err(|e| {
            RegistryError::Store(store::Error::Corrupt {
                key: key.to_string(),
                detail: format!("cannot encode: {e}"),
            })
        })
    }

    /// `write` of a live spec, as the entry it stored.
    async fn write_entry(
        &self,
        key: &StorageKey,
        id: &str,
        version: u64,
        spec: SiteSpec,
        on_demand: Option<OnDemandState>,
        guard: &store::LeaseGuard,
    ) -> Result<Entry, RegistryError> {
        let record = self
            .write(key, id, version, Some(spec.clone()), on_demand, guard)
            .await?;
        Ok(Entry {
            id: record.id,
            version: record.version,
            spec,
            updated_at: record.updated_at,
            updated_by: record.updated_by,
            on_demand: record.on_demand.map(Box::new),
        })
    }
}

/// Which site claimed a domain: `site-domains/<domain>`, written under the registry lease
/// before the site. The index that makes a write's conflict check cost one read per domain
/// instead of a read of every site.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claim {
    site: String,
}

impl Claim {
    /// The stored form of a claim for site `id`.
    pub(crate) fn encode(id: &str) -> Result<Vec<u8>, RegistryError> {
        serde_json::to_vec(&Claim {
            site: id.to_owned(),
        })
        .map_err(|e| {
            RegistryError::Store(store::Error::Corrupt {
                key: id.to_owned(),
                detail: format!("cannot encode a claim: {e}"),
            })
        })
    }
}

fn claim_key(domain: &str) -> Option<StorageKey> {
    Registry::claims_prefix().join(domain).ok()
}

/// The claim objects that give each of `domains` to site `id`.
pub(crate) fn claims(
    domains: &[String],
    id: &str,
) -> Result<Vec<(StorageKey, Vec<u8>)>, RegistryError> {
    let bytes = Claim::encode(id)?;
    Ok(domains
        .iter()
        .filter_map(|domain| claim_key(domain))
        .map(|key| (key, bytes.clone()))
        .collect())
}

/// The checks a new site passes before the lease (its rules, the config file's domains, an id
/// that fits a key): its id, key and domains.
pub(crate) fn new_site(
    spec: &SiteSpec,
    env: &SiteEnv,
    file_domains: &HashMap<String, String>,
) -> Result<(String, StorageKey, Vec<String>), RegistryError> {
    let site = spec.validate(env).map_err(RegistryError::Invalid)?;
    let id = site.id();
    let domains: Vec<String> = site.domains.iter().map(ToString::to_string).collect();
    file_conflict(&domains, file_domains)?;
    let key = Registry::key(&id).ok_or_else(|| too_long(&id))?;
    Ok((id, key, domains))
}

/// A domain as the registry compares it: a `DomainName`'s form when it is one.
fn normalized(domain: &str) -> String {
    certs::DomainName::parse(domain)
        .map(|d| d.to_string())
        .unwrap_or_else(|_| domain.trim().to_ascii_lowercase())
}

pub(crate) async fn release(guard: store::LeaseGuard) {
    if let Err(e) = guard.release().await {
        tracing::debug!(error = %e, "sites-registry lease not released; it expires");
    }
}

pub(crate) fn file_conflict(
    domains: &[String],
    file_domains: &HashMap<String, String>,
) -> Result<(), RegistryError> {
    for domain in domains {
        if let Some(site) = file_domains.get(domain) {
            return Err(RegistryError::DomainTaken {
                domain: domain.clone(),
                site: site.clone(),
                source: Source::File,
            });
        }
    }
    Ok(())
}

pub(crate) fn too_long(id: &str) -> RegistryError {
    RegistryError::Invalid(FieldError::new(
        FieldPath::root().key("domains").index(0),
        format!("{id} is too long to be a site id"),
    ))
}
