//! The glue between `certs` and `edge`: deployed certificates go into the SNI map, and challenge
//! lookups from the listeners go to the shared challenge state.

use std::sync::Arc;

use certs::{CertId, Challenges, Deployer, DomainName};
use rustls::sign::CertifiedKey;

/// Puts certificates from the manager into the edge's SNI map.
#[derive(Debug)]
pub struct SniDeployer(pub Arc<edge::CertMap>);

impl Deployer for SniDeployer {
    fn deploy(&self, id: &CertId, names: &[DomainName], key: Arc<CertifiedKey>) {
        if let Err(e) = self.0.insert(id.clone(), names.iter().map(DomainName::as_str), key) {
            // Names were validated as DomainNames; the edge refusing one is a bug worth a log line.
            tracing::error!(cert = %id, error = %e, "the SNI map refused a certificate");
        }
    }

    fn retract(&self, id: &CertId) {
        self.0.remove(id);
    }
}

/// Answers the edge's challenge lookups from the shared challenge state.
#[derive(Debug)]
pub struct SharedChallenges(pub Arc<Challenges>);

#[async_trait::async_trait]
impl edge::ChallengeResponder for SharedChallenges {
    async fn http01(&self, host: &str, token: &str) -> Option<String> {
        self.0.http01(host, token).await
    }

    async fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.0.tls_alpn01(host).await
    }
}
