//! The consuming side, broker-neutral: what a handler gets ([`Delivery`]), the handler
//! contract ([`Handler`]), how failures are retried and when a message is given up
//! ([`ConsumerConfig`], [`Poison`]), and the `annals.consume` span that continues the trace of
//! the command that appended the event.

use std::{borrow::Cow, future::Future, str::Utf8Error, time::Duration};

use annals::{
    Backoff, BoxError, DomainEvent, EventType, LogPosition, Metadata, Payload, RecordedEvent,
    StreamId, TraceContext,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{BrokerError, error::error_chain, headers};

/// One message as a consumer's handler gets it: the event it carries, read back from the
/// message's headers and payload, and how often the broker has delivered it.
///
/// Built by [`NatsConsumer`](crate::NatsConsumer) and
/// [`RabbitConsumer`](crate::RabbitConsumer) from the headers a
/// [`Publisher`](crate::Publisher) writes ([`headers`](crate::headers)); a message without
/// them is not handed to the handler (it is dead-lettered at once, see [`Poison`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The event's id (`Nats-Msg-Id`, AMQP `message_id`): the key to drop repeats by, e.g.
    /// with an inbox of `annals-inbox`.
    pub event_id: Uuid,
    /// Its stored type.
    pub event_type: EventType,
    /// Its payload's schema version.
    pub schema_version: u32,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its position in the publisher's global log.
    pub position: LogPosition,
    /// The correlation id of its metadata, when set.
    pub correlation_id: Option<Uuid>,
    /// The causation id of its metadata, when set.
    pub causation_id: Option<Uuid>,
    /// The trace context the event carries: the context of the span that appended it (for a
    /// command run by a `Repository`, the `annals.command` span). `None` when the message has
    /// no valid `traceparent`.
    pub trace: Option<TraceContext>,
    /// The context of this delivery's `annals.consume` span, a child of [`Delivery::trace`]
    /// (or the root of a new trace): pass it to `CommandContext::with_trace` so that the
    /// commands a handler issues continue the trace.
    pub consume_trace: TraceContext,
    /// When the store committed the event, when the message says (AMQP `timestamp`, whole
    /// seconds; NATS messages do not carry it).
    pub recorded_at: Option<OffsetDateTime>,
    /// The NATS subject or AMQP routing key it was published to.
    pub subject: String,
    /// The event's payload, the JSON text as stored.
    pub payload: Bytes,
    /// Which delivery this is: 1 the first time, more when the broker delivers it again (a
    /// failed handler, a consumer that died before acknowledging).
    pub attempt: u32,
}

impl Delivery {
    /// Reads a delivery from a message's headers (`header` looks one up by name), its
    /// deduplication id (`Nats-Msg-Id` or AMQP `message_id`), subject and payload.
    ///
    /// # Errors
    /// Why the message is not one a [`Publisher`](crate::Publisher) wrote: a missing or
    /// malformed header.
    pub(crate) fn read<'h>(
        id: Option<&str>,
        header: impl Fn(&str) -> Option<Cow<'h, str>>,
        subject: String,
        payload: Bytes,
        recorded_at: Option<OffsetDateTime>,
        attempt: u32,
    ) -> Result<Self, String> {
        let required = |name: &str| header(name).ok_or_else(|| format!("no {name} header"));
        let parse_id = |what: &str, text: &str| {
            Uuid::parse_str(text.trim()).map_err(|e| format!("{what} {text:?} is not a UUID: {e}"))
        };
        let optional_id = |name: &str| header(name).map(|t| parse_id(name, &t)).transpose();
        let number = |name: &str| -> Result<u64, String> {
            let text = required(name)?;
            text.trim()
                .parse()
                .map_err(|e| format!("{name} {text:?} is not a number: {e}"))
        };
        let event_id = parse_id(
            "the message id",
            id.ok_or("no message id (Nats-Msg-Id, AMQP message_id)")?,
        )?;
        let event_type = EventType::new(required(headers::EVENT_TYPE)?.as_ref())
            .map_err(|e| format!("{}: {e}", headers::EVENT_TYPE))?;
        let schema_version = u32::try_from(number(headers::SCHEMA_VERSION)?)
            .map_err(|_| format!("{} is out of range", headers::SCHEMA_VERSION))?;
        let stream_id = StreamId::new(required(headers::STREAM)?.as_ref())
            .map_err(|e| format!("{}: {e}", headers::STREAM))?;
        let stream_version = number(headers::STREAM_VERSION)?;
        let position = {
            let text = required(headers::POSITION)?;
            let (commit, sequence) = text
                .trim()
                .split_once(':')
                .and_then(|(c, s)| Some((c.parse().ok()?, s.parse().ok()?)))
                .ok_or_else(|| format!("{} {text:?} is not commit:sequence", headers::POSITION))?;
            LogPosition::new(commit, sequence)
        };
        let trace = header(headers::TRACEPARENT).and_then(|parent| {
            let state = header(headers::TRACESTATE);
            TraceContext::from_headers(&parent, state.as_deref()).ok()
        });
        Ok(Self {
            event_id,
            event_type,
            schema_version,
            stream_id,
            stream_version,
            position,
            correlation_id: optional_id(headers::CORRELATION_ID)?,
            causation_id: optional_id(headers::CAUSATION_ID)?,
            // Set by the consumer when it opens the delivery's span.
            consume_trace: trace.clone().unwrap_or_else(TraceContext::new_root),
            trace,
            recorded_at,
            subject,
            payload,
            attempt,
        })
    }

    /// The payload as text.
    ///
    /// # Errors
    /// The payload is not UTF-8 (a message no publisher of this crate wrote).
    pub fn payload_str(&self) -> Result<&str, Utf8Error> {
        std::str::from_utf8(&self.payload)
    }

    /// The event as a [`RecordedEvent`] (for `DomainEvent::decode` and code written for the
    /// store's events): metadata with the correlation, causation and trace context the
    /// message carries; `recorded_at` as [`Delivery::recorded_at`], or the Unix epoch when the
    /// message does not say.
    ///
    /// # Errors
    /// The payload is not UTF-8.
    pub fn to_event(&self) -> Result<RecordedEvent, Utf8Error> {
        Ok(RecordedEvent {
            position: self.position,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            payload: Payload::from_stored(self.payload_str()?.to_owned()),
            metadata: Metadata {
                correlation_id: self.correlation_id,
                causation_id: self.causation_id,
                trace: self.trace.clone(),
                ..Metadata::default()
            },
            recorded_at: self.recorded_at.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        })
    }

    /// Decodes the payload into the typed event `E`, upcasting it from an older schema
    /// version like a read from the store does.
    ///
    /// # Errors
    /// The payload is not UTF-8, or does not decode (an unknown type or version, a payload
    /// that does not fit).
    pub fn decode<E: DomainEvent>(&self) -> Result<E, BoxError> {
        Ok(E::decode(&self.to_event()?)?)
    }
}

/// Handles the deliveries of a consumer. The message is acknowledged only after `handle`
/// returned `Ok`; an error has it delivered again after a backoff, until
/// [`ConsumerConfig::with_max_deliveries`] deliveries have failed (then [`Poison`] says what
/// happens).
///
/// Delivery is at least once: a message whose acknowledgement was lost, or whose consumer
/// died while handling it, comes again. Make the handler idempotent by the event id, e.g.
/// with an inbox of `annals-inbox`, which records the id in the same transaction as the
/// handler's effect.
///
/// Closures `Fn(Delivery) -> impl Future<Output = Result<(), BoxError>> + Send` are
/// handlers; a type of your own implements `handle` with `Box::pin(async move { .. })`.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery (within its `annals.consume` span).
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), BoxError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self(delivery.clone()))
    }
}

/// What a consumer does with a message it gives up on: one whose handler failed
/// [`ConsumerConfig::with_max_deliveries`] times, or that no publisher of this crate wrote
/// (its headers do not read back; given up at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Poison {
    /// Publishes a copy (payload and headers, plus `Annals-Dead-Letter-Reason`,
    /// `Annals-Dead-Letter-Attempts` and `Annals-Dead-Letter-Consumer`) to the consumer's
    /// dead-letter subject or queue, waits for the broker to confirm it, then settles the
    /// original (NATS `+TERM`, AMQP ack), logging an error. If the copy cannot be stored,
    /// the original is delivered again later: nothing is dropped.
    #[default]
    DeadLetter,
    /// Stops the consumer with [`BrokerError::Poisoned`](crate::BrokerError::Poisoned),
    /// leaving the message unacknowledged: it is delivered again to the next run.
    Stop,
}

/// The headers a dead-lettered copy carries beside the original's.
pub mod dead_letter_headers {
    /// Why the message was given up (the handler's last error, or why it does not read).
    pub const REASON: &str = "Annals-Dead-Letter-Reason";
    /// How many deliveries failed.
    pub const ATTEMPTS: &str = "Annals-Dead-Letter-Attempts";
    /// The consumer that gave up (durable consumer or queue name).
    pub const CONSUMER: &str = "Annals-Dead-Letter-Consumer";
}

/// How a consumer handles its messages: how many at once, how often a failing message is
/// delivered again and how long it waits in between, and what happens to one it gives up.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub(crate) in_flight: usize,
    pub(crate) max_deliveries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) poison: Poison,
    pub(crate) idle: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsumerConfig {
    /// One message at a time, 5 deliveries, backoff from 200 ms up to 30 s, dead letters.
    pub fn new() -> Self {
        Self {
            in_flight: 1,
            max_deliveries: 5,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            poison: Poison::DeadLetter,
            idle: Duration::from_millis(500),
        }
    }

    /// How many messages the broker may hand out before the first is acknowledged (JetStream
    /// `max_ack_pending`, AMQP prefetch; at least 1, the default).
    ///
    /// Messages are handled one at a time, in the order they arrive. With 1, nothing new is
    /// delivered while a message is unacknowledged, so each stream's events are handled in
    /// order even across failures, redeliveries and a consumer that dies: the broker holds
    /// the later ones back. With more, throughput rises, but a message delivered again comes
    /// after later ones.
    #[must_use]
    pub fn with_in_flight(mut self, messages: usize) -> Self {
        self.in_flight = messages.max(1);
        self
    }

    /// How many deliveries of a message may fail before it is given up (at least 1; default
    /// 5). A consumer that dies while handling a message does not count as a failure of the
    /// handler, but the broker's delivery count grows.
    #[must_use]
    pub fn with_max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = deliveries.max(1);
        self
    }

    /// How long a failed message waits before it is delivered again: [`Backoff::delay`] of
    /// the failures so far (jittered, doubling up to the maximum).
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// What happens to a message given up (default [`Poison::DeadLetter`]).
    #[must_use]
    pub fn with_poison(mut self, poison: Poison) -> Self {
        self.poison = poison;
        self
    }

    /// How long `drain` waits for a message before it asks the broker whether anything is
    /// left (default 500 ms).
    #[must_use]
    pub fn with_idle_check(mut self, idle: Duration) -> Self {
        self.idle = idle.max(Duration::from_millis(10));
        self
    }
}

/// What a consumer did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consumed {
    /// Messages handled and acknowledged.
    pub handled: u64,
    /// Failed deliveries sent back to the broker to come again.
    pub retried: u64,
    /// Messages given up and dead-lettered.
    pub dead_lettered: u64,
}

/// What waiting for a session's next message gave ([`next_message`]).
pub(crate) enum Next<T> {
    /// `shutdown` completed first.
    Shutdown,
    /// Draining, and nothing came within the idle time: ask the broker what is left.
    Idle,
    /// The broker's stream of messages ended (the connection is gone).
    Ended,
    /// A message, or the error the stream gave instead.
    Message(T),
}

/// Waits for the next item of a session's `messages`, or for `shutdown`, which wins a tie;
/// while draining, waits at most `idle`.
pub(crate) async fn next_message<S: futures::Stream + Unpin>(
    messages: &mut S,
    shutdown: &mut (impl Future<Output = ()> + Send + Unpin),
    drain: bool,
    idle: Duration,
) -> Next<S::Item> {
    use futures::StreamExt;
    let next = async {
        if drain {
            tokio::time::timeout(idle, messages.next()).await.ok()
        } else {
            Some(messages.next().await)
        }
    };
    tokio::select! {
        biased;
        () = &mut *shutdown => Next::Shutdown,
        next = next => match next {
            None => Next::Idle,
            Some(None) => Next::Ended,
            Some(Some(item)) => Next::Message(item),
        },
    }
}

/// A broker's side of a consumer: opening a session, consuming on it, closing it. The
/// session loop around them ([`consume_sessions`]) is the same for every broker.
pub(crate) trait Sessions: Sync {
    /// An open connection with its subscription.
    type Session: Send;
    /// What outlives a session (RabbitMQ counts deliveries per message id itself).
    type Kept: Default + Send;

    /// Names the consumer in logs.
    fn consumer(&self) -> &str;
    /// Names the broker in logs and errors.
    fn describe(&self) -> String;
    /// The consumer's settings.
    fn config(&self) -> &ConsumerConfig;
    /// Opens a session, within the connect timeout.
    fn open(&self) -> impl Future<Output = Result<Self::Session, BrokerError>> + Send;
    /// Consumes on `session` until it ends: `Ok` when draining found nothing left or
    /// `shutdown` completed, an error when the session broke.
    #[allow(
        clippy::too_many_arguments,
        reason = "the loop's state, lent for one session"
    )]
    fn consume(
        &self,
        handler: &dyn Handler,
        session: &mut Self::Session,
        shutdown: &mut (impl Future<Output = ()> + Send + Unpin),
        drain: bool,
        totals: &mut Consumed,
        failures: &mut u32,
        kept: &mut Self::Kept,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;
    /// Closes a session that opened, `ended_well` when it ended without an error.
    fn close(&self, session: Self::Session, ended_well: bool) -> impl Future<Output = ()> + Send;
}

/// The session loop both consumers share: opens a session, consumes on it until it ends,
/// and after a transient failure waits the configured backoff and opens another, until
/// `shutdown` completes. A failure that is not transient is returned; so is a first
/// session that cannot be opened while draining (an unreachable broker is reported, not
/// waited for).
pub(crate) async fn consume_sessions<C: Sessions, H: Handler>(
    consumer: &C,
    handler: &H,
    shutdown: impl Future<Output = ()> + Send,
    drain: bool,
) -> Result<Consumed, BrokerError> {
    tokio::pin!(shutdown);
    let mut totals = Consumed::default();
    let mut failures = 0u32;
    let mut kept = C::Kept::default();
    let mut opened = false;
    loop {
        let session = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(totals),
            session = consumer.open() => session,
        };
        let outcome = match session {
            Ok(mut session) => {
                opened = true;
                let outcome = consumer
                    .consume(
                        handler,
                        &mut session,
                        &mut shutdown,
                        drain,
                        &mut totals,
                        &mut failures,
                        &mut kept,
                    )
                    .await;
                consumer.close(session, outcome.is_ok()).await;
                match outcome {
                    Ok(()) => return Ok(totals),
                    Err(error) => error,
                }
            }
            Err(error) if drain && !opened => return Err(error),
            Err(error) => error,
        };
        if !outcome.is_transient() {
            return Err(outcome);
        }
        let delay = consumer.config().backoff.delay(failures);
        failures = failures.saturating_add(1);
        tracing::warn!(
            consumer = consumer.consumer(),
            broker = consumer.describe(),
            error = error_chain(&outcome),
            retry_in = ?delay,
            "consuming failed; trying again"
        );
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(totals),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// What to do with a message after its handler ran.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Acknowledge it.
    Ack,
    /// Have it delivered again after `delay`.
    Retry { delay: Duration },
    /// Give it up.
    GiveUp { reason: String },
}

/// Opens the `annals.consume` span of a delivery (a child of the trace context the message
/// carries), runs the handler in it, and says what to do with the message.
///
/// `tick` runs while the handler does (JetStream: telling the server the work goes on).
pub(crate) async fn handle<T: Future<Output = ()>>(
    handler: &dyn Handler,
    config: &ConsumerConfig,
    consumer: &str,
    delivery: &mut Delivery,
    tick: impl Fn() -> T,
    tick_every: Option<Duration>,
) -> Verdict {
    use tracing::{Instrument, field::Empty};

    let span = tracing::info_span!(
        "annals.consume",
        consumer,
        subject = %delivery.subject,
        event_id = %delivery.event_id,
        event_type = %delivery.event_type,
        stream = %delivery.stream_id,
        stream_version = delivery.stream_version,
        attempt = delivery.attempt,
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
    );
    delivery.consume_trace = TraceContext::for_span(&span, delivery.trace.as_ref());
    let run = handler.handle(delivery).instrument(span.clone());
    let outcome = match tick_every {
        Some(every) => {
            tokio::pin!(run);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    outcome = &mut run => break outcome,
                    _ = ticks.tick() => tick().await,
                }
            }
        }
        None => run.await,
    };
    let _entered = span.enter();
    match outcome {
        Ok(()) => Verdict::Ack,
        Err(error) => {
            let reason = crate::error::error_chain(error.as_ref());
            if delivery.attempt >= config.max_deliveries {
                Verdict::GiveUp { reason }
            } else {
                let delay = config.backoff.delay(delivery.attempt.saturating_sub(1));
                tracing::warn!(
                    consumer,
                    event_id = %delivery.event_id,
                    attempt = delivery.attempt,
                    max_deliveries = config.max_deliveries,
                    retry_in = ?delay,
                    error = %reason,
                    "the handler failed; the message comes again"
                );
                Verdict::Retry { delay }
            }
        }
    }
}

/// Logs a message given up.
pub(crate) fn log_given_up(
    consumer: &str,
    subject: &str,
    id: Option<Uuid>,
    attempts: u32,
    reason: &str,
    to: &str,
) {
    tracing::error!(
        consumer,
        subject,
        event_id = ?id,
        attempts,
        reason,
        dead_letters = to,
        "a message was given up"
    );
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(headers: &HashMap<&str, &str>, id: Option<&str>) -> Result<Delivery, String> {
        Delivery::read(
            id,
            |name| headers.get(name).map(|v| Cow::Owned((*v).to_owned())),
            "s.order.Placed".into(),
            Bytes::from_static(br#"{"a":1}"#),
            None,
            1,
        )
    }

    #[test]
    fn deliveries_read_back_the_headers() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let id = Uuid::now_v7().to_string();
        let correlation = Uuid::now_v7().to_string();
        let mut headers = HashMap::from([
            (headers::EVENT_TYPE, "Placed"),
            (headers::SCHEMA_VERSION, "2"),
            (headers::STREAM, "order-7"),
            (headers::STREAM_VERSION, "3"),
            (headers::POSITION, "12:13"),
            (headers::CORRELATION_ID, correlation.as_str()),
            (headers::TRACEPARENT, parent),
            (headers::TRACESTATE, "a=b"),
        ]);
        let d = read(&headers, Some(&id)).unwrap();
        assert_eq!(d.event_id.to_string(), id);
        assert_eq!(d.event_type.as_str(), "Placed");
        assert_eq!(d.schema_version, 2);
        assert_eq!(d.stream_id.as_str(), "order-7");
        assert_eq!(d.stream_version, 3);
        assert_eq!(d.position, LogPosition::new(12, 13));
        assert_eq!(d.correlation_id.unwrap().to_string(), correlation);
        assert_eq!(d.causation_id, None);
        let trace = d.trace.clone().unwrap();
        assert_eq!(trace.to_traceparent(), parent);
        assert_eq!(trace.tracestate(), Some("a=b"));
        let event = d.to_event().unwrap();
        assert_eq!(event.metadata.trace, Some(trace));
        assert_eq!(event.payload.as_str(), r#"{"a":1}"#);

        // A bad traceparent only loses the trace.
        headers.insert(headers::TRACEPARENT, "junk");
        assert_eq!(read(&headers, Some(&id)).unwrap().trace, None);
        // Missing or malformed headers are why the message cannot be read.
        assert!(read(&headers, None).unwrap_err().contains("no message id"));
        assert!(
            read(&headers, Some("x"))
                .unwrap_err()
                .contains("not a UUID")
        );
        headers.insert(headers::POSITION, "12");
        assert!(
            read(&headers, Some(&id))
                .unwrap_err()
                .contains("commit:sequence")
        );
        headers.remove(headers::STREAM);
        assert!(
            read(&headers, Some(&id))
                .unwrap_err()
                .contains("no Annals-Stream header")
        );
    }
}
