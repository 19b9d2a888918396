//! The cluster, end to end: three fleetgate processes sharing one store behind a real round-robin
//! HAProxy, Pebble validating through the balancer (three validation requests per challenge, each
//! a new connection, so they land on different nodes).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Node;
use testkit::{Haproxy, Pebble};
use tokio::sync::Mutex;

pub const SITES: usize = 15;
pub const NAMES_PER_SITE: usize = 2;

pub fn names() -> Vec<String> {
    (0..SITES)
        .flat_map(|s| (0..NAMES_PER_SITE).map(move |n| format!("d{s}n{n}.cluster.test")))
        .collect()
}

pub struct Cluster {
    pub pebble: Pebble,
    pub balancer: Haproxy,
    pub nodes: Vec<Node>,
    pub root: String,
}

/// `storage`: the `[storage]` section for every node (`{path}` is replaced by a directory of the
/// node's own, for its local cache), or `None` for one shared directory.
pub async fn start_cluster(nodes: usize, challenge: &str, storage: Option<String>) -> anyhow::Result<Cluster> {
    let lb_ip = testkit::loopback_ip();
    let (http_port, https_port) = (testkit::free_port(), testkit::free_port());
    let pebble = Pebble::builder().http_port(http_port).tls_port(https_port).resolve_to(lb_ip).start().await?;
    let root = pebble.issuing_root_pem().await?;

    let mut sites = String::new();
    for s in 0..SITES {
        let domains: Vec<String> = (0..NAMES_PER_SITE).map(|n| format!("\"d{s}n{n}.cluster.test\"")).collect();
        sites.push_str(&format!(
            "[[site]]\ndomains = [{}]\nredirect = {{ to = \"https://main.cluster.test\" }}\n\n",
            domains.join(", ")
        ));
    }
    let body = format!(
        "[acme]\ndirectory = \"{}\"\nca_root = \"{}\"\nchallenges = [\"{challenge}\"]\n\n{sites}",
        pebble.directory_url(),
        pebble.listener_ca_path().display()
    );
    let shared = tempfile::tempdir()?;
    let data = shared.path().join("data");
    let mut list = Vec::new();
    let (node_http, node_https) = (testkit::free_port(), testkit::free_port());
    for _ in 0..nodes {
        let ip = testkit::loopback_ip();
        let dir = tempfile::tempdir()?;
        let own = storage.as_ref().map(|t| t.replace("{path}", &dir.path().join("local").display().to_string()));
        list.push(Node::with_storage(dir, data.clone(), own, ip, node_http, node_https, &body)?);
    }
    let frontends = vec![
        (SocketAddr::from((lb_ip, http_port)), list.iter().map(|n| n.http).collect()),
        (SocketAddr::from((lb_ip, https_port)), list.iter().map(|n| n.https).collect()),
    ];
    let balancer = Haproxy::tcp_round_robin(&frontends).await?;
    for node in &mut list {
        node.start().await?;
    }
    // Keep the shared directory alive as long as the nodes.
    std::mem::forget(shared);
    Ok(Cluster { pebble, balancer, nodes: list, root })
}

/// Poll every node for every name until all serve a valid chain; return, per name, how far apart
/// the first and the last node started serving it.
pub async fn wait_all_served(cluster: &Cluster, deadline: Duration) -> anyhow::Result<HashMap<String, Duration>> {
    let first_seen: Arc<Mutex<HashMap<(usize, String), Instant>>> = Arc::default();
    let started = Instant::now();
    let names = names();
    loop {
        let mut tasks = Vec::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            for name in &names {
                let key = (i, name.clone());
                if first_seen.lock().await.contains_key(&key) {
                    continue;
                }
                let (addr, name, root, seen) = (node.https, name.clone(), cluster.root.clone(), first_seen.clone());
                tasks.push(tokio::spawn(async move {
                    if testkit::tls_handshake(addr, &name, &root, &[]).await.is_ok() {
                        seen.lock().await.insert(key, Instant::now());
                    }
                }));
            }
        }
        if tasks.is_empty() {
            break;
        }
        for t in tasks {
            let _ = t.await;
        }
        if started.elapsed() > deadline {
            let seen = first_seen.lock().await;
            let logs: Vec<String> = cluster.nodes.iter().map(|n| n.log()).collect();
            anyhow::bail!(
                "only {} of {} (node, name) pairs served after {deadline:?}\n{}",
                seen.len(),
                cluster.nodes.len() * names.len(),
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = first_seen.lock().await;
    let mut spread = HashMap::new();
    for name in &names {
        let times: Vec<Instant> = (0..cluster.nodes.len()).filter_map(|i| seen.get(&(i, name.clone())).copied()).collect();
        let (min, max) = (times.iter().min().copied(), times.iter().max().copied());
        if let (Some(min), Some(max)) = (min, max) {
            spread.insert(name.clone(), max - min);
        }
    }
    Ok(spread)
}

/// Assert the cluster's promise: every certificate on the first attempt, one order finalized per
/// certificate, every node serving every name within 2 s of the first.
pub async fn check_cluster(cluster: &Cluster) -> anyhow::Result<()> {
    let spread = wait_all_served(cluster, Duration::from_secs(180)).await?;
    let worst = spread.values().max().copied().unwrap_or_default();
    eprintln!("propagation: worst spread between nodes {worst:?}");
    assert!(worst <= Duration::from_secs(2), "a name took {worst:?} to reach every node: {spread:?}");

    let issued: usize = cluster.nodes.iter().map(|n| n.log().matches("certificate issued").count()).sum();
    assert_eq!(issued, SITES, "one certificate per site across the cluster");
    let failures: Vec<String> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.log().lines().filter(|l| l.contains("obtaining the certificate failed")).map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert!(failures.is_empty(), "every certificate on its first attempt, but:\n{}", failures.join("\n"));
    let pebble_log = cluster.pebble.pebble_log();
    let finalized = pebble_log.matches("/finalize-order/").count();
    assert!(finalized > 0, "Pebble's log format changed? {pebble_log}");
    assert_eq!(finalized, SITES, "exactly one order finalized per certificate");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_a_directory_behind_haproxy_http01() -> anyhow::Result<()> {
    let cluster = start_cluster(3, "http-01", None).await?;
    check_cluster(&cluster).await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_a_directory_behind_haproxy_tls_alpn01() -> anyhow::Result<()> {
    let cluster = start_cluster(3, "tls-alpn-01", None).await?;
    check_cluster(&cluster).await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_postgres_behind_haproxy() -> anyhow::Result<()> {
    let pg = testkit::Postgres::start().await?;
    let storage = format!("[storage]\nkind = \"postgres\"\nurl = \"{}\"\npath = \"{{path}}\"\n", pg.url());
    let cluster = start_cluster(3, "http-01", Some(storage)).await?;
    check_cluster(&cluster).await?;
    let status = cluster.nodes[0].command(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(text.matches(" up ").count(), 3, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_redis_behind_haproxy() -> anyhow::Result<()> {
    let redis = testkit::RedisServer::start().await?;
    let storage = format!("[storage]\nkind = \"redis\"\nurl = \"{}\"\npath = \"{{path}}\"\n", redis.url());
    let cluster = start_cluster(3, "tls-alpn-01", Some(storage)).await?;
    check_cluster(&cluster).await
}
