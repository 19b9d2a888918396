//! Every site a node knows, file and registry, and the registry operations on them: the one place
//! the admin API and `fleetgate sites` both call, so both refuse and accept the same things.

use std::sync::Arc;

use crate::config::Config;

use super::problem::{Problem, kind};
use super::view::{SitePage, SiteSource, SiteView};

/// `GET /v1/sites` without `limit`.
pub const DEFAULT_PAGE: usize = 100;
/// The largest `limit` accepted.
pub const MAX_PAGE: usize = 1000;

/// File sites (from `config`) and registry sites (from the store).
pub struct Catalog<'a> {
    config: Arc<Config>,
    registry: &'a sites::Registry,
}

impl<'a> Catalog<'a> {
    pub fn new(config: Arc<Config>, registry: &'a sites::Registry) -> Catalog<'a> {
        Catalog { config, registry }
    }

    /// The configuration file's sites, as written.
    pub fn file_sites(&self) -> Vec<SiteView> {
        self.config
            .site_specs
            .iter()
            .map(|spec| SiteView {
                id: spec.id(),
                source: SiteSource::File,
                version: None,
                updated_at: None,
                updated_by: None,
                spec: spec.clone(),
                on_demand: None,
            })
            .collect()
    }

    /// The file site with id `id` (ids are domains: compared without case).
    fn file_site(&self, id: &str) -> Option<SiteView> {
        let id = id.trim_end_matches('.');
        self.file_sites()
            .into_iter()
            .find(|s| s.id.eq_ignore_ascii_case(id))
    }

    /// Every site, read now, sorted by id (a file site before a registry site of the same id).
    pub async fn list(&self) -> Result<Vec<SiteView>, Problem> {
        let entries = self.registry.list().await.map_err(Problem::from)?;
        Ok(self.list_with(&entries))
    }

    /// Every site, the registry's being `entries`, sorted as [`Catalog::list`].
    pub fn list_with(&self, entries: &[sites::Entry]) -> Vec<SiteView> {
        let mut all = self.file_sites();
        all.extend(entries.iter().cloned().map(SiteView::registry));
        all.sort_by(|a, b| (&a.id, a.source).cmp(&(&b.id, b.source)));
        all
    }

    /// One page of [`Catalog::list_with`]: up to `limit` sites after `cursor`. Only the page's
    /// sites are copied: the others are sorted by reference (100,000 registry sites copied for
    /// each page made paging through them take 34 s).
    pub fn page(
        &self,
        entries: &[Arc<sites::Entry>],
        limit: usize,
        cursor: Option<&Cursor>,
    ) -> SitePage {
        let files = self.file_sites();
        // (id, source, from the file, index), in the order of `list_with`.
        let mut keys: Vec<(&str, SiteSource, bool, usize)> = files
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), s.source, true, i))
            .chain(
                entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.id.as_str(), SiteSource::Registry, false, i)),
            )
            .collect();
        keys.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        // Sorted by (id, source): find the first entry past the cursor in that order.
        let start = match cursor {
            Some(c) => keys.partition_point(|k| (k.0, k.1) <= (c.id.as_str(), c.source)),
            None => 0,
        };
        let sites: Vec<SiteView> = keys[start..]
            .iter()
            .take(limit)
            .map(|&(_, _, from_file, i)| {
                if from_file {
                    files[i].clone()
                } else {
                    SiteView::registry(sites::Entry::clone(&entries[i]))
                }
            })
            .collect();
        let next_cursor = if start + sites.len() < keys.len() {
            sites.last().map(|s| {
                Cursor {
                    id: s.id.clone(),
                    source: s.source,
                }
                .encode()
            })
        } else {
            None
        };
        SitePage { sites, next_cursor }
    }

    /// A site by id: the file's if the file has it, else the registry's.
    pub async fn get(&self, id: &str) -> Result<SiteView, Problem> {
        if let Some(view) = self.file_site(id) {
            return Ok(view);
        }
        match self.registry.get(id).await.map_err(Problem::from)? {
            Some(entry) => Ok(SiteView::registry(entry)),
            None => Err(Problem::new(kind::NOT_FOUND, format!("no site {id}")).site(id)),
        }
    }

    pub async fn create(&self, spec: sites::SiteSpec) -> Result<SiteView, Problem> {
        self.check_certificate(&spec)?;
        let domains = spec.domains.clone();
        let entry = self
            .registry
            .create(
                spec,
                &self.config.registry_env(),
                &self.config.file_domains(),
            )
            .await
            .map_err(|e| refused(e, &domains))?;
        Ok(SiteView::registry(entry))
    }

    /// Check many new sites at once (`fleetgate sites import`) as `create` checks one, without
    /// writing: `Err` for each refused one, by its index in `specs`; `Ok` with the checked batch
    /// for [`Catalog::write_many`] when none is.
    pub async fn check_many(
        &self,
        specs: Vec<sites::SiteSpec>,
    ) -> Result<Result<sites::Checked, Vec<(usize, Problem)>>, Problem> {
        let mut refusals = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            if let Err(p) = self.check_certificate(spec) {
                refusals.push((index, p));
            }
        }
        let domains: Vec<Vec<String>> = specs.iter().map(|s| s.domains.clone()).collect();
        let mut checked = self
            .registry
            .check_many(
                specs,
                &self.config.registry_env(),
                &self.config.file_domains(),
            )
            .await?;
        for r in std::mem::take(&mut checked.refused) {
            if !refusals.iter().any(|(i, _)| *i == r.index) {
                refusals.push((r.index, refused(r.error, &domains[r.index])));
            }
        }
        if refusals.is_empty() {
            Ok(Ok(checked))
        } else {
            refusals.sort_by_key(|(i, _)| *i);
            Ok(Err(refusals))
        }
    }

    /// Write a batch [`Catalog::check_many`] passed: the sites written (as views), the
    /// indexes of those already there, and, when writing stopped part-way, why (by index when
    /// a site was refused then).
    pub async fn write_many(&self, checked: sites::Checked) -> WriteMany {
        let created = self.registry.write_many(checked).await;
        WriteMany {
            added: created
                .created
                .into_iter()
                .map(SiteView::registry)
                .collect(),
            unchanged: created.unchanged,
            refused: created
                .refused
                .into_iter()
                .map(|r| (r.index, Problem::from(r.error)))
                .collect(),
            stopped: created.stopped.map(Problem::from),
        }
    }

    /// Replace registry site `id`; `if_match`: only if it is still at that version.
    pub async fn update(
        &self,
        id: &str,
        spec: sites::SiteSpec,
        if_match: Option<u64>,
    ) -> Result<SiteView, Problem> {
        self.refuse_file_site(id, "edit it in the configuration file of each node")?;
        self.check_certificate(&spec)?;
        let domains = spec.domains.clone();
        let entry = self
            .registry
            .update(
                id,
                spec,
                if_match,
                &self.config.registry_env(),
                &self.config.file_domains(),
            )
            .await
            .map_err(|e| refused(e, &domains))?;
        Ok(SiteView::registry(entry))
    }

    pub async fn delete(&self, id: &str, if_match: Option<u64>) -> Result<(), Problem> {
        self.refuse_file_site(id, "remove it from the configuration file of each node")?;
        Ok(self.registry.delete(id, if_match).await?)
    }

    /// A site whose certificate comes from files is refused (naming `/tls`) when the files
    /// could not be served, by the check `fleetgate check` and a reload apply to file sites.
    /// Other validation errors are left to the registry, which reports them.
    fn check_certificate(&self, spec: &sites::SiteSpec) -> Result<(), Problem> {
        let Ok(site) = spec.validate(&self.config.registry_env()) else {
            return Ok(());
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match crate::config::site_certificate(&site, now).and_then(|r| r.fatal_summary()) {
            Some(refused) => Err(super::problem::invalid_field(&sites::FieldError::new(
                sites::FieldPath::of(&["tls"]),
                refused,
            ))),
            None => Ok(()),
        }
    }

    fn refuse_file_site(&self, id: &str, how: &str) -> Result<(), Problem> {
        match self.file_site(id) {
            Some(site) => Err(Problem::new(
                kind::FILE_SITE,
                format!("{} is a site of the configuration file; {how}", site.id),
            )
            .site(site.id)),
            None => Ok(()),
        }
    }

    /// The certificates of every site (what `fleetgate certs` shows), the registry's being
    /// `entries`.
    pub fn managed_certs(&self, entries: &[Arc<sites::Entry>]) -> Vec<certs::ManagedCert> {
        let config = &self.config;
        let mut all = config.managed_certs();
        let env = config.registry_env();
        for entry in entries {
            // A stored site that no longer validates here (say, no [acme] on this node) has
            // no certificate this node would manage.
            if let Ok(site) = entry.spec.validate(&env) {
                all.extend(site.managed_certs(config.acme.as_ref()));
            }
        }
        all
    }
}

/// What [`Catalog::write_many`] did.
pub struct WriteMany {
    pub added: Vec<SiteView>,
    pub unchanged: Vec<usize>,
    pub refused: Vec<(usize, Problem)>,
    pub stopped: Option<Problem>,
}

/// A refused write as a problem; a taken domain is pointed at in the request's `domains`.
fn refused(e: sites::RegistryError, domains: &[String]) -> Problem {
    let taken = match &e {
        sites::RegistryError::DomainTaken { domain, .. }
        | sites::RegistryError::DomainRepeated { domain, .. } => Some(domain.clone()),
        _ => None,
    };
    let mut problem = Problem::from(e);
    if let Some(domain) = taken {
        let same = |d: &String| {
            d.trim()
                .trim_end_matches('.')
                .eq_ignore_ascii_case(domain.trim_end_matches('.'))
        };
        if let Some(i) = domains.iter().position(same) {
            problem.field = Some(format!("/domains/{i}"));
        }
    }
    problem
}

/// Where a page starts: after the site `(id, source)`. Sent as `<source>:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub id: String,
    pub source: SiteSource,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}:{}", self.source, self.id)
    }

    pub fn parse(text: &str) -> Option<Cursor> {
        let (source, id) = text.split_once(':')?;
        let source = match source {
            "file" => SiteSource::File,
            "registry" => SiteSource::Registry,
            _ => return None,
        };
        (!id.is_empty()).then(|| Cursor {
            id: id.to_string(),
            source,
        })
    }
}
