//! A verifying TLS client for tests: the served chain must lead to the given root for the name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::pki::{CertInfo, cert_info, pem_certs};

/// Upper bound for connecting plus the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a completed handshake showed.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The certificates the server sent, leaf first, as DER.
    pub peer_chain: Vec<CertificateDer<'static>>,
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
    /// The negotiated TLS version.
    pub version: Option<ProtocolVersion>,
    /// The leaf certificate's validity, serial and names.
    pub leaf: CertInfo,
}

/// A rustls client config (aws-lc-rs, TLS 1.2 and 1.3) trusting exactly the certificates in
/// `roots_pem` and offering `alpn`. Tweak the result (e.g. versions) before wrapping it in `Arc`.
pub fn client_config(roots_pem: &str, alpn: &[&[u8]]) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(roots_pem)? {
        roots.add(cert).context("add a root certificate")?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Connects to `addr` and completes a TLS handshake as `sni` (a DNS name, or an IP address,
/// which rustls checks against IP SANs and does not send as SNI).
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    tls_connect_from(None, addr, sni, config).await
}

/// As [`tls_connect`], from the local address `from` when given (a `127.0.0.x`, to tell
/// clients apart behind a proxy).
pub async fn tls_connect_from(
    from: Option<std::net::Ipv4Addr>,
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let name =
        ServerName::try_from(sni.to_owned()).with_context(|| format!("server name {sni:?}"))?;
    let connect = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(ip) = from {
            socket
                .bind(SocketAddr::from((ip, 0)))
                .with_context(|| format!("bind {ip}"))?;
        }
        let tcp = socket
            .connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr} as {sni:?}"))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
        .await
        .with_context(|| format!("TLS to {addr} as {sni:?} took over {HANDSHAKE_TIMEOUT:?}"))?
}

/// Handshakes with `addr` as `sni`, verifying the served chain against `roots_pem` for exactly that
/// name, offering `alpn`; returns what was negotiated.
pub async fn tls_handshake(
    addr: SocketAddr,
    sni: &str,
    roots_pem: &str,
    alpn: &[&[u8]],
) -> anyhow::Result<TlsInfo> {
    let config = Arc::new(client_config(roots_pem, alpn)?);
    let stream = tls_connect(addr, sni, config).await?;
    tls_info(&stream)
}

/// Reads the [`TlsInfo`] of an established stream.
pub fn tls_info(stream: &TlsStream<TcpStream>) -> anyhow::Result<TlsInfo> {
    let (_, conn) = stream.get_ref();
    let peer_chain: Vec<_> = conn
        .peer_certificates()
        .context("server sent no certificates")?
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let leaf = cert_info(peer_chain.first().context("empty peer chain")?)?;
    Ok(TlsInfo {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
        peer_chain,
        leaf,
    })
}
