//! A fleetgate cluster for end-to-end tests: Pebble (its VA resolving every test domain to the
//! balancer through challtestsrv), a real round-robin HAProxy (TCP, retries + redispatch) on the
//! address Pebble validates against, and N fleetgate processes on their own 127.0.0.x sharing one
//! store (a directory, PostgreSQL or Redis). Used by `cluster.rs` and `faults*.rs`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use testkit::{Haproxy, Pebble, Signal};
use tokio::sync::Mutex;

use super::Node;

/// Where the nodes keep their shared state.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One directory shared by every node.
    Dir,
    /// `storage.kind = "postgres"` with this URL; each node keeps a local cache of its own.
    Postgres(String),
    /// `storage.kind = "redis"` with this URL; each node keeps a local cache of its own.
    Redis(String),
}

/// Options of a [`Cluster`]; finish with [`ClusterBuilder::start`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    challenge: String,
    backend: Backend,
    sites: usize,
    names_per_site: usize,
    storage_extra: String,
    nonce_reject: u8,
    proxy_protocol: bool,
    admin: bool,
    extra: String,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            nodes: 3,
            challenge: "http-01".to_string(),
            backend: Backend::Dir,
            sites: 15,
            names_per_site: 2,
            storage_extra: String::new(),
            nonce_reject: 0,
            proxy_protocol: false,
            admin: false,
            extra: String::new(),
        }
    }
}

impl ClusterBuilder {
    /// HAProxy sends the PROXY protocol (v1 on HTTP, v2 on HTTPS) from its own address, which
    /// the nodes trust; probes straight to a node (from 127.0.0.1) stay direct clients.
    pub fn proxy_protocol(mut self) -> Self {
        self.proxy_protocol = true;
        self
    }

    /// Config text appended after the `[[site]]` tables on every node (more sites, other
    /// sections such as `[on_demand]`).
    pub fn config_extra(mut self, text: &str) -> Self {
        self.extra.push_str(text);
        self
    }

    /// Every node serves the admin API (no token) on its own address, port [`Cluster::admin_addr`].
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// `"http-01"` (default) or `"tls-alpn-01"`.
    pub fn challenge(mut self, challenge: &str) -> Self {
        self.challenge = challenge.to_string();
        self
    }

    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Sites at start (default 15), each `names_per_site` names (default 2): `d{s}n{n}.cluster.test`.
    pub fn sites(mut self, sites: usize, names_per_site: usize) -> Self {
        self.sites = sites;
        self.names_per_site = names_per_site;
        self
    }

    /// `storage.lease_ttl` (default 30 s in fleetgate).
    pub fn lease_ttl(mut self, ttl: &str) -> Self {
        self.storage_extra
            .push_str(&format!("lease_ttl = \"{ttl}\"\n"));
        self
    }

    /// `storage.resync_interval` (default 60 s in fleetgate).
    pub fn resync_interval(mut self, interval: &str) -> Self {
        self.storage_extra
            .push_str(&format!("resync_interval = \"{interval}\"\n"));
        self
    }

    /// `storage.ca_root`: the database's TLS root (`sslmode=require` or `rediss://` URLs).
    pub fn storage_ca_root(mut self, path: &std::path::Path) -> Self {
        self.storage_extra
            .push_str(&format!("ca_root = \"{}\"\n", path.display()));
        self
    }

    /// Pebble rejects this percentage of valid nonces (`PEBBLE_WFE_NONCEREJECT`).
    pub fn nonce_reject(mut self, percent: u8) -> Self {
        self.nonce_reject = percent;
        self
    }

    /// Start Pebble, the nodes' configs, HAProxy, then every node (waiting until each listens).
    pub async fn start(self) -> anyhow::Result<Cluster> {
        let lb_ip = testkit::loopback_ip();
        let (http_port, https_port) = (testkit::free_port(), testkit::free_port());
        let pebble = Pebble::builder()
            .http_port(http_port)
            .tls_port(https_port)
            .resolve_to(lb_ip)
            .nonce_reject(self.nonce_reject)
            .start()
            .await?;
        let root = pebble.issuing_root_pem().await?;
        let acme = format!(
            "[acme]\ndirectory = \"{}\"\nca_root = \"{}\"\nchallenges = [\"{}\"]\n\n",
            pebble.directory_url(),
            pebble.listener_ca_path().display(),
            self.challenge
        );
        let sites: Vec<Vec<String>> = (0..self.sites)
            .map(|s| {
                (0..self.names_per_site)
                    .map(|n| format!("d{s}n{n}.cluster.test"))
                    .collect()
            })
            .collect();

        let shared = tempfile::tempdir()?;
        let data = shared.path().join("data");
        let mut nodes = Vec::new();
        let (node_http, node_https) = (testkit::free_port(), testkit::free_port());
        let admin_port = self.admin.then(testkit::free_port);
        for _ in 0..self.nodes {
            let ip = testkit::loopback_ip();
            let dir = tempfile::tempdir()?;
            let local = dir.path().join("local");
            let storage = match &self.backend {
                Backend::Dir => {
                    format!("[storage]\nkind = \"dir\"\npath = \"{}\"\n", data.display())
                }
                Backend::Postgres(url) => {
                    format!(
                        "[storage]\nkind = \"postgres\"\nurl = \"{url}\"\npath = \"{}\"\n",
                        local.display()
                    )
                }
                Backend::Redis(url) => {
                    format!(
                        "[storage]\nkind = \"redis\"\nurl = \"{url}\"\npath = \"{}\"\n",
                        local.display()
                    )
                }
            };
            let storage = format!("{storage}{}", self.storage_extra);
            let body = format!("{}{}", site_config(&acme, &sites), self.extra);
            let mut node = Node::with_storage(
                dir,
                data.clone(),
                Some(storage),
                ip,
                node_http,
                node_https,
                &body,
            )?;
            if self.proxy_protocol {
                node.listen_extra = format!("proxy_protocol_from = [\"{lb_ip}\"]");
                node.write_config(&body)?;
            }
            if let Some(port) = admin_port {
                // Its own table, written after [listen]'s keys on every rewrite of the config.
                node.listen_extra
                    .push_str(&format!("\n[admin]\nlisten = \"{ip}:{port}\"\n"));
                node.write_config(&body)?;
            }
            nodes.push(node);
        }
        let frontends = vec![
            (
                SocketAddr::from((lb_ip, http_port)),
                nodes.iter().map(|n| n.http).collect(),
            ),
            (
                SocketAddr::from((lb_ip, https_port)),
                nodes.iter().map(|n| n.https).collect(),
            ),
        ];
        let balancer = if self.proxy_protocol {
            let (v1, v2) = (
                format!("send-proxy source {lb_ip}"),
                format!("send-proxy-v2 source {lb_ip}"),
            );
            Haproxy::tcp_round_robin_with(&frontends, &[&v1, &v2]).await?
        } else {
            Haproxy::tcp_round_robin(&frontends).await?
        };
        // All nodes at once: a node that orders before its peers listen would have validations
        // routed to a dead peer (HAProxy retries, but after a one-second turn-around each).
        for node in &mut nodes {
            node.spawn()?;
        }
        for node in &nodes {
            node.wait_listening().await?;
        }
        Ok(Cluster {
            pebble,
            balancer,
            nodes,
            root,
            acme,
            sites,
            admin_port,
            extra: self.extra.clone(),
            _shared: shared,
        })
    }
}

/// The `[acme]` section followed by one redirecting `[[site]]` per entry of `sites`.
fn site_config(acme: &str, sites: &[Vec<String>]) -> String {
    let mut body = acme.to_string();
    for domains in sites {
        let quoted: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
        body.push_str(&format!(
            "[[site]]\ndomains = [{}]\nredirect = {{ to = \"https://main.cluster.test\" }}\n\n",
            quoted.join(", ")
        ));
    }
    body
}

/// A running cluster; everything is killed when it is dropped.
pub struct Cluster {
    pub pebble: Pebble,
    pub balancer: Haproxy,
    pub nodes: Vec<Node>,
    /// The root that issued certificates chain to (Pebble's, new on every Pebble start).
    pub root: String,
    acme: String,
    /// The configured sites, each a list of names (the first is the certificate's id).
    pub sites: Vec<Vec<String>>,
    admin_port: Option<u16>,
    extra: String,
    // The shared directory (and the dir backend's data) lives as long as the nodes.
    _shared: tempfile::TempDir,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Node `i`'s admin API (built with [`ClusterBuilder::admin`]).
    pub fn admin_addr(&self, i: usize) -> Option<SocketAddr> {
        self.admin_port
            .map(|port| SocketAddr::from((self.nodes[i].ip, port)))
    }

    /// Every configured name.
    pub fn names(&self) -> Vec<String> {
        self.sites.iter().flatten().cloned().collect()
    }

    /// Add a site with `domains` to every node's config and send SIGHUP to every running node.
    pub fn add_site(&mut self, domains: &[&str]) -> anyhow::Result<()> {
        self.sites
            .push(domains.iter().map(|d| d.to_string()).collect());
        let body = format!("{}{}", site_config(&self.acme, &self.sites), self.extra);
        for node in &self.nodes {
            node.write_config(&body)?;
            if node.child.is_some() {
                node.signal(Signal::Hup)?;
            }
        }
        Ok(())
    }

    /// Add a site with `domains` to node `i`'s config only and send it SIGHUP: a rolling change,
    /// the other nodes do not list the names (and [`Cluster::sites`] does not either).
    pub fn add_site_to(&self, i: usize, domains: &[&str]) -> anyhow::Result<()> {
        let mut sites = self.sites.clone();
        sites.push(domains.iter().map(|d| d.to_string()).collect());
        self.nodes[i].write_config(&format!(
            "{}{}",
            site_config(&self.acme, &sites),
            self.extra
        ))?;
        self.nodes[i].signal(Signal::Hup)
    }

    /// Send SIGHUP to every running node (configs unchanged: every certificate task looks again).
    pub fn reload(&self) -> anyhow::Result<()> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            node.signal(Signal::Hup)?;
        }
        Ok(())
    }

    /// The index of the node named `owner` (nodes are named by their IP).
    pub fn node_named(&self, owner: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.ip.to_string() == owner)
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let logs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("==== node {} ====\n{}", n.ip, n.log()))
            .collect();
        logs.join("\n")
    }

    /// Log lines of every node that contain all of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.log()
                    .lines()
                    .filter(|l| needles.iter().all(|needle| l.contains(needle)))
                    .map(|l| format!("{}: {l}", n.ip))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Who holds lock `name` according to `fleetgate status` run with node `via`'s config:
    /// `(owner, token)`, or `None` when nobody does. Fails when the store does not answer.
    pub async fn lock_holder(
        &self,
        via: usize,
        name: &str,
    ) -> anyhow::Result<Option<(String, u64)>> {
        let out = tokio::process::Command::new(super::bin())
            .arg("status")
            .arg("--config")
            .arg(&self.nodes[via].config_path)
            .kill_on_drop(true)
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "fleetgate status failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let locks = text
            .split("locks held:")
            .nth(1)
            .context("no \"locks held\" section")?;
        for line in locks.lines() {
            // `  NAME  held by OWNER  token TOKEN  expires in LEFT`
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [lock, "held", "by", owner, "token", token, ..] = words.as_slice()
                && *lock == name
            {
                return Ok(Some((owner.to_string(), token.parse()?)));
            }
        }
        Ok(None)
    }

    /// The serials of every certificate Pebble issued (one per finalized order), from its log
    /// (`Issued certificate serial <hex> for order <id>`). Counting `/finalize-order/` requests
    /// instead would count requests Pebble refused (`badNonce`) and the client sent again.
    pub fn ca_issued_serials(&self) -> Vec<String> {
        self.pebble
            .pebble_log()
            .lines()
            .filter_map(|l| l.split("Issued certificate serial ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(normalize_serial)
            .collect()
    }
}

impl Cluster {
    /// The serial of the certificate `id` in the shared directory (dir backend only):
    /// `objects/certs/<issuer>/<id>.json`, a `CertBundle` whose `meta.serial` is hex.
    pub fn stored_serial(&self, id: &str) -> anyhow::Result<Option<String>> {
        let certs = self.nodes[0].data.join("objects").join("certs");
        for issuer in
            std::fs::read_dir(&certs).with_context(|| format!("read {}", certs.display()))?
        {
            let path = issuer?.path().join(format!("{id}.json"));
            if let Ok(bytes) = std::fs::read(&path) {
                let bundle: serde_json::Value = serde_json::from_slice(&bytes)?;
                let serial = bundle["meta"]["serial"]
                    .as_str()
                    .context("no meta.serial in the stored bundle")?;
                return Ok(Some(normalize_serial(serial)));
            }
        }
        Ok(None)
    }

    /// Whether node `i`'s local cache (PostgreSQL and Redis backends) holds certificate `id`:
    /// `<node>/local/cache/objects/certs/<issuer>/<id>.json`.
    pub fn cached(&self, i: usize, id: &str) -> bool {
        let certs = self.nodes[i].dir.path().join("local/cache/objects/certs");
        std::fs::read_dir(certs)
            .map(|issuers| {
                issuers
                    .flatten()
                    .any(|issuer| issuer.path().join(format!("{id}.json")).is_file())
            })
            .unwrap_or(false)
    }

    /// Stop node `i` with SIGKILL (a crash) and wait until it is gone.
    pub async fn crash(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.nodes[i].child.take().context("not running")?;
        child.kill()?;
        child.wait_exit(Duration::from_secs(10)).await?;
        Ok(())
    }

    /// The HTTPS address of every node.
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.https).collect()
    }
}

/// The lock an order for the certificate `id` runs under (`certs::layout::cert_lock`).
pub fn cert_lock(id: &str) -> String {
    format!("cert-{id}")
}

/// A serial as lowercase hex without leading zeros (how `testkit::CertInfo` shows it).
pub fn normalize_serial(serial: &str) -> String {
    let s = serial.trim().trim_start_matches('0').to_ascii_lowercase();
    if s.is_empty() { "0".to_string() } else { s }
}

/// The serials in `certificate issued ... serial=...` lines of `log` for orders of `domain`.
pub fn issued_serials(log: &str, domain: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("certificate issued") && l.contains(domain))
        .filter_map(|l| l.split("serial=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|s| normalize_serial(s.trim_matches('"')))
        .collect()
}

/// Poll nodes `nodes` for `names` until each serves a valid chain (to `root`); return, per name,
/// how far apart the first and the last node started serving it.
pub async fn wait_served(
    cluster: &Cluster,
    nodes: &[usize],
    names: &[String],
    root: &str,
    deadline: Duration,
) -> anyhow::Result<HashMap<String, Duration>> {
    let first_seen: Arc<Mutex<HashMap<(usize, String), Instant>>> = Arc::default();
    let started = Instant::now();
    loop {
        let mut tasks = Vec::new();
        for &i in nodes {
            for name in names {
                let key = (i, name.clone());
                if first_seen.lock().await.contains_key(&key) {
                    continue;
                }
                let (addr, name, root, seen) = (
                    cluster.nodes[i].https,
                    name.clone(),
                    root.to_string(),
                    first_seen.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    if testkit::tls_handshake(addr, &name, &root, &[])
                        .await
                        .is_ok()
                    {
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
            anyhow::bail!(
                "only {} of {} (node, name) pairs served after {deadline:?}\n{}",
                seen.len(),
                nodes.len() * names.len(),
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = first_seen.lock().await;
    let mut spread = HashMap::new();
    for name in names {
        let times: Vec<Instant> = nodes
            .iter()
            .filter_map(|&i| seen.get(&(i, name.clone())).copied())
            .collect();
        if let (Some(min), Some(max)) = (times.iter().min(), times.iter().max()) {
            spread.insert(name.clone(), *max - *min);
        }
    }
    Ok(spread)
}

/// [`wait_served`] for every node and every configured name.
pub async fn wait_all_served(
    cluster: &Cluster,
    deadline: Duration,
) -> anyhow::Result<HashMap<String, Duration>> {
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    wait_served(cluster, &all, &cluster.names(), &cluster.root, deadline).await
}

/// Assert the cluster's promise: every certificate on the first attempt, one order finalized per
/// certificate, every node serving every name within 2 s of the first.
pub async fn check_cluster(cluster: &Cluster) -> anyhow::Result<()> {
    // A failed order already breaks the promise: stop waiting at once, with the logs.
    let first_failure = async {
        loop {
            let failures = cluster.log_lines(&["obtaining the certificate failed"]);
            if !failures.is_empty() {
                return failures;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let spread = tokio::select! {
        spread = wait_all_served(cluster, Duration::from_secs(180)) => spread?,
        failures = first_failure => anyhow::bail!(
            "a certificate failed on its first attempt:\n{}\n\nlogs:\n{}",
            failures.join("\n"),
            cluster.logs()
        ),
    };
    let worst = spread.values().max().copied().unwrap_or_default();
    eprintln!("propagation: worst spread between nodes {worst:?}");
    assert!(
        worst <= Duration::from_secs(2),
        "a name took {worst:?} to reach every node: {spread:?}"
    );

    let sites = cluster.sites.len();
    let issued = cluster.log_lines(&["certificate issued"]).len();
    assert_eq!(issued, sites, "one certificate per site across the cluster");
    let failures = cluster.log_lines(&["obtaining the certificate failed"]);
    assert!(
        failures.is_empty(),
        "every certificate on its first attempt, but:\n{}",
        failures.join("\n")
    );
    let finalized = cluster.ca_issued_serials().len();
    assert!(
        finalized > 0,
        "Pebble's log format changed? {}",
        cluster.pebble.pebble_log()
    );
    assert_eq!(
        finalized, sites,
        "exactly one order finalized per certificate"
    );
    Ok(())
}

/// TLS handshakes in a loop against a set of nodes for a set of names (each verified against a
/// root), counting failures: "is serving affected?" while something else breaks. Each worker
/// pauses [`LOAD_PAUSE`] between handshakes, so the load does not starve tests running beside it.
pub const LOAD_PAUSE: Duration = Duration::from_millis(25);

pub struct HandshakeLoad {
    state: Arc<LoadState>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

struct LoadState {
    stop: AtomicBool,
    /// Per node: whether handshakes go to it, and how many are in flight.
    active: Vec<AtomicBool>,
    in_flight: Vec<AtomicUsize>,
    ok: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
}

/// What a [`HandshakeLoad`] saw.
#[derive(Debug)]
pub struct LoadReport {
    pub ok: usize,
    pub failures: Vec<String>,
}

impl HandshakeLoad {
    /// `workers` loops, each cycling over every (active node, name) pair; `targets` are the
    /// nodes' HTTPS addresses, `names` pairs of (name, root PEM).
    pub fn start(
        targets: Vec<SocketAddr>,
        names: Vec<(String, String)>,
        workers: usize,
    ) -> HandshakeLoad {
        let state = Arc::new(LoadState {
            stop: AtomicBool::new(false),
            active: targets.iter().map(|_| AtomicBool::new(true)).collect(),
            in_flight: targets.iter().map(|_| AtomicUsize::new(0)).collect(),
            ok: AtomicUsize::new(0),
            failures: std::sync::Mutex::default(),
        });
        let pairs: Arc<Vec<(usize, SocketAddr, String, String)>> = Arc::new(
            targets
                .iter()
                .enumerate()
                .flat_map(|(i, addr)| {
                    names
                        .iter()
                        .map(move |(name, root)| (i, *addr, name.clone(), root.clone()))
                })
                .collect(),
        );
        let workers = (0..workers)
            .map(|w| {
                let (state, pairs) = (state.clone(), pairs.clone());
                tokio::spawn(async move {
                    let mut next = w;
                    while !state.stop.load(Ordering::SeqCst) {
                        let (node, addr, name, root) = &pairs[next % pairs.len()];
                        next += 1;
                        // Count in flight before checking `active`, so `exclude` can wait for it.
                        state.in_flight[*node].fetch_add(1, Ordering::SeqCst);
                        if state.active[*node].load(Ordering::SeqCst) {
                            match testkit::tls_handshake(*addr, name, root, &[]).await {
                                Ok(_) => {
                                    state.ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    let at = unix_time_ms();
                                    state
                                        .failures
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .push(format!("{at} {addr} {name}: {e:#}"));
                                }
                            }
                        }
                        state.in_flight[*node].fetch_sub(1, Ordering::SeqCst);
                        tokio::time::sleep(LOAD_PAUSE).await;
                    }
                })
            })
            .collect();
        HandshakeLoad { state, workers }
    }

    /// Stop sending handshakes to node `i` and wait until none is in flight (before stopping it).
    pub async fn exclude(&self, i: usize) -> anyhow::Result<()> {
        self.state.active[i].store(false, Ordering::SeqCst);
        let state = self.state.clone();
        testkit::wait_for(
            "handshakes in flight to finish",
            Duration::from_secs(15),
            || {
                let n = state.in_flight[i].load(Ordering::SeqCst);
                async move { (n == 0).then_some(()) }
            },
        )
        .await
    }

    /// Send handshakes to node `i` again.
    pub fn include(&self, i: usize) {
        self.state.active[i].store(true, Ordering::SeqCst);
    }

    /// Handshakes that succeeded so far.
    pub fn ok(&self) -> usize {
        self.state.ok.load(Ordering::Relaxed)
    }

    /// Stop and report.
    pub async fn stop(self) -> LoadReport {
        self.state.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            let _ = w.await;
        }
        let failures = std::mem::take(
            &mut *self
                .state
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        LoadReport {
            ok: self.state.ok.load(Ordering::Relaxed),
            failures,
        }
    }
}

/// Seconds since the epoch with milliseconds, to line failures up with node logs.
fn unix_time_ms() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}

/// Serials served by any of `nodes` for `name`, sampled until stopped: "which certificates did
/// anyone ever serve?"
pub struct SerialWatch {
    stop: Arc<AtomicBool>,
    state: Arc<std::sync::Mutex<WatchState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct WatchState {
    seen: HashSet<String>,
    /// Per target, the serial its latest successful handshake showed.
    latest: HashMap<SocketAddr, String>,
}

impl SerialWatch {
    pub fn start(targets: Vec<SocketAddr>, name: &str, root: &str) -> SerialWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let state: Arc<std::sync::Mutex<WatchState>> = Arc::default();
        let (name, root) = (name.to_string(), root.to_string());
        let task = tokio::spawn({
            let (stop, state) = (stop.clone(), state.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    for addr in &targets {
                        if let Ok(info) = testkit::tls_handshake(*addr, &name, &root, &[]).await {
                            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                            state.seen.insert(info.leaf.serial_hex.clone());
                            state.latest.insert(*addr, info.leaf.serial_hex);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        SerialWatch { stop, state, task }
    }

    /// Wait until the latest handshake with each of `targets` showed `serial`.
    pub async fn wait_serving(
        &self,
        targets: &[SocketAddr],
        serial: &str,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        testkit::wait_for_ok(
            "every node to serve the serial (as sampled)",
            deadline,
            || {
                let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let behind: Vec<String> = targets
                    .iter()
                    .filter(|t| state.latest.get(t).map(String::as_str) != Some(serial))
                    .map(|t| format!("{t} serves {:?}", state.latest.get(t)))
                    .collect();
                async move {
                    anyhow::ensure!(behind.is_empty(), "{}", behind.join(", "));
                    Ok(())
                }
            },
        )
        .await
    }

    /// Stop sampling; every serial seen.
    pub async fn stop(self) -> HashSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .clone()
    }
}
