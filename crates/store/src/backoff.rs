//! The one jittered exponential backoff of this crate: lock retries and event-listener
//! reconnects each pass their own schedule.

use std::time::Duration;

/// Exponential from `first`, doubling up to `max`; each delay is drawn uniformly from the upper
/// half of the current step (`[step / 2, step]`), so peers that failed together spread out.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        d / 2 + (d / 2).mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_the_current_step() {
        let (first, max) = (Duration::from_millis(50), Duration::from_secs(2));
        let mut b = Backoff::new(first, max);
        let mut upper = first;
        for _ in 0..20 {
            let d = b.next();
            assert!(
                d >= upper / 2 && d <= upper,
                "{d:?} outside [{:?}, {upper:?}]",
                upper / 2
            );
            upper = (upper * 2).min(max);
        }
    }
}
