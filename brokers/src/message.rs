//! What a publisher sends: one message per event, broker-neutral, and how subjects and
//! routing keys are made from an event.

use std::{fmt, sync::Arc};

use annals::{EventType, LogPosition, RecordedEvent, StreamId};
use bytes::Bytes;
use time::OffsetDateTime;
use uuid::Uuid;

/// One event on its way to a broker: the payload (the event's JSON text, as stored) and what
/// goes into the headers. Built by [`Message::from_event`]; each broker turns it into its
/// wire format when it publishes (NATS headers, AMQP properties and headers).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The event's id: the broker's deduplication id (`Nats-Msg-Id`, AMQP `message_id`).
    pub event_id: Uuid,
    /// Where the event sits in the global log.
    pub position: LogPosition,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its stored type.
    pub event_type: EventType,
    /// Its schema version.
    pub schema_version: u32,
    /// From the event's metadata.
    pub correlation_id: Option<Uuid>,
    /// From the event's metadata.
    pub causation_id: Option<Uuid>,
    /// The W3C trace context the event carries, if any (see [`trace_context`]).
    pub trace: Option<TraceHeaders>,
    /// When the store committed the event.
    pub recorded_at: OffsetDateTime,
    /// The NATS subject or the AMQP routing key.
    pub subject: String,
    /// The event's payload, the JSON text as stored.
    pub payload: Bytes,
}

impl Message {
    /// The message for `event`, sent to `subject`.
    pub fn from_event(event: &RecordedEvent, subject: String) -> Self {
        Self {
            event_id: event.event_id,
            position: event.position,
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            correlation_id: event.metadata.correlation_id,
            causation_id: event.metadata.causation_id,
            trace: trace_context(event),
            recorded_at: event.recorded_at,
            subject,
            payload: Bytes::copy_from_slice(event.payload.as_str().as_bytes()),
        }
    }

    /// The position as a header value: `commit:sequence`.
    pub fn position_text(&self) -> String {
        format!("{}:{}", self.position.commit, self.position.sequence)
    }
}

/// A W3C trace context as header values (`traceparent`, and `tracestate` when present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    /// The `traceparent` value, e.g. `00-<trace id>-<parent id>-01`.
    pub traceparent: String,
    /// The `tracestate` value, if any.
    pub tracestate: Option<String>,
}

/// The trace context an event carries, passed through to the broker's headers.
///
/// Read from the event's metadata: its [`trace`](annals::Metadata::trace) field, else
/// `metadata.custom["traceparent"]` (and `["tracestate"]`) strings, as events written by hand
/// or before the field existed may carry them; a custom value that could not travel in a
/// header (not printable ASCII, or longer than 512 bytes) is left out. This is the one place
/// that knows where events keep their trace context.
pub fn trace_context(event: &RecordedEvent) -> Option<TraceHeaders> {
    if let Some(trace) = &event.metadata.trace {
        return Some(TraceHeaders {
            traceparent: trace.to_traceparent(),
            tracestate: trace.tracestate().map(str::to_owned),
        });
    }
    let text = |key: &str| {
        event
            .metadata
            .custom
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|v| {
                !v.is_empty() && v.len() <= 512 && v.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(str::to_owned)
    };
    Some(TraceHeaders {
        traceparent: text("traceparent")?,
        tracestate: text("tracestate"),
    })
}

/// How a publisher names the subject (NATS) or routing key (AMQP) of an event.
///
/// The default is `<prefix>.<category>.<type>`: `orders.order.Placed` for an event `Placed`
/// of stream `order-42` with prefix `orders`. Each part is made safe as one token: `.`,
/// `*`, `>`, `#`, whitespace and control characters become `_`, an empty part becomes `_`.
/// [`Subjects::custom`] takes any function of the event instead.
#[derive(Clone)]
pub struct Subjects {
    rule: Rule,
}

#[derive(Clone)]
enum Rule {
    Prefixed(String),
    Custom(Arc<dyn Fn(&RecordedEvent) -> String + Send + Sync>),
}

impl Subjects {
    /// `<prefix>.<category>.<type>` (no prefix and no dot when `prefix` is empty).
    pub fn prefixed(prefix: impl Into<String>) -> Self {
        Self {
            rule: Rule::Prefixed(prefix.into()),
        }
    }

    /// Whatever `subject` returns for an event (checked before publishing: a subject that
    /// is empty, has an empty token, or holds whitespace or a wildcard fails the event).
    pub fn custom(subject: impl Fn(&RecordedEvent) -> String + Send + Sync + 'static) -> Self {
        Self {
            rule: Rule::Custom(Arc::new(subject)),
        }
    }

    /// The subject of `event`.
    pub fn subject(&self, event: &RecordedEvent) -> String {
        match &self.rule {
            Rule::Prefixed(prefix) => {
                let category = event.stream_id.category();
                let kind = event.event_type.as_str();
                let mut s = String::with_capacity(prefix.len() + category.len() + kind.len() + 2);
                if !prefix.is_empty() {
                    s.push_str(prefix);
                    s.push('.');
                }
                push_token(&mut s, category);
                s.push('.');
                push_token(&mut s, kind);
                s
            }
            Rule::Custom(f) => f(event),
        }
    }
}

impl fmt::Debug for Subjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Rule::Prefixed(prefix) => f.debug_tuple("Subjects::prefixed").field(prefix).finish(),
            Rule::Custom(_) => f.write_str("Subjects::custom(..)"),
        }
    }
}

/// Appends `part` as one subject token.
fn push_token(out: &mut String, part: &str) {
    if part.is_empty() {
        out.push('_');
        return;
    }
    out.extend(part.chars().map(|c| {
        if matches!(c, '.' | '*' | '>' | '#') || c.is_whitespace() || c.is_control() {
            '_'
        } else {
            c
        }
    }));
}

/// Why a subject or routing key cannot be used, or `None` when it can: not empty, at most
/// 255 bytes, no empty token, no whitespace, control characters or wildcards.
pub(crate) fn subject_problem(subject: &str) -> Option<&'static str> {
    if subject.is_empty() {
        Some("it is empty")
    } else if subject.len() > 255 {
        Some("it is longer than 255 bytes")
    } else if subject.split('.').any(str::is_empty) {
        Some("it has an empty token")
    } else if subject
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>' | '#'))
    {
        Some("it holds whitespace, a control character or a wildcard")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals::{Metadata, Payload};

    fn event(stream: &str, kind: &str, metadata: Metadata) -> RecordedEvent {
        RecordedEvent {
            position: LogPosition::new(7, 9),
            stream_id: StreamId::new(stream).unwrap(),
            stream_version: 3,
            event_id: Uuid::now_v7(),
            event_type: EventType::new(kind).unwrap(),
            schema_version: 2,
            payload: Payload::from_stored(r#"{"a":1}"#.to_owned()),
            metadata,
            recorded_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn subjects_come_from_category_and_type() {
        let e = event("order-42", "Placed", Metadata::default());
        assert_eq!(Subjects::prefixed("out").subject(&e), "out.order.Placed");
        assert_eq!(Subjects::prefixed("").subject(&e), "order.Placed");
        let odd = event("a.b c-1", "v1.Placed*", Metadata::default());
        let subject = Subjects::prefixed("out").subject(&odd);
        assert_eq!(subject, "out.a_b_c.v1_Placed_");
        assert_eq!(subject_problem(&subject), None);
        let custom = Subjects::custom(|e| format!("x.{}", e.stream_id));
        assert_eq!(custom.subject(&e), "x.order-42");
        for bad in ["", "a..b", "a.*", "a b", ".a", "a.>"] {
            assert!(subject_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn messages_carry_the_event_and_its_trace_context() {
        let mut metadata = Metadata {
            correlation_id: Some(Uuid::now_v7()),
            causation_id: Some(Uuid::now_v7()),
            ..Metadata::default()
        };
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        metadata.custom.insert("traceparent".into(), parent.into());
        metadata.custom.insert("tracestate".into(), "a=b".into());
        let e = event("order-1", "Placed", metadata.clone());
        let m = Message::from_event(&e, "s.t".into());
        assert_eq!(m.event_id, e.event_id);
        assert_eq!(m.payload.as_ref(), br#"{"a":1}"#);
        assert_eq!(m.position_text(), "7:9");
        assert_eq!(m.correlation_id, metadata.correlation_id);
        let trace = m.trace.unwrap();
        assert_eq!(trace.traceparent, parent);
        assert_eq!(trace.tracestate.as_deref(), Some("a=b"));
        // A value that cannot be a header value is left out.
        metadata
            .custom
            .insert("traceparent".into(), "a\r\nb".into());
        assert_eq!(trace_context(&event("o-1", "P", metadata)), None);
        assert_eq!(trace_context(&event("o-1", "P", Metadata::default())), None);
        // The metadata's own field comes first.
        let own = annals::TraceContext::new_root();
        let traced = Metadata {
            trace: Some(own.clone()),
            ..Metadata::default()
        };
        let headers = trace_context(&event("o-1", "P", traced)).unwrap();
        assert_eq!(headers.traceparent, own.to_traceparent());
        assert_eq!(headers.tracestate, None);
    }
}
