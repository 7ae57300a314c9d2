//! What a projection is doing: checkpoint, lag, state.

use std::fmt;

use annals::{LogPosition, RecordedEvent};
use uuid::Uuid;

use crate::Generation;

/// A snapshot of one projection's progress, from [`ProjectionRunner::status`].
///
/// [`ProjectionRunner::status`]: crate::ProjectionRunner::status
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// What it is doing.
    pub state: ProjectionState,
    /// The checkpoint of the generation readers see: every event up to it is in the read
    /// model readers get.
    pub checkpoint: Option<LogPosition>,
    /// The generation readers see.
    pub generation: Option<Generation>,
    /// The head of the log when last looked at.
    pub head: Option<LogPosition>,
    /// How far the checkpoint is behind the head, in sequence numbers (events, in stores
    /// whose sequences have no holes).
    pub lag: u64,
    /// Events parked in the dead-letter list by this runner.
    pub dead_letters: u64,
    /// The rebuild under way, if any.
    pub rebuild: Option<RebuildProgress>,
}

impl ProjectionStatus {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: ProjectionState::Starting,
            checkpoint: None,
            generation: None,
            head: None,
            lag: 0,
            dead_letters: 0,
            rebuild: None,
        }
    }

    pub(crate) fn set_head(&mut self, head: Option<LogPosition>) {
        self.head = head.max(self.head);
        self.lag = lag(self.checkpoint, self.head);
    }

    pub(crate) fn set_checkpoint(&mut self, checkpoint: Option<LogPosition>) {
        self.checkpoint = checkpoint;
        self.head = self.head.max(checkpoint);
        self.lag = lag(self.checkpoint, self.head);
    }
}

fn lag(checkpoint: Option<LogPosition>, head: Option<LogPosition>) -> u64 {
    let done = checkpoint.map_or(0, |p| p.sequence);
    head.map_or(0, |h| h.sequence.saturating_sub(done))
}

/// The state of a projection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ProjectionState {
    /// Not started yet.
    Starting,
    /// Another runner owns it; this one waits to take over.
    WaitingForLease,
    /// Reading the stored log in large batches.
    CatchingUp,
    /// Following new events as they commit.
    Running,
    /// The serving generation follows the log while a new one is built.
    Rebuilding,
    /// A transient failure (Redis or the store down, a lost lease); retrying from the stored
    /// checkpoint after a backoff.
    Retrying {
        /// Consecutive failures so far.
        attempt: u32,
        /// The last error.
        error: String,
    },
    /// Stopped at a failing event; see [`StopReason`].
    Stopped(Box<StopReason>),
    /// Stopped by a non-transient infrastructure error (a schema mismatch, a corrupt
    /// checkpoint).
    Failed {
        /// The error.
        error: String,
    },
    /// The runner shut down.
    ShutDown,
}

/// Why a projection stopped at an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReason {
    /// The projection.
    pub projection: String,
    /// The failing event's position.
    pub position: LogPosition,
    /// Its id.
    pub event_id: Uuid,
    /// Its stored type.
    pub event_type: String,
    /// What the handler said.
    pub error: String,
}

impl StopReason {
    pub(crate) fn new(projection: &str, event: &RecordedEvent, error: String) -> Self {
        Self {
            projection: projection.to_owned(),
            position: event.position,
            event_id: event.event_id,
            event_type: event.event_type.to_string(),
            error,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projection {} stopped at {}, event {} of type {}: {}",
            self.projection, self.position, self.event_id, self.event_type, self.error
        )
    }
}

/// How far a rebuild has come.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebuildProgress {
    /// The generation being built.
    pub generation: Generation,
    /// Events read so far.
    pub events_done: u64,
    /// Events (sequence numbers) to the head seen when the rebuild started; 0 until the
    /// build has looked at the head.
    pub events_total: u64,
    /// Recent speed.
    pub events_per_second: f64,
    /// Seconds left at that speed.
    pub seconds_left: Option<f64>,
}
