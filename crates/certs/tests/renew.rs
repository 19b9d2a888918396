//! `Manager::request_renewal`: two nodes' managers on one real `DirStore`; a renewal requested
//! through the store is done once for the fleet and served by both.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use certs::{
    CertBundle, CertSource, DomainName, Error, KeyType, ManagedCert, Manager, Timings, layout,
};
use rustls::sign::CertifiedKey;
use store::{DirStore, Storage};

/// Every leaf one node deployed, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<Vec<u8>>>);

impl certs::Deployer for Recorder {
    fn deploy(&self, _id: &String, _names: &[DomainName], key: Arc<CertifiedKey>) {
        if let Some(leaf) = key.cert.first() {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(leaf.as_ref().to_vec());
        }
    }
    fn retract(&self, _id: &String) {}
}

impl Recorder {
    fn last(&self) -> Option<Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
    }
    fn all(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn cert() -> Result<ManagedCert> {
    Ok(ManagedCert {
        id: "renew.example".into(),
        domains: vec![DomainName::parse("renew.example")?],
        source: CertSource::Internal,
        key_type: KeyType::EcdsaP256,
    })
}

async fn stored(store: &dyn Storage, cert: &ManagedCert) -> Result<CertBundle> {
    let key = cert.storage_key().context("internal certs are stored")?;
    let bytes = store.get(&key).await?.context("not stored")?;
    Ok(CertBundle::from_json(&bytes)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_renewal_happens_once_and_reaches_every_node() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(dir.path())?);
    let cert = cert()?;
    let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let timings = Timings {
        resync: Duration::from_secs(60),
        ..Timings::default()
    };
    let node_a = Manager::with_cache(store.clone(), None, a.clone(), "node-a".into(), timings);
    let node_b = Manager::with_cache(store.clone(), None, b.clone(), "node-b".into(), timings);
    node_a.apply(vec![cert.clone()]);
    node_b.apply(vec![cert.clone()]);

    let first = testkit::wait_for(
        "both nodes serve one certificate",
        Duration::from_secs(20),
        || {
            let (a, b) = (a.clone(), b.clone());
            async move { a.last().filter(|leaf| b.last().as_ref() == Some(leaf)) }
        },
    )
    .await?;
    let before = stored(store.as_ref(), &cert).await?;

    let request = Manager::request_renewal(store.as_ref(), &cert, "admin-test")
        .await?
        .context("a certificate is stored")?;
    assert_eq!(request.serial, before.meta.serial);

    let second = testkit::wait_for(
        "both nodes serve the renewed certificate",
        Duration::from_secs(20),
        || {
            let (a, b, first) = (a.clone(), b.clone(), first.clone());
            async move {
                a.last()
                    .filter(|leaf| *leaf != first && b.last().as_ref() == Some(leaf))
            }
        },
    )
    .await?;
    let after = stored(store.as_ref(), &cert).await?;
    assert_ne!(after.meta.serial, before.meta.serial);
    testkit::wait_for("the request is removed", Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            matches!(
                store.get(&layout::renew_request("renew.example")).await,
                Ok(None)
            )
            .then_some(())
        }
    })
    .await?;

    // Once for the fleet: the two nodes together served exactly two certificates.
    let distinct: BTreeSet<Vec<u8>> = a.all().into_iter().chain(b.all()).collect();
    assert_eq!(distinct.len(), 2, "certificates issued: {}", distinct.len());
    assert!(distinct.contains(&first) && distinct.contains(&second));

    node_a.shutdown().await;
    node_b.shutdown().await;

    // A request naming a serial that is no longer current (already honoured) is ignored: a
    // node starting now reads it, serves the stored certificate and renews nothing.
    let stale = certs::RenewRequest {
        serial: before.meta.serial.clone(),
        requested_at: 0,
        requested_by: "admin-test".into(),
    };
    store
        .put(
            &layout::renew_request("renew.example"),
            &serde_json::to_vec(&stale)?,
        )
        .await?;
    let c = Arc::new(Recorder::default());
    let node_c = Manager::with_cache(store.clone(), None, c.clone(), "node-c".into(), timings);
    node_c.apply(vec![cert.clone()]);
    testkit::wait_for("node c serves", Duration::from_secs(20), || {
        let c = c.clone();
        async move { c.last() }
    })
    .await?;
    // Shutdown lets the task finish the step it is in (a renewal would complete first).
    node_c.shutdown().await;
    assert_eq!(c.all(), vec![second]);
    assert_eq!(
        stored(store.as_ref(), &cert).await?.meta.serial,
        after.meta.serial
    );
    Ok(())
}

#[tokio::test]
async fn files_certificates_are_not_renewed_by_request() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(dir.path())?);
    let files = ManagedCert {
        source: CertSource::Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        },
        ..cert()?
    };
    let err = Manager::request_renewal(store.as_ref(), &files, "t")
        .await
        .err()
        .context("refused")?;
    assert!(matches!(err, Error::Config(_)), "{err}");
    // Nothing stored yet for an internal certificate: nothing to renew.
    assert!(
        Manager::request_renewal(store.as_ref(), &cert()?, "t")
            .await?
            .is_none()
    );
    assert!(
        store
            .get(&layout::renew_request("renew.example"))
            .await?
            .is_none()
    );
    Ok(())
}
