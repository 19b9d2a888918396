//! The configuration file: a raw serde form (unknown keys rejected) converted once into a
//! validated [`Config`]. Every error names the file, the line and the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certs::acme::{AcmeSettings, Eab};
use certs::{ChallengeKind, DomainName, KeyType};
use serde::Deserialize;
use toml::Spanned;

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

// ---- raw form -------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    acme: Option<Spanned<RawAcme>>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default, rename = "site")]
    sites: Vec<Spanned<RawSite>>,
    #[serde(default)]
    dns: Option<Spanned<crate::config_dns::RawDns>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default = "default_http")]
    http: Spanned<String>,
    #[serde(default = "default_https")]
    https: Spanned<String>,
    /// Load balancers (addresses or networks) whose connections start with a PROXY header.
    #[serde(default)]
    proxy_protocol_from: Vec<Spanned<String>>,
    /// Worker threads that each serve their share of the connections; 0: one shared runtime.
    #[serde(default = "default_workers")]
    workers: Spanned<u32>,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            http: default_http(),
            https: default_https(),
            proxy_protocol_from: Vec::new(),
            workers: default_workers(),
        }
    }
}

fn default_workers() -> Spanned<u32> {
    Spanned::new(0..0, 0)
}

fn default_http() -> Spanned<String> {
    Spanned::new(0..0, "0.0.0.0:80".to_string())
}
fn default_https() -> Spanned<String> {
    Spanned::new(0..0, "0.0.0.0:443".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(default = "default_kind")]
    kind: Spanned<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    seal_key_file: Option<Spanned<String>>,
    /// PEM roots for TLS to the database (`sslmode=require`, `rediss://`).
    #[serde(default)]
    ca_root: Option<Spanned<String>>,
    #[serde(default)]
    lease_ttl: Option<Spanned<String>>,
    #[serde(default)]
    resync_interval: Option<Spanned<String>>,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            kind: default_kind(),
            path: None,
            url: None,
            prefix: None,
            seal_key_file: None,
            ca_root: None,
            lease_ttl: None,
            resync_interval: None,
        }
    }
}

fn default_kind() -> Spanned<String> {
    Spanned::new(0..0, "dir".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    directory: Spanned<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    ca_root: Option<Spanned<String>>,
    #[serde(default)]
    eab: Option<RawEab>,
    #[serde(default)]
    challenges: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    key_type: Option<Spanned<String>>,
    #[serde(default)]
    orders_per_3h: Option<u32>,
    #[serde(default)]
    certs_per_domain_per_week: Option<u32>,
    #[serde(default)]
    failed_validations_per_hour: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEab {
    kid: String,
    hmac_key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: Option<Spanned<String>>,
    #[serde(default)]
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    tls_handshake_timeout: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    domains: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    redirect: Option<Spanned<RawRedirect>>,
    #[serde(default)]
    respond: Option<Spanned<RawRespond>>,
    #[serde(default)]
    proxy: Option<Spanned<RawProxy>>,
    #[serde(default)]
    tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    key_type: Option<Spanned<String>>,
    #[serde(default)]
    https_redirect: Option<bool>,
    #[serde(default)]
    hsts: Option<Spanned<RawHsts>>,
    #[serde(default)]
    access_log: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedirect {
    to: Spanned<String>,
    #[serde(default = "default_redirect_status")]
    status: Spanned<u16>,
    #[serde(default = "default_true")]
    keep_path: bool,
}

fn default_redirect_status() -> Spanned<u16> {
    Spanned::new(0..0, 301)
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRespond {
    #[serde(default = "default_respond_status")]
    status: Spanned<u16>,
    #[serde(default)]
    body: String,
}

fn default_respond_status() -> Spanned<u16> {
    Spanned::new(0..0, 200)
}

/// `proxy = { upstreams = [...], ... }` on a site; defaults come from [`edge::Proxy::new`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    upstreams: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    policy: Option<Spanned<String>>,
    #[serde(default)]
    health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    host_header: Option<Spanned<String>>,
    #[serde(default)]
    connect_timeout: Option<Spanned<String>>,
    #[serde(default)]
    response_header_timeout: Option<Spanned<String>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    max_body: Option<Spanned<RawSize>>,
    #[serde(default)]
    fail_after: Option<u32>,
    #[serde(default)]
    fail_timeout: Option<Spanned<String>>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    ca_root: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Spanned<String>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
}

/// A byte size: an integer, or text like `"10MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawTls {
    Named(String),
    Files(RawTlsFiles),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsFiles {
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawHsts {
    On(bool),
    Settings(RawHstsSettings),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHstsSettings {
    #[serde(default)]
    max_age: Option<String>,
    #[serde(default)]
    include_subdomains: bool,
}

/// `listen.workers` above this is a typo rather than a machine.
const MAX_WORKERS: u32 = 1024;

// ---- validated form -------------------------------------------------------------------------

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
    pub acme: Option<AcmeSettings>,
    pub log: LogConfig,
    pub limits: edge::Limits,
    pub sites: Vec<SiteConfig>,
    pub dns: Option<crate::config_dns::DnsConfig>,
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

#[derive(Debug, Clone, PartialEq)]
pub enum TlsChoice {
    Acme,
    Internal,
    Files { cert: PathBuf, key: PathBuf },
}

#[derive(Debug, Clone)]
pub enum SiteAction {
    Redirect {
        to: String,
        status: u16,
        keep_path: bool,
    },
    Respond {
        status: u16,
        body: String,
    },
    /// `proxy.ca_root` is read (into `proxy.ca_root_pem`) when the routes are built.
    Proxy {
        proxy: Box<edge::Proxy>,
        ca_root: Option<PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub domains: Vec<DomainName>,
    pub action: SiteAction,
    pub tls: TlsChoice,
    pub key_type: KeyType,
    pub https_redirect: bool,
    pub hsts: Option<edge::Hsts>,
    /// One structured log event per request the site's action handles.
    pub access_log: bool,
}

/// Names per ACME order; larger sites are split into several certificates.
pub const MAX_NAMES_PER_CERT: usize = 100;

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let line = span.filter(|s| !(s.start == 0 && s.end == 0)).map(|s| {
            self.text[..s.start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1
        });
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            key: key.into(),
            message: message.into(),
        }
    }

    /// `path` resolved (relative to the config file), which must name an existing file.
    fn existing_file(
        &self,
        path: &Spanned<String>,
        resolve: &dyn Fn(&str) -> PathBuf,
        key: impl Into<String>,
    ) -> Result<PathBuf, ConfigError> {
        let file = resolve(path.get_ref());
        if !file.is_file() {
            return Err(self.err(
                Some(path.span()),
                key,
                format!("no such file: {}", file.display()),
            ));
        }
        Ok(file)
    }
}

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
        let ctx = Ctx { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e.span().map(|s| key_at(text, s.start)).unwrap_or_default();
            let mut err = ctx.err(e.span(), key, e.message().trim().to_string());
            if err.line.is_none() && e.span().is_some() {
                err.line = Some(1);
            }
            err
        })?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &str| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { base.join(p) }
        };

        let addr = |s: &Spanned<String>, key: &str| -> Result<SocketAddr, ConfigError> {
            s.get_ref().parse().map_err(|_| {
                ctx.err(
                    Some(s.span()),
                    key,
                    format!(
                        "expected an address like \"0.0.0.0:443\", got {:?}",
                        s.get_ref()
                    ),
                )
            })
        };
        let listen_http = addr(&raw.listen.http, "listen.http")?;
        let listen_https = addr(&raw.listen.https, "listen.https")?;
        if listen_http == listen_https {
            return Err(ctx.err(
                Some(raw.listen.https.span()),
                "listen.https",
                "must differ from listen.http",
            ));
        }
        let proxy_protocol_from = raw
            .listen
            .proxy_protocol_from
            .iter()
            .enumerate()
            .map(|(i, source)| {
                edge::ProxyProtocol::parse_source(source.get_ref()).map_err(|message| {
                    ctx.err(
                        Some(source.span()),
                        format!("listen.proxy_protocol_from[{i}]"),
                        message,
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let workers = *raw.listen.workers.get_ref();
        if workers > MAX_WORKERS {
            return Err(ctx.err(
                Some(raw.listen.workers.span()),
                "listen.workers",
                format!("at most {MAX_WORKERS} (0 serves every connection on one shared runtime)"),
            ));
        }

        let data_path = raw
            .storage
            .path
            .as_deref()
            .map(resolve)
            .unwrap_or_else(|| PathBuf::from("/var/lib/fleetgate"));
        let url = |scheme: &[&str]| -> Result<String, ConfigError> {
            let Some(url) = &raw.storage.url else {
                return Err(ctx.err(
                    Some(raw.storage.kind.span()),
                    "storage.url",
                    format!(
                        "storage.kind = {:?} needs a url",
                        raw.storage.kind.get_ref()
                    ),
                ));
            };
            if !scheme.iter().any(|s| url.get_ref().starts_with(s)) {
                return Err(ctx.err(
                    Some(url.span()),
                    "storage.url",
                    format!("expected a URL starting with {}", scheme.join(" or ")),
                ));
            }
            Ok(url.get_ref().clone())
        };
        let ca_root = match &raw.storage.ca_root {
            Some(path) if raw.storage.kind.get_ref() == "dir" => {
                return Err(ctx.err(
                    Some(path.span()),
                    "storage.ca_root",
                    "only used with storage.kind = \"postgres\" or \"redis\" (TLS to the database)",
                ));
            }
            Some(path) => {
                let p = resolve(path.get_ref());
                let pem = std::fs::read(&p).map_err(|e| {
                    ctx.err(
                        Some(path.span()),
                        "storage.ca_root",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                use rustls_pki_types::pem::PemObject as _;
                let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>();
                if !certs.is_ok_and(|c| !c.is_empty()) {
                    return Err(ctx.err(
                        Some(path.span()),
                        "storage.ca_root",
                        format!("{} holds no PEM certificate", p.display()),
                    ));
                }
                Some(p)
            }
            None => None,
        };
        let storage = match raw.storage.kind.get_ref().as_str() {
            "dir" => StorageConfig::Dir { path: data_path },
            "postgres" => StorageConfig::Postgres {
                url: url(&["postgres://", "postgresql://"])?,
                path: data_path,
                ca_root,
            },
            "redis" => StorageConfig::Redis {
                url: url(&["redis://", "rediss://", "unix://"])?,
                prefix: raw
                    .storage
                    .prefix
                    .clone()
                    .unwrap_or_else(|| "fleetgate:".to_string()),
                path: data_path,
                ca_root,
            },
            other => {
                return Err(ctx.err(
                    Some(raw.storage.kind.span()),
                    "storage.kind",
                    format!("expected \"dir\", \"postgres\" or \"redis\", got {other:?}"),
                ));
            }
        };

        let seal_key = match &raw.storage.seal_key_file {
            Some(path) => Some(SealKeySource::File(ctx.existing_file(
                path,
                &resolve,
                "storage.seal_key_file",
            )?)),
            None => None,
        };

        let mut timings = certs::Timings::default();
        for (raw_value, key, into) in [
            (
                &raw.storage.lease_ttl,
                "storage.lease_ttl",
                &mut timings.lease_ttl,
            ),
            (
                &raw.storage.resync_interval,
                "storage.resync_interval",
                &mut timings.resync,
            ),
        ] {
            if let Some(v) = raw_value {
                let d = parse_duration(v.get_ref())
                    .filter(|d| *d >= Duration::from_secs(1))
                    .ok_or_else(|| {
                        ctx.err(
                            Some(v.span()),
                            key,
                            format!(
                                "expected a duration of at least 1s like \"30s\", got {:?}",
                                v.get_ref()
                            ),
                        )
                    })?;
                *into = d;
            }
        }

        let mut acme_key_type = KeyType::default();
        let acme = match &raw.acme {
            None => None,
            Some(acme) => {
                let span = acme.span();
                let acme = acme.get_ref();
                let directory = acme.directory.get_ref().trim().to_string();
                if !directory.starts_with("https://") && !directory.starts_with("http://") {
                    return Err(ctx.err(
                        Some(acme.directory.span()),
                        "acme.directory",
                        "expected an https:// URL of the CA's directory",
                    ));
                }
                let challenges = match &acme.challenges {
                    None => vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
                    Some(list) => {
                        let mut out = Vec::new();
                        for item in list {
                            let kind = ChallengeKind::parse(item.get_ref()).ok_or_else(|| {
                                ctx.err(
                                    Some(item.span()),
                                    "acme.challenges",
                                    format!(
                                        "expected \"http-01\", \"tls-alpn-01\" or \"dns-01\", got {:?}",
                                        item.get_ref()
                                    ),
                                )
                            })?;
                            if !out.contains(&kind) {
                                out.push(kind);
                            }
                        }
                        if out.is_empty() {
                            return Err(ctx.err(
                                Some(span),
                                "acme.challenges",
                                "needs at least one challenge type",
                            ));
                        }
                        out
                    }
                };
                if let Some(kt) = &acme.key_type {
                    acme_key_type = parse_key_type(&ctx, kt, "acme.key_type")?;
                }
                let limits = &mut timings.limits;
                for (value, into) in [
                    (acme.orders_per_3h, &mut limits.orders_per_3h),
                    (
                        acme.certs_per_domain_per_week,
                        &mut limits.certs_per_domain_per_week,
                    ),
                    (
                        acme.failed_validations_per_hour,
                        &mut limits.failed_validations_per_hour,
                    ),
                ] {
                    if let Some(v) = value {
                        *into = v;
                    }
                }
                let ca_root = match &acme.ca_root {
                    Some(path) => Some(ctx.existing_file(path, &resolve, "acme.ca_root")?),
                    None => None,
                };
                Some(AcmeSettings {
                    directory,
                    email: acme.email.clone(),
                    ca_root,
                    eab: acme.eab.as_ref().map(|e| Eab {
                        kid: e.kid.clone(),
                        hmac_key: e.hmac_key.clone(),
                    }),
                    challenges,
                })
            }
        };

        let dns = crate::config_dns::parse(raw.dns.as_ref(), &resolve, &|span, key, m| {
            ctx.err(span, key, m)
        })?;
        if let Some(acme_raw) = &raw.acme {
            let challenges = acme.as_ref().map_or(&[][..], |a| &a.challenges[..]);
            crate::config_dns::check_challenges(dns.as_ref(), challenges, None, &|m| {
                ctx.err(Some(acme_raw.span()), "acme.challenges", m)
            })?;
        }

        let log = LogConfig {
            format: match raw
                .log
                .format
                .as_ref()
                .map(|f| (f.get_ref().as_str(), f.span()))
            {
                None | Some(("human", _)) => LogFormat::Human,
                Some(("json", _)) => LogFormat::Json,
                Some((other, span)) => {
                    return Err(ctx.err(
                        Some(span),
                        "log.format",
                        format!("expected \"human\" or \"json\", got {other:?}"),
                    ));
                }
            },
            level: raw.log.level.clone().unwrap_or_else(|| "info".to_string()),
        };

        let mut limits = edge::Limits::default();
        let dur = |d: &Option<Spanned<String>>,
                   key: &str,
                   into: &mut Duration|
         -> Result<(), ConfigError> {
            if let Some(d) = d {
                *into = parse_duration(d.get_ref()).ok_or_else(|| {
                    ctx.err(
                        Some(d.span()),
                        key,
                        format!(
                            "expected a duration like \"10s\", \"500ms\" or \"2m\", got {:?}",
                            d.get_ref()
                        ),
                    )
                })?;
            }
            Ok(())
        };
        dur(
            &raw.limits.header_read_timeout,
            "limits.header_read_timeout",
            &mut limits.header_read_timeout,
        )?;
        dur(
            &raw.limits.idle_timeout,
            "limits.idle_timeout",
            &mut limits.idle_timeout,
        )?;
        dur(
            &raw.limits.tls_handshake_timeout,
            "limits.tls_handshake_timeout",
            &mut limits.tls_handshake_timeout,
        )?;
        dur(
            &raw.limits.drain_timeout,
            "limits.drain_timeout",
            &mut limits.drain_timeout,
        )?;
        if let Some(n) = raw.limits.max_connections {
            limits.max_connections = n.max(1);
        }

        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut sites = Vec::new();
        for (index, site) in raw.sites.iter().enumerate() {
            let at = |key: &str| format!("site[{index}].{key}");
            let site_span = site.span();
            let site = site.get_ref();
            if site.domains.get_ref().is_empty() {
                return Err(ctx.err(
                    Some(site.domains.span()),
                    at("domains"),
                    "needs at least one domain",
                ));
            }
            let mut domains = Vec::new();
            for (i, d) in site.domains.get_ref().iter().enumerate() {
                let name = DomainName::parse(d.get_ref()).map_err(|e| {
                    ctx.err(Some(d.span()), at(&format!("domains[{i}]")), e.to_string())
                })?;
                if let Some(other) = seen.insert(name.to_string(), index) {
                    return Err(ctx.err(
                        Some(d.span()),
                        at(&format!("domains[{i}]")),
                        format!("{name} is already in site[{other}]; a domain belongs to one site"),
                    ));
                }
                domains.push(name);
            }
            if let Some(p) = &site.proxy
                && (site.redirect.is_some() || site.respond.is_some())
            {
                return Err(ctx.err(
                    Some(p.span()),
                    at("proxy"),
                    "a site has one action: redirect, respond or proxy",
                ));
            }
            let action = match (&site.redirect, &site.respond) {
                (Some(_), Some(r)) => {
                    return Err(ctx.err(
                        Some(r.span()),
                        at("respond"),
                        "a site has one action: redirect or respond, not both",
                    ));
                }
                (None, None) => match &site.proxy {
                    Some(p) => parse_proxy(&ctx, p, &at, &resolve)?,
                    None => {
                        return Err(ctx.err(Some(site_span), format!("site[{index}]"), "needs an action: redirect = { to = \"https://example.com\" }, respond = { status = 200, body = \"ok\" } or proxy = { upstreams = [\"http://10.0.0.5:8080\"] }"));
                    }
                },
                (Some(r), None) => {
                    let r = r.get_ref();
                    let to = r.to.get_ref().trim().to_string();
                    if !(to.starts_with("https://") || to.starts_with("http://"))
                        || to.len() <= "https://".len()
                    {
                        return Err(ctx.err(
                            Some(r.to.span()),
                            at("redirect.to"),
                            format!(
                                "expected an absolute URL like \"https://example.com\", got {to:?}"
                            ),
                        ));
                    }
                    if !matches!(*r.status.get_ref(), 301 | 302 | 307 | 308) {
                        return Err(ctx.err(
                            Some(r.status.span()),
                            at("redirect.status"),
                            format!("expected 301, 302, 307 or 308, got {}", r.status.get_ref()),
                        ));
                    }
                    SiteAction::Redirect {
                        to,
                        status: *r.status.get_ref(),
                        keep_path: r.keep_path,
                    }
                }
                (None, Some(r)) => {
                    let r = r.get_ref();
                    if !(200..=599).contains(r.status.get_ref()) {
                        return Err(ctx.err(
                            Some(r.status.span()),
                            at("respond.status"),
                            format!(
                                "expected a status from 200 to 599, got {}",
                                r.status.get_ref()
                            ),
                        ));
                    }
                    SiteAction::Respond {
                        status: *r.status.get_ref(),
                        body: r.body.clone(),
                    }
                }
            };
            let tls = match &site.tls {
                None => TlsChoice::Acme,
                Some(t) => match t.get_ref() {
                    RawTls::Named(n) if n == "acme" => TlsChoice::Acme,
                    RawTls::Named(n) if n == "internal" => TlsChoice::Internal,
                    RawTls::Named(n) => {
                        return Err(ctx.err(Some(t.span()), at("tls"), format!("expected \"acme\", \"internal\" or {{ cert = \"...\", key = \"...\" }}, got {n:?}")));
                    }
                    RawTls::Files(f) => TlsChoice::Files {
                        cert: resolve(&f.cert),
                        key: resolve(&f.key),
                    },
                },
            };
            if tls == TlsChoice::Acme {
                if acme.is_none() {
                    return Err(ctx.err(Some(site.tls.as_ref().map(|t| t.span()).unwrap_or(site_span)), at("tls"), "uses ACME (the default) but there is no [acme] section; add one, or set tls = \"internal\" or tls = { cert = ..., key = ... }"));
                }
                let wildcard = domains
                    .iter()
                    .find(|d| d.is_wildcard())
                    .map(DomainName::as_str);
                let challenges = acme.as_ref().map_or(&[][..], |a| &a.challenges[..]);
                crate::config_dns::check_challenges(dns.as_ref(), challenges, wildcard, &|m| {
                    ctx.err(Some(site.domains.span()), at("domains"), m)
                })?;
            }
            let key_type = match &site.key_type {
                Some(kt) => parse_key_type(&ctx, kt, &at("key_type"))?,
                None => acme_key_type,
            };
            let default_max_age = Duration::from_secs(31_536_000);
            let hsts = match site.hsts.as_ref().map(|h| (h.get_ref(), h.span())) {
                None | Some((RawHsts::On(false), _)) => None,
                Some((RawHsts::On(true), _)) => Some(edge::Hsts {
                    max_age: default_max_age,
                    include_subdomains: false,
                }),
                Some((RawHsts::Settings(s), span)) => Some(edge::Hsts {
                    max_age: match &s.max_age {
                        Some(m) => parse_duration(m).ok_or_else(|| {
                            ctx.err(
                                Some(span),
                                at("hsts.max_age"),
                                format!("expected a duration like \"365d\", got {m:?}"),
                            )
                        })?,
                        None => default_max_age,
                    },
                    include_subdomains: s.include_subdomains,
                }),
            };
            sites.push(SiteConfig {
                domains,
                action,
                tls,
                key_type,
                https_redirect: site.https_redirect.unwrap_or(true),
                hsts,
                access_log: site.access_log,
            });
        }

        Ok(Config {
            file: file.to_path_buf(),
            node: raw.node.clone(),
            listen_http,
            listen_https,
            proxy_protocol_from,
            workers: workers as usize,
            storage,
            seal_key,
            timings,
            acme,
            log,
            limits,
            sites,
            dns,
        })
    }

    /// The certificates the sites need: one per site (split above [`MAX_NAMES_PER_CERT`] names).
    pub fn managed_certs(&self) -> Vec<certs::ManagedCert> {
        let mut out = Vec::new();
        for site in &self.sites {
            let source = match &site.tls {
                TlsChoice::Acme => match &self.acme {
                    Some(acme) => certs::CertSource::Acme(acme.clone()),
                    None => continue, // rejected by `parse`
                },
                TlsChoice::Internal => certs::CertSource::Internal,
                TlsChoice::Files { cert, key } => certs::CertSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
            };
            let chunks: Vec<&[DomainName]> = if matches!(site.tls, TlsChoice::Files { .. }) {
                vec![&site.domains[..]]
            } else {
                site.domains.chunks(MAX_NAMES_PER_CERT).collect()
            };
            for chunk in chunks {
                out.push(certs::ManagedCert {
                    id: chunk[0].to_string(),
                    domains: chunk.to_vec(),
                    source: source.clone(),
                    key_type: site.key_type,
                });
            }
        }
        out
    }
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

/// A site's `proxy` table: every key checked here with its line, the upstream URLs as the edge
/// will parse them.
fn parse_proxy(
    ctx: &Ctx<'_>,
    raw: &Spanned<RawProxy>,
    at: &dyn Fn(&str) -> String,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<SiteAction, ConfigError> {
    let p = raw.get_ref();
    if p.upstreams.get_ref().is_empty() {
        return Err(ctx.err(
            Some(p.upstreams.span()),
            at("proxy.upstreams"),
            "needs at least one upstream, like \"http://10.0.0.5:8080\"",
        ));
    }
    let mut upstreams = Vec::new();
    for (i, u) in p.upstreams.get_ref().iter().enumerate() {
        edge::Proxy::check_upstream(u.get_ref()).map_err(|e| {
            ctx.err(
                Some(u.span()),
                at(&format!("proxy.upstreams[{i}]")),
                e.to_string(),
            )
        })?;
        upstreams.push(u.get_ref().trim().to_string());
    }
    let mut proxy = edge::Proxy::new(upstreams);
    if let Some(policy) = &p.policy {
        proxy.policy = match policy.get_ref().as_str() {
            "round_robin" => edge::Policy::RoundRobin,
            "least_conn" => edge::Policy::LeastConn,
            "ip_hash" => edge::Policy::IpHash,
            other => {
                return Err(ctx.err(
                    Some(policy.span()),
                    at("proxy.policy"),
                    format!(
                        "expected \"round_robin\", \"least_conn\" or \"ip_hash\", got {other:?}"
                    ),
                ));
            }
        };
    }
    let duration = |d: &Spanned<String>, key: &str| -> Result<Duration, ConfigError> {
        parse_duration(d.get_ref())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ctx.err(
                    Some(d.span()),
                    at(key),
                    format!(
                        "expected a duration above zero like \"5s\" or \"500ms\", got {:?}",
                        d.get_ref()
                    ),
                )
            })
    };
    if let Some(h) = &p.health {
        let h_ref = h.get_ref();
        let path = h_ref.path.get_ref();
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ctx.err(
                Some(h_ref.path.span()),
                at("proxy.health.path"),
                format!("expected an absolute path like \"/healthz\", got {path:?}"),
            ));
        }
        let mut check = edge::HealthCheck::new(path.clone(), Duration::from_secs(5));
        if let Some(i) = &h_ref.interval {
            check.interval = duration(i, "proxy.health.interval")?;
        }
        if let Some(t) = &h_ref.timeout {
            check.timeout = duration(t, "proxy.health.timeout")?;
        }
        proxy.health = Some(check);
    }
    if let Some(h) = &p.host_header {
        proxy.host_header = match h.get_ref().as_str() {
            "pass" => edge::HostHeader::Pass,
            "upstream" => edge::HostHeader::Upstream,
            literal => {
                if edge::Host::parse(literal.as_bytes()).is_err() {
                    return Err(ctx.err(
                        Some(h.span()),
                        at("proxy.host_header"),
                        format!(
                            "expected \"pass\", \"upstream\" or a host[:port], got {literal:?}"
                        ),
                    ));
                }
                edge::HostHeader::Literal(literal.to_string())
            }
        };
    }
    if let Some(d) = &p.connect_timeout {
        proxy.connect_timeout = duration(d, "proxy.connect_timeout")?;
    }
    if let Some(d) = &p.response_header_timeout {
        proxy.response_header_timeout = duration(d, "proxy.response_header_timeout")?;
    }
    if let Some(d) = &p.idle_timeout {
        proxy.idle_timeout = duration(d, "proxy.idle_timeout")?;
    }
    if let Some(d) = &p.fail_timeout {
        proxy.fail_timeout = duration(d, "proxy.fail_timeout")?;
    }
    if let Some(size) = &p.max_body {
        let bytes = match size.get_ref() {
            RawSize::Bytes(n) => Some(*n),
            RawSize::Text(t) => parse_size(t),
        }
        .ok_or_else(|| {
            ctx.err(
                Some(size.span()),
                at("proxy.max_body"),
                "expected a size like \"10MiB\", \"1GiB\" or a number of bytes; 0 for no limit",
            )
        })?;
        proxy.max_body = (bytes > 0).then_some(bytes);
    }
    if let Some(n) = p.fail_after {
        proxy.fail_after = n.max(1);
    }
    if let Some(n) = p.retries {
        proxy.retries = n;
    }
    let ca_root = match &p.ca_root {
        Some(path) => Some(ctx.existing_file(path, resolve, at("proxy.ca_root"))?),
        None => None,
    };
    Ok(SiteAction::Proxy {
        proxy: Box::new(proxy),
        ca_root,
    })
}

/// `"1048576"`, `"512KiB"`, `"10MiB"`, `"1GiB"` (also `k`/`m`/`g` as nginx writes them, binary),
/// `"10MB"`, `"1GB"` (decimal), `"100B"`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "m" | "M" | "MiB" => 1 << 20,
        "g" | "G" | "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn parse_key_type(ctx: &Ctx<'_>, kt: &Spanned<String>, key: &str) -> Result<KeyType, ConfigError> {
    KeyType::parse(kt.get_ref()).ok_or_else(|| {
        ctx.err(
            Some(kt.span()),
            key,
            format!(
                "expected \"ecdsa-p256\", \"ecdsa-p384\" or \"rsa-2048\", got {:?}",
                kt.get_ref()
            ),
        )
    })
}

/// `"10s"`, `"500ms"`, `"2m"`, `"1h"`, `"365d"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/fleetgate/test.toml"), text)
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const ACME: &str = "[acme]\ndirectory = \"https://acme.example/dir\"\n";

    #[test]
    fn full_example_parses() {
        let text = format!(
            "{ACME}\n[[site]]\ndomains = [\"Example.NET\", \"www.example.net\"]\nredirect = {{ to = \"https://example.com\", status = 308, keep_path = false }}\n\n[[site]]\ndomains = [\"example.com\"]\ntls = {{ cert = \"a.pem\", key = \"a.key\" }}\nrespond = {{ status = 200, body = \"ok\" }}\nhsts = true\n"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.sites.len(), 2);
        assert_eq!(config.sites[0].domains[0].as_str(), "example.net");
        assert!(matches!(
            config.sites[0].action,
            SiteAction::Redirect {
                status: 308,
                keep_path: false,
                ..
            }
        ));
        assert_eq!(config.sites[0].tls, TlsChoice::Acme);
        assert_eq!(
            config.sites[1].tls,
            TlsChoice::Files {
                cert: "/etc/fleetgate/a.pem".into(),
                key: "/etc/fleetgate/a.key".into()
            }
        );
        assert!(config.sites[1].hsts.is_some());
        assert_eq!(config.listen_https, "0.0.0.0:443".parse().unwrap());
        let certs = config.managed_certs();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].id, "example.net");
    }

    #[test]
    fn storage_ca_root_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (root, _, _) = testkit::ca_and_leaf(&["db.test"]);
        std::fs::write(dir.path().join("root.pem"), root).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "nothing here\n").unwrap();
        let file = dir.path().join("f.toml");
        let site = "[[site]]\ndomains = [\"a.test\"]\nrespond = { status = 200, body = \"ok\" }\ntls = \"internal\"\n";
        let pg = "kind = \"postgres\"\nurl = \"postgres://f@db/f?sslmode=require\"\n";
        let ok = Config::parse(
            &file,
            &format!("[storage]\n{pg}ca_root = \"root.pem\"\n{site}"),
        )
        .unwrap();
        assert!(matches!(
            ok.storage,
            StorageConfig::Postgres { ca_root: Some(ref p), .. } if p == &dir.path().join("root.pem")
        ));
        for (extra, line, want) in [
            (
                format!("{pg}ca_root = \"empty.pem\"\n"),
                4,
                "holds no PEM certificate",
            ),
            (format!("{pg}ca_root = \"missing.pem\"\n"), 4, "cannot read"),
            (
                "kind = \"dir\"\nca_root = \"root.pem\"\n".to_owned(),
                3,
                "only used with",
            ),
        ] {
            let e = Config::parse(&file, &format!("[storage]\n{extra}{site}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!(":{line}: storage.ca_root: ")) && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn proxy_protocol_sources_are_checked() {
        let site = "[[site]]\ndomains = [\"a.test\"]\nrespond = { status = 200, body = \"ok\" }\ntls = \"internal\"\n";
        let config = parse(&format!(
            "[listen]\nproxy_protocol_from = [\"10.1.0.0/16\", \"192.0.2.7\"]\n{site}"
        ))
        .unwrap();
        let from: Vec<String> = config
            .proxy_protocol_from
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(from, ["10.1.0.0/16", "192.0.2.7/32"]);
        let e = err(&format!(
            "[listen]\nproxy_protocol_from = [\"10.0.0.0/8\",\n  \"10.0.0.0/40\"]\n{site}"
        ));
        assert!(
            e.starts_with("/etc/fleetgate/test.toml:3: listen.proxy_protocol_from[1]: "),
            "{e}"
        );
    }

    #[test]
    fn workers_are_off_by_default_and_bounded() {
        let site = "[[site]]\ndomains = [\"a.test\"]\nrespond = { status = 200, body = \"ok\" }\ntls = \"internal\"\n";
        assert_eq!(parse(site).unwrap().workers, 0);
        assert_eq!(
            parse(&format!("[listen]\nworkers = 4\n{site}"))
                .unwrap()
                .workers,
            4
        );
        let e = err(&format!("[listen]\nworkers = 5000\n{site}"));
        assert!(
            e.starts_with("/etc/fleetgate/test.toml:2: listen.workers: at most 1024"),
            "{e}"
        );
        let e = err(&format!("[listen]\nworkers = -1\n{site}"));
        assert!(
            e.starts_with("/etc/fleetgate/test.toml:2: listen.workers"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err("[listen]\nhttp = \"127.0.0.1:80\"\nhtps = \"127.0.0.1:443\"\n");
        assert!(
            e.starts_with("/etc/fleetgate/test.toml:3: listen.htps: unknown field"),
            "{e}"
        );
        let e = err(
            "[[site]]\ndomains = [\"a.example\"]\nrespond = {}\n[[site]]\ndomains = [\"b.example\"]\nredirects = 1\n",
        );
        assert!(
            e.starts_with("/etc/fleetgate/test.toml:6: site[1].redirects: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn bad_domain_names_site_index_and_line() {
        let e = err(
            "[[site]]\ndomains = [\"ok.example\"]\ntls = \"internal\"\nrespond = {}\n\n[[site]]\ndomains = [\"bad_name.example\"]\ntls = \"internal\"\nrespond = {}\n",
        );
        assert!(
            e.starts_with("/etc/fleetgate/test.toml:7: site[1].domains[0]:"),
            "{e}"
        );
        assert!(e.contains("bad_name.example"), "{e}");
    }

    #[test]
    fn duplicate_domain_across_sites() {
        let e = err(
            "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nrespond = {}\n[[site]]\ndomains = [\"A.example\"]\ntls = \"internal\"\nrespond = {}\n",
        );
        assert!(
            e.contains("site[1].domains[0]") && e.contains("already in site[0]"),
            "{e}"
        );
    }

    #[test]
    fn redirect_status_must_be_a_redirect() {
        let e = err(
            "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nredirect = { to = \"https://b.example\", status = 200 }\n",
        );
        assert!(
            e.contains(":4: site[0].redirect.status: expected 301, 302, 307 or 308"),
            "{e}"
        );
    }

    #[test]
    fn redirect_target_must_be_absolute() {
        let e = err(
            "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nredirect = { to = \"b.example\" }\n",
        );
        assert!(e.contains("site[0].redirect.to"), "{e}");
    }

    #[test]
    fn acme_site_needs_acme_section() {
        let e = err("[[site]]\ndomains = [\"a.example\"]\nrespond = {}\n");
        assert!(e.contains("site[0].tls") && e.contains("[acme]"), "{e}");
    }

    #[test]
    fn acme_rejects_wildcards() {
        let e = err(&format!(
            "{ACME}[[site]]\ndomains = [\"*.a.example\"]\nrespond = {{}}\n"
        ));
        assert!(e.contains("wildcard"), "{e}");
    }

    #[test]
    fn site_needs_exactly_one_action() {
        assert!(
            err("[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\n")
                .contains("needs an action")
        );
        let both = err(
            "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nrespond = {}\nredirect = { to = \"https://b.example\" }\n",
        );
        assert!(both.contains("not both"), "{both}");
    }

    #[test]
    fn bad_values_are_explained() {
        assert!(
            err("[listen]\nhttp = \"nonsense\"\n").contains(":2: listen.http: expected an address")
        );
        assert!(err("[storage]\nkind = \"s3\"\n").contains("storage.kind"));
        assert!(err("[storage]\nkind = \"postgres\"\n").contains("storage.url"));
        assert!(err("[storage]\nkind = \"redis\"\nurl = \"http://x\"\n").contains("storage.url"));
        assert!(err(&format!("{ACME}challenges = [\"dns-01\"]\n")).contains("acme.challenges"));
        assert!(err("[limits]\nidle_timeout = \"forever\"\n").contains("limits.idle_timeout"));
        assert!(err("[log]\nformat = \"xml\"\n").contains("log.format"));
        assert!(
            err("[[site]]\ndomains = []\ntls = \"internal\"\nrespond = {}\n")
                .contains("at least one domain")
        );
        assert!(
            err("[[site]]\ndomains = [\"a.example\"]\ntls = \"magic\"\nrespond = {}\n")
                .contains("site[0].tls")
        );
        assert!(err("not toml at all").starts_with("/etc/fleetgate/test.toml:1"));
    }

    #[test]
    fn big_sites_are_split_into_several_certificates() {
        let names: Vec<String> = (0..250).map(|i| format!("\"d{i}.example\"")).collect();
        let text = format!(
            "[[site]]\ndomains = [{}]\ntls = \"internal\"\nrespond = {{}}\n",
            names.join(",")
        );
        let certs = parse(&text).unwrap().managed_certs();
        assert_eq!(
            certs.iter().map(|c| c.domains.len()).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("365d"),
            Some(Duration::from_secs(365 * 86_400))
        );
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn proxy_site_defaults_and_every_key() {
        let config = parse("[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nproxy = { upstreams = [\"http://10.0.0.5:8080\"] }\n").unwrap();
        let SiteAction::Proxy { proxy, ca_root } = &config.sites[0].action else {
            panic!()
        };
        assert_eq!(
            **proxy,
            edge::Proxy::new(vec!["http://10.0.0.5:8080".into()])
        );
        assert_eq!(*ca_root, None);
        assert!(!config.sites[0].access_log);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.pem"), "").unwrap();
        let text = "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\naccess_log = true\nproxy = { upstreams = [\"http://10.0.0.5:8080\", \"https://app.internal\"], policy = \"ip_hash\", health = { path = \"/healthz\", interval = \"2s\", timeout = \"1s\" }, host_header = \"app.internal\", connect_timeout = \"1s\", response_header_timeout = \"30s\", idle_timeout = \"20s\", max_body = \"10MiB\", fail_after = 5, fail_timeout = \"3s\", retries = 2, ca_root = \"root.pem\" }\n";
        let config = Config::parse(&dir.path().join("f.toml"), text).unwrap();
        let SiteAction::Proxy { proxy, ca_root } = &config.sites[0].action else {
            panic!()
        };
        assert_eq!(proxy.policy, edge::Policy::IpHash);
        assert_eq!(
            proxy.health,
            Some(edge::HealthCheck {
                path: "/healthz".into(),
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1)
            })
        );
        assert_eq!(
            proxy.host_header,
            edge::HostHeader::Literal("app.internal".into())
        );
        assert_eq!(proxy.connect_timeout, Duration::from_secs(1));
        assert_eq!(proxy.response_header_timeout, Duration::from_secs(30));
        assert_eq!(proxy.idle_timeout, Duration::from_secs(20));
        assert_eq!(proxy.max_body, Some(10 << 20));
        assert_eq!(
            (proxy.fail_after, proxy.fail_timeout, proxy.retries),
            (5, Duration::from_secs(3), 2)
        );
        assert_eq!(
            ca_root.as_deref(),
            Some(dir.path().join("root.pem").as_path())
        );
        assert!(config.sites[0].access_log);

        let unlimited = parse("[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nproxy = { upstreams = [\"http://h\"], max_body = 0, host_header = \"upstream\" }\n").unwrap();
        let SiteAction::Proxy { proxy, .. } = &unlimited.sites[0].action else {
            panic!()
        };
        assert_eq!(proxy.max_body, None);
        assert_eq!(proxy.host_header, edge::HostHeader::Upstream);
    }

    #[test]
    fn proxy_errors_name_the_key() {
        let site = |proxy: &str| {
            format!("[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nproxy = {proxy}\n")
        };
        let cases = [
            (
                "{ upstreams = [] }",
                "site[0].proxy.upstreams: needs at least one",
            ),
            (
                "{ upstreams = [\"10.0.0.5:80\"] }",
                "site[0].proxy.upstreams[0]",
            ),
            ("{ upstreams = [\"http://h/app\"] }", "no path"),
            (
                "{ upstreams = [\"http://h\"], policy = \"random\" }",
                "site[0].proxy.policy",
            ),
            (
                "{ upstreams = [\"http://h\"], health = { path = \"healthz\" } }",
                "site[0].proxy.health.path",
            ),
            (
                "{ upstreams = [\"http://h\"], health = { path = \"/h\", interval = \"0s\" } }",
                "site[0].proxy.health.interval",
            ),
            (
                "{ upstreams = [\"http://h\"], connect_timeout = \"soon\" }",
                "site[0].proxy.connect_timeout",
            ),
            (
                "{ upstreams = [\"http://h\"], max_body = \"lots\" }",
                "site[0].proxy.max_body",
            ),
            (
                "{ upstreams = [\"http://h\"], host_header = \"a b\" }",
                "site[0].proxy.host_header",
            ),
            (
                "{ upstreams = [\"http://h\"], ca_root = \"/nonexistent.pem\" }",
                "site[0].proxy.ca_root",
            ),
            ("{ upstreams = [\"http://h\"], retry = 1 }", "unknown field"),
        ];
        for (proxy, expected) in cases {
            let e = err(&site(proxy));
            assert!(e.contains(":4: ") && e.contains(expected), "{proxy}: {e}");
        }
        let both = err(
            "[[site]]\ndomains = [\"a.example\"]\ntls = \"internal\"\nrespond = {}\nproxy = { upstreams = [\"http://h\"] }\n",
        );
        assert!(
            both.contains("site[0].proxy: a site has one action"),
            "{both}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("10m"), Some(10 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("1TiB"), None);
    }
}
