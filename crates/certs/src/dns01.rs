//! DNS-01, two ways:
//! - through the fleet's delegated zone: the TXT value for `_acme-challenge.<name>` is written to
//!   the store under the delegation's target (`<id>.<zone>`, which the domain's owner CNAMEd
//!   `_acme-challenge.<name>` to), where every node's DNS listener answers it from;
//! - by RFC 2136 (TSIG-signed) updates to a primary the operator runs, for names in its zone:
//!   `_acme-challenge.<name>` itself gets the value, read back from the primary before the CA
//!   is told.
//!
//! The order code publishes every DNS-01 value of an order, checks that each is visible, then
//! tells the CA to validate (all at once: a resolver that cached one value must not be asked for
//! the name again before the second is there), and withdraws them after the order.

use std::time::Duration;

use std::sync::Arc;

use dns::{Records, Rfc2136};

use crate::{DomainName, Error, Result};

/// How long a published value may take to become visible before the order gives up.
const VISIBLE_DEADLINE: Duration = Duration::from_secs(30);
/// How often visibility is checked while waiting.
const VISIBLE_POLL: Duration = Duration::from_millis(200);

/// TTL of TXT records added by RFC 2136 (the delegated zone's own TTL is the listener's).
const RFC2136_TTL: u32 = 60;

/// Solves DNS-01 challenges: by RFC 2136 for names in a configured zone, through the delegated
/// zone for the others.
#[derive(Debug, Clone, Default)]
pub struct Dns01 {
    delegated: Option<(Records, String)>,
    rfc2136: Vec<Arc<Rfc2136>>,
}

/// Where a published value went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The store, for the delegated zone.
    Delegated,
    /// The RFC 2136 primary for this zone.
    Rfc2136 { zone: String },
}

/// One TXT value an order published: the name that holds it and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTxt {
    /// The delegation target `<id>.<zone>`, or `_acme-challenge.<name>` for RFC 2136.
    pub name: String,
    pub value: String,
    /// The name being validated (a wildcard's base name).
    pub domain: String,
    pub via: Via,
}

impl Dns01 {
    /// Solve through the zone `zone`, whose records (and delegations) are in `records`.
    pub fn delegated(records: Records, zone: &str) -> Dns01 {
        Dns01 {
            delegated: Some((records, zone.trim_end_matches('.').to_ascii_lowercase())),
            rfc2136: Vec::new(),
        }
    }

    /// Solve by RFC 2136 updates through `primary` for names in its zone (added to any other
    /// way this solver has; the first zone that covers a name is used).
    pub fn with_rfc2136(mut self, primary: Rfc2136) -> Dns01 {
        self.rfc2136.push(Arc::new(primary));
        self
    }

    /// The delegated zone, if this solver has one.
    pub fn zone(&self) -> Option<&str> {
        self.delegated.as_ref().map(|(_, zone)| zone.as_str())
    }

    /// Publish `value` for `domain`'s DNS-01 challenge (`*.` stripped: a wildcard is validated
    /// at its base name). Fails when neither an RFC 2136 zone covers `domain` nor has it a
    /// delegation: the CA could never see the value.
    pub async fn publish(&self, domain: &DomainName, value: &str) -> Result<PublishedTxt> {
        let base = base_name(domain);
        let challenge = format!("_acme-challenge.{base}");
        if let Some(primary) = self.rfc2136.iter().find(|p| p.covers(&challenge)) {
            primary
                .add_txt(&challenge, value, RFC2136_TTL)
                .await
                .map_err(from_dns)?;
            tracing::debug!(domain = base, zone = primary.zone(), server = %primary.server(), "DNS-01 value added by RFC 2136");
            return Ok(PublishedTxt {
                name: challenge,
                value: value.to_string(),
                domain: base.to_string(),
                via: Via::Rfc2136 {
                    zone: primary.zone().to_string(),
                },
            });
        }
        let Some((records, zone)) = &self.delegated else {
            return Err(self.not_covered(domain));
        };
        let delegation = records
            .delegation(base)
            .await
            .map_err(from_dns)?
            .ok_or_else(|| self.not_covered(domain))?;
        let name = delegation.target(zone);
        records.add_txt(&name, value).await.map_err(from_dns)?;
        tracing::debug!(domain = base, txt = %name, "DNS-01 value published");
        Ok(PublishedTxt {
            name,
            value: value.to_string(),
            domain: base.to_string(),
            via: Via::Delegated,
        })
    }

    /// Whether [`publish`](Self::publish) can work for `domain`: an RFC 2136 zone holds its
    /// challenge name, or it has a delegation.
    pub async fn covers(&self, domain: &DomainName) -> Result<bool> {
        let base = base_name(domain);
        if self
            .rfc2136
            .iter()
            .any(|p| p.covers(&format!("_acme-challenge.{base}")))
        {
            return Ok(true);
        }
        match &self.delegated {
            Some((records, _)) => Ok(records.delegation(base).await.map_err(from_dns)?.is_some()),
            None => Ok(false),
        }
    }

    /// Why `domain` cannot be solved here, and what to do.
    pub fn not_covered(&self, domain: &DomainName) -> Error {
        let base = base_name(domain);
        match &self.delegated {
            Some(_) => Error::Dns {
                detail: format!(
                    "{base} has no delegation; run `fleetgate dns delegate {base}` and have its owner add the record it prints"
                ),
                // The operator can delegate at any time, without touching the config.
                retryable: true,
            },
            None => Error::Config(format!(
                "no DNS-01 zone covers {base}: no [[dns.rfc2136]] zone contains _acme-challenge.{base} and there is no delegated zone"
            )),
        }
    }

    /// Whether every value in `published` is served: read back from the store (which every
    /// listener answers from), or from the RFC 2136 primary.
    pub async fn visible(&self, published: &[PublishedTxt]) -> Result<bool> {
        for txt in published {
            let values = match &txt.via {
                Via::Delegated => match &self.delegated {
                    Some((records, _)) => records.txt(&txt.name).await.map_err(from_dns)?,
                    None => Vec::new(),
                },
                Via::Rfc2136 { zone } => match self.primary(zone) {
                    Some(primary) => primary.txt(&txt.name).await.map_err(from_dns)?,
                    None => Vec::new(),
                },
            };
            if !values.contains(&txt.value) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn primary(&self, zone: &str) -> Option<&Rfc2136> {
        self.rfc2136.iter().find(|p| p.zone() == zone).map(|p| &**p)
    }

    /// Wait until [`visible`](Self::visible), saying so in the log when it does not hold at once.
    pub async fn wait_visible(&self, published: &[PublishedTxt]) -> Result<()> {
        if self.visible(published).await? {
            return Ok(());
        }
        let names: Vec<&str> = published.iter().map(|t| t.name.as_str()).collect();
        tracing::info!(txt = ?names, deadline = ?VISIBLE_DEADLINE, "waiting for the DNS-01 values to be visible");
        let deadline = tokio::time::Instant::now() + VISIBLE_DEADLINE;
        loop {
            tokio::time::sleep(VISIBLE_POLL).await;
            if self.visible(published).await? {
                tracing::info!(txt = ?names, "DNS-01 values visible");
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("DNS-01 values for {names:?} to become visible"),
                });
            }
        }
    }

    /// Remove a value published for an order.
    pub async fn withdraw(&self, txt: &PublishedTxt) -> Result<()> {
        match &txt.via {
            Via::Delegated => match &self.delegated {
                Some((records, _)) => records.remove_txt(&txt.name, &txt.value).await,
                None => Ok(()),
            },
            Via::Rfc2136 { zone } => match self.primary(zone) {
                Some(primary) => primary.remove_txt(&txt.name, &txt.value).await,
                None => Ok(()),
            },
        }
        .map_err(from_dns)
    }
}

/// The name a DNS-01 challenge validates: a wildcard's base name.
fn base_name(domain: &DomainName) -> &str {
    domain
        .as_str()
        .strip_prefix("*.")
        .unwrap_or(domain.as_str())
}

fn from_dns(e: dns::Error) -> Error {
    match e {
        dns::Error::Store(e) => Error::Store(e),
        e @ (dns::Error::Io { .. } | dns::Error::Rejected { .. }) => Error::Dns {
            retryable: e.is_retryable(),
            detail: e.to_string(),
        },
        other => Error::Config(other.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn publishes_under_the_delegation_and_withdraws() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Arc::new(store::DirStore::open(dir.path()).unwrap()));
        let solver = Dns01::delegated(records.clone(), "acme.ops.example.");
        let shop = DomainName::parse("*.shop.example").unwrap();
        let err = solver.publish(&shop, "v1").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("fleetgate dns delegate shop.example"),
            "{err}"
        );
        assert!(err.is_retryable());

        let d = records.delegate("shop.example").await.unwrap();
        let a = solver.publish(&shop, "v1").await.unwrap();
        let b = solver
            .publish(&DomainName::parse("shop.example").unwrap(), "v2")
            .await
            .unwrap();
        assert_eq!(a.name, format!("{}.acme.ops.example", d.id));
        assert_eq!(a.name, b.name);
        solver.wait_visible(&[a.clone(), b.clone()]).await.unwrap();
        assert_eq!(records.txt(&a.name).await.unwrap(), ["v1", "v2"]);
        solver.withdraw(&a).await.unwrap();
        assert!(!solver.visible(&[a.clone(), b.clone()]).await.unwrap());
        solver.withdraw(&b).await.unwrap();
        assert!(records.txt(&a.name).await.unwrap().is_empty());
    }
}
