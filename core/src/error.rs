//! The one error type of the `annals` crate and of every store that implements its contract.

use uuid::Uuid;

use crate::{ExpectedVersion, LogPosition, NameError, StreamId};

/// A boxed error from a backend or from application code (an upcaster).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when storing, reading or decoding events.
///
/// Callers usually branch on three questions: is it a concurrency conflict
/// ([`Error::is_conflict`]: reload and retry the command), is it transient
/// ([`Error::is_transient`]: retry the same call later), or is it neither (bad input or a bug:
/// report it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stream id broke the naming rules; checked before any I/O.
    #[error("invalid stream id: {reason}")]
    InvalidStreamId {
        /// Which rule was broken.
        reason: NameError,
    },
    /// An event type name broke the naming rules; checked before any I/O.
    #[error("invalid event type name: {reason}")]
    InvalidEventType {
        /// Which rule was broken.
        reason: NameError,
    },
    /// The stream was not at the expected version; nothing was written.
    #[error("conflict on stream {stream}: expected {expected}, actual version {actual}")]
    Conflict {
        /// The stream whose version did not match.
        stream: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was refused (0: the stream does not exist).
        actual: u64,
    },
    /// An event id is already stored with different content (another stream, type, version
    /// or payload), or only some ids of a retried batch are stored; nothing was written.
    #[error("event {event_id} is already stored with other content")]
    IdempotencyConflict {
        /// The first event id that did not match.
        event_id: Uuid,
    },
    /// An event's payload or metadata is larger than the store's limit; checked before any I/O.
    #[error("event {event_id} is {size} bytes, more than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The offending event.
        event_id: Uuid,
        /// Its encoded size in bytes (payload plus metadata).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An append that no store could perform: no events, too many events, the same event id
    /// twice, or the same stream twice in one multi-stream append. Checked before any I/O.
    #[error("invalid append: {reason}")]
    InvalidAppend {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A JSON document given as a payload or metadata is not valid JSON.
    #[error("invalid JSON")]
    InvalidJson(#[source] serde_json::Error),
    /// A stored event has a type this code does not know.
    #[error("unknown event type {event_type} (schema version {schema_version}) at {position}")]
    UnknownEventType {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// Where the event sits in the global log.
        position: LogPosition,
    },
    /// A stored event has a schema version that no upcaster chain leads up from, or a version
    /// newer than this code knows.
    #[error(
        "unknown schema version {schema_version} of event type {event_type} at {position} \
         (this code knows up to version {latest})"
    )]
    UnknownSchemaVersion {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// The latest version this code knows for the type.
        latest: u32,
        /// Where the event sits in the global log.
        position: LogPosition,
    },
    /// A stored payload did not decode into the typed event.
    #[error("cannot decode event type {event_type} version {schema_version} at {position}")]
    Decode {
        /// The stored type name.
        event_type: String,
        /// The schema version after upcasting.
        schema_version: u32,
        /// Where the event sits in the global log.
        position: LogPosition,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// An upcaster returned an error.
    #[error("upcasting event type {event_type} from version {from_version} at {position} failed")]
    Upcast {
        /// The stored type name.
        event_type: String,
        /// The version the failing step started from.
        from_version: u32,
        /// Where the event sits in the global log.
        position: LogPosition,
        /// What the upcaster said.
        #[source]
        source: BoxError,
    },
    /// An event or snapshot could not be serialized.
    #[error("cannot encode value as JSON")]
    Encode(#[source] serde_json::Error),
    /// An upcaster chain was registered inconsistently (a gap, a duplicate step, a step at or
    /// above the latest version).
    #[error("invalid upcaster chain: {reason}")]
    InvalidUpcasterChain {
        /// What is wrong.
        reason: String,
    },
    /// The store's database or connection failed.
    #[error("event store backend failed")]
    Backend {
        /// Whether retrying the same call may succeed (a dropped connection, a timeout, a
        /// serialization failure); see [`Error::is_transient`].
        transient: bool,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Wraps a backend error, marking whether a retry may succeed.
    pub fn backend(transient: bool, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            transient,
            source: source.into(),
        }
    }

    /// True for [`Error::Conflict`]: reload the aggregate and decide again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// True when the same call may succeed if retried later, unchanged.
    ///
    /// Conflicts are not transient: retrying the same append with the same expected version
    /// fails the same way.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Backend {
                transient: true,
                ..
            }
        )
    }
}
