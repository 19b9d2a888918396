//! The sites a running node serves: the config file's and the registry's, merged (the file wins
//! a conflicting domain), the registry's changes as they happen, and the local copy of the
//! registry that a node starts from while the shared store is down.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sites::{Entry, Registry, Site, SiteEnv};
use store::StorageKey;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The file and registry sites this node serves, in that order. A registry site is left out,
/// with a warning, when it does not validate on this node, or when one of its domains is held by
/// a file site (the file wins) or by a registry site before it (by id).
pub fn merge<E: Borrow<Entry>>(file: &[Site], entries: &[E], env: &SiteEnv) -> Vec<Site> {
    // Validated first, so the map of held domains can borrow every name instead of copying it
    // (at 100,000 sites, 200,000 copied names and ids were a transient of tens of MB at every
    // registry change).
    let candidates: Vec<(&Entry, Site)> = entries
        .iter()
        .map(Borrow::borrow)
        .filter_map(|entry: &Entry| match entry.spec.validate(env) {
            Ok(site) => Some((entry, site)),
            Err(e) => {
                warn!(site = %entry.id, error = %e, "registry site not valid on this node; not served");
                None
            }
        })
        .collect();
    let file_ids: Vec<String> = file.iter().map(Site::id).collect();
    let mut held: HashMap<&str, (&str, &'static str)> = HashMap::new();
    for (site, id) in file.iter().zip(&file_ids) {
        for d in &site.domains {
            held.insert(d.as_str(), (id.as_str(), "config file"));
        }
    }
    let mut keep = Vec::with_capacity(candidates.len());
    for (entry, site) in &candidates {
        if let Some((domain, (holder, source))) = site
            .domains
            .iter()
            .find_map(|d| held.get(d.as_str()).map(|h| (d, h)))
        {
            warn!(
                site = %entry.id, %domain, holder = %holder, source,
                "registry site has a domain another site holds; the {source} wins, the registry site is not served"
            );
            keep.push(false);
            continue;
        }
        for d in &site.domains {
            held.insert(d.as_str(), (entry.id.as_str(), "registry"));
        }
        keep.push(true);
    }
    drop(held);
    let mut out = Vec::with_capacity(file.len() + candidates.len());
    out.extend_from_slice(file);
    out.extend(
        candidates
            .into_iter()
            .zip(keep)
            .filter_map(|((_, site), kept)| kept.then_some(site)),
    );
    out
}

/// The certificates a node of `config` keeps: its file's sites and the registry's, merged as
/// `fleetgate run` merges them (file sites only, with a warning, when the registry cannot be
/// read). For the one-shot commands.
pub async fn managed_certs(
    config: &crate::config::Config,
    store: Arc<dyn store::Storage>,
) -> Vec<certs::ManagedCert> {
    let registry = Registry::new(store, crate::store_open::node_name(config));
    let entries = match registry.list().await {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("warning: registry sites left out: {e}");
            Vec::new()
        }
    };
    let sites = merge(&config.sites, &entries, &config.registry_env());
    crate::config::managed_certs(&sites, config.acme.as_ref())
}

/// The last registry this node saw, in `storage.path` (`registry.json`), for starting while
/// the shared store is down.
#[derive(Debug, Clone)]
pub struct RegistryCache {
    path: PathBuf,
}

impl RegistryCache {
    /// The cache in the folder `dir` (this node's `storage.path`).
    pub fn new(dir: &Path) -> RegistryCache {
        RegistryCache {
            path: dir.join("registry.json"),
        }
    }

    /// The cached registry; `None` when there is none yet.
    pub fn read(&self) -> anyhow::Result<Option<Vec<Entry>>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()));
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not a registry copy", self.path.display()))
    }

    /// Replace the cache atomically (temp file, fsync, rename), mode 0600.
    pub fn write<E: Borrow<Entry>>(&self, entries: &[E]) -> anyhow::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = self
            .path
            .with_extension(format!("json.tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt as _;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // Streamed: at 100,000 sites the whole document is about 30 MB.
            let entries: Vec<&Entry> = entries.iter().map(Borrow::borrow).collect();
            let mut out = std::io::BufWriter::new(f);
            serde_json::to_writer(&mut out, &entries)?;
            let f = out
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Where a node's registry came from at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Store,
    Cache,
    /// Neither answered: no registry sites until the store does.
    Nothing,
}

/// How long a starting node waits for the store's registry before serving its local copy (a
/// node must start while the store is down; a healthy store answers in milliseconds).
const START_WAIT: Duration = Duration::from_secs(1);
/// The same without a local copy: a new node (or one that never reached the store) has nothing
/// to serve but the file's sites, so it gives a large registry more time.
const FIRST_START_WAIT: Duration = Duration::from_secs(5);
/// How often a node whose registry is stale (the store did not answer) asks again.
const RETRY: Duration = Duration::from_secs(2);

/// The registry at start: the store's (the local copy updated to match) if it answers within
/// [`START_WAIT`] (or [`FIRST_START_WAIT`] when there is no local copy to serve meanwhile),
/// else the local copy.
pub async fn initial(registry: &Registry, cache: &RegistryCache) -> (Vec<Entry>, Origin) {
    let wait = if cache.path.is_file() {
        START_WAIT
    } else {
        FIRST_START_WAIT
    };
    let error = match tokio::time::timeout(wait, registry.list()).await {
        Ok(Ok(entries)) => {
            if let Err(e) = cache.write(&entries) {
                warn!(error = %format!("{e:#}"), "the registry's local copy was not updated");
            }
            return (entries, Origin::Store);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {wait:?}"),
    };
    warn!(%error, "cannot read the site registry; serving its local copy");
    match cache.read() {
        Ok(Some(entries)) => (entries, Origin::Cache),
        Ok(None) => (Vec::new(), Origin::Nothing),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "the registry's local copy is unusable");
            (Vec::new(), Origin::Nothing)
        }
    }
}

/// Follow the registry in a task of its own: on a store change under `sites/`, read that site
/// (changes arriving meanwhile are read together); on a lost batch of events, every `resync`
/// (events are best effort) and every [`RETRY`] while the store does not answer, read the whole
/// registry. Each new registry is written to the local copy and published on the returned
/// channel. `events` must have been subscribed before `known` was read, so no change falls
/// between the two. The channel and the follower share each entry (`Arc`): a registry of
/// 100,000 sites is held once, and a site read again unchanged keeps the entry already held.
pub fn follow(
    registry: Registry,
    cache: RegistryCache,
    mut events: broadcast::Receiver<store::Change>,
    resync: Duration,
    (known, origin): (Vec<Arc<Entry>>, Origin),
    shutdown: CancellationToken,
) -> watch::Receiver<Vec<Arc<Entry>>> {
    let (tx, rx) = watch::channel(known.clone());
    let mut follower = Follower {
        known: known
            .into_iter()
            .filter_map(|e| Some((Registry::key_of(&e.id)?, e)))
            .collect(),
        registry,
        cache,
        tx,
    };
    let prefix = Registry::prefix();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(resync);
        tick.reset();
        let mut retry = tokio::time::interval(RETRY);
        retry.reset();
        let mut stale = origin != Origin::Store;
        let mut events_open = true;
        loop {
            let mut read = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => Read::All,
                _ = retry.tick(), if stale => Read::All,
                event = events.recv(), if events_open => {
                    let mut read = Read::Nothing;
                    read.add(event, &prefix, &mut events_open);
                    while let Ok(more) = events.try_recv() {
                        read.add(Ok(more), &prefix, &mut events_open);
                    }
                    read
                }
            };
            if stale && !matches!(read, Read::Nothing) {
                read = Read::All;
            }
            match follower.read(read).await {
                Ok(()) if stale => {
                    info!(
                        sites = follower.known.len(),
                        "the site registry answers again"
                    );
                    stale = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !stale {
                        warn!(error = %e, "cannot read the site registry; serving the last one known");
                    }
                    stale = true;
                }
            }
        }
    });
    rx
}

/// `entries` as a node keeps them, shared. Collecting into `Arc`s happens in place and would
/// keep the read's buffer (672 bytes an entry, 64 MB at 100,000 sites) to hold 8-byte
/// pointers: the rest is given back.
pub fn shared(entries: Vec<Entry>) -> Vec<Arc<Entry>> {
    let mut shared: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
    shared.shrink_to_fit();
    shared
}

/// What a batch of store events asks to read again.
enum Read {
    Nothing,
    Keys(BTreeSet<StorageKey>),
    All,
}

impl Read {
    fn add(
        &mut self,
        event: Result<store::Change, broadcast::error::RecvError>,
        prefix: &StorageKey,
        open: &mut bool,
    ) {
        match event {
            Ok(store::Change::Put(key) | store::Change::Deleted(key)) => {
                if !key.starts_with(prefix) {
                    return;
                }
                match self {
                    Read::Nothing => *self = Read::Keys(BTreeSet::from([key])),
                    Read::Keys(keys) => {
                        keys.insert(key);
                    }
                    Read::All => {}
                }
            }
            Ok(store::Change::Missed) | Err(broadcast::error::RecvError::Lagged(_)) => {
                *self = Read::All
            }
            Err(broadcast::error::RecvError::Closed) => *open = false,
        }
    }
}

/// The follower's state: the registry as last read, by storage key.
struct Follower {
    registry: Registry,
    cache: RegistryCache,
    tx: watch::Sender<Vec<Arc<Entry>>>,
    known: BTreeMap<StorageKey, Arc<Entry>>,
}

impl Follower {
    async fn read(&mut self, what: Read) -> Result<(), sites::RegistryError> {
        match what {
            Read::Nothing => return Ok(()),
            Read::All => {
                let mut before = std::mem::take(&mut self.known);
                self.known = self
                    .registry
                    .list()
                    .await?
                    .into_iter()
                    .filter_map(|e| {
                        let key = Registry::key_of(&e.id)?;
                        let entry = match before.remove(&key) {
                            Some(held) if *held == e => held,
                            _ => Arc::new(e),
                        };
                        Some((key, entry))
                    })
                    .collect();
            }
            Read::Keys(keys) => {
                for key in keys {
                    match self.registry.entry_at(&key).await? {
                        Some(entry) => self.known.insert(key, Arc::new(entry)),
                        None => self.known.remove(&key),
                    };
                }
            }
        }
        let mut entries: Vec<Arc<Entry>> = self.known.values().cloned().collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        if *self.tx.borrow() != entries {
            if let Err(e) = self.cache.write(&entries) {
                warn!(error = %format!("{e:#}"), "the registry's local copy was not updated");
            }
            self.tx.send_replace(entries);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(id: &str, domains: &[&str]) -> Entry {
        let mut spec = sites::SiteSpec::new(domains.iter().map(|d| (*d).to_owned()).collect());
        spec.tls = Some(sites::TlsSpec::Named("internal".into()));
        spec.respond = Some(sites::RespondSpec::default());
        Entry {
            id: id.into(),
            version: 1,
            spec,
            updated_at: 0,
            updated_by: "test".into(),
            on_demand: None,
        }
    }

    fn env() -> SiteEnv {
        SiteEnv {
            base: None,
            acme: false,
            dns01: false,
            default_key_type: certs::KeyType::default(),
        }
    }

    #[test]
    fn the_file_wins_and_invalid_sites_are_skipped() {
        let file = vec![
            entry("f.example", &["f.example"])
                .spec
                .validate(&env())
                .unwrap(),
        ];
        let mut acme = entry("acme.example", &["acme.example"]);
        acme.spec.tls = None; // needs [acme], which this node lacks
        let entries = [
            entry("a.example", &["a.example"]),
            entry("b.example", &["b.example", "F.example"]),
            entry("c.example", &["c.example", "a.example"]),
            acme,
            entry("d.example", &["d.example"]),
        ];
        let ids: Vec<String> = merge(&file, &entries, &env())
            .iter()
            .map(Site::id)
            .collect();
        assert_eq!(ids, ["f.example", "a.example", "d.example"]);
    }

    #[test]
    fn cache_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RegistryCache::new(&dir.path().join("node"));
        assert!(cache.read().unwrap().is_none());
        let entries = vec![entry("a.example", &["a.example"])];
        cache.write(&entries).unwrap();
        assert_eq!(cache.read().unwrap().unwrap(), entries);
        std::fs::write(dir.path().join("node/registry.json"), "{").unwrap();
        assert!(cache.read().is_err());
    }
}
