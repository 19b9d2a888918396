//! Opening this node's storage: the configured backend (sealed when a sealing key is set), the
//! local cache for shared backends, and the node's name in locks and heartbeats. `run`, `status`
//! and the one-shot commands all start here.

use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, SealKeySource, StorageConfig};

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
pub fn read_pem(path: Option<&std::path::Path>, key: &str) -> anyhow::Result<Option<String>> {
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
