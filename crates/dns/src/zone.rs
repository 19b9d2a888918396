//! The zone's answers: SOA and NS at the apex, TXT from the store anywhere inside, NXDOMAIN for
//! names that do not exist, NODATA for types a name lacks, REFUSED outside the zone. Below: the
//! wire types and [`Records`]; above: the listener.
//!
//! A name exists when it is the apex, holds TXT values, or is `<id>.<apex>` for a delegation.
//! Records are only ever written one label below the apex (delegation ids, acme-dns
//! subdomains), so there are no empty non-terminals to answer NODATA for.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{NS, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::records::{Records, normalize_name};
use crate::wire::{Reply, Request};
use crate::{Error, Result};

/// TTL of TXT answers: zero, as the values change with every order and a resolver (the CA's)
/// that cached the previous order's set would fail the next order's validation. Measured: with
/// 5 s, BIND answered a re-order of the same names within 5 s from its cache ("Correct value not
/// found"). The values are asked for a handful of times per order, so the load is nothing.
/// (BIND still answers a TTL-0 record from its cache for the rest of the second it fetched it.)
pub const TXT_TTL: u32 = 0;
/// TTL of the SOA and NS records.
pub const APEX_TTL: u32 = 3600;
/// How long resolvers cache "no such name / no such record" (the SOA minimum, RFC 2308): zero,
/// for the same reason as [`TXT_TTL`] (a name between two orders has no TXT records).
pub const NEGATIVE_TTL: u32 = 0;

/// One zone this node answers for, with its records prepared.
#[derive(Debug, Clone)]
pub struct Zone {
    apex: Name,
    apex_text: String,
    soa: Record,
    ns: Vec<Record>,
}

impl Zone {
    /// The zone `apex` (`acme.ops.example`) served by the name servers `ns` (at least one, outside
    /// the zone: this server answers no address records, so their addresses come from elsewhere).
    pub fn new(apex: &str, ns: &[String]) -> Result<Zone> {
        let apex_text = normalize_name(apex)?;
        let apex = fqdn(&apex_text)?;
        if ns.is_empty() {
            return Err(Error::Config(
                "the zone needs at least one name server (`ns`)".to_string(),
            ));
        }
        let mut ns_names = Vec::with_capacity(ns.len());
        for name in ns {
            let text = normalize_name(name)?;
            let name = fqdn(&text)?;
            if apex.zone_of(&name) {
                return Err(Error::Config(format!(
                    "name server {text} lies inside the zone {apex_text}, which serves no address records; name one outside it"
                )));
            }
            ns_names.push(name);
        }
        let rname = fqdn(&format!("hostmaster.{apex_text}"))?;
        let soa = Record::from_rdata(
            apex.clone(),
            APEX_TTL,
            RData::SOA(SOA::new(
                ns_names[0].clone(),
                rname,
                // No zone transfers: the serial never needs to move.
                1,
                3600,
                600,
                86400,
                NEGATIVE_TTL,
            )),
        );
        let ns = ns_names
            .into_iter()
            .map(|n| Record::from_rdata(apex.clone(), APEX_TTL, RData::NS(NS(n))))
            .collect();
        Ok(Zone {
            apex,
            apex_text,
            soa,
            ns,
        })
    }

    /// The apex, lower-case, without the trailing dot.
    pub fn apex(&self) -> &str {
        &self.apex_text
    }

    /// The answer to `request`. Fails only when the store does (the listener says SERVFAIL).
    pub async fn answer(&self, request: &Request, records: &Records) -> Result<Reply> {
        let qname = request.query.name();
        let qtype = request.query.query_type();
        if !self.apex.zone_of(qname) {
            return Ok(Reply {
                rcode: ResponseCode::Refused,
                authoritative: false,
                answers: Vec::new(),
                authority: Vec::new(),
            });
        }
        let owner = qname.to_lowercase();
        let mut answers = Vec::new();
        let at_apex = owner.eq_ignore_root(&self.apex);
        // A name no valid record can have (binary labels, too long) exists nowhere.
        let Ok(name) = normalize_name(&owner.to_ascii()) else {
            return Ok(self.negative(ResponseCode::NXDomain));
        };
        if at_apex && matches!(qtype, RecordType::SOA | RecordType::ANY) {
            answers.push(self.soa.clone());
        }
        if at_apex && matches!(qtype, RecordType::NS | RecordType::ANY) {
            answers.extend(self.ns.iter().cloned());
        }
        // The apex exists whatever the store says: its SOA and NS need no lookup.
        let values = if at_apex && !matches!(qtype, RecordType::TXT | RecordType::ANY) {
            Vec::new()
        } else {
            records.txt(&name).await?
        };
        if matches!(qtype, RecordType::TXT | RecordType::ANY) {
            answers.extend(values.iter().map(|value| {
                Record::from_rdata(
                    qname.clone(),
                    TXT_TTL,
                    RData::TXT(TXT::new(vec![value.clone()])),
                )
            }));
        }
        if !answers.is_empty() {
            return Ok(Reply {
                rcode: ResponseCode::NoError,
                authoritative: true,
                answers,
                authority: Vec::new(),
            });
        }
        let exists = at_apex || !values.is_empty() || self.is_delegation(&owner, records).await?;
        Ok(self.negative(if exists {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        }))
    }

    /// Whether `owner` is `<id>.<apex>` for a delegation's id: such a name exists (NODATA, not
    /// NXDOMAIN) between orders, so resolvers do not cache its absence.
    async fn is_delegation(&self, owner: &Name, records: &Records) -> Result<bool> {
        if owner.num_labels() != self.apex.num_labels() + 1 {
            return Ok(false);
        }
        let Some(label) = owner.iter().next() else {
            return Ok(false);
        };
        let Ok(id) = std::str::from_utf8(label) else {
            return Ok(false);
        };
        Ok(records.delegation_by_id(id).await?.is_some())
    }

    /// NXDOMAIN or NODATA (NoError without answers), with the SOA for negative caching.
    fn negative(&self, rcode: ResponseCode) -> Reply {
        let mut soa = self.soa.clone();
        soa.set_ttl(NEGATIVE_TTL);
        Reply {
            rcode,
            authoritative: true,
            answers: Vec::new(),
            authority: vec![soa],
        }
    }
}

fn fqdn(text: &str) -> Result<Name> {
    let mut name = Name::from_ascii(text)
        .map_err(|e| Error::Invalid(format!("invalid DNS name {text:?}: {e}")))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}
