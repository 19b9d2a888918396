//! A rolling change in a cluster: one node's config file lists a new site, the others do not
//! yet. Pebble validates through the round-robin balancer, so its requests reach the nodes that
//! do not list the name; they answer from the store all the same (issue 12, "challenges for any
//! host"), and the certificate is issued on the first attempt.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, wait_served};

/// The new site's name.
const NEW: &str = "rolling.cluster.test";

async fn new_site_on_one_node(challenge: &str) -> anyhow::Result<()> {
    let cluster = Cluster::builder()
        .challenge(challenge)
        .sites(1, 1)
        .start()
        .await?;
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    wait_served(
        &cluster,
        &all,
        &cluster.names(),
        &cluster.root,
        Duration::from_secs(120),
    )
    .await?;

    cluster.add_site_to(0, &[NEW])?;
    let new = [NEW.to_string()];
    let failed = async {
        loop {
            let failures = cluster.log_lines(&["obtaining the certificate failed"]);
            if !failures.is_empty() {
                return failures;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        served = wait_served(&cluster, &[0], &new, &cluster.root, Duration::from_secs(120)) => {
            served?;
        }
        failures = failed => anyhow::bail!(
            "the new site's certificate failed on its first attempt:\n{}\n\nlogs:\n{}",
            failures.join("\n"),
            cluster.logs()
        ),
    }
    // Its three validations went through the balancer, so to the other nodes too.
    let issued = cluster.log_lines(&["certificate issued", NEW]);
    assert_eq!(issued.len(), 1, "one certificate for {NEW}: {issued:?}");
    assert_eq!(
        cluster.ca_issued_serials().len(),
        2,
        "one order finalized per certificate"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_on_one_node_only_is_validated_through_every_node_http01() -> anyhow::Result<()> {
    new_site_on_one_node("http-01").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_on_one_node_only_is_validated_through_every_node_tls_alpn01() -> anyhow::Result<()>
{
    new_site_on_one_node("tls-alpn-01").await
}
