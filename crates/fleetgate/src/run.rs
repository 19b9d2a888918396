//! `fleetgate run`: build everything from the config and the site registry, serve, follow
//! registry changes, reload on SIGHUP, drain on SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use sites::{Entry, Registry};

use crate::config::{Config, LogConfig, LogFormat, Site, managed_certs};
use crate::deploy::{SharedChallenges, SniDeployer};
use crate::node_sites::{self, RegistryCache};
use crate::store_open::{node_name, open_store};

pub fn init_tracing(log: &LogConfig) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .with_context(|| format!("log.level {:?} is not a valid filter", log.level))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// The edge's routing table for `sites`, each site's requests and upstreams reported to
/// `observer` under the site's id.
pub fn routes(sites: &[Site], observer: &dyn edge::Observer) -> anyhow::Result<edge::Routes> {
    // Site by site: each edge form is dropped once routed (100,000 of them at once cost
    // 40 MB at every registry change).
    let mut builder = edge::Routes::builder(observer);
    for site in sites {
        let edge_site = site
            .edge_site()
            .map_err(|e| anyhow::anyhow!("site {}: {e}", site.id()))?;
        builder.add(&site.id(), &edge_site)?;
    }
    Ok(builder.finish())
}

/// A listener on `addr` (the config's `key`), or an error that says how to fix the usual causes.
async fn bind(addr: std::net::SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{}", bind_error(addr, key, &e)))
}

/// Why listening on `addr` failed, with the fixes for a privileged port without the capability
/// and for an address in use.
pub fn bind_error(addr: std::net::SocketAddr, key: &str, e: &std::io::Error) -> String {
    let mut message = format!("cannot listen on {addr} ({key}): {e}");
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => message.push_str(&format!(
            "\n  port {port} is privileged: fleetgate needs the CAP_NET_BIND_SERVICE capability \
             (not root) to listen on it. Either:\n  \
             - run it from the systemd unit in dist/fleetgate.service \
             (AmbientCapabilities=CAP_NET_BIND_SERVICE), or\n  \
             - give the binary the capability once (again after each upgrade): \
             sudo setcap cap_net_bind_service=+ep $(command -v fleetgate), or\n  \
             - set {key} to an unprivileged port (1024 or above) and let the load balancer \
             forward port {port} to it",
            port = addr.port(),
        )),
        std::io::ErrorKind::AddrInUse => message.push_str(&format!(
            "\n  another process listens there (see: ss -ltnp 'sport = :{}')",
            addr.port()
        )),
        std::io::ErrorKind::AddrNotAvailable => message.push_str(&format!(
            "\n  {} is not an address of this machine",
            addr.ip()
        )),
        _ => {}
    }
    message
}

/// What the node serves now: the edge's routes and the manager's certificates.
struct Serving {
    edge: Arc<edge::Edge>,
    manager: Arc<certs::Manager>,
    /// Where the routes' sites report their requests (the metrics, or nothing).
    observer: Arc<dyn edge::Observer>,
}

impl Serving {
    /// Serve `config`'s file sites and the `registry` sites: the merged list (file first)
    /// becomes the edge's routes and the manager's certificates. Certificates that did not
    /// change keep their tasks (an order in flight goes on); only on `reload` (SIGHUP) do all
    /// tasks re-read their files and storage.
    /// Used at start, on SIGHUP and on every registry change.
    fn apply_sites(
        &mut self,
        config: &Config,
        registry: &[Arc<Entry>],
        reload: bool,
    ) -> anyhow::Result<usize> {
        let registry = crate::on_demand::servable(registry);
        let sites = node_sites::merge(&config.sites, &registry, &config.registry_env());
        let routes =
            routes(&sites, &*self.observer).with_context(|| config.file.display().to_string())?;
        self.edge.set_routes(routes);
        // Site by site into the manager, which compares each with its task and keeps only the
        // new and changed: no list of every certificate (25 MB at 100,000 sites).
        let certs = sites
            .iter()
            .flat_map(|site| site.managed_certs(config.acme.as_ref()));
        if reload {
            self.manager.apply(certs);
        } else {
            // A registry change: new and changed certificates only (not a read per certificate).
            self.manager.update(certs);
        }
        Ok(sites.len())
    }
}

/// Metrics are recorded only when the admin listener (which serves `/metrics`) is on; without
/// a recorder every metric call is a no-op. With it, store operations are timed too.
fn instrument(
    config: &Config,
    store: Arc<dyn store::Storage>,
) -> anyhow::Result<(Option<crate::telemetry::Telemetry>, Arc<dyn store::Storage>)> {
    if config.admin.is_none() {
        return Ok((None, store));
    }
    let telemetry = crate::telemetry::Telemetry::install()?;
    let backend = match &config.storage {
        crate::config::StorageConfig::Dir { .. } => "dir",
        crate::config::StorageConfig::Postgres { .. } => "postgres",
        crate::config::StorageConfig::Redis { .. } => "redis",
    };
    let timed = Arc::new(crate::telemetry::TimedStore::new(store, backend));
    Ok((Some(telemetry), timed))
}

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    // The manager checks the certificates from here on; the file's text is not needed.
    config.drop_text();
    let node = node_name(&config);
    let (store, cache) = open_store(&config).await?;
    let shutdown = CancellationToken::new();
    let (telemetry, store) = instrument(&config, store)?;
    // Subscribe before the first read so that no change falls between the two.
    let registry_events = store.subscribe();
    let registry = Registry::new(store.clone(), node.clone());
    let registry_cache = RegistryCache::new(config.storage.path());
    let (entries, origin) = node_sites::initial(&registry, &registry_cache).await;
    let entries = node_sites::shared(entries);
    let initial = node_sites::merge(
        &config.sites,
        &crate::on_demand::servable(&entries),
        &config.registry_env(),
    );
    // The request path's metrics, with the recorder only: else a no-op observer (requests
    // are then neither timed nor counted).
    let observer: Arc<dyn edge::Observer> = match &telemetry {
        Some(telemetry) => telemetry.edge.clone(),
        None => Arc::new(edge::NoObserver),
    };
    let initial_routes =
        routes(&initial, &*observer).with_context(|| config.file.display().to_string())?;
    let cert_map = Arc::new(edge::CertMap::new());
    let cert_map_for_status = cert_map.clone();
    let deployer = Arc::new(SniDeployer::new(cert_map.clone()));
    let on_demand = crate::on_demand::OnDemandService::new(
        &config,
        store.clone(),
        node.clone(),
        cert_map.clone(),
        deployer.deployed(),
    );
    if let Some(on_demand) = &on_demand {
        on_demand.set_registry(&entries);
        cert_map.set_on_demand(Arc::new(on_demand.clone()));
    }
    let manager =
        certs::Manager::with_cache(store.clone(), cache, deployer, node.clone(), config.timings);
    // With `listen.workers`, that many threads each serve their share of the connections (see
    // edge::Shards); this runtime keeps the accept loops, certificate work and reloads.
    let shards = match config.workers {
        0 => None,
        n => Some(Arc::new(
            edge::Shards::start(n).context("cannot start the worker threads (listen.workers)")?,
        )),
    };
    let edge = build_edge(
        &config,
        initial_routes,
        cert_map,
        Arc::new(SharedChallenges(manager.challenges())),
        telemetry.is_some().then_some(&observer),
        shards.as_ref(),
    )?;
    // The fleet's TLS ticket keys, followed from the store (this edge's own key until then).
    let ticket_keys = crate::ticket_keys::follow(
        Arc::clone(edge.ticket_keys()),
        store.clone(),
        node.clone(),
        config.ticket_key_rotation,
        config.timings.resync,
        store.subscribe(),
        shutdown.clone(),
    );

    let http = bind(config.listen_http, "listen.http").await?;
    let https = bind(config.listen_https, "listen.https").await?;
    info!(
        node = %node,
        http = %config.listen_http,
        https = %config.listen_https,
        sites = initial.len(),
        registry_sites = entries.len(),
        registry_from = ?origin,
        workers = config.workers,
        version = env!("CARGO_PKG_VERSION"),
        "fleetgate started"
    );

    // [dns]: DNS-01 through the delegated zone, and its listener when `dns.listen` is set.
    let dns_task = crate::dns_node::start(&config, &store, &manager, shutdown.clone()).await?;
    let http_task = tokio::spawn(edge.clone().serve_http(http, shutdown.clone()));
    let https_task = tokio::spawn(edge.clone().serve_https(https, shutdown.clone()));
    let initial_certs = managed_certs(&initial, config.acme.as_ref());
    let serving_sites = initial.len();
    // Not needed past here: freed before the manager queues every certificate (at
    // 100,000 registry sites, the sites alone are tens of MB).
    drop(initial);
    manager.apply(initial_certs);
    let pause_watch = on_demand
        .as_ref()
        .map(|o| crate::on_demand::spawn_pause_watch(o, store.subscribe(), shutdown.clone()));
    let mut registry_changes = node_sites::follow(
        registry,
        registry_cache,
        registry_events,
        config.timings.resync,
        (entries, origin),
        shutdown.clone(),
    );
    let heartbeat = crate::status::spawn_heartbeat(
        store.clone(),
        &config,
        node.clone(),
        cert_map_for_status,
        shutdown.clone(),
    );
    let admin = match &config.admin {
        Some(admin) => {
            let mut state = crate::admin::AdminState::new(&config, store.clone(), node.clone())
                .with_registry_view(registry_changes.clone())
                .with_manager(manager.clone());
            if let Some(telemetry) = &telemetry {
                telemetry.spawn_upkeep(shutdown.clone());
                telemetry
                    .lag
                    .clone()
                    .spawn(store.clone(), &node, shutdown.clone());
                state = state.with_metrics(telemetry.clone());
            }
            Some(crate::admin::spawn(admin, state, shutdown.clone()).await?)
        }
        None => None,
    };

    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    // Every listener is bound (the admin API's too): tell systemd (Type=notify).
    crate::systemd::ready(serving_sites);
    crate::systemd::spawn_watchdog(shutdown.clone());
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut current = config;
    // The admin API and on-demand took what they show or copy of the file's sites.
    current.keep_for_serving();
    let mut serving = Serving {
        edge: edge.clone(),
        manager: manager.clone(),
        observer,
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let entries = registry_changes.borrow().clone();
                if let Some(new) = reload(&current, &mut serving, &entries) {
                    current = new;
                }
            }
            Ok(()) = registry_changes.changed() => {
                let entries = registry_changes.borrow_and_update().clone();
                if let Some(on_demand) = &on_demand {
                    on_demand.set_registry(&entries);
                }
                match serving.apply_sites(&current, &entries, false) {
                    Ok(n) => info!(sites = n, registry_sites = entries.len(), "site registry change applied"),
                    Err(e) => error!(error = %format!("{e:#}"), "site registry change not applied"),
                }
            }
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
        }
    }
    // Stop accepting and drain in-flight requests (bounded by limits.drain_timeout inside the
    // edge), then stop certificate work and release this node's leases.
    crate::systemd::stopping();
    shutdown.cancel();
    let _ = tokio::join!(http_task, https_task, heartbeat, ticket_keys);
    if let Some(pause_watch) = pause_watch {
        let _ = pause_watch.await;
    }
    if let Some(on_demand) = &on_demand {
        let (asks, recorded) = on_demand.counts();
        info!(
            asks,
            recorded, "on-demand: ask calls made and names recorded by this node"
        );
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    if let Some(dns_task) = dns_task {
        let _ = dns_task.await;
    }
    // The listeners have drained their connections: the workers have nothing left to run.
    if let Some(shards) = &shards {
        shards.stop();
    }
    manager.shutdown().await;
    crate::status::mark_stopped(store.as_ref(), &node).await;
    info!("stopped");
    Ok(())
}

/// The edge for `config`: its routes, certificates and challenge answers, requests reported to
/// `observer` (with the metrics), connections served on `shards` (with `listen.workers`).
fn build_edge(
    config: &Config,
    routes: edge::Routes,
    certs: Arc<edge::CertMap>,
    challenges: Arc<dyn edge::ChallengeResponder>,
    observer: Option<&Arc<dyn edge::Observer>>,
    shards: Option<&Arc<edge::Shards>>,
) -> anyhow::Result<Arc<edge::Edge>> {
    let mut edge = edge::Edge::new(routes, certs, challenges, config.limits.clone())
        .context("cannot set up the listeners' TLS")?
        .with_https_port(config.listen_https.port())
        .with_proxy_protocol(edge::ProxyProtocol::new(config.proxy_protocol_from.clone()));
    if let Some(observer) = observer {
        edge = edge.with_observer(Arc::clone(observer));
    }
    if let Some(shards) = shards {
        edge = edge.with_shards(Arc::clone(shards));
    }
    Ok(Arc::new(edge))
}

/// SIGHUP: load the config file again and serve its sites with the registry's; `None` (and a
/// logged error) keeps the running configuration. The file is judged exactly as `fleetgate
/// check` judges it: [`Config::load`], then [`crate::config::check_certificates`].
fn reload(current: &Config, serving: &mut Serving, registry: &[Arc<Entry>]) -> Option<Config> {
    let mut new = match Config::load(&current.file) {
        Ok(new) => new,
        Err(e) => {
            error!(error = %e, "configuration rejected; keeping the running one");
            return None;
        }
    };
    let certs = crate::config::check_certificates(&new);
    new.keep_for_serving();
    for finding in &certs.warnings {
        warn!(warning = %finding, "certificate warning in the reloaded configuration");
    }
    if certs.is_fatal() {
        for finding in &certs.fatal {
            error!(error = %finding, "certificate refused");
        }
        error!(
            errors = certs.fatal.len(),
            "configuration rejected (certificate files fleetgate would not serve; `fleetgate check` says the same); keeping the running one"
        );
        return None;
    }
    if new.listen_http != current.listen_http
        || new.listen_https != current.listen_https
        || new.proxy_protocol_from != current.proxy_protocol_from
        || new.workers != current.workers
        || new.storage != current.storage
        || new.dns != current.dns
        || new.on_demand != current.on_demand
        || new.ticket_key_rotation != current.ticket_key_rotation
    {
        warn!(
            "listen (proxy_protocol_from and workers included), storage, dns, on_demand and tls changes take effect after a restart"
        );
    }
    match serving.apply_sites(&new, registry, true) {
        Ok(n) => {
            info!(sites = n, "configuration reloaded");
            Some(new)
        }
        Err(e) => {
            error!(error = %format!("{e:#}"), "configuration rejected; keeping the running one");
            None
        }
    }
}
