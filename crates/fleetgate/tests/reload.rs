//! Reloading: certificate files replaced on disk, and the config reloaded on SIGHUP.

mod common;

use std::time::{Duration, Instant};

use common::{Node, served_serial};
use testkit::{LeafKey, Signal};

fn files_site(dir: &std::path::Path) -> String {
    format!(
        "[[site]]\ndomains = [\"shop.fleet.test\"]\ntls = {{ cert = \"{0}/shop.pem\", key = \"{0}/shop.key\" }}\nrespond = {{ status = 200, body = \"shop\" }}\n",
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn replaced_files_are_served_within_two_seconds_and_bad_ones_are_refused()
-> anyhow::Result<()> {
    let files = tempfile::tempdir()?;
    let first = testkit::ca_and_leaf_with(&["shop.fleet.test"], LeafKey::EcdsaP256Sec1)?;
    std::fs::write(files.path().join("shop.pem"), &first.leaf_cert_pem)?;
    std::fs::write(files.path().join("shop.key"), &first.leaf_key_pem)?;
    let mut node = Node::new(
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        &files_site(files.path()),
    )?;
    node.start().await?;
    let https = node.https;
    testkit::wait_for_ok("the first pair", Duration::from_secs(10), || {
        served_serial(https, "shop.fleet.test", &first.ca_pem)
    })
    .await?;

    // A new pair (RSA, PKCS#1 key) from another CA: new handshakes get it within 2 s.
    let second = testkit::ca_and_leaf_with(&["shop.fleet.test"], LeafKey::Rsa2048Pkcs1)?;
    std::fs::write(files.path().join("shop.pem"), &second.leaf_cert_pem)?;
    std::fs::write(files.path().join("shop.key"), &second.leaf_key_pem)?;
    let replaced = Instant::now();
    testkit::wait_for_ok("the replaced pair", Duration::from_secs(2), || {
        served_serial(https, "shop.fleet.test", &second.ca_pem)
    })
    .await
    .map_err(|e| e.context(node.log()))?;
    eprintln!("replaced files served after {:?}", replaced.elapsed());

    // A key that does not match: the old pair stays in service and `certs` says why.
    let third = testkit::ca_and_leaf_with(&["shop.fleet.test"], LeafKey::EcdsaP256Pkcs8)?;
    std::fs::write(files.path().join("shop.key"), &third.leaf_key_pem)?;
    testkit::wait_for(
        "the mismatch to be reported",
        Duration::from_secs(10),
        || async {
            let out = node.command(&["certs"]);
            let table = String::from_utf8_lossy(&out.stdout).into_owned();
            table.contains("does not match").then_some(())
        },
    )
    .await?;
    testkit::wait_for(
        "the running node to refuse the pair",
        Duration::from_secs(10),
        || async { node.log().contains("does not match").then_some(()) },
    )
    .await?;
    let resp = testkit::https_get(https, "shop.fleet.test", &second.ca_pem, "/").await?;
    assert_eq!(resp.status, 200);
    Ok(())
}

const APP: &str = "[[site]]\ndomains = [\"app.fleet.test\"]\ntls = \"internal\"\nrespond = { status = 200, body = \"app\" }\n";
const EXTRA: &str = "[[site]]\ndomains = [\"extra.fleet.test\"]\ntls = \"internal\"\nredirect = { to = \"https://app.fleet.test\" }\n";

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_and_removes_domains_and_keeps_running_on_a_bad_config() -> anyhow::Result<()> {
    let mut node = Node::new(
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        APP,
    )?;
    node.start().await?;
    let root = node.ca_root()?;
    let https = node.https;
    testkit::wait_for_ok("app served", Duration::from_secs(20), || {
        served_serial(https, "app.fleet.test", &root)
    })
    .await?;
    assert!(
        testkit::tls_handshake(https, "extra.fleet.test", &root, &[])
            .await
            .is_err()
    );

    // Add a site: its certificate appears without a restart.
    node.write_config(&format!("{APP}\n{EXTRA}"))?;
    node.signal(Signal::Hup)?;
    testkit::wait_for_ok("extra served after SIGHUP", Duration::from_secs(20), || {
        served_serial(https, "extra.fleet.test", &root)
    })
    .await
    .map_err(|e| e.context(node.log()))?;
    let r = testkit::https_get(https, "extra.fleet.test", &root, "/x").await?;
    assert_eq!(r.status, 301);

    // A broken config is refused; the running one stays.
    node.write_config("[[site]]\ndomains = [\"bad name\"]\n")?;
    node.signal(Signal::Hup)?;
    testkit::wait_for(
        "the rejection in the log",
        Duration::from_secs(10),
        || async { node.log().contains("configuration rejected").then_some(()) },
    )
    .await?;
    served_serial(https, "extra.fleet.test", &root).await?;

    // Remove the site: it stops being served, the other stays.
    node.write_config(APP)?;
    node.signal(Signal::Hup)?;
    testkit::wait_for(
        "extra no longer served",
        Duration::from_secs(20),
        || async {
            testkit::tls_handshake(https, "extra.fleet.test", &root, &[])
                .await
                .is_err()
                .then_some(())
        },
    )
    .await?;
    served_serial(https, "app.fleet.test", &root).await?;
    let r = testkit::http_get(node.http, "extra.fleet.test", "/").await?;
    assert_eq!(r.status, 404);

    let status = node.stop().await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}
