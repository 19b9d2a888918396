//! The glue between `certs` and `edge`: deployed certificates go into the SNI map, and challenge
//! lookups from the listeners go to the shared challenge state.

use std::sync::Arc;

use certs::{CertId, Challenges, Deployer, DomainName};
use edge::CertUpdate;
use rustls::sign::CertifiedKey;
use tokio::sync::{mpsc, watch};

/// How many queued updates are applied with one rebuild of the SNI tables.
const BATCH: usize = 4096;
/// How long updates are gathered into one batch after the first arrives.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

/// Puts certificates from the manager into the edge's SNI map. Updates are queued and applied in
/// batches by one task, so thousands of certificates deployed at startup cost one table rebuild
/// per batch instead of one per certificate; a lone update is applied within microseconds, a
/// burst within [`GATHER`].
#[derive(Debug)]
pub struct SniDeployer {
    queue: mpsc::UnboundedSender<CertUpdate>,
    deployed: watch::Receiver<u64>,
}

impl SniDeployer {
    /// Must be called inside a tokio runtime; the applying task ends when the deployer is dropped.
    pub fn new(map: Arc<edge::CertMap>) -> SniDeployer {
        let (queue, mut updates) = mpsc::unbounded_channel::<CertUpdate>();
        let (notify, deployed) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while updates.recv_many(&mut batch, BATCH).await > 0 {
                // Let a burst (a node starting with thousands of certificates) gather for a
                // moment: fewer, larger batches, each one copy of the map's recent changes. A
                // lone update (a renewal, an on-demand certificate) is applied at once.
                if batch.len() > 1 && batch.len() < BATCH {
                    tokio::time::sleep(GATHER).await;
                    while batch.len() < BATCH {
                        match updates.try_recv() {
                            Ok(update) => batch.push(update),
                            Err(_) => break,
                        }
                    }
                }
                let ids: Vec<String> = batch
                    .iter()
                    .map(|u| match u {
                        CertUpdate::Insert { id, .. } | CertUpdate::Remove { id } => id.clone(),
                    })
                    .collect();
                for (id, result) in ids.iter().zip(map.apply(std::mem::take(&mut batch))) {
                    if let Err(e) = result {
                        // Names were validated as DomainNames; a refusal is a bug worth a line.
                        tracing::error!(cert = %id, error = %e, "the SNI map refused a certificate");
                    }
                }
                // After the map changed: on-demand handshakes waiting for a name look again.
                notify.send_modify(|n| *n += 1);
            }
        });
        SniDeployer { queue, deployed }
    }

    /// Changes after every batch applied to the SNI map.
    pub fn deployed(&self) -> watch::Receiver<u64> {
        self.deployed.clone()
    }
}

impl Deployer for SniDeployer {
    fn deploy(&self, id: &CertId, names: &[DomainName], key: Arc<CertifiedKey>) {
        let names = names.iter().map(|n| n.to_string()).collect();
        // Sending fails only once the runtime is shutting down.
        let _ = self.queue.send(CertUpdate::Insert {
            id: id.clone(),
            names,
            key,
        });
    }

    fn retract(&self, id: &CertId) {
        let _ = self.queue.send(CertUpdate::Remove { id: id.clone() });
    }
}

/// Answers the edge's challenge lookups from the shared challenge state.
#[derive(Debug)]
pub struct SharedChallenges(pub Arc<Challenges>);

#[async_trait::async_trait]
impl edge::ChallengeResponder for SharedChallenges {
    async fn http01(&self, host: &str, token: &str) -> Option<String> {
        let answer = self.0.http01(host, token).await;
        if answer.is_some() {
            crate::telemetry::challenge_answered("http-01");
        }
        answer
    }

    async fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let answer = self.0.tls_alpn01(host).await;
        if answer.is_some() {
            crate::telemetry::challenge_answered("tls-alpn-01");
        }
        answer
    }
}
