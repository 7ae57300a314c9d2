//! The circuit breaker's state machine: pure, driven by the caller's clock.

use std::time::Duration;

use tokio::time::Instant;

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through; `consecutive_failures` counts towards the threshold.
    Closed,
    /// Calls fail fast until `until`.
    Open { until: Instant },
    /// `probing` probe calls are in flight, at most `probes`.
    HalfOpen { probing: u32 },
}

/// What the breaker looks like from outside, at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum View {
    /// Calls go through.
    Closed,
    /// Calls fail fast for `retry_after` more.
    Open { retry_after: Duration },
    /// Probe calls are let through.
    HalfOpen,
}

/// The admission of one call: which breaker period it belongs to, and whether it is a
/// probe. Results of calls admitted in an earlier period (before the breaker opened or
/// closed) change no state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    epoch: u64,
    probe: bool,
}

/// A circuit breaker: closed → open after `threshold` consecutive failures; open for
/// `open_for`; then half-open, letting `probes` calls through; a healthy answer closes it, a
/// failure opens it again.
#[derive(Debug)]
pub(super) struct Breaker {
    threshold: u32,
    open_for: Duration,
    probes: u32,
    /// How long a caller refused because every probe slot is taken should wait.
    busy_hint: Duration,
    state: State,
    consecutive_failures: u32,
    /// Bumped on every transition.
    epoch: u64,
}

impl Breaker {
    pub(super) fn new(
        threshold: u32,
        open_for: Duration,
        probes: u32,
        busy_hint: Duration,
    ) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            probes: probes.max(1),
            busy_hint,
            state: State::Closed,
            consecutive_failures: 0,
            epoch: 0,
        }
    }

    pub(super) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The state at `now`, without moving it: an open breaker whose time is up shows as
    /// half-open (the next call probes).
    pub(super) fn view(&self, now: Instant) -> View {
        match self.state {
            State::Closed => View::Closed,
            State::Open { until } if now < until => View::Open {
                retry_after: until - now,
            },
            State::Open { .. } | State::HalfOpen { .. } => View::HalfOpen,
        }
    }

    /// Moves an open breaker whose time is up to half-open.
    fn refresh(&mut self, now: Instant, name: &str) {
        if let State::Open { until } = self.state
            && now >= until
        {
            self.state = State::HalfOpen { probing: 0 };
            self.epoch += 1;
            tracing::warn!(dependency = name, "circuit breaker half-open: probing");
        }
    }

    /// Whether a call at `now` would be let through, reserving nothing: `Err` holds how long
    /// to wait.
    pub(super) fn check(&mut self, now: Instant, name: &str) -> Result<(), Duration> {
        self.refresh(now, name);
        match self.state {
            State::Closed => Ok(()),
            State::Open { until } => Err(until - now),
            State::HalfOpen { probing } if probing < self.probes => Ok(()),
            State::HalfOpen { .. } => Err(self.busy_hint),
        }
    }

    /// Lets a call through at `now` (taking a probe slot when half-open), or says how long
    /// to wait.
    pub(super) fn admit(&mut self, now: Instant, name: &str) -> Result<Ticket, Duration> {
        self.check(now, name)?;
        let probe = match &mut self.state {
            State::HalfOpen { probing } => {
                *probing += 1;
                true
            }
            _ => false,
        };
        Ok(Ticket {
            epoch: self.epoch,
            probe,
        })
    }

    /// The dependency answered (a success, or an error that is no sign of ill health).
    pub(super) fn healthy(&mut self, ticket: Ticket, name: &str) {
        if ticket.epoch != self.epoch {
            return;
        }
        match self.state {
            State::Closed => self.consecutive_failures = 0,
            State::HalfOpen { .. } => {
                self.state = State::Closed;
                self.consecutive_failures = 0;
                self.epoch += 1;
                tracing::warn!(
                    dependency = name,
                    "circuit breaker closed: the probe succeeded"
                );
            }
            State::Open { .. } => {}
        }
    }

    /// The call failed at `now` (a transient error or a timeout).
    pub(super) fn failed(&mut self, ticket: Ticket, now: Instant, name: &str) {
        if ticket.epoch != self.epoch {
            return;
        }
        match self.state {
            State::Closed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.threshold {
                    self.open(now);
                    tracing::warn!(
                        dependency = name,
                        consecutive_failures = self.consecutive_failures,
                        open_for = ?self.open_for,
                        "circuit breaker opened: calls fail fast"
                    );
                }
            }
            State::HalfOpen { .. } => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.open(now);
                tracing::warn!(
                    dependency = name,
                    open_for = ?self.open_for,
                    "circuit breaker opened again: the probe failed"
                );
            }
            State::Open { .. } => {}
        }
    }

    /// The call ended without a result (its future was dropped): frees its probe slot.
    pub(super) fn abandoned(&mut self, ticket: Ticket) {
        if ticket.epoch != self.epoch || !ticket.probe {
            return;
        }
        if let State::HalfOpen { probing } = &mut self.state {
            *probing = probing.saturating_sub(1);
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + self.open_for,
        };
        self.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(10);

    fn breaker(threshold: u32, probes: u32) -> Breaker {
        Breaker::new(threshold, OPEN_FOR, probes, Duration::from_secs(1))
    }

    #[test]
    fn opens_after_the_threshold_and_half_opens_after_open_for() {
        let t0 = Instant::now();
        let mut b = breaker(2, 1);
        let t = b.admit(t0, "x").unwrap();
        b.failed(t, t0, "x");
        assert_eq!(b.view(t0), View::Closed);
        let t = b.admit(t0, "x").unwrap();
        b.failed(t, t0, "x");
        assert_eq!(
            b.view(t0),
            View::Open {
                retry_after: OPEN_FOR
            }
        );
        assert_eq!(b.admit(t0 + OPEN_FOR / 2, "x"), Err(OPEN_FOR / 2));
        assert_eq!(b.view(t0 + OPEN_FOR), View::HalfOpen);
        let probe = b.admit(t0 + OPEN_FOR, "x").unwrap();
        assert!(probe.probe);
        // One probe at a time.
        assert_eq!(b.admit(t0 + OPEN_FOR, "x"), Err(Duration::from_secs(1)));
        b.healthy(probe, "x");
        assert_eq!(b.view(t0 + OPEN_FOR), View::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn a_failed_probe_reopens_and_an_abandoned_one_frees_its_slot() {
        let t0 = Instant::now();
        let mut b = breaker(1, 1);
        let t = b.admit(t0, "x").unwrap();
        b.failed(t, t0, "x");
        let t1 = t0 + OPEN_FOR;
        let probe = b.admit(t1, "x").unwrap();
        b.abandoned(probe);
        let probe = b.admit(t1, "x").unwrap();
        b.failed(probe, t1, "x");
        assert_eq!(
            b.view(t1),
            View::Open {
                retry_after: OPEN_FOR
            }
        );
    }

    #[test]
    fn results_of_an_earlier_period_change_nothing() {
        let t0 = Instant::now();
        let mut b = breaker(1, 1);
        let early = b.admit(t0, "x").unwrap();
        let failing = b.admit(t0, "x").unwrap();
        b.failed(failing, t0, "x");
        // A call admitted before the breaker opened succeeds late: the breaker stays open.
        b.healthy(early, "x");
        assert_eq!(
            b.view(t0),
            View::Open {
                retry_after: OPEN_FOR
            }
        );
    }
}
