//! [`CertMap`]: the SNI -> certificate map rustls consults on every handshake.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::EdgeError;
use crate::names::{Pattern, lookup, parse_pattern};

/// Certificates for names the map does not hold, obtained while the handshake waits
/// ("on-demand TLS"). The edge calls it only for an SNI name with no certificate in the map and
/// no TLS-ALPN-01 challenge; `None` fails the handshake with `unrecognized_name`.
///
/// An implementation decides quickly for names it refuses (the call runs on the accepting
/// connection's task, outside the handshake deadline) and bounds its own wait for names it
/// allows. A certificate it returns should already be in the map (the handshake that follows
/// resolves through the map).
#[async_trait::async_trait]
pub trait OnDemand: Send + Sync + 'static {
    /// `sni` is lower-case without a trailing dot; `client` is the client's address (after the
    /// PROXY protocol header, when one is expected).
    async fn certificate_for(&self, sni: &str, client: IpAddr) -> Option<Arc<CertifiedKey>>;
}

/// The lookup tables, replaced as a whole on every write.
#[derive(Default)]
struct Table {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the wildcard's suffix: `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// One change for [`CertMap::apply`].
pub enum CertUpdate {
    Insert {
        id: String,
        names: Vec<String>,
        key: Arc<CertifiedKey>,
    },
    Remove {
        id: String,
    },
}

/// One certificate as inserted.
struct Entry {
    /// Insertion order: when two certificates claim a name, the later one serves it.
    seq: u64,
    names: Vec<Pattern>,
    key: Arc<CertifiedKey>,
}

#[derive(Default)]
struct Entries {
    next_seq: u64,
    by_id: HashMap<String, Entry>,
}

/// Certificates by hostname, swapped atomically.
///
/// Reads (one per TLS handshake) are lock-free: an [`ArcSwap`] load and two hash lookups,
/// exact name first, then a one-label wildcard. Writes (issue, renewal, reload, removal: rare)
/// are serialised by a mutex, rebuild the tables copy-on-write and publish them in one store, so
/// a handshake sees either the old or the new certificate, never a mix.
///
/// Each certificate is inserted under an `id` chosen by the caller (for example the site or
/// certificate name in storage); inserting the same `id` again replaces it, with all its names.
/// If two ids claim the same hostname, the most recently inserted one serves it, and removing it
/// makes the other serve it again.
#[derive(Default)]
pub struct CertMap {
    table: ArcSwap<Table>,
    entries: Mutex<Entries>,
    on_demand: OnceLock<Arc<dyn OnDemand>>,
}

impl CertMap {
    pub fn new() -> CertMap {
        CertMap::default()
    }

    /// Serves `key` for `names` (hostnames or `*.` wildcards) from the next handshake on,
    /// replacing whatever `id` served before.
    pub fn insert<I, S>(
        &self,
        id: impl Into<String>,
        names: I,
        key: Arc<CertifiedKey>,
    ) -> Result<(), EdgeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names = names
            .into_iter()
            .map(|n| parse_pattern(n.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() {
            return Err(EdgeError::NoNames);
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = entries.next_seq;
        entries.next_seq += 1;
        entries.by_id.insert(id.into(), Entry { seq, names, key });
        self.publish(&entries);
        Ok(())
    }

    /// Applies many inserts and removals with one rebuild of the lookup tables: what a node does
    /// at startup with thousands of certificates, where one rebuild per insert would be
    /// quadratic. Each update's result is returned in order; a failed one changes nothing.
    pub fn apply(&self, updates: Vec<CertUpdate>) -> Vec<Result<(), EdgeError>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut results = Vec::with_capacity(updates.len());
        let mut changed = false;
        for update in updates {
            match update {
                CertUpdate::Insert { id, names, key } => {
                    let parsed = names
                        .iter()
                        .map(|n| parse_pattern(n))
                        .collect::<Result<Vec<_>, _>>();
                    match parsed {
                        Ok(names) if names.is_empty() => results.push(Err(EdgeError::NoNames)),
                        Ok(names) => {
                            let seq = entries.next_seq;
                            entries.next_seq += 1;
                            entries.by_id.insert(id, Entry { seq, names, key });
                            changed = true;
                            results.push(Ok(()));
                        }
                        Err(e) => results.push(Err(e)),
                    }
                }
                CertUpdate::Remove { id } => {
                    changed |= entries.by_id.remove(&id).is_some();
                    results.push(Ok(()));
                }
            }
        }
        if changed {
            self.publish(&entries);
        }
        results
    }

    /// Stops serving the certificate inserted under `id`. Returns whether there was one.
    pub fn remove(&self, id: &str) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let removed = entries.by_id.remove(id).is_some();
        if removed {
            self.publish(&entries);
        }
        removed
    }

    /// The certificate served for `name` (an SNI value): exact match, then wildcard.
    /// Case and one trailing dot are ignored.
    pub fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let table = self.table.load();
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lookup(&table.exact, &table.wildcard, &name.to_ascii_lowercase()).cloned()
        } else {
            lookup(&table.exact, &table.wildcard, name).cloned()
        }
    }

    /// Asks `on_demand` for names the map does not hold, from the next handshake on. Set once;
    /// returns `false` (and changes nothing) when one was already set.
    pub fn set_on_demand(&self, on_demand: Arc<dyn OnDemand>) -> bool {
        self.on_demand.set(on_demand).is_ok()
    }

    pub(crate) fn on_demand(&self) -> Option<&dyn OnDemand> {
        self.on_demand.get().map(|o| &**o)
    }

    /// The ids currently inserted, in no particular order.
    pub fn ids(&self) -> Vec<String> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.by_id.keys().cloned().collect()
    }

    /// Rebuilds the tables from `entries` and publishes them. Called with the writer lock held.
    fn publish(&self, entries: &Entries) {
        let mut ordered: Vec<&Entry> = entries.by_id.values().collect();
        ordered.sort_by_key(|e| e.seq);
        let mut table = Table::default();
        for entry in ordered {
            for name in &entry.names {
                let (map, key) = match name {
                    Pattern::Exact(n) => (&mut table.exact, n),
                    Pattern::Wildcard(s) => (&mut table.wildcard, s),
                };
                map.insert(key.clone(), Arc::clone(&entry.key));
            }
        }
        self.table.store(Arc::new(table));
    }
}

impl ResolvesServerCert for CertMap {
    /// `None` for a missing or unknown SNI: rustls then aborts the handshake with a fatal
    /// `access_denied` alert. ([`crate::Edge`] checks the name before the handshake and sends
    /// `unrecognized_name` itself; this is the fallback for a name removed in between.)
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        client_hello
            .server_name()
            .and_then(|name| self.lookup(name))
    }
}

impl fmt::Debug for CertMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.table.load();
        let mut names: Vec<String> = table.exact.keys().cloned().collect();
        names.extend(table.wildcard.keys().map(|s| format!("*.{s}")));
        names.sort();
        f.debug_struct("CertMap").field("names", &names).finish()
    }
}
