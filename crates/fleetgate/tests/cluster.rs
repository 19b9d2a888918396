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
    let pg = testkit::Postgres::start().await?;
    // Through the PROXY protocol here (HTTP-01 validations carry a v1 header).
    let cluster = Cluster::builder()
        .backend(Backend::Postgres(pg.url()))
        .proxy_protocol()
        .start()
        .await?;
    check_cluster(&cluster).await?;
    let status = cluster.nodes[0].command(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(text.matches(" up ").count(), 3, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_redis_behind_haproxy() -> anyhow::Result<()> {
    let redis = testkit::RedisServer::start().await?;
    // Through the PROXY protocol here (TLS-ALPN-01 handshakes follow a v2 header).
    let cluster = Cluster::builder()
        .challenge("tls-alpn-01")
        .backend(Backend::Redis(redis.url()))
        .proxy_protocol()
        .start()
        .await?;
    check_cluster(&cluster).await
}
