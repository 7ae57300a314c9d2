//! Publishing to NATS JetStream (async-nats).

use std::{
    collections::VecDeque,
    fmt,
    future::IntoFuture,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use annals::RecordedEvent;
use async_nats::{
    ConnectOptions, Event, HeaderMap, HeaderName, HeaderValue,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishErrorKind},
        message::PublishMessage,
        stream,
    },
};
use tokio::sync::watch;

use crate::{
    Broker, BrokerError, Message, Published, Refusal, Subjects, error::error_chain, headers,
};

/// A wait that does not end: how long a broken session waits before reconnecting (it never
/// does; see [`NatsPublisher`]).
const NEVER: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 10);

/// Publishes to a NATS JetStream stream.
///
/// Each event goes to the subject [`Subjects`] names (default `events.<category>.<type>`),
/// with `Nats-Msg-Id` set to the event id, so that JetStream's duplicate window (the
/// stream's `duplicate_window`, 2 minutes by default) drops the messages a restarted
/// publisher sends again; and with the headers of [`headers`](crate::headers). The stream
/// must take those subjects: it is looked up when a session opens (and created from
/// [`NatsPublisher::create_stream`]'s configuration when missing).
///
/// Publishes are pipelined: up to [`window`](NatsPublisher::with_window) acks are awaited at
/// once, and a batch returns once each is in (or [`ack_timeout`](NatsPublisher::with_ack_timeout)
/// passed).
///
/// **Order across a broken connection.** async-nats queues publishes while it reconnects and
/// sends them once connected: a message lost with the old connection would then be stored
/// after later ones of its stream. A session of this publisher therefore never reconnects:
/// when its connection breaks, its queued messages are never sent, the batch fails, and the
/// next try opens a new connection and publishes the batch again from its first message. So
/// each connection stores a prefix of what it was given, in order, and the messages of a
/// stream are stored in the stream's order (refused messages apart, which follow the failure
/// policy).
#[derive(Clone)]
pub struct NatsPublisher {
    url: String,
    options: ConnectOptions,
    stream: String,
    create: Option<stream::Config>,
    subjects: Subjects,
    window: usize,
    ack_timeout: Duration,
    connect_timeout: Duration,
}

impl fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsPublisher")
            .field("url", &self.url)
            .field("stream", &self.stream)
            .field("subjects", &self.subjects)
            .field("window", &self.window)
            .field("ack_timeout", &self.ack_timeout)
            .finish_non_exhaustive()
    }
}

impl NatsPublisher {
    /// Publishes through the server(s) at `url` (`nats://127.0.0.1:4222`, or several,
    /// comma-separated) into the JetStream stream named `stream`.
    pub fn new(url: impl Into<String>, stream: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            options: ConnectOptions::new(),
            stream: stream.into(),
            create: None,
            subjects: Subjects::prefixed("events"),
            window: 2_048,
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// Connects with `options` (credentials, TLS, a name). Its event callback, reconnect
    /// delay and connection timeout are replaced by the publisher's own.
    #[must_use]
    pub fn with_options(mut self, options: ConnectOptions) -> Self {
        self.options = options;
        self
    }

    /// Names subjects with `subjects`.
    #[must_use]
    pub fn with_subjects(mut self, subjects: Subjects) -> Self {
        self.subjects = subjects;
        self
    }

    /// Creates the stream with `config` when a session finds it missing (its name is
    /// replaced by the publisher's stream name).
    #[must_use]
    pub fn create_stream(mut self, mut config: stream::Config) -> Self {
        config.name.clone_from(&self.stream);
        self.create = Some(config);
        self
    }

    /// Sets how many publish acks may be awaited at once (at least 1; default 2,048).
    #[must_use]
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Sets how long a publish ack may take (default 5 s; keep it below the runner's
    /// `io_timeout`).
    #[must_use]
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Sets how long connecting may take (default 3 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The JetStream stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    fn connect_error(&self, source: impl Into<annals::BoxError>) -> BrokerError {
        BrokerError::Connect {
            broker: self.describe(),
            source: source.into(),
        }
    }

    /// Waits for one ack: `Ok(Ok(duplicate))` when stored, `Ok(Err(reason))` when refused.
    async fn settle(
        &self,
        session: &mut NatsSession,
        ack: PublishAckFuture,
        subject: &str,
        unconfirmed: usize,
    ) -> Result<Result<bool, String>, BrokerError> {
        let lost = || BrokerError::ConnectionLost {
            broker: self.describe(),
            unconfirmed,
        };
        let result = tokio::select! {
            biased;
            result = ack.into_future() => result,
            _ = session.broken.wait_for(|broken| *broken) => return Err(lost()),
        };
        match result {
            Ok(ack) => Ok(Ok(ack.duplicate)),
            Err(error) => match error.kind() {
                PublishErrorKind::TimedOut => Err(BrokerError::Timeout {
                    broker: self.describe(),
                    after: self.ack_timeout,
                }),
                PublishErrorKind::BrokenPipe => Err(lost()),
                PublishErrorKind::StreamNotFound => Ok(Err(format!(
                    "no JetStream stream takes subject {subject} (no responders)"
                ))),
                _ => Ok(Err(error_chain(&error))),
            },
        }
    }
}

/// The headers of a message: `Nats-Msg-Id` and those of [`headers`](crate::headers).
fn nats_headers(message: &Message) -> HeaderMap {
    const EVENT_TYPE: HeaderName = HeaderName::from_static(headers::EVENT_TYPE);
    const SCHEMA_VERSION: HeaderName = HeaderName::from_static(headers::SCHEMA_VERSION);
    const STREAM: HeaderName = HeaderName::from_static(headers::STREAM);
    const STREAM_VERSION: HeaderName = HeaderName::from_static(headers::STREAM_VERSION);
    const POSITION: HeaderName = HeaderName::from_static(headers::POSITION);
    const CORRELATION_ID: HeaderName = HeaderName::from_static(headers::CORRELATION_ID);
    const CAUSATION_ID: HeaderName = HeaderName::from_static(headers::CAUSATION_ID);
    const TRACEPARENT: HeaderName = HeaderName::from_static(headers::TRACEPARENT);
    const TRACESTATE: HeaderName = HeaderName::from_static(headers::TRACESTATE);

    let mut map = HeaderMap::new();
    let mut id = uuid::Uuid::encode_buffer();
    map.insert(
        NATS_MESSAGE_ID,
        &*message.event_id.hyphenated().encode_lower(&mut id),
    );
    map.insert(EVENT_TYPE, message.event_type.as_str());
    map.insert(SCHEMA_VERSION, HeaderValue::from(message.schema_version));
    map.insert(STREAM, message.stream_id.as_str());
    map.insert(STREAM_VERSION, HeaderValue::from(message.stream_version));
    map.insert(POSITION, message.position_text());
    if let Some(id) = message.correlation_id {
        let mut buffer = uuid::Uuid::encode_buffer();
        map.insert(CORRELATION_ID, &*id.hyphenated().encode_lower(&mut buffer));
    }
    if let Some(id) = message.causation_id {
        let mut buffer = uuid::Uuid::encode_buffer();
        map.insert(CAUSATION_ID, &*id.hyphenated().encode_lower(&mut buffer));
    }
    if let Some(trace) = &message.trace {
        map.insert(TRACEPARENT, trace.traceparent.as_str());
        if let Some(state) = &trace.tracestate {
            map.insert(TRACESTATE, state.as_str());
        }
    }
    map
}

/// An open connection of a [`NatsPublisher`]; it is never reconnected (see there).
pub struct NatsSession {
    client: async_nats::Client,
    context: jetstream::Context,
    broken: watch::Receiver<bool>,
}

impl fmt::Debug for NatsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSession")
            .field("state", &self.client.connection_state())
            .field("broken", &*self.broken.borrow())
            .finish()
    }
}

impl NatsSession {
    /// The session's client (to read server info or statistics).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

impl Broker for NatsPublisher {
    type Session = NatsSession;

    fn describe(&self) -> String {
        format!("NATS JetStream stream {} at {}", self.stream, self.url)
    }

    fn subject(&self, event: &RecordedEvent) -> String {
        self.subjects.subject(event)
    }

    async fn connect(&self) -> Result<NatsSession, BrokerError> {
        let established = Arc::new(AtomicBool::new(false));
        let (broken_tx, broken) = watch::channel(false);
        let once_connected = established.clone();
        let options = self
            .options
            .clone()
            .connection_timeout(self.connect_timeout)
            // Never reconnect once connected: what async-nats queued while disconnected
            // would be sent after messages lost with the old connection.
            .reconnect_delay_callback(move |_| {
                if once_connected.load(Ordering::SeqCst) {
                    NEVER
                } else {
                    Duration::ZERO
                }
            })
            .event_callback(move |event| {
                let broken = broken_tx.clone();
                async move {
                    if matches!(event, Event::Disconnected | Event::Closed) {
                        broken.send_replace(true);
                    }
                }
            });
        let connected = tokio::time::timeout(
            self.connect_timeout + Duration::from_secs(1),
            options.connect(self.url.as_str()),
        )
        .await
        .map_err(|_| self.connect_error(format!("no answer within {:?}", self.connect_timeout)))?;
        let client = connected.map_err(|e| self.connect_error(e))?;
        established.store(true, Ordering::SeqCst);
        let context = jetstream::ContextBuilder::new()
            .timeout(self.ack_timeout)
            .max_ack_inflight(self.window.saturating_mul(2))
            .backpressure_on_inflight(true)
            .build(client.clone());
        // Also tells that JetStream answers (it may still be recovering after a restart).
        let found = match &self.create {
            Some(config) => context
                .get_or_create_stream(config.clone())
                .await
                .map(drop)
                .map_err(|e| self.connect_error(e)),
            None => context
                .get_stream(&self.stream)
                .await
                .map(drop)
                .map_err(|e| self.connect_error(e)),
        };
        found?;
        Ok(NatsSession {
            client,
            context,
            broken,
        })
    }

    fn is_open(&self, session: &NatsSession) -> bool {
        !*session.broken.borrow()
            && session.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn publish(
        &self,
        session: &mut NatsSession,
        messages: &[Message],
    ) -> Result<Published, BrokerError> {
        let mut published = Published::default();
        let mut pending: VecDeque<(usize, PublishAckFuture)> =
            VecDeque::with_capacity(self.window.min(messages.len()));
        let outcome = |index: usize, settled: Result<bool, String>, p: &mut Published| match settled
        {
            Ok(true) => p.duplicates += 1,
            Ok(false) => p.stored += 1,
            Err(reason) => p.refused.push(Refusal { index, reason }),
        };
        for (index, message) in messages.iter().enumerate() {
            if pending.len() >= self.window
                && let Some((at, ack)) = pending.pop_front()
            {
                let unconfirmed = messages.len() - at;
                let settled = self
                    .settle(session, ack, &messages[at].subject, unconfirmed)
                    .await?;
                outcome(at, settled, &mut published);
            }
            if *session.broken.borrow() {
                return Err(BrokerError::ConnectionLost {
                    broker: self.describe(),
                    unconfirmed: messages.len() - pending.front().map_or(index, |(at, _)| *at),
                });
            }
            let publish = PublishMessage::build()
                .payload(message.payload.clone())
                .headers(nats_headers(message));
            match session
                .context
                .send_publish(message.subject.clone(), publish)
                .await
            {
                Ok(ack) => pending.push_back((index, ack)),
                Err(error) => match error.kind() {
                    PublishErrorKind::MaxPayloadExceeded => published.refused.push(Refusal {
                        index,
                        reason: error_chain(&error),
                    }),
                    PublishErrorKind::TimedOut => {
                        return Err(BrokerError::Timeout {
                            broker: self.describe(),
                            after: self.ack_timeout,
                        });
                    }
                    _ => {
                        return Err(BrokerError::Client {
                            broker: self.describe(),
                            what: "publishing",
                            source: Box::new(error),
                        });
                    }
                },
            }
        }
        while let Some((at, ack)) = pending.pop_front() {
            let unconfirmed = messages.len() - at;
            let settled = self
                .settle(session, ack, &messages[at].subject, unconfirmed)
                .await?;
            outcome(at, settled, &mut published);
        }
        // Refusals were noted as they came; keep them in message order.
        published.refused.sort_by_key(|r| r.index);
        Ok(published)
    }
}
