//! When to renew, how long to wait after a failure, and when to ask the CA for ARI again.
//!
//! Everything here is a pure function of its inputs (times are unix seconds, randomness comes in
//! as `rand01` in `[0, 1]`, e.g. `fastrand::f64()`), so the scheduler can be tested with a fake
//! clock and fixed randomness.
//!
//! # When to renew ([`renew_at`])
//!
//! 1. **ARI** (RFC 9773). When the CA suggested a renewal window `(start, end)`, renew at a
//!    uniformly random point in it: `start + rand01 * (end - start)`. A window that ends before it
//!    starts is treated as the single instant `start`. The point is never later than one second
//!    before `not_after` (a CA window reaching past expiry would otherwise let the certificate
//!    lapse); it may lie in the past, which means "renew now" (this is how a CA asks for early
//!    renewal, e.g. before a revocation).
//! 2. **Lifetime fraction** (Let's Encrypt's integration guide), when there is no window: with
//!    `lifetime = not_after - not_before`, renew when **1/3** of the lifetime remains, or **1/2**
//!    when the lifetime is under 10 days. A 90-day certificate renews 30 days before expiry, a
//!    45-day one 15 days before, a 160-hour (`shortlived`) one 80 hours before, and the internal
//!    CA's 7-day leaves 3.5 days after issuance. The remaining time is rounded up to whole
//!    seconds, so the renewal point is always strictly before `not_after`.
//!
//! # After a failure ([`Backoff`])
//!
//! The waits follow [`BACKOFF_SCHEDULE`] (1 min, 10 min, 100 min, then 6 h for every later
//! failure) with ±[`BACKOFF_JITTER`] jitter, so nodes and certificates that failed together do not
//! retry together. When the CA sent `Retry-After` (rate limits), the wait is at least that long,
//! capped at [`RETRY_AFTER_CAP`].
//!
//! # ARI polling ([`next_ari_check`])
//!
//! Every [`ARI_CHECK_INTERVAL`] (12 h: the "about twice a day" Let's Encrypt asks for) with
//! ±[`ARI_CHECK_JITTER`]; when the CA sent `Retry-After`, no earlier than that, within
//! the range [`ARI_RETRY_AFTER_MIN`]..=[`ARI_RETRY_AFTER_MAX`].

use std::time::Duration;

use crate::{CertMeta, Error};

// ---- The schedule: every tunable of this module, in one place. ----------------------------------

/// The wait after the 1st, 2nd, 3rd and 4th consecutive failure; later failures keep the last.
pub const BACKOFF_SCHEDULE: [Duration; 4] = [
    Duration::from_secs(60),       // 1 min
    Duration::from_secs(10 * 60),  // 10 min
    Duration::from_secs(100 * 60), // 100 min
    Duration::from_secs(6 * 3600), // 6 h, the ceiling
];
/// A standing problem (certificate files refused or missing, a stored certificate that cannot be
/// served) is logged when it appears or changes, then again after each of these waits in turn,
/// the last repeating (see `crate::notice::Reminder`).
pub const REMINDER_SCHEDULE: [Duration; 4] = [
    Duration::from_secs(10 * 60),   // 10 min
    Duration::from_secs(3600),      // 1 h
    Duration::from_secs(6 * 3600),  // 6 h
    Duration::from_secs(24 * 3600), // then daily
];
/// Relative jitter applied to every backoff delay: the wait lies in `[d * 0.9, d * 1.1]`.
pub const BACKOFF_JITTER: f64 = 0.10;
/// The longest a CA's `Retry-After` on a failed order is honoured (a buggy or hostile value must
/// not park a certificate for weeks).
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(24 * 3600);
/// How often to fetch the ARI renewal window when the CA gave no `Retry-After`.
pub const ARI_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Relative jitter on [`ARI_CHECK_INTERVAL`]: `[10.8 h, 13.2 h]`. A CA's `Retry-After` is only ever
/// lengthened by it (`[r, r * 1.1]`).
pub const ARI_CHECK_JITTER: f64 = 0.10;
/// A CA's ARI `Retry-After` is clamped to this range: poll no more than once a minute, and at
/// least once a day.
pub const ARI_RETRY_AFTER_MIN: Duration = Duration::from_secs(60);
pub const ARI_RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);
/// Below this lifetime, renew at 1/2 of the lifetime remaining instead of 1/3.
pub const SHORT_LIFETIME: i64 = 10 * 86_400;

// ---------------------------------------------------------------------------------------------------

/// `rand01` clamped into `[0, 1]`; NaN counts as 0.
fn unit(rand01: f64) -> f64 {
    if rand01.is_nan() {
        0.0
    } else {
        rand01.clamp(0.0, 1.0)
    }
}

/// `d` scaled by `1 + jitter * (2 * rand01 - 1)`, i.e. within `[d * (1 - jitter), d * (1 + jitter)]`.
fn jittered(d: Duration, jitter: f64, rand01: f64) -> Duration {
    d.mul_f64(1.0 + jitter * (2.0 * unit(rand01) - 1.0))
}

fn to_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// When to renew the certificate described by `meta` (unix seconds). See the module docs for the
/// rule. `rand01` picks the point in an ARI window; the lifetime rule does not use it.
pub fn renew_at(meta: &CertMeta, rand01: f64) -> i64 {
    let not_before = i128::from(meta.not_before);
    let not_after = i128::from(meta.not_after);
    if let Some((start, end)) = meta.ari_window {
        let (start, end) = (i128::from(start), i128::from(end));
        let span = (end - start).max(0);
        // `span * unit` is at most `span`; the float round trip loses at most a second on spans
        // beyond 2^53 s, which no real window has.
        let offset = ((span as f64) * unit(rand01)).floor() as i128;
        let at = (start + offset.clamp(0, span)).min(not_after - 1);
        return to_i64(at);
    }
    let lifetime = not_after - not_before;
    if lifetime <= 0 {
        // A certificate that was never valid: renew now.
        return to_i64(not_before.min(not_after));
    }
    let divisor = if lifetime < i128::from(SHORT_LIFETIME) {
        2
    } else {
        3
    };
    // Round the remaining time up, so a tiny lifetime still renews before `not_after`.
    let remaining = (lifetime + divisor - 1) / divisor;
    to_i64(not_after - remaining)
}

/// When to fetch the ARI window next (unix seconds): `now` plus [`ARI_CHECK_INTERVAL`] with
/// jitter, or plus the CA's `Retry-After` (clamped to `[ARI_RETRY_AFTER_MIN,
/// ARI_RETRY_AFTER_MAX]`, lengthened by up to 10% jitter, never shortened).
pub fn next_ari_check(now: i64, retry_after_secs: Option<u64>, rand01: f64) -> i64 {
    let wait = match retry_after_secs {
        Some(secs) => {
            let base = Duration::from_secs(secs).clamp(ARI_RETRY_AFTER_MIN, ARI_RETRY_AFTER_MAX);
            base.mul_f64(1.0 + ARI_CHECK_JITTER * unit(rand01))
        }
        None => jittered(ARI_CHECK_INTERVAL, ARI_CHECK_JITTER, rand01),
    };
    // `wait` is at most 26.4 h, far inside i64 seconds.
    now.saturating_add(wait.as_secs() as i64)
}

/// Consecutive failures of one certificate and the wait they imply. A value type: the scheduler
/// owns one per certificate, records failures, and resets it on success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const fn new() -> Self {
        Backoff { failures: 0 }
    }

    pub fn record_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The scheduled wait before jitter: zero with no failure, else the
    /// [`BACKOFF_SCHEDULE`] entry for this many failures (the last entry from then on).
    pub fn base_delay(&self) -> Duration {
        match self.failures {
            0 => Duration::ZERO,
            n => {
                let i = (n as usize - 1).min(BACKOFF_SCHEDULE.len() - 1);
                BACKOFF_SCHEDULE[i]
            }
        }
    }

    /// How long to wait before the next attempt: [`Backoff::base_delay`] with ±10% jitter.
    pub fn delay(&self, rand01: f64) -> Duration {
        jittered(self.base_delay(), BACKOFF_JITTER, rand01)
    }

    /// Like [`Backoff::delay`], but at least the CA's `Retry-After` for `err` when it sent one
    /// (capped at [`RETRY_AFTER_CAP`]). Whether to retry at all is `err.is_retryable()`'s call,
    /// not this one's.
    pub fn delay_for(&self, err: &Error, rand01: f64) -> Duration {
        let delay = self.delay(rand01);
        match err.retry_after() {
            Some(retry_after) => delay.max(retry_after.min(RETRY_AFTER_CAP)),
            None => delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AcmeProblem, SourceKind};
    use proptest::prelude::*;

    const DAY: i64 = 86_400;

    fn meta(not_before: i64, not_after: i64, ari_window: Option<(i64, i64)>) -> CertMeta {
        CertMeta {
            names: vec!["example.com".into()],
            source: SourceKind::Acme,
            issuer: "CN=test".into(),
            not_before,
            not_after,
            serial: "01".into(),
            order_url: None,
            directory: None,
            ari_window,
            ari_checked_at: None,
            ari_next_check: None,
            stored_at: not_before,
        }
    }

    fn rate_limited(retry_after: Option<Duration>) -> Error {
        Error::RateLimited {
            problem: AcmeProblem {
                r#type: Some("urn:ietf:params:acme:error:rateLimited".into()),
                detail: None,
                status: Some(429),
                subproblems: vec![],
            },
            retry_after,
        }
    }

    #[test]
    fn lifetime_rule_examples() {
        let t0 = 1_700_000_000;
        // 90 days: renew with 30 days left.
        assert_eq!(renew_at(&meta(t0, t0 + 90 * DAY, None), 0.7), t0 + 60 * DAY);
        // 45 days: 15 days left.
        assert_eq!(renew_at(&meta(t0, t0 + 45 * DAY, None), 0.0), t0 + 30 * DAY);
        // Exactly 10 days is not "under 10 days": 1/3 rule.
        assert_eq!(
            renew_at(&meta(t0, t0 + 10 * DAY, None), 0.0),
            t0 + 10 * DAY - 288_000
        );
        // Rounding: 101 s of lifetime (under 10 days: half) leaves 51 s, not 50.
        assert_eq!(renew_at(&meta(t0, t0 + 101, None), 0.0), t0 + 50);
        // 160 hours (shortlived): half.
        assert_eq!(
            renew_at(&meta(t0, t0 + 160 * 3600, None), 0.0),
            t0 + 80 * 3600
        );
        // The internal CA's 7 days: 3.5 days in.
        assert_eq!(
            renew_at(&meta(t0, t0 + 7 * DAY, None), 0.0),
            t0 + 7 * DAY / 2
        );
        // One second of lifetime still renews before expiry.
        assert_eq!(renew_at(&meta(t0, t0 + 1, None), 0.0), t0);
        // Never valid: now-ish.
        assert_eq!(renew_at(&meta(t0, t0 - 5, None), 0.0), t0 - 5);
    }

    #[test]
    fn ari_window_is_used_and_bounded() {
        let t0 = 1_700_000_000;
        let m = meta(t0, t0 + 90 * DAY, Some((t0 + 59 * DAY, t0 + 61 * DAY)));
        assert_eq!(renew_at(&m, 0.0), t0 + 59 * DAY);
        assert_eq!(renew_at(&m, 0.5), t0 + 60 * DAY);
        assert_eq!(renew_at(&m, 1.0), t0 + 61 * DAY);
        assert_eq!(renew_at(&m, f64::NAN), t0 + 59 * DAY);
        // A window in the past means renew now (the caller compares with its clock).
        let past = meta(t0, t0 + 90 * DAY, Some((t0 - DAY, t0)));
        assert!(renew_at(&past, 0.3) <= t0);
        // A window reaching past expiry is cut one second before it.
        let late = meta(t0, t0 + 90 * DAY, Some((t0 + 100 * DAY, t0 + 101 * DAY)));
        assert_eq!(renew_at(&late, 0.5), t0 + 90 * DAY - 1);
        // An inverted window is its start.
        let inverted = meta(t0, t0 + 90 * DAY, Some((t0 + 60 * DAY, t0 + 50 * DAY)));
        assert_eq!(renew_at(&inverted, 0.9), t0 + 60 * DAY);
    }

    #[test]
    fn backoff_follows_the_schedule() {
        let mut b = Backoff::new();
        assert_eq!(b.delay(0.5), Duration::ZERO);
        let expected = [60, 600, 6000, 21_600, 21_600, 21_600];
        for secs in expected {
            b.record_failure();
            assert_eq!(
                b.delay(0.5),
                Duration::from_secs(secs),
                "after {} failures",
                b.failures()
            );
        }
        assert_eq!(b.delay(0.0), Duration::from_secs(21_600).mul_f64(0.9));
        assert_eq!(b.delay(1.0), Duration::from_secs(21_600).mul_f64(1.1));
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.delay(0.9), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_a_floor_with_a_cap() {
        let mut b = Backoff::new();
        b.record_failure();
        let hour = Duration::from_secs(3600);
        assert_eq!(b.delay_for(&rate_limited(Some(hour)), 0.5), hour);
        // Shorter than the backoff: the backoff wins.
        b.record_failure();
        b.record_failure();
        assert_eq!(
            b.delay_for(&rate_limited(Some(Duration::from_secs(5))), 0.5),
            Duration::from_secs(6000)
        );
        // Absurd: capped.
        assert_eq!(
            b.delay_for(&rate_limited(Some(hour * 24 * 365)), 0.5),
            RETRY_AFTER_CAP
        );
        // No Retry-After, or another error: plain backoff.
        assert_eq!(
            b.delay_for(&rate_limited(None), 0.5),
            Duration::from_secs(6000)
        );
        let timeout = Error::Timeout { what: "x".into() };
        assert_eq!(b.delay_for(&timeout, 0.5), Duration::from_secs(6000));
    }

    #[test]
    fn ari_check_examples() {
        let now = 1_700_000_000;
        assert_eq!(next_ari_check(now, None, 0.5), now + 12 * 3600);
        assert_eq!(next_ari_check(now, None, 0.0), now + (12 * 3600 * 9 / 10));
        assert_eq!(next_ari_check(now, None, 1.0), now + (12 * 3600 * 11 / 10));
        assert_eq!(next_ari_check(now, Some(7200), 0.0), now + 7200);
        assert_eq!(next_ari_check(now, Some(7200), 1.0), now + 7920);
        assert_eq!(next_ari_check(now, Some(0), 0.0), now + 60);
        assert_eq!(next_ari_check(now, Some(u64::MAX), 0.0), now + 24 * 3600);
    }

    proptest! {
        #[test]
        fn delay_stays_within_jitter_of_the_schedule(failures in 1u32..200, r in 0.0f64..=1.0) {
            let b = Backoff { failures };
            let base = BACKOFF_SCHEDULE[(failures as usize - 1).min(3)];
            let d = b.delay(r);
            prop_assert!(d >= base.mul_f64(0.9), "{d:?} < 0.9 * {base:?}");
            prop_assert!(d <= base.mul_f64(1.1), "{d:?} > 1.1 * {base:?}");
            prop_assert!(d <= Duration::from_secs(6 * 3600).mul_f64(1.1));
            // Without a Retry-After, delay_for is delay.
            prop_assert_eq!(b.delay_for(&Error::Timeout { what: String::new() }, r), d);
        }

        #[test]
        fn delay_is_monotone_in_failures(failures in 0u32..200, r in 0.0f64..=1.0) {
            let a = Backoff { failures };
            let b = Backoff { failures: failures + 1 };
            // Same jitter draw: a later failure never waits less.
            prop_assert!(a.delay(r) <= b.delay(r));
            prop_assert!(a.base_delay() <= b.base_delay());
        }

        #[test]
        fn retry_after_is_honoured_up_to_the_cap(failures in 1u32..10, secs in 0u64..10_000_000, r in 0.0f64..=1.0) {
            let b = Backoff { failures };
            let ra = Duration::from_secs(secs);
            let d = b.delay_for(&rate_limited(Some(ra)), r);
            prop_assert!(d >= ra.min(RETRY_AFTER_CAP));
            prop_assert!(d >= b.delay(r));
            prop_assert!(d <= RETRY_AFTER_CAP.max(b.delay(r)));
        }

        #[test]
        fn lifetime_rule_stays_inside_validity(
            not_before in -10_000_000_000i64..10_000_000_000,
            lifetime in 1i64..(400 * DAY),
            r in 0.0f64..=1.0,
        ) {
            let not_after = not_before + lifetime;
            let at = renew_at(&meta(not_before, not_after, None), r);
            prop_assert!(at >= not_before && at < not_after, "{at} outside [{not_before}, {not_after})");
            // At least 1/3 of the lifetime remains (1/2 under 10 days), at most 1/2 + 1 s.
            let remaining = not_after - at;
            prop_assert!(3 * remaining >= lifetime);
            prop_assert!(remaining <= lifetime / 2 + 1);
        }

        #[test]
        fn ari_choice_stays_in_window_and_before_expiry(
            not_before in 0i64..2_000_000_000,
            lifetime in 1i64..(400 * DAY),
            start_off in -(30 * DAY)..(400 * DAY),
            len in 0i64..(30 * DAY),
            r in 0.0f64..=1.0,
        ) {
            let not_after = not_before + lifetime;
            let (start, end) = (not_before + start_off, not_before + start_off + len);
            let at = renew_at(&meta(not_before, not_after, Some((start, end))), r);
            prop_assert!(at < not_after);
            prop_assert!(at <= end);
            prop_assert!(at >= start.min(not_after - 1));
        }

        #[test]
        fn ari_checks_are_bounded(now in 0i64..4_000_000_000, ra in proptest::option::of(0u64..u64::MAX), r in 0.0f64..=1.0) {
            let next = next_ari_check(now, ra, r);
            let wait = next - now;
            match ra {
                None => prop_assert!((38_880..=47_520).contains(&wait), "{wait}"),
                Some(secs) => {
                    let floor = secs.clamp(60, 86_400) as i64;
                    prop_assert!(wait >= floor && wait as f64 <= floor as f64 * 1.1 + 1.0, "{wait} for {secs}");
                }
            }
        }
    }
}
