//! On-demand TLS for a fleet: a certificate obtained at the first handshake for a name no site
//! holds, once the product's `ask` endpoint allowed it.
//!
//! The path of a new name (all in [`OnDemandService::certificate_for`], which the edge calls
//! from its TLS accept path through [`edge::OnDemand`]):
//! 1. names the node knows (file or registry sites) are not asked about: an on-demand site
//!    waits for its certificate (unless paused), any other site's name is refused;
//! 2. `ask` decides ([`ask::Asker`]: per-node cache, concurrency and rate bounds); a refusal
//!    fails the handshake at once and stays in memory: no store read or write;
//! 3. an allowed name takes the `on-demand-limits` lease, checks the fleet-wide limits
//!    ([`limits`]) and is recorded in the registry as an on-demand site (the `[on_demand] site`'s
//!    action, `tls = "acme"`), so every node's follower applies it and every node's manager
//!    starts a task for its certificate; the certificate's lease makes one node order it;
//! 4. the handshake waits (up to `wait`) for the deployer's notification that the SNI map
//!    changed, then for the name to be in it.
//!
//! Concurrent handshakes for one name on a node share one decision (single flight). Dead names
//! are paused and removed by [`pause`].

mod ask;
mod limits;
mod pause;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use certs::DomainName;
use rustls::sign::CertifiedKey;
use sites::{Entry, OnDemandState, Registry, RegistryError, SiteEnv, SiteSpec, TlsSpec};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::on_demand_config::OnDemandConfig;

pub use pause::spawn_pause_watch;

/// How long a name that hit a fleet-wide limit is refused on this node without asking again.
const HELD_BACK_FOR: Duration = Duration::from_secs(60);

/// What the node knows of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// A file site or a registry site added by hand: not on-demand's business.
    Site,
    /// An on-demand site, paused or not.
    OnDemand { paused: bool },
}

/// The node's on-demand TLS; set on the edge's `CertMap` by `run`.
#[derive(Debug, Clone)]
pub struct OnDemandService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: OnDemandConfig,
    asker: ask::Asker,
    store: Arc<dyn store::Storage>,
    registry: Registry,
    node: String,
    env: SiteEnv,
    file_domains: HashMap<String, String>,
    /// The `[on_demand] site`'s spec: what a new name is served with.
    template: SiteSpec,
    certs: Arc<edge::CertMap>,
    /// Bumped by the deployer after every change of the SNI map.
    deployed: watch::Receiver<u64>,
    known: ArcSwap<HashMap<String, Known>>,
    /// The registry's on-demand sites, by id, as last seen.
    entries: ArcSwap<HashMap<String, Entry>>,
    /// One decision per name in flight: handshakes for the same new name wait on it.
    pending: Mutex<HashMap<String, watch::Receiver<Option<bool>>>>,
    /// Names that hit a fleet-wide limit, until when they are refused without asking.
    held_back: Mutex<HashMap<String, Instant>>,
    /// Names this node recorded in the registry.
    recorded: AtomicU64,
}

impl OnDemandService {
    /// `None` without an `[on_demand]` section.
    pub fn new(
        config: &Config,
        store: Arc<dyn store::Storage>,
        node: String,
        certs: Arc<edge::CertMap>,
        deployed: watch::Receiver<u64>,
    ) -> Option<OnDemandService> {
        let on_demand = config.on_demand.clone()?;
        let template = config
            .site_specs
            .iter()
            .find(|s| s.id() == on_demand.site)?
            .clone();
        Some(OnDemandService {
            inner: Arc::new(Inner {
                asker: ask::Asker::new(&on_demand),
                config: on_demand,
                registry: Registry::new(store.clone(), node.clone()),
                store,
                node,
                env: config.registry_env(),
                file_domains: config.file_domains(),
                template,
                certs,
                deployed,
                known: ArcSwap::from_pointee(HashMap::new()),
                entries: ArcSwap::from_pointee(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                held_back: Mutex::new(HashMap::new()),
                recorded: AtomicU64::new(0),
            }),
        })
    }

    /// The registry as the node now serves it (at start and after every change).
    pub fn set_registry<E: std::borrow::Borrow<Entry>>(&self, entries: &[E]) {
        let inner = &self.inner;
        let now = limits::now_unix();
        let mut known: HashMap<String, Known> = inner
            .file_domains
            .keys()
            .map(|d| (d.clone(), Known::Site))
            .collect();
        let mut on_demand = HashMap::new();
        for entry in entries {
            let entry: &Entry = entry.borrow();
            let kind = match &entry.on_demand {
                Some(state) => Known::OnDemand {
                    paused: state.paused_at(now),
                },
                None => Known::Site,
            };
            for domain in &entry.spec.domains {
                known
                    .entry(domain.trim().to_ascii_lowercase())
                    .or_insert(kind);
            }
            if entry.on_demand.is_some() {
                on_demand.insert(entry.id.clone(), entry.clone());
            }
        }
        // A customer removed (or a site taken over by hand): ask again next time, so a name
        // the product no longer allows is not recorded again from this node's cache.
        let before = inner.entries.load();
        for id in before.keys() {
            if !on_demand.contains_key(id) {
                inner.asker.forget(id);
            }
        }
        inner.known.store(Arc::new(known));
        inner.entries.store(Arc::new(on_demand));
    }

    /// `ask` calls this node made and names it recorded in the registry, so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.inner.asker.calls.load(Ordering::Relaxed),
            self.inner.recorded.load(Ordering::Relaxed),
        )
    }
}

/// The registry sites that are served: all but paused on-demand sites (no route, no
/// certificate task, so no order, while the pause lasts).
pub fn servable<E: std::borrow::Borrow<Entry> + Clone>(entries: &[E]) -> Vec<E> {
    let now = limits::now_unix();
    entries
        .iter()
        .filter(|e| {
            !e.borrow()
                .on_demand
                .as_ref()
                .is_some_and(|s| s.paused_at(now))
        })
        .cloned()
        .collect()
}

#[async_trait::async_trait]
impl edge::OnDemand for OnDemandService {
    async fn certificate_for(&self, sni: &str, client: IpAddr) -> Option<Arc<CertifiedKey>> {
        if sni.starts_with('*') || sni.parse::<IpAddr>().is_ok() {
            return None;
        }
        let name = DomainName::parse(sni).ok()?;
        let wait = self.inner.config.wait;
        match tokio::time::timeout(wait, Arc::clone(&self.inner).obtain(name, client)).await {
            Ok(key) => key,
            Err(_) => {
                debug!(domain = sni, "on-demand: no certificate within the wait");
                None
            }
        }
    }
}

impl Inner {
    async fn obtain(
        self: Arc<Self>,
        name: DomainName,
        client: IpAddr,
    ) -> Option<Arc<CertifiedKey>> {
        let text = name.to_string();
        match self.known.load().get(&text) {
            Some(Known::OnDemand { paused: false }) => {
                return self.wait_for_certificate(&text).await;
            }
            Some(_) => return None,
            None => {}
        }
        if let Some(verdict) = self.asker.cached(&text)
            && verdict != ask::Verdict::Allowed
        {
            return None;
        }
        let mut decision = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.get(&text) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    pending.insert(text.clone(), rx.clone());
                    let inner = Arc::clone(&self);
                    let name = name.clone();
                    // Its own task: the decision completes (and leaves `pending`) even when
                    // the handshake that started it gives up.
                    tokio::spawn(async move {
                        let allowed = inner.admit(&name, client).await;
                        let _ = tx.send(Some(allowed));
                        let mut pending = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
                        pending.remove(name.as_str());
                    });
                    rx
                }
            }
        };
        let allowed = match decision.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        };
        if !allowed {
            return None;
        }
        self.wait_for_certificate(&text).await
    }

    /// `ask`, then the fleet-wide limits and the registry: whether the name may wait for a
    /// certificate.
    async fn admit(&self, name: &DomainName, client: IpAddr) -> bool {
        {
            let held = self.held_back.lock().unwrap_or_else(|p| p.into_inner());
            if held
                .get(name.as_str())
                .is_some_and(|until| *until > Instant::now())
            {
                return false;
            }
        }
        match self.asker.verdict(name.as_str(), client).await {
            ask::Verdict::Allowed => {}
            ask::Verdict::Refused | ask::Verdict::Busy => return false,
        }
        match self.record(name, client).await {
            Ok(allowed) => allowed,
            Err(e) => {
                warn!(domain = %name, error = %format!("{e:#}"), "on-demand: the name could not be recorded; refused");
                false
            }
        }
    }

    /// Under the `on-demand-limits` lease: a name the registry has already is fine (another
    /// node recorded it); otherwise count it against the limits and record it.
    async fn record(&self, name: &DomainName, client: IpAddr) -> anyhow::Result<bool> {
        let guard = store::lock(
            &self.store,
            &limits::lock_name(),
            &self.node,
            limits::LOCK_TTL,
            limits::LOCK_WAIT,
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the {} lease stayed held", limits::LOCK))?;
        let result = self.record_locked(name, client, &guard).await;
        let _ = guard.release().await;
        result
    }

    async fn record_locked(
        &self,
        name: &DomainName,
        client: IpAddr,
        guard: &store::LeaseGuard,
    ) -> anyhow::Result<bool> {
        if let Some(entry) = self.registry.get(name.as_str()).await? {
            let now = limits::now_unix();
            return Ok(entry.on_demand.is_some_and(|s| !s.paused_at(now)));
        }
        if let Err(limits::LimitReached(why)) =
            limits::reserve(&self.store, &self.config, name, client, &guard.lease()).await?
        {
            warn!(domain = %name, client = %client, limit = %why, "on-demand: limit reached; refused");
            let mut held = self.held_back.lock().unwrap_or_else(|p| p.into_inner());
            held.retain(|_, until| *until > Instant::now());
            held.insert(name.to_string(), Instant::now() + HELD_BACK_FOR);
            return Ok(false);
        }
        let mut spec = self.template.clone();
        spec.domains = vec![name.to_string()];
        spec.tls = Some(TlsSpec::Named("acme".into()));
        let state = OnDemandState {
            allowed_at: limits::now_unix(),
            client_ip: Some(client.to_string()),
            paused_until: None,
            first_paused_at: None,
            pauses: 0,
        };
        match (self.registry)
            .create_on_demand(spec, &self.env, &self.file_domains, state)
            .await
        {
            Ok(entry) => {
                self.recorded.fetch_add(1, Ordering::Relaxed);
                info!(domain = %name, client = %client, version = entry.version, "on-demand: name allowed and recorded");
                Ok(true)
            }
            Err(RegistryError::DomainTaken { site, source, .. }) => {
                debug!(domain = %name, %site, %source, "on-demand: the name belongs to a site already");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The name's certificate once it is in the SNI map: checked after each notification from
    /// the deployer (the caller bounds the wait).
    async fn wait_for_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let mut deployed = self.deployed.clone();
        loop {
            deployed.borrow_and_update();
            if let Some(key) = self.certs.lookup(name) {
                return Some(key);
            }
            if deployed.changed().await.is_err() {
                return None;
            }
        }
    }
}
