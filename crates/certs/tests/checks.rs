//! The one certificate check (`certs::inspect::check_certificate`) and the places it guards:
//! `files::check` (what `fleetgate check` and a reload call), the files source of the manager
//! (the previous pair stays served, a standing problem is logged once), and certificates read
//! from the store (an unusable one is replaced, never deployed).
//!
//! Certificates are made with rcgen under a testkit CA: wrong name, expired, not yet valid, a key
//! of another certificate, a leaf without its chain, missing files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use certs::inspect::{self, ChainGap, Finding, Part, Severity};
use certs::{
    CertBundle, CertId, CertSource, CertState, Deployer, DomainName, KeyType, LiveStatus,
    ManagedCert, Manager, SourceKind, Timings, files,
};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls::sign::CertifiedKey;
use store::{DirStore, Storage};

const DEADLINE: Duration = Duration::from_secs(20);

/// A certificate vendor: a testkit CA that signs leaves with chosen names and dates.
struct Vendor {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Vendor {
    fn new() -> Result<Self> {
        let pki = testkit::ca_and_leaf_with(&["vendor.test"], testkit::LeafKey::default())?;
        let issuer = pki.issuer()?;
        Ok(Vendor {
            ca_pem: pki.ca_pem,
            issuer,
        })
    }

    /// A leaf alone for `names`, valid from `from_days` to `until_days` (relative to now):
    /// `(leaf PEM, key PEM)`.
    fn leaf(&self, names: &[&str], from_days: i64, until_days: i64) -> Result<(String, String)> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, *names.first().context("a name")?);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from_days);
        params.not_after = now + time::Duration::days(until_days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Like [`Vendor::leaf`], with the vendor's CA certificate after the leaf (a full chain).
    fn chain(&self, names: &[&str], from_days: i64, until_days: i64) -> Result<(String, String)> {
        let (leaf, key) = self.leaf(names, from_days, until_days)?;
        Ok((format!("{leaf}{}", self.ca_pem), key))
    }

    /// A valid full chain for `names` (90 days).
    fn good(&self, names: &[&str]) -> Result<(String, String)> {
        self.chain(names, -1, 90)
    }
}

fn domains(names: &[&str]) -> Result<Vec<DomainName>> {
    Ok(names
        .iter()
        .map(|n| DomainName::parse(n))
        .collect::<Result<_, _>>()?)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

const SHOP: [&str; 2] = ["shop.example.com", "www.shop.example.com"];

#[test]
fn a_good_chain_has_no_findings() -> Result<()> {
    let vendor = Vendor::new()?;
    let (chain, key) = vendor.good(&SHOP)?;
    let report = certs::check_certificate(&chain, &key, &domains(&SHOP)?, now());
    assert_eq!(report.findings, [], "{report:?}");
    assert!(!report.is_fatal());
    let leaf = report.leaf.context("leaf summary")?;
    assert_eq!(leaf.names, SHOP);
    Ok(())
}

#[test]
fn each_finding_with_its_severity() -> Result<()> {
    let vendor = Vendor::new()?;
    let want = domains(&SHOP)?;
    let now = now();
    let check = |(chain, key): (String, String)| certs::check_certificate(&chain, &key, &want, now);

    // A purchased certificate for another name.
    let report = check(vendor.good(&["shop.example.net"])?);
    assert_eq!(
        report.fatal().cloned().collect::<Vec<_>>(),
        [
            Finding::NameNotCovered {
                domain: DomainName::parse("shop.example.com")?
            },
            Finding::NameNotCovered {
                domain: DomainName::parse("www.shop.example.com")?
            },
        ]
    );
    assert!(report.is_fatal());
    assert!(
        report
            .fatal_summary()
            .is_some_and(|s| s.contains("does not cover shop.example.com")),
        "{report:?}"
    );
    // Covering only some of the site's names is as bad.
    let report = check(vendor.good(&["shop.example.com"])?);
    assert_eq!(
        report.fatal().cloned().collect::<Vec<_>>(),
        [Finding::NameNotCovered {
            domain: DomainName::parse("www.shop.example.com")?
        }]
    );

    // Expired (in 2021, say) and not yet valid.
    let report = check(vendor.chain(&SHOP, -400, -30)?);
    assert!(
        matches!(report.findings.as_slice(), [Finding::Expired { not_after }] if *not_after < now),
        "{report:?}"
    );
    assert!(report.is_fatal() && !report.only_time_stands_in_the_way());
    assert!(report.findings[0].to_string().contains("expired on"));
    let report = check(vendor.chain(&SHOP, 2, 90)?);
    assert!(
        matches!(report.findings.as_slice(), [Finding::NotYetValid { not_before }] if *not_before > now),
        "{report:?}"
    );
    assert!(report.is_fatal() && report.only_time_stands_in_the_way());

    // The key of another certificate.
    let (chain, _) = vendor.good(&SHOP)?;
    let (_, other_key) = vendor.good(&SHOP)?;
    let report = check((chain, other_key));
    assert_eq!(report.findings, [Finding::KeyMismatch { key_path: None }]);
    assert_eq!(report.findings[0].severity(), Severity::Fatal);

    // A leaf without its intermediate: served, with a warning.
    let report = check(vendor.leaf(&SHOP, -1, 90)?);
    assert!(!report.is_fatal(), "{report:?}");
    match report.findings.as_slice() {
        [
            finding @ Finding::ChainIncomplete {
                gap: ChainGap::NoIntermediate { issuer },
            },
        ] => {
            assert!(issuer.contains("testkit CA"), "{issuer}");
            assert_eq!(finding.severity(), Severity::Warning);
            assert!(finding.to_string().contains("intermediate"), "{finding}");
        }
        other => bail!("expected ChainIncomplete, got {other:?}"),
    }
    // A chain whose second certificate is not the leaf's issuer.
    let stranger = Vendor::new()?;
    let (leaf, key) = vendor.leaf(&SHOP, -1, 90)?;
    let report = check((format!("{leaf}{}", stranger.ca_pem), key));
    assert!(
        matches!(
            report.findings.as_slice(),
            [Finding::ChainIncomplete {
                gap: ChainGap::Unlinked { position: 0, .. }
            }]
        ),
        "{report:?}"
    );

    // Expiring soon: a warning.
    let report = check(vendor.chain(&SHOP, -80, 5)?);
    assert!(!report.is_fatal());
    assert!(
        matches!(
            report.findings.as_slice(),
            [Finding::ExpiresSoon {
                days_left: 4 | 5,
                ..
            }]
        ),
        "{report:?}"
    );

    // Unparsable parts; the other checks still run on what parses.
    let (chain, key) = vendor.good(&["shop.example.net"])?;
    let report = check((chain, "not a key".into()));
    assert!(
        report.findings.contains(&Finding::NameNotCovered {
            domain: DomainName::parse("shop.example.com")?
        }),
        "{report:?}"
    );
    assert!(
        report.findings.iter().any(|f| matches!(
            f,
            Finding::Unparsable {
                part: Part::Key,
                path: None,
                ..
            }
        )),
        "{report:?}"
    );
    let report = check(("garbage".into(), key));
    assert!(
        matches!(
            report.findings.as_slice(),
            [Finding::Unparsable {
                part: Part::Certificate,
                ..
            }]
        ),
        "{report:?}"
    );
    Ok(())
}

#[test]
fn wildcards_cover_exactly_one_label() -> Result<()> {
    let vendor = Vendor::new()?;
    let (chain, key) = vendor.good(&["*.example.com"])?;
    let check = |names: &[&str]| -> Result<Vec<Finding>> {
        Ok(certs::check_certificate(&chain, &key, &domains(names)?, now()).findings)
    };
    assert_eq!(check(&["a.example.com", "www.example.com"])?, []);
    for uncovered in ["example.com", "a.b.example.com", "a.example.org"] {
        assert_eq!(
            check(&["a.example.com", uncovered])?,
            [Finding::NameNotCovered {
                domain: DomainName::parse(uncovered)?
            }],
            "{uncovered}"
        );
    }
    // A wildcard site needs the wildcard itself.
    assert_eq!(check(&["*.example.com"])?, []);
    let (chain, key) = vendor.good(&["a.example.com"])?;
    assert!(
        certs::check_certificate(&chain, &key, &domains(&["*.example.com"])?, now()).is_fatal()
    );
    Ok(())
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Result<Self> {
        Ok(Dir(tempfile::tempdir()?))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Replace `name` by rename, as deployment tools do (a new inode, so a new stamp).
    fn replace(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        fs::write(&tmp, contents)?;
        fs::rename(&tmp, &path)?;
        Ok(path)
    }

    fn pair(&self, (chain, key): &(String, String)) -> Result<(PathBuf, PathBuf)> {
        Ok((
            self.replace("site.crt", chain)?,
            self.replace("site.key", key)?,
        ))
    }
}

#[test]
fn files_check_names_the_file_at_fault() -> Result<()> {
    let vendor = Vendor::new()?;
    let dir = Dir::new()?;
    let want = domains(&SHOP)?;
    let (cert, key) = dir.pair(&vendor.good(&SHOP)?)?;
    assert_eq!(files::check(&cert, &key, &want, now()).findings, []);

    // Missing files: each is named; the certificate's own checks still run.
    let missing = dir.path("missing.key");
    let report = files::check(&cert, &missing, &want, now());
    assert!(
        matches!(report.findings.as_slice(), [Finding::Unreadable { path, .. }] if *path == missing),
        "{report:?}"
    );
    let (wrong_name, _) = dir.pair(&vendor.good(&["other.example.com"])?)?;
    let report = files::check(&wrong_name, &missing, &want, now());
    assert_eq!(report.fatal().count(), 3, "{report:?}");
    let report = files::check(
        &dir.path("missing.crt"),
        &dir.path("missing.key"),
        &want,
        now(),
    );
    assert_eq!(report.findings.len(), 2, "{report:?}");
    assert!(
        report
            .fatal_summary()
            .is_some_and(|s| s.contains("missing.crt")
                && s.contains("missing.key")
                && s.contains("No such file")),
        "{report:?}"
    );

    // A key of another certificate names the key file; garbage names its file.
    let (chain, _) = vendor.good(&SHOP)?;
    let (_, other_key) = vendor.good(&SHOP)?;
    let (cert, key) = dir.pair(&(chain, other_key))?;
    assert_eq!(
        files::check(&cert, &key, &want, now()).findings,
        [Finding::KeyMismatch {
            key_path: Some(key.clone())
        }]
    );
    let garbage = dir.replace("garbage.crt", "not PEM\n")?;
    let report = files::check(&garbage, &key, &want, now());
    assert!(
        matches!(report.findings.as_slice(), [Finding::Unparsable { part: Part::Certificate, path: Some(p), .. }] if *p == garbage),
        "{report:?}"
    );
    // Not text at all.
    let binary = dir.path("binary.key");
    fs::write(&binary, [0xff, 0xfe, 0x00])?;
    let report = files::check(&cert, &binary, &want, now());
    assert!(
        matches!(report.findings.as_slice(), [Finding::Unparsable { part: Part::Key, path: Some(p), .. }] if *p == binary),
        "{report:?}"
    );
    // The error form carries the fatal findings and names the certificate file.
    let err = report.to_error(Some(garbage.clone()));
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("garbage.crt"), "{err}");
    Ok(())
}

/// The serving side, recorded: what is served for each certificate id.
#[derive(Default)]
struct Served(Mutex<Vec<(CertId, Arc<CertifiedKey>)>>);

impl Served {
    /// The leaf (DER) currently served for `id`.
    fn leaf(&self, id: &str) -> Option<Vec<u8>> {
        let deployed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        deployed
            .iter()
            .rev()
            .find(|(i, _)| i == id)
            .and_then(|(_, key)| key.cert.first().map(|c| c.as_ref().to_vec()))
    }

    fn all_leaves(&self) -> Vec<Vec<u8>> {
        let deployed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        deployed
            .iter()
            .filter_map(|(_, key)| key.cert.first().map(|c| c.as_ref().to_vec()))
            .collect()
    }
}

struct Recorder(Arc<Served>);

impl Deployer for Recorder {
    fn deploy(&self, id: &CertId, _names: &[DomainName], key: Arc<CertifiedKey>) {
        let mut deployed = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        deployed.push((id.clone(), key));
    }
    fn retract(&self, id: &CertId) {
        let mut deployed = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        deployed.retain(|(i, _)| i != id);
    }
}

fn leaf_der(chain_pem: &str) -> Result<Vec<u8>> {
    Ok(testkit::pem_certs(chain_pem)?
        .first()
        .context("a leaf")?
        .as_ref()
        .to_vec())
}

struct Node {
    manager: Arc<Manager>,
    served: Arc<Served>,
    store: Arc<dyn Storage>,
    _store_dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Result<Node> {
        let store_dir = tempfile::tempdir()?;
        let store: Arc<dyn Storage> = Arc::new(DirStore::open(store_dir.path())?);
        let served = Arc::new(Served::default());
        let timings = Timings {
            file_poll: Duration::from_millis(20),
            ..Timings::default()
        };
        let manager = Manager::with_cache(
            store.clone(),
            None,
            Arc::new(Recorder(served.clone())),
            "node-a".into(),
            timings,
        );
        Ok(Node {
            manager,
            served,
            store,
            _store_dir: store_dir,
        })
    }

    fn live(&self, id: &str) -> Result<LiveStatus> {
        self.manager.live_status(id).context("no such certificate")
    }

    /// Wait until the task has looked at its source `more` more times than now.
    async fn looks_past(&self, id: &str, more: u64) -> Result<LiveStatus> {
        let start = self.live(id)?.looks;
        testkit::wait_for("more looks at the files", DEADLINE, || async {
            self.live(id).ok().filter(|l| l.looks >= start + more)
        })
        .await
    }

    /// Wait until a certificate is refused with a message containing `needle`.
    async fn refused_with(&self, id: &str, needle: &str) -> Result<LiveStatus> {
        testkit::wait_for_ok(
            &format!("a refusal saying {needle:?}"),
            DEADLINE,
            || async {
                let live = self.live(id)?;
                match &live.last_error {
                    Some(e) if e.contains(needle) => Ok(live),
                    other => bail!("last error {other:?}"),
                }
            },
        )
        .await
    }

    async fn serving(&self, id: &str, leaf: &[u8]) -> Result<()> {
        testkit::wait_for("the certificate to be served", DEADLINE, || async {
            (self.served.leaf(id).as_deref() == Some(leaf)).then_some(())
        })
        .await
    }
}

fn files_cert(id: &str, names: &[&str], cert: &Path, key: &Path) -> Result<ManagedCert> {
    Ok(ManagedCert {
        id: id.into(),
        domains: domains(names)?,
        source: CertSource::Files {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        key_type: KeyType::default(),
    })
}

#[tokio::test]
async fn files_source_keeps_the_previous_certificate_and_says_why_once() -> Result<()> {
    let vendor = Vendor::new()?;
    let dir = Dir::new()?;
    let good = vendor.good(&SHOP)?;
    let (cert, key) = dir.pair(&good)?;
    let node = Node::start()?;
    let id = "shop.example.com";
    node.manager
        .apply(vec![files_cert(id, &SHOP, &cert, &key)?]);
    let good_leaf = leaf_der(&good.0)?;
    node.serving(id, &good_leaf).await?;
    assert_eq!(node.live(id)?.last_error, None);

    let stranger = Vendor::new()?;
    let (other_leaf, other_leaf_key) = vendor.leaf(&SHOP, -1, 90)?;
    let bad_pairs: Vec<(&str, (String, String), &str)> = vec![
        (
            "wrong name",
            vendor.good(&["shop.example.net"])?,
            "does not cover shop.example.com",
        ),
        ("expired", vendor.chain(&SHOP, -400, -30)?, "expired on"),
        (
            "not yet valid",
            vendor.chain(&SHOP, 2, 90)?,
            "not valid before",
        ),
        (
            "key of another certificate",
            (good.0.clone(), other_leaf_key.clone()),
            "does not match",
        ),
        (
            "key file is garbage",
            (good.0.clone(), "garbage\n".into()),
            "private key file",
        ),
    ];
    for (label, pair, needle) in bad_pairs {
        dir.pair(&pair)?;
        let live = node
            .refused_with(id, needle)
            .await
            .with_context(|| label.to_string())?;
        assert!(
            live.findings.iter().any(Finding::is_fatal),
            "{label}: {live:?}"
        );
        // Still serving the good pair.
        assert_eq!(
            node.served.leaf(id).as_deref(),
            Some(good_leaf.as_slice()),
            "{label}"
        );
        assert_eq!(
            live.serving.as_ref().map(|s| s.1),
            Some(
                CertBundle::from_pem(good.0.clone(), good.1.clone(), SourceKind::Files, None)?
                    .meta
                    .not_after
            ),
            "{label}"
        );
        // The two files are replaced one after the other, so the worker may have seen the new
        // certificate with the old key first: two looks after both renames, the state is final.
        let settled = node.looks_past(id, 2).await?;
        assert!(
            settled
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(needle)),
            "{label}: {settled:?}"
        );
        // Said once, however often the files are looked at.
        let later = node.looks_past(id, 5).await?;
        assert_eq!(later.problem_logged, 1, "{label}: {later:?}");
        assert_eq!(
            later.refusals, settled.refusals,
            "{label}: unchanged files are not re-read"
        );
    }
    // A chain of another vendor's CA: a warning, served.
    let unlinked = (format!("{other_leaf}{}", stranger.ca_pem), other_leaf_key);
    dir.pair(&unlinked)?;
    node.serving(id, &leaf_der(&unlinked.0)?).await?;
    let live = node.live(id)?;
    assert!(
        matches!(live.findings.as_slice(), [Finding::ChainIncomplete { .. }]),
        "{live:?}"
    );
    assert_eq!(live.last_error, None);
    assert_eq!(live.problem_logged, 0);

    // Missing files: looked at every poll, said once.
    fs::remove_file(&cert)?;
    let live = node.refused_with(id, "No such file").await?;
    let later = node.looks_past(id, 10).await?;
    assert!(later.refusals >= live.refusals + 5, "{later:?}");
    assert_eq!(later.problem_logged, 1, "{later:?}");
    assert_eq!(
        node.served.leaf(id).as_deref(),
        Some(leaf_der(&unlinked.0)?.as_slice())
    );

    // Good files again: served, the problem cleared.
    let fixed = vendor.good(&SHOP)?;
    dir.pair(&fixed)?;
    node.serving(id, &leaf_der(&fixed.0)?).await?;
    let live = node.live(id)?;
    assert_eq!((live.last_error, live.problem_logged), (None, 0));
    node.manager.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn files_status_and_expiry_warnings() -> Result<()> {
    let vendor = Vendor::new()?;
    let dir = Dir::new()?;
    let node = Node::start()?;
    // Five days left: the 7-day warning, once.
    let soon = vendor.chain(&SHOP, -80, 5)?;
    let (cert, key) = dir.pair(&soon)?;
    let soon_cert = files_cert("shop.example.com", &SHOP, &cert, &key)?;
    // A wrong-name pair from the start: nothing is served.
    let other = Dir::new()?;
    let (bad_cert, bad_key) = other.pair(&vendor.good(&["shop.example.net"])?)?;
    let wrong = files_cert(
        "brand.example.com",
        &["brand.example.com"],
        &bad_cert,
        &bad_key,
    )?;
    node.manager.apply(vec![soon_cert.clone(), wrong.clone()]);
    node.serving("shop.example.com", &leaf_der(&soon.0)?)
        .await?;
    let live = node.looks_past("shop.example.com", 3).await?;
    assert_eq!(live.expiry_warned, Some(7), "{live:?}");
    node.refused_with("brand.example.com", "does not cover brand.example.com")
        .await?;
    assert_eq!(node.served.leaf("brand.example.com"), None);

    // What `fleetgate certs` shows: the same check.
    let rows = Manager::statuses(node.store.as_ref(), &[soon_cert, wrong]).await;
    assert_eq!(rows[0].state, CertState::Valid);
    assert!(
        matches!(rows[0].findings.as_slice(), [Finding::ExpiresSoon { .. }]),
        "{:?}",
        rows[0]
    );
    assert_eq!(rows[1].state, CertState::Failing);
    assert!(
        rows[1]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("does not cover brand.example.com")),
        "{:?}",
        rows[1]
    );
    assert!(rows[1].findings.iter().any(Finding::is_fatal));
    node.manager.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_unusable_stored_certificate_is_replaced_not_deployed() -> Result<()> {
    let vendor = Vendor::new()?;
    let node = Node::start()?;
    let names = ["intranet.example.com"];
    let cert = ManagedCert {
        id: "intranet.example.com".into(),
        domains: domains(&names)?,
        source: CertSource::Internal,
        key_type: KeyType::EcdsaP256,
    };
    let key = cert.storage_key().context("stored")?;
    // An expired certificate with the right names, stored as if issued earlier.
    let (chain, leaf_key) = vendor.chain(&names, -100, -10)?;
    let expired = CertBundle::from_pem(chain.clone(), leaf_key, SourceKind::Internal, None)?;
    node.store.put(&key, &expired.to_json()).await?;
    node.manager.apply(vec![cert.clone()]);
    let served = testkit::wait_for("a certificate served", DEADLINE, || async {
        node.served.leaf(&cert.id)
    })
    .await?;
    assert_ne!(
        served,
        leaf_der(&chain)?,
        "the expired certificate was served"
    );
    assert!(!node.served.all_leaves().contains(&leaf_der(&chain)?));
    let findings = inspect::check_certificate(&chain, "", &cert.domains, now()).findings;
    assert!(
        findings
            .iter()
            .any(|f| matches!(f, Finding::Expired { .. }))
    );
    // The replacement is stored: `fleetgate certs` finds nothing wrong with it (its coming
    // expiry is the renewal's business, not a finding).
    let rows = testkit::wait_for("the replacement stored", DEADLINE, || async {
        let rows = Manager::statuses(node.store.as_ref(), std::slice::from_ref(&cert)).await;
        (rows[0].state == CertState::Valid).then_some(rows)
    })
    .await?;
    assert_eq!(rows[0].findings, [], "{:?}", rows[0]);
    assert_eq!(rows[0].last_error, None);
    node.manager.shutdown().await;

    // A stored bundle whose key is another certificate's: replaced as well.
    let node = Node::start()?;
    let (chain, good_key) = vendor.chain(&names, -1, 90)?;
    let (_, other_key) = vendor.chain(&names, -1, 90)?;
    let mut broken = CertBundle::from_pem(chain.clone(), good_key, SourceKind::Internal, None)?;
    broken.key_pem = other_key;
    node.store.put(&key, &broken.to_json()).await?;
    node.manager.apply(vec![cert.clone()]);
    let served = testkit::wait_for("a certificate served", DEADLINE, || async {
        node.served.leaf(&cert.id)
    })
    .await?;
    assert_ne!(served, leaf_der(&chain)?);
    node.manager.shutdown().await;
    Ok(())
}
