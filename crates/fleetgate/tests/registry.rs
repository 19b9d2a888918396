//! Registry sites on running nodes (PostgreSQL backend, two `fleetgate run` processes): a site
//! written to the registry is served by every node within 2 s, edits and removals too; the
//! config file wins a conflicting domain; and a node restarted while the store is down serves
//! the registry's sites from its local copy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Node;
use sites::{RedirectSpec, Registry, SiteEnv, SiteSpec, TlsSpec};

const FILE_SITE: &str = "[[site]]\ndomains = [\"file.fleet.test\"]\ntls = \"internal\"\nhttps_redirect = false\nrespond = { status = 200, body = \"file\" }\n";

fn env() -> SiteEnv {
    SiteEnv {
        base: None,
        acme: false,
        dns01: false,
        default_key_type: certs::KeyType::default(),
    }
}

/// A registry site redirecting plain HTTP too (no HTTPS redirect first), so a GET shows it.
fn redirect(domains: &[&str], to: &str) -> SiteSpec {
    let mut spec = SiteSpec::new(domains.iter().map(|d| (*d).to_owned()).collect());
    spec.tls = Some(TlsSpec::Named("internal".into()));
    spec.https_redirect = Some(false);
    spec.redirect = Some(RedirectSpec {
        to: to.into(),
        status: None,
        keep_path: Some(false),
    });
    spec
}

fn postgres_node(pg: &testkit::Postgres) -> anyhow::Result<Node> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let storage = format!(
        "[storage]\nkind = \"postgres\"\nurl = \"{}\"\npath = \"{}\"\n",
        pg.url(),
        data.display()
    );
    Node::with_storage(
        dir,
        data,
        Some(storage),
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        FILE_SITE,
    )
}

/// What `host` answers over plain HTTP: the status and the Location, if any.
async fn answer(addr: SocketAddr, host: &str) -> anyhow::Result<(u16, Option<String>)> {
    let resp = testkit::http_get(addr, host, "/").await?;
    let location = resp
        .headers
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    Ok((resp.status.as_u16(), location))
}

/// Wait until every node answers `host` with `want`; how long it took.
async fn wait_all(
    nodes: &[&Node],
    host: &str,
    want: (u16, Option<&str>),
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for node in nodes {
        let addr = node.http;
        testkit::wait_for(
            &format!("{host} to answer {want:?} on {addr}"),
            deadline.saturating_sub(started.elapsed()),
            || async move {
                let (status, location) = answer(addr, host).await.ok()?;
                (status == want.0 && location.as_deref() == want.1).then_some(())
            },
        )
        .await
        .map_err(|e| e.context(node.log()))?;
    }
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_changes_reach_every_node_within_two_seconds() -> anyhow::Result<()> {
    let pg = testkit::Postgres::start().await?;
    let mut a = postgres_node(&pg)?;
    let mut b = postgres_node(&pg)?;
    a.spawn()?;
    b.spawn()?;
    a.wait_listening().await?;
    b.wait_listening().await?;
    assert_eq!(answer(a.http, "reg.fleet.test").await?.0, 404);

    let store: Arc<dyn store::Storage> = Arc::new(store::PostgresStore::connect(&pg.url()).await?);
    let registry = Registry::new(store, "test".into());
    let none = HashMap::new();
    let nodes = [&a, &b];

    registry
        .create(
            redirect(
                &["reg.fleet.test", "www.reg.fleet.test"],
                "https://one.example/",
            ),
            &env(),
            &none,
        )
        .await?;
    let took = wait_all(
        &nodes,
        "www.reg.fleet.test",
        (301, Some("https://one.example/")),
        Duration::from_secs(2),
    )
    .await?;
    eprintln!("a new registry site was served by both nodes after {took:?}");

    let entry = registry.get("reg.fleet.test").await?.unwrap();
    registry
        .update(
            "reg.fleet.test",
            redirect(&["reg.fleet.test"], "https://two.example/"),
            Some(entry.version),
            &env(),
            &none,
        )
        .await?;
    let took = wait_all(
        &nodes,
        "reg.fleet.test",
        (301, Some("https://two.example/")),
        Duration::from_secs(2),
    )
    .await?;
    eprintln!("an edited registry site was served by both nodes after {took:?}");
    wait_all(
        &nodes,
        "www.reg.fleet.test",
        (404, None),
        Duration::from_secs(2),
    )
    .await?;

    // The registry site's certificate comes from the built-in CA on some node; both serve it.
    let root = a.ca_root()?;
    for node in nodes {
        let https = node.https;
        let root = root.clone();
        testkit::wait_for_ok(
            "the registry site's certificate",
            Duration::from_secs(20),
            || common::served_serial(https, "reg.fleet.test", &root),
        )
        .await
        .map_err(|e| e.context(node.log()))?;
    }

    // A registry site naming a domain of a node's file: the file wins, with a warning.
    registry
        .create(
            redirect(&["file.fleet.test"], "https://stolen.example/"),
            &env(),
            &none,
        )
        .await?;
    testkit::wait_for("the conflict warning", Duration::from_secs(5), || async {
        (a.log().contains("the config file wins") && b.log().contains("the config file wins"))
            .then_some(())
    })
    .await?;
    assert_eq!(answer(a.http, "file.fleet.test").await?, (200, None));
    registry.delete("file.fleet.test", None).await?;

    registry.delete("reg.fleet.test", None).await?;
    let took = wait_all(
        &nodes,
        "reg.fleet.test",
        (404, None),
        Duration::from_secs(2),
    )
    .await?;
    eprintln!("a removed registry site stopped being served after {took:?}");
    assert_eq!(answer(b.http, "file.fleet.test").await?, (200, None));
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_during_a_store_outage_serves_registry_sites_from_the_local_copy()
-> anyhow::Result<()> {
    let pg = testkit::Postgres::start().await?;
    let mut node = postgres_node(&pg)?;
    node.start().await?;
    let store: Arc<dyn store::Storage> = Arc::new(store::PostgresStore::connect(&pg.url()).await?);
    let registry = Registry::new(store, "test".into());
    registry
        .create(
            redirect(&["cached.fleet.test"], "https://kept.example/"),
            &env(),
            &HashMap::new(),
        )
        .await?;
    let want = (301, Some("https://kept.example/"));
    wait_all(&[&node], "cached.fleet.test", want, Duration::from_secs(2)).await?;
    assert!(node.data.join("registry.json").is_file());

    node.stop().await?;
    // Frozen, not killed: calls hang until the store's timeout, the worst case for a start.
    pg.pause()?;
    node.start().await?;
    let started = Instant::now();
    wait_all(&[&node], "cached.fleet.test", want, Duration::from_secs(5)).await?;
    eprintln!(
        "restarted with the store frozen: registry site served after {:?}",
        started.elapsed()
    );
    assert_eq!(answer(node.http, "file.fleet.test").await?, (200, None));
    assert!(
        node.log().contains("serving its local copy"),
        "{}",
        node.log()
    );

    // The store comes back: the node catches up without a restart.
    pg.resume()?;
    registry
        .create(
            redirect(&["later.fleet.test"], "https://later.example/"),
            &env(),
            &HashMap::new(),
        )
        .await?;
    let took = wait_all(
        &[&node],
        "later.fleet.test",
        (301, Some("https://later.example/")),
        Duration::from_secs(10),
    )
    .await?;
    eprintln!("after the outage, a new registry site was served after {took:?}");
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_sharing_a_directory_follow_the_registry() -> anyhow::Result<()> {
    let first = tempfile::tempdir()?;
    let data = first.path().join("data");
    let mut a = Node::with_data(
        first,
        data.clone(),
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        FILE_SITE,
    )?;
    let mut b = Node::with_data(
        tempfile::tempdir()?,
        data.clone(),
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        FILE_SITE,
    )?;
    a.spawn()?;
    b.spawn()?;
    a.wait_listening().await?;
    b.wait_listening().await?;
    // Another process on the same directory (the CLI, say): its writes reach the nodes
    // through the directory's change journal.
    let store: Arc<dyn store::Storage> = Arc::new(store::DirStore::open(data)?);
    let registry = Registry::new(store, "test".into());
    registry
        .create(
            redirect(&["dir.fleet.test"], "https://dir.example/"),
            &env(),
            &HashMap::new(),
        )
        .await?;
    let took = wait_all(
        &[&a, &b],
        "dir.fleet.test",
        (301, Some("https://dir.example/")),
        Duration::from_secs(2),
    )
    .await?;
    eprintln!("dir backend: a new registry site was served by both nodes after {took:?}");
    registry.delete("dir.fleet.test", None).await?;
    wait_all(
        &[&a, &b],
        "dir.fleet.test",
        (404, None),
        Duration::from_secs(2),
    )
    .await?;
    a.stop().await?;
    b.stop().await?;
    Ok(())
}
