//! A manager with far more certificates to order than turns to order them
//! ([`certs::MAX_OBTAINING`]): every one is issued and served, a removed one is retracted, and
//! one re-requested while others wait in line is renewed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use certs::{CertSource, DomainName, KeyType, MAX_OBTAINING, ManagedCert, Manager, Timings};
use rustls::sign::CertifiedKey;
use store::{DirStore, Storage};

/// What is served now, by certificate id: the leaf.
#[derive(Default)]
struct Served(Mutex<HashMap<String, Vec<u8>>>);

impl Served {
    fn now(&self) -> HashMap<String, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl certs::Deployer for Served {
    fn deploy(&self, id: &String, _names: &[DomainName], key: Arc<CertifiedKey>) {
        if let Some(leaf) = key.cert.first() {
            let mut served = self.0.lock().unwrap_or_else(|p| p.into_inner());
            served.insert(id.clone(), leaf.as_ref().to_vec());
        }
    }
    fn retract(&self, id: &String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

fn cert(i: usize) -> Result<ManagedCert> {
    let name = format!("s{i}.many.test");
    Ok(ManagedCert {
        id: name.clone(),
        domains: vec![DomainName::parse(&name)?],
        source: CertSource::Internal,
        key_type: KeyType::EcdsaP256,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_certificates_than_turns_to_order_are_all_issued() -> Result<()> {
    let count = 4 * MAX_OBTAINING + 7;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(dir.path())?);
    let served = Arc::new(Served::default());
    let manager = Manager::with_cache(
        store.clone(),
        None,
        served.clone(),
        "node-a".into(),
        Timings::default(),
    );
    let all: Vec<ManagedCert> = (0..count).map(cert).collect::<Result<_>>()?;
    manager.apply(all.clone());
    testkit::wait_for(
        "every certificate is served",
        Duration::from_secs(60),
        || {
            let served = served.clone();
            async move { (served.now().len() == count).then_some(()) }
        },
    )
    .await?;

    // Remove the first three; while the rest wait for nothing, re-request one and add one.
    let before = served.now();
    let renewed = &all[count - 1];
    let request = Manager::request_renewal(store.as_ref(), renewed, "test")
        .await?
        .context("issued, so stored")?;
    let mut wanted: Vec<ManagedCert> = all[3..].to_vec();
    wanted.push(cert(count)?);
    manager.update(wanted);
    testkit::wait_for(
        "the removed are retracted, the new one served, the requested one renewed",
        Duration::from_secs(30),
        || {
            let (served, before) = (served.clone(), before.clone());
            let (renewed, added) = (renewed.id.clone(), format!("s{count}.many.test"));
            async move {
                let now = served.now();
                let removed: HashSet<&String> =
                    before.keys().filter(|id| !now.contains_key(*id)).collect();
                let done = removed.len() == 3
                    && (0..3).all(|i| !now.contains_key(&format!("s{i}.many.test")))
                    && now.contains_key(&added)
                    && now.get(&renewed) != before.get(&renewed)
                    && now.len() == count - 3 + 1;
                done.then_some(())
            }
        },
    )
    .await?;
    assert_eq!(
        manager
            .live_status(&renewed.id)
            .and_then(|l| l.serving)
            .map(|s| s.0 == request.serial),
        Some(false),
        "the renewed certificate has a new serial"
    );
    manager.shutdown().await;
    Ok(())
}
