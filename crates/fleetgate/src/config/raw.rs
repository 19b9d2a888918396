//! The raw form of the config file: what serde reads (unknown keys rejected), with spans for
//! error lines. `[[site]]` tables are read straight into [`sites::SiteSpec`].

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) node: Option<String>,
    #[serde(default)]
    pub(super) listen: RawListen,
    #[serde(default)]
    pub(super) storage: RawStorage,
    #[serde(default)]
    pub(super) acme: Option<Spanned<RawAcme>>,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) tls: RawTls,
    #[serde(default)]
    pub(super) admin: Option<crate::admin_config::RawAdmin>,
    #[serde(default)]
    pub(super) on_demand: Option<crate::on_demand_config::RawOnDemand>,
    #[serde(default)]
    pub(super) dns: Option<Spanned<crate::config_dns::RawDns>>,
    #[serde(default, rename = "site")]
    pub(super) sites: Vec<sites::SiteSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    #[serde(default = "default_http")]
    pub(super) http: Spanned<String>,
    #[serde(default = "default_https")]
    pub(super) https: Spanned<String>,
    /// Load balancers (addresses or networks) whose connections start with a PROXY header.
    #[serde(default)]
    pub(super) proxy_protocol_from: Vec<Spanned<String>>,
    /// Worker threads that each serve their share of the connections; 0: one shared runtime;
    /// absent: one per core.
    #[serde(default)]
    pub(super) workers: Option<Spanned<u32>>,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            http: default_http(),
            https: default_https(),
            proxy_protocol_from: Vec::new(),
            workers: None,
        }
    }
}

fn default_http() -> Spanned<String> {
    Spanned::new(0..0, "0.0.0.0:80".to_string())
}
fn default_https() -> Spanned<String> {
    Spanned::new(0..0, "0.0.0.0:443".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    #[serde(default = "default_kind")]
    pub(super) kind: Spanned<String>,
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) prefix: Option<String>,
    #[serde(default)]
    pub(super) seal_key_file: Option<Spanned<String>>,
    /// PEM roots for TLS to the database (`sslmode=require`, `rediss://`).
    #[serde(default)]
    pub(super) ca_root: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) lease_ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) resync_interval: Option<Spanned<String>>,
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
pub(super) struct RawAcme {
    pub(super) directory: Spanned<String>,
    #[serde(default)]
    pub(super) email: Option<String>,
    #[serde(default)]
    pub(super) ca_root: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) eab: Option<RawEab>,
    #[serde(default)]
    pub(super) challenges: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) key_type: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) orders_per_3h: Option<u32>,
    #[serde(default)]
    pub(super) certs_per_domain_per_week: Option<u32>,
    #[serde(default)]
    pub(super) failed_validations_per_hour: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEab {
    pub(super) kid: String,
    pub(super) hmac_key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    pub(super) format: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) header_read_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) tls_handshake_timeout: Option<Spanned<String>>,
    pub(super) send_timeout: Option<Spanned<String>>,
    pub(super) drain_timeout: Option<Spanned<String>>,
    pub(super) max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ticket_key_rotation: Option<Spanned<String>>,
}
