//! What a guarded call returns when it does not succeed, and how errors are classified.

use std::time::Duration;

/// Classifies an error of an external call: may the same call succeed if tried again
/// (a dropped connection, a 503, a rate limit), or not (a declined card, a 400)?
///
/// [`Dependency::call`](super::Dependency::call) retries transient errors; for an error type
/// that does not implement this trait, pass a closure to
/// [`Dependency::call_with`](super::Dependency::call_with).
pub trait Retryable {
    /// True when the same call may succeed if tried again.
    fn is_transient(&self) -> bool;
}

impl Retryable for crate::Error {
    fn is_transient(&self) -> bool {
        crate::Error::is_transient(self)
    }
}

impl Retryable for annals::Error {
    fn is_transient(&self) -> bool {
        annals::Error::is_transient(self)
    }
}

/// Connection trouble and timeouts are transient; everything else (not found, permission
/// denied, invalid data) is not.
impl Retryable for std::io::Error {
    fn is_transient(&self) -> bool {
        use std::io::ErrorKind::*;
        matches!(
            self.kind(),
            TimedOut
                | ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | NotConnected
                | BrokenPipe
                | Interrupted
                | WouldBlock
                | UnexpectedEof
                | HostUnreachable
                | NetworkUnreachable
                | NetworkDown
                | ResourceBusy
        )
    }
}

impl<E> Retryable for CallError<E> {
    fn is_transient(&self) -> bool {
        CallError::is_transient(self)
    }
}

/// Why a call through a [`Dependency`](super::Dependency) did not succeed.
///
/// From a reactor's point of view every variant is transient (try the step again later)
/// except [`CallError::Failed`] with a permanent error: see [`CallError::is_transient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError<E> {
    /// The last attempt did not answer within the dependency's timeout (after `attempts`
    /// attempts, each bounded by it). Transient.
    #[error("{dependency} did not answer within {after:?} ({attempts} attempt(s))")]
    Timeout {
        /// The dependency.
        dependency: String,
        /// The per-attempt timeout.
        after: Duration,
        /// Attempts made, the first included.
        attempts: u32,
    },
    /// The circuit breaker is open (the dependency failed repeatedly), or half-open with
    /// every probe slot taken: the call was refused without calling. Transient.
    #[error("{dependency} is failing: circuit breaker open, retry after {retry_after:?}")]
    Open {
        /// The dependency.
        dependency: String,
        /// How long until the breaker lets a probe through (or a probe in flight ends).
        retry_after: Duration,
    },
    /// Every call slot of the dependency was taken for longer than its
    /// [`max_wait`](super::DependencyConfig::max_wait): the call was refused without
    /// calling. Transient.
    #[error("{dependency} is busy: all {max_concurrent} call slots taken for {waited:?}")]
    BulkheadFull {
        /// The dependency.
        dependency: String,
        /// The dependency's slots.
        max_concurrent: usize,
        /// How long the call waited for a slot.
        waited: Duration,
    },
    /// The dependency answered with an error: a permanent one (not retried), or a transient
    /// one on the last allowed attempt.
    #[error("call to {dependency} failed after {attempts} attempt(s)")]
    Failed {
        /// The dependency.
        dependency: String,
        /// Attempts made, the first included.
        attempts: u32,
        /// Whether the error was classified transient (retries ran out) or permanent.
        transient: bool,
        /// The dependency's error.
        #[source]
        error: E,
    },
}

impl<E> CallError<E> {
    /// True when the same call may succeed later: every variant except
    /// [`CallError::Failed`] with a permanent error.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Failed { transient, .. } => *transient,
            Self::Timeout { .. } | Self::Open { .. } | Self::BulkheadFull { .. } => true,
        }
    }

    /// The dependency's name.
    pub fn dependency(&self) -> &str {
        match self {
            Self::Timeout { dependency, .. }
            | Self::Open { dependency, .. }
            | Self::BulkheadFull { dependency, .. }
            | Self::Failed { dependency, .. } => dependency,
        }
    }

    /// The dependency's own error, if it answered with one ([`CallError::Failed`]).
    pub fn inner(&self) -> Option<&E> {
        match self {
            Self::Failed { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The dependency's own error, if it answered with one ([`CallError::Failed`]).
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Failed { error, .. } => Some(error),
            _ => None,
        }
    }

    /// When the call was refused by an open circuit breaker: how long until it lets a probe
    /// through.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Open { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
