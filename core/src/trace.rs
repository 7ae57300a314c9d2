//! W3C trace context: one trace id carried from a command through its events to every
//! projection, reaction, publisher and consumer that handles them.
//!
//! A [`TraceContext`] is the `traceparent` of the [W3C Trace Context] recommendation (a
//! 16-byte trace id, the 8-byte id of the span that made the event, flags) plus an optional
//! `tracestate`. [`Repository`](crate::Repository) gives each command a span
//! (`annals.command`) and a context, and every event the command appends carries that
//! context in [`Metadata::trace`]. Whoever handles the event later continues it: the
//! projection runner and reactors of `annals-projections` make their spans children of it,
//! commands issued by a reaction carry the trace forward, and a publisher writes
//! [`TraceContext::to_traceparent`] into the message headers ([`TRACEPARENT`],
//! [`TRACESTATE`]), from which the consumer in another process reads it back with
//! [`TraceContext::from_headers`].
//!
//! # With and without OpenTelemetry
//!
//! `tracing` spans have no W3C ids of their own. Without the `opentelemetry` feature, Annals
//! makes them: [`TraceContext::for_span`] gives a span a new span id in the trace of the
//! context it continues (or a new trace), and records `trace_id`, `span_id` and
//! `parent_span_id` as fields of the span when it declares them. The context travels in the
//! events' metadata whether or not a subscriber is installed. Continue a trace explicitly:
//! [`CommandContext::with_trace`](crate::CommandContext::with_trace) for a request that came
//! with a `traceparent`, [`CommandContext::caused_by`](crate::CommandContext::caused_by) for
//! a command caused by an event.
//!
//! With the `opentelemetry` feature and a `tracing-opentelemetry` layer installed, the ids
//! are OpenTelemetry's: [`TraceContext::for_span`] sets the span's OpenTelemetry parent to
//! the continued context (or leaves it to the current span) and reads the span's context
//! back, so what goes into the metadata is exactly what the exporter sends, and
//! [`TraceContext::current`] is the current span's context.
//!
//! [W3C Trace Context]: https://www.w3.org/TR/trace-context/
//! [`Metadata::trace`]: crate::Metadata::trace

use std::{
    cell::Cell,
    collections::hash_map::RandomState,
    fmt,
    hash::{BuildHasher, Hasher},
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeStruct};

use crate::Metadata;

/// The header (and metadata key) that carries the `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The header (and metadata key) that carries the `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// Longest `traceparent` accepted (a version-00 value is 55 bytes; later versions may add
/// fields). Longer input is refused before it is looked at.
const MAX_TRACEPARENT: usize = 512;
/// Longest `tracestate` kept (the recommendation asks to propagate at least 512 bytes).
const MAX_TRACESTATE: usize = 512;
/// Most list members of a `tracestate`.
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The `sampled` flag.
const SAMPLED: u8 = 0x01;

/// A 16-byte W3C trace id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u8; 16]);

/// An 8-byte W3C span id (`parent-id` in a `traceparent`), never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// The id from its bytes; `None` for all zeros, which the recommendation forbids.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    /// The id's bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    fn random() -> Self {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&random_u64().to_be_bytes());
        bytes[8..].copy_from_slice(&random_u64().to_be_bytes());
        Self(bytes)
    }
}

impl SpanId {
    /// The id from its bytes; `None` for all zeros, which the recommendation forbids.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(Self(bytes))
    }

    /// The id's bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    fn random() -> Self {
        Self(random_u64().to_be_bytes())
    }
}

/// Lower-case hex, as in a `traceparent`.
impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0; 32];
        f.write_str(hex(&self.0, &mut buf))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// Lower-case hex, as in a `traceparent`.
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0; 16];
        f.write_str(hex(&self.0, &mut buf))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// Why a `traceparent` or `tracestate` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceContextError {
    /// The value is longer than any valid one.
    #[error("the {header} is {len} bytes, more than the {max} accepted")]
    TooLong {
        /// `traceparent` or `tracestate`.
        header: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// The `traceparent` does not have the form `version-traceid-parentid-flags` in
    /// lower-case hex.
    #[error("malformed traceparent: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `tracestate` is not a list of `key=value` members.
    #[error("malformed tracestate: {reason}")]
    MalformedState {
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The W3C trace context of one span: trace id, span id, flags and an optional `tracestate`.
///
/// Valid by construction: every constructor checks its input, so a context from a message
/// header or from stored metadata can be trusted to format as a valid `traceparent`.
///
/// ```
/// use annals::TraceContext;
///
/// let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let parent = TraceContext::from_traceparent(incoming)?;
/// let child = parent.child();
/// assert_eq!(child.trace_id(), parent.trace_id());
/// assert_ne!(child.span_id(), parent.span_id());
/// assert_eq!(parent.to_traceparent(), incoming);
/// assert!(TraceContext::from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_err());
/// # Ok::<_, annals::TraceContextError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    flags: u8,
    state: Option<Box<str>>,
}

impl TraceContext {
    /// The context of a span that starts a new trace: random trace and span ids, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            flags: SAMPLED,
            state: None,
        }
    }

    /// The context of a new span whose parent is this one: same trace, flags and state, a
    /// new random span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: SpanId::random(),
            ..self.clone()
        }
    }

    /// A context from its parts.
    pub fn from_parts(trace_id: TraceId, span_id: SpanId, flags: u8) -> Self {
        Self {
            trace_id,
            span_id,
            flags,
            state: None,
        }
    }

    /// The trace id, shared by every span of the trace.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The id of the span this context belongs to (for an event: the span that appended it).
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The trace flags byte.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the `sampled` flag is set: the caller may have recorded the trace.
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The vendor-specific `tracestate`, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// Parses a `traceparent` header value.
    ///
    /// Accepts version `00` exactly, and a later version's first four fields (as the
    /// recommendation says); refuses version `ff`, upper-case or non-hex digits, all-zero
    /// ids and anything longer than 512 bytes. Never panics.
    ///
    /// # Errors
    /// [`TraceContextError::TooLong`] or [`TraceContextError::Malformed`].
    pub fn from_traceparent(value: &str) -> Result<Self, TraceContextError> {
        if value.len() > MAX_TRACEPARENT {
            return Err(TraceContextError::TooLong {
                header: TRACEPARENT,
                len: value.len(),
                max: MAX_TRACEPARENT,
            });
        }
        let malformed = |reason| TraceContextError::Malformed { reason };
        let value = value.trim_matches([' ', '\t']).as_bytes();
        if value.len() < 55 {
            return Err(malformed("shorter than version-traceid-parentid-flags"));
        }
        let version = parse_hex::<1>(&value[0..2]).ok_or(malformed("bad version"))?[0];
        if version == 0xff {
            return Err(malformed("version ff is invalid"));
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(malformed("fields are not separated by '-'"));
        }
        if version == 0 && value.len() != 55 {
            return Err(malformed(
                "a version-00 traceparent has exactly four fields",
            ));
        }
        if value.len() > 55 && value[55] != b'-' {
            return Err(malformed("trailing data is not a field"));
        }
        let trace_id = parse_hex::<16>(&value[3..35])
            .ok_or(malformed("the trace id is not 32 lower-case hex digits"))?;
        let span_id = parse_hex::<8>(&value[36..52])
            .ok_or(malformed("the parent id is not 16 lower-case hex digits"))?;
        let flags = parse_hex::<1>(&value[53..55])
            .ok_or(malformed("the flags are not 2 lower-case hex digits"))?[0];
        Ok(Self {
            trace_id: TraceId::from_bytes(trace_id)
                .ok_or(malformed("the trace id is all zeros"))?,
            span_id: SpanId::from_bytes(span_id).ok_or(malformed("the parent id is all zeros"))?,
            flags,
            state: None,
        })
    }

    /// The context a message's headers carry: the `traceparent` must be valid; a
    /// `tracestate` that is not is dropped (as the recommendation says), keeping the rest.
    ///
    /// # Errors
    /// As [`TraceContext::from_traceparent`].
    pub fn from_headers(
        traceparent: &str,
        tracestate: Option<&str>,
    ) -> Result<Self, TraceContextError> {
        let context = Self::from_traceparent(traceparent)?;
        Ok(match tracestate {
            Some(state) => context.clone().with_tracestate(state).unwrap_or(context),
            None => context,
        })
    }

    /// Sets the `tracestate`; an empty one removes it.
    ///
    /// # Errors
    /// [`TraceContextError::TooLong`] past 512 bytes, [`TraceContextError::MalformedState`]
    /// when it is not a list of at most 32 `key=value` members of printable ASCII.
    pub fn with_tracestate(mut self, tracestate: &str) -> Result<Self, TraceContextError> {
        let state = tracestate.trim_matches([' ', '\t']);
        if state.len() > MAX_TRACESTATE {
            return Err(TraceContextError::TooLong {
                header: TRACESTATE,
                len: state.len(),
                max: MAX_TRACESTATE,
            });
        }
        let malformed = |reason| TraceContextError::MalformedState { reason };
        if !state.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(malformed("not printable ASCII"));
        }
        let mut members = 0;
        for member in state.split(',').map(|m| m.trim_matches([' ', '\t'])) {
            if member.is_empty() {
                continue;
            }
            members += 1;
            match member.split_once('=') {
                Some((key, value)) if !key.is_empty() && !value.is_empty() => {}
                _ => return Err(malformed("a member is not key=value")),
            }
        }
        if members > MAX_TRACESTATE_MEMBERS {
            return Err(malformed("more than 32 members"));
        }
        self.state = (members > 0).then(|| state.into());
        Ok(self)
    }

    /// The `traceparent` header value: `00-{trace id}-{span id}-{flags}`.
    pub fn to_traceparent(&self) -> String {
        let mut buf = [0; 55];
        self.write_traceparent(&mut buf).to_owned()
    }

    fn write_traceparent<'b>(&self, buf: &'b mut [u8; 55]) -> &'b str {
        buf[0] = b'0';
        buf[1] = b'0';
        buf[2] = b'-';
        hex_into(&self.trace_id.0, &mut buf[3..35]);
        buf[35] = b'-';
        hex_into(&self.span_id.0, &mut buf[36..52]);
        buf[52] = b'-';
        hex_into(&[self.flags], &mut buf[53..55]);
        // Only ASCII hex digits and '-' were written.
        std::str::from_utf8(buf).unwrap_or_default()
    }

    /// The trace context an event carries in its metadata (`None` for events stored before
    /// the trace was recorded, or appended without one).
    pub fn from_metadata(metadata: &Metadata) -> Option<&Self> {
        metadata.trace.as_ref()
    }

    /// Gives `span` its W3C context, a child of `parent`, and returns it.
    ///
    /// Without OpenTelemetry: a new span id in `parent`'s trace, or a new trace when there
    /// is no parent. With the `opentelemetry` feature and a `tracing-opentelemetry` layer
    /// that records `span`: `parent` becomes the span's OpenTelemetry parent (without one,
    /// the span continues the current span's trace, as usual) and the span's own context is
    /// returned. Call it before the span is first entered.
    ///
    /// When the span is enabled, the context is recorded in its `trace_id`, `span_id` and
    /// `parent_span_id` fields, if it declares them (as `tracing::field::Empty`).
    pub fn for_span(span: &tracing::Span, parent: Option<&TraceContext>) -> TraceContext {
        let own = otel_context(span, parent)
            .unwrap_or_else(|| parent.map_or_else(Self::new_root, Self::child));
        if !span.is_disabled() {
            span.record("trace_id", tracing::field::display(own.trace_id));
            span.record("span_id", tracing::field::display(own.span_id));
            if let Some(parent) = parent {
                span.record("parent_span_id", tracing::field::display(parent.span_id));
            }
        }
        own
    }

    /// Links `span` to this context (an OpenTelemetry span link, for a span that handles
    /// events of several traces, such as a projection batch). Does nothing without the
    /// `opentelemetry` feature. Call it before the span is first entered.
    pub fn link(&self, span: &tracing::Span) {
        #[cfg(feature = "opentelemetry")]
        otel::link(span, self);
        #[cfg(not(feature = "opentelemetry"))]
        let _ = span;
    }

    /// The context of the current span, with the `opentelemetry` feature and a
    /// `tracing-opentelemetry` layer; `None` otherwise (Annals' own contexts travel
    /// explicitly, see the [module docs](self)).
    pub fn current() -> Option<TraceContext> {
        #[cfg(feature = "opentelemetry")]
        return otel::current();
        #[cfg(not(feature = "opentelemetry"))]
        None
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0; 55];
        let mut debug = f.debug_struct("TraceContext");
        debug.field(TRACEPARENT, &self.write_traceparent(&mut buf));
        if let Some(state) = &self.state {
            debug.field(TRACESTATE, state);
        }
        debug.finish()
    }
}

/// The `traceparent` value.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0; 55];
        f.write_str(self.write_traceparent(&mut buf))
    }
}

/// Stored as `{"traceparent": "...", "tracestate": "..."}` (no `tracestate` when empty).
impl Serialize for TraceContext {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0; 55];
        let fields = 1 + usize::from(self.state.is_some());
        let mut s = serializer.serialize_struct("TraceContext", fields)?;
        s.serialize_field(TRACEPARENT, self.write_traceparent(&mut buf))?;
        if let Some(state) = &self.state {
            s.serialize_field(TRACESTATE, state)?;
        }
        s.end()
    }
}

#[derive(Deserialize)]
struct Stored {
    traceparent: String,
    #[serde(default)]
    tracestate: Option<String>,
}

/// Refuses an invalid `traceparent`; drops an invalid `tracestate`.
impl<'de> Deserialize<'de> for TraceContext {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = Stored::deserialize(deserializer)?;
        Self::from_headers(&stored.traceparent, stored.tracestate.as_deref())
            .map_err(serde::de::Error::custom)
    }
}

/// Reads [`Metadata::trace`] leniently: a stored context that is not valid (hostile, or of a
/// shape this version does not know) is dropped, never failing the event it came with. (The
/// input is still JSON the store's decoder checks; only its meaning is forgiven.)
pub(crate) fn deserialize_lenient<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TraceContext>, D::Error> {
    Ok(deserializer.deserialize_any(Lenient::<true>)?.context)
}

/// What [`Lenient`] found: at the top (`MAP`), a context when the value is a map with a
/// valid `traceparent`; inside it, a string's text.
struct Found<'de> {
    context: Option<TraceContext>,
    text: Option<std::borrow::Cow<'de, str>>,
}

impl Found<'_> {
    const NONE: Self = Self {
        context: None,
        text: None,
    };
}

/// A key of the stored context, read without allocating.
enum Key {
    Parent,
    State,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl serde::de::Visitor<'_> for Keys {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    TRACEPARENT => Key::Parent,
                    TRACESTATE => Key::State,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(Keys)
    }
}

/// A visitor that takes any JSON value without failing: with `MAP`, the trace context map;
/// without, a string. Anything else is skipped.
struct Lenient<const MAP: bool>;

impl<'de, const MAP: bool> serde::de::DeserializeSeed<'de> for Lenient<MAP> {
    type Value = Found<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Found<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, const MAP: bool> serde::de::Visitor<'de> for Lenient<MAP> {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Found<'de>, A::Error> {
        let (mut parent, mut state) = (None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Parent if MAP => parent = map.next_value_seed(Lenient::<false>)?.text,
                Key::State if MAP => state = map.next_value_seed(Lenient::<false>)?.text,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let context =
            parent.and_then(|parent| TraceContext::from_headers(&parent, state.as_deref()).ok());
        Ok(Found {
            context,
            text: None,
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Found<'de>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Found::NONE)
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Found<'de>, E> {
        Ok(Found {
            context: None,
            text: Some(v.into()),
        })
    }

    fn visit_str<E>(self, v: &str) -> Result<Found<'de>, E> {
        Ok(Found {
            context: None,
            text: Some(v.to_owned().into()),
        })
    }

    fn visit_string<E>(self, v: String) -> Result<Found<'de>, E> {
        Ok(Found {
            context: None,
            text: Some(v.into()),
        })
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Found<'de>, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_none<E>(self) -> Result<Found<'de>, E> {
        Ok(Found::NONE)
    }

    fn visit_unit<E>(self) -> Result<Found<'de>, E> {
        Ok(Found::NONE)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Found<'de>, E> {
        Ok(Found::NONE)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Found<'de>, E> {
        Ok(Found::NONE)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Found<'de>, E> {
        Ok(Found::NONE)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Found<'de>, E> {
        Ok(Found::NONE)
    }

    fn visit_bytes<E>(self, _: &[u8]) -> Result<Found<'de>, E> {
        Ok(Found::NONE)
    }
}

/// The span's OpenTelemetry context, made a child of `parent` (feature `opentelemetry`).
#[cfg(feature = "opentelemetry")]
fn otel_context(span: &tracing::Span, parent: Option<&TraceContext>) -> Option<TraceContext> {
    otel::for_span(span, parent)
}

/// None: without the `opentelemetry` feature, Annals makes the ids.
#[cfg(not(feature = "opentelemetry"))]
fn otel_context(_span: &tracing::Span, _parent: Option<&TraceContext>) -> Option<TraceContext> {
    None
}

/// A non-zero random `u64`, a few nanoseconds: SplitMix64 over a per-thread state seeded
/// once from the OS (through std's `RandomState`) and a process-wide thread count. Within a
/// thread no value repeats before 2^64 calls (the step is a bijection of a counter); across
/// threads the seeds are independent. Not for secrets: for ids that must not collide.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    fn seed() -> u64 {
        static THREADS: AtomicU64 = AtomicU64::new(0);
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(THREADS.fetch_add(1, Ordering::Relaxed));
        hasher.finish()
    }
    STATE.with(|state| {
        loop {
            let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(next);
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

fn hex<'b>(bytes: &[u8], buf: &'b mut [u8]) -> &'b str {
    let out = &mut buf[..bytes.len() * 2];
    hex_into(bytes, out);
    std::str::from_utf8(out).unwrap_or_default()
}

/// `N` bytes from exactly `2 * N` lower-case hex digits.
fn parse_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn nibble(d: u8) -> Option<u8> {
        match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        }
    }
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// The bridge to OpenTelemetry (feature `opentelemetry`).
#[cfg(feature = "opentelemetry")]
mod otel {
    use std::str::FromStr;

    use opentelemetry::trace::{
        SpanContext, SpanId as OtelSpanId, TraceContextExt, TraceFlags, TraceId as OtelTraceId,
        TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{SpanId, TraceContext, TraceId};

    impl From<&TraceContext> for SpanContext {
        fn from(context: &TraceContext) -> Self {
            let state = context
                .tracestate()
                .and_then(|s| TraceState::from_str(s).ok())
                .unwrap_or_default();
            SpanContext::new(
                OtelTraceId::from_bytes(context.trace_id.to_bytes()),
                OtelSpanId::from_bytes(context.span_id.to_bytes()),
                TraceFlags::new(context.flags),
                true,
                state,
            )
        }
    }

    impl TraceContext {
        /// The context of an OpenTelemetry span; `None` when it is not valid.
        pub fn from_span_context(context: &SpanContext) -> Option<Self> {
            if !context.is_valid() {
                return None;
            }
            let own = Self::from_parts(
                TraceId::from_bytes(context.trace_id().to_bytes())?,
                SpanId::from_bytes(context.span_id().to_bytes())?,
                context.trace_flags().to_u8(),
            );
            let state = context.trace_state().header();
            Some(own.clone().with_tracestate(&state).unwrap_or(own))
        }
    }

    pub(super) fn for_span(
        span: &tracing::Span,
        parent: Option<&TraceContext>,
    ) -> Option<TraceContext> {
        if span.is_disabled() {
            return None;
        }
        if let Some(parent) = parent {
            let remote =
                opentelemetry::Context::new().with_remote_span_context(SpanContext::from(parent));
            // Fails only without the layer, or for a span already started: then the span
            // keeps the parent it has.
            let _ = span.set_parent(remote);
        }
        let context = span.context();
        TraceContext::from_span_context(context.span().span_context())
    }

    pub(super) fn link(span: &tracing::Span, context: &TraceContext) {
        if !span.is_disabled() {
            span.add_link(SpanContext::from(context));
        }
    }

    pub(super) fn current() -> Option<TraceContext> {
        let context = tracing::Span::current().context();
        TraceContext::from_span_context(context.span().span_context())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_recommendations_example() {
        let context = TraceContext::from_traceparent(VALID).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        assert_eq!(context.to_traceparent(), VALID);
        assert_eq!(context.to_string(), VALID);
    }

    #[test]
    fn refuses_hostile_traceparents_without_panicking() {
        let long = "0".repeat(10_000);
        let multibyte = format!("00-{}-00f067aa0ba902b7-01", "é".repeat(16));
        for bad in [
            "",
            "00",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            &long,
            &multibyte,
        ] {
            assert!(TraceContext::from_traceparent(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            TraceContext::from_traceparent(&long),
            Err(TraceContextError::TooLong { .. })
        ));
    }

    #[test]
    fn accepts_later_versions_by_their_first_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let context = TraceContext::from_traceparent(later).unwrap();
        assert_eq!(context.to_traceparent(), VALID);
    }

    #[test]
    fn tracestate_is_kept_when_valid_and_dropped_when_not() {
        let ok = TraceContext::from_headers(VALID, Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"))
            .unwrap();
        assert_eq!(
            ok.tracestate(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        for bad in ["novalue", "a=b,=c", "a=\u{7f}", &"k=v,".repeat(40)] {
            let context = TraceContext::from_headers(VALID, Some(bad)).unwrap();
            assert_eq!(context.tracestate(), None, "{bad:?}");
        }
        assert!(TraceContext::from_headers(VALID, Some(&"a".repeat(600))).is_ok());
    }

    #[test]
    fn children_keep_the_trace_and_get_new_span_ids() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(root.trace_id(), child.trace_id());
        assert_ne!(root.span_id(), child.span_id());
        assert_ne!(TraceContext::new_root().trace_id(), root.trace_id());
        let reparsed = TraceContext::from_traceparent(&child.to_traceparent()).unwrap();
        assert_eq!(reparsed, child);
    }

    #[test]
    fn round_trips_through_json_and_drops_hostile_values_leniently() {
        let context = TraceContext::from_headers(VALID, Some("k=v")).unwrap();
        let json = serde_json::to_string(&context).unwrap();
        assert_eq!(
            json,
            format!(r#"{{"traceparent":"{VALID}","tracestate":"k=v"}}"#)
        );
        assert_eq!(
            serde_json::from_str::<TraceContext>(&json).unwrap(),
            context
        );
        assert!(serde_json::from_str::<TraceContext>(r#"{"traceparent":"nope"}"#).is_err());
    }
}
