//! Registry sites across a fleet, through the admin API: three nodes behind a round-robin
//! HAProxy, Pebble validating through it, PostgreSQL or Redis shared. 20 sites of 2 domains added
//! through one node's API are served over HTTPS by every node with one ACME order each; a site
//! removed through another node stops being served everywhere within 2 s; an edited redirect
//! target is served by every node within 2 s.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use common::cluster::{Backend, Cluster};
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};

const SITES: usize = 20;

async fn api(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<testkit::HttpResponse> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    let bytes = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(v)?)
        }
        None => Bytes::new(),
    };
    testkit::http_request(addr, req.body(bytes)?).await
}

fn names(site: usize) -> [String; 2] {
    [
        format!("reg{site}.cluster.test"),
        format!("www.reg{site}.cluster.test"),
    ]
}

async fn fleet_serves_registry_sites(cluster: Cluster) -> Result<()> {
    let cluster = &cluster;
    let admin = |i: usize| cluster.admin_addr(i).expect("built with admin()");
    testkit::wait_for_ok("admin APIs up", Duration::from_secs(20), || async move {
        for i in 0..cluster.nodes.len() {
            api(admin(i), Method::GET, "/v1/nodes", None).await?;
        }
        Ok(())
    })
    .await?;

    // 20 sites through node 0's API.
    for site in 0..SITES {
        let spec = json!({
            "domains": names(site),
            "redirect": { "to": "https://main.cluster.test/" },
        });
        let reply = api(admin(0), Method::POST, "/v1/sites", Some(&spec)).await?;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }

    // Every node serves every name over HTTPS, with a certificate chaining to Pebble's root.
    let all: Vec<String> = (0..SITES).flat_map(names).collect();
    let all = &all;
    testkit::wait_for_ok(
        "every node serves every registry name",
        Duration::from_secs(180),
        || async move {
            for node in &cluster.nodes {
                for name in all {
                    common::served_serial(node.https, name, &cluster.root)
                        .await
                        .with_context(|| format!("{name} on {}", node.ip))?;
                }
            }
            Ok(())
        },
    )
    .await
    .with_context(|| cluster.logs())?;
    // One order per site for the whole fleet.
    let issued = cluster.ca_issued_serials();
    assert_eq!(issued.len(), SITES, "certificates issued: {issued:?}");
    // The API agrees: every certificate valid.
    let certs: Value =
        serde_json::from_slice(&api(admin(2), Method::GET, "/v1/certs", None).await?.body)?;
    let certs = certs["certs"].as_array().context("certs")?;
    assert_eq!(certs.len(), SITES);
    assert!(certs.iter().all(|c| c["state"] == "valid"), "{certs:?}");

    // Remove site 0 through node 1: within 2 s no node serves it (HTTP: unknown host).
    let started = Instant::now();
    let reply = api(
        admin(1),
        Method::DELETE,
        "/v1/sites/reg0.cluster.test",
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    testkit::wait_for_ok(
        "site 0 gone from every node",
        Duration::from_secs(2),
        || async move {
            for node in &cluster.nodes {
                let r = testkit::http_get(node.http, "reg0.cluster.test", "/").await?;
                anyhow::ensure!(
                    r.status == StatusCode::NOT_FOUND,
                    "{} still answers {}",
                    node.ip,
                    r.status
                );
            }
            Ok(())
        },
    )
    .await
    .with_context(|| cluster.logs())?;
    let removed_after = started.elapsed();

    // Edit site 1's redirect through node 2: within 2 s every node redirects to the new target.
    let started = Instant::now();
    let spec = json!({
        "domains": names(1),
        "redirect": { "to": "https://edited.cluster.test/" },
    });
    let reply = api(
        admin(2),
        Method::PUT,
        "/v1/sites/reg1.cluster.test",
        Some(&spec),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    testkit::wait_for_ok(
        "the edit on every node",
        Duration::from_secs(2),
        || async move {
            for node in &cluster.nodes {
                let r =
                    testkit::https_get(node.https, "reg1.cluster.test", &cluster.root, "/").await?;
                let location = r.header("location").unwrap_or_default();
                anyhow::ensure!(
                    location.starts_with("https://edited.cluster.test/"),
                    "{} still redirects to {location:?}",
                    node.ip
                );
            }
            Ok(())
        },
    )
    .await
    .with_context(|| cluster.logs())?;
    let edited_after = started.elapsed();
    eprintln!("removal served everywhere after {removed_after:?}, edit after {edited_after:?}");
    // The other names kept their certificates: still one order per site.
    assert_eq!(cluster.ca_issued_serials().len(), SITES);

    // Renew site 2 now, through node 1: one new order for the fleet, served by every node.
    let name = "reg2.cluster.test";
    let before = common::served_serial(cluster.nodes[0].https, name, &cluster.root).await?;
    let reply = api(
        admin(1),
        Method::POST,
        "/v1/certs/reg2.cluster.test/renew",
        None,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let before = &before;
    testkit::wait_for_ok(
        "every node serves the renewed certificate",
        Duration::from_secs(60),
        || async move {
            for node in &cluster.nodes {
                let serial = common::served_serial(node.https, name, &cluster.root).await?;
                anyhow::ensure!(serial != *before, "{} still serves {serial}", node.ip);
            }
            Ok(())
        },
    )
    .await
    .with_context(|| cluster.logs())?;
    assert_eq!(cluster.ca_issued_serials().len(), SITES + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_with_postgres_serve_sites_added_through_the_api() -> Result<()> {
    let pg = testkit::Postgres::start().await?;
    let cluster = Cluster::builder()
        .backend(Backend::Postgres(pg.url()))
        .sites(0, 2)
        .admin()
        .start()
        .await?;
    fleet_serves_registry_sites(cluster).await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_with_redis_serve_sites_added_through_the_api() -> Result<()> {
    let redis = testkit::RedisServer::start().await?;
    let cluster = Cluster::builder()
        .backend(Backend::Redis(redis.url()))
        .sites(0, 2)
        .admin()
        .start()
        .await?;
    fleet_serves_registry_sites(cluster).await
}
