//! `fleetgate dns delegate` and `fleetgate dns check`: the delegated DNS-01 zone's commands.

use std::net::SocketAddr;

use anyhow::Context as _;
use dns::Records;
use dns::hickory::op::ResponseCode;
use dns::hickory::rr::{RData, RecordType};
use dns::lookup::query;

use crate::config::Config;

/// The delegated zone of the `[dns]` section, which both commands need.
fn section(config: &Config) -> anyhow::Result<&crate::config_dns::ZoneConfig> {
    config
        .dns
        .as_ref()
        .and_then(|dns| dns.zone.as_ref())
        .with_context(|| {
            format!(
                "{} has no [dns] section with a zone (zone, ns): there is no zone to delegate to",
                config.file.display()
            )
        })
}

/// `fleetgate dns delegate NAME`: store the delegation (or find the existing one) and print the
/// record the domain's owner adds, once.
pub async fn delegate(config: &Config, name: &str) -> anyhow::Result<()> {
    let dns = section(config)?;
    let (store, _cache) = crate::store_open::open_store(config).await?;
    let records = Records::new(store);
    let delegation = records
        .delegate(name)
        .await
        .with_context(|| format!("cannot store the delegation of {name}"))?;
    println!("{}", delegation.cname_record(dns.zone.apex()));
    Ok(())
}

/// `fleetgate dns check NAME`: resolve the delegation through the system resolver (or
/// `resolver`) and say what is missing or wrong. Fails when anything is.
pub async fn check(
    config: &Config,
    name: &str,
    resolver: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let name = dns::records::normalize_name(name.strip_prefix("*.").unwrap_or(name))?;
    let challenge = format!("_acme-challenge.{name}");
    if let Some(entry) = config
        .dns
        .iter()
        .flat_map(|dns| &dns.rfc2136)
        .find(|entry| entry.client().is_ok_and(|client| client.covers(&challenge)))
    {
        return check_rfc2136(entry, &challenge).await;
    }
    let dns = section(config)?;
    let zone = dns.zone.apex();
    let resolver = match resolver {
        Some(r) => r,
        None => system_resolver()?,
    };
    let (store, _cache) = crate::store_open::open_store(config).await?;
    let records = Records::new(store);
    let delegation = records.delegation(&name).await?;
    let mut problems = 0;
    let mut say = |ok: bool, line: String| {
        if !ok {
            problems += 1;
        }
        println!("{} {line}", if ok { "ok:     " } else { "PROBLEM:" });
    };
    let expected = delegation.as_ref().map(|d| d.target(zone));
    match &delegation {
        Some(d) => say(true, format!("delegation stored: {}", d.cname_record(zone))),
        None => say(
            false,
            format!(
                "no delegation stored for {name}; run `fleetgate dns delegate {name} --config {}` and send the record it prints to the domain's owner",
                config.file.display()
            ),
        ),
    }

    // 1. The owner's CNAME.
    let answer = query(resolver, &challenge, RecordType::CNAME)
        .await
        .with_context(|| format!("cannot ask the resolver {resolver}"))?;
    let cname = answer.answers().iter().find_map(|r| match r.data() {
        RData::CNAME(target) => Some(target.0.to_ascii().trim_end_matches('.').to_lowercase()),
        _ => None,
    });
    match (answer.response_code(), cname, &expected) {
        (ResponseCode::ServFail, _, _) => say(
            false,
            format!("{challenge}: the resolver {resolver} failed to resolve it (SERVFAIL)"),
        ),
        (_, Some(found), Some(expected)) if &found == expected => {
            say(true, format!("{challenge} CNAME {found}."))
        }
        (_, Some(found), Some(expected)) => say(
            false,
            format!(
                "{challenge} CNAME {found}., expected {expected}.: the domain's owner must change it"
            ),
        ),
        (_, Some(found), None) => say(
            false,
            format!("{challenge} CNAME {found}., but no delegation is stored to compare with"),
        ),
        (rcode, None, _) => say(
            false,
            format!(
                "{challenge} has no CNAME ({}); the domain's owner must add: {}",
                rcode_text(rcode),
                delegation
                    .as_ref()
                    .map(|d| d.cname_record(zone))
                    .unwrap_or_else(|| format!("_acme-challenge.{name}. CNAME <id>.{zone}."))
            ),
        ),
    }

    // 2. The zone's delegation from its parent.
    let ns_answer = query(resolver, zone, RecordType::NS).await?;
    let mut ns_found: Vec<String> = ns_answer
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::NS(ns) => Some(ns.0.to_ascii().trim_end_matches('.').to_lowercase()),
            _ => None,
        })
        .collect();
    ns_found.sort();
    let mut ns_expected: Vec<String> = dns
        .ns
        .iter()
        .map(|n| n.trim_end_matches('.').to_lowercase())
        .collect();
    ns_expected.sort();
    if ns_found.is_empty() {
        say(
            false,
            format!(
                "{zone} has no NS records at the resolver ({}); its parent zone needs {} (with addresses for them)",
                rcode_text(ns_answer.response_code()),
                ns_expected
                    .iter()
                    .map(|n| format!("`{zone}. NS {n}.`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        );
    } else if ns_found != ns_expected {
        say(
            false,
            format!(
                "{zone} NS {} but [dns] ns says {}",
                ns_found.join(", "),
                ns_expected.join(", ")
            ),
        );
    } else {
        say(true, format!("{zone} NS {}", ns_found.join(", ")));
    }

    // 3. The zone's servers answer for the delegation's name.
    if let Some(target) = &expected {
        let txt = query(resolver, target, RecordType::TXT).await?;
        match txt.response_code() {
            ResponseCode::NoError => say(
                true,
                format!("{target} answers ({} TXT values now)", txt.answers().len()),
            ),
            ResponseCode::NXDomain => say(
                false,
                format!(
                    "{target} does not exist at the zone's servers: do they share this node's store?"
                ),
            ),
            rcode => say(
                false,
                format!(
                    "{target}: {} — are the [dns] listeners running and reachable on port 53 (UDP and TCP)?",
                    rcode_text(rcode)
                ),
            ),
        }
    }
    anyhow::ensure!(
        problems == 0,
        "{problems} problem(s) with the DNS-01 delegation of {name}"
    );
    Ok(())
}

/// For a name solved by RFC 2136: the primary answers a signed read of the challenge name
/// (which proves the address, the zone and the key; it changes nothing).
async fn check_rfc2136(
    entry: &crate::config_dns::Rfc2136Config,
    challenge: &str,
) -> anyhow::Result<()> {
    let client = entry.client()?;
    let how = match &entry.tsig {
        Some((key, algorithm, _)) => format!("TSIG key {key} ({algorithm})"),
        None => "no TSIG key".to_string(),
    };
    match client.txt(challenge).await {
        Ok(values) => {
            println!(
                "ok:      {challenge} is in the RFC 2136 zone {}: the primary {} answers with {how} ({} TXT values now)",
                client.zone(),
                client.server(),
                values.len()
            );
            Ok(())
        }
        Err(e) => {
            println!(
                "PROBLEM: {challenge} is in the RFC 2136 zone {}, but the primary {} does not answer a read signed with {how}: {e}",
                client.zone(),
                client.server()
            );
            anyhow::bail!("1 problem with the DNS-01 set-up of {challenge}")
        }
    }
}

fn rcode_text(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "no such record".to_string(),
        ResponseCode::NXDomain => "no such name".to_string(),
        other => other.to_str().to_string(),
    }
}

/// The first `nameserver` of /etc/resolv.conf.
fn system_resolver() -> anyhow::Result<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .context("cannot read /etc/resolv.conf (name a resolver with --resolver)")?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .context("no nameserver in /etc/resolv.conf (name a resolver with --resolver)")
}
