//! The certificates of the file's `files` sites, checked as `run` would check them before
//! serving: [`check_certificates`] is the one function `fleetgate check` and a SIGHUP reload
//! call, so the two agree by construction (and agree with the running manager, which goes
//! through the same [`certs::files::check`]). [`site_certificate`] is the same check for one
//! site, used for registry sites written through the admin API or `fleetgate sites`.

use std::path::PathBuf;

use certs::inspect::{Finding, Report};

use super::{Config, Site, TlsChoice};

/// One finding on one site's certificate, placed in the config file.
#[derive(Debug, Clone)]
pub struct SiteFinding {
    pub file: PathBuf,
    /// The line of the site's `tls` key, when the file spells it out.
    pub line: Option<usize>,
    /// The site's index among the file's `[[site]]` tables.
    pub site: usize,
    pub finding: Finding,
}

impl std::fmt::Display for SiteFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": site[{}].tls: {}", self.site, self.finding)
    }
}

/// What [`check_certificates`] found, fatal findings and warnings apart.
#[derive(Debug, Clone, Default)]
pub struct CertCheck {
    pub fatal: Vec<SiteFinding>,
    pub warnings: Vec<SiteFinding>,
}

impl CertCheck {
    pub fn is_fatal(&self) -> bool {
        !self.fatal.is_empty()
    }
}

/// Check every `files` site of `config` against all its domains, now.
pub fn check_certificates(config: &Config) -> CertCheck {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut out = CertCheck::default();
    // Found at the first finding (they cost a parse of the whole file).
    let mut lines: Option<Vec<Option<usize>>> = None;
    for (i, site) in config.sites.iter().enumerate() {
        let Some(report) = site_certificate(site, now) else {
            continue;
        };
        for finding in report.findings {
            let lines = lines.get_or_insert_with(|| config.site_tls_lines());
            let placed = SiteFinding {
                file: config.file.clone(),
                line: lines.get(i).copied().flatten(),
                site: i,
                finding,
            };
            if placed.finding.is_fatal() {
                out.fatal.push(placed);
            } else {
                out.warnings.push(placed);
            }
        }
    }
    out
}

/// The check of `site`'s certificate files for every domain of the site; `None` for sites whose
/// certificate does not come from files.
pub fn site_certificate(site: &Site, now: i64) -> Option<Report> {
    match &site.tls {
        TlsChoice::Files { cert, key } => Some(certs::files::check(cert, key, &site.domains, now)),
        TlsChoice::Acme | TlsChoice::Internal => None,
    }
}
