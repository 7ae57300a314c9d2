//! What a projection is doing: checkpoint, lag, state.

use std::fmt;

use annals::{LogHold, LogPosition, RecordedEvent};
use time::OffsetDateTime;
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
    /// Events in the log after the checkpoint, up to `head`: counted by the store
    /// ([`EventStore::count_events`](annals::EventStore::count_events)) every
    /// [`RunnerConfig::status_interval`](crate::RunnerConfig::status_interval) and lowered
    /// as events are written, so it is never less than the truth as of `measured_at`.
    pub lag: u64,
    /// When `head` and `lag` were last measured against the store (`None`: not yet).
    pub measured_at: Option<OffsetDateTime>,
    /// What holds the store's visible log back, if anything (a PostgreSQL transaction left
    /// open): while it is held, no follower sees the events committed after it began.
    pub held_by: Option<LogHold>,
    /// Why the status could not be measured or the projection cannot make progress right
    /// now (the store or the read model unreachable or silent), with since when; `None`
    /// when healthy.
    pub degraded: Option<Degraded>,
    /// The dead letters of the generation readers see, parked during builds included.
    pub dead_letters: u64,
    /// The rebuild under way, if any.
    pub rebuild: Option<RebuildProgress>,
    /// The outside dependencies a reactor calls, as their guards see them now (circuit
    /// breaker, calls in flight, failures); filled by
    /// [`ProjectionRunner::status`](crate::ProjectionRunner::status) and
    /// [`statuses`](crate::ProjectionRunner::statuses), empty for projections.
    pub dependencies: Vec<crate::resilience::DependencyStatus>,
}

/// A projection that cannot reach what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    /// Since when.
    pub since: OffsetDateTime,
    /// The last error.
    pub error: String,
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
            measured_at: None,
            held_by: None,
            degraded: None,
            dead_letters: 0,
            rebuild: None,
            dependencies: Vec::new(),
        }
    }

    /// Moves the checkpoint on past `written` events of the ones counted in `lag`.
    pub(crate) fn advance(&mut self, checkpoint: Option<LogPosition>, written: u64) {
        if checkpoint > self.checkpoint {
            self.checkpoint = checkpoint;
            self.lag = self.lag.saturating_sub(written);
        }
        if self.checkpoint >= self.head {
            self.head = self.checkpoint;
            self.lag = 0;
        }
    }

    /// Sets the checkpoint of a generation that starts serving, with its measured lag.
    pub(crate) fn serve(
        &mut self,
        checkpoint: Option<LogPosition>,
        head: Option<LogPosition>,
        lag: u64,
    ) {
        self.checkpoint = checkpoint;
        self.head = head.max(checkpoint);
        self.lag = lag;
        self.measured_at = Some(OffsetDateTime::now_utc());
    }

    /// Records a measurement made for `checkpoint`; ignored when the checkpoint moved on
    /// meanwhile (the next one will do).
    pub(crate) fn measured(
        &mut self,
        checkpoint: Option<LogPosition>,
        head: Option<LogPosition>,
        lag: u64,
        held_by: Option<LogHold>,
    ) {
        self.held_by = held_by;
        self.degraded = None;
        if self.checkpoint == checkpoint {
            self.head = head.max(checkpoint);
            self.lag = lag;
            self.measured_at = Some(OffsetDateTime::now_utc());
        }
    }

    /// Records that something could not be reached.
    pub(crate) fn degrade(&mut self, error: String) {
        let since = self
            .degraded
            .as_ref()
            .map_or_else(OffsetDateTime::now_utc, |d| d.since);
        self.degraded = Some(Degraded { since, error });
    }

    /// True when nothing is pending: running, caught up with the last measured head, no
    /// rebuild, nothing held back, healthy.
    pub fn is_caught_up(&self) -> bool {
        matches!(self.state, ProjectionState::Running)
            && self.lag == 0
            && self.rebuild.is_none()
            && self.held_by.is_none()
            && self.degraded.is_none()
    }
}

impl fmt::Display for ProjectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.state)?;
        if let Some(g) = self.generation {
            write!(f, ", {g}")?;
        }
        match self.checkpoint {
            Some(c) => write!(f, ", at {c}")?,
            None => f.write_str(", at nothing yet")?,
        }
        write!(f, ", lag {} event(s)", self.lag)?;
        if let Some(r) = &self.rebuild {
            write!(
                f,
                ", building {} ({} of {} events)",
                r.generation, r.events_done, r.events_total
            )?;
        }
        if self.dead_letters > 0 {
            write!(f, ", {} dead letter(s)", self.dead_letters)?;
        }
        if let Some(hold) = &self.held_by {
            write!(f, ", waiting behind {hold}")?;
        }
        if let Some(d) = &self.degraded {
            write!(f, ", degraded since {}: {}", d.since, d.error)?;
        }
        for dependency in &self.dependencies {
            write!(f, "; {dependency}")?;
        }
        Ok(())
    }
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

impl fmt::Display for ProjectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Starting => f.write_str("starting"),
            Self::WaitingForLease => f.write_str("waiting for the lease (another runner owns it)"),
            Self::CatchingUp => f.write_str("catching up"),
            Self::Running => f.write_str("running"),
            Self::Rebuilding => f.write_str("rebuilding"),
            Self::Retrying { attempt, error } => write!(f, "retrying (attempt {attempt}): {error}"),
            Self::Stopped(reason) => write!(f, "stopped: {reason}"),
            Self::Failed { error } => write!(f, "failed: {error}"),
            Self::ShutDown => f.write_str("shut down"),
        }
    }
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
