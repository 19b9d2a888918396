//! TLS session resumption across the fleet: three fleetgate processes share their ticket keys
//! through the store, so a session ticket one node issued resumes on every node (TLS 1.3 and
//! TLS 1.2), also after a rotation, and through a round-robin HAProxy. A node that starts while
//! the store is down serves TLS with a key of its own, then joins the fleet's keys.
//!
//! The client is rustls with one session cache per probe, so each probe resumes exactly the
//! ticket it was given. Nodes are waited on through their logs, never with sleeps.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::Node;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAME: &str = "resume.fleet.test";
const DEADLINE: Duration = Duration::from_secs(20);

/// The site every node serves, its certificate from files (no store needed to serve it).
fn site(files: &Path) -> String {
    format!(
        "[[site]]\ndomains = [\"{NAME}\"]\ntls = {{ cert = \"{0}/site.pem\", key = \"{0}/site.key\" }}\nrespond = {{ status = 200, body = \"resumed?\" }}\n",
        files.display()
    )
}

/// A test CA and the site's certificate in `files`; returns the CA (the client's root).
fn write_certificate(files: &Path) -> anyhow::Result<String> {
    let (ca, leaf, key) = testkit::ca_and_leaf(&[NAME]);
    std::fs::write(files.join("site.pem"), leaf)?;
    std::fs::write(files.join("site.key"), key)?;
    Ok(ca)
}

/// A browser that remembers one session: a client of exactly one TLS version, with a session
/// cache of its own.
#[derive(Clone)]
struct Client {
    config: Arc<ClientConfig>,
}

impl Client {
    fn new(roots: &str, version: &'static SupportedProtocolVersion) -> anyhow::Result<Client> {
        let mut store = RootCertStore::empty();
        for cert in testkit::pem_certs(roots)? {
            store.add(cert)?;
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[version])?
        .with_root_certificates(store)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(8)));
        Ok(Client {
            config: Arc::new(config),
        })
    }

    /// One connection to `addr`: handshake (resuming if the cache holds a session), a request
    /// whose answer is read to the end (TLS 1.3 tickets arrive after the handshake).
    async fn visit(&self, addr: SocketAddr) -> anyhow::Result<HandshakeKind> {
        let mut tls = testkit::tls_connect(addr, NAME, Arc::clone(&self.config)).await?;
        let kind = tls
            .get_ref()
            .1
            .handshake_kind()
            .context("no handshake kind")?;
        let request = format!("GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n");
        let mut reply = Vec::new();
        tokio::time::timeout(DEADLINE, async {
            tls.write_all(request.as_bytes()).await?;
            tls.read_to_end(&mut reply).await
        })
        .await
        .with_context(|| format!("no answer from {addr}"))??;
        anyhow::ensure!(
            reply.starts_with(b"HTTP/1.1 200"),
            "{addr}: {}",
            String::from_utf8_lossy(&reply)
        );
        Ok(kind)
    }
}

fn versions() -> [(&'static str, &'static SupportedProtocolVersion); 2] {
    [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ]
}

/// For every ordered pair of nodes and both TLS versions: a session from the first resumes on
/// the second.
async fn resumes_across(nodes: &[&Node], roots: &str) -> anyhow::Result<()> {
    for (version_name, version) in versions() {
        for from in nodes {
            for to in nodes {
                if from.https == to.https {
                    continue;
                }
                let client = Client::new(roots, version)?;
                let first = client.visit(from.https).await?;
                anyhow::ensure!(first == HandshakeKind::Full, "{version_name}: {first:?}");
                let second = client.visit(to.https).await?;
                anyhow::ensure!(
                    second == HandshakeKind::Resumed,
                    "{version_name}: a session from {} did not resume on {} ({second:?})\n{}",
                    from.ip,
                    to.ip,
                    to.log()
                );
            }
        }
        eprintln!(
            "{version_name}: sessions resumed across all {} ordered pairs of nodes",
            nodes.len() * (nodes.len() - 1)
        );
    }
    Ok(())
}

/// Wait until `node` serves [`NAME`]: a node listens before its certificate is loaded.
async fn wait_serving(node: &Node, roots: &str) -> anyhow::Result<()> {
    let probe = Client::new(roots, &rustls::version::TLS13)?;
    testkit::wait_for(
        &format!("node {} serving {NAME}", node.ip),
        DEADLINE,
        || async { probe.visit(node.https).await.ok().map(|_| ()) },
    )
    .await
    .with_context(|| node.log())
}

/// Whether `node` logged that it uses the store's keys of `generation`.
fn uses_generation(node: &Node, generation: u64) -> bool {
    node.log().lines().any(|line| {
        line.contains("TLS ticket keys from the store in use")
            && line.contains(&format!("generation={generation} "))
    })
}

async fn wait_generation(nodes: &[&Node], generation: u64) -> anyhow::Result<()> {
    for node in nodes {
        testkit::wait_for(
            &format!("node {} on ticket keys generation {generation}", node.ip),
            DEADLINE,
            || async { uses_generation(node, generation).then_some(()) },
        )
        .await
        .with_context(|| node.log())?;
    }
    Ok(())
}

/// `fleetgate tickets rotate` with `node`'s config.
fn rotate(node: &Node) -> anyhow::Result<()> {
    let out = node.command(&["tickets", "rotate"]);
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && text.contains("TLS ticket keys rotated"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tickets_resume_on_every_node_sharing_a_directory_and_survive_one_rotation()
-> anyhow::Result<()> {
    let files = tempfile::tempdir()?;
    let roots = write_certificate(files.path())?;
    let shared = tempfile::tempdir()?;
    let data = shared.path().join("data");
    let (http, https) = (testkit::free_port(), testkit::free_port());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut node = Node::with_data(
            tempfile::tempdir()?,
            data.clone(),
            testkit::loopback_ip(),
            http,
            https,
            &site(files.path()),
        )?;
        node.spawn()?;
        nodes.push(node);
    }
    for node in &nodes {
        node.wait_listening().await?;
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_generation(&all, 1).await?;
    resumes_across(&all, &roots).await?;

    // Sessions made before a rotation, one client per node and version (plus one more for after
    // the second rotation), all from node 0.
    let mut before = Vec::new();
    let mut expiring = Vec::new();
    for (name, version) in versions() {
        for node in &nodes {
            let client = Client::new(&roots, version)?;
            assert_eq!(client.visit(nodes[0].https).await?, HandshakeKind::Full);
            before.push((name, client, node.https));
        }
        let client = Client::new(&roots, version)?;
        assert_eq!(client.visit(nodes[0].https).await?, HandshakeKind::Full);
        expiring.push((name, client));
    }

    rotate(&nodes[1])?;
    wait_generation(&all, 2).await?;
    for (name, client, addr) in &before {
        let kind = client.visit(*addr).await?;
        assert_eq!(
            kind,
            HandshakeKind::Resumed,
            "{name}: a session from before the rotation did not resume on {addr}"
        );
    }
    eprintln!("sessions made before a rotation resumed on every node after it");
    resumes_across(&all, &roots).await?;

    // A second rotation retires the key those sessions were sealed with.
    rotate(&nodes[2])?;
    wait_generation(&all, 3).await?;
    for (name, client) in &expiring {
        // On node 1: node 0 might still find a TLS 1.2 session id in its own cache.
        let kind = client.visit(nodes[1].https).await?;
        assert_eq!(
            kind,
            HandshakeKind::Full,
            "{name}: a ticket two rotations old resumed"
        );
    }
    eprintln!("tickets two rotations old no longer resume");
    for node in &mut nodes {
        node.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_while_redis_was_down_serves_tls_then_resumes_the_fleets_tickets()
-> anyhow::Result<()> {
    let files = tempfile::tempdir()?;
    let roots = write_certificate(files.path())?;
    let mut redis = testkit::RedisServer::start().await?;
    let url = redis.url();
    redis.kill().await?;

    let (http, https) = (testkit::free_port(), testkit::free_port());
    let new_node = || -> anyhow::Result<Node> {
        let dir = tempfile::tempdir()?;
        let storage = format!(
            "[storage]\nkind = \"redis\"\nurl = \"{url}\"\npath = \"{}\"\n",
            dir.path().join("local").display()
        );
        let data = dir.path().join("local");
        Node::with_storage(
            dir,
            data,
            Some(storage),
            testkit::loopback_ip(),
            http,
            https,
            &site(files.path()),
        )
    };

    // The store is down: this node serves TLS all the same and resumes its own sessions.
    let mut lonely = new_node()?;
    lonely.start().await?;
    wait_serving(&lonely, &roots).await?;
    for (name, version) in versions() {
        let client = Client::new(&roots, version)?;
        assert_eq!(client.visit(lonely.https).await?, HandshakeKind::Full);
        assert_eq!(
            client.visit(lonely.https).await?,
            HandshakeKind::Resumed,
            "{name}\n{}",
            lonely.log()
        );
    }
    testkit::wait_for("the warning about the node's own key", DEADLINE, || async {
        lonely
            .log()
            .contains("sealing tickets with this node's own key")
            .then_some(())
    })
    .await
    .with_context(|| lonely.log())?;
    // A TLS 1.3 session sealed with that node's own key, for later.
    let own_key_session = Client::new(&roots, &rustls::version::TLS13)?;
    assert_eq!(
        own_key_session.visit(lonely.https).await?,
        HandshakeKind::Full
    );
    eprintln!("a node started without its store serves TLS and resumes its own sessions");

    // The store comes back and two more nodes join: all three share the fleet's keys.
    redis.restart().await?;
    let mut others = vec![new_node()?, new_node()?];
    for node in &mut others {
        node.spawn()?;
    }
    for node in &others {
        node.wait_listening().await?;
    }
    let all: Vec<&Node> = std::iter::once(&lonely).chain(&others).collect();
    wait_generation(&all, 1).await?;
    resumes_across(&all, &roots).await?;
    // Its own key still opens the tickets it sealed before it had the fleet's.
    assert_eq!(
        own_key_session.visit(lonely.https).await?,
        HandshakeKind::Resumed
    );

    // Behind a round-robin balancer, one browser resumes on every connection after its first.
    let lb = testkit::free_addr(testkit::loopback_ip());
    let _haproxy =
        testkit::Haproxy::tcp_round_robin(&[(lb, all.iter().map(|n| n.https).collect())]).await?;
    for (name, version) in versions() {
        let client = Client::new(&roots, version)?;
        let mut resumed = 0;
        for _ in 0..9 {
            if client.visit(lb).await? == HandshakeKind::Resumed {
                resumed += 1;
            }
        }
        eprintln!("{name} through HAProxy round robin: {resumed} of 9 connections resumed");
        assert_eq!(resumed, 8, "{name}");
    }

    // The store goes away again: every node keeps its keys and still resumes the others'.
    redis.kill().await?;
    resumes_across(&all, &roots).await?;
    for node in [&mut lonely].into_iter().chain(&mut others) {
        node.stop().await?;
    }
    Ok(())
}
