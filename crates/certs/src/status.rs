//! What `fleetgate certs` shows ([`CertStatus`], read by [`crate::Manager::statuses`] from the store
//! and the files), what a node records beside each certificate ([`StatusRecord`]), and what a
//! running task knows ([`LiveStatus`], from [`crate::Manager::live_status`]).

use serde::{Deserialize, Serialize};
use store::Storage;

use crate::bundle::{LastError, now_unix};
use crate::inspect::{self, Finding};
use crate::managed::{CertId, CertSource, ManagedCert};
use crate::{CertBundle, DomainName, SourceKind, files, layout, renewal};

/// The state of one certificate, as `fleetgate certs` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertState {
    /// Nothing obtained yet; an order is pending or waiting to be placed.
    Pending,
    /// Served and not yet due.
    Valid,
    /// Inside its renewal window; a renewal is being attempted.
    Renewing,
    /// The last attempt failed; the current certificate (if any) is still served.
    Failing,
    /// Past not-after.
    Expired,
}

impl std::fmt::Display for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertState::Pending => "pending",
            CertState::Valid => "valid",
            CertState::Renewing => "renewing",
            CertState::Failing => "failing",
            CertState::Expired => "expired",
        })
    }
}

/// What is recorded in the store beside a certificate (`status/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusRecord {
    pub state: CertState,
    pub updated_at: i64,
    pub node: String,
    pub next_attempt: Option<i64>,
    pub failures: u32,
    pub last_error: Option<LastError>,
}

/// One row of `fleetgate certs`.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    pub id: CertId,
    pub domains: Vec<DomainName>,
    pub source: SourceKind,
    pub issuer: Option<String>,
    pub not_after: Option<i64>,
    /// When renewal starts and by when it should be done (unix seconds): the CA's ARI window,
    /// else both the lifetime rule's point ([`renewal::renew_at`]). `None` for files.
    pub renewal_window: Option<(i64, i64)>,
    pub state: CertState,
    pub last_error: Option<String>,
    /// What [`crate::inspect::check_certificate`] says about the certificate as it is now (the
    /// files, or the stored copy), fatal findings and warnings alike.
    pub findings: Vec<Finding>,
}

/// What this process's task for one certificate knows right now ([`crate::Manager::live_status`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveStatus {
    /// Serial (hex) and not-after (unix seconds) of the certificate being served, if any.
    pub serving: Option<(String, i64)>,
    /// The findings on the certificate last examined (deployed or refused).
    pub findings: Vec<Finding>,
    /// Why the last certificate examined was refused; `None` once one is accepted.
    pub last_error: Option<String>,
    /// How many times the source was examined (files: once per poll).
    pub looks: u64,
    /// How many times a certificate was refused or could not be read.
    pub refusals: u64,
    /// How many times the current problem was logged (once, then on
    /// [`crate::renewal::REMINDER_SCHEDULE`]).
    pub problem_logged: u32,
    /// The last expiry threshold (days, [`crate::inspect::EXPIRY_WARN_DAYS`]; 0 = expired)
    /// logged for the served files certificate.
    pub expiry_warned: Option<u32>,
}

/// What a running node knows of a certificate it serves: the serial and the findings of the
/// check it passed before it was served (see [`statuses`]).
pub(crate) type Served<'a> = &'a (dyn Fn(&CertId) -> Option<(String, Vec<Finding>)> + Sync);

/// [`crate::Manager::statuses`]. A certificate for which `served` gives the stored serial is
/// not checked again: the node checked that very certificate before serving it, and the check
/// (parsing the chain and the key) is what made `GET /v1/nodes` on 100,000 certificates take
/// more than 10 s.
pub(crate) async fn statuses(
    store: &dyn Storage,
    certs: &[ManagedCert],
    served: Served<'_>,
) -> Vec<CertStatus> {
    use futures_util::StreamExt as _;
    let now = now_unix();
    // Up to STATUS_READS certificates read at once: two store reads each, and at 100,000
    // certificates one after the other took seconds.
    // By index: a closure over `&ManagedCert` makes the future not provably `Send` (axum's
    // handlers need it) through a higher-ranked lifetime.
    futures_util::stream::iter(0..certs.len())
        .map(|i| status(store, &certs[i], served, now))
        .buffered(STATUS_READS)
        .collect()
        .await
}

/// How many certificates [`statuses`] reads at once.
const STATUS_READS: usize = 32;

/// One certificate's row of [`statuses`].
async fn status(
    store: &dyn Storage,
    cert: &ManagedCert,
    served: Served<'_>,
    now: i64,
) -> CertStatus {
    if let CertSource::Files { cert: c, key } = &cert.source {
        return files_status(cert, c, key, now);
    }
    let record: Option<StatusRecord> = match store.get(&layout::status(&cert.id)).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
        _ => None,
    };
    let (bundle, load_error) = match cert.storage_key() {
        Some(key) => match store.get(&key).await {
            Ok(Some(bytes)) => (CertBundle::from_json(&bytes).ok(), None),
            Ok(None) => (None, None),
            Err(e) => (None, Some(e.to_string())),
        },
        None => (None, None),
    };
    let bundle = bundle.filter(|b| cert.wants(b));
    let vetted = bundle.as_ref().and_then(|b| {
        served(&cert.id)
            .filter(|(serial, _)| *serial == b.meta.serial)
            .map(|(_, findings)| findings)
    });
    let (findings, refused) = match vetted {
        Some(findings) => (findings, None),
        None => {
            let report = bundle
                .as_ref()
                .map(|b| inspect::check_certificate(&b.chain_pem, &b.key_pem, &cert.domains, now));
            let refused = report.as_ref().and_then(inspect::Report::fatal_summary);
            (report.map(|r| r.findings).unwrap_or_default(), refused)
        }
    };
    let state = match (&bundle, &record) {
        (Some(b), _) if b.meta.not_after <= now => CertState::Expired,
        (_, Some(r)) if r.state == CertState::Failing => CertState::Failing,
        (Some(_), _) if refused.is_some() => CertState::Failing,
        (Some(b), _) if renewal::renew_at(&b.meta, 0.5) <= now => CertState::Renewing,
        (Some(_), _) => CertState::Valid,
        (None, _) if load_error.is_some() => CertState::Failing,
        (None, _) => CertState::Pending,
    };
    CertStatus {
        id: cert.id.clone(),
        domains: cert.domains.clone(),
        source: cert.source.kind(),
        issuer: bundle.as_ref().map(|b| b.meta.issuer.clone()),
        not_after: bundle.as_ref().map(|b| b.meta.not_after),
        renewal_window: bundle.as_ref().map(|b| {
            (
                renewal::renew_at(&b.meta, 0.0),
                renewal::renew_at(&b.meta, 1.0),
            )
        }),
        state,
        last_error: load_error
            .or_else(|| record.and_then(|r| r.last_error).map(|e| e.message))
            .or(refused),
        // Coming expiry is the renewal's business here, not the operator's.
        findings: findings
            .into_iter()
            .filter(|f| !matches!(f, Finding::ExpiresSoon { .. }))
            .collect(),
    }
}

/// The `fleetgate certs` row of a files certificate: the files as they are now, checked.
fn files_status(
    cert: &ManagedCert,
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
    now: i64,
) -> CertStatus {
    let report = files::check(cert_path, key_path, &cert.domains, now);
    let state = if report
        .findings
        .iter()
        .any(|f| matches!(f, Finding::Expired { .. }))
    {
        CertState::Expired
    } else if report.is_fatal() {
        CertState::Failing
    } else {
        CertState::Valid
    };
    CertStatus {
        id: cert.id.clone(),
        domains: cert.domains.clone(),
        source: SourceKind::Files,
        issuer: report.leaf.as_ref().map(|l| l.issuer.clone()),
        not_after: report.leaf.as_ref().map(|l| l.not_after),
        renewal_window: None,
        state,
        last_error: report.fatal_summary(),
        findings: report.findings,
    }
}
