//! How the repository retries: exponential backoff with jitter, and the hook that waits.
//!
//! The core crate knows no runtime, so waiting is the caller's: [`Retries::with_sleep`]
//! takes the runtime's sleep (`|d| Box::pin(tokio::time::sleep(d))`).

use std::{fmt, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use uuid::Uuid;

/// Exponential backoff with jitter: retry `n` waits a random time from the upper half of
/// `initial · 2ⁿ` (at most `max`), so many failing callers do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait's ceiling.
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
    /// Waits from `initial`, doubling up to `max`.
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

    /// The wait before retry number `attempt`, drawn evenly from the upper half of
    /// [`Backoff::ceiling`]: spread, so many failing callers do not retry in lockstep (a
    /// retry storm), yet never less than half the ceiling.
    pub fn delay(&self, attempt: u32) -> Duration {
        Self::jittered(self.ceiling(attempt))
    }

    /// A wait drawn evenly from the upper half of `ceiling`: for any loop that waits and
    /// looks again (polling, retrying), so many of them do not run in lockstep.
    pub fn jittered(ceiling: Duration) -> Duration {
        let half = ceiling / 2;
        let spread = u64::try_from(ceiling.saturating_sub(half).as_nanos()).unwrap_or(u64::MAX);
        if spread == 0 {
            return ceiling;
        }
        // The operating system's randomness, through the v4 ids this crate already makes.
        let random = Uuid::new_v4().as_u128() as u64;
        half + Duration::from_nanos(random % (spread + 1))
    }
}

/// Waits for a duration on the caller's runtime.
pub type Sleep = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// How many times a [`Repository`](crate::Repository) retries, and how long it waits.
///
/// - A **conflict** (the aggregate changed meanwhile) reloads, decides again and appends.
/// - A **transient store error** (a dropped connection, a timeout) sends the very same append
///   again: the same events with the same ids and the same expected version. That is safe
///   even when the first attempt did commit (its answer lost), because a store answers an
///   append whose event ids are all stored with the original result. A conflict on such a
///   retry proves the first attempt did not commit, and is handled as a conflict.
///
/// Both wait [`Backoff::delay`] before each retry when a sleep is given
/// ([`Retries::with_sleep`]); without one they retry at once.
#[derive(Clone, Default)]
pub struct Retries {
    pub(crate) conflicts: u32,
    pub(crate) transient: u32,
    pub(crate) backoff: Backoff,
    pub(crate) sleep: Option<Sleep>,
}

impl fmt::Debug for Retries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retries")
            .field("conflicts", &self.conflicts)
            .field("transient", &self.transient)
            .field("backoff", &self.backoff)
            .field("sleep", &self.sleep.is_some())
            .finish()
    }
}

impl Retries {
    /// No retries.
    pub fn none() -> Self {
        Self::default()
    }

    /// Retries conflicts up to `n` times.
    #[must_use]
    pub fn conflicts(mut self, n: u32) -> Self {
        self.conflicts = n;
        self
    }

    /// Retries transient store errors up to `n` times.
    #[must_use]
    pub fn transient(mut self, n: u32) -> Self {
        self.transient = n;
        self
    }

    /// Waits by `backoff` between retries.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How to wait, on the caller's runtime: `|d| Box::pin(tokio::time::sleep(d))`.
    #[must_use]
    pub fn with_sleep(
        mut self,
        sleep: impl Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.sleep = Some(Arc::new(sleep));
        self
    }

    /// How many times a conflicting command is decided again.
    pub fn max_conflicts(&self) -> u32 {
        self.conflicts
    }

    /// How many times an append that failed transiently is sent again.
    pub fn max_transient(&self) -> u32 {
        self.transient
    }

    /// Waits before retry number `attempt` (0 is the first retry), if a sleep is set: for
    /// callers that run their own retry loop under these settings.
    pub async fn wait(&self, attempt: u32) {
        if let Some(sleep) = &self.sleep {
            sleep(self.backoff.delay(attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_max_and_delays_spread_below_them() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        let ceilings: Vec<_> = (0..5).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [10, 20, 40, 50, 50]);
        for attempt in 0..8 {
            let ceiling = b.ceiling(attempt);
            let delays: std::collections::BTreeSet<Duration> =
                (0..200).map(|_| b.delay(attempt)).collect();
            assert!(delays.iter().all(|d| *d >= ceiling / 2 && *d <= ceiling));
            assert!(
                delays.len() > 150,
                "too few distinct delays: {}",
                delays.len()
            );
        }
    }
}
