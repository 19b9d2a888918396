//! TLS on the HTTPS listener: the ServerConfigs, the ClientHello triage (normal handshake,
//! TLS-ALPN-01 challenge, rejection) and the handshake deadline.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    Acceptor, ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache,
};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::challenge::ChallengeResponder;
use crate::error::EdgeError;
use crate::limits::Limits;
use crate::observe::{Handshake as Outcome, Observer};
use crate::resolver::CertMap;
use crate::tickets::TicketKeys;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// TLS sessions kept for resumption by session id (TLS 1.2 clients that offer no ticket): such
/// a session resumes only on the node that made it. Tickets (stateless, sealed with the keys in
/// [`TicketKeys`], shared by the fleet) are the main path, on TLS 1.3 and TLS 1.2 alike.
const SESSION_CACHE_SIZE: usize = 4096;

/// TLS alert descriptions the edge sends itself (RFC 8446 section 6).
#[derive(Debug, Clone, Copy)]
enum Alert {
    /// No SNI: there is no certificate to choose.
    HandshakeFailure = 40,
    /// An SNI name the edge has no certificate (or challenge) for (RFC 6066 section 3).
    UnrecognizedName = 112,
}

/// Outcome of the TLS phase of a connection.
pub(crate) enum Handshake {
    /// Serve HTTP over this stream. `key` is the certificate the client was given.
    Serve {
        stream: Box<TlsStream<TcpStream>>,
        sni: String,
        key: Arc<CertifiedKey>,
    },
    /// Nothing more to do: a challenge was answered, or the handshake was refused, failed or
    /// timed out.
    Done,
}

/// The server configurations, built once.
#[derive(Debug)]
pub(crate) struct TlsConfigs {
    provider: Arc<CryptoProvider>,
    main: Arc<ServerConfig>,
}

impl TlsConfigs {
    /// The main configuration: certificates from `certs` by SNI, ALPN h2 and http/1.1, session
    /// tickets sealed with `tickets` and a server-side session cache, aws-lc-rs as the provider.
    /// It holds nothing that changes at run time (the resolver and the ticket keys are live), so
    /// it is never rebuilt.
    pub(crate) fn new(certs: Arc<CertMap>, tickets: Arc<TicketKeys>) -> Result<Self, EdgeError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut main = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs);
        main.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        main.ticketer = tickets as Arc<dyn rustls::server::ProducesTickets>;
        main.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        // One TLS 1.3 ticket per handshake (rustls sends two by default), as Go's TLS stack
        // does: a client resuming spends one ticket per connection and every resumed handshake
        // brings a fresh one, so the second ticket is encryption work that mostly goes unused.
        main.send_tls13_tickets = 1;
        Ok(TlsConfigs {
            provider,
            main: Arc::new(main),
        })
    }

    /// A one-off configuration presenting the TLS-ALPN-01 certificate, ALPN `acme-tls/1` only,
    /// no resumption.
    fn challenge(&self, key: Arc<CertifiedKey>) -> Result<Arc<ServerConfig>, EdgeError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(key)));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// Runs the TLS phase on an accepted connection, all of it (the challenge lookup included)
    /// within `limits.tls_handshake_timeout`.
    pub(crate) async fn handshake(
        &self,
        stream: TcpStream,
        client: IpAddr,
        certs: &CertMap,
        challenges: &dyn ChallengeResponder,
        limits: &Limits,
        observer: &dyn Observer,
    ) -> Handshake {
        let (handshake, outcome) = self.triage(stream, client, certs, challenges, limits).await;
        observer.handshake(outcome);
        handshake
    }

    async fn triage(
        &self,
        stream: TcpStream,
        client: IpAddr,
        certs: &CertMap,
        challenges: &dyn ChallengeResponder,
        limits: &Limits,
    ) -> (Handshake, Outcome) {
        let mut deadline = Instant::now() + limits.tls_handshake_timeout;
        let start = match timeout_at(
            deadline,
            LazyConfigAcceptor::new(Acceptor::default(), stream),
        )
        .await
        {
            Ok(Ok(start)) => start,
            Ok(Err(error)) => {
                debug!(%error, "no valid ClientHello");
                return (Handshake::Done, Outcome::Failed);
            }
            Err(_) => {
                debug!("ClientHello timed out");
                return (Handshake::Done, Outcome::Failed);
            }
        };
        let hello = start.client_hello();
        let wants_challenge = offers_acme_alpn(&hello);
        let Some(sni) = hello.server_name().map(str::to_owned) else {
            debug!("no SNI");
            reject(start.io, Alert::HandshakeFailure, deadline).await;
            return (Handshake::Done, Outcome::NoCertificate);
        };

        // Any name is looked up, served here or not (yet): the CA may ask any node behind the
        // balancer. The responder's negative cache keeps repeated misses off its store.
        if wants_challenge {
            let sni = sni.to_ascii_lowercase();
            let lookup_by = deadline.min(Instant::now() + limits.challenge_timeout);
            let key = timeout_at(lookup_by, challenges.tls_alpn01(&sni))
                .await
                .ok()
                .flatten();
            let Some(key) = key else {
                debug!(sni, "no TLS-ALPN-01 challenge for this name");
                reject(start.io, Alert::UnrecognizedName, deadline).await;
                return (Handshake::Done, Outcome::AcmeChallenge);
            };
            let config = match self.challenge(key) {
                Ok(config) => config,
                Err(error) => {
                    debug!(%error, "cannot build the TLS-ALPN-01 configuration");
                    return (Handshake::Done, Outcome::AcmeChallenge);
                }
            };
            match timeout_at(deadline, start.into_stream(config)).await {
                Ok(Ok(mut tls)) => {
                    debug!(sni, "answered TLS-ALPN-01 challenge");
                    // The validator only looks at the certificate: close (with close_notify).
                    let _ = timeout_at(deadline, tls.shutdown()).await;
                }
                Ok(Err(error)) => debug!(sni, %error, "TLS-ALPN-01 handshake failed"),
                Err(_) => debug!(sni, "TLS-ALPN-01 handshake timed out"),
            }
            return (Handshake::Done, Outcome::AcmeChallenge);
        }

        // Checked here, rather than left to the resolver, to answer `unrecognized_name` instead
        // of the `access_denied` rustls sends when a resolver has no certificate.
        let key = match certs.lookup(&sni) {
            Some(key) => Some(key),
            // A name no site holds: on-demand TLS decides (and may wait for a certificate),
            // outside the handshake deadline, which starts again once it has one.
            None => match certs.on_demand() {
                Some(on_demand) => {
                    let name = sni.strip_suffix('.').unwrap_or(&sni).to_ascii_lowercase();
                    let key = on_demand.certificate_for(&name, client).await;
                    deadline = Instant::now() + limits.tls_handshake_timeout;
                    key
                }
                None => None,
            },
        };
        let Some(key) = key else {
            debug!(sni, "unknown SNI");
            reject(start.io, Alert::UnrecognizedName, deadline).await;
            return (Handshake::Done, Outcome::NoCertificate);
        };
        match timeout_at(deadline, start.into_stream(Arc::clone(&self.main))).await {
            Ok(Ok(stream)) => (
                Handshake::Serve {
                    stream: Box::new(stream),
                    sni,
                    key,
                },
                Outcome::Ok,
            ),
            Ok(Err(error)) => {
                debug!(sni, %error, "TLS handshake failed");
                (Handshake::Done, Outcome::Failed)
            }
            Err(_) => {
                debug!(sni, "TLS handshake timed out");
                (Handshake::Done, Outcome::Failed)
            }
        }
    }
}

fn offers_acme_alpn(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
}

/// Sends a fatal alert in a plaintext record (no keys exist yet) and closes the connection.
async fn reject(mut io: TcpStream, alert: Alert, deadline: Instant) {
    // ContentType alert (21), legacy record version TLS 1.2, length 2, level fatal (2).
    let record = [21, 3, 3, 0, 2, 2, alert as u8];
    let _ = timeout_at(deadline, async {
        io.write_all(&record).await?;
        io.shutdown().await
    })
    .await;
}

/// Always presents one certificate.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
