//! The configuration file: a raw serde form (unknown keys rejected, [`raw`]) converted once into
//! a validated [`Config`], one section at a time ([`sections`], and [`file_sites`] for the
//! `[[site]]` tables, whose rules live in the `sites` crate). Every error names the file, the
//! line and the key.

mod cert_check;
mod file_sites;
mod messages;
mod raw;
mod sections;
mod split;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certs::KeyType;
use certs::acme::AcmeSettings;
use toml::Spanned;

pub use cert_check::{check_certificates, site_certificate};
pub use sites::{Site, SiteAction, SiteEnv, SiteSpec, TlsChoice};

/// A configuration error: where, which key, and what was expected.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub node: Option<String>,
    pub listen_http: SocketAddr,
    pub listen_https: SocketAddr,
    /// Balancers that send a PROXY protocol header (`listen.proxy_protocol_from`); empty: off.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Worker threads with connections pinned to them (`listen.workers`); 0: the shared,
    /// work-stealing runtime serves every connection.
    pub workers: usize,
    pub storage: StorageConfig,
    /// Where the sealing key comes from; `None` stores private keys unsealed.
    pub seal_key: Option<SealKeySource>,
    /// Lease TTL and resync interval of the certificate manager.
    pub timings: certs::Timings,
    /// `[acme]`: one copy, shared by every ACME certificate the node manages.
    pub acme: Option<std::sync::Arc<AcmeSettings>>,
    /// `acme.key_type`: the key type of sites that name none.
    pub default_key_type: KeyType,
    pub log: LogConfig,
    pub limits: edge::Limits,
    /// `tls.ticket_key_rotation`: how often the fleet's TLS session ticket keys rotate (a
    /// ticket resumes for at least that long).
    pub ticket_key_rotation: Duration,
    /// `[admin]`: the admin API, off without the section.
    pub admin: Option<crate::admin_config::AdminConfig>,
    /// `[on_demand]`: certificates for names allowed by `ask` at their first handshake.
    pub on_demand: Option<crate::on_demand_config::OnDemandConfig>,
    /// `[dns]`: the delegated DNS-01 zone this node serves and RFC 2136 servers; off without it.
    pub dns: Option<crate::config_dns::DnsConfig>,
    /// The file's `[[site]]` tables, validated, in file order.
    pub sites: Vec<Site>,
    /// The same tables as written (for showing them, e.g. in the admin API).
    pub site_specs: Vec<SiteSpec>,
    /// The file's text, for placing certificate findings in it ([`Config::site_tls_lines`]),
    /// until [`Config::drop_text`].
    text: Option<SourceText>,
}

/// A config file's text, kept so that lines are found only when something is to be placed
/// there: finding the line of every site's `tls` key means parsing the whole document again
/// into a spanned tree, about 7 KiB per site (70 MB at 10,000 sites, on top of the sites
/// already built), which a start should not pay for nothing. A running node, whose
/// certificates the manager checks, lets it go ([`Config::drop_text`]).
#[derive(Clone)]
struct SourceText(std::sync::Arc<str>);

impl std::fmt::Debug for SourceText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceText({} bytes)", self.0.len())
    }
}

/// Where the shared state lives. `path` is the store itself for `dir`, and this node's local
/// cache (served from while the shared store is down) for `postgres` and `redis`.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageConfig {
    Dir {
        path: PathBuf,
    },
    Postgres {
        url: String,
        path: PathBuf,
        /// `storage.ca_root`: roots for verifying the database's TLS certificate.
        ca_root: Option<PathBuf>,
    },
    Redis {
        url: String,
        prefix: String,
        path: PathBuf,
        /// `storage.ca_root`: roots for verifying Redis's TLS certificate (`rediss://`).
        ca_root: Option<PathBuf>,
    },
}

impl StorageConfig {
    /// This node's own folder: the store itself for `dir`, the local cache's parent otherwise.
    pub fn path(&self) -> &Path {
        match self {
            StorageConfig::Dir { path }
            | StorageConfig::Postgres { path, .. }
            | StorageConfig::Redis { path, .. } => path,
        }
    }
}

/// The sealing key's origin when it is a file; without one, the `FLEETGATE_SEAL_KEY`
/// environment variable is used if set. The key itself is read when the store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealKeySource {
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// The file being parsed: where errors point.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    /// The config file's folder: relative paths resolve against it.
    base: PathBuf,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// An error at `span` (a default value's empty `0..0` span has no line).
    fn err(
        &self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let line = span
            .filter(|s| !(s.start == 0 && s.end == 0))
            .map(|s| self.line_of(s.start));
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            key: key.into(),
            message: message.into(),
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    /// `path` resolved (relative to the config file), which must name an existing file.
    fn existing_file(&self, path: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let file = self.resolve(path.get_ref());
        if !file.is_file() {
            return Err(self.err(
                Some(path.span()),
                key,
                format!("no such file: {}", file.display()),
            ));
        }
        Ok(file)
    }

    /// A TOML syntax or shape error from serde, with the dotted key it happened at and what it
    /// expected in the user's words.
    fn toml_err(&self, e: &toml::de::Error) -> ConfigError {
        let key = e
            .span()
            .map(|s| {
                messages::key_of_span(self.text, &s).unwrap_or_else(|| key_at(self.text, s.start))
            })
            .unwrap_or_default();
        let message = messages::in_user_words(e.message(), &key);
        let mut err = self.err(e.span(), key, message);
        if err.line.is_none() && e.span().is_some() {
            err.line = Some(1);
        }
        err
    }
}

/// The file as written: its `[[site]]` tables one at a time when [`split`] can cut them out (a
/// file of 100,000 sites then never holds more than one site's parse tree), else, and for every
/// error, the whole document at once.
fn parse_raw(ctx: &Ctx<'_>, text: &str) -> Result<raw::RawConfig, ConfigError> {
    if let Some(raw) = split::split(text).and_then(|cut| parse_cut(text, &cut)) {
        return Ok(raw);
    }
    // A `[site]` table where `[[site]]` is meant fails to deserialize; only then is the file
    // parsed again to say so.
    toml::from_str(text).map_err(|e| match messages::single_table_for_array(text) {
        Some((span, key, message)) => ctx.err(Some(span), key, message),
        None => ctx.toml_err(&e),
    })
}

/// The rest of the file and each site parsed apart; `None` on any error (the whole-document
/// parse then says what is wrong, where).
fn parse_cut(text: &str, cut: &split::Split) -> Option<raw::RawConfig> {
    /// One `[[site]]` table and its subtables, alone.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct OneSite {
        site: Vec<SiteSpec>,
    }
    let mut raw: raw::RawConfig = toml::from_str(&cut.rest).ok()?;
    if !raw.sites.is_empty() {
        return None;
    }
    let one = |i: usize| -> Option<SiteSpec> {
        let one: OneSite = toml::from_str(&cut.site_text(text, i)).ok()?;
        let [spec] = <[SiteSpec; 1]>::try_from(one.site).ok()?;
        Some(spec)
    };
    // The sites are independent: a large file's are parsed on every core (100,000 sites took
    // about a second on one).
    let count = cut.sites.len();
    let threads = match count {
        0..PARALLEL_PARSE_FROM => 1,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
    };
    let per = count.div_ceil(threads);
    let parts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let range = (t * per).min(count)..((t + 1) * per).min(count);
                scope.spawn(move || range.map(one).collect::<Option<Vec<SiteSpec>>>())
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().ok().flatten())
            .collect::<Option<Vec<Vec<SiteSpec>>>>()
    })?;
    raw.sites = parts.into_iter().flatten().collect();
    Some(raw)
}

/// From this many `[[site]]` tables on, they are parsed on every core.
const PARALLEL_PARSE_FROM: usize = 2_000;

impl Config {
    /// Read and validate a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(file, &text)
    }

    /// Validate configuration text; `file` is used in errors and to resolve relative paths.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let ctx = Ctx {
            file,
            text,
            base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let raw = parse_raw(&ctx, text)?;
        let listen = sections::listen(&ctx, &raw.listen)?;
        let storage = sections::storage(&ctx, &raw.storage)?;
        let mut timings = storage.timings;
        let acme = sections::acme(&ctx, raw.acme.as_ref(), &mut timings.limits)?;
        let log = sections::log(&ctx, &raw.log)?;
        let limits = sections::limits(&ctx, &raw.limits)?;
        let ticket_key_rotation = sections::tls(&ctx, &raw.tls)?;
        let admin = (raw.admin.as_ref())
            .map(|a| crate::admin_config::parse(a, &|p: &str| ctx.resolve(p)))
            .transpose()
            .map_err(|e| ctx.err(Some(e.span), e.key, e.message))?;
        let dns = crate::config_dns::parse(
            raw.dns.as_ref(),
            &|p: &str| ctx.resolve(p),
            &|span, key, message| ctx.err(span, key, message),
        )?;
        if admin.is_none() && dns.as_ref().is_some_and(|d| d.acme_dns_listen.is_some()) {
            return Err(ctx.err(
                raw.dns.as_ref().map(|d| d.span()),
                "dns.acme_dns_listen",
                "is served with the admin API: add an [admin] section (it may stay on loopback)",
            ));
        }
        let challenges = acme
            .settings
            .as_ref()
            .map_or(&[][..], |a| &a.challenges[..]);
        if let Some(acme_raw) = &raw.acme {
            crate::config_dns::check_challenges(dns.as_ref(), challenges, None, &|m| {
                ctx.err(Some(acme_raw.span()), "acme.challenges", m)
            })?;
        }
        let env = SiteEnv {
            base: Some(ctx.base.clone()),
            acme: acme.settings.is_some(),
            dns01: dns.is_some() && challenges.contains(&certs::ChallengeKind::Dns01),
            default_key_type: acme.key_type,
        };
        let sites = file_sites::sites(&ctx, &raw.sites, &env)?;
        let ids: Vec<String> = sites.iter().map(Site::id).collect();
        let on_demand = (raw.on_demand.as_ref())
            .map(|o| crate::on_demand_config::parse(o, &ids))
            .transpose()
            .map_err(|e| ctx.err(Some(e.span), e.key, e.message))?;
        let mut site_specs = raw.sites;
        site_specs.shrink_to_fit();
        Ok(Config {
            file: file.to_path_buf(),
            node: raw.node,
            listen_http: listen.http,
            listen_https: listen.https,
            proxy_protocol_from: listen.proxy_protocol_from,
            workers: listen.workers,
            storage: storage.storage,
            seal_key: storage.seal_key,
            timings,
            acme: acme.settings.map(std::sync::Arc::new),
            default_key_type: acme.key_type,
            log,
            limits,
            ticket_key_rotation,
            admin,
            on_demand,
            dns,
            sites,
            site_specs,
            text: Some(SourceText(text.into())),
        })
    }

    /// The line of each site's `tls` key (else of its `[[site]]` header), for certificate
    /// findings. Parses the whole file again: call it only with something to place. No lines
    /// once the text was dropped.
    pub fn site_tls_lines(&self) -> Vec<Option<usize>> {
        let Some(SourceText(text)) = &self.text else {
            return vec![None; self.sites.len()];
        };
        let text = &**text;
        // Lines found by binary search over the newlines: a file of thousands of sites is
        // scanned once, not once per site.
        let newlines: Vec<usize> = text.match_indices('\n').map(|(i, _)| i).collect();
        file_sites::field_spans(text, self.sites.len(), &sites::FieldPath::of(&["tls"]))
            .into_iter()
            .map(|span| span.map(|s| newlines.partition_point(|&n| n < s.start) + 1))
            .collect()
    }

    /// Lets the file's text go (what [`Config::site_tls_lines`] reads): a running node keeps its
    /// configuration for as long as it runs, and its certificates are checked elsewhere.
    pub fn drop_text(&mut self) {
        self.text = None;
    }

    /// Lets the file's text and the sites as written ([`Config::site_specs`]) go: the
    /// configuration a node serves from needs only the validated sites, and at 10,000 sites
    /// the two were 11 MB. What shows the sites as written (the admin API) or copies one (the
    /// on-demand template) keeps its own.
    pub fn keep_for_serving(&mut self) {
        self.drop_text();
        self.site_specs = Vec::new();
    }

    /// The certificates the file's sites need: one per site (split above
    /// [`sites::MAX_NAMES_PER_CERT`] names).
    pub fn managed_certs(&self) -> Vec<certs::ManagedCert> {
        managed_certs(&self.sites, self.acme.as_ref())
    }

    /// How registry sites (JSON: absolute paths only) are validated on this node.
    pub fn registry_env(&self) -> SiteEnv {
        SiteEnv {
            base: None,
            acme: self.acme.is_some(),
            dns01: self.dns.is_some()
                && self
                    .acme
                    .as_ref()
                    .is_some_and(|a| a.challenges.contains(&certs::ChallengeKind::Dns01)),
            default_key_type: self.default_key_type,
        }
    }

    /// Every domain the file's sites hold, with the id of the site holding it.
    pub fn file_domains(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for site in &self.sites {
            let id = site.id();
            for d in &site.domains {
                out.insert(d.to_string(), id.clone());
            }
        }
        out
    }
}

/// The certificates `sites` need, in order.
pub fn managed_certs(
    sites: &[Site],
    acme: Option<&std::sync::Arc<AcmeSettings>>,
) -> Vec<certs::ManagedCert> {
    let mut certs: Vec<_> = sites.iter().flat_map(|s| s.managed_certs(acme)).collect();
    // Kept by a running node (to tell changes): without the room collecting grew (1.3 MB at
    // 10,000 sites).
    certs.shrink_to_fit();
    certs
}

/// The dotted key at byte `offset` of `text`, for parse errors: the nearest table header above
/// (`[listen]`, `[[site]]` as `site[N]`) and the key on that line, e.g. `listen.htps`.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    let mut table = String::new();
    let mut site_index: Option<usize> = None;
    for l in text[..line_start].lines() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim();
            if name == "site" {
                site_index = Some(site_index.map_or(0, |i| i + 1));
                table = format!("site[{}]", site_index.unwrap_or(0));
            } else {
                table = name.to_string();
            }
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let key = if line.starts_with('[') {
        ""
    } else {
        line.split('=').next().unwrap_or("").trim()
    };
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key.to_string(),
        (false, false) => format!("{table}.{key}"),
    }
}
