//! What goes into the store ([`NewEvent`]) and what comes out ([`RecordedEvent`]).

use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, EventType, LogPosition, Result, StreamId, TraceContext};

/// Room a payload's or metadata's JSON starts with: most events' fit, so writing them grows
/// no buffer (`serde_json::to_string` starts with 128 bytes).
const JSON_START: usize = 256;

/// `value` as JSON text, written into a buffer of [`JSON_START`] bytes.
fn to_json_string<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    let mut json = Vec::with_capacity(JSON_START);
    serde_json::to_writer(&mut json, value).map_err(Error::Encode)?;
    // serde_json writes UTF-8 only; the check is the price of no `unsafe`.
    String::from_utf8(json).map_err(|e| Error::Encode(serde::ser::Error::custom(e)))
}

/// A JSON document kept as the exact text it was written as.
///
/// Stores keep payloads byte for byte, so idempotent retries compare exactly and decoding goes
/// straight from the stored text into typed events without an intermediate `Value`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(String);

impl Payload {
    /// Serializes `value` as JSON.
    ///
    /// # Errors
    /// [`Error::Encode`] when serde refuses the value (a map with non-string keys, say).
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        to_json_string(value).map(Self)
    }

    /// Checks that `json` is one valid JSON document and keeps it as written.
    ///
    /// # Errors
    /// [`Error::InvalidJson`] for anything that is not valid JSON.
    pub fn from_json(json: impl Into<String>) -> Result<Self> {
        let json = json.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&json).map_err(Error::InvalidJson)?;
        Ok(Self(json))
    }

    /// Wraps text that a store wrote itself after [`Payload::from_json`] or
    /// [`Payload::from_serialize`] validated it. Not checked again: a corrupt row surfaces as a
    /// typed decode error when the payload is read.
    pub fn from_stored(json: String) -> Self {
        Self(json)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JSON text, by value.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty text (never produced by the constructors that validate).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Deserializes the payload.
    ///
    /// # Errors
    /// The serde error when the text does not fit `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who caused an event and why, carried beside its payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Ties together everything that one original request caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The command (or event) that directly caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// When the application recorded the fact, by its own clock (the store adds its own
    /// `recorded_at` when it commits).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub occurred_at: Option<OffsetDateTime>,
    /// Free JSON the application adds (user id, tenant, request path, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub custom: serde_json::Map<String, serde_json::Value>,
    /// The W3C trace context of the span that appended the event (for a command run by a
    /// [`Repository`](crate::Repository), the command's span), continued by whoever handles
    /// the event: projections, reactors, publishers and, through the message headers,
    /// consumers. Stored as `"trace": {"traceparent": "...", "tracestate": "..."}`; absent in
    /// metadata stored before it existed, and dropped on read when a stored value is not a
    /// valid context (never failing the event). See [`crate::trace`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::trace::deserialize_lenient"
    )]
    pub trace: Option<TraceContext>,
}

impl Metadata {
    /// True when no field is set; stores may keep such metadata as an empty document.
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none()
            && self.causation_id.is_none()
            && self.occurred_at.is_none()
            && self.custom.is_empty()
            && self.trace.is_none()
    }

    /// The metadata as compact JSON text, as stores keep it.
    ///
    /// # Errors
    /// [`Error::Encode`] only if a custom value cannot be serialized (never for values that
    /// came from JSON).
    pub fn to_json(&self) -> Result<String> {
        to_json_string(self)
    }

    /// The length in bytes of [`Metadata::to_json`]'s text, counted as it is written, with
    /// no text built: what an append's size check needs (the limits check every event's
    /// size, and a store that keeps the text builds it once, later).
    ///
    /// # Errors
    /// As [`Metadata::to_json`].
    pub fn json_len(&self) -> Result<usize> {
        /// Counts the bytes written to it and keeps none.
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0 += bytes.len();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        serde_json::to_writer(&mut count, self).map_err(Error::Encode)?;
        Ok(count.0)
    }

    /// Parses metadata that a store kept with [`Metadata::to_json`].
    ///
    /// # Errors
    /// [`Error::InvalidJson`] when the text is not metadata.
    pub fn from_json(json: &str) -> Result<Self> {
        if json == "{}" {
            return Ok(Self::default());
        }
        serde_json::from_str(json).map_err(Error::InvalidJson)
    }
}

/// An event to append: its id, type, schema version, payload and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id; stores refuse to keep two events with one id, which makes retries idempotent.
    pub event_id: Uuid,
    /// The stored type name.
    pub event_type: EventType,
    /// The schema version of `payload` (1 for the first shape of a type).
    pub schema_version: u32,
    /// The event's data.
    pub payload: Payload,
    /// Correlation, causation and application data.
    pub metadata: Metadata,
}

impl NewEvent {
    /// An event with a fresh time-ordered (v7) id and empty metadata.
    pub fn new(event_type: EventType, schema_version: u32, payload: Payload) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type,
            schema_version,
            payload,
            metadata: Metadata::default(),
        }
    }

    /// Sets the event id, for callers that derive ids from a command so that a retried command
    /// is recognised by the store.
    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Whether `stored` is this very event already stored in `stream`: same id, stream, type,
    /// schema version and payload text. Metadata is not compared, so a retry may carry a new
    /// timestamp.
    pub fn is_stored_as(&self, stream: &StreamId, stored: &RecordedEvent) -> bool {
        self.event_id == stored.event_id
            && *stream == stored.stream_id
            && self.event_type == stored.event_type
            && self.schema_version == stored.schema_version
            && self.payload == stored.payload
    }
}

/// An event as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Where it sits in the global log.
    pub position: LogPosition,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version in the stream, 1 for the first event.
    pub stream_version: u64,
    /// Its unique id.
    pub event_id: Uuid,
    /// The stored type name.
    pub event_type: EventType,
    /// The schema version of `payload`; after upcasting, the latest known.
    pub schema_version: u32,
    /// The event's data.
    pub payload: Payload,
    /// Correlation, causation and application data.
    pub metadata: Metadata,
    /// When the store committed it.
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

/// One stream's part of an append: the stream, the version the caller expects it at, and the
/// events to add.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    /// The stream to append to.
    pub stream: StreamId,
    /// The version the stream must be at.
    pub expected: crate::ExpectedVersion,
    /// The events, in order; at least one.
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// Groups an append.
    pub fn new(stream: StreamId, expected: crate::ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream,
            expected,
            events,
        }
    }
}

/// What a successful append did to one stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppendResult {
    /// The stream's version after the append: the version of its last new event. Pass it as
    /// `ExpectedVersion::Exact` to append again.
    pub stream_version: u64,
    /// Global position of the first appended event.
    pub first_position: LogPosition,
    /// Global position of the last appended event; wait for a projection to pass it to read
    /// your own writes.
    pub last_position: LogPosition,
}

/// The latest saved state of one stream's aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stream the state was built from.
    pub stream_id: StreamId,
    /// The stream version the state includes (events after it are replayed on load).
    pub stream_version: u64,
    /// The aggregate's snapshot schema version; a snapshot of another version is ignored.
    pub schema_version: u32,
    /// The serialized state.
    pub payload: Payload,
    /// When it was taken.
    pub taken_at: OffsetDateTime,
}
