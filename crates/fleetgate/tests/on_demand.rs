//! On-demand TLS across a fleet: three nodes behind a round-robin HAProxy (PROXY protocol),
//! Pebble validating through it, one shared directory store, and an `ask` endpoint (a small
//! HTTP server in the test) that allows names starting with `cust`.
//!
//! - 30 allowed names, each handshake sent through the balancer: 30 certificates, 30 orders at
//!   Pebble, every node serving all 30; plain HTTP for an allowed name redirects to HTTPS.
//! - a flood of 5,000 random unknown names through the balancer: `ask` sees at most the nodes'
//!   configured rate, Pebble no order, the store no write (the directory store's journal lists
//!   every write), and the known names keep being served (failures counted: zero).
//! - `ask` slow or down: refusals within the timeout, no orders.
//! - a dead name (its validation fails) is paused after its failed order and does not reach
//!   the CA again until the pause ends.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::cluster::{Backend, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const NAMES: usize = 30;
const FLOOD: usize = 5000;
const ASKS_PER_SECOND: u64 = 20;

const ASK_OK: u8 = 0;
const ASK_SLOW: u8 = 1;
const ASK_FAILING: u8 = 2;

/// The product's `ask` endpoint: 200 for `domain=cust...` and `domain=dead...`, 403 otherwise;
/// slow (5 s) or failing (500) on demand. Counts calls.
struct AskServer {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    mode: Arc<AtomicU8>,
}

impl AskServer {
    async fn start() -> Result<AskServer> {
        let listener = TcpListener::bind((testkit::loopback_ip(), 0)).await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(AtomicU64::new(0));
        let mode = Arc::new(AtomicU8::new(ASK_OK));
        let (c, m) = (calls.clone(), mode.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (calls, mode) = (c.clone(), m.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    calls.fetch_add(1, Ordering::SeqCst);
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let allowed = line.contains("domain=cust") || line.contains("domain=dead");
                    let status = match mode.load(Ordering::SeqCst) {
                        ASK_SLOW => {
                            // The endpoint's own slowness, not a test synchronisation.
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            "200 OK"
                        }
                        ASK_FAILING => "500 Internal Server Error",
                        _ if allowed => "200 OK",
                        _ => "403 Forbidden",
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = tcp.write_all(reply.as_bytes()).await;
                });
            }
        });
        Ok(AskServer { addr, calls, mode })
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn customer(i: usize) -> String {
    format!("cust{i}.cluster.test")
}

/// Writes in the shared directory's journal (`changes.log`: one line per write) other than
/// node heartbeats, from line `from` on.
fn journal_writes(cluster: &Cluster, from: usize) -> Vec<String> {
    let text =
        std::fs::read_to_string(cluster.nodes[0].data.join("changes.log")).unwrap_or_default();
    text.lines()
        .skip(from)
        .filter(|l| {
            !l.split_whitespace()
                .nth(2)
                .unwrap_or("")
                .starts_with("nodes/")
        })
        .map(str::to_owned)
        .collect()
}

fn journal_len(cluster: &Cluster) -> usize {
    std::fs::read_to_string(cluster.nodes[0].data.join("changes.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// `fleetgate sites list` with node 0's config.
fn sites_list(cluster: &Cluster) -> String {
    let out = common::run_cli(&["sites", "list"], &cluster.nodes[0].config_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Orders Pebble received: its `/order-plz` requests (each creates an order).
fn pebble_orders(cluster: &Cluster) -> usize {
    cluster
        .pebble
        .pebble_log()
        .lines()
        .filter(|l| l.contains("POST /order-plz"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn on_demand_names_across_three_nodes() -> Result<()> {
    let ask = AskServer::start().await?;
    let extra = format!(
        r#"
[[site]]
domains = ["app.cluster.test"]
respond = {{ body = "customer app" }}
tls = "internal"

[on_demand]
ask = "http://{ask}/check"
site = "app.cluster.test"
wait = "10s"
ask_timeout = "1s"
ask_concurrency = 8
asks_per_second = {ASKS_PER_SECOND}
names_per_minute = 100
names_per_client_per_minute = 100
names_per_domain_per_hour = 100
failures_before_pause = 1
fail_pause = "20s"
remove_after = "1h"
"#,
        ask = ask.addr
    );
    let cluster = Cluster::builder()
        .backend(Backend::Dir)
        .sites(0, 2)
        .proxy_protocol()
        .config_extra(&extra)
        .start()
        .await?;
    let cluster = &cluster;
    let lb_https = cluster.pebble.tlsalpn01_addr();
    let lb_http = cluster.pebble.http01_addr();
    let root = &cluster.root;

    // 1. 30 allowed names, one handshake each through the balancer, all at once; a handshake
    // that waited longer than `wait` (30 orders at once on 2 cores) is retried.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..NAMES {
        let root = root.clone();
        tasks.push(tokio::spawn(async move {
            let name = customer(i);
            let mut attempts = 0;
            testkit::wait_for_ok(&format!("{name} served"), Duration::from_secs(180), || {
                attempts += 1;
                let (name, root) = (name.clone(), root.clone());
                async move { testkit::tls_handshake(lb_https, &name, &root, &[b"http/1.1"]).await }
            })
            .await?;
            anyhow::Ok(attempts)
        }));
    }
    let mut first_try = 0;
    for task in tasks {
        let attempts = task.await?.with_context(|| cluster.logs())?;
        if attempts == 1 {
            first_try += 1;
        }
    }
    let all_served_after = started.elapsed();
    // Every node serves all 30 (asked directly, not through the balancer).
    testkit::wait_for_ok(
        "every node serves all 30",
        Duration::from_secs(30),
        || async move {
            for node in &cluster.nodes {
                for i in 0..NAMES {
                    common::served_serial(node.https, &customer(i), root)
                        .await
                        .with_context(|| format!("{} on {}", customer(i), node.ip))?;
                }
            }
            Ok(())
        },
    )
    .await
    .with_context(|| cluster.logs())?;
    let issued = cluster.ca_issued_serials();
    let orders = pebble_orders(cluster);
    let asks_phase1 = ask.calls();
    eprintln!(
        "phase 1: {NAMES} names served through the balancer after {all_served_after:?} ({first_try} on the first handshake); certificates issued {}, orders seen by Pebble {orders}, ask calls {asks_phase1}",
        issued.len()
    );
    if issued.len() != NAMES {
        let pebble: Vec<String> = cluster
            .pebble
            .pebble_log()
            .lines()
            .filter(|l| l.contains("Issued") || l.contains("order"))
            .map(str::to_owned)
            .collect();
        panic!(
            "{} certificates for {NAMES} names\n{}\n{}",
            issued.len(),
            pebble.join("\n"),
            cluster.log_lines(&["certificate"]).join("\n")
        );
    }
    // `fleetgate sites list` shows them as on-demand sites.
    let list = sites_list(cluster);
    let on_demand = list.lines().filter(|l| l.contains(" on-demand ")).count();
    assert_eq!(on_demand, NAMES, "{list}");
    // Plain HTTP for an allowed name: the site exists, so HTTP redirects to HTTPS.
    let r = testkit::http_get(lb_http, &customer(0), "/x").await?;
    assert!(r.status.is_redirection(), "{}", r.status);
    let r = testkit::https_get(lb_https, &customer(1), root, "/").await?;
    assert_eq!(r.text(), "customer app");

    // 2. A flood of random unknown names through the balancer, known names served meanwhile.
    let journal_before = journal_len(cluster);
    let asks_before = ask.calls();
    let orders_before = pebble_orders(cluster);
    let started = Instant::now();
    let refused = Arc::new(AtomicU64::new(0));
    let flood = {
        let refused = refused.clone();
        let root = root.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            futures_util::stream::iter(0..FLOOD)
                .map(|i| {
                    let root = root.clone();
                    let refused = refused.clone();
                    async move {
                        let name = format!("r{:08x}{i}.flood{}.test", fastrand::u32(..), i % 97);
                        if testkit::tls_handshake(lb_https, &name, &root, &[b"http/1.1"])
                            .await
                            .is_err()
                        {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<()>>()
                .await;
        })
    };
    let mut known_ok = 0;
    let mut known_failed = Vec::new();
    let mut k = 0;
    while !flood.is_finished() {
        let name = customer(k % NAMES);
        k += 1;
        match testkit::tls_handshake(lb_https, &name, root, &[b"http/1.1"]).await {
            Ok(_) => known_ok += 1,
            Err(e) => known_failed.push(format!("{name}: {e:#}")),
        }
    }
    flood.await?;
    let flood_took = started.elapsed();
    let flood_asks = ask.calls() - asks_before;
    let writes = journal_writes(cluster, journal_before);
    let flood_orders = pebble_orders(cluster) - orders_before;
    eprintln!(
        "phase 2: {FLOOD} unknown names in {flood_took:?}: refused {}, ask calls {flood_asks} (limit {} per node per second, 3 nodes), Pebble orders {flood_orders}, store writes other than heartbeats {}, known-name handshakes meanwhile {known_ok} ok / {} failed",
        refused.load(Ordering::Relaxed),
        ASKS_PER_SECOND,
        writes.len(),
        known_failed.len()
    );
    assert_eq!(refused.load(Ordering::Relaxed), FLOOD as u64);
    let allowed_asks = 3 * ASKS_PER_SECOND * (flood_took.as_secs() + 2);
    assert!(
        flood_asks <= allowed_asks,
        "{flood_asks} ask calls > {allowed_asks}"
    );
    assert_eq!(flood_orders, 0);
    assert_eq!(cluster.ca_issued_serials().len(), NAMES);
    // Certificate status records of the 30 names may be rewritten by a resync; nothing may
    // name a flood domain or an on-demand limit.
    let leaked: Vec<&String> = writes
        .iter()
        .filter(|l| l.contains("flood") || l.contains("on-demand") || l.contains("sites/"))
        .collect();
    assert!(leaked.is_empty(), "writes for the flood: {leaked:?}");
    assert!(known_failed.is_empty(), "{known_failed:?}");
    assert!(known_ok > 0);

    // 3. `ask` slow, then failing: refused within the timeout (1 s), nothing ordered.
    for (mode, what) in [(ASK_SLOW, "slow"), (ASK_FAILING, "failing")] {
        ask.mode.store(mode, Ordering::SeqCst);
        let orders_before = pebble_orders(cluster);
        let mut slowest = Duration::ZERO;
        for i in 0..6 {
            let name = format!("cust-{what}{i}.cluster.test");
            // The flood may have spent the nodes' ask budget (asks_per_second): a handshake
            // refused without asking is tried again until the endpoint was asked.
            let asked_before = ask.calls();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let t = Instant::now();
                let result = testkit::tls_handshake(lb_https, &name, root, &[b"http/1.1"]).await;
                assert!(result.is_err(), "{name} served while ask is {what}");
                if ask.calls() > asked_before {
                    slowest = slowest.max(t.elapsed());
                    break;
                }
                assert!(Instant::now() < deadline, "{name}: ask never called");
            }
        }
        eprintln!("phase 3: ask {what}: 6 handshakes refused, slowest after {slowest:?}");
        assert!(slowest < Duration::from_secs(3), "{slowest:?}");
        assert_eq!(pebble_orders(cluster), orders_before);
    }
    ask.mode.store(ASK_OK, Ordering::SeqCst);

    // 4. A dead name: allowed, but its DNS points nowhere the fleet listens, so its order
    // fails; paused after that failure, it reaches the CA again only when the pause ends.
    let dead = "dead.cluster.test";
    cluster
        .pebble
        .add_a(dead, std::net::Ipv4Addr::new(127, 0, 0, 254))
        .await?;
    // Orders for it, as the nodes placed them (Pebble's log does not name an order's domain).
    let dead_orders = || cluster.log_lines(&["order created", dead]).len();
    let before = dead_orders();
    // Handshakes until a node recorded it (the first may find the ask budget spent), then
    // until it is paused after its failed order.
    testkit::wait_for_ok(
        "the dead name recorded",
        Duration::from_secs(20),
        || async move {
            let _ = testkit::tls_handshake(lb_https, dead, root, &[b"http/1.1"]).await;
            anyhow::ensure!(
                !cluster
                    .log_lines(&["allowed and recorded", dead])
                    .is_empty(),
                "not recorded yet"
            );
            Ok(())
        },
    )
    .await
    .with_context(|| cluster.logs())?;
    testkit::wait_for_ok(
        "the dead name paused",
        Duration::from_secs(60),
        || async move {
            let lines = cluster.log_lines(&["name paused", dead]);
            anyhow::ensure!(!lines.is_empty(), "not paused yet");
            Ok(())
        },
    )
    .await
    .with_context(|| cluster.logs())?;
    let paused_at = Instant::now();
    let list = sites_list(cluster);
    eprintln!(
        "phase 4: fleetgate sites list:\n{}",
        list.lines()
            .filter(|l| l.starts_with("ID") || l.starts_with("cust1.") || l.starts_with(dead))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with(dead) && l.contains(" paused ")),
        "{list}"
    );
    let after_first = dead_orders();
    // While paused: refused at once, and no new order (watched for most of the pause).
    for _ in 0..10 {
        let t = Instant::now();
        assert!(
            testkit::tls_handshake(lb_https, dead, root, &[b"http/1.1"])
                .await
                .is_err()
        );
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    // The pause ends when a node resumes the name (logged); no order can start before that.
    testkit::wait_for_ok("the pause ended", Duration::from_secs(60), || async move {
        anyhow::ensure!(
            !cluster.log_lines(&["pause ended", dead]).is_empty(),
            "still paused"
        );
        Ok(())
    })
    .await
    .with_context(|| cluster.logs())?;
    eprintln!(
        "phase 4: pause seen ending {:?} after the test saw it begin (fail_pause 20 s; the handshakes that recorded the name waited `wait` for a certificate)",
        paused_at.elapsed()
    );
    let during_pause = dead_orders();
    // After the pause: one more attempt reaches the CA.
    testkit::wait_for_ok(
        "tried again after the pause",
        Duration::from_secs(60),
        || async move {
            anyhow::ensure!(dead_orders() > during_pause, "no new order yet");
            Ok(())
        },
    )
    .await
    .with_context(|| cluster.logs())?;
    eprintln!(
        "phase 4: dead name: orders placed for it: before {before}, after its failed order {after_first}, at the end of the pause {during_pause}, after the pause {}",
        dead_orders()
    );
    assert_eq!(
        during_pause, after_first,
        "the CA saw the dead name while it was paused"
    );
    Ok(())
}
