//! One ACME order, from newOrder to the certificate chain: solve each pending authorization through
//! the shared [`Challenges`] or the [`Dns01`] solver (published to the store before the CA is told
//! to look), wait for the order to become ready, finalize with a fresh key, and withdraw the
//! challenges in every case.
//!
//! HTTP-01 and TLS-ALPN-01 challenges are marked ready one by one as they are published. DNS-01
//! ones are marked ready together after every DNS-01 value of the order is published and
//! visible: a wildcard and its base name share one TXT name, and a resolver asked for it after
//! the first value must not cache an answer without the second.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationState, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order,
    OrderStatus, RetryPolicy,
};

use super::problem::{self, ALREADY_REPLACED, CaError, call, call_fresh_nonce};
use super::{AcmeSettings, CALL_TIMEOUT, certificate_id};
use crate::dns01::PublishedTxt;
use crate::{
    CertBundle, ChallengeKind, Challenges, Dns01, DomainName, Error, KeyType, Result, SourceKind,
};

/// How long the CA may take to validate every authorization of an order.
const READY_DEADLINE: Duration = Duration::from_secs(90);
/// How long the CA may take to issue after finalization.
const CERTIFICATE_DEADLINE: Duration = Duration::from_secs(60);
/// Polling schedules (the CA's Retry-After, when sent, takes precedence). The first look comes
/// soon, as a CA may validate or issue within milliseconds, and the gaps double: a CA that takes
/// seconds is asked about four times in its first second.
const POLL_READY_FIRST: Duration = Duration::from_millis(100);
const POLL_CERTIFICATE_FIRST: Duration = Duration::from_millis(50);
const POLL_BACKOFF: f32 = 2.0;
/// Bound on one store call while withdrawing challenges.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(10);

/// Run one order for `domains` (already checked: 1..=100 distinct names, wildcards only with a
/// DNS-01 solver).
pub(super) async fn run(
    account: &Account,
    settings: &AcmeSettings,
    challenges: &Arc<Challenges>,
    dns01: Option<&Arc<Dns01>>,
    domains: &[DomainName],
    key_type: KeyType,
    replaces: Option<&CertBundle>,
) -> Result<CertBundle> {
    let identifiers: Vec<Identifier> = domains
        .iter()
        .map(|d| Identifier::Dns(d.to_string()))
        .collect();
    let mut order = new_order(account, &identifiers, replaces).await?;
    let order_url = order.url().to_string();
    tracing::Span::current().record("order", order_url.as_str());
    tracing::debug!(status = ?order.state().status, "order created");

    let mut cleanup = Cleanup {
        challenges: Arc::clone(challenges),
        dns01: dns01.cloned(),
        published: Vec::new(),
    };
    let result = async {
        let solvers = Solvers {
            preferences: &settings.challenges,
            challenges,
            dns01: dns01.map(|d| &**d),
        };
        solve(&mut order, &solvers, &mut cleanup).await?;
        wait_ready(&mut order).await?;
        finalize(&mut order, domains, key_type).await
    }
    .await;
    cleanup.run().await;
    let (chain_pem, key_pem) = result?;

    let mut bundle = CertBundle::from_pem(chain_pem, key_pem, SourceKind::Acme, None)?;
    let missing: Vec<&str> = domains
        .iter()
        .map(DomainName::as_str)
        .filter(|d| !bundle.meta.names.iter().any(|n| n == d))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Acme {
            problem: problem::local_problem(format!(
                "the CA issued a certificate without {}",
                missing.join(", ")
            )),
        });
    }
    bundle.meta.order_url = Some(order_url);
    bundle.meta.directory = Some(settings.directory.clone());
    Ok(bundle)
}

/// newOrder, with `replaces` (ARI) when the old certificate can be identified and the CA offers
/// ARI. instant-acme refuses `replaces` locally, before any request, when the directory has no
/// renewalInfo, so "does the CA support ARI" costs nothing to ask.
async fn new_order(
    account: &Account,
    identifiers: &[Identifier],
    replaces: Option<&CertBundle>,
) -> Result<Order> {
    let old = replaces.and_then(|bundle| match certificate_id(bundle) {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::debug!(error = %e, "cannot identify the certificate being replaced; ordering without `replaces`");
            None
        }
    });
    if let Some(id) = old {
        let attempt = call_fresh_nonce!(
            "create the order",
            CALL_TIMEOUT,
            account.new_order(&NewOrder::new(identifiers).replaces(id.clone())),
        );
        match attempt {
            Ok(order) => {
                tracing::debug!(replaces = %id, "order replaces the current certificate (ARI)");
                return Ok(order);
            }
            Err(CaError::Acme {
                err: instant_acme::Error::Unsupported(_),
                ..
            }) => tracing::debug!("the CA offers no ARI; ordering without `replaces`"),
            Err(e)
                if e.problem()
                    .is_some_and(|p| p.r#type.as_deref() == Some(ALREADY_REPLACED)) =>
            {
                tracing::warn!(replaces = %id, "the CA says this certificate was already replaced; ordering without `replaces`")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(call_fresh_nonce!(
        "create the order",
        CALL_TIMEOUT,
        account.new_order(&NewOrder::new(identifiers))
    )?)
}

/// What an order solves challenges with.
struct Solvers<'a> {
    /// Challenge types in order of preference.
    preferences: &'a [ChallengeKind],
    challenges: &'a Challenges,
    dns01: Option<&'a Dns01>,
}

impl Solvers<'_> {
    /// Whether this node can solve `kind` for a name: DNS-01 needs a solver that covers it
    /// (`dns01_covers`: a delegation or an RFC 2136 zone).
    fn can_solve(&self, kind: ChallengeKind, dns01_covers: bool) -> bool {
        kind != ChallengeKind::Dns01 || (self.dns01.is_some() && dns01_covers)
    }
}

/// Publish a response for every pending authorization, then tell the CA to validate it.
async fn solve(order: &mut Order, solvers: &Solvers<'_>, cleanup: &mut Cleanup) -> Result<()> {
    let preferences = solvers.preferences;
    let challenges = solvers.challenges;
    // DNS-01 authorizations published but not yet marked ready, and their values.
    let mut deferred: Vec<String> = Vec::new();
    let mut dns_values: Vec<PublishedTxt> = Vec::new();
    // Authorizations already solved: after a `badNonce` the stream starts over (instant-acme
    // keeps the ones it fetched and fetches the failed one again), skipping these.
    let mut solved: Vec<String> = Vec::new();
    let mut nonce_attempts = 1;
    let mut authorizations = order.authorizations();
    loop {
        let next = tokio::time::timeout(CALL_TIMEOUT, authorizations.next())
            .await
            .map_err(|_| Error::Timeout {
                what: "fetch an authorization (no answer from the CA)".to_string(),
            })?;
        let Some(next) = next else { break };
        let mut authz = match next {
            Ok(authz) => authz,
            Err(err) => {
                let err = CaError::Acme {
                    what: "fetch an authorization",
                    err,
                };
                if err.is_bad_nonce() && nonce_attempts < problem::BAD_NONCE_ATTEMPTS {
                    nonce_attempts += 1;
                    tracing::debug!(
                        attempt = nonce_attempts,
                        "the CA refused our nonce again; fetching the authorizations once more"
                    );
                    authorizations = order.authorizations();
                    continue;
                }
                return Err(err.into());
            }
        };
        let name = authz.identifier().to_string();
        if solved.contains(&name) {
            continue;
        }
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => {
                tracing::debug!(domain = %name, "authorization already valid");
                continue;
            }
            AuthorizationStatus::Invalid => {
                return Err(Error::Validation {
                    problem: failed_challenge(&authz).unwrap_or_else(|| {
                        problem::local_problem("the authorization is invalid".to_string())
                    }),
                    domain: name,
                });
            }
            other => {
                return Err(Error::Acme {
                    problem: problem::local_problem(format!(
                        "the authorization for {name} is {other:?}, not pending"
                    )),
                });
            }
        }
        let domain = DomainName::parse(&name).map_err(|e| Error::Acme {
            problem: problem::local_problem(format!("the CA asks to authorize {name:?}: {e}")),
        })?;
        // A name DNS-01 cannot cover (not delegated yet) falls back to the next configured type.
        let dns01_covers = match solvers.dns01 {
            Some(dns01) if preferences.contains(&ChallengeKind::Dns01) => {
                dns01.covers(&domain).await?
            }
            _ => false,
        };
        let Some(kind) = preferences.iter().copied().find(|kind| {
            solvers.can_solve(*kind, dns01_covers)
                && authz
                    .challenges
                    .iter()
                    .any(|c| c.r#type == challenge_type(*kind))
        }) else {
            let offered: Vec<String> = authz
                .challenges
                .iter()
                .map(|c| format!("{:?}", c.r#type))
                .collect();
            if let Some(dns01) = solvers.dns01
                && !dns01_covers
                && preferences.contains(&ChallengeKind::Dns01)
                && authz
                    .challenges
                    .iter()
                    .any(|c| c.r#type == ChallengeType::Dns01)
            {
                // Only DNS-01 would do (a wildcard, say), and the name is not delegated yet.
                return Err(dns01.not_covered(&domain));
            }
            let wanted: Vec<&str> = preferences.iter().map(|k| k.as_str()).collect();
            return Err(Error::Config(format!(
                "the CA offers {} for {domain}, none of the configured challenge types ({})",
                offered.join(", "),
                wanted.join(", ")
            )));
        };
        // `kind` was picked from this authorization's own challenge list just above.
        let Some(mut challenge) = authz.challenge(challenge_type(kind)) else {
            return Err(Error::Acme {
                problem: problem::local_problem(format!(
                    "no {} challenge for {domain}",
                    kind.as_str()
                )),
            });
        };
        let key_auth = challenge.key_authorization();
        // Published to the store first, so whichever node the CA reaches can answer.
        match kind {
            ChallengeKind::Http01 => {
                cleanup.published.push(Published::Http01 {
                    token: challenge.token.clone(),
                });
                challenges
                    .publish_http01(&domain, &challenge.token, key_auth.as_str())
                    .await?;
            }
            ChallengeKind::TlsAlpn01 => {
                cleanup.published.push(Published::TlsAlpn01 {
                    domain: domain.clone(),
                });
                challenges
                    .publish_tls_alpn01(&domain, key_auth.digest().as_ref())
                    .await?;
            }
            ChallengeKind::Dns01 => {
                // `can_solve` lets DNS-01 be picked only with a solver.
                let Some(dns01) = solvers.dns01 else {
                    return Err(Error::Config("no DNS-01 solver".to_string()));
                };
                let txt = dns01.publish(&domain, &key_auth.dns_value()).await?;
                cleanup
                    .published
                    .push(Published::Dns01 { txt: txt.clone() });
                dns_values.push(txt);
                tracing::debug!(%domain, challenge = kind.as_str(), "challenge published; marked ready with the order's other DNS-01 values");
                deferred.push(name.clone());
                solved.push(name);
                continue;
            }
        }
        call_fresh_nonce!(
            "mark the challenge ready",
            CALL_TIMEOUT,
            challenge.set_ready()
        )?;
        tracing::debug!(%domain, challenge = kind.as_str(), "challenge published and marked ready");
        solved.push(name);
    }
    if let Some(dns01) = solvers.dns01
        && !deferred.is_empty()
    {
        dns01.wait_visible(&dns_values).await?;
        mark_dns01_ready(order, &deferred).await?;
    }
    Ok(())
}

/// Tell the CA to validate the DNS-01 challenges of the authorizations named in `deferred`.
/// The authorizations were fetched by the first pass: walking them again costs no request.
async fn mark_dns01_ready(order: &mut Order, deferred: &[String]) -> Result<()> {
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|err| CaError::Acme {
            what: "fetch an authorization",
            err,
        })?;
        let name = authz.identifier().to_string();
        if !deferred.contains(&name) {
            continue;
        }
        let Some(mut challenge) = authz.challenge(ChallengeType::Dns01) else {
            return Err(Error::Acme {
                problem: problem::local_problem(format!("no dns-01 challenge for {name}")),
            });
        };
        call_fresh_nonce!(
            "mark the challenge ready",
            CALL_TIMEOUT,
            challenge.set_ready()
        )?;
        tracing::debug!(domain = %name, challenge = "dns-01", "challenge marked ready");
    }
    Ok(())
}

/// Wait until the CA has validated every authorization. An invalid order is explained by its
/// failed authorization: which domain, and the CA's problem for the challenge.
async fn wait_ready(order: &mut Order) -> Result<()> {
    let policy = RetryPolicy::new()
        .initial_delay(POLL_READY_FIRST)
        .backoff(POLL_BACKOFF)
        .timeout(READY_DEADLINE);
    let polled = call_fresh_nonce!(
        "wait for the CA to validate",
        READY_DEADLINE + CALL_TIMEOUT,
        order.poll_ready(&policy),
    );
    match polled {
        Ok(OrderStatus::Ready) => Ok(()),
        // `poll_ready` only returns Ready or Invalid.
        Ok(_) => Err(explain_invalid(order, None).await),
        Err(e) if e.problem().is_some() => Err(explain_invalid(order, Some(e)).await),
        Err(e) => Err(e.into()),
    }
}

/// Find the authorization that failed and report its challenge's problem; fall back to the
/// order's own problem (`original`) when none says why.
async fn explain_invalid(order: &mut Order, original: Option<CaError>) -> Error {
    let mut authorizations = order.authorizations();
    loop {
        let Ok(Some(Ok(mut authz))) =
            tokio::time::timeout(CALL_TIMEOUT, authorizations.next()).await
        else {
            break;
        };
        if call("refresh an authorization", CALL_TIMEOUT, async {
            authz.refresh().await.map(|_| ())
        })
        .await
        .is_err()
        {
            continue;
        }
        if authz.status == AuthorizationStatus::Invalid {
            let domain = authz.identifier().to_string();
            let problem = failed_challenge(&authz)
                .or_else(|| {
                    original
                        .as_ref()
                        .and_then(CaError::problem)
                        .map(problem::convert)
                })
                .unwrap_or_else(|| {
                    problem::local_problem("the authorization is invalid".to_string())
                });
            return Error::Validation { domain, problem };
        }
    }
    match original {
        Some(e) => e.into(),
        None => Error::Acme {
            problem: problem::local_problem(
                "the order became invalid and no authorization says why".to_string(),
            ),
        },
    }
}

/// The problem of the first challenge that carries one.
fn failed_challenge(state: &AuthorizationState) -> Option<crate::AcmeProblem> {
    state
        .challenges
        .iter()
        .find_map(|c| c.error.as_ref())
        .map(problem::convert)
}

/// A fresh key and CSR for exactly `domains`; the chain (PEM) and the key (PKCS#8 PEM).
async fn finalize(
    order: &mut Order,
    domains: &[DomainName],
    key_type: KeyType,
) -> Result<(String, String)> {
    let crypto = |e: rcgen::Error| Error::Crypto(e.to_string());
    let key = key_type.generate()?;
    let mut params = rcgen::CertificateParams::new(
        domains
            .iter()
            .map(DomainName::to_string)
            .collect::<Vec<_>>(),
    )
    .map_err(crypto)?;
    // rcgen's default subject is "CN=rcgen self signed cert"; the CA takes names from the SANs.
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(crypto)?;
    call_fresh_nonce!(
        "finalize the order",
        CALL_TIMEOUT,
        order.finalize_csr(csr.der())
    )?;
    // A CA that issued at once says so in its answer to the finalization: no wait then.
    if order.state().status == OrderStatus::Valid
        && let Some(chain) = call_fresh_nonce!(
            "download the certificate",
            CALL_TIMEOUT,
            order.certificate()
        )?
    {
        return Ok((chain, key.serialize_pem()));
    }
    let policy = RetryPolicy::new()
        .initial_delay(POLL_CERTIFICATE_FIRST)
        .backoff(POLL_BACKOFF)
        .timeout(CERTIFICATE_DEADLINE);
    let chain = call_fresh_nonce!(
        "wait for the certificate",
        CERTIFICATE_DEADLINE + CALL_TIMEOUT,
        order.poll_certificate(&policy),
    )?;
    Ok((chain, key.serialize_pem()))
}

fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Dns01 => ChallengeType::Dns01,
    }
}

/// A challenge response this order published.
#[derive(Debug)]
enum Published {
    Http01 { token: String },
    TlsAlpn01 { domain: DomainName },
    Dns01 { txt: PublishedTxt },
}

/// Withdraws what the order published: awaited on every normal exit, and spawned from `Drop` when
/// the order's future is cancelled mid-way.
struct Cleanup {
    challenges: Arc<Challenges>,
    dns01: Option<Arc<Dns01>>,
    published: Vec<Published>,
}

impl Cleanup {
    async fn run(mut self) {
        withdraw_all(
            &self.challenges,
            self.dns01.as_deref(),
            std::mem::take(&mut self.published),
        )
        .await;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.published.is_empty() {
            return;
        }
        let published = std::mem::take(&mut self.published);
        let challenges = Arc::clone(&self.challenges);
        let dns01 = self.dns01.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    withdraw_all(&challenges, dns01.as_deref(), published).await
                });
            }
            Err(_) => tracing::warn!(
                ?published,
                "order dropped outside a runtime; challenges left in the store"
            ),
        }
    }
}

async fn withdraw_all(challenges: &Challenges, dns01: Option<&Dns01>, published: Vec<Published>) {
    for item in published {
        let outcome = match &item {
            Published::Http01 { token } => {
                tokio::time::timeout(WITHDRAW_TIMEOUT, challenges.withdraw_http01(token)).await
            }
            Published::TlsAlpn01 { domain } => {
                tokio::time::timeout(WITHDRAW_TIMEOUT, challenges.withdraw_tls_alpn01(domain)).await
            }
            // Published only through a solver, which the cleanup keeps.
            Published::Dns01 { txt } => match dns01 {
                Some(dns01) => tokio::time::timeout(WITHDRAW_TIMEOUT, dns01.withdraw(txt)).await,
                None => Ok(Ok(())),
            },
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(?item, error = %e, "withdrawing a challenge failed"),
            Err(_) => tracing::warn!(?item, "withdrawing a challenge timed out"),
        }
    }
}
