//! DNS-01 through the fleet's delegated zone: the TXT value for `_acme-challenge.<name>` is
//! written to the store under the delegation's target (`<id>.<zone>`, which the domain's owner
//! CNAMEd `_acme-challenge.<name>` to), where every node's DNS listener answers it from.
//!
//! The order code publishes every DNS-01 value of an order, checks that each is visible, then
//! tells the CA to validate (all at once: a resolver that cached one value must not be asked for
//! the name again before the second is there), and withdraws them after the order.

use std::time::Duration;

use dns::Records;

use crate::{DomainName, Error, Result};

/// How long a published value may take to become visible before the order gives up.
const VISIBLE_DEADLINE: Duration = Duration::from_secs(30);
/// How often visibility is checked while waiting.
const VISIBLE_POLL: Duration = Duration::from_millis(200);

/// Solves DNS-01 challenges in the delegated zone.
#[derive(Debug, Clone)]
pub struct Dns01 {
    records: Records,
    zone: String,
}

/// One TXT value an order published: the name that holds it and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTxt {
    /// The delegation target, `<id>.<zone>`.
    pub name: String,
    pub value: String,
    /// The name being validated (a wildcard's base name).
    pub domain: String,
}

impl Dns01 {
    /// Solve through the zone `zone`, whose records (and delegations) are in `records`.
    pub fn delegated(records: Records, zone: &str) -> Dns01 {
        Dns01 {
            records,
            zone: zone.trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Publish `value` for `domain`'s DNS-01 challenge (`*.` stripped: a wildcard is validated
    /// at its base name). Fails when `domain` has no delegation: the CA could never see it.
    pub async fn publish(&self, domain: &DomainName, value: &str) -> Result<PublishedTxt> {
        let base = domain
            .as_str()
            .strip_prefix("*.")
            .unwrap_or(domain.as_str());
        let delegation = self
            .records
            .delegation(base)
            .await
            .map_err(from_dns)?
            .ok_or_else(|| {
                Error::Config(format!(
                    "{base} has no DNS-01 delegation; run `fleetgate dns delegate {base}` and have its owner add the record it prints"
                ))
            })?;
        let name = delegation.target(&self.zone);
        self.records.add_txt(&name, value).await.map_err(from_dns)?;
        tracing::debug!(domain = base, txt = %name, "DNS-01 value published");
        Ok(PublishedTxt {
            name,
            value: value.to_string(),
            domain: base.to_string(),
        })
    }

    /// Whether every value in `published` is served (read back from the store, which every
    /// listener answers from).
    pub async fn visible(&self, published: &[PublishedTxt]) -> Result<bool> {
        for txt in published {
            let values = self.records.txt(&txt.name).await.map_err(from_dns)?;
            if !values.contains(&txt.value) {
                return Ok(false);
            }
        }
        Ok(true)
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
        self.records
            .remove_txt(&txt.name, &txt.value)
            .await
            .map_err(from_dns)
    }
}

fn from_dns(e: dns::Error) -> Error {
    match e {
        dns::Error::Store(e) => Error::Store(e),
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
