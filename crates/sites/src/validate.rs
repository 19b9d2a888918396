//! The site rules: a [`SiteSpec`] checked once into a [`Site`], every refusal naming its field.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use certs::acme::AcmeSettings;
use certs::{DomainName, KeyType};

use crate::field::{FieldError, FieldPath};
use crate::spec::{
    HealthSpec, HstsSpec, ProxySpec, RedirectSpec, RespondSpec, SiteSpec, SizeSpec, TlsSpec,
};
use crate::units::{parse_duration, parse_size};

/// Names per ACME order; larger sites are split into several certificates.
pub const MAX_NAMES_PER_CERT: usize = 100;

/// HSTS `max-age` when `hsts = true` or no `max_age` is given: one year.
const DEFAULT_HSTS_MAX_AGE: Duration = Duration::from_secs(31_536_000);

/// Where a site is validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteEnv {
    /// Relative paths (`tls.cert`, `proxy.ca_root`) resolve against this folder (the config
    /// file's); `None` (JSON from the registry or the API): paths must be absolute.
    pub base: Option<PathBuf>,
    /// Whether the node has an `[acme]` section (ACME sites need one).
    pub acme: bool,
    /// Whether ACME orders can use DNS-01 (`acme.challenges` has it and a `[dns]` section
    /// says how): the CA validates wildcard names by DNS-01 only.
    pub dns01: bool,
    /// `key_type` when the site names none (`acme.key_type`).
    pub default_key_type: KeyType,
}

/// Where a site's certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsChoice {
    Acme,
    Internal,
    Files { cert: PathBuf, key: PathBuf },
}

/// What a site does with a request.
#[derive(Debug, Clone, PartialEq)]
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

/// A validated site.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub domains: Vec<DomainName>,
    pub action: SiteAction,
    pub tls: TlsChoice,
    pub key_type: KeyType,
    pub https_redirect: bool,
    pub hsts: Option<edge::Hsts>,
    /// One structured log event per request the site's action handles.
    pub access_log: bool,
}

impl SiteSpec {
    /// Check every rule; the first broken one is returned with its field.
    pub fn validate(&self, env: &SiteEnv) -> Result<Site, FieldError> {
        let domains = domains(&self.domains)?;
        let action = self.action(env)?;
        let tls = tls(self.tls.as_ref(), env)?;
        if tls == TlsChoice::Acme {
            if !env.acme {
                return Err(FieldError::new(
                    FieldPath::of(&["tls"]),
                    "uses ACME (the default) but there is no [acme] section; add one, or set tls = \"internal\" or tls = { cert = ..., key = ... }",
                ));
            }
            if let Some(w) = domains.iter().find(|d| d.is_wildcard())
                && !env.dns01
            {
                return Err(FieldError::new(
                    FieldPath::of(&["domains"]),
                    format!(
                        "{w} is a wildcard: the CA validates wildcards by DNS-01 only; add \"dns-01\" to acme.challenges and a [dns] section, or use tls = \"internal\" or a files certificate"
                    ),
                ));
            }
        }
        let key_type = match &self.key_type {
            Some(kt) => {
                parse_key_type(kt).map_err(|m| FieldError::new(FieldPath::of(&["key_type"]), m))?
            }
            None => env.default_key_type,
        };
        Ok(Site {
            domains,
            action,
            tls,
            key_type,
            https_redirect: self.https_redirect.unwrap_or(true),
            hsts: hsts(self.hsts.as_ref())?,
            access_log: self.access_log.unwrap_or(false),
        })
    }

    fn action(&self, env: &SiteEnv) -> Result<SiteAction, FieldError> {
        if self.proxy.is_some() && (self.redirect.is_some() || self.respond.is_some()) {
            return Err(FieldError::new(
                FieldPath::of(&["proxy"]),
                "a site has one action: redirect, respond or proxy",
            ));
        }
        match (&self.redirect, &self.respond, &self.proxy) {
            (Some(_), Some(_), _) => Err(FieldError::new(
                FieldPath::of(&["respond"]),
                "a site has one action: redirect or respond, not both",
            )),
            (Some(r), None, _) => redirect(r),
            (None, Some(r), _) => respond(r),
            (None, None, Some(p)) => proxy(p, env),
            (None, None, None) => Err(FieldError::new(
                FieldPath::root(),
                "needs an action: redirect = { to = \"https://example.com\" }, respond = { status = 200, body = \"ok\" } or proxy = { upstreams = [\"http://10.0.0.5:8080\"] }",
            )),
        }
    }
}

/// `KeyType` from its configuration name, or the message saying what was expected.
pub fn parse_key_type(text: &str) -> Result<KeyType, String> {
    KeyType::parse(text).ok_or_else(|| {
        format!("expected \"ecdsa-p256\", \"ecdsa-p384\" or \"rsa-2048\", got {text:?}")
    })
}

fn domains(raw: &[String]) -> Result<Vec<DomainName>, FieldError> {
    let at = FieldPath::of(&["domains"]);
    if raw.is_empty() {
        return Err(FieldError::new(at, "needs at least one domain"));
    }
    let mut out: Vec<DomainName> = Vec::with_capacity(raw.len());
    for (i, d) in raw.iter().enumerate() {
        let name = DomainName::parse(d).map_err(|e| FieldError::new(at.index(i), e.to_string()))?;
        if let Some(first) = out.iter().position(|n| *n == name) {
            return Err(FieldError::new(
                at.index(i),
                format!("{name} is already domains[{first}] of this site"),
            ));
        }
        out.push(name);
    }
    Ok(out)
}

fn redirect(r: &RedirectSpec) -> Result<SiteAction, FieldError> {
    let to = r.to.trim().to_string();
    if !(to.starts_with("https://") || to.starts_with("http://")) || to.len() <= "https://".len() {
        return Err(FieldError::new(
            FieldPath::of(&["redirect", "to"]),
            format!("expected an absolute URL like \"https://example.com\", got {to:?}"),
        ));
    }
    let status = r.status.unwrap_or(301);
    if !matches!(status, 301 | 302 | 307 | 308) {
        return Err(FieldError::new(
            FieldPath::of(&["redirect", "status"]),
            format!("expected 301, 302, 307 or 308, got {status}"),
        ));
    }
    let keep_path = r.keep_path.unwrap_or(true);
    // The edge's own rules for a target (no fragment, a valid host, no query with keep_path),
    // so that a site accepted here is one every node can serve.
    let probe = edge::Site {
        names: vec!["example.com".into()],
        action: edge::Action::Redirect(edge::Redirect {
            to: to.clone(),
            status,
            keep_path,
        }),
        https_redirect: true,
        hsts: None,
        access_log: false,
    };
    if let Err(e) = edge::Routes::new(vec![probe]) {
        let message = match e {
            edge::EdgeError::InvalidRedirect { reason, .. } => format!("{reason}, got {to:?}"),
            other => other.to_string(),
        };
        return Err(FieldError::new(FieldPath::of(&["redirect", "to"]), message));
    }
    Ok(SiteAction::Redirect {
        to,
        status,
        keep_path,
    })
}

fn respond(r: &RespondSpec) -> Result<SiteAction, FieldError> {
    let status = r.status.unwrap_or(200);
    if !(200..=599).contains(&status) {
        return Err(FieldError::new(
            FieldPath::of(&["respond", "status"]),
            format!("expected a status from 200 to 599, got {status}"),
        ));
    }
    Ok(SiteAction::Respond {
        status,
        body: r.body.clone().unwrap_or_default(),
    })
}

/// A duration above zero at `at`.
fn positive_duration(text: &str, at: FieldPath) -> Result<Duration, FieldError> {
    parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            FieldError::new(
                at,
                format!("expected a duration above zero like \"5s\" or \"500ms\", got {text:?}"),
            )
        })
}

/// A site's `proxy` table, the upstream URLs checked as the edge will parse them.
fn proxy(p: &ProxySpec, env: &SiteEnv) -> Result<SiteAction, FieldError> {
    let at = FieldPath::of(&["proxy"]);
    if p.upstreams.is_empty() {
        return Err(FieldError::new(
            at.key("upstreams"),
            "needs at least one upstream, like \"http://10.0.0.5:8080\"",
        ));
    }
    let mut upstreams = Vec::with_capacity(p.upstreams.len());
    for (i, u) in p.upstreams.iter().enumerate() {
        edge::Proxy::check_upstream(u)
            .map_err(|e| FieldError::new(at.key("upstreams").index(i), e.to_string()))?;
        upstreams.push(u.trim().to_string());
    }
    let mut proxy = edge::Proxy::new(upstreams);
    if let Some(policy) = &p.policy {
        proxy.policy = match policy.as_str() {
            "round_robin" => edge::Policy::RoundRobin,
            "least_conn" => edge::Policy::LeastConn,
            "ip_hash" => edge::Policy::IpHash,
            other => {
                return Err(FieldError::new(
                    at.key("policy"),
                    format!(
                        "expected \"round_robin\", \"least_conn\" or \"ip_hash\", got {other:?}"
                    ),
                ));
            }
        };
    }
    if let Some(h) = &p.health {
        proxy.health = Some(health(h, &at.key("health"))?);
    }
    if let Some(h) = &p.host_header {
        proxy.host_header =
            host_header(h).map_err(|m| FieldError::new(at.key("host_header"), m))?;
    }
    for (value, key, into) in [
        (
            &p.connect_timeout,
            "connect_timeout",
            &mut proxy.connect_timeout,
        ),
        (
            &p.response_header_timeout,
            "response_header_timeout",
            &mut proxy.response_header_timeout,
        ),
        (&p.idle_timeout, "idle_timeout", &mut proxy.idle_timeout),
        (&p.fail_timeout, "fail_timeout", &mut proxy.fail_timeout),
    ] {
        if let Some(d) = value {
            *into = positive_duration(d, at.key(key))?;
        }
    }
    if let Some(d) = &p.read_timeout {
        proxy.read_timeout = positive_duration(d, at.key("read_timeout"))?;
    }
    if let Some(drop) = p.drop_underscore_fields {
        proxy.drop_underscore_fields = drop;
    }
    if let Some(size) = &p.max_body {
        let bytes = match size {
            SizeSpec::Bytes(n) => Some(*n),
            SizeSpec::Text(t) => parse_size(t),
        }
        .ok_or_else(|| {
            FieldError::new(
                at.key("max_body"),
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
        Some(path) => Some(existing_file(path, env, at.key("ca_root"))?),
        None => None,
    };
    Ok(SiteAction::Proxy {
        proxy: Box::new(proxy),
        ca_root,
    })
}

fn health(h: &HealthSpec, at: &FieldPath) -> Result<edge::HealthCheck, FieldError> {
    let path = &h.path;
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FieldError::new(
            at.key("path"),
            format!("expected an absolute path like \"/healthz\", got {path:?}"),
        ));
    }
    let mut check = edge::HealthCheck::new(path.clone(), Duration::from_secs(5));
    if let Some(i) = &h.interval {
        check.interval = positive_duration(i, at.key("interval"))?;
    }
    if let Some(t) = &h.timeout {
        check.timeout = positive_duration(t, at.key("timeout"))?;
    }
    Ok(check)
}

fn host_header(h: &str) -> Result<edge::HostHeader, String> {
    Ok(match h {
        "pass" => edge::HostHeader::Pass,
        "upstream" => edge::HostHeader::Upstream,
        literal => {
            if edge::Host::parse(literal.as_bytes()).is_err() {
                return Err(format!(
                    "expected \"pass\", \"upstream\" or a host[:port], got {literal:?}"
                ));
            }
            edge::HostHeader::Literal(literal.to_string())
        }
    })
}

/// `path` resolved against `env.base`; without a base it must be absolute.
fn resolve(path: &str, env: &SiteEnv, at: &FieldPath) -> Result<PathBuf, FieldError> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    match &env.base {
        Some(base) => Ok(base.join(p)),
        None => Err(FieldError::new(
            at.clone(),
            format!("expected an absolute path, got {path:?}"),
        )),
    }
}

fn existing_file(path: &str, env: &SiteEnv, at: FieldPath) -> Result<PathBuf, FieldError> {
    let file = resolve(path, env, &at)?;
    if !file.is_file() {
        return Err(FieldError::new(
            at,
            format!("no such file: {}", file.display()),
        ));
    }
    Ok(file)
}

fn tls(spec: Option<&TlsSpec>, env: &SiteEnv) -> Result<TlsChoice, FieldError> {
    let at = FieldPath::of(&["tls"]);
    Ok(match spec {
        None => TlsChoice::Acme,
        Some(TlsSpec::Named(n)) if n == "acme" => TlsChoice::Acme,
        Some(TlsSpec::Named(n)) if n == "internal" => TlsChoice::Internal,
        Some(TlsSpec::Named(n)) => {
            return Err(FieldError::new(
                at,
                format!(
                    "expected \"acme\", \"internal\" or {{ cert = \"...\", key = \"...\" }}, got {n:?}"
                ),
            ));
        }
        Some(TlsSpec::Files(f)) => TlsChoice::Files {
            cert: resolve(&f.cert, env, &at.key("cert"))?,
            key: resolve(&f.key, env, &at.key("key"))?,
        },
    })
}

fn hsts(spec: Option<&HstsSpec>) -> Result<Option<edge::Hsts>, FieldError> {
    Ok(match spec {
        None | Some(HstsSpec::On(false)) => None,
        Some(HstsSpec::On(true)) => Some(edge::Hsts {
            max_age: DEFAULT_HSTS_MAX_AGE,
            include_subdomains: false,
        }),
        Some(HstsSpec::Settings(s)) => Some(edge::Hsts {
            max_age: match &s.max_age {
                Some(m) => parse_duration(m).ok_or_else(|| {
                    FieldError::new(
                        FieldPath::of(&["hsts", "max_age"]),
                        format!("expected a duration like \"365d\", got {m:?}"),
                    )
                })?,
                None => DEFAULT_HSTS_MAX_AGE,
            },
            include_subdomains: s.include_subdomains.unwrap_or(false),
        }),
    })
}

impl Site {
    /// The site's id: its first domain.
    pub fn id(&self) -> String {
        self.domains
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// The certificates the site needs: one (split above [`MAX_NAMES_PER_CERT`] names unless
    /// the certificate comes from files). None for an ACME site without ACME settings, which
    /// validation refuses.
    pub fn managed_certs(&self, acme: Option<&Arc<AcmeSettings>>) -> Vec<certs::ManagedCert> {
        let source = match &self.tls {
            TlsChoice::Acme => match acme {
                Some(acme) => certs::CertSource::Acme(acme.clone()),
                None => return Vec::new(),
            },
            TlsChoice::Internal => certs::CertSource::Internal,
            TlsChoice::Files { cert, key } => certs::CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
        };
        let chunks: Vec<&[DomainName]> = if matches!(self.tls, TlsChoice::Files { .. }) {
            vec![&self.domains[..]]
        } else {
            self.domains.chunks(MAX_NAMES_PER_CERT).collect()
        };
        chunks
            .into_iter()
            .filter(|chunk| !chunk.is_empty())
            .map(|chunk| certs::ManagedCert {
                id: chunk[0].to_string(),
                domains: chunk.to_vec(),
                source: source.clone(),
                key_type: self.key_type,
            })
            .collect()
    }

    /// The edge's form of the site; reads `proxy.ca_root` (the file may have changed since
    /// validation).
    pub fn edge_site(&self) -> Result<edge::Site, FieldError> {
        let action = match &self.action {
            SiteAction::Redirect {
                to,
                status,
                keep_path,
            } => edge::Action::Redirect(edge::Redirect {
                to: to.clone(),
                status: *status,
                keep_path: *keep_path,
            }),
            SiteAction::Respond { status, body } => edge::Action::Respond {
                status: *status,
                body: body.clone().into(),
            },
            SiteAction::Proxy { proxy, ca_root, .. } => {
                let mut proxy = edge::Proxy::clone(proxy);
                if let Some(path) = ca_root {
                    proxy.ca_root_pem = Some(std::fs::read_to_string(path).map_err(|e| {
                        FieldError::new(
                            FieldPath::of(&["proxy", "ca_root"]),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?);
                }
                edge::Action::Proxy(proxy)
            }
        };
        Ok(edge::Site {
            names: self.domains.iter().map(ToString::to_string).collect(),
            action,
            https_redirect: self.https_redirect,
            hsts: self.hsts,
            access_log: self.access_log,
        })
    }
}
