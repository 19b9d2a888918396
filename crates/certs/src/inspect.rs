//! The one decision on whether a certificate may be served: [`check_certificate`].
//!
//! Every place a certificate enters goes through it — the files source (at start, when the files
//! change, on reload), certificates read from the store or the local cache, freshly obtained
//! ones — and so can `fleetgate check` and a SIGHUP reload, which then agree with `run` by
//! construction.
//!
//! A [`Report`] lists typed [`Finding`]s, each [`Severity::Fatal`] (the certificate is not
//! deployed; whatever was served before stays in service) or [`Severity::Warning`] (deployed,
//! and said). The rules:
//!
//! - **Names.** The leaf must cover every domain of its site. Presented names are the leaf's
//!   subjectAltName DNS entries (the subject CN only when there is no subjectAltName at all,
//!   RFC 6125 §6.4.4). Wildcards follow RFC 6125 §6.4.3 as browsers apply it: `*` is the whole
//!   left-most label and stands for exactly one label, so `*.example.com` covers
//!   `a.example.com` but neither `example.com` nor `a.b.example.com`; a wildcard needs at least
//!   two labels after it (`*.com` covers nothing). A configured wildcard domain is covered only by
//!   the same wildcard.
//! - **Validity.** Not after `notAfter` ([`Finding::Expired`]) and not before `notBefore`
//!   ([`Finding::NotYetValid`]), with [`CLOCK_SKEW`] of tolerance for the latter (a certificate a
//!   peer just stored must not bounce off a node whose clock is a little behind). Under
//!   [`EXPIRY_WARN_DAYS`]`[0]` days left is [`Finding::ExpiresSoon`], a warning.
//! - **Key.** The private key must be the leaf's ([`Finding::KeyMismatch`]).
//! - **Chain.** A leaf that is not self-issued must come with its issuer's certificate, and each
//!   certificate of the chain must be issued by the next (issuer = next subject); otherwise
//!   [`Finding::ChainIncomplete`], a warning: some browsers fetch or cache the intermediate,
//!   others (and most non-browser clients) fail.
//! - **Parsing.** A chain or key that does not parse is [`Finding::Unparsable`]; a file that
//!   cannot be read is [`Finding::Unreadable`] (see [`crate::files::check`]). Checks that do not
//!   need the missing part still run, so one report says everything that is wrong.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::DomainName;

/// How far in the future `notBefore` may lie before the certificate counts as not yet valid.
pub const CLOCK_SKEW: i64 = 5 * 60;
/// Days left at which a files certificate's coming expiry is said (once each), largest first.
/// The first is also where [`Finding::ExpiresSoon`] starts.
pub const EXPIRY_WARN_DAYS: [u32; 5] = [30, 14, 7, 3, 1];

const DAY: i64 = 86_400;

/// Whether a finding stops the certificate from being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Not deployed; the previous certificate (if any) stays in service.
    Fatal,
    /// Deployed, and said.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Fatal => "error",
            Severity::Warning => "warning",
        })
    }
}

/// Which half of a certificate/key pair a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// The certificate chain (leaf first).
    Certificate,
    /// The leaf's private key.
    Key,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Certificate => "certificate",
            Part::Key => "private key",
        })
    }
}

/// Where a chain stops short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "gap", rename_all = "kebab-case")]
pub enum ChainGap {
    /// The leaf came alone; its issuer's certificate is missing.
    NoIntermediate { issuer: String },
    /// Certificate `position` (0 = leaf) was issued by `issuer`, but the next one is `next`.
    Unlinked {
        position: usize,
        issuer: String,
        next: String,
    },
}

/// One thing wrong (or worth saying) about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "finding", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Finding {
    /// A file could not be read (missing, permissions, not UTF-8).
    Unreadable { path: PathBuf, detail: String },
    /// The chain or the key does not parse. `path` is set when it came from a file.
    Unparsable {
        part: Part,
        path: Option<PathBuf>,
        detail: String,
    },
    /// The leaf does not cover `domain`.
    NameNotCovered { domain: DomainName },
    /// Past `notAfter` (unix seconds).
    Expired { not_after: i64 },
    /// Before `notBefore` (unix seconds), beyond [`CLOCK_SKEW`].
    NotYetValid { not_before: i64 },
    /// The private key is not the leaf's. `key_path` is set when it came from a file.
    KeyMismatch { key_path: Option<PathBuf> },
    /// The chain does not lead to a CA (a warning).
    ChainIncomplete { gap: ChainGap },
    /// Fewer than [`EXPIRY_WARN_DAYS`]`[0]` days left (a warning).
    ExpiresSoon { not_after: i64, days_left: i64 },
}

impl Finding {
    pub fn severity(&self) -> Severity {
        match self {
            Finding::Unreadable { .. }
            | Finding::Unparsable { .. }
            | Finding::NameNotCovered { .. }
            | Finding::Expired { .. }
            | Finding::NotYetValid { .. }
            | Finding::KeyMismatch { .. } => Severity::Fatal,
            Finding::ChainIncomplete { .. } | Finding::ExpiresSoon { .. } => Severity::Warning,
        }
    }

    pub fn is_fatal(&self) -> bool {
        self.severity() == Severity::Fatal
    }

    /// Only the passage of time changes this finding (the same files may pass later).
    pub fn is_temporal(&self) -> bool {
        matches!(
            self,
            Finding::NotYetValid { .. } | Finding::ExpiresSoon { .. }
        )
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Unreadable { path, detail } => {
                write!(f, "cannot read {}: {detail}", path.display())
            }
            Finding::Unparsable { part, path, detail } => match path {
                Some(path) => write!(f, "{part} file {} is unusable: {detail}", path.display()),
                None => write!(f, "the {part} is unusable: {detail}"),
            },
            Finding::NameNotCovered { domain } => {
                write!(f, "the certificate does not cover {domain}")
            }
            Finding::Expired { not_after } => write!(
                f,
                "the certificate expired on {} (notAfter)",
                rfc3339(*not_after)
            ),
            Finding::NotYetValid { not_before } => write!(
                f,
                "the certificate is not valid before {} (notBefore)",
                rfc3339(*not_before)
            ),
            Finding::KeyMismatch { key_path } => match key_path {
                Some(path) => write!(
                    f,
                    "the private key {} does not match the certificate",
                    path.display()
                ),
                None => f.write_str("the private key does not match the certificate"),
            },
            Finding::ChainIncomplete { gap } => match gap {
                ChainGap::NoIntermediate { issuer } => write!(
                    f,
                    "the chain is incomplete: the certificate of its issuer ({issuer}) is \
                     missing; append the intermediate certificate(s) after the leaf, or some \
                     clients will refuse it"
                ),
                ChainGap::Unlinked {
                    position,
                    issuer,
                    next,
                } => write!(
                    f,
                    "the chain is broken: certificate #{position} is issued by {issuer} but the \
                     next one is {next}; put the chain in order, leaf first"
                ),
            },
            Finding::ExpiresSoon {
                not_after,
                days_left,
            } => write!(
                f,
                "the certificate expires in {days_left} day(s), on {}",
                rfc3339(*not_after)
            ),
        }
    }
}

/// What the leaf says about itself, when it parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// The names it presents (subjectAltName DNS entries, else the CN), lower-case.
    pub names: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Hex, no separators.
    pub serial: String,
}

/// The result of [`check_certificate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub leaf: Option<Leaf>,
}

impl Report {
    /// Whether the certificate must not be served.
    pub fn is_fatal(&self) -> bool {
        self.findings.iter().any(Finding::is_fatal)
    }

    pub fn fatal(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.is_fatal())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.is_fatal())
    }

    /// The fatal findings as one line (`; `-separated), or `None` when there are none.
    pub fn fatal_summary(&self) -> Option<String> {
        let parts: Vec<String> = self.fatal().map(ToString::to_string).collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Whether the same files may pass later without changing: every fatal finding is about time.
    pub fn only_time_stands_in_the_way(&self) -> bool {
        self.is_fatal() && self.fatal().all(Finding::is_temporal)
    }

    /// The error for a refused certificate; `path` names the certificate file when there is one.
    pub fn to_error(&self, path: Option<PathBuf>) -> crate::Error {
        crate::Error::Rejected {
            path,
            findings: self.fatal().cloned().collect(),
        }
    }
}

/// Decide whether `chain_pem` (leaf first) with `key_pem` may be served for `domains` at `now`
/// (unix seconds). See the module documentation for the rules. Never panics on bad input.
pub fn check_certificate(
    chain_pem: &str,
    key_pem: &str,
    domains: &[DomainName],
    now: i64,
) -> Report {
    inspect_pem(chain_pem, key_pem, domains, now).0
}

/// [`check_certificate`], also returning the parsed pair when chain and key parse and match (the
/// files source deploys it without parsing the key a second time).
pub(crate) fn inspect_pem(
    chain_pem: &str,
    key_pem: &str,
    domains: &[DomainName],
    now: i64,
) -> (Report, Option<CertifiedKey>) {
    let mut report = Report::default();
    let chain = match parse_chain(chain_pem) {
        Ok(chain) => Some(chain),
        Err(detail) => {
            report.findings.push(Finding::Unparsable {
                part: Part::Certificate,
                path: None,
                detail,
            });
            None
        }
    };
    let key = match parse_key(key_pem) {
        Ok(key) => Some(key),
        Err(detail) => {
            report.findings.push(Finding::Unparsable {
                part: Part::Key,
                path: None,
                detail,
            });
            None
        }
    };
    let Some(chain) = chain else {
        return (report, None);
    };
    inspect_der(&chain, domains, now, &mut report);
    let Some(key) = key else {
        return (report, None);
    };
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // `Unknown`: the key type cannot report its public key; accepted, as rustls does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            (report, Some(certified))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            report
                .findings
                .push(Finding::KeyMismatch { key_path: None });
            (report, None)
        }
        Err(e) => {
            report.findings.push(Finding::Unparsable {
                part: Part::Key,
                path: None,
                detail: e.to_string(),
            });
            (report, None)
        }
    }
}

/// The checks on an already parsed pair (the key is known to match: [`CertifiedKey`]s are built
/// only after `keys_match`): names, validity, chain.
pub(crate) fn check_parsed(certified: &CertifiedKey, domains: &[DomainName], now: i64) -> Report {
    let mut report = Report::default();
    inspect_der(&certified.cert, domains, now, &mut report);
    report
}

/// Names, validity and chain of DER certificates (leaf first).
fn inspect_der(
    chain: &[CertificateDer<'_>],
    domains: &[DomainName],
    now: i64,
    report: &mut Report,
) {
    use x509_parser::prelude::*;
    let mut parsed = Vec::with_capacity(chain.len());
    for (i, der) in chain.iter().enumerate() {
        match X509Certificate::from_der(der.as_ref()) {
            Ok((_, cert)) => parsed.push(cert),
            Err(e) => {
                let which = if i == 0 {
                    "the leaf".to_string()
                } else {
                    format!("chain certificate #{i}")
                };
                report.findings.push(Finding::Unparsable {
                    part: Part::Certificate,
                    path: None,
                    detail: format!("{which} is not a valid X.509 certificate: {e}"),
                });
                return;
            }
        }
    }
    let Some(leaf) = parsed.first() else {
        return;
    };
    let names = presented_names(leaf);
    for domain in domains {
        if !names.iter().any(|n| covers(n, domain.as_str())) {
            report.findings.push(Finding::NameNotCovered {
                domain: domain.clone(),
            });
        }
    }
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    if now > not_after {
        report.findings.push(Finding::Expired { not_after });
    } else if not_before > now.saturating_add(CLOCK_SKEW) {
        report.findings.push(Finding::NotYetValid { not_before });
    } else if not_after - now < i64::from(EXPIRY_WARN_DAYS[0]) * DAY {
        report.findings.push(Finding::ExpiresSoon {
            not_after,
            days_left: (not_after - now) / DAY,
        });
    }
    // The chain: each certificate issued by the next, up to a self-issued one or the end.
    for (i, cert) in parsed.iter().enumerate() {
        if cert.issuer().as_raw() == cert.subject().as_raw() {
            break;
        }
        match parsed.get(i + 1) {
            Some(next) if next.subject().as_raw() == cert.issuer().as_raw() => {}
            Some(next) => {
                report.findings.push(Finding::ChainIncomplete {
                    gap: ChainGap::Unlinked {
                        position: i,
                        issuer: cert.issuer().to_string(),
                        next: next.subject().to_string(),
                    },
                });
                break;
            }
            // The last certificate is an intermediate issued by a root the client holds: the
            // usual, complete chain. Only a leaf alone is missing something.
            None if i == 0 => report.findings.push(Finding::ChainIncomplete {
                gap: ChainGap::NoIntermediate {
                    issuer: cert.issuer().to_string(),
                },
            }),
            None => {}
        }
    }
    report.leaf = Some(Leaf {
        names,
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        not_before,
        not_after,
        serial: leaf.raw_serial_as_string().replace(':', ""),
    });
}

/// The DNS names a leaf presents: subjectAltName DNS entries, or the subject CN when the
/// certificate has no subjectAltName extension at all (RFC 6125 §6.4.4). Lower-case.
fn presented_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect(),
    }
}

/// Whether the presented name `presented` covers `domain` (RFC 6125 §6.4.3, as browsers apply
/// it): equal ignoring case and a trailing dot, or `*.<base>` against a name that is exactly one
/// label more than `<base>`, `<base>` having at least two labels. A wildcard `domain` is covered
/// only by the same wildcard.
pub fn covers(presented: &str, domain: &str) -> bool {
    let presented = presented.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if presented.is_empty() || domain.is_empty() {
        return false;
    }
    if presented == domain {
        return true;
    }
    let Some(base) = presented.strip_prefix("*.") else {
        return false;
    };
    if base.contains('*') || !base.contains('.') || base.split('.').any(str::is_empty) {
        return false;
    }
    if domain.starts_with("*.") {
        return false;
    }
    match domain.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest == base,
        None => false,
    }
}

/// The threshold (days, from [`EXPIRY_WARN_DAYS`]) to warn about now, if a new one was crossed:
/// `seconds_left` is the certificate's time left, `warned` the last threshold already said for it
/// (`None`: none yet). `Some(0)` means "expired" (said once too).
pub fn expiry_warning_due(seconds_left: i64, warned: Option<u32>) -> Option<u32> {
    let crossed = if seconds_left <= 0 {
        Some(0)
    } else {
        EXPIRY_WARN_DAYS
            .iter()
            .rev()
            .copied()
            .find(|days| seconds_left <= i64::from(*days) * DAY)
    }?;
    match warned {
        Some(already) if already <= crossed => None,
        _ => Some(crossed),
    }
}

fn parse_chain(chain_pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(chain)
}

fn parse_key(key_pem: &str) -> Result<Arc<dyn SigningKey>, String> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"))?;
    crate::keys::signing_key(key).map_err(|e| format!("unsupported private key: {e}"))
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label_only() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.Example.COM.", "A.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.com", "example.com"));
        assert!(!covers("a*.example.com", "ab.example.com"));
        assert!(!covers("*.*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "*.example.com.evil"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("*.example.com", "*.a.example.com"));
        assert!(covers("shop.example.com", "shop.example.com."));
        assert!(!covers("shop.example.com", "www.shop.example.com"));
        assert!(!covers("", "example.com"));
    }

    #[test]
    fn expiry_thresholds_are_said_once_each() {
        let day = DAY;
        assert_eq!(expiry_warning_due(60 * day, None), None);
        assert_eq!(expiry_warning_due(30 * day, None), Some(30));
        assert_eq!(expiry_warning_due(29 * day, Some(30)), None);
        assert_eq!(expiry_warning_due(14 * day, Some(30)), Some(14));
        // Started with 5 days left: the 7-day warning, then 3, 1 and expiry.
        assert_eq!(expiry_warning_due(5 * day, None), Some(7));
        assert_eq!(expiry_warning_due(5 * day, Some(7)), None);
        assert_eq!(expiry_warning_due(3 * day, Some(7)), Some(3));
        assert_eq!(expiry_warning_due(day / 2, Some(3)), Some(1));
        assert_eq!(expiry_warning_due(0, Some(1)), Some(0));
        assert_eq!(expiry_warning_due(-day, Some(0)), None);
    }
}
