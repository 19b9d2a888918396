//! Turning instant-acme's errors into this crate's [`Error`], and bounding every CA call in time.
//!
//! The CA's problem documents are kept typed ([`AcmeProblem`]); the families stay apart so the
//! scheduler can ask [`Error::is_retryable`] and [`Error::retry_after`] instead of matching text.

use std::future::Future;
use std::time::Duration;

use crate::{AcmeProblem, Error};

/// The problem type a CA uses for rate limits (RFC 8555 §6.7).
pub(super) const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";
/// The CA does not know the account that signed the request (RFC 8555 §7.3.1).
pub(super) const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";
/// ARI (RFC 9773 §5): the certificate named in `replaces` was already replaced.
pub(super) const ALREADY_REPLACED: &str = "urn:ietf:params:acme:error:alreadyReplaced";
/// The CA refused the request's anti-replay nonce (RFC 8555 §6.5) before acting on it.
pub(super) const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
/// How many times [`call_fresh_nonce!`] sends one request while the CA answers `badNonce`.
/// instant-acme tries each request 3 times itself, which a CA rejecting many nonces (Pebble's
/// `PEBBLE_WFE_NONCEREJECT`, a CA behind a load balancer whose nodes do not share nonces) gets
/// past only by luck: at 50 % rejection one request in 8 would fail, most orders with it.
pub(super) const BAD_NONCE_ATTEMPTS: u32 = 8;

/// A failed CA call: instant-acme's error, or our own deadline, with what we were doing.
#[derive(Debug)]
pub(super) enum CaError {
    Acme {
        what: &'static str,
        err: instant_acme::Error,
    },
    Elapsed {
        what: &'static str,
        after: Duration,
    },
}

impl CaError {
    /// Whether the CA refused the request's nonce (and so did nothing): sending it again is safe.
    pub(super) fn is_bad_nonce(&self) -> bool {
        self.problem()
            .is_some_and(|p| p.r#type.as_deref() == Some(BAD_NONCE))
    }

    /// The CA's problem document, when the CA answered with one.
    pub(super) fn problem(&self) -> Option<&instant_acme::Problem> {
        match self {
            CaError::Acme {
                err: instant_acme::Error::Api(problem),
                ..
            } => Some(problem),
            _ => None,
        }
    }
}

/// Run one CA call with a deadline. instant-acme has no timeouts of its own: a CA that accepts
/// the connection and never answers would otherwise hold the order (and its lease) forever.
pub(super) async fn call<T>(
    what: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, instant_acme::Error>>,
) -> Result<T, CaError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(CaError::Acme { what, err }),
        Err(_) => Err(CaError::Elapsed { what, after: limit }),
    }
}

/// `call(what, limit, fut)`, evaluating `fut` again (a new request, with a fresh nonce) while
/// the CA answers `badNonce`, up to [`BAD_NONCE_ATTEMPTS`] times: RFC 8555 §6.5 has the client
/// retry, and a request refused for its nonce was not acted on, so resending never repeats an
/// action. A macro because `fut` borrows from the caller (`&mut Order`, a challenge handle).
macro_rules! call_fresh_nonce {
    ($what:expr, $limit:expr, $fut:expr $(,)?) => {{
        let mut attempt = 1;
        loop {
            match $crate::acme::problem::call($what, $limit, $fut).await {
                Err(e)
                    if e.is_bad_nonce() && attempt < $crate::acme::problem::BAD_NONCE_ATTEMPTS =>
                {
                    attempt += 1;
                    tracing::debug!(
                        what = $what,
                        attempt,
                        "the CA refused our nonce again; sending the request once more"
                    );
                }
                other => break other,
            }
        }
    }};
}
pub(super) use call_fresh_nonce;

impl From<CaError> for Error {
    fn from(e: CaError) -> Self {
        match e {
            CaError::Elapsed { what, after } => Error::Timeout {
                what: format!(
                    "{what} (no answer from the CA within {} s)",
                    after.as_secs()
                ),
            },
            CaError::Acme { what, err } => from_acme(what, err),
        }
    }
}

fn from_acme(what: &'static str, err: instant_acme::Error) -> Error {
    use instant_acme::Error as E;
    match err {
        E::Api(problem) => from_problem(&problem),
        // Both wrap failures of the HTTP client: connect, TLS, reading the body.
        E::Hyper(_) | E::Other(_) => Error::Network {
            detail: format!("{what}: {}", chain(&err)),
        },
        E::Http(_) => Error::Network {
            detail: format!("{what}: cannot build the request: {}", chain(&err)),
        },
        E::InvalidUri(_) => Error::Config(format!("{what}: {}", chain(&err))),
        // Raised by `poll_ready`/`poll_certificate` when their retry policy runs out.
        E::Timeout(_) => Error::Timeout {
            what: format!("{what}: the CA did not finish in time"),
        },
        E::Crypto | E::KeyRejected => Error::Crypto(format!("{what}: {err}")),
        // The CA sent something we cannot use (bad JSON, a missing URL, an unsupported feature):
        // a CA fault, kept as a problem without a type.
        other => Error::Acme {
            problem: local_problem(format!("{what}: {}", chain(&other))),
        },
    }
}

/// Map a CA problem document: rate limits apart from everything else.
pub(super) fn from_problem(problem: &instant_acme::Problem) -> Error {
    let converted = convert(problem);
    if problem.r#type.as_deref() == Some(RATE_LIMITED) {
        // instant-acme drops the response headers of error responses, so the Retry-After header
        // is not visible here; Let's Encrypt repeats the time in the detail, which we parse.
        let retry_after = problem
            .detail
            .as_deref()
            .and_then(|d| retry_after_from_detail(d, crate::bundle::now_unix()));
        Error::RateLimited {
            problem: converted,
            retry_after,
        }
    } else {
        Error::Acme { problem: converted }
    }
}

/// instant-acme's problem as ours, subproblems flattened to `identifier: type: detail`.
pub(super) fn convert(problem: &instant_acme::Problem) -> AcmeProblem {
    AcmeProblem {
        r#type: problem.r#type.clone(),
        detail: problem.detail.clone(),
        status: problem.status,
        subproblems: problem
            .subproblems
            .iter()
            .map(|sub| {
                format!(
                    "{}: {}: {}",
                    sub.identifier
                        .as_ref()
                        .map(|id| id.authorized(false).to_string())
                        .unwrap_or_else(|| "-".to_string()),
                    sub.r#type.as_deref().unwrap_or("-"),
                    sub.detail.as_deref().unwrap_or("-"),
                )
            })
            .collect(),
    }
}

/// A problem we describe ourselves (no CA problem document exists).
pub(super) fn local_problem(detail: String) -> AcmeProblem {
    AcmeProblem {
        r#type: None,
        detail: Some(detail),
        status: None,
        subproblems: Vec::new(),
    }
}

/// An error and its sources, `a: b: c`, so "connection refused" is not hidden behind "client error".
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Let's Encrypt writes `retry after 2025-01-20 15:06:10 UTC` into rate-limit details. Returns
/// the wait from `now` (unix seconds), zero if that time has passed, `None` if there is no such
/// phrase.
pub(super) fn retry_after_from_detail(detail: &str, now: i64) -> Option<Duration> {
    const PHRASE: &str = "retry after ";
    let lower = detail.to_ascii_lowercase();
    let start = lower.find(PHRASE)? + PHRASE.len();
    let stamp = detail.get(start..start + 19)?;
    let b = stamp.as_bytes();
    let shape_ok = b.len() == 19
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':';
    if !shape_ok {
        return None;
    }
    let num = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<u16>().ok();
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::from(num(0..4)?),
        month,
        u8::try_from(num(8..10)?).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(14..16)?).ok()?,
        u8::try_from(num(17..19)?).ok()?,
    )
    .ok()?;
    let at = time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp();
    Some(Duration::from_secs(u64::try_from(at - now).unwrap_or(0)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn problem(json: &str) -> instant_acme::Problem {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rate_limit_keeps_problem_and_parses_retry_after() {
        let p = problem(
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","status":429,
                "detail":"too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2025-01-20 15:06:10 UTC: see https://letsencrypt.org/docs/rate-limits/"}"#,
        );
        // 2025-01-20 15:00:00 UTC
        let now = 1_737_385_200;
        let Error::RateLimited {
            problem,
            retry_after,
        } = from_problem(&p)
        else {
            panic!("not RateLimited");
        };
        // That time has passed by now: wait zero, but do report it.
        assert_eq!(retry_after, Some(Duration::ZERO));
        assert_eq!(problem.status, Some(429));
        assert_eq!(
            retry_after_from_detail(p.detail.as_deref().unwrap(), now),
            Some(Duration::from_secs(370))
        );
        assert_eq!(
            retry_after_from_detail(p.detail.as_deref().unwrap(), now + 1000),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_ignores_other_text() {
        for detail in [
            "",
            "retry after",
            "retry after tomorrow please!!",
            "retry after 2025-13-01 00:00:00 UTC",
        ] {
            assert_eq!(retry_after_from_detail(detail, 0), None, "{detail}");
        }
    }

    #[test]
    fn other_problems_keep_subproblems() {
        let p = problem(
            r#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"Error creating new order",
                "status":400,"subproblems":[{"type":"urn:ietf:params:acme:error:rejectedIdentifier",
                "detail":"forbidden","identifier":{"type":"dns","value":"bad.example"}}]}"#,
        );
        let Error::Acme { problem } = from_problem(&p) else {
            panic!("not Acme");
        };
        assert_eq!(
            problem.subproblems,
            vec![
                "bad.example: urn:ietf:params:acme:error:rejectedIdentifier: forbidden".to_string()
            ]
        );
        assert!(Error::Acme { problem }.is_retryable());
    }

    #[test]
    fn families() {
        let e: Error = CaError::Elapsed {
            what: "new order",
            after: Duration::from_secs(30),
        }
        .into();
        assert!(matches!(e, Error::Timeout { .. }));
        let e: Error = CaError::Acme {
            what: "poll",
            err: instant_acme::Error::Timeout(None),
        }
        .into();
        assert!(matches!(e, Error::Timeout { .. }));
        let e: Error = CaError::Acme {
            what: "x",
            err: instant_acme::Error::Other("connection refused".into()),
        }
        .into();
        assert!(
            matches!(e, Error::Network { ref detail } if detail.contains("connection refused"))
        );
        let e: Error = CaError::Acme {
            what: "x",
            err: instant_acme::Error::Str("no order URL found"),
        }
        .into();
        assert!(matches!(e, Error::Acme { .. }));
    }
}
