//! Purchased certificates as an operator meets them (issue 13): a config file naming certificate
//! files, and the `fleetgate` binary. Wrong name, expired, not yet valid, a key of another
//! certificate, a leaf without its chain, missing files — through `fleetgate check` (exit
//! status, `file:line: site[0].tls: ...`), `fleetgate run` (files replaced under a running
//! node: refused, the previous certificate still served, checked over TLS) and SIGHUP (the
//! reloaded config refused for the same reasons, the previous certificate still served).

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{Node, served_serial};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use testkit::Signal;

const DEADLINE: Duration = Duration::from_secs(20);
const SHOP: [&str; 2] = ["shop.fleet.test", "www.shop.fleet.test"];

/// A certificate vendor: a testkit CA signing leaves with chosen names and dates.
struct Vendor {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate file's and a key file's contents.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
}

impl Vendor {
    fn new() -> Result<Vendor> {
        let pki = testkit::ca_and_leaf_with(&["vendor.test"], testkit::LeafKey::default())?;
        Ok(Vendor {
            issuer: pki.issuer()?,
            ca_pem: pki.ca_pem,
        })
    }

    /// A leaf alone for `names`, valid from `from_days` to `until_days` (relative to now).
    fn leaf(&self, names: &[&str], from_days: i64, until_days: i64) -> Result<Pair> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, *names.first().context("a name")?);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = std::time::SystemTime::now();
        let day = |d: i64| Duration::from_secs(d.unsigned_abs() * 86_400);
        params.not_before = if from_days < 0 {
            now - day(from_days)
        } else {
            now + day(from_days)
        }
        .into();
        params.not_after = if until_days < 0 {
            now - day(until_days)
        } else {
            now + day(until_days)
        }
        .into();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Like [`Vendor::leaf`], with the vendor's CA certificate after the leaf (a full chain).
    fn chain(&self, names: &[&str], from_days: i64, until_days: i64) -> Result<Pair> {
        let pair = self.leaf(names, from_days, until_days)?;
        Ok(Pair {
            cert: format!("{}{}", pair.cert, self.ca_pem),
            key: pair.key,
        })
    }
}

fn write_pair(dir: &Path, stem: &str, pair: &Pair) -> Result<()> {
    std::fs::write(dir.join(format!("{stem}.pem")), &pair.cert)?;
    std::fs::write(dir.join(format!("{stem}.key")), &pair.key)?;
    Ok(())
}

/// A `[[site]]` for `domains` whose certificate is `dir/stem.pem` + `dir/stem.key`.
fn files_site(dir: &Path, stem: &str, domains: &[&str]) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
    format!(
        "[[site]]\ndomains = [{}]\nrespond = {{ status = 200, body = \"shop\" }}\ntls = {{ cert = \"{1}/{stem}.pem\", key = \"{1}/{stem}.key\" }}\n",
        domains.join(", "),
        dir.display()
    )
}

/// The 1-based line of the first `tls = ` key in the config file, as an operator would find it.
fn tls_line(config: &Path, nth: usize) -> Result<usize> {
    let text = std::fs::read_to_string(config)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("tls ="))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .context("no tls key in the config")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_refuses_each_unservable_certificate_with_the_line_of_its_tls_key() -> Result<()> {
    let vendor = Vendor::new()?;
    let files = tempfile::tempdir()?;
    let good = vendor.chain(&SHOP, -1, 90)?;
    let other = vendor.chain(&SHOP, -1, 90)?;
    // (case, files, what stderr's first line says after `file:line: site[0].tls: `)
    let cases: Vec<(&str, Option<Pair>, &str)> = vec![
        (
            "wrong name",
            Some(vendor.chain(&["www.other.test"], -1, 90)?),
            "the certificate does not cover shop.fleet.test",
        ),
        (
            "expired",
            Some(vendor.chain(&SHOP, -400, -30)?),
            "the certificate expired on ",
        ),
        (
            "not yet valid",
            Some(vendor.chain(&SHOP, 10, 100)?),
            "the certificate is not valid before ",
        ),
        (
            "mismatched key",
            Some(Pair {
                cert: good.cert.clone(),
                key: other.key.clone(),
            }),
            "the private key ",
        ),
        ("missing files", None, "cannot read "),
    ];
    for (case, pair, says) in cases {
        let stem = case.replace(' ', "-");
        if let Some(pair) = &pair {
            write_pair(files.path(), &stem, pair)?;
        }
        let node = Node::new(
            testkit::loopback_ip(),
            testkit::free_port(),
            testkit::free_port(),
            &files_site(files.path(), &stem, &SHOP),
        )?;
        let out = node.command(&["check"]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{case}: {stdout}{stderr}");
        let prefix = format!(
            "{}:{}: site[0].tls: ",
            node.config_path.display(),
            tls_line(&node.config_path, 0)?
        );
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("{prefix}{says}")),
            "{case}: expected {prefix}{says}..., got:\n{stderr}"
        );
        // Errors come before anything else: a refused config is not listed as OK.
        assert!(!stdout.contains("OK"), "{case}: {stdout}");
        eprintln!("{case}: {first}");
    }

    // A leaf without its intermediate: served, with a warning that says what to append.
    write_pair(files.path(), "chainless", &vendor.leaf(&SHOP, -1, 90)?)?;
    let node = Node::new(
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        &files_site(files.path(), "chainless", &SHOP),
    )?;
    let out = node.command(&["check"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let warning = format!(
        "warning: {}:{}: site[0].tls: the chain is incomplete",
        node.config_path.display(),
        tls_line(&node.config_path, 0)?
    );
    assert!(stderr.starts_with(&warning), "{stderr}");
    assert!(
        stdout.starts_with(&format!("{}: OK", node.config_path.display())),
        "{stdout}"
    );

    // A full chain for every domain: OK, nothing on stderr.
    write_pair(files.path(), "good", &good)?;
    let node = Node::new(
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        &files_site(files.path(), "good", &SHOP),
    )?;
    let out = node.command(&["check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");

    // The second site's finding names the second site and its own line.
    let body = format!(
        "{}\n{}",
        files_site(files.path(), "good", &SHOP),
        files_site(files.path(), "expired", &["old.fleet.test"])
    );
    write_pair(
        files.path(),
        "expired",
        &vendor.chain(&["old.fleet.test"], -400, -30)?,
    )?;
    node.write_config(&body)?;
    let out = node.command(&["check"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let prefix = format!(
        "{}:{}: site[1].tls: the certificate expired on ",
        node.config_path.display(),
        tls_line(&node.config_path, 1)?
    );
    assert!(stderr.starts_with(&prefix), "{stderr}");
    Ok(())
}

/// The part of the node's log written after `from` bytes.
fn log_since(node: &Node, from: usize) -> String {
    let log = node.log();
    log.get(from..).unwrap_or_default().to_string()
}

/// Wait until the log written after `from` has a line containing every one of `needles`.
async fn wait_log_line(node: &Node, from: usize, needles: &[&str], what: &str) -> Result<()> {
    testkit::wait_for(what, DEADLINE, || async {
        log_since(node, from)
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
            .then_some(())
    })
    .await
    .with_context(|| log_since(node, from))
}

#[tokio::test(flavor = "multi_thread")]
async fn run_and_sighup_refuse_unservable_certificates_and_keep_serving_the_previous() -> Result<()>
{
    let vendor = Vendor::new()?;
    let files = tempfile::tempdir()?;
    let good = vendor.chain(&SHOP, -1, 90)?;
    write_pair(files.path(), "shop", &good)?;
    // A second site whose purchased certificate expired before the node ever served it.
    write_pair(
        files.path(),
        "old",
        &vendor.chain(&["old.fleet.test"], -400, -30)?,
    )?;
    let shop_site = files_site(files.path(), "shop", &SHOP);
    let body = format!(
        "{shop_site}\n{}",
        files_site(files.path(), "old", &["old.fleet.test"])
    );
    let mut node = Node::new(
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        &body,
    )?;
    node.start().await?;
    let https = node.https;
    let ca = vendor.ca_pem.clone();
    let serial = testkit::wait_for_ok("the purchased certificate", DEADLINE, || {
        served_serial(https, "www.shop.fleet.test", &ca)
    })
    .await
    .with_context(|| node.log())?;
    assert_eq!(served_serial(https, "shop.fleet.test", &ca).await?, serial);
    // Nothing was ever served for the expired one, and the log says why.
    wait_log_line(
        &node,
        0,
        &["cert=old.fleet.test", "refused", "expired on"],
        "the expired certificate refused at start",
    )
    .await?;
    assert!(
        testkit::tls_handshake(https, "old.fleet.test", &ca, &[])
            .await
            .is_err(),
        "an expired purchased certificate must not be served"
    );

    // Files replaced under the running node: each refused, the previous pair still served.
    let replacements: Vec<(&str, Option<Pair>, &str)> = vec![
        (
            "wrong name",
            Some(vendor.chain(&["www.other.test"], -1, 90)?),
            "does not cover shop.fleet.test",
        ),
        (
            "expired",
            Some(vendor.chain(&SHOP, -400, -30)?),
            "expired on",
        ),
        (
            "not yet valid",
            Some(vendor.chain(&SHOP, 10, 100)?),
            "not valid before",
        ),
        (
            "mismatched key",
            Some(Pair {
                cert: good.cert.clone(),
                key: vendor.chain(&SHOP, -1, 90)?.key,
            }),
            "does not match",
        ),
        ("missing files", None, "cannot read"),
    ];
    for (case, pair, says) in replacements {
        let from = node.log().len();
        match &pair {
            Some(pair) => write_pair(files.path(), "shop", pair)?,
            None => {
                std::fs::remove_file(files.path().join("shop.pem"))?;
                std::fs::remove_file(files.path().join("shop.key"))?;
            }
        }
        wait_log_line(
            &node,
            from,
            &["cert=shop.fleet.test", "refused", says],
            &format!("{case}: the running node to refuse the files"),
        )
        .await?;
        for name in SHOP {
            assert_eq!(
                served_serial(https, name, &ca).await?,
                serial,
                "{case}: the previous certificate must stay in service for {name}"
            );
        }
        eprintln!("run, {case}: refused, previous still served");
    }
    let from = node.log().len();
    write_pair(files.path(), "shop", &good)?;
    wait_log_line(
        &node,
        from,
        &["cert=shop.fleet.test", "certificate files accepted"],
        "the good files accepted again",
    )
    .await?;

    // SIGHUP with a config `check` refuses: refused for the same reason, previous served.
    write_pair(
        files.path(),
        "wrongname",
        &vendor.chain(&["www.other.test"], -1, 90)?,
    )?;
    write_pair(files.path(), "expired", &vendor.chain(&SHOP, -400, -30)?)?;
    std::fs::write(files.path().join("nokey.pem"), &good.cert)?;
    for (stem, says) in [
        ("nokey", "cannot read"),
        ("wrongname", "does not cover shop.fleet.test"),
        ("expired", "expired on"),
    ] {
        node.write_config(&files_site(files.path(), stem, &SHOP))?;
        let check = node.command(&["check"]);
        assert_eq!(check.status.code(), Some(1), "{}", text(&check.stderr));
        let placed = format!(
            "{}:{}: site[0].tls: ",
            node.config_path.display(),
            tls_line(&node.config_path, 0)?
        );
        assert!(
            text(&check.stderr).contains(placed.as_str()),
            "{}",
            text(&check.stderr)
        );
        let from = node.log().len();
        node.signal(Signal::Hup)?;
        wait_log_line(
            &node,
            from,
            &["certificate refused", &placed, says],
            &format!("SIGHUP with {stem}: the finding logged with file:line"),
        )
        .await?;
        wait_log_line(
            &node,
            from,
            &["configuration rejected"],
            &format!("SIGHUP with {stem}: the reload refused"),
        )
        .await?;
        assert_eq!(served_serial(https, "shop.fleet.test", &ca).await?, serial);
        eprintln!("SIGHUP, {stem}: refused, previous still served");
    }

    // A good config reloads: the refused reloads left the reload path working.
    node.write_config(&shop_site)?;
    let from = node.log().len();
    node.signal(Signal::Hup)?;
    wait_log_line(&node, from, &["configuration reloaded"], "the good reload").await?;
    assert_eq!(served_serial(https, "shop.fleet.test", &ca).await?, serial);
    let status = node.stop().await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[test]
fn a_registry_site_with_unservable_files_is_refused_naming_tls() -> Result<()> {
    let vendor = Vendor::new()?;
    let files = tempfile::tempdir()?;
    write_pair(files.path(), "expired", &vendor.chain(&SHOP, -400, -30)?)?;
    write_pair(files.path(), "good", &vendor.chain(&SHOP, -1, 90)?)?;
    let node = Node::new(
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        "",
    )?;
    let spec = |stem: &str| -> Result<std::path::PathBuf> {
        let path = node.path(&format!("{stem}.json"));
        let json = serde_json::json!({
            "domains": SHOP,
            "respond": { "status": 200 },
            "tls": {
                "cert": files.path().join(format!("{stem}.pem")),
                "key": files.path().join(format!("{stem}.key")),
            },
        });
        std::fs::write(&path, serde_json::to_vec(&json)?)?;
        Ok(path)
    };
    let expired = spec("expired")?;
    let out = node.command(&[
        "sites",
        "add",
        "--from-json",
        &expired.display().to_string(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tls: the certificate expired on "),
        "{stderr}"
    );
    let listed = text(&node.command(&["sites", "list"]).stdout);
    assert!(!listed.contains("shop.fleet.test"), "{listed}");

    let good = spec("good")?;
    let out = node.command(&["sites", "add", "--from-json", &good.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&node.command(&["sites", "list"]).stdout);
    assert!(listed.contains("shop.fleet.test"), "{listed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_refuses_unservable_files_with_a_problem_naming_tls() -> Result<()> {
    let vendor = Vendor::new()?;
    let files = tempfile::tempdir()?;
    write_pair(
        files.path(),
        "wrongname",
        &vendor.chain(&["www.other.test"], -1, 90)?,
    )?;
    let admin = testkit::free_addr(testkit::loopback_ip());
    let mut node = Node::new(
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        &format!("[admin]\nlisten = \"{admin}\"\n"),
    )?;
    node.start().await?;
    let spec = serde_json::json!({
        "domains": SHOP,
        "respond": { "status": 200 },
        "tls": {
            "cert": files.path().join("wrongname.pem"),
            "key": files.path().join("wrongname.key"),
        },
    });
    let request = http::Request::post("/v1/sites")
        .header("host", admin.to_string())
        .header("content-type", "application/json")
        .body(bytes::Bytes::from(serde_json::to_vec(&spec)?))?;
    let reply = testkit::wait_for_ok("the admin API", DEADLINE, || {
        testkit::http_request(admin, request.clone())
    })
    .await
    .with_context(|| node.log())?;
    assert_eq!(reply.status.as_u16(), 422, "{}", reply.text());
    let problem: serde_json::Value = serde_json::from_slice(&reply.body)?;
    assert_eq!(problem["field"], "/tls", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("does not cover shop.fleet.test")),
        "{problem}"
    );
    node.stop().await?;
    Ok(())
}
