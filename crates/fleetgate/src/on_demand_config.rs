//! The `[on_demand]` section of the config file: certificates obtained at the first handshake for
//! names no site holds, after the product's `ask` endpoint allowed them. Off without the section.
//!
//! Kept apart from `config` (which calls [`parse`] and turns the [`SectionError`] into its
//! file:line:key error) and from `on_demand` (which uses `config`), so neither makes a cycle.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::admin_config::SectionError;

/// The raw `[on_demand]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnDemand {
    ask: Spanned<String>,
    site: Spanned<String>,
    #[serde(default)]
    wait: Option<Spanned<String>>,
    #[serde(default)]
    ask_timeout: Option<Spanned<String>>,
    #[serde(default)]
    ask_concurrency: Option<Spanned<u32>>,
    #[serde(default)]
    asks_per_second: Option<Spanned<u32>>,
    #[serde(default)]
    names_per_minute: Option<Spanned<u32>>,
    #[serde(default)]
    names_per_client_per_minute: Option<Spanned<u32>>,
    #[serde(default)]
    names_per_domain_per_hour: Option<Spanned<u32>>,
    #[serde(default)]
    failures_before_pause: Option<Spanned<u32>>,
    #[serde(default)]
    fail_pause: Option<Spanned<String>>,
    #[serde(default)]
    remove_after: Option<Spanned<String>>,
}

/// Where `ask` is: a plain-HTTP URL (the product's own endpoint, usually on loopback or a private
/// network), split once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskUrl {
    /// `host:port` to connect to.
    pub authority: String,
    /// The path and any query of the configured URL; `domain=` and `client_ip=` are appended.
    pub path_and_query: String,
}

/// The validated `[on_demand]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDemandConfig {
    pub ask: AskUrl,
    /// The id of the file site whose action (and settings) allowed names get.
    pub site: String,
    /// How long a handshake waits for the certificate of a newly allowed name.
    pub wait: Duration,
    /// An `ask` call slower than this is a refusal.
    pub ask_timeout: Duration,
    /// `ask` calls in flight per node.
    pub ask_concurrency: usize,
    /// `ask` calls started per second per node; beyond, names are refused without asking (and
    /// without caching the refusal).
    pub asks_per_second: u32,
    /// New on-demand names per minute for the whole fleet (0: no limit).
    pub names_per_minute: u32,
    /// New on-demand names per client address per minute, fleet-wide (0: no limit).
    pub names_per_client_per_minute: u32,
    /// New on-demand names per registered domain per hour, fleet-wide (0: no limit).
    pub names_per_domain_per_hour: u32,
    /// Consecutive failed orders after which a name is paused.
    pub failures_before_pause: u32,
    /// How long a paused name is refused and not ordered.
    pub fail_pause: Duration,
    /// A name paused for this long (counted from its first pause) is removed.
    pub remove_after: Duration,
}

pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
pub const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_secs(2);

fn duration(
    raw: &Option<Spanned<String>>,
    key: &'static str,
    default: Duration,
) -> Result<Duration, SectionError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    match sites::parse_duration(raw.get_ref()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(SectionError {
            span: raw.span(),
            key,
            message: format!(
                "expected a duration above zero like \"10s\" or \"1h\", got {:?}",
                raw.get_ref()
            ),
        }),
    }
}

fn number(raw: &Option<Spanned<u32>>, default: u32) -> u32 {
    raw.as_ref().map_or(default, |v| *v.get_ref())
}

fn at_least_one(
    raw: &Option<Spanned<u32>>,
    key: &'static str,
    default: u32,
) -> Result<u32, SectionError> {
    match raw {
        Some(v) if *v.get_ref() == 0 => Err(SectionError {
            span: v.span(),
            key,
            message: "must be at least 1".into(),
        }),
        _ => Ok(number(raw, default)),
    }
}

/// Validate the section; `file_sites` are the ids of the config file's sites (`site` must name
/// one).
pub fn parse(raw: &RawOnDemand, file_sites: &[String]) -> Result<OnDemandConfig, SectionError> {
    let ask = parse_ask(raw.ask.get_ref()).map_err(|message| SectionError {
        span: raw.ask.span(),
        key: "on_demand.ask",
        message,
    })?;
    let site = raw.site.get_ref().trim().to_ascii_lowercase();
    if !file_sites.contains(&site) {
        return Err(SectionError {
            span: raw.site.span(),
            key: "on_demand.site",
            message: format!(
                "no [[site]] in this file has the id {site:?} (a site's id is its first domain); allowed names are served with that site's action"
            ),
        });
    }
    let wait = duration(&raw.wait, "on_demand.wait", DEFAULT_WAIT)?;
    let ask_timeout = duration(
        &raw.ask_timeout,
        "on_demand.ask_timeout",
        DEFAULT_ASK_TIMEOUT,
    )?;
    Ok(OnDemandConfig {
        ask,
        site,
        wait,
        ask_timeout,
        ask_concurrency: at_least_one(&raw.ask_concurrency, "on_demand.ask_concurrency", 8)?
            as usize,
        asks_per_second: at_least_one(&raw.asks_per_second, "on_demand.asks_per_second", 20)?,
        names_per_minute: number(&raw.names_per_minute, 60),
        names_per_client_per_minute: number(&raw.names_per_client_per_minute, 10),
        names_per_domain_per_hour: number(&raw.names_per_domain_per_hour, 50),
        failures_before_pause: at_least_one(
            &raw.failures_before_pause,
            "on_demand.failures_before_pause",
            3,
        )?,
        fail_pause: duration(
            &raw.fail_pause,
            "on_demand.fail_pause",
            Duration::from_secs(6 * 3600),
        )?,
        remove_after: duration(
            &raw.remove_after,
            "on_demand.remove_after",
            Duration::from_secs(7 * 24 * 3600),
        )?,
    })
}

fn parse_ask(text: &str) -> Result<AskUrl, String> {
    let text = text.trim();
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(format!(
            "expected a plain http:// URL of the product's endpoint like \"http://127.0.0.1:9000/check\", got {text:?}"
        ));
    };
    if rest.contains('#') {
        return Err("the URL cannot have a fragment".into());
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "expected a host (and port) after http://, got {text:?}"
        ));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(AskUrl {
        authority,
        path_and_query: path,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse_text(text: &str) -> Result<OnDemandConfig, SectionError> {
        let raw: RawOnDemand = toml::from_str(text).unwrap();
        parse(&raw, &["app.example.com".to_string()])
    }

    #[test]
    fn defaults_and_errors() {
        let c = parse_text("ask = \"http://127.0.0.1:9000/check\"\nsite = \"app.example.com\"")
            .unwrap();
        assert_eq!(c.ask.authority, "127.0.0.1:9000");
        assert_eq!(c.ask.path_and_query, "/check");
        assert_eq!(c.wait, DEFAULT_WAIT);
        assert_eq!(c.ask_timeout, DEFAULT_ASK_TIMEOUT);
        let c =
            parse_text("ask = \"http://ask.internal?k=1\"\nsite = \"App.example.com\"").unwrap();
        assert_eq!(c.ask.authority, "ask.internal:80");
        assert_eq!(c.ask.path_and_query, "/?k=1");
        assert_eq!(c.site, "app.example.com");

        let e = parse_text("ask = \"https://x/check\"\nsite = \"app.example.com\"").unwrap_err();
        assert_eq!(e.key, "on_demand.ask");
        let e = parse_text("ask = \"http://x/check\"\nsite = \"other.example\"").unwrap_err();
        assert_eq!(e.key, "on_demand.site");
        let e = parse_text("ask = \"http://x/\"\nsite = \"app.example.com\"\nwait = \"soon\"")
            .unwrap_err();
        assert_eq!(e.key, "on_demand.wait");
        let e = parse_text("ask = \"http://x/\"\nsite = \"app.example.com\"\nask_concurrency = 0")
            .unwrap_err();
        assert_eq!(e.key, "on_demand.ask_concurrency");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = "[[site]]\ndomains = [\"app.example.com\"]\nrespond = {}\ntls = \"internal\"\n\n[on_demand]\nask = \"http://127.0.0.1:9000/check\"\nsite = \"app.example.com\"\nfail_pause = \"0s\"\n";
        let file = std::path::Path::new("/etc/fleetgate/test.toml");
        let e = crate::config::Config::parse(file, text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/fleetgate/test.toml:9: on_demand.fail_pause: expected a duration above zero like \"10s\" or \"1h\", got \"0s\""
        );
        let ok = text.replace("fail_pause = \"0s\"\n", "");
        let config = crate::config::Config::parse(file, &ok).unwrap();
        assert_eq!(config.on_demand.unwrap().site, "app.example.com");
        let e = crate::config::Config::parse(file, &format!("{ok}bogus = 1\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
