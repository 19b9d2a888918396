//! The JSON forms the admin API answers and `fleetgate sites --json` prints: one shape for both.

use serde::Serialize;

/// Where a site comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteSource {
    /// A node's configuration file (`[[site]]`): changed by editing the file, not the API.
    File,
    /// The shared registry: changed through the API or `fleetgate sites`.
    Registry,
}

impl std::fmt::Display for SiteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SiteSource::File => "file",
            SiteSource::Registry => "registry",
        })
    }
}

/// One site. `version`, `updated_at` and `updated_by` are registry sites' (file sites have no
/// version: `null`). `spec` holds the `[[site]]` keys.
#[derive(Debug, Clone, Serialize)]
pub struct SiteView {
    pub id: String,
    pub source: SiteSource,
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    pub spec: sites::SiteSpec,
    /// An on-demand site's state (added at a handshake, paused or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<sites::OnDemandState>,
}

impl SiteView {
    pub fn registry(entry: sites::Entry) -> SiteView {
        SiteView {
            id: entry.id,
            source: SiteSource::Registry,
            version: Some(entry.version),
            updated_at: Some(entry.updated_at),
            updated_by: Some(entry.updated_by),
            spec: entry.spec,
            on_demand: entry.on_demand.map(|state| *state),
        }
    }

    /// Where the site comes from, as `fleetgate sites list` shows it: `file`, `registry`,
    /// `on-demand` or `paused` (an on-demand site whose orders kept failing).
    pub fn kind(&self) -> String {
        match &self.on_demand {
            Some(state) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if state.paused_at(now) {
                    "paused".into()
                } else {
                    "on-demand".into()
                }
            }
            None => self.source.to_string(),
        }
    }

    /// The domains, from the spec's JSON form (the keys are the contract, not the Rust fields).
    pub fn domains(&self) -> Vec<String> {
        serde_json::to_value(&self.spec)
            .ok()
            .and_then(|v| v.get("domains").cloned())
            .and_then(|d| serde_json::from_value(d).ok())
            .unwrap_or_default()
    }

    /// A short description of the action: `redirect 301 https://a.example`, `proxy ...`.
    pub fn action(&self) -> String {
        let Ok(v) = serde_json::to_value(&self.spec) else {
            return "-".to_string();
        };
        if let Some(r) = v.get("redirect") {
            let status = r.get("status").and_then(|s| s.as_u64()).unwrap_or(301);
            let to = r.get("to").and_then(|s| s.as_str()).unwrap_or("?");
            return format!("redirect {status} {to}");
        }
        if let Some(r) = v.get("respond") {
            let status = r.get("status").and_then(|s| s.as_u64()).unwrap_or(200);
            return format!("respond {status}");
        }
        if let Some(p) = v.get("proxy") {
            let ups: Vec<&str> = p
                .get("upstreams")
                .and_then(|u| u.as_array())
                .map(|a| a.iter().filter_map(|u| u.as_str()).collect())
                .unwrap_or_default();
            return format!("proxy {}", ups.join(","));
        }
        "-".to_string()
    }
}

/// One page of `GET /v1/sites`.
#[derive(Debug, Serialize)]
pub struct SitePage {
    pub sites: Vec<SiteView>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
