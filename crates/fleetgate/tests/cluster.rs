//! The cluster, end to end: three fleetgate processes sharing one store behind a real round-robin
//! HAProxy, Pebble validating through the balancer (three validation requests per challenge, each
//! a new connection, so they land on different nodes). The harness is `common::cluster`.

mod common;

use common::cluster::{Backend, Cluster, check_cluster};

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_a_directory_behind_haproxy_http01() -> anyhow::Result<()> {
    let cluster = Cluster::builder().challenge("http-01").start().await?;
    check_cluster(&cluster).await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_a_directory_behind_haproxy_tls_alpn01() -> anyhow::Result<()> {
    let cluster = Cluster::builder().challenge("tls-alpn-01").start().await?;
    check_cluster(&cluster).await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_postgres_behind_haproxy() -> anyhow::Result<()> {
    // As in production: the database over verified TLS, and the PROXY protocol from the
    // balancer (HTTP-01 validations carry a v1 header).
    let pg = testkit::Postgres::start_tls().await?;
    let root = tempfile::NamedTempFile::new()?;
    std::fs::write(root.path(), pg.tls_root().unwrap_or_default())?;
    let cluster = Cluster::builder()
        .backend(Backend::Postgres(format!("{}?sslmode=require", pg.url())))
        .storage_ca_root(root.path())
        .proxy_protocol()
        .start()
        .await?;
    check_cluster(&cluster).await?;
    // Each node writes its first heartbeat a second after it starts: `status` lists all three
    // once they have.
    testkit::wait_for_ok(
        "fleetgate status listing three nodes up",
        std::time::Duration::from_secs(20),
        || async {
            let status = cluster.nodes[0].command(&["status"]);
            let text = String::from_utf8_lossy(&status.stdout);
            anyhow::ensure!(
                status.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&status.stderr)
            );
            anyhow::ensure!(text.matches(" up ").count() == 3, "{text}");
            Ok(())
        },
    )
    .await?;
    let check = cluster.nodes[0].command(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains(&format!(
            "storage: postgres, TLS verified against {}",
            root.path().display()
        )),
        "{text}"
    );
    // Every connection the nodes hold to the database is TLS.
    let tls = pg.role_connections_tls().await?;
    anyhow::ensure!(!tls.is_empty() && tls.iter().all(|&t| t), "{tls:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_redis_behind_haproxy() -> anyhow::Result<()> {
    // Redis over verified TLS (rediss://), and the PROXY protocol from the balancer (TLS-ALPN-01
    // handshakes follow a v2 header).
    let redis = testkit::RedisServer::builder().tls(true).start().await?;
    let root = tempfile::NamedTempFile::new()?;
    std::fs::write(root.path(), redis.tls_root().unwrap_or_default())?;
    let cluster = Cluster::builder()
        .challenge("tls-alpn-01")
        .backend(Backend::Redis(redis.tls_url().unwrap_or_default()))
        .storage_ca_root(root.path())
        .proxy_protocol()
        .start()
        .await?;
    check_cluster(&cluster).await
}
