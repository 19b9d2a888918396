//! The `[dns]` section: how this node solves DNS-01.
//!
//! ```toml
//! [dns]
//! zone = "acme.ops.example"                      # the delegated zone customers CNAME _acme-challenge into
//! ns = ["ns1.ops.example", "ns2.ops.example"]    # its name servers (outside the zone)
//! listen = "0.0.0.0:53"                          # UDP and TCP; leave out to solve DNS-01 without serving
//! acme_dns_listen = "0.0.0.0:8053"               # the acme-dns API alone (also under /acme-dns/ on [admin])
//! acme_dns_open_registration = false             # true: POST /acme-dns/register without the admin token
//!
//! [[dns.rfc2136]]                                # DNS you run: TSIG-signed dynamic updates
//! server = "10.0.0.53:53"                        # the zone's primary
//! zone = "shop.example"                          # names under it are solved here, not by delegation
//! tsig_key = "fleetgate"                         # the key's name on the primary
//! tsig_algorithm = "hmac-sha256"                 # hmac-sha256 (default), hmac-sha384, hmac-sha512
//! tsig_secret_file = "/etc/fleetgate/tsig.key"   # the base64 secret (tsig-keygen's `secret`)
//! ```
//!
//! Parsed here, apart from config.rs, which calls [`parse`] once and [`check_challenges`] for the
//! `[acme]` and site rules that depend on it.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use certs::ChallengeKind;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    #[serde(default)]
    listen: Option<Spanned<String>>,
    #[serde(default)]
    zone: Option<Spanned<String>>,
    #[serde(default)]
    ns: Vec<Spanned<String>>,
    #[serde(default)]
    acme_dns_listen: Option<Spanned<String>>,
    #[serde(default)]
    acme_dns_open_registration: bool,
    #[serde(default)]
    rfc2136: Vec<Spanned<RawRfc2136>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRfc2136 {
    server: Spanned<String>,
    zone: Spanned<String>,
    #[serde(default)]
    tsig_key: Option<String>,
    #[serde(default)]
    tsig_algorithm: Option<Spanned<String>>,
    #[serde(default)]
    tsig_secret_file: Option<Spanned<String>>,
}

/// The validated `[dns]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// Where this node answers for the delegated zone (UDP and TCP); `None`: it does not.
    pub listen: Option<SocketAddr>,
    /// The delegated zone, ready to serve (name checked, name servers outside it).
    pub zone: Option<ZoneConfig>,
    /// Zones solved by RFC 2136 updates.
    pub rfc2136: Vec<Rfc2136Config>,
    /// A listener serving only the acme-dns API (`/acme-dns/...`), apart from `[admin]`.
    pub acme_dns_listen: Option<SocketAddr>,
    /// `POST /acme-dns/register` without the admin token (acme-dns's own default is open).
    pub acme_dns_open_registration: bool,
}

#[derive(Debug, Clone)]
pub struct ZoneConfig {
    pub zone: dns::Zone,
    pub ns: Vec<String>,
}

impl PartialEq for ZoneConfig {
    fn eq(&self, other: &Self) -> bool {
        self.zone.apex() == other.zone.apex() && self.ns == other.ns
    }
}

/// One `[[dns.rfc2136]]`; the secret is read when the node starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rfc2136Config {
    pub server: SocketAddr,
    pub zone: String,
    /// Key name, algorithm, secret file.
    pub tsig: Option<(String, String, PathBuf)>,
}

impl Rfc2136Config {
    /// The update client, with the TSIG secret read from its file.
    pub fn client(&self) -> anyhow::Result<dns::Rfc2136> {
        use anyhow::Context as _;
        let key = match &self.tsig {
            None => None,
            Some((name, algorithm, file)) => {
                let secret = std::fs::read_to_string(file).with_context(|| {
                    format!(
                        "cannot read dns.rfc2136.tsig_secret_file {}",
                        file.display()
                    )
                })?;
                Some(
                    dns::TsigKey::new(name, algorithm, &secret)
                        .with_context(|| format!("TSIG key in {}", file.display()))?,
                )
            }
        };
        Ok(dns::Rfc2136::new(self.server, &self.zone, key)?)
    }
}

/// Validate the `[dns]` section, if there is one. `err` builds the caller's error at a span for
/// a key (config.rs's `Ctx::err`) and `resolve` makes paths relative to the config file, so this
/// module needs nothing from config.rs.
pub fn parse<E>(
    raw: Option<&Spanned<RawDns>>,
    resolve: &dyn Fn(&str) -> PathBuf,
    err: &dyn Fn(Option<Range<usize>>, String, String) -> E,
) -> Result<Option<DnsConfig>, E> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let section = raw.span();
    let raw = raw.get_ref();
    let address = |text: &Spanned<String>, key: &str, example: &str| {
        text.get_ref().parse::<SocketAddr>().map_err(|_| {
            err(
                Some(text.span()),
                key.into(),
                format!(
                    "expected an address like \"{example}\", got {:?}",
                    text.get_ref()
                ),
            )
        })
    };
    let listen = match &raw.listen {
        None => None,
        Some(text) => Some(address(text, "dns.listen", "0.0.0.0:53")?),
    };
    let zone = match &raw.zone {
        None if listen.is_some() || !raw.ns.is_empty() => {
            return Err(err(
                Some(section),
                "dns.zone".into(),
                "listen and ns serve a delegated zone: name it, e.g. zone = \"acme.ops.example\""
                    .into(),
            ));
        }
        None => None,
        Some(zone) => {
            if raw.ns.is_empty() {
                return Err(err(
                    Some(section),
                    "dns.ns".into(),
                    "needs the zone's name servers, e.g. ns = [\"ns1.ops.example\"] (the names the parent zone delegates to)".into(),
                ));
            }
            let ns: Vec<String> = raw.ns.iter().map(|n| n.get_ref().clone()).collect();
            let served = dns::Zone::new(zone.get_ref(), &ns)
                .map_err(|e| err(Some(zone.span()), "dns.zone".into(), e.to_string()))?;
            Some(ZoneConfig { zone: served, ns })
        }
    };
    let acme_dns_listen = match &raw.acme_dns_listen {
        None => None,
        Some(text) => {
            if zone.is_none() {
                return Err(err(
                    Some(text.span()),
                    "dns.acme_dns_listen".into(),
                    "the acme-dns API serves the delegated zone: set zone and ns too".into(),
                ));
            }
            Some(address(text, "dns.acme_dns_listen", "0.0.0.0:8053")?)
        }
    };
    let mut rfc2136 = Vec::new();
    for (i, entry) in raw.rfc2136.iter().enumerate() {
        let span = entry.span();
        let entry = entry.get_ref();
        let at = |key: &str| format!("dns.rfc2136[{i}].{key}");
        let server = address(&entry.server, &at("server"), "10.0.0.53:53")?;
        let zone_name = dns::records::normalize_name(entry.zone.get_ref())
            .map_err(|e| err(Some(entry.zone.span()), at("zone"), e.to_string()))?;
        let tsig = match (&entry.tsig_key, &entry.tsig_secret_file) {
            (None, None) => None,
            (Some(name), Some(file)) => {
                let algorithm = entry
                    .tsig_algorithm
                    .as_ref()
                    .map_or("hmac-sha256".to_string(), |a| {
                        a.get_ref().to_ascii_lowercase()
                    });
                if !["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&algorithm.as_str()) {
                    return Err(err(
                        entry.tsig_algorithm.as_ref().map(Spanned::span),
                        at("tsig_algorithm"),
                        format!(
                            "expected \"hmac-sha256\", \"hmac-sha384\" or \"hmac-sha512\", got {algorithm:?}"
                        ),
                    ));
                }
                let path = resolve(file.get_ref());
                if !path.is_file() {
                    return Err(err(
                        Some(file.span()),
                        at("tsig_secret_file"),
                        format!("no such file: {}", path.display()),
                    ));
                }
                Some((name.clone(), algorithm, path))
            }
            _ => {
                return Err(err(
                    Some(span),
                    at("tsig_key"),
                    "tsig_key and tsig_secret_file go together".into(),
                ));
            }
        };
        rfc2136.push(Rfc2136Config {
            server,
            zone: zone_name,
            tsig,
        });
    }
    if zone.is_none() && rfc2136.is_empty() {
        return Err(err(
            Some(section),
            "dns.zone".into(),
            "an empty [dns] section: give a delegated zone (zone, ns) or [[dns.rfc2136]] entries"
                .into(),
        ));
    }
    Ok(Some(DnsConfig {
        listen,
        zone,
        rfc2136,
        acme_dns_listen,
        acme_dns_open_registration: raw.acme_dns_open_registration,
    }))
}

/// The rules between `[dns]`, `acme.challenges` and wildcard domains: `dns-01` needs a
/// `[dns]` section, and an ACME wildcard needs `dns-01`. `wildcard` is a site's wildcard domain.
pub fn check_challenges<E>(
    dns: Option<&DnsConfig>,
    challenges: &[ChallengeKind],
    wildcard: Option<&str>,
    err: &dyn Fn(String) -> E,
) -> Result<(), E> {
    let dns01 = challenges.contains(&ChallengeKind::Dns01);
    if dns01 && dns.is_none() {
        return Err(err(
            "acme.challenges includes \"dns-01\", which needs a [dns] section (a delegated zone, or [[dns.rfc2136]])".into(),
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
