//! ACME through instant-acme: one account per CA kept in storage, HTTP-01 and TLS-ALPN-01 solved
//! through the shared [`Challenges`](crate::Challenges), DNS-01 through the delegated zone
//! ([`Dns01`](crate::Dns01), when given), ARI renewal windows.
//!
//! - `account`: the one account per CA directory per store, created under a lock.
//! - `order`: newOrder → challenges → finalize → chain, challenges withdrawn on every exit.
//! - `problem`: instant-acme errors as [`crate::Error`], and the deadline on every CA call.
//!
//! instant-acme retries `badNonce` itself; nothing here does.

mod account;
mod order;
mod problem;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use instant_acme::{Account, CertificateIdentifier};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use store::Storage;
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::{
    CertBundle, ChallengeKind, Challenges, Dns01, DomainName, Error, KeyType, Result, layout,
};

/// Bound on one request to the CA (instant-acme has no timeouts of its own).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most names one order may carry (Let's Encrypt's limit); callers split larger sets.
pub const MAX_NAMES_PER_ORDER: usize = 100;

/// Orders placed by this process, by CA ([`AcmeIssuer::ca_id`]) and outcome (`issued`, `failed`,
/// or `invalid` for an order refused before reaching the CA). Recorded through the `metrics`
/// facade: a no-op unless the binary installed a recorder.
pub const METRIC_ORDERS: &str = "fleetgate_acme_orders_total";
/// Seconds from placing an order to holding the certificate (or the failure), by nothing: a
/// histogram over every order of this process.
pub const METRIC_ORDER_DURATION: &str = "fleetgate_acme_order_duration_seconds";

/// External account binding credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    pub kid: String,
    /// The HMAC key, base64url as CAs hand it out.
    pub hmac_key: String,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// How to talk to one ACME CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub directory: String,
    pub email: Option<String>,
    /// Trust this root (PEM file) for the directory's TLS instead of the system roots.
    pub ca_root: Option<PathBuf>,
    pub eab: Option<Eab>,
    /// Challenge types to use, in order of preference.
    pub challenges: Vec<ChallengeKind>,
}

/// The CA's suggested renewal window for one certificate (ARI, RFC 9773). Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AriWindow {
    pub start: i64,
    pub end: i64,
    /// When to ask again, as the CA's Retry-After said.
    pub retry_after_secs: u64,
}

/// Obtains certificates from one ACME CA for this node, sharing the account and the challenge
/// responses with every other node through the store.
pub struct AcmeIssuer {
    settings: AcmeSettings,
    ca_id: String,
    store: Arc<dyn Storage>,
    challenges: Arc<Challenges>,
    /// The DNS-01 solver, when the node has a delegated zone.
    dns01: Option<Arc<Dns01>>,
    node: String,
    /// Loaded (or created) on first use, once per process; a failed attempt is retried next time.
    /// Replaced only when the CA says it no longer knows it.
    account: Mutex<Option<Account>>,
    /// Orders this process runs against the CA at once ([`MAX_ORDERS_IN_FLIGHT`]).
    orders: tokio::sync::Semaphore,
}

/// Orders in flight per process and CA. A node starting with many certificates to get (the
/// benchmark's 50) would otherwise send every new-order at once: Pebble 2.4 stopped answering
/// under 50 concurrent ones (twice in about a dozen runs), and a public CA limits request rates.
/// With ten in flight, 50 orders still finish in about two seconds against a local Pebble.
const MAX_ORDERS_IN_FLIGHT: usize = 10;

impl std::fmt::Debug for AcmeIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeIssuer")
            .field("directory", &self.settings.directory)
            .field("ca_id", &self.ca_id)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl AcmeIssuer {
    /// No I/O happens here; the account is loaded or created on the first order.
    pub fn new(
        settings: AcmeSettings,
        store: Arc<dyn Storage>,
        challenges: Arc<Challenges>,
        node: String,
    ) -> AcmeIssuer {
        AcmeIssuer {
            ca_id: layout::ca_id(&settings.directory),
            settings,
            store,
            challenges,
            dns01: None,
            node,
            account: Mutex::new(None),
            orders: tokio::sync::Semaphore::new(MAX_ORDERS_IN_FLIGHT),
        }
    }

    /// Solve DNS-01 challenges (and so allow wildcards) through `dns01`, when `dns-01` is among
    /// the configured challenge types.
    pub fn with_dns01(mut self, dns01: Arc<Dns01>) -> AcmeIssuer {
        self.dns01 = Some(dns01);
        self
    }

    /// Whether this issuer can solve DNS-01 (a solver and `dns-01` among the challenge types):
    /// what wildcards need.
    pub fn solves_dns01(&self) -> bool {
        self.dns01.is_some() && self.settings.challenges.contains(&ChallengeKind::Dns01)
    }

    /// The CA's short name in storage keys and lock names ([`layout::ca_id`] of the directory).
    pub fn ca_id(&self) -> &str {
        &self.ca_id
    }

    pub fn settings(&self) -> &AcmeSettings {
        &self.settings
    }

    /// The account URL at the CA, loading or creating the account if this process has not yet.
    pub async fn account_id(&self) -> Result<String> {
        Ok(self.account().await?.id().to_string())
    }

    /// Order one certificate for `domains` (at most [`MAX_NAMES_PER_ORDER`]; wildcards only when
    /// [`solves_dns01`](Self::solves_dns01)) with a
    /// fresh `key_type` key. `replaces` is the certificate this one renews: named to the CA
    /// (ARI `replaces`) when the CA supports it.
    ///
    /// The caller holds the certificate's lock; this only talks to the CA and publishes and
    /// withdraws challenge responses. The result is not stored.
    pub async fn issue(
        &self,
        domains: &[DomainName],
        key_type: KeyType,
        replaces: Option<&CertBundle>,
    ) -> Result<CertBundle> {
        let span = tracing::info_span!(
            "order",
            domains = ?domains,
            ca = %self.settings.directory,
            order = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            let result = self.issue_inner(domains, key_type, replaces).await;
            let elapsed = started.elapsed();
            let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            let outcome = match &result {
                Ok(_) => "issued",
                Err(Error::Config(_)) => "invalid",
                Err(_) => "failed",
            };
            metrics::counter!(METRIC_ORDERS, "ca" => self.ca_id.clone(), "outcome" => outcome)
                .increment(1);
            if outcome != "invalid" {
                metrics::histogram!(METRIC_ORDER_DURATION).record(elapsed.as_secs_f64());
            }
            match &result {
                Ok(bundle) => tracing::info!(
                    elapsed_ms,
                    outcome = "issued",
                    serial = %bundle.meta.serial,
                    not_after = bundle.meta.not_after,
                    "certificate issued"
                ),
                Err(e) => tracing::warn!(
                    elapsed_ms,
                    outcome = "failed",
                    retryable = e.is_retryable(),
                    error = %e,
                    "order failed"
                ),
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn issue_inner(
        &self,
        domains: &[DomainName],
        key_type: KeyType,
        replaces: Option<&CertBundle>,
    ) -> Result<CertBundle> {
        let mut seen = HashSet::new();
        let domains: Vec<DomainName> = domains
            .iter()
            .filter(|d| seen.insert(*d))
            .cloned()
            .collect();
        if domains.is_empty() {
            return Err(Error::Config(
                "an order needs at least one domain".to_string(),
            ));
        }
        if domains.len() > MAX_NAMES_PER_ORDER {
            return Err(Error::Config(format!(
                "{} names in one order; the limit is {MAX_NAMES_PER_ORDER}, split them",
                domains.len()
            )));
        }
        if let Some(wildcard) = domains.iter().find(|d| d.is_wildcard())
            && !self.solves_dns01()
        {
            return Err(Error::Config(format!(
                "{wildcard} is a wildcard, which only DNS-01 can validate; add \"dns-01\" to acme.challenges and configure the [dns] zone"
            )));
        }
        if self.settings.challenges.contains(&ChallengeKind::Dns01) && self.dns01.is_none() {
            return Err(Error::Config(
                "dns-01 is among the challenge types but this node has no DNS zone ([dns])"
                    .to_string(),
            ));
        }
        if self.settings.challenges.is_empty() {
            return Err(Error::Config(
                "no ACME challenge types configured".to_string(),
            ));
        }
        // Never closed: an error here would only mean running unthrottled.
        let _in_flight = self.orders.acquire().await.ok();
        let account = self.account().await?;
        let run = |account: Account| {
            let domains = &domains;
            async move {
                order::run(
                    &account,
                    &self.settings,
                    &self.challenges,
                    self.dns01.as_ref(),
                    domains,
                    key_type,
                    replaces,
                )
                .await
            }
        };
        match run(account.clone()).await {
            // The CA lost the account (Pebble forgets everything on restart; an operator may have
            // deactivated it): register a new one, once, and order again.
            Err(Error::Acme { problem })
                if problem.r#type.as_deref() == Some(problem::ACCOUNT_DOES_NOT_EXIST) =>
            {
                tracing::warn!(account = account.id(), detail = ?problem.detail, "the CA does not know our account");
                run(self.replace_account(&account).await?).await
            }
            other => other,
        }
    }

    /// The CA's suggested renewal window for `bundle` (ARI). `Ok(None)` when the CA offers no
    /// renewalInfo, or the certificate has no authority key identifier to name it by.
    pub async fn renewal_window(&self, bundle: &CertBundle) -> Result<Option<AriWindow>> {
        let id = match certificate_id(bundle) {
            Ok(id) => id,
            Err(e) => {
                tracing::debug!(error = %e, "cannot name the certificate for ARI");
                return Ok(None);
            }
        };
        let account = self.account().await?;
        match problem::call(
            "fetch the renewal window",
            CALL_TIMEOUT,
            account.renewal_info(&id),
        )
        .await
        {
            Ok((info, retry_after)) => Ok(Some(AriWindow {
                start: info.suggested_window.start.unix_timestamp(),
                end: info.suggested_window.end.unix_timestamp(),
                retry_after_secs: retry_after.as_secs(),
            })),
            // The directory has no renewalInfo URL (decided locally, no request made).
            Err(problem::CaError::Acme {
                err: instant_acme::Error::Unsupported(_),
                ..
            }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The account, loaded or created once per process (concurrent callers wait for the first).
    async fn account(&self) -> Result<Account> {
        let mut slot = self.account.lock().await;
        if let Some(account) = &*slot {
            return Ok(account.clone());
        }
        let account =
            account::obtain(&self.settings, &self.ca_id, &self.store, &self.node, None).await?;
        *slot = Some(account.clone());
        Ok(account)
    }

    /// A new account in place of `stale`, which the CA no longer knows; a peer's (or another task's)
    /// replacement is used when there is one.
    async fn replace_account(&self, stale: &Account) -> Result<Account> {
        let mut slot = self.account.lock().await;
        if let Some(current) = &*slot
            && current.id() != stale.id()
        {
            return Ok(current.clone());
        }
        *slot = None;
        let account = account::obtain(
            &self.settings,
            &self.ca_id,
            &self.store,
            &self.node,
            Some(stale.id()),
        )
        .await?;
        *slot = Some(account.clone());
        Ok(account)
    }
}

/// The ARI identifier (authority key id + serial) of the bundle's leaf.
fn certificate_id(
    bundle: &CertBundle,
) -> std::result::Result<CertificateIdentifier<'static>, String> {
    let leaf = CertificateDer::pem_slice_iter(bundle.chain_pem.as_bytes())
        .next()
        .ok_or_else(|| "no certificate in the chain".to_string())?
        .map_err(|e| format!("bad PEM: {e}"))?;
    CertificateIdentifier::try_from(&leaf).map(CertificateIdentifier::into_owned)
}
