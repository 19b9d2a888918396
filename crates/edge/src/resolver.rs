//! [`CertMap`]: the SNI -> certificate map rustls consults on every handshake.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::EdgeError;
use crate::names::{Pattern, parse_pattern};

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

/// The names a handshake resolves: every name's certificate as of the last full rebuild
/// (`base`, shared between tables) and the names changed since (`recent`). A write copies only
/// `recent`, and folds it into a new `base` once it holds a sixteenth as many names: with 100,000
/// certificates, one deployed certificate costs a few small map copies, not a rebuild of all.
#[derive(Default)]
struct Table {
    base: Arc<Names>,
    recent: Recent,
}

/// Values by exact name, and by wildcard suffix (`*.example.com` as `example.com`).
#[derive(Clone)]
struct ByPattern<V> {
    exact: HashMap<Arc<str>, V>,
    wildcard: HashMap<Arc<str>, V>,
}

impl<V> Default for ByPattern<V> {
    fn default() -> Self {
        ByPattern {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<V> ByPattern<V> {
    fn insert(&mut self, name: &Pattern, value: V) {
        let (map, key) = match name {
            Pattern::Exact(n) => (&mut self.exact, n),
            Pattern::Wildcard(s) => (&mut self.wildcard, s),
        };
        map.insert(key.clone(), value);
    }

    fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

/// Every name's certificate.
type Names = ByPattern<Arc<CertifiedKey>>;

/// Names changed since `base` was built: `None` where no certificate claims the name any more.
type Recent = ByPattern<Option<Arc<CertifiedKey>>>;

/// The certificate that serves a name: the latest of its claims.
fn winner(claims: &[(u64, Arc<CertifiedKey>)]) -> Option<&Arc<CertifiedKey>> {
    claims
        .iter()
        .max_by_key(|(seq, _)| *seq)
        .map(|(_, key)| key)
}

impl Table {
    /// [`names::lookup`](crate::names::lookup)'s rule (exact, then the one-label wildcard) over
    /// `recent` first, then `base`. `host` is normalised.
    fn lookup(&self, host: &str) -> Option<&Arc<CertifiedKey>> {
        let exact = match self.recent.exact.get(host) {
            Some(changed) => changed.as_ref(),
            None => self.base.exact.get(host),
        };
        exact.or_else(|| {
            let (_, suffix) = host.split_once('.')?;
            match self.recent.wildcard.get(suffix) {
                Some(changed) => changed.as_ref(),
                None => self.base.wildcard.get(suffix),
            }
        })
    }
}

/// `recent` is folded into a new base once it holds more than this many names, or more than a
/// sixteenth of the base's.
const RECENT_MIN: usize = 256;

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
}

/// The writer's side: every certificate by id, every name's claims, and what the published
/// table is made of.
#[derive(Default)]
struct Entries {
    next_seq: u64,
    by_id: HashMap<String, Entry>,
    /// Each name's claims, `(seq, certificate)`: the highest `seq` serves the name.
    claims: HashMap<Pattern, Vec<(u64, Arc<CertifiedKey>)>>,
    base: Arc<Names>,
    recent: Recent,
}

impl Entries {
    /// Serves `key` for `names` under `id` (replacing what `id` served); returns nothing, the
    /// changed names are in `recent`.
    fn insert(&mut self, id: String, names: Vec<Pattern>, key: Arc<CertifiedKey>) {
        self.remove(&id);
        let seq = self.next_seq;
        self.next_seq += 1;
        for name in &names {
            // Room for one: a name almost always has a single claim (a vector's first push
            // makes room for four).
            self.claims
                .entry(name.clone())
                .or_insert_with(|| Vec::with_capacity(1))
                .push((seq, Arc::clone(&key)));
            self.settle(name);
        }
        self.by_id.insert(id, Entry { seq, names });
    }

    /// Stops serving `id`'s names (others' claims on them serve again); whether there was one.
    fn remove(&mut self, id: &str) -> bool {
        let Some(old) = self.by_id.remove(id) else {
            return false;
        };
        for name in &old.names {
            if let Some(claims) = self.claims.get_mut(name) {
                claims.retain(|(seq, _)| *seq != old.seq);
                if claims.is_empty() {
                    self.claims.remove(name);
                }
            }
            self.settle(name);
        }
        true
    }

    /// Records `name`'s current winner (or that none is left) in `recent`.
    fn settle(&mut self, name: &Pattern) {
        let serving = self
            .claims
            .get(name)
            .and_then(|claims| winner(claims))
            .cloned();
        self.recent.insert(name, serving);
    }

    /// The table to publish: the same base with the changes since, or (once the changes are
    /// many) a new base with every name's winner.
    fn table(&mut self) -> Table {
        if self.recent.len() > RECENT_MIN.max(self.base.len() / 16) {
            let mut names = Names::default();
            for (name, claims) in &self.claims {
                if let Some(key) = winner(claims) {
                    names.insert(name, Arc::clone(key));
                }
            }
            self.base = Arc::new(names);
            self.recent = Recent::default();
        }
        Table {
            base: Arc::clone(&self.base),
            recent: self.recent.clone(),
        }
    }
}

/// Certificates by hostname, swapped atomically.
///
/// Reads (one per TLS handshake) are lock-free: an [`ArcSwap`] load and a few hash lookups,
/// exact name first, then a one-label wildcard, each in the recent changes, then the base.
/// Writes (issue, renewal, reload, removal: rare) are serialised by a mutex, copy the recent
/// changes (or, now and then, rebuild the base: see `Table`) and publish them in one store, so
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
        entries.insert(id.into(), names, key);
        self.publish(&mut entries);
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
                            entries.insert(id, names, key);
                            changed = true;
                            results.push(Ok(()));
                        }
                        Err(e) => results.push(Err(e)),
                    }
                }
                CertUpdate::Remove { id } => {
                    changed |= entries.remove(&id);
                    results.push(Ok(()));
                }
            }
        }
        if changed {
            self.publish(&mut entries);
        }
        results
    }

    /// Stops serving the certificate inserted under `id`. Returns whether there was one.
    pub fn remove(&self, id: &str) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let removed = entries.remove(id);
        if removed {
            self.publish(&mut entries);
        }
        removed
    }

    /// The certificate served for `name` (an SNI value): exact match, then wildcard.
    /// Case and one trailing dot are ignored.
    pub fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let table = self.table.load();
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            table.lookup(&name.to_ascii_lowercase()).cloned()
        } else {
            table.lookup(name).cloned()
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

    /// Publishes what `entries` now holds. Called with the writer lock held.
    fn publish(&self, entries: &mut Entries) {
        self.table.store(Arc::new(entries.table()));
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
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = entries.claims.keys().map(|p| format!("{p:?}")).collect();
        names.sort();
        f.debug_struct("CertMap").field("names", &names).finish()
    }
}
