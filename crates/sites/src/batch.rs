//! Many registry sites added at once ([`Registry::create_many`], `fleetgate sites import`).
//!
//! Every site is checked before anything is written: its rules, its domains against the other
//! sites of the batch, the config file's and the registry's (as [`Registry::create`] checks
//! one). A refused site refuses the whole batch. Then the sites are written in chunks of
//! [`CHUNK`], each under one `sites-registry` lease: the chunk is checked again under the lease
//! (a writer may have come in between), its domain claims are written with one
//! `put_many_fenced`, then its sites with another. A site already in the registry with the same
//! spec is left as it is, so an import that stopped part-way can be run again.

use std::collections::HashMap;

use futures_util::StreamExt as _;

use crate::registry::{Entry, Record, Registry, RegistryError};
use crate::spec::SiteSpec;
use crate::validate::SiteEnv;

/// Sites written under one lease: a chunk's reads and writes take well under a second, far
/// below the lease's TTL and the dir store's mutex hold limit (its renames).
const CHUNK: usize = 1000;
/// Store reads in flight while checking sites.
const READS: usize = 16;

/// One site of a batch refused, by its index in the batch.
#[derive(Debug)]
pub struct Refused {
    pub index: usize,
    pub error: RegistryError,
}

/// What [`Registry::create_many`] did.
#[derive(Debug, Default)]
pub struct Created {
    /// The sites written, in batch order.
    pub created: Vec<Entry>,
    /// The indexes of sites the registry already held with the same spec (left as they are).
    pub unchanged: Vec<usize>,
    /// The sites refused. When the check before the first write refuses any, nothing is
    /// written; a site refused later (a concurrent writer took one of its domains meanwhile)
    /// stops the writing there, and the chunks before it stay written.
    pub refused: Vec<Refused>,
    /// Why writing stopped part-way (the store failed): the sites in `created` stay written.
    pub stopped: Option<RegistryError>,
}

/// A site of the batch that passed the local checks.
#[derive(Debug)]
struct Planned {
    index: usize,
    id: String,
    key: store::StorageKey,
    domains: Vec<String>,
    spec: SiteSpec,
}

/// What the registry says about one planned site.
enum Verdict {
    /// Not there: write it as this version (after a removed site's tombstone, one more).
    New { version: u64 },
    /// There with the same spec.
    Unchanged,
}

/// A batch checked by [`Registry::check_many`], for [`Registry::write_many`].
#[derive(Debug, Default)]
pub struct Checked {
    /// The sites to write, in batch order.
    planned: Vec<Planned>,
    /// The indexes of sites the registry already holds with the same spec.
    pub unchanged: Vec<usize>,
    /// The sites refused, by index; `write_many` writes nothing while there are any.
    pub refused: Vec<Refused>,
}

impl Checked {
    /// How many sites `write_many` would write.
    pub fn to_write(&self) -> usize {
        self.planned.len()
    }
}

impl Registry {
    /// Add many sites: [`Registry::check_many`], then [`Registry::write_many`] if no site was
    /// refused. See the module docs.
    pub async fn create_many(
        &self,
        specs: Vec<SiteSpec>,
        env: &SiteEnv,
        file_domains: &HashMap<String, String>,
    ) -> Created {
        match self.check_many(specs, env, file_domains).await {
            Ok(checked) => self.write_many(checked).await,
            Err(e) => Created {
                stopped: Some(e),
                ..Created::default()
            },
        }
    }

    /// Check every site of a batch without writing (and without the lease): its rules, its
    /// domains against the batch's other sites, the config file's (`file_domains`, as for
    /// [`Registry::create`]) and the registry's, and its id. The error is the store's.
    pub async fn check_many(
        &self,
        specs: Vec<SiteSpec>,
        env: &SiteEnv,
        file_domains: &HashMap<String, String>,
    ) -> Result<Checked, RegistryError> {
        let mut out = Checked::default();
        let mut planned = Vec::with_capacity(specs.len());
        // Each domain of the batch, and the id of the first site that lists it.
        let mut batch_domains: HashMap<String, String> = HashMap::new();
        for (index, spec) in specs.into_iter().enumerate() {
            match plan(index, spec, env, file_domains, &mut batch_domains) {
                Ok(site) => planned.push(site),
                Err(error) => out.refused.push(Refused { index, error }),
            }
        }
        let known = self.known().await?;
        // Only a site whose id or a domain the store already knows needs reads now; the others
        // are new (and are read again under the lease).
        let mut seen = Vec::new();
        for site in planned {
            if known.touches(&site) {
                seen.push(site);
            } else {
                out.planned.push(site);
            }
        }
        let verdicts = self.verdicts(&seen).await;
        for (site, verdict) in seen.into_iter().zip(verdicts) {
            match verdict {
                Ok(Verdict::New { .. }) => out.planned.push(site),
                Ok(Verdict::Unchanged) => out.unchanged.push(site.index),
                Err(RegistryError::Store(e)) => return Err(RegistryError::Store(e)),
                Err(error) => out.refused.push(Refused {
                    index: site.index,
                    error,
                }),
            }
        }
        out.refused.sort_by_key(|r| r.index);
        out.unchanged.sort_unstable();
        out.planned.sort_by_key(|s| s.index);
        Ok(out)
    }

    /// Write a checked batch in chunks, each checked again under its own lease; nothing when
    /// `checked` has refused sites. See the module docs.
    pub async fn write_many(&self, checked: Checked) -> Created {
        let mut out = Created {
            unchanged: checked.unchanged,
            refused: checked.refused,
            ..Created::default()
        };
        if !out.refused.is_empty() {
            return out;
        }
        let mut sites = checked.planned.into_iter().peekable();
        while sites.peek().is_some() {
            let chunk: Vec<Planned> = sites.by_ref().take(CHUNK).collect();
            if let Err(e) = self.write_chunk(chunk, &mut out).await {
                out.stopped = Some(e);
                break;
            }
            if !out.refused.is_empty() {
                break;
            }
        }
        out.unchanged.sort_unstable();
        out
    }

    /// Which ids and domains the registry has objects for (two listings, no reads).
    async fn known(&self) -> Result<Known, RegistryError> {
        let sites = self.store.list(&Registry::prefix()).await?;
        let claims = self.store.list(&Registry::claims_prefix()).await?;
        let last = |k: &store::StorageKey| k.as_str().rsplit('/').next().map(str::to_owned);
        Ok(Known {
            ids: sites.iter().filter_map(last).collect(),
            claimed: claims.iter().filter_map(last).collect(),
        })
    }

    /// [`Registry::verdict`] of each site, in order, [`READS`] at a time.
    async fn verdicts(&self, sites: &[Planned]) -> Vec<Result<Verdict, RegistryError>> {
        futures_util::stream::iter(sites)
            .map(|site| self.verdict(site))
            .buffered(READS)
            .collect()
            .await
    }

    /// Whether `site` can be added: its id free (or held with the same spec) and none of its
    /// domains held by another registry site (the same reads as [`Registry::create`]).
    async fn verdict(&self, site: &Planned) -> Result<Verdict, RegistryError> {
        let previous = self.record(&site.key).await?;
        let version = match previous {
            Some(Record {
                spec: Some(spec), ..
            }) if spec == site.spec => return Ok(Verdict::Unchanged),
            Some(Record { spec: Some(_), .. }) => {
                return Err(RegistryError::IdTaken {
                    id: site.id.clone(),
                });
            }
            Some(tombstone) => tombstone.version + 1,
            None => 1,
        };
        self.registry_conflict(&site.domains, None).await?;
        Ok(Verdict::New { version })
    }

    /// Check `chunk` again under the lease and write it: claims first, then the sites.
    async fn write_chunk(
        &self,
        chunk: Vec<Planned>,
        out: &mut Created,
    ) -> Result<(), RegistryError> {
        let guard = self.lock().await?;
        let result = async {
            let verdicts = self.verdicts(&chunk).await;
            let (mut claims, mut records, mut written) = (Vec::new(), Vec::new(), Vec::new());
            for (site, verdict) in chunk.into_iter().zip(verdicts) {
                let version = match verdict {
                    Ok(Verdict::New { version }) => version,
                    Ok(Verdict::Unchanged) => {
                        out.unchanged.push(site.index);
                        continue;
                    }
                    Err(RegistryError::Store(e)) => return Err(RegistryError::Store(e)),
                    Err(error) => {
                        out.refused.push(Refused {
                            index: site.index,
                            error,
                        });
                        continue;
                    }
                };
                claims.extend(crate::registry::claims(&site.domains, &site.id)?);
                let record = self.new_record(&site.id, version, Some(site.spec), None);
                records.push((site.key.clone(), Registry::encode(&site.key, &record)?));
                written.push(record);
            }
            if !out.refused.is_empty() {
                return Ok(());
            }
            self.store.put_many_fenced(&claims, &guard.lease()).await?;
            self.store.put_many_fenced(&records, &guard.lease()).await?;
            out.created
                .extend(written.into_iter().filter_map(Record::entry));
            Ok(())
        }
        .await;
        crate::registry::release(guard).await;
        result
    }
}

/// The local checks of one site: its rules, the config file's domains, and the domains of the
/// sites before it in the batch (`batch_domains`, which gains this site's).
fn plan(
    index: usize,
    spec: SiteSpec,
    env: &SiteEnv,
    file_domains: &HashMap<String, String>,
    batch_domains: &mut HashMap<String, String>,
) -> Result<Planned, RegistryError> {
    let (id, key, domains) = crate::registry::new_site(&spec, env, file_domains)?;
    if let Some((domain, first)) = domains
        .iter()
        .find_map(|d| batch_domains.get(d).map(|first| (d, first)))
    {
        return Err(RegistryError::DomainRepeated {
            domain: domain.clone(),
            site: first.clone(),
        });
    }
    for d in &domains {
        batch_domains.insert(d.clone(), id.clone());
    }
    Ok(Planned {
        index,
        id,
        key,
        domains,
        spec,
    })
}

/// The ids and claimed domains the registry holds objects for (live or not).
struct Known {
    ids: std::collections::HashSet<String>,
    claimed: std::collections::HashSet<String>,
}

impl Known {
    fn touches(&self, site: &Planned) -> bool {
        self.ids.contains(&site.id) || site.domains.iter().any(|d| self.claimed.contains(d))
    }
}
