//! The interface to whoever holds ACME challenge state (the `certs` crate in the binary).

use std::sync::Arc;

use async_trait::async_trait;
use rustls::sign::CertifiedKey;

/// Answers ACME challenges. The edge calls it while a CA (or anyone) is connected, so answers
/// should come quickly; the edge gives up after [`crate::Limits::challenge_timeout`].
#[async_trait]
pub trait ChallengeResponder: Send + Sync + 'static {
    /// The key authorization for HTTP-01 `token` on `host` (a normalised hostname, whether a
    /// site serves it or not), or `None` (answered with 404). Asked for any well-formed token:
    /// misses should be cheap to repeat.
    async fn http01(&self, host: &str, token: &str) -> Option<String>;

    /// The TLS-ALPN-01 certificate (with the acmeIdentifier extension) for `host` (the SNI,
    /// lower-cased, whether a site serves it or not), or `None` to abort the handshake. Asked
    /// for every `acme-tls/1` handshake: misses should be cheap to repeat.
    async fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>>;
}

/// A responder that never has a challenge: for edges without ACME.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoChallenges;

#[async_trait]
impl ChallengeResponder for NoChallenges {
    async fn http01(&self, _host: &str, _token: &str) -> Option<String> {
        None
    }

    async fn tls_alpn01(&self, _host: &str) -> Option<Arc<CertifiedKey>> {
        None
    }
}
