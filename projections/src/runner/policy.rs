//! What happens when a handler fails, and how long to wait between retries.

use std::time::Duration;

/// What a projection does with an event whose handler fails (an error, an unknown type, a
/// panic). Never a silent skip: every outcome is visible in the status, the log and, for
/// parked events, the read model's dead-letter list.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Stop the projection at the event, with a status naming its position, id, type and
    /// the error. The checkpoint stays just before it; [`ProjectionRunner::restart`]
    /// (after a fix) tries it again.
    ///
    /// [`ProjectionRunner::restart`]: crate::ProjectionRunner::restart
    #[default]
    Stop,
    /// Try the handler again with exponential backoff, `attempts` times in all, then apply
    /// `then` (which is [`FailurePolicy::Stop`] or [`FailurePolicy::DeadLetter`]).
    Retry {
        /// Total tries, the first included (at least 1).
        attempts: u32,
        /// Waits between tries.
        backoff: Backoff,
        /// What to do when every try failed.
        then: Box<FailurePolicy>,
    },
    /// Park the event in the read model's dead-letter list, atomically with the checkpoint,
    /// and go on.
    DeadLetter,
}

impl FailurePolicy {
    /// Retry `attempts` times in all with `backoff`, then stop.
    pub fn retry_then_stop(attempts: u32, backoff: Backoff) -> Self {
        Self::Retry {
            attempts,
            backoff,
            then: Box::new(Self::Stop),
        }
    }

    /// Retry `attempts` times in all with `backoff`, then park the event.
    pub fn retry_then_dead_letter(attempts: u32, backoff: Backoff) -> Self {
        Self::Retry {
            attempts,
            backoff,
            then: Box::new(Self::DeadLetter),
        }
    }
}

/// Exponential backoff: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Waits from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// The longest wait before retry number `attempt` (0 is the first retry): `initial`
    /// doubled `attempt` times, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(30));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry number `attempt`, with jitter: drawn evenly from the upper half
    /// of [`Backoff::ceiling`], so many failing instances do not retry in lockstep (a retry
    /// storm), while each still waits at least half the ceiling.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = ceiling
            .saturating_sub(half)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64;
        if spread == 0 {
            return ceiling;
        }
        half + Duration::from_nanos(rand::random_range(0..=spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        let ceilings: Vec<_> = (0..5).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [10, 20, 40, 50, 50]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(50));
    }

    #[test]
    fn delays_are_bounded_and_spread() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 0..12 {
            let ceiling = b.ceiling(attempt);
            let delays: Vec<Duration> = (0..200).map(|_| b.delay(attempt)).collect();
            assert!(delays.iter().all(|d| *d >= ceiling / 2 && *d <= ceiling));
            // 200 instances retrying the same attempt: no two thirds of them within 1% of
            // the ceiling of each other (lockstep would put them all at one instant).
            let mut sorted = delays.clone();
            sorted.sort();
            let window = ceiling / 100;
            let crowded = sorted
                .windows(134)
                .any(|w| w[133].saturating_sub(w[0]) <= window);
            assert!(
                !crowded,
                "attempt {attempt}: delays bunch together: {sorted:?}"
            );
            let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
            assert!(
                distinct.len() > 150,
                "attempt {attempt}: too few distinct delays"
            );
        }
    }
}
