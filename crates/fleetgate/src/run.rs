//! `fleetgate run`: build everything from the config, serve, reload on SIGHUP, drain on SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, LogConfig, LogFormat, SealKeySource, SiteAction, StorageConfig};
use crate::deploy::{SharedChallenges, SniDeployer};

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

/// The configured sealing key, if any: `storage.seal_key_file`, else `FLEETGATE_SEAL_KEY`.
fn seal_key(config: &Config) -> anyhow::Result<Option<store::SealKey>> {
    let key_text = match &config.seal_key {
        Some(SealKeySource::File(path)) => Some((
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read storage.seal_key_file {}", path.display()))?,
            format!("storage.seal_key_file {}", path.display()),
        )),
        None => std::env::var("FLEETGATE_SEAL_KEY")
            .ok()
            .map(|k| (k, "FLEETGATE_SEAL_KEY".to_string())),
    };
    match key_text {
        Some((text, origin)) => Ok(Some(
            store::SealKey::from_hex(&text).with_context(|| origin)?,
        )),
        None => Ok(None),
    }
}

fn sealed(
    backend: Arc<dyn store::Storage>,
    key: &Option<store::SealKey>,
) -> Arc<dyn store::Storage> {
    match key {
        Some(key) => Arc::new(store::SealedStore::new(
            backend,
            key,
            certs::layout::sealed_prefixes(),
        )),
        None => backend,
    }
}

fn open_dir(path: &std::path::Path) -> anyhow::Result<Arc<dyn store::Storage>> {
    Ok(Arc::new(
        store::DirStore::open(path.to_path_buf())
            .with_context(|| format!("cannot open the storage directory {}", path.display()))?,
    ))
}

/// Open the configured storage backend (private keys sealed when a sealing key is configured),
/// and for shared backends this node's local cache.
pub async fn open_store(
    config: &Config,
) -> anyhow::Result<(Arc<dyn store::Storage>, Option<Arc<dyn store::Storage>>)> {
    let key = seal_key(config)?;
    let (backend, cache): (Arc<dyn store::Storage>, Option<Arc<dyn store::Storage>>) =
        match &config.storage {
            StorageConfig::Dir { path } => (open_dir(path)?, None),
            StorageConfig::Postgres { url, path, ca_root } => {
                let what = || format!("cannot use PostgreSQL (storage.url {})", redact(url));
                let parsed: store::PostgresUrl = url.parse().with_context(what)?;
                let mut options = store::PostgresOptions::default();
                if let Some(pem) = read_pem(ca_root.as_deref(), "storage.ca_root")? {
                    options = options.ca_root_pem(pem);
                }
                // Lazy: a node starts (and serves from its local cache) while the database is down.
                let store =
                    store::PostgresStore::connect_lazy_with(&parsed, options).with_context(what)?;
                (Arc::new(store), Some(open_dir(&path.join("cache"))?))
            }
            StorageConfig::Redis {
                url,
                prefix,
                path,
                ca_root,
            } => {
                let mut builder = store::RedisStore::builder(url.clone()).prefix(prefix.clone());
                if let Some(pem) = read_pem(ca_root.as_deref(), "storage.ca_root")? {
                    builder = builder.ca_root_pem(pem);
                }
                let store = builder
                    .connect_lazy()
                    .with_context(|| format!("cannot use Redis (storage.url {})", redact(url)))?;
                (Arc::new(store), Some(open_dir(&path.join("cache"))?))
            }
        };
    Ok((sealed(backend, &key), cache.map(|c| sealed(c, &key))))
}

/// The PEM file a `ca_root` key names, when one is configured (the config checked it when it
/// was loaded; it is read again where it is used).
fn read_pem(path: Option<&std::path::Path>, key: &str) -> anyhow::Result<Option<String>> {
    path.map(|path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {key} {}", path.display()))
    })
    .transpose()
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// This node's name in logs and locks: `node` from the config, or hostname-pid.
pub fn node_name(config: &Config) -> String {
    if let Some(node) = &config.node {
        return node.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".to_string());
    format!("{host}-{}", std::process::id())
}

/// The edge's routing table for a config.
pub fn routes(config: &Config) -> anyhow::Result<edge::Routes> {
    let sites = config
        .sites
        .iter()
        .map(|site| -> anyhow::Result<edge::Site> {
            Ok(edge::Site {
                names: site.domains.iter().map(|d| d.to_string()).collect(),
                action: match &site.action {
                    SiteAction::Redirect {
                        to,
                        status,
                        keep_path,
                    } => edge::Action::Redirect(edge::Redirect {
                        to: to.clone(),
                        status: *status,
                        keep_path: *keep_path,
                    }),
                    SiteAction::Respond { status, body } => edge::Action::Respond {
                        status: *status,
                        body: bytes::Bytes::from(body.clone()),
                    },
                    SiteAction::Proxy { proxy, ca_root } => {
                        let mut proxy = edge::Proxy::clone(proxy);
                        proxy.ca_root_pem = read_pem(ca_root.as_deref(), "proxy.ca_root")?;
                        edge::Action::Proxy(proxy)
                    }
                },
                https_redirect: site.https_redirect,
                hsts: site.hsts,
                access_log: site.access_log,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    edge::Routes::new(sites).map_err(|e| anyhow::anyhow!("{}: {e}", config.file.display()))
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let node = node_name(&config);
    let (store, cache) = open_store(&config).await?;
    let initial_routes = routes(&config)?;
    let cert_map = Arc::new(edge::CertMap::new());
    let cert_map_for_status = cert_map.clone();
    let manager = certs::Manager::with_cache(
        store.clone(),
        cache,
        Arc::new(SniDeployer::new(cert_map.clone())),
        node.clone(),
        config.timings,
    );
    // With `listen.workers`, that many threads each serve their share of the connections (see
    // edge::Shards); this runtime keeps the accept loops, certificate work and reloads.
    let shards = match config.workers {
        0 => None,
        n => Some(Arc::new(
            edge::Shards::start(n).context("cannot start the worker threads (listen.workers)")?,
        )),
    };
    let mut edge = edge::Edge::new(
        initial_routes,
        cert_map,
        Arc::new(SharedChallenges(manager.challenges())),
        config.limits.clone(),
    )
    .context("cannot set up the listeners' TLS")?
    .with_https_port(config.listen_https.port())
    .with_proxy_protocol(edge::ProxyProtocol::new(config.proxy_protocol_from.clone()));
    if let Some(shards) = &shards {
        edge = edge.with_shards(Arc::clone(shards));
    }
    let edge = Arc::new(edge);

    let http = TcpListener::bind(config.listen_http)
        .await
        .with_context(|| format!("cannot listen on {} (listen.http)", config.listen_http))?;
    let https = TcpListener::bind(config.listen_https)
        .await
        .with_context(|| format!("cannot listen on {} (listen.https)", config.listen_https))?;
    info!(
        node = %node,
        http = %config.listen_http,
        https = %config.listen_https,
        sites = config.sites.len(),
        workers = config.workers,
        version = env!("CARGO_PKG_VERSION"),
        "fleetgate started"
    );

    let shutdown = CancellationToken::new();
    // [dns]: DNS-01 through the delegated zone, and its listener when `dns.listen` is set.
    let dns_task = crate::dns_node::start(&config, &store, &manager, shutdown.clone()).await?;
    let http_task = tokio::spawn(edge.clone().serve_http(http, shutdown.clone()));
    let https_task = tokio::spawn(edge.clone().serve_https(https, shutdown.clone()));
    manager.apply(config.managed_certs());
    let heartbeat = crate::status::spawn_heartbeat(
        store.clone(),
        &config,
        node.clone(),
        cert_map_for_status,
        shutdown.clone(),
    );

    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut current = config;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match Config::load(&current.file) {
                    Ok(new) => match routes(&new) {
                        Ok(new_routes) => {
                            if new.listen_http != current.listen_http || new.listen_https != current.listen_https || new.proxy_protocol_from != current.proxy_protocol_from || new.workers != current.workers || new.storage != current.storage || new.dns != current.dns {
                                warn!("listen (proxy_protocol_from and workers included), storage and dns changes take effect after a restart");
                            }
                            edge.set_routes(new_routes);
                            manager.apply(new.managed_certs());
                            info!(sites = new.sites.len(), "configuration reloaded");
                            current = new;
                        }
                        Err(e) => error!(error = %e, "configuration rejected; keeping the running one"),
                    },
                    Err(e) => error!(error = %e, "configuration rejected; keeping the running one"),
                }
            }
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
        }
    }
    // Stop accepting and drain in-flight requests (bounded by limits.drain_timeout inside the
    // edge), then stop certificate work and release this node's leases.
    shutdown.cancel();
    let _ = tokio::join!(http_task, https_task, heartbeat);
    if let Some(dns_task) = dns_task {
        let _ = dns_task.await;
    }
    // The listeners have drained their connections: the workers have nothing left to run.
    if let Some(shards) = &shards {
        shards.stop();
    }
    manager.shutdown().await;
    info!("stopped");
    Ok(())
}
