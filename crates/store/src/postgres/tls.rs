//! TLS to the database, for `sslmode=require`: rustls (aws-lc-rs), the server's certificate
//! verified for the host name against the configured roots, or the system's.
//!
//! libpq's `require` encrypts without checking the certificate; here it is always checked
//! (there is no unverified mode). Without `sslmode=require` the connection is plain (the
//! URL's `sslmode` is set to `disable`, see [`super::PostgresUrl`]), and this connector is
//! never asked to connect.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;

use crate::{Error, Result};

/// The connector handed to tokio-postgres and the pool: TLS with these settings, or (`None`,
/// plain connections) nothing.
#[derive(Clone)]
pub(super) struct DbTls(Option<Arc<rustls::ClientConfig>>);

impl DbTls {
    pub(super) fn plain() -> DbTls {
        DbTls(None)
    }

    /// TLS trusting the roots in `ca_root_pem`, or the system's without it.
    pub(super) fn verified(ca_root_pem: Option<&str>) -> Result<DbTls> {
        let invalid = |reason: String| Error::Unavailable {
            what: format!("set up TLS to the database: {reason}"),
            source: None,
        };
        let mut roots = RootCertStore::empty();
        match ca_root_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| invalid(format!("bad CA root PEM: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| invalid(format!("unusable CA root: {e}")))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        if roots.is_empty() {
            return Err(invalid(
                "no CA root certificate to verify the server".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(DbTls(Some(Arc::new(config))))
    }
}

impl MakeTlsConnect<Socket> for DbTls {
    type Stream = DbTlsStream;
    type TlsConnect = DbTlsConnect;
    type Error = io::Error;

    /// tokio-postgres asks for this before every connection, TLS or not; a plain one never
    /// uses it.
    fn make_tls_connect(&mut self, host: &str) -> io::Result<DbTlsConnect> {
        let Some(config) = self.0.clone() else {
            return Ok(DbTlsConnect(None));
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(DbTlsConnect(Some((config, name))))
    }
}

/// One TLS handshake to a database host (`None`: the connection is plain).
pub(super) struct DbTlsConnect(Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>);

impl TlsConnect<Socket> for DbTlsConnect {
    type Stream = DbTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<DbTlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let (config, name) = self.0.ok_or_else(|| {
                io::Error::other("TLS asked of a connection this URL keeps plain")
            })?;
            let tls = TlsConnector::from(config).connect(name, stream).await?;
            Ok(DbTlsStream(Box::new(tls)))
        })
    }
}

/// A TLS connection to the database.
pub(super) struct DbTlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for DbTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding is not offered; authentication still works (it is optional
        // unless the URL says channel_binding=require).
        ChannelBinding::none()
    }
}

impl AsyncRead for DbTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for DbTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
