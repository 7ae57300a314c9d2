//! Typed domain events and their stored form.

use crate::{Error, EventType, NewEvent, Payload, RecordedEvent, Result, UpcasterChain};

/// A family of typed events (usually one enum per aggregate), each variant a stored type.
///
/// `#[derive(DomainEvent)]` (feature `derive`) writes all of this. By hand, an implementation
/// names each value's stored type and schema version, encodes the variant's fields, decodes
/// them back for the latest version, and lists its types in an [`UpcasterChain`].
pub trait DomainEvent: Sized + Send + Sync + 'static {
    /// Every stored type of this family with its latest schema version and the upcaster
    /// steps that bring older versions up to it.
    fn upcaster_chain() -> &'static UpcasterChain;

    /// The stored type name of this value.
    fn event_type(&self) -> &'static str;

    /// The schema version this code writes for this value's type.
    fn schema_version(&self) -> u32;

    /// Encodes the value's fields (not its type name) as the stored payload.
    ///
    /// # Errors
    /// [`Error::Encode`] when serde refuses a field.
    fn to_payload(&self) -> Result<Payload>;

    /// Decodes a payload of the latest schema version of `event_type`.
    ///
    /// # Errors
    /// The serde error when the payload does not fit, or when `event_type` is not one of this
    /// family's types.
    fn from_payload(event_type: &str, payload: &str) -> Result<Self, serde_json::Error>;

    /// The value as an event to append, with a fresh v7 id and empty metadata.
    ///
    /// # Errors
    /// [`Error::Encode`] when the payload cannot be encoded; [`Error::InvalidEventType`] when
    /// the type name breaks the naming rules.
    fn to_new_event(&self) -> Result<NewEvent> {
        Ok(NewEvent::new(
            EventType::new(self.event_type())?,
            self.schema_version(),
            self.to_payload()?,
        ))
    }

    /// Decodes a stored event, upcasting it first when it was stored at an older version.
    ///
    /// # Errors
    /// [`Error::UnknownEventType`], [`Error::UnknownSchemaVersion`], [`Error::Upcast`] or
    /// [`Error::Decode`], each naming the event's type, version and position.
    fn decode(event: &RecordedEvent) -> Result<Self> {
        let chain = Self::upcaster_chain();
        let decode = |event: &RecordedEvent| {
            Self::from_payload(event.event_type.as_str(), event.payload.as_str()).map_err(
                |source| Error::Decode {
                    event_type: event.event_type.to_string(),
                    schema_version: event.schema_version,
                    position: event.position,
                    source,
                },
            )
        };
        match chain.latest_version(event.event_type.as_str()) {
            Some(latest) if latest == event.schema_version => decode(event),
            _ => decode(&chain.upcast(event.clone())?),
        }
    }

    /// Whether this family has a stored type called `event_type`.
    fn handles(event_type: &str) -> bool {
        Self::upcaster_chain().knows(event_type)
    }
}
