//! The one error type of `annals-projections`.

use annals::LogPosition;

use crate::StopReason;

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while running, rebuilding or reading a projection.
///
/// A runner classifies with [`Error::is_transient`]: transient errors are retried with
/// backoff from the stored checkpoint; the others stop the projection with a status naming
/// the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event store failed (reading the log or its head).
    #[error("event store failed")]
    Store(#[source] annals::Error),
    /// Redis failed or refused a command.
    #[cfg(feature = "redis")]
    #[error("redis failed")]
    Redis(#[source] redis::RedisError),
    /// tantivy failed.
    #[cfg(feature = "tantivy")]
    #[error("tantivy failed")]
    Tantivy(#[source] tantivy::TantivyError),
    /// A search query did not parse.
    #[cfg(feature = "tantivy")]
    #[error("invalid search query")]
    Query(#[source] tantivy::query::QueryParserError),
    /// PostgreSQL (the lease table) failed.
    /// A file of a read model could not be read or written.
    #[error("read-model file i/o failed")]
    Io(#[source] std::io::Error),
    /// A read-model write carried an older fencing number than one already seen: another
    /// runner owns the projection now, and this write was refused.
    #[error("projection {projection}: write with fence {fence} refused, {stored} owns it now")]
    Fenced {
        /// The projection.
        projection: String,
        /// The fence this writer holds.
        fence: u64,
        /// The newer fence stored in the read model.
        stored: u64,
    },
    /// The read model's stored checkpoint is not the one the batch was computed from (a
    /// replay after a crash, or another writer): nothing was written; resume from the stored
    /// checkpoint.
    #[error(
        "projection {projection}: stored checkpoint {stored:?} is not the expected {expected:?}"
    )]
    CheckpointMoved {
        /// The projection.
        projection: String,
        /// The checkpoint the batch started from.
        expected: Option<LogPosition>,
        /// The checkpoint found in the read model.
        stored: Option<LogPosition>,
    },
    /// This runner's ownership lease expired or was taken over.
    #[error("projection {projection}: ownership lease lost")]
    LeaseLost {
        /// The projection.
        projection: String,
    },
    /// A projection name that cannot be used as a key prefix or directory name.
    #[error("invalid projection name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A batch would use a Redis key with a command of another type than the key holds;
    /// nothing of the batch was written.
    #[error("redis key {key} holds a {actual}, the batch writes it as a {expected}")]
    WrongType {
        /// The full key.
        key: String,
        /// The type the batch's command needs.
        expected: String,
        /// The type stored.
        actual: String,
    },
    /// Stored read-model metadata (a checkpoint, a generation pointer, a commit payload)
    /// could not be parsed.
    #[error("corrupt read-model metadata: {what}")]
    Corrupt {
        /// What could not be parsed.
        what: String,
    },
    /// A read-model schema that cannot work (a tantivy id field that is not an indexed
    /// string field).
    #[error("invalid schema: {reason}")]
    Schema {
        /// What is wrong.
        reason: String,
    },
    /// The projection stopped at a failing event (policy [`FailurePolicy::Stop`](crate::FailurePolicy::Stop)).
    #[error("{0}")]
    Stopped(Box<StopReason>),
    /// No projection of that name is registered with the runner.
    #[error("no projection named {name}")]
    UnknownProjection {
        /// The name asked for.
        name: String,
    },
    /// A projection of that name is registered already.
    #[error("a projection named {name} is registered already")]
    DuplicateProjection {
        /// The name.
        name: String,
    },
    /// What a read model writes to failed: a message broker, a custom target's backend.
    /// `transient` says whether the runner retries (with backoff, shown as retrying).
    #[error("{target}: {source}")]
    Target {
        /// What failed (`NATS JetStream at 127.0.0.1:4222`).
        target: String,
        /// Why.
        #[source]
        source: annals::BoxError,
        /// Whether trying again may help.
        transient: bool,
    },
    /// A rebuild was asked of a reactor: its effects are commands in the event store, so
    /// replaying it from the start rebuilds nothing (they are stored once already).
    #[error("{name} is a reactor: it has no read model to rebuild")]
    NotRebuildable {
        /// The reactor's name.
        name: String,
    },
    /// The projection's name differs from the name its read model was opened for.
    #[error("projection {projection} was given the read model of {model}")]
    ModelMismatch {
        /// The projection's name.
        projection: String,
        /// The name the read model was opened for.
        model: String,
    },
    /// A projection worker panicked outside the handler (in a read-model target): the
    /// projection stops with status `Failed`.
    #[error("projection {projection}: worker panicked: {message}")]
    WorkerPanicked {
        /// The projection.
        projection: String,
        /// The panic message.
        message: String,
    },
    /// [`ProjectionRunner::add`](crate::ProjectionRunner::add) was called outside a tokio
    /// runtime.
    #[error("no tokio runtime to spawn the projection on")]
    NoRuntime,
    /// The runner (or the projection's task) has shut down.
    #[error("the projection runner has shut down")]
    Shutdown,
    /// The read model was built from another event store than the one it follows now (the
    /// store was recreated, or the runner points at another database).
    #[error(
        "projection {projection}: the read model was built from event store {recorded}, but this store is {actual}; rebuild it (runner.rebuild) or set StoreChange::Rebuild"
    )]
    StoreMismatch {
        /// The projection.
        projection: String,
        /// The store the read model records.
        recorded: uuid::Uuid,
        /// The store the runner follows.
        actual: uuid::Uuid,
    },
    /// The read model's checkpoint lies beyond the end of the store's log: it was built from
    /// a store that held more events than this one.
    #[error(
        "projection {projection}: its checkpoint {checkpoint} is beyond the store's last event ({head:?}); the store was replaced or truncated"
    )]
    CheckpointBeyondHead {
        /// The projection.
        projection: String,
        /// The read model's checkpoint.
        checkpoint: LogPosition,
        /// The store's head.
        head: Option<LogPosition>,
    },
    /// A handler's lookup failed.
    #[error(transparent)]
    Lookup(#[from] crate::LookupError),
    /// A wait passed its deadline.
    #[error("projection {projection}: not at {position} after {waited:?}: {status}")]
    Timeout {
        /// The projection.
        projection: String,
        /// The position waited for.
        position: LogPosition,
        /// How long it waited.
        waited: std::time::Duration,
        /// What the projection was doing then.
        status: String,
    },
    /// A read-model or store call did not answer within
    /// [`RunnerConfig::io_timeout`](crate::RunnerConfig::io_timeout) (a silent network, a
    /// stalled server). Transient: the runner retries from the stored checkpoint.
    #[error("projection {projection}: {what} did not answer within {after:?}")]
    IoTimeout {
        /// The projection.
        projection: String,
        /// What was waited for.
        what: &'static str,
        /// The bound.
        after: std::time::Duration,
    },
    /// The projection failed on a non-transient error (a corrupt read model, a replaced
    /// store under [`StoreChange::Stop`](crate::StoreChange::Stop)); it waits for a restart
    /// or a rebuild.
    #[error("projection {projection} failed: {error}")]
    Failed {
        /// The projection.
        projection: String,
        /// Why, with its causes.
        error: String,
    },
    /// No dead letter of this projection has that event id.
    #[error("projection {projection} has no dead letter for event {event_id}")]
    NoDeadLetter {
        /// The projection.
        projection: String,
        /// The event id asked for.
        event_id: uuid::Uuid,
    },
}

impl Error {
    /// True when the same work may succeed if retried later from the stored checkpoint (a
    /// dropped connection, a restarting server, a busy index lock, a moved checkpoint).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => e.is_transient(),
            #[cfg(feature = "redis")]
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_cluster_error()
                    || !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
            }
            #[cfg(feature = "tantivy")]
            Self::Tantivy(e) => matches!(
                e,
                tantivy::TantivyError::LockFailure(..) | tantivy::TantivyError::IoError(..)
            ),
            Self::Io(_) | Self::CheckpointMoved { .. } | Self::IoTimeout { .. } => true,
            Self::Target { transient, .. } => *transient,
            _ => false,
        }
    }

    /// Whether the read model belongs to another store than the one it follows.
    pub fn is_store_mismatch(&self) -> bool {
        matches!(
            self,
            Self::StoreMismatch { .. } | Self::CheckpointBeyondHead { .. }
        )
    }

    /// True when this runner lost ownership of the projection ([`Error::Fenced`] or
    /// [`Error::LeaseLost`]): it must stop writing and try to acquire the lease again.
    pub fn is_ownership_lost(&self) -> bool {
        matches!(self, Self::Fenced { .. } | Self::LeaseLost { .. })
    }
}

impl From<annals::Error> for Error {
    fn from(e: annals::Error) -> Self {
        Self::Store(e)
    }
}

#[cfg(feature = "redis")]
impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

#[cfg(feature = "tantivy")]
impl From<tantivy::TantivyError> for Error {
    fn from(e: tantivy::TantivyError) -> Self {
        Self::Tantivy(e)
    }
}
