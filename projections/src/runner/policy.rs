//! What happens when a handler fails, and how long to wait between retries.

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

pub use annals::Backoff;
