//! DNS-01 end to end with real components: Pebble validates through BIND 9 as its recursive
//! resolver; BIND holds the customer's zone (`shop.test`, with `_acme-challenge` CNAMEd into the
//! delegated zone) and forwards the delegated zone (`acme.ops.test`) to two fleetgate DNS
//! listeners on their own 127.0.0.x, which answer from the shared store the issuer writes to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use certs::acme::{AcmeIssuer, AcmeSettings};
use certs::{ChallengeKind, Challenges, Dns01, DomainName, Error, KeyType};
use dns::{DnsServer, Records, Zone};
use store::{DirStore, Storage};
use testkit::{Bind, Pebble};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const ZONE: &str = "acme.ops.test";

/// One node's DNS listener; stopped by [`Listener::stop`] or when the test ends.
struct Listener {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<dns::Result<()>>,
}

impl Listener {
    async fn start(records: &Records) -> Listener {
        let zone = Zone::new(ZONE, &["ns1.ops.test".into(), "ns2.ops.test".into()]).unwrap();
        let server = DnsServer::bind(
            SocketAddr::from((testkit::loopback_ip(), 0)),
            zone,
            records.clone(),
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Listener { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn names(list: &[&str]) -> Vec<DomainName> {
    list.iter().map(|n| DomainName::parse(n).unwrap()).collect()
}

fn settings(pebble: &Pebble, challenges: &[ChallengeKind]) -> AcmeSettings {
    AcmeSettings {
        directory: pebble.directory_url(),
        email: None,
        ca_root: Some(pebble.listener_ca_path().to_path_buf()),
        eab: None,
        challenges: challenges.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_plain_certificates_through_a_delegated_zone_even_with_one_listener_down() {
    let store_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(store_dir.path()).unwrap());
    let records = Records::new(Arc::clone(&store));
    let shop = records.delegate("shop.test").await.unwrap();
    let www = records.delegate("www.shop.test").await.unwrap();

    let first = Listener::start(&records).await;
    let second = Listener::start(&records).await;
    let bind = Bind::builder()
        .primary_zone(
            "shop.test",
            &format!(
                "@ IN A 127.0.0.1\n_acme-challenge IN CNAME {}.\n_acme-challenge.www IN CNAME {}.\n",
                shop.target(ZONE),
                www.target(ZONE)
            ),
        )
        .forward_zone(ZONE, &[first.addr, second.addr])
        .start()
        .await
        .unwrap();
    let pebble = Pebble::builder()
        .dns_server(bind.addr())
        .start()
        .await
        .unwrap();

    let solver = Arc::new(Dns01::delegated(records.clone(), ZONE));
    let issuer = AcmeIssuer::new(
        settings(&pebble, &[ChallengeKind::Dns01]),
        Arc::clone(&store),
        Arc::new(Challenges::new(Arc::clone(&store))),
        "node-a".to_string(),
    )
    .with_dns01(Arc::clone(&solver));
    assert!(issuer.solves_dns01());

    // Both listeners up: a wildcard and its base name in one order (two TXT values on one name).
    let started = std::time::Instant::now();
    let wildcard = issuer
        .issue(
            &names(&["*.shop.test", "shop.test"]),
            KeyType::EcdsaP256,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\nnamed log:\n{}", bind.log_contents()));
    eprintln!(
        "issued *.shop.test + shop.test in {:?} (both listeners up)",
        started.elapsed()
    );
    let mut issued = wildcard.meta.names.clone();
    issued.sort();
    assert_eq!(issued, ["*.shop.test", "shop.test"]);
    // The values are gone after the order.
    assert!(records.txt(&shop.target(ZONE)).await.unwrap().is_empty());

    // One listener down before the order: the resolver uses the other.
    first.stop().await;
    let started = std::time::Instant::now();
    let plain = issuer
        .issue(&names(&["www.shop.test"]), KeyType::EcdsaP256, None)
        .await
        .unwrap_or_else(|e| panic!("{e}\nnamed log:\n{}", bind.log_contents()));
    eprintln!(
        "issued www.shop.test in {:?} (one listener down)",
        started.elapsed()
    );
    assert_eq!(plain.meta.names, ["www.shop.test"]);
    let started = std::time::Instant::now();
    let again = issuer
        .issue(
            &names(&["*.shop.test", "shop.test"]),
            KeyType::EcdsaP256,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\nnamed log:\n{}", bind.log_contents()));
    eprintln!(
        "issued *.shop.test + shop.test in {:?} (one listener down)",
        started.elapsed()
    );
    assert_ne!(again.meta.serial, wildcard.meta.serial);
    assert!(records.txt(&www.target(ZONE)).await.unwrap().is_empty());
    assert!(records.txt(&shop.target(ZONE)).await.unwrap().is_empty());
    second.stop().await;
}

#[tokio::test]
async fn wildcards_need_dns01_and_dns01_needs_a_zone() {
    let store_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(store_dir.path()).unwrap());
    // Nothing is asked of the CA: the checks come first.
    let settings = |challenges: &[ChallengeKind]| AcmeSettings {
        directory: "https://127.0.0.1:9/dir".to_string(),
        email: None,
        ca_root: None,
        eab: None,
        challenges: challenges.to_vec(),
    };
    let challenges = Arc::new(Challenges::new(Arc::clone(&store)));
    let http_only = AcmeIssuer::new(
        settings(&[ChallengeKind::Http01]),
        Arc::clone(&store),
        Arc::clone(&challenges),
        "n".into(),
    );
    let err = http_only
        .issue(&names(&["*.shop.test"]), KeyType::EcdsaP256, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("dns-01")),
        "{err}"
    );
    let no_zone = AcmeIssuer::new(
        settings(&[ChallengeKind::Dns01]),
        Arc::clone(&store),
        challenges,
        "n".into(),
    );
    let err = no_zone
        .issue(&names(&["shop.test"]), KeyType::EcdsaP256, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("[dns]")),
        "{err}"
    );
}

/// A TSIG secret for tests (base64 of 32 bytes), and another the primary does not know.
const TSIG_SECRET: &str = "ZmxlZXRnYXRlLXRzaWctc2VjcmV0LWZvci10ZXN0cyE=";
const WRONG_SECRET: &str = "bm90LXRoZS1zZWNyZXQtdGhlLXByaW1hcnkta25vd3M=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_with_tsig_against_bind_as_primary() {
    let bind = Bind::builder()
        .updatable_zone(
            "upd.test",
            "@ IN A 127.0.0.1\n",
            "fleetgate-test",
            "hmac-sha256",
            TSIG_SECRET,
        )
        .start()
        .await
        .unwrap();
    let key = dns::TsigKey::new("fleetgate-test", "hmac-sha256", TSIG_SECRET).unwrap();
    let primary = dns::Rfc2136::new(bind.addr(), "upd.test", Some(key)).unwrap();

    // A wrong key is refused and changes nothing.
    let wrong = dns::Rfc2136::new(
        bind.addr(),
        "upd.test",
        Some(dns::TsigKey::new("fleetgate-test", "hmac-sha256", WRONG_SECRET).unwrap()),
    )
    .unwrap();
    let err = wrong
        .add_txt("_acme-challenge.upd.test", "forged", 60)
        .await
        .unwrap_err();
    assert!(matches!(err, dns::Error::Rejected { .. }), "{err}");
    assert!(
        primary
            .txt("_acme-challenge.upd.test")
            .await
            .unwrap()
            .is_empty()
    );
    // Names outside the zone are refused before anything is sent.
    assert!(
        primary
            .add_txt("_acme-challenge.other.test", "x", 60)
            .await
            .is_err()
    );

    let pebble = Pebble::builder()
        .dns_server(bind.addr())
        .start()
        .await
        .unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(store_dir.path()).unwrap());
    let solver = Arc::new(Dns01::default().with_rfc2136(primary.clone()));
    let issuer = AcmeIssuer::new(
        settings(&pebble, &[ChallengeKind::Dns01]),
        Arc::clone(&store),
        Arc::new(Challenges::new(Arc::clone(&store))),
        "node-a".to_string(),
    )
    .with_dns01(solver);
    let bundle = issuer
        .issue(
            &names(&["*.upd.test", "upd.test"]),
            KeyType::EcdsaP256,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\nnamed log:\n{}", bind.log_contents()));
    let mut issued = bundle.meta.names.clone();
    issued.sort();
    assert_eq!(issued, ["*.upd.test", "upd.test"]);
    // Both values were removed from the primary after the order.
    assert!(
        primary
            .txt("_acme-challenge.upd.test")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        bind.log_contents()
            .contains("updating zone 'upd.test/IN': deleting an RR"),
        "{}",
        bind.log_contents()
    );
}

/// A node that hangs instead of dying: its address takes queries and never answers (UDP and
/// TCP bound, nothing read). The resolver waits for it, then asks the other listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_listener_is_waited_out() {
    let store_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(store_dir.path()).unwrap());
    let records = Records::new(Arc::clone(&store));
    let shop = records.delegate("shop.test").await.unwrap();
    let hung_ip = testkit::loopback_ip();
    let hung_udp = tokio::net::UdpSocket::bind((hung_ip, 0)).await.unwrap();
    let hung = hung_udp.local_addr().unwrap();
    let _hung_tcp = tokio::net::TcpListener::bind(hung).await.unwrap();
    let alive = Listener::start(&records).await;
    let bind = Bind::builder()
        .primary_zone(
            "shop.test",
            &format!("_acme-challenge IN CNAME {}.\n", shop.target(ZONE)),
        )
        .forward_zone(ZONE, &[hung, alive.addr])
        .start()
        .await
        .unwrap();
    let pebble = Pebble::builder()
        .dns_server(bind.addr())
        .start()
        .await
        .unwrap();
    let issuer = AcmeIssuer::new(
        settings(&pebble, &[ChallengeKind::Dns01]),
        Arc::clone(&store),
        Arc::new(Challenges::new(Arc::clone(&store))),
        "node-a".to_string(),
    )
    .with_dns01(Arc::new(Dns01::delegated(records.clone(), ZONE)));
    let started = std::time::Instant::now();
    issuer
        .issue(
            &names(&["*.shop.test", "shop.test"]),
            KeyType::EcdsaP256,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\nnamed log:\n{}", bind.log_contents()));
    eprintln!(
        "issued *.shop.test + shop.test in {:?} (one listener hung)",
        started.elapsed()
    );
    alive.stop().await;
}

/// Answers HTTP-01 from the store, as any node's edge would (just enough HTTP/1.1 for Pebble).
async fn http01_responder(listener: tokio::net::TcpListener, challenges: Arc<Challenges>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    while let Ok((mut stream, _)) = listener.accept().await {
        let challenges = Arc::clone(&challenges);
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let path = text.split_whitespace().nth(1).unwrap_or("");
            let host = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Host: ")
                        .or_else(|| l.strip_prefix("host: "))
                })
                .unwrap_or("")
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            let token = path
                .strip_prefix("/.well-known/acme-challenge/")
                .unwrap_or("");
            let answer = match challenges.http01(&host, token).await {
                Some(ka) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ka}",
                    ka.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string(),
            };
            let _ = stream.write_all(answer.as_bytes()).await;
        });
    }
}

/// `challenges = ["dns-01", "http-01"]`: a name without a delegation is validated by HTTP-01
/// instead; a wildcard without one fails before the CA is asked to validate, retryably, saying
/// how to delegate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelegated_names_fall_back_to_http01_and_wildcards_say_what_to_do() {
    let store_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(DirStore::open(store_dir.path()).unwrap());
    let records = Records::new(Arc::clone(&store));
    let listener = Listener::start(&records).await;
    let bind = Bind::builder()
        .primary_zone("plain.test", "@ IN A 127.0.0.1\n")
        .forward_zone(ZONE, &[listener.addr])
        .start()
        .await
        .unwrap();
    let http = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let pebble = Pebble::builder()
        .dns_server(bind.addr())
        .http_port(http.local_addr().unwrap().port())
        .start()
        .await
        .unwrap();
    let challenges = Arc::new(Challenges::new(Arc::clone(&store)));
    tokio::spawn(http01_responder(
        http,
        Arc::new(Challenges::new(Arc::clone(&store))),
    ));
    let issuer = AcmeIssuer::new(
        settings(&pebble, &[ChallengeKind::Dns01, ChallengeKind::Http01]),
        Arc::clone(&store),
        challenges,
        "node-a".to_string(),
    )
    .with_dns01(Arc::new(Dns01::delegated(records.clone(), ZONE)));

    let plain = issuer
        .issue(&names(&["plain.test"]), KeyType::EcdsaP256, None)
        .await
        .unwrap_or_else(|e| panic!("{e}\nnamed log:\n{}", bind.log_contents()));
    assert_eq!(plain.meta.names, ["plain.test"]);

    let err = issuer
        .issue(&names(&["*.plain.test"]), KeyType::EcdsaP256, None)
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Dns { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(
        err.to_string()
            .contains("run `fleetgate dns delegate plain.test`"),
        "{err}"
    );
    listener.stop().await;
}
