//! Shared test harness: a running [`Edge`] on loopback listeners, certificates from a test CA,
//! a scriptable challenge responder and small clients (HTTP/2, keep-alive HTTP/1.1, no-verify
//! TLS for TLS-ALPN-01).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use bytes::Bytes;
use edge::{Action, CertMap, ChallengeResponder, Edge, Limits, Redirect, Routes, Site};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use testkit::TestPki;

/// Generous bound for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A test CA that signs leaves for rustls.
pub struct Ca {
    pub pki: TestPki,
}

impl Ca {
    pub fn new() -> Ca {
        Ca {
            pki: testkit::ca_and_leaf_with(&["unused.test"], testkit::LeafKey::default()).unwrap(),
        }
    }

    pub fn root_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// A fresh leaf (new key) for `names`, signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Arc<CertifiedKey> {
        let issuer = self.pki.issuer().unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        certified(cert.der().clone(), &key)
    }
}

/// A self-signed certificate for `name`, as an ACME CA would see a TLS-ALPN-01 certificate.
pub fn self_signed(name: &str) -> Arc<CertifiedKey> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    certified(cert.der().clone(), &signing_key)
}

fn certified(cert: CertificateDer<'static>, key: &KeyPair) -> Arc<CertifiedKey> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Arc::new(CertifiedKey::from_der(vec![cert], key, &provider).unwrap())
}

/// A challenge responder scripted by the test.
#[derive(Default)]
pub struct FakeChallenges {
    pub http01: Mutex<HashMap<(String, String), String>>,
    pub alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// When set, `http01` waits for `release` before answering and signals `entered`.
    pub hold: Mutex<bool>,
    pub entered: Notify,
    pub release: Notify,
}

impl FakeChallenges {
    pub fn add_http01(&self, host: &str, token: &str, key_auth: &str) {
        self.http01
            .lock()
            .unwrap()
            .insert((host.to_owned(), token.to_owned()), key_auth.to_owned());
    }

    pub fn add_alpn(&self, host: &str, key: Arc<CertifiedKey>) {
        self.alpn.lock().unwrap().insert(host.to_owned(), key);
    }
}

#[async_trait]
impl ChallengeResponder for FakeChallenges {
    async fn http01(&self, host: &str, token: &str) -> Option<String> {
        let hold = *self.hold.lock().unwrap();
        if hold {
            self.entered.notify_one();
            self.release.notified().await;
        }
        self.http01
            .lock()
            .unwrap()
            .get(&(host.to_owned(), token.to_owned()))
            .cloned()
    }

    async fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.lock().unwrap().get(host).cloned()
    }
}

/// A running edge on fresh loopback listeners.
pub struct TestEdge {
    pub edge: Arc<Edge>,
    pub certs: Arc<CertMap>,
    pub challenges: Arc<FakeChallenges>,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub shutdown: CancellationToken,
    pub http_task: Option<JoinHandle<()>>,
    pub https_task: Option<JoinHandle<()>>,
}

impl TestEdge {
    pub async fn start(sites: Vec<Site>, certs: Arc<CertMap>, limits: Limits) -> TestEdge {
        TestEdge::start_with(sites, certs, limits, None).await
    }

    /// As [`TestEdge::start`], with connections served on these worker runtimes.
    pub async fn start_with(
        sites: Vec<Site>,
        certs: Arc<CertMap>,
        limits: Limits,
        shards: Option<Arc<edge::Shards>>,
    ) -> TestEdge {
        let ip = testkit::loopback_ip();
        let http = TcpListener::bind((ip, 0)).await.unwrap();
        let https = TcpListener::bind((ip, 0)).await.unwrap();
        let (http_addr, https_addr) = (http.local_addr().unwrap(), https.local_addr().unwrap());
        let challenges = Arc::new(FakeChallenges::default());
        let edge = Edge::new(
            Routes::new(sites).unwrap(),
            Arc::clone(&certs),
            Arc::clone(&challenges) as Arc<dyn ChallengeResponder>,
            limits,
        )
        .unwrap()
        .with_https_port(https_addr.port());
        let edge = Arc::new(match shards {
            Some(shards) => edge.with_shards(shards),
            None => edge,
        });
        let shutdown = CancellationToken::new();
        let http_task = tokio::spawn(Arc::clone(&edge).serve_http(http, shutdown.clone()));
        let https_task = tokio::spawn(Arc::clone(&edge).serve_https(https, shutdown.clone()));
        TestEdge {
            edge,
            certs,
            challenges,
            http: http_addr,
            https: https_addr,
            shutdown,
            http_task: Some(http_task),
            https_task: Some(https_task),
        }
    }
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in [self.http_task.take(), self.https_task.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

pub fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

pub fn respond(names_: &[&str], body: &'static str) -> Site {
    Site::new(
        names(names_),
        Action::Respond {
            status: 200,
            body: Bytes::from_static(body.as_bytes()),
        },
    )
}

pub fn redirect(names_: &[&str], to: &str, status: u16, keep_path: bool) -> Site {
    Site::new(
        names(names_),
        Action::Redirect(Redirect {
            to: to.to_owned(),
            status,
            keep_path,
        }),
    )
}

/// A response read completely.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client TLS config trusting `root_pem`, offering `alpn`.
pub fn tls_config(root_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    Arc::new(testkit::client_config(root_pem, alpn).unwrap())
}

/// A kept-alive HTTPS connection speaking HTTP/1.1 or HTTP/2 (as ALPN decided).
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub struct Conn {
    pub client: Client,
    pub peer_cert: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
    /// Completes when the connection is closed.
    pub closed: JoinHandle<()>,
}

impl Conn {
    /// Connects to `addr` as `sni`, verifying against `config`'s roots.
    pub async fn open(
        addr: SocketAddr,
        sni: &str,
        config: Arc<ClientConfig>,
    ) -> anyhow::Result<Conn> {
        let tls = testkit::tls_connect(addr, sni, config).await?;
        let (_, session) = tls.get_ref();
        let peer_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no peer certificate")?
            .clone()
            .into_owned();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let (client, closed) = if alpn.as_deref() == Some(b"h2") {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            (
                Client::H2(send),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            (
                Client::H1(send),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        };
        Ok(Conn {
            client,
            peer_cert,
            alpn,
            closed,
        })
    }

    /// `GET https://host/path` on this connection.
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<Reply> {
        let fut = async {
            let response = match &mut self.client {
                Client::H1(send) => {
                    send.ready().await?;
                    let req = Request::get(path)
                        .header(header::HOST, host)
                        .body(Full::new(Bytes::new()))?;
                    send.send_request(req).await?
                }
                Client::H2(send) => {
                    send.ready().await?;
                    let req = Request::get(format!("https://{host}{path}"))
                        .version(http::Version::HTTP_2)
                        .body(Full::new(Bytes::new()))?;
                    send.send_request(req).await?
                }
            };
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Reply {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(DEADLINE, fut)
            .await
            .map_err(|_| anyhow!("GET {host}{path} took over {DEADLINE:?}"))?
    }
}

/// One `GET` over a fresh HTTPS connection with SNI `sni` and Host `host`.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    root_pem: &str,
    path: &str,
) -> anyhow::Result<Reply> {
    let mut conn = Conn::open(addr, sni, tls_config(root_pem, &[b"http/1.1"])).await?;
    conn.get(host, path).await
}

/// The TLS alert a failed handshake received, if that is why it failed.
pub fn received_alert(err: &anyhow::Error) -> Option<AlertDescription> {
    err.chain().find_map(|cause| {
        let io = cause.downcast_ref::<std::io::Error>()?;
        match io.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        }
    })
}

/// Accepts any server certificate: the TLS-ALPN-01 certificate is self-signed by design.
#[derive(Debug)]
pub struct AcceptAnyCert(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that accepts any certificate and offers `alpn` (TLS-ALPN-01 validation).
pub fn any_cert_config(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Reads from `stream` until EOF or error; returns everything read.
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}
