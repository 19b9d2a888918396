//! The serde form of a site: the `[[site]]` keys of the config file, identical as JSON in the
//! registry and the admin API. Nothing here is checked beyond its shape (unknown keys are
//! refused everywhere); [`SiteSpec::validate`](crate::SiteSpec::validate) turns it into a
//! [`Site`](crate::Site).
//!
//! Optional keys are `Option`s and are left out when serialized, so a spec reads back exactly as
//! it was written; the defaults are applied by validation.

use serde::{Deserialize, Serialize};

/// One site: its domains, one action (`redirect`, `respond` or `proxy`), where its certificate
/// comes from, and how HTTPS is enforced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Boxed: a proxy spec is most of a site's size, and a registry of redirects holds
    /// 100,000 specs without one.
    pub proxy: Option<Box<ProxySpec>>,
    /// `"acme"` (the default), `"internal"` or `{ cert, key }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// `"ecdsa-p256"`, `"ecdsa-p384"` or `"rsa-2048"`; default: `acme.key_type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// Plain HTTP requests are redirected to HTTPS; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<HstsSpec>,
    /// One structured log event per request the site's action handles; default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,
}

impl SiteSpec {
    /// A spec with `domains` and no action yet (the caller sets one).
    pub fn new(domains: Vec<String>) -> SiteSpec {
        SiteSpec {
            domains,
            redirect: None,
            respond: None,
            proxy: None,
            tls: None,
            key_type: None,
            https_redirect: None,
            hsts: None,
            access_log: None,
        }
    }

    /// The site's id: its first domain, trimmed and lower-cased (empty without domains).
    pub fn id(&self) -> String {
        self.domains
            .first()
            .map(|d| d.trim().to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// `redirect = { to, status = 301, keep_path = true }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// An absolute `https://` or `http://` URL.
    pub to: String,
    /// 301, 302, 307 or 308; default 301.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Append the request's path and query to `to`; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_path: Option<bool>,
}

/// `respond = { status = 200, body = "" }`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// `proxy = { upstreams = [...], ... }`; defaults come from [`edge::Proxy::new`]. Durations are
/// text like `"5s"` or `"500ms"`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    pub upstreams: Vec<String>,
    /// `"round_robin"`, `"least_conn"` or `"ip_hash"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// `"pass"`, `"upstream"` or a literal host[:port].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_timeout: Option<String>,
    /// Longest wait for the next bytes of an upstream response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Bytes, or text like `"10MiB"`; 0 for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<SizeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_after: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// A PEM file of roots for https upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_root: Option<String>,
    /// Drop request header fields whose names contain `_` instead of passing them upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_underscore_fields: Option<bool>,
}

/// `health = { path, interval = "5s", timeout = "5s" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A byte size: an integer, or text like `"10MiB"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    Bytes(u64),
    Text(String),
}

/// `tls = "acme" | "internal" | { cert, key }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TlsSpec {
    Named(String),
    Files(TlsFilesSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFilesSpec {
    pub cert: String,
    pub key: String,
}

/// `hsts = true | { max_age = "365d", include_subdomains = false }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HstsSpec {
    On(bool),
    Settings(HstsSettingsSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HstsSettingsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_subdomains: Option<bool>,
}
