//! Connections to upstreams: TCP (and TLS for https upstreams, with the site's own roots or the
//! system's) under one connect deadline. [`super::pool`] keeps them alive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::net::TcpStream;

use crate::error::EdgeError;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A dialled upstream connection: TCP, or TLS over TCP (hyper's IO traits).
pub(crate) type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// What a proxy site's connector needs to know.
pub(crate) struct ClientSettings<'a> {
    pub(crate) connect_timeout: Duration,
    /// Whether any upstream is https (system roots are loaded only then).
    pub(crate) any_https: bool,
    pub(crate) ca_root_pem: Option<&'a str>,
}

/// Builds the site's connector: TCP with no Nagle delay, then TLS for https upstreams.
pub(crate) fn connector(settings: &ClientSettings<'_>) -> Result<Connector, EdgeError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = HttpsConnectorBuilder::new();
    let builder = match (settings.ca_root_pem, settings.any_https) {
        (Some(pem), _) => builder.with_tls_config(tls_config(provider, roots_from_pem(pem)?)?),
        (None, true) => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| invalid("system roots", e.to_string()))?,
        // Plain upstreams only: the TLS side is never used.
        (None, false) => builder.with_tls_config(tls_config(provider, RootCertStore::empty())?),
    };
    let https = builder.https_or_http().enable_http1().wrap_connector(http);
    Ok(Connector {
        inner: https,
        timeout: settings.connect_timeout,
    })
}

fn invalid(what: &str, reason: String) -> EdgeError {
    EdgeError::InvalidProxy {
        what: what.to_owned(),
        reason,
    }
}

fn roots_from_pem(pem: &str) -> Result<RootCertStore, EdgeError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| invalid("ca_root", format!("bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid("ca_root", format!("unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid("ca_root", "no certificate in the PEM".to_owned()));
    }
    Ok(roots)
}

fn tls_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: RootCertStore,
) -> Result<rustls::ClientConfig, EdgeError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The connect deadline was reached (TCP and TLS together).
#[derive(Debug, thiserror::Error)]
#[error("connecting to the upstream timed out")]
pub(crate) struct ConnectTimeout;

/// hyper-rustls' connector under one deadline for TCP and TLS together.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = Io;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connect = self.inner.call(uri);
        let deadline = self.timeout;
        // One allocation per new upstream connection, not per request.
        Box::pin(async move {
            match tokio::time::timeout(deadline, connect).await {
                Ok(result) => result,
                Err(_) => Err(Box::new(ConnectTimeout) as BoxError),
            }
        })
    }
}
