//! The built-in CA against a real `DirStore`: one root per store, leaves that rustls accepts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use certs::internal::InternalCa;
use certs::{DomainName, Error, KeyType, SourceKind};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use store::{DirStore, Storage};

fn open(dir: &tempfile::TempDir) -> Result<Arc<dyn Storage>> {
    Ok(Arc::new(DirStore::open(dir.path())?))
}

fn names(list: &[&str]) -> Result<Vec<DomainName>> {
    Ok(list
        .iter()
        .map(|n| DomainName::parse(n))
        .collect::<Result<_, _>>()?)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn chain(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    Ok(CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>()?)
}

#[tokio::test]
async fn root_is_created_once_and_reused_by_another_node() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = InternalCa::new(open(&dir)?, "node-a".into());
    let root_a = a.root_pem().await?;
    // Cached: the same value again without touching the store.
    assert_eq!(a.root_pem().await?, root_a);

    // Another process on the same directory.
    let b = InternalCa::new(open(&dir)?, "node-b".into());
    assert_eq!(b.root_pem().await?, root_a);

    let der = CertificateDer::from_pem_slice(root_a.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())?;
    assert!(cert.is_ca());
    assert_eq!(
        cert.subject().to_string(),
        cert.issuer().to_string(),
        "self-signed"
    );
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .context("no CN")?
        .as_str()?;
    assert_eq!(cn, "fleetgate internal root");
    let usage = cert.key_usage()?.context("no key usage")?.value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    let validity = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(
        (3650 * 86_400..=3653 * 86_400).contains(&validity),
        "validity {validity}s"
    );
    // No lock is left behind.
    assert!(open(&dir)?.locks().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_nodes_agree_on_one_root() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let ca = InternalCa::new(open(&dir)?, format!("node-{i}"));
        tasks.push(tokio::spawn(async move { ca.root_pem().await }));
    }
    let mut roots = Vec::new();
    for task in tasks {
        roots.push(task.await??);
    }
    roots.dedup();
    assert_eq!(roots.len(), 1, "{} different roots", roots.len());
    Ok(())
}

#[tokio::test]
async fn leaves_of_every_key_type_verify_against_the_root() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = InternalCa::new(open(&dir)?, "node-a".into());
    let root = ca.root_pem().await?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(root.as_bytes())?)?;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;

    let domains = names(&["example.com", "www.example.com", "*.example.net"])?;
    for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
        let bundle = ca.issue(&domains, key_type).await?;
        assert_eq!(bundle.meta.source, SourceKind::Internal);
        assert_eq!(
            bundle.meta.names,
            ["example.com", "www.example.com", "*.example.net"]
        );
        assert_eq!(bundle.meta.not_after - bundle.meta.not_before, 7 * 86_400);
        // Under 10 days of lifetime: renewed at half, 3.5 days in.
        assert_eq!(
            certs::renewal::renew_at(&bundle.meta, 0.5),
            bundle.meta.not_before + 7 * 86_400 / 2
        );
        bundle
            .certified_key()
            .with_context(|| format!("{key_type:?}"))?;

        let chain = chain(&bundle.chain_pem)?;
        assert_eq!(chain.len(), 2, "leaf + root");
        for name in ["example.com", "www.example.com", "anything.example.net"] {
            verifier
                .verify_server_cert(
                    &chain[0],
                    &chain[1..],
                    &ServerName::try_from(name)?,
                    &[],
                    UnixTime::now(),
                )
                .with_context(|| format!("{key_type:?} leaf for {name}"))?;
        }
        for other in ["example.org", "a.b.example.net"] {
            let err = verifier.verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(other)?,
                &[],
                UnixTime::now(),
            );
            assert!(err.is_err(), "{key_type:?} leaf accepted for {other}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_real_handshake_works_with_every_key_type() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = InternalCa::new(open(&dir)?, "node-a".into());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(
        ca.root_pem().await?.as_bytes(),
    )?)?;
    let roots = Arc::new(roots);
    for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
        let bundle = ca.issue(&names(&["site.example.com"])?, key_type).await?;
        let server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                bundle.certified_key()?,
            )));
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let mut client = rustls::ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("site.example.com")?,
        )?;
        let mut server = rustls::ServerConnection::new(Arc::new(server_config))?;
        // Shuttle records in memory until both sides are done.
        let mut buf = Vec::new();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            buf.clear();
            client.write_tls(&mut buf)?;
            server.read_tls(&mut buf.as_slice())?;
            server
                .process_new_packets()
                .with_context(|| format!("{key_type:?} server"))?;
            buf.clear();
            server.write_tls(&mut buf)?;
            client.read_tls(&mut buf.as_slice())?;
            client
                .process_new_packets()
                .with_context(|| format!("{key_type:?} client"))?;
        }
        assert!(
            !client.is_handshaking() && !server.is_handshaking(),
            "{key_type:?}: handshake incomplete"
        );
    }
    Ok(())
}

/// A store in which a peer creates the root just before our first `try_lock` is granted: the
/// window between "nothing stored" and "lock acquired" that the re-read after acquiring closes.
#[derive(Debug)]
struct PeerWinsTheRace {
    inner: Arc<dyn Storage>,
    peer_root: tokio::sync::Mutex<Option<String>>,
}

#[async_trait::async_trait]
impl Storage for PeerWinsTheRace {
    async fn put(&self, key: &store::StorageKey, value: &[u8]) -> store::Result<()> {
        self.inner.put(key, value).await
    }
    async fn put_fenced(
        &self,
        key: &store::StorageKey,
        value: &[u8],
        lease: &store::Lease,
    ) -> store::Result<()> {
        self.inner.put_fenced(key, value, lease).await
    }
    async fn get(&self, key: &store::StorageKey) -> store::Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn delete(&self, key: &store::StorageKey) -> store::Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &store::StorageKey) -> store::Result<Vec<store::StorageKey>> {
        self.inner.list(prefix).await
    }
    async fn try_lock(
        &self,
        name: &store::LockName,
        owner: &str,
        ttl: Duration,
    ) -> store::Result<Result<store::Lease, store::LockHolder>> {
        let mut peer_root = self.peer_root.lock().await;
        if peer_root.is_none() {
            let peer = InternalCa::new(self.inner.clone(), "peer".into());
            let root = peer
                .root_pem()
                .await
                .map_err(|e| store::Error::Unavailable {
                    what: format!("peer failed: {e}"),
                    source: None,
                })?;
            *peer_root = Some(root);
        }
        self.inner.try_lock(name, owner, ttl).await
    }
    async fn renew(&self, lease: &store::Lease, ttl: Duration) -> store::Result<store::Lease> {
        self.inner.renew(lease, ttl).await
    }
    async fn unlock(&self, lease: &store::Lease) -> store::Result<()> {
        self.inner.unlock(lease).await
    }
    async fn locks(&self) -> store::Result<Vec<store::LockHolder>> {
        self.inner.locks().await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<store::Change> {
        self.inner.subscribe()
    }
}

#[tokio::test]
async fn rereads_after_acquiring_the_lock() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let racy = Arc::new(PeerWinsTheRace {
        inner: open(&dir)?,
        peer_root: tokio::sync::Mutex::new(None),
    });
    let ca = InternalCa::new(racy.clone(), "node-a".into());
    let ours = ca.root_pem().await?;
    let peers = racy
        .peer_root
        .lock()
        .await
        .clone()
        .context("the peer did not run")?;
    assert_eq!(ours, peers, "a second root was created over the peer's");
    Ok(())
}

#[tokio::test]
async fn issuing_without_names_is_a_config_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = InternalCa::new(open(&dir)?, "node-a".into());
    assert!(matches!(
        ca.issue(&[], KeyType::EcdsaP256).await,
        Err(Error::Config(_))
    ));
    Ok(())
}

/// A peer holds the lock and never writes the root: after waiting (paused time, so instantly) the
/// caller reports `Busy`; once the peer lets go, the next call creates the root.
#[tokio::test(start_paused = true)]
async fn a_lock_held_by_a_peer_reports_busy_then_recovers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    // The lease is measured in wall-clock time, so it outlives the paused-time wait.
    let lease = store
        .try_lock(
            &certs::layout::internal_ca_lock(),
            "peer",
            Duration::from_secs(3600),
        )
        .await?
        .map_err(|holder| anyhow::anyhow!("lock unexpectedly held by {}", holder.owner))?;

    let ca = InternalCa::new(store.clone(), "node-a".into());
    let started = tokio::time::Instant::now();
    match ca.root_pem().await {
        Err(Error::Busy { name }) => assert_eq!(name, "internal-ca"),
        other => panic!("expected Busy, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(30)..Duration::from_secs(31)).contains(&waited),
        "waited {waited:?}"
    );
    assert!(store.get(&certs::layout::internal_ca()).await?.is_none());

    store.unlock(&lease).await?;
    let root = ca.root_pem().await?;
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"));
    Ok(())
}

#[tokio::test]
async fn a_corrupt_stored_root_is_reported_not_replaced() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    store
        .put(
            &certs::layout::internal_ca(),
            b"{\"cert_pem\":\"x\",\"key_pem\":\"y\"}",
        )
        .await?;
    let ca = InternalCa::new(store.clone(), "node-a".into());
    match ca.root_pem().await {
        Err(Error::Store(store::Error::Corrupt { key, .. })) => assert_eq!(key, "internal/ca.json"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    Ok(())
}
