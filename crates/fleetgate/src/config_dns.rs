//! The `[dns]` section: this node's part in the delegated DNS-01 zone.
//!
//! ```toml
//! [dns]
//! zone = "acme.ops.example"                      # the zone customers CNAME _acme-challenge into
//! ns = ["ns1.ops.example", "ns2.ops.example"]    # its name servers (outside the zone)
//! listen = "0.0.0.0:53"                          # UDP and TCP; leave out to solve DNS-01 without serving
//! ```
//!
//! Parsed here, apart from config.rs, which calls [`parse`] once and [`check_challenges`] for the
//! `[acme]` and site rules that depend on it.

use std::net::SocketAddr;
use std::ops::Range;

use certs::ChallengeKind;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    #[serde(default)]
    listen: Option<Spanned<String>>,
    zone: Spanned<String>,
    #[serde(default)]
    ns: Vec<Spanned<String>>,
}

/// The validated `[dns]` section.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Where this node answers for the zone (UDP and TCP); `None`: it does not.
    pub listen: Option<SocketAddr>,
    /// The zone, ready to serve (name checked, name servers outside it).
    pub zone: dns::Zone,
    pub ns: Vec<String>,
}

impl PartialEq for DnsConfig {
    fn eq(&self, other: &Self) -> bool {
        self.listen == other.listen && self.zone.apex() == other.zone.apex() && self.ns == other.ns
    }
}

/// Validate the `[dns]` section, if there is one. `err` builds the caller's error at a span for
/// a key (config.rs's `Ctx::err`), so this module needs nothing from config.rs.
pub fn parse<E>(
    raw: Option<&Spanned<RawDns>>,
    err: &dyn Fn(Option<Range<usize>>, String, String) -> E,
) -> Result<Option<DnsConfig>, E> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let section = raw.span();
    let raw = raw.get_ref();
    let listen = match &raw.listen {
        None => None,
        Some(text) => Some(text.get_ref().parse().map_err(|_| {
            err(
                Some(text.span()),
                "dns.listen".into(),
                format!(
                    "expected an address like \"0.0.0.0:53\", got {:?}",
                    text.get_ref()
                ),
            )
        })?),
    };
    if raw.ns.is_empty() {
        return Err(err(
            Some(section),
            "dns.ns".into(),
            "needs the zone's name servers, e.g. ns = [\"ns1.ops.example\"] (the names the parent zone delegates to)".into(),
        ));
    }
    let ns: Vec<String> = raw.ns.iter().map(|n| n.get_ref().clone()).collect();
    let zone = dns::Zone::new(raw.zone.get_ref(), &ns)
        .map_err(|e| err(Some(raw.zone.span()), "dns.zone".into(), e.to_string()))?;
    Ok(Some(DnsConfig { listen, zone, ns }))
}

/// The rules between `[dns]`, `acme.challenges` and wildcard domains: `dns-01` needs a zone,
/// and an ACME wildcard needs `dns-01`. `wildcard` is the first ACME site's wildcard domain.
pub fn check_challenges<E>(
    dns: Option<&DnsConfig>,
    challenges: &[ChallengeKind],
    wildcard: Option<&str>,
    err: &dyn Fn(String) -> E,
) -> Result<(), E> {
    let dns01 = challenges.contains(&ChallengeKind::Dns01);
    if dns01 && dns.is_none() {
        return Err(err(
            "acme.challenges includes \"dns-01\", which needs a [dns] section (zone, ns) for the delegated zone".into(),
        ));
    }
    if let Some(w) = wildcard
        && !dns01
    {
        return Err(err(format!(
            "{w} is a wildcard: the CA validates wildcards by DNS-01 only; add \"dns-01\" to acme.challenges and a [dns] section, or use tls = \"internal\" or a files certificate"
        )));
    }
    Ok(())
}
