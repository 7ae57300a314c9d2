//! The time deadlines are due by: the system's, or one a test moves by hand.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use time::OffsetDateTime;
use tokio::sync::watch;

/// Where deadlines read the time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;

    /// Waits at most `limit` of this clock's time, or less: returns early when the clock
    /// was moved (a [`ManualClock`]), so a timer looks again.
    fn sleep(&self, limit: Duration) -> futures::future::BoxFuture<'static, ()>;
}

/// The system clock, with tokio's timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn sleep(&self, limit: Duration) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(limit))
    }
}

/// A clock that stands still until [`advance`](ManualClock::advance)d: for tests of
/// deadlines ("30 s pass without a payment").
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
    moved: watch::Sender<u64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(OffsetDateTime::now_utc())
    }
}

impl ManualClock {
    /// A clock standing at `now`.
    pub fn new(now: OffsetDateTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(now)),
            moved: watch::channel(0).0,
        }
    }

    /// Moves the clock forward by `by`, waking every timer that waits on it.
    pub fn advance(&self, by: Duration) {
        {
            let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
            *now += by;
        }
        self.moved.send_modify(|n| *n += 1);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep(&self, limit: Duration) -> futures::future::BoxFuture<'static, ()> {
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            // A move of the clock ends the wait. A move between the caller's look at the time
            // and this subscription would be missed, so the wait also ends after a short real
            // time, and the caller looks again.
            tokio::select! {
                _ = moved.changed() => {}
                () = tokio::time::sleep(limit.min(Duration::from_millis(20))) => {}
            }
        })
    }
}
