//! `AcmeIssuer` against a real Pebble (started by testkit): HTTP-01 and TLS-ALPN-01 issuance, the
//! one-account-per-store rule, EAB, and how a failed validation is reported.
//!
//! The challenge responders here answer from their own `Challenges` over the same store as the
//! issuer, like a peer node would: an order only succeeds if the response reached the store before
//! the CA was told to look.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use certs::acme::{AcmeIssuer, AcmeSettings, Eab};
use certs::{
    CertBundle, ChallengeKind, Challenges, DomainName, Error, KeyType, SourceKind, layout,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{ServerName, UnixTime};
use store::{DirStore, Storage, StorageKey};
use tempfile::TempDir;
use testkit::Pebble;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

const ACME_TLS_1: &[u8] = b"acme-tls/1";
const EAB_KID: &str = "fleetgate-test-kid";
const EAB_KEY: &str = "ZmxlZXRnYXRlLWVhYi1obWFjLWtleS1mb3ItcGViYmxlLXRlc3RzIQ";

/// A Pebble, a dir store, and HTTP-01 / TLS-ALPN-01 responders where Pebble's VA looks.
struct Env {
    pebble: Pebble,
    store: Arc<dyn Storage>,
    _store_dir: TempDir,
}

impl Env {
    async fn start() -> anyhow::Result<Env> {
        Self::start_with(Pebble::builder()).await
    }

    async fn start_with(builder: testkit::PebbleBuilder) -> anyhow::Result<Env> {
        let pebble = builder.resolve_to(testkit::loopback_ip()).start().await?;
        let store_dir = tempfile::tempdir()?;
        let store: Arc<dyn Storage> = Arc::new(DirStore::open(store_dir.path())?);
        // The responders' own view of the challenges: they only know what is in the store.
        let responder = Arc::new(Challenges::new(Arc::clone(&store)));
        let http = TcpListener::bind(pebble.http01_addr()).await?;
        let tls = TcpListener::bind(pebble.tlsalpn01_addr()).await?;
        tokio::spawn(http01_responder(http, Arc::clone(&responder)));
        tokio::spawn(tls_alpn01_responder(tls, responder));
        Ok(Env {
            pebble,
            store,
            _store_dir: store_dir,
        })
    }

    fn settings(&self, challenges: &[ChallengeKind]) -> AcmeSettings {
        AcmeSettings {
            directory: self.pebble.directory_url(),
            email: Some("ops@fleetgate.test".to_string()),
            ca_root: Some(self.pebble.listener_ca_path().to_path_buf()),
            eab: None,
            challenges: challenges.to_vec(),
        }
    }

    fn issuer(&self, settings: AcmeSettings, node: &str) -> AcmeIssuer {
        let challenges = Arc::new(Challenges::new(Arc::clone(&self.store)));
        AcmeIssuer::new(
            settings,
            Arc::clone(&self.store),
            challenges,
            node.to_string(),
        )
    }

    /// Challenge responses left in the store.
    async fn leftover_challenges(&self) -> anyhow::Result<Vec<StorageKey>> {
        Ok(self.store.list(&StorageKey::new("challenges")?).await?)
    }
}

fn names(list: &[&str]) -> Vec<DomainName> {
    list.iter().map(|n| DomainName::parse(n).unwrap()).collect()
}

/// The chain must lead to Pebble's issuing root for every name, and the leaf name exactly those.
async fn assert_valid_for(
    pebble: &Pebble,
    bundle: &CertBundle,
    domains: &[&str],
) -> anyhow::Result<()> {
    let root = pebble.issuing_root_pem().await?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in testkit::pem_certs(&root)? {
        roots.add(cert)?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()?;
    let chain = testkit::pem_certs(&bundle.chain_pem)?;
    ensure!(
        chain.len() >= 2,
        "expected leaf + intermediate, got {} certificates",
        chain.len()
    );
    for name in domains {
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_string())?,
                &[],
                UnixTime::now(),
            )
            .with_context(|| format!("chain does not verify for {name}"))?;
    }
    let mut got = testkit::cert_info(&chain[0])?.dns_names;
    got.sort();
    let mut want: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    want.sort();
    ensure!(got == want, "leaf names {got:?}, wanted {want:?}");
    let mut meta_names = bundle.meta.names.clone();
    meta_names.sort();
    ensure!(meta_names == want, "meta names {meta_names:?}");
    ensure!(bundle.meta.source == SourceKind::Acme);
    ensure!(bundle.meta.directory.as_deref() == Some(pebble.directory_url().as_str()));
    ensure!(
        bundle
            .meta
            .order_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://")),
        "order url {:?}",
        bundle.meta.order_url
    );
    // The key in the bundle belongs to the leaf (from_pem checks; this loads it as a server would).
    bundle.certified_key()?;
    Ok(())
}

#[tokio::test]
async fn http01_issues_for_several_names_and_peers_reuse_the_account() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let settings = env.settings(&[ChallengeKind::Http01]);
    let first = env.issuer(settings.clone(), "node-a");
    assert_eq!(first.ca_id(), layout::ca_id(&env.pebble.directory_url()));

    let domains = ["www.shop.test", "shop.test", "old-brand.test"];
    let bundle = first
        .issue(&names(&domains), KeyType::EcdsaP256, None)
        .await?;
    assert_valid_for(&env.pebble, &bundle, &domains).await?;
    assert!(bundle.key_pem.contains("PRIVATE KEY"));
    assert_eq!(env.leftover_challenges().await?, Vec::<StorageKey>::new());

    // The account is in the store, and it is the one this issuer uses.
    let account_key = layout::account(first.ca_id());
    let stored = env
        .store
        .get(&account_key)
        .await?
        .context("no account in the store")?;
    let stored_json: serde_json::Value = serde_json::from_slice(&stored)?;
    let account_id = first.account_id().await?;
    assert_eq!(stored_json["id"].as_str(), Some(account_id.as_str()));

    // A second node on the same store uses that account: no new key, no new registration.
    let second = env.issuer(settings, "node-b");
    assert_eq!(second.account_id().await?, account_id);
    let renewed = second
        .issue(&names(&domains[..1]), KeyType::EcdsaP384, Some(&bundle))
        .await?;
    assert_valid_for(&env.pebble, &renewed, &domains[..1]).await?;
    assert_ne!(renewed.meta.serial, bundle.meta.serial);
    assert_eq!(
        env.store.get(&account_key).await?.as_deref(),
        Some(stored.as_slice())
    );

    // Pebble 2.4 has no renewalInfo: no window, and `replaces` above was silently left out.
    assert_eq!(second.renewal_window(&renewed).await?, None);
    Ok(())
}

#[tokio::test]
async fn tls_alpn01_issues() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let issuer = env.issuer(env.settings(&[ChallengeKind::TlsAlpn01]), "node-a");
    let domains = ["secure.shop.test"];
    let bundle = issuer
        .issue(&names(&domains), KeyType::Rsa2048, None)
        .await?;
    assert_valid_for(&env.pebble, &bundle, &domains).await?;
    assert_eq!(env.leftover_challenges().await?, Vec::<StorageKey>::new());
    Ok(())
}

#[tokio::test]
async fn concurrent_first_use_creates_one_account() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let issuers: Vec<Arc<AcmeIssuer>> = (0..4)
        .map(|i| Arc::new(env.issuer(env.settings(&[ChallengeKind::Http01]), &format!("node-{i}"))))
        .collect();
    let tasks: Vec<_> = issuers
        .iter()
        .map(|issuer| {
            let issuer = Arc::clone(issuer);
            tokio::spawn(async move { issuer.account_id().await })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await??);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "several accounts: {ids:?}");
    let stored = env
        .store
        .get(&layout::account(issuers[0].ca_id()))
        .await?
        .context("no account stored")?;
    let stored: serde_json::Value = serde_json::from_slice(&stored)?;
    assert_eq!(stored["id"].as_str(), Some(ids[0].as_str()));
    Ok(())
}

#[tokio::test]
async fn an_account_the_ca_lost_is_replaced() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let settings = env.settings(&[ChallengeKind::Http01]);
    let first = env.issuer(settings.clone(), "node-a");
    let key = layout::account(first.ca_id());
    first.account_id().await?;
    // Keep the key, but point at an account URL the CA never issued (as after a CA reset).
    let mut stored: serde_json::Value =
        serde_json::from_slice(&env.store.get(&key).await?.context("no account")?)?;
    let gone = format!("{}-gone", stored["id"].as_str().context("no id")?);
    stored["id"] = gone.clone().into();
    env.store.put(&key, &serde_json::to_vec(&stored)?).await?;

    let second = env.issuer(settings, "node-b");
    assert_eq!(second.account_id().await?, gone);
    let bundle = second
        .issue(&names(&["again.shop.test"]), KeyType::EcdsaP256, None)
        .await?;
    assert_valid_for(&env.pebble, &bundle, &["again.shop.test"]).await?;
    let replaced: serde_json::Value =
        serde_json::from_slice(&env.store.get(&key).await?.context("no account")?)?;
    let replaced = replaced["id"].as_str().context("no id")?.to_string();
    assert_ne!(replaced, gone);
    assert_eq!(second.account_id().await?, replaced);
    Ok(())
}

#[tokio::test]
async fn validation_failure_names_the_domain_and_the_problem() -> anyhow::Result<()> {
    let env = Env::start().await?;
    // Nothing listens on this address: the VA's connection is refused.
    let nowhere = unused_loopback(env.pebble.resolve_to());
    env.pebble.add_a("down.shop.test", nowhere).await?;
    let issuer = env.issuer(env.settings(&[ChallengeKind::Http01]), "node-a");

    let err = issuer
        .issue(
            &names(&["up.shop.test", "down.shop.test"]),
            KeyType::EcdsaP256,
            None,
        )
        .await
        .expect_err("validation must fail");
    let Error::Validation { domain, problem } = &err else {
        bail!("expected Error::Validation, got {err:?}");
    };
    assert_eq!(domain, "down.shop.test");
    assert_eq!(
        problem.r#type.as_deref(),
        Some("urn:ietf:params:acme:error:connection"),
        "{problem:?}"
    );
    let detail = problem.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&nowhere.to_string()),
        "detail does not name the address: {detail}"
    );
    assert!(err.is_retryable());
    // Failed or not, the order's challenge responses are withdrawn.
    assert_eq!(env.leftover_challenges().await?, Vec::<StorageKey>::new());
    Ok(())
}

#[tokio::test]
async fn external_account_binding() -> anyhow::Result<()> {
    let env = Env::start_with(Pebble::builder().external_account(EAB_KID, EAB_KEY)).await?;

    let without = env.issuer(env.settings(&[ChallengeKind::Http01]), "node-a");
    match without.account_id().await {
        Err(Error::Acme { problem }) => assert_eq!(
            problem.r#type.as_deref(),
            Some("urn:ietf:params:acme:error:externalAccountRequired"),
            "{problem:?}"
        ),
        other => bail!("expected externalAccountRequired, got {other:?}"),
    }
    assert_eq!(
        env.store.get(&layout::account(without.ca_id())).await?,
        None
    );

    let mut settings = env.settings(&[ChallengeKind::Http01]);
    settings.eab = Some(Eab {
        kid: EAB_KID.to_string(),
        hmac_key: EAB_KEY.to_string(),
    });
    let with = env.issuer(settings, "node-a");
    let bundle = with
        .issue(&names(&["eab.shop.test"]), KeyType::EcdsaP256, None)
        .await?;
    assert_valid_for(&env.pebble, &bundle, &["eab.shop.test"]).await?;
    Ok(())
}

#[tokio::test]
async fn bad_requests_fail_before_reaching_the_ca() -> anyhow::Result<()> {
    // No CA at all: these must be refused locally.
    let store_dir = tempfile::tempdir()?;
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(store_dir.path())?);
    let settings = AcmeSettings {
        directory: "https://127.0.0.1:9/dir".to_string(),
        email: None,
        ca_root: None,
        eab: None,
        challenges: vec![ChallengeKind::Http01],
    };
    let issuer = AcmeIssuer::new(
        settings,
        Arc::clone(&store),
        Arc::new(Challenges::new(store)),
        "n".into(),
    );
    for domains in [vec![], names(&["*.shop.test"])] {
        let err = issuer
            .issue(&domains, KeyType::EcdsaP256, None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
    }
    let many: Vec<DomainName> = (0..101)
        .map(|i| DomainName::parse(&format!("n{i}.shop.test")).unwrap())
        .collect();
    let err = issuer
        .issue(&many, KeyType::EcdsaP256, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    // An unreachable CA is a network error, which the scheduler retries.
    let err = issuer
        .issue(&many[..1], KeyType::EcdsaP256, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err:?}");
    assert!(err.is_retryable());
    Ok(())
}

/// A loopback address other than `taken` with nothing listening on Pebble's ports.
fn unused_loopback(taken: Ipv4Addr) -> Ipv4Addr {
    loop {
        let ip = testkit::loopback_ip();
        if ip != taken {
            return ip;
        }
    }
}

/// Answers `GET /.well-known/acme-challenge/<token>` from `challenges`, one request per connection.
async fn http01_responder(listener: TcpListener, challenges: Arc<Challenges>) {
    while let Ok((tcp, _)) = listener.accept().await {
        tokio::spawn(answer_http01(tcp, Arc::clone(&challenges)));
    }
}

async fn answer_http01(mut tcp: TcpStream, challenges: Arc<Challenges>) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut chunk).await?;
        ensure!(n > 0 && head.len() < 16 * 1024, "incomplete request");
        head.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default()
        .to_string();
    let host = lines
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("host").then(|| v.trim())
        })
        .unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default().to_string();
    let answer = match path.strip_prefix("/.well-known/acme-challenge/") {
        Some(token) => challenges.http01(&host, token).await,
        None => None,
    };
    let response = match answer {
        Some(key_auth) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{key_auth}",
            key_auth.len()
        ),
        None => {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        }
    };
    tcp.write_all(response.as_bytes()).await?;
    tcp.shutdown().await?;
    Ok(())
}

/// Completes `acme-tls/1` handshakes with the challenge certificate for the SNI name.
async fn tls_alpn01_responder(listener: TcpListener, challenges: Arc<Challenges>) {
    while let Ok((tcp, _)) = listener.accept().await {
        tokio::spawn(answer_tls_alpn01(tcp, Arc::clone(&challenges)));
    }
}

async fn answer_tls_alpn01(tcp: TcpStream, challenges: Arc<Challenges>) -> anyhow::Result<()> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
    let hello = start.client_hello();
    let sni = hello.server_name().context("no SNI")?.to_string();
    let offers_acme = hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_1));
    ensure!(offers_acme, "not an acme-tls/1 handshake");
    let cert = challenges
        .tls_alpn01(&sni)
        .await
        .context("no challenge for this name")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(Fixed(cert)));
    config.alpn_protocols = vec![ACME_TLS_1.to_vec()];
    let mut tls = start.into_stream(Arc::new(config)).await?;
    tls.shutdown().await?;
    Ok(())
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
