//! Purchased certificates loaded from PEM files.
//!
//! The certificate file holds the chain, leaf first; the key file holds the leaf's private key as
//! PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) PEM. Errors name
//! the file at fault: an unreadable file is [`Error::Io`], a certificate file without a usable
//! leaf is [`Error::InvalidCertificate`] naming it, a key file without a usable key is
//! [`Error::InvalidCertificate`] naming the key file, and a key of another certificate is
//! [`Error::KeyMismatch`] naming the key file.
//!
//! Whether a pair may be served is decided by [`crate::inspect::check_certificate`]; [`check`] is
//! that decision for files (what `fleetgate check` and a reload call), [`load_checked`] the same
//! decision returning the bundle to deploy (what the manager calls).
//!
//! The manager polls [`stamp`] (about once a second) and calls [`load_checked`] again when the
//! stamp changes, so replacing the files (in place, by rename, or by a Kubernetes secret's
//! symlink swap) is picked up without a restart. A pair that fails the check is not deployed: the
//! previous one stays in service.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::inspect::{self, Finding, Part, Report};
use crate::{CertBundle, DomainName, Error, Result, SourceKind};

/// Read `cert` and `key` and decide whether they may be served for `domains` at `now` (unix
/// seconds): [`inspect::check_certificate`], with unreadable files as [`Finding::Unreadable`] and
/// the file named in [`Finding::Unparsable`] and [`Finding::KeyMismatch`].
pub fn check(cert: &Path, key: &Path, domains: &[DomainName], now: i64) -> Report {
    load_checked(cert, key, domains, now).0
}

/// Like [`check`], also returning the bundle to deploy when nothing fatal was found (the report
/// then holds only warnings). A bundle comes back if and only if the report is not fatal.
pub fn load_checked(
    cert: &Path,
    key: &Path,
    domains: &[DomainName],
    now: i64,
) -> (Report, Option<CertBundle>) {
    // A file that cannot be read is unreadable; one that is not text is unusable.
    let unreadable = |path: &Path, part: Part, e: Error| match e {
        Error::InvalidCertificate { detail, .. } => Finding::Unparsable {
            part,
            path: Some(path.to_path_buf()),
            detail,
        },
        Error::Io { source, .. } => Finding::Unreadable {
            path: path.to_path_buf(),
            detail: source.to_string(),
        },
        other => Finding::Unreadable {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    };
    let (chain_pem, key_pem) = match (read(cert), read(key)) {
        (Ok(c), Ok(k)) => (c, k),
        (chain, key_text) => {
            let mut report = Report::default();
            let chain = match chain {
                Ok(c) => Some(c),
                Err(e) => {
                    report.findings.push(unreadable(cert, Part::Certificate, e));
                    None
                }
            };
            if let Err(e) = key_text {
                report.findings.push(unreadable(key, Part::Key, e));
            }
            // The certificate alone still says what else is wrong (names, dates, chain).
            if let Some(chain) = chain {
                let (alone, _) = inspect::inspect_pem(&chain, "", domains, now);
                report.leaf = alone.leaf;
                report
                    .findings
                    .extend(alone.findings.into_iter().filter(|f| {
                        !matches!(
                            f,
                            Finding::Unparsable {
                                part: Part::Key,
                                ..
                            } | Finding::KeyMismatch { .. }
                        )
                    }));
            }
            return (with_paths(report, cert, key), None);
        }
    };
    let (report, certified) = inspect::inspect_pem(&chain_pem, &key_pem, domains, now);
    let report = with_paths(report, cert, key);
    match certified {
        Some(certified) if !report.is_fatal() => {
            match CertBundle::from_certified(
                chain_pem,
                key_pem,
                certified,
                SourceKind::Files,
                Some(cert),
            ) {
                Ok(bundle) => (report, Some(bundle)),
                Err(e) => {
                    let mut report = report;
                    report.findings.push(Finding::Unparsable {
                        part: Part::Certificate,
                        path: Some(cert.to_path_buf()),
                        detail: e.to_string(),
                    });
                    (report, None)
                }
            }
        }
        _ => (report, None),
    }
}

/// Name the files in findings that came from PEM text.
fn with_paths(mut report: Report, cert: &Path, key: &Path) -> Report {
    for finding in &mut report.findings {
        match finding {
            Finding::Unparsable { part, path, .. } if path.is_none() => {
                *path = Some(match part {
                    Part::Certificate => cert.to_path_buf(),
                    Part::Key => key.to_path_buf(),
                });
            }
            Finding::KeyMismatch { key_path } if key_path.is_none() => {
                *key_path = Some(key.to_path_buf());
            }
            _ => {}
        }
    }
    report
}

/// Read and check a certificate chain and its private key.
///
/// This does small blocking reads; the manager calls it from a files shard's task, at start
/// and when [`stamp`] changes.
pub fn load(cert: &Path, key: &Path) -> Result<CertBundle> {
    let chain_pem = read(cert)?;
    let key_pem = read(key)?;
    // The pair is parsed once on the way that succeeds; only a failure looks at the key file on
    // its own, to name the right file in the error.
    match CertBundle::from_pem(chain_pem, key_pem.clone(), SourceKind::Files, Some(cert)) {
        Ok(bundle) => Ok(bundle),
        Err(e) => {
            check_key(&key_pem, key)?;
            // The key parses, so the error is about the certificate file, except a key that
            // belongs to another certificate, which names the key file.
            Err(match e {
                Error::KeyMismatch { .. } => Error::KeyMismatch {
                    path: Some(key.to_path_buf()),
                },
                other => other,
            })
        }
    }
}

fn read(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| Error::InvalidCertificate {
        path: Some(path.to_path_buf()),
        detail: "not a PEM text file (invalid UTF-8)".into(),
    })
}

/// The key file on its own: a PEM private key that rustls can sign with.
fn check_key(key_pem: &str, path: &Path) -> Result<()> {
    let invalid = |detail: String| Error::InvalidCertificate {
        path: Some(path.to_path_buf()),
        detail,
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        invalid(format!(
            "no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"
        ))
    })?;
    crate::keys::signing_key(key).map_err(|e| invalid(format!("unsupported private key: {e}")))?;
    Ok(())
}

/// What the files looked like when last seen: modification time and length of both. Equal stamps
/// mean "probably unchanged"; a different stamp means "load again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    cert_modified: SystemTime,
    cert_len: u64,
    key_modified: SystemTime,
    key_len: u64,
}

/// The current stamp of both files (following symlinks), or `None` when either cannot be
/// examined (missing, unreadable directory, or a platform without modification times).
pub fn stamp(cert: &Path, key: &Path) -> Option<FileStamp> {
    let c = fs::metadata(cert).ok()?;
    let k = fs::metadata(key).ok()?;
    Some(FileStamp {
        cert_modified: c.modified().ok()?,
        cert_len: c.len(),
        key_modified: k.modified().ok()?,
        key_len: k.len(),
    })
}
