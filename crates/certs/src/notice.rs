//! Saying a standing problem once, then again only on a schedule ([`Reminder`]).
//!
//! A certificate file that is missing or refused is looked at every second; the log must not say
//! so every second. The schedule is [`crate::renewal::REMINDER_SCHEDULE`].

use std::time::Instant;

use crate::renewal::REMINDER_SCHEDULE;

/// Remembers the problem last said and when to say it again.
#[derive(Debug, Default)]
pub(crate) struct Reminder {
    current: Option<String>,
    next_at: Option<Instant>,
    /// How many times the current problem was said.
    said: u32,
}

impl Reminder {
    /// Whether to log `problem` now: when it is new or differs from the last one, or when its
    /// next reminder is due. Counts what it allows.
    pub(crate) fn due(&mut self, problem: &str, now: Instant) -> bool {
        if self.current.as_deref() != Some(problem) {
            self.current = Some(problem.to_owned());
            self.said = 0;
        } else if self.next_at.is_some_and(|at| now < at) {
            return false;
        }
        let step = usize::try_from(self.said)
            .unwrap_or(usize::MAX)
            .min(REMINDER_SCHEDULE.len() - 1);
        self.next_at = Some(now + REMINDER_SCHEDULE[step]);
        self.said += 1;
        true
    }

    /// The problem is gone; returns whether there was one (to say that it is resolved).
    pub(crate) fn clear(&mut self) -> bool {
        self.next_at = None;
        self.said = 0;
        self.current.take().is_some()
    }

    /// How many times the current problem was said (0 when there is none).
    pub(crate) fn said(&self) -> u32 {
        self.said
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn says_once_then_on_the_schedule() {
        let t0 = Instant::now();
        let mut r = Reminder::default();
        assert!(r.due("missing", t0));
        // Polled every second for just under the first step: silent.
        for s in 1..REMINDER_SCHEDULE[0].as_secs() {
            assert!(!r.due("missing", t0 + Duration::from_secs(s)));
        }
        assert_eq!(r.said(), 1);
        let t1 = t0 + REMINDER_SCHEDULE[0];
        assert!(r.due("missing", t1));
        assert!(!r.due(
            "missing",
            t1 + REMINDER_SCHEDULE[1] - Duration::from_secs(1)
        ));
        let t2 = t1 + REMINDER_SCHEDULE[1];
        assert!(r.due("missing", t2));
        let t3 = t2 + REMINDER_SCHEDULE[2];
        assert!(r.due("missing", t3));
        // The last step repeats.
        let t4 = t3 + REMINDER_SCHEDULE[3];
        assert!(r.due("missing", t4));
        assert!(r.due("missing", t4 + REMINDER_SCHEDULE[3]));
        assert_eq!(r.said(), 6);
    }

    #[test]
    fn a_different_problem_is_said_at_once_and_clear_resets() {
        let t0 = Instant::now();
        let mut r = Reminder::default();
        assert!(r.due("missing", t0));
        assert!(r.due("expired", t0 + Duration::from_secs(1)));
        assert_eq!(r.said(), 1);
        assert!(r.clear());
        assert!(!r.clear());
        assert!(r.due("expired", t0 + Duration::from_secs(2)));
    }
}
