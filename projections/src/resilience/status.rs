//! What a dependency looks like right now: for a reactor's status and a CLI.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

/// A snapshot of one [`Dependency`](super::Dependency), from
/// [`Dependency::status`](super::Dependency::status). Counters run from the dependency's
/// creation.
///
/// Serializes with durations in milliseconds:
/// `{"name":"bank","breaker":{"state":"open","retry_after_ms":1200},...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DependencyStatus {
    /// The dependency.
    pub name: String,
    /// The circuit breaker.
    pub breaker: BreakerState,
    /// Failures (transient errors and timeouts) since the last healthy answer.
    pub consecutive_failures: u32,
    /// Attempts that called the dependency (retries included).
    pub calls: u64,
    /// Attempts that ended in an error or a timeout (permanent errors included).
    pub failures: u64,
    /// Attempts that timed out (counted in `failures` too).
    pub timeouts: u64,
    /// Calls refused without calling: by the circuit breaker (fail fast) or because every
    /// call slot was taken (bulkhead).
    pub rejected: u64,
    /// Attempts running now.
    pub in_flight: usize,
    /// The most attempts that may run at once (the bulkhead).
    pub max_concurrent: usize,
    /// The last error or timeout, as text.
    pub last_error: Option<String>,
}

/// The state of a dependency's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// The dependency failed repeatedly: calls fail fast, without calling it.
    Open {
        /// How long until the breaker turns half-open and lets a probe through.
        #[serde(rename = "retry_after_ms", with = "millis")]
        retry_after: Duration,
    },
    /// The breaker was open long enough: the next calls (a limited number at a time) probe
    /// the dependency; a healthy answer closes the breaker, a failure opens it again.
    HalfOpen,
}

impl BreakerState {
    /// True when calls go through without restriction.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed)
    }

    /// True when calls fail fast.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open { .. })
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("closed"),
            Self::Open { retry_after } => write!(f, "open, probing in {retry_after:.1?}"),
            Self::HalfOpen => f.write_str("half-open"),
        }
    }
}

impl fmt::Display for DependencyStatus {
    /// One line: `bank: open, probing in 12.0s (5 consecutive failures); 40 calls,
    /// 7 failed (2 timed out), 3 rejected; 0/4 in flight; last error: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.breaker)?;
        if self.consecutive_failures > 0 {
            write!(f, " ({} consecutive failures)", self.consecutive_failures)?;
        }
        write!(
            f,
            "; {} calls, {} failed ({} timed out), {} rejected; {}/{} in flight",
            self.calls,
            self.failures,
            self.timeouts,
            self.rejected,
            self.in_flight,
            self.max_concurrent
        )?;
        if let Some(e) = &self.last_error {
            write!(f, "; last error: {e}")?;
        }
        Ok(())
    }
}

/// A duration as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(breaker: BreakerState) -> DependencyStatus {
        DependencyStatus {
            name: "bank".into(),
            breaker,
            consecutive_failures: 5,
            calls: 40,
            failures: 7,
            timeouts: 2,
            rejected: 3,
            in_flight: 0,
            max_concurrent: 4,
            last_error: Some("connection reset".into()),
        }
    }

    #[test]
    fn displays_one_line() {
        let s = status(BreakerState::Open {
            retry_after: Duration::from_secs(12),
        });
        assert_eq!(
            s.to_string(),
            "bank: open, probing in 12.0s (5 consecutive failures); 40 calls, 7 failed \
             (2 timed out), 3 rejected; 0/4 in flight; last error: connection reset"
        );
        assert!(
            status(BreakerState::HalfOpen)
                .to_string()
                .starts_with("bank: half-open (")
        );
    }

    #[test]
    fn serializes_durations_in_milliseconds_and_round_trips() {
        let s = status(BreakerState::Open {
            retry_after: Duration::from_millis(1200),
        });
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["breaker"],
            serde_json::json!({"state": "open", "retry_after_ms": 1200})
        );
        assert_eq!(json["in_flight"], 0);
        let back: DependencyStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        let closed = serde_json::to_value(status(BreakerState::Closed)).unwrap();
        assert_eq!(closed["breaker"], serde_json::json!({"state": "closed"}));
    }
}
