//! `fleetgate sites list|show|add|set|rm`: the registry through the config file's store, like
//! `fleetgate certs` (no node needs to run). The same catalog calls as the admin API, so both
//! accept and refuse the same sites; `--json` prints the API's JSON forms.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::admin::catalog::Catalog;
use crate::admin::problem::Problem;
use crate::admin::view::SiteView;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum SitesCommand {
    /// Every site, file and registry.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON (the admin API's form) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One site.
    Show {
        id: String,
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Add a registry site: --domains plus one action (or --from-json).
    Add {
        #[command(flatten)]
        site: SiteArgs,
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Change a registry site: the options given replace those parts of it (--from-json replaces
    /// all of it). The write is conditional on the version read (or on --if-match).
    Set {
        id: String,
        #[command(flatten)]
        site: SiteArgs,
        /// Only if the site is still at this version.
        #[arg(long)]
        if_match: Option<u64>,
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Add many registry sites from a JSON file: an array of sites (the `[[site]]` keys, as
    /// `--from-json` and the API take one). Every site is checked first, as `add` would check
    /// it and against the file's other sites; if any is refused, each refusal is reported (its
    /// index and the reason), nothing is added and the exit status is 1. A site already in the
    /// registry with the same spec is left as it is, so an import can be run again.
    Import {
        file: PathBuf,
        #[arg(long, short)]
        config: PathBuf,
        /// Print a JSON summary ({"added": [...], "unchanged": [...], "refused": [{index, id,
        /// reason}]}).
        #[arg(long)]
        json: bool,
    },
    /// Remove a registry site.
    Rm {
        id: String,
        #[arg(long)]
        if_match: Option<u64>,
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

impl SitesCommand {
    pub fn config(&self) -> &PathBuf {
        match self {
            SitesCommand::List { config, .. }
            | SitesCommand::Show { config, .. }
            | SitesCommand::Add { config, .. }
            | SitesCommand::Set { config, .. }
            | SitesCommand::Import { config, .. }
            | SitesCommand::Rm { config, .. } => config,
        }
    }
}

/// What a site is made of on the command line.
#[derive(Debug, Args)]
pub struct SiteArgs {
    /// The site's domains, comma-separated; the first is its id.
    #[arg(long, value_delimiter = ',')]
    domains: Vec<String>,
    /// Redirect every request to this URL.
    #[arg(long, group = "action")]
    redirect: Option<String>,
    /// The redirect's status (301, 302, 307 or 308).
    #[arg(long, requires = "redirect")]
    status: Option<u16>,
    /// Reverse-proxy to these upstream URLs (comma-separated).
    #[arg(long, group = "action", value_delimiter = ',')]
    proxy: Option<Vec<String>>,
    /// Answer every request with this status.
    #[arg(long, group = "action")]
    respond: Option<u16>,
    /// The body of --respond.
    #[arg(long, requires = "respond")]
    body: Option<String>,
    /// Where the certificate comes from: acme (the default) or internal.
    #[arg(long)]
    tls: Option<String>,
    /// The whole site as JSON (the `[[site]]` keys), as the API takes it.
    #[arg(long, group = "action", conflicts_with = "domains")]
    from_json: Option<PathBuf>,
}

impl SiteArgs {
    /// The spec these options make, starting from `base` (a `set`: the current spec).
    fn spec(&self, base: Option<&sites::SiteSpec>) -> anyhow::Result<sites::SiteSpec> {
        if let Some(path) = &self.from_json {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            return crate::admin::parse_spec(&bytes)
                .map_err(|p| anyhow::anyhow!("{}: {}", path.display(), problem_text(&p)));
        }
        let mut object = match base {
            Some(spec) => match serde_json::to_value(spec)? {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        if !self.domains.is_empty() {
            let domains: Vec<&str> = self
                .domains
                .iter()
                .map(|d| d.trim())
                .filter(|d| !d.is_empty())
                .collect();
            object.insert("domains".into(), json!(domains));
        }
        let action = if let Some(to) = &self.redirect {
            let mut r = json!({ "to": to });
            if let Some(status) = self.status {
                r["status"] = json!(status);
            }
            Some(("redirect", r))
        } else if let Some(upstreams) = &self.proxy {
            Some(("proxy", json!({ "upstreams": upstreams })))
        } else if let Some(status) = self.respond {
            let mut r = json!({ "status": status });
            if let Some(body) = &self.body {
                r["body"] = json!(body);
            }
            Some(("respond", r))
        } else {
            None
        };
        if let Some(tls) = &self.tls {
            object.insert("tls".into(), json!(tls));
        }
        match action {
            Some((key, value)) => {
                for other in ["redirect", "proxy", "respond"] {
                    object.remove(other);
                }
                object.insert(key.into(), value);
            }
            None if base.is_none() => anyhow::bail!(
                "--domains needs one action: --redirect URL, --proxy URL,..., --respond STATUS (or give --from-json FILE)"
            ),
            None => {}
        }
        if !object.contains_key("domains") {
            anyhow::bail!("--domains: a site needs at least one domain");
        }
        let bytes = serde_json::to_vec(&Value::Object(object))?;
        crate::admin::parse_spec(&bytes).map_err(|p| anyhow::anyhow!("{}", problem_text(&p)))
    }
}

/// `field: detail`, the field as the `[[site]]` key (`redirect.to`) when the problem names one.
fn problem_text(p: &Problem) -> String {
    match &p.field {
        Some(pointer) if !p.detail.starts_with(&dotted(pointer)) => {
            format!("{}: {}", dotted(pointer), p.detail)
        }
        _ => p.detail.clone(),
    }
}

/// `/redirect/to` -> `redirect.to`, `/domains/1` -> `domains[1]`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

fn fail(p: Problem) -> anyhow::Error {
    anyhow::anyhow!("{}", problem_text(&p))
}

pub async fn run(config: Config, command: SitesCommand) -> anyhow::Result<()> {
    let (store, _) = crate::store_open::open_store(&config).await?;
    let who = format!("cli:{}", crate::store_open::node_name(&config));
    let registry = sites::Registry::new(store, who);
    let catalog = Catalog::new(Arc::new(config), &registry);
    let mut out = std::io::stdout().lock();
    match command {
        SitesCommand::List { json, .. } => {
            let all = catalog.list().await.map_err(fail)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &json!({ "sites": all }))?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<32} {:<9} {:>7} {:<40} ACTION",
                    "ID", "SOURCE", "VERSION", "DOMAINS"
                )?;
                for site in &all {
                    writeln!(
                        out,
                        "{:<32} {:<9} {:>7} {:<40} {}",
                        site.id,
                        site.kind(),
                        site.version.map(|v| v.to_string()).unwrap_or("-".into()),
                        site.domains().join(","),
                        site.action()
                    )?;
                }
            }
        }
        SitesCommand::Show { id, json, .. } => {
            let site = catalog.get(&id).await.map_err(fail)?;
            print_site(&mut out, &site, json)?;
        }
        SitesCommand::Add { site, json, .. } => {
            let spec = site.spec(None)?;
            let created = catalog.create(spec).await.map_err(fail)?;
            print_site(&mut out, &created, json)?;
        }
        SitesCommand::Set {
            id,
            site,
            if_match,
            json,
            ..
        } => {
            let current = catalog.get(&id).await.map_err(fail)?;
            let spec = site.spec(Some(&current.spec))?;
            // Read-modify-write: conditional on the version read unless told otherwise.
            let if_match = if_match.or(current.version);
            let updated = catalog.update(&id, spec, if_match).await.map_err(fail)?;
            print_site(&mut out, &updated, json)?;
        }
        SitesCommand::Import { file, json, .. } => {
            return import(&catalog, &file, json, &mut out).await;
        }
        SitesCommand::Rm {
            id, if_match, json, ..
        } => {
            catalog.delete(&id, if_match).await.map_err(fail)?;
            if json {
                serde_json::to_writer(&mut out, &json!({ "removed": id }))?;
                writeln!(out)?;
            } else {
                writeln!(out, "removed {id}")?;
            }
        }
    }
    Ok(())
}

/// `fleetgate sites import FILE`: every site of the array checked first (nothing written if
/// any is refused), then written in chunks (see `sites::batch`).
async fn import(
    catalog: &Catalog<'_>,
    file: &std::path::Path,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let sites: Vec<Value> = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a JSON array of sites: {e}", file.display()))?;
    drop(bytes);
    let started = std::time::Instant::now();
    let id_of = |index: usize| -> String {
        sites[index]
            .get("domains")
            .and_then(|d| d.get(0))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let refusal = |index: usize, p: &Problem| json!({ "index": index, "id": id_of(index), "reason": problem_text(p) });
    // Parse every site; `at[i]` is the array index of the i-th parsed one.
    let (mut specs, mut at, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for (index, site) in sites.iter().enumerate() {
        match crate::admin::parse_spec(site.to_string().as_bytes()) {
            Ok(spec) => {
                specs.push(spec);
                at.push(index);
            }
            Err(p) => refused.push(refusal(index, &p)),
        }
    }
    let checked = catalog.check_many(specs).await.map_err(fail)?;
    let (mut added, mut unchanged, mut stopped) = (Vec::new(), Vec::new(), None);
    match checked {
        Err(refusals) => {
            refused.extend(refusals.iter().map(|(i, p)| refusal(at[*i], p)));
            refused.sort_by_key(|r| r["index"].as_u64());
        }
        // Nothing refused so far: write.
        Ok(checked) if refused.is_empty() => {
            let written = catalog.write_many(checked).await;
            added = written.added.into_iter().map(|v| v.id).collect();
            unchanged = written.unchanged.iter().map(|i| id_of(at[*i])).collect();
            refused.extend(written.refused.iter().map(|(i, p)| refusal(at[*i], p)));
            stopped = written.stopped.as_ref().map(problem_text);
        }
        Ok(_) => {}
    }
    if json {
        let mut summary = json!({ "added": added, "unchanged": unchanged, "refused": refused });
        if let Some(why) = &stopped {
            summary["stopped"] = json!(why);
        }
        serde_json::to_writer_pretty(&mut *out, &summary)?;
        writeln!(out)?;
    } else {
        for r in &refused {
            writeln!(
                out,
                "refused [{}] {}: {}",
                r["index"],
                r["id"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("?")
            )?;
        }
        writeln!(
            out,
            "{}: {} sites added, {} already there, {} refused, in {:.1} s",
            file.display(),
            added.len(),
            unchanged.len(),
            refused.len(),
            started.elapsed().as_secs_f64()
        )?;
    }
    if let Some(why) = stopped {
        anyhow::bail!(
            "stopped after {} sites were added (run the import again to add the rest): {why}",
            added.len()
        );
    }
    anyhow::ensure!(
        refused.is_empty(),
        "{} of {} sites refused; {}",
        refused.len(),
        sites.len(),
        if added.is_empty() {
            "nothing was added"
        } else {
            "the sites listed as added were added before a concurrent write took a domain"
        }
    );
    Ok(())
}

fn print_site(out: &mut impl Write, site: &SiteView, json: bool) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, site)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "id:       {}", site.id)?;
    writeln!(out, "source:   {}", site.kind())?;
    if let Some(state) = &site.on_demand {
        writeln!(out, "on-demand: {}", serde_json::to_string(state)?)?;
    }
    if let Some(v) = site.version {
        writeln!(out, "version:  {v}")?;
    }
    if let Some(by) = &site.updated_by {
        let at = site
            .updated_at
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t as i64).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".into());
        writeln!(out, "updated:  {at} by {by}")?;
    }
    writeln!(out, "domains:  {}", site.domains().join(", "))?;
    writeln!(out, "action:   {}", site.action())?;
    writeln!(out, "spec:     {}", serde_json::to_string(&site.spec)?)?;
    Ok(())
}
