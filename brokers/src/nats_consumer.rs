//! Consuming from NATS JetStream (async-nats): a durable pull consumer.

use std::{borrow::Cow, fmt, future::Future, time::Duration};

use async_nats::{
    ConnectOptions,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self, AckKind,
        consumer::{self, PullConsumer, pull},
        stream,
    },
};

use crate::{
    BrokerError, Consumed, ConsumerConfig, Delivery, Handler, Poison,
    consumer::{
        Next, Sessions, Verdict, consume_sessions, dead_letter_headers, handle, log_given_up,
        next_message,
    },
    error::error_chain,
};

/// Consumes a JetStream stream through a durable pull consumer, handing each message to a
/// [`Handler`] and acknowledging it only after the handler returned `Ok`.
///
/// The durable consumer (`durable`) is created when missing, and updated to this
/// configuration when it exists: explicit acks, `ack_wait` (default 30 s),
/// `max_ack_pending` = [`ConsumerConfig::with_in_flight`] (default 1), no server-side
/// delivery limit (the consumer counts deliveries itself, so that a message is never dropped
/// by the server without a dead letter), and the filter subject, if any. Several processes
/// may consume through the same durable consumer at once.
///
/// - **Order.** With one message in flight (the default), JetStream delivers nothing new
///   while a message waits for its acknowledgement, so the messages are handled in stream
///   order, also across failures and a consumer that dies (its message comes again after
///   `ack_wait`, before anything later).
/// - **Failures.** A handler error sends a negative acknowledgement with a delay (the
///   config's [`Backoff`](annals::Backoff)), and JetStream delivers the message again after
///   it. While a handler runs longer than half of `ack_wait`, the consumer tells the server
///   the work goes on (`+WPI`), so a slow handler is not delivered twice.
/// - **Giving up.** After [`ConsumerConfig::with_max_deliveries`] failed deliveries (or at
///   once for a message whose headers do not read back), [`Poison::DeadLetter`] publishes a
///   copy with the reason to the dead-letter subject (default
///   `annals.dead.<stream>.<durable>`, in the stream `<stream>_DEAD` taking
///   `annals.dead.<stream>.>`, created when missing; see
///   [`NatsConsumer::with_dead_letters`]) and terminates the original (`+TERM`) once
///   JetStream has stored the copy; [`Poison::Stop`] stops the consumer with an error instead.
/// - **Outages.** A lost connection is reconnected by the client; a consumer that cannot
///   open its session retries with the backoff, logging a warning each time.
///
/// Each delivery runs in an `annals.consume` span whose parent is the trace context the
/// message carries, so one trace runs from the command that appended the event to the
/// handler.
#[derive(Clone)]
pub struct NatsConsumer {
    url: String,
    options: ConnectOptions,
    stream: String,
    durable: String,
    filter_subject: Option<String>,
    create: Option<stream::Config>,
    ack_wait: Duration,
    dead_letters: (String, String, Vec<String>),
    config: ConsumerConfig,
    connect_timeout: Duration,
}

impl fmt::Debug for NatsConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConsumer")
            .field("url", &self.url)
            .field("stream", &self.stream)
            .field("durable", &self.durable)
            .field("filter_subject", &self.filter_subject)
            .field("ack_wait", &self.ack_wait)
            .field("dead_letters", &self.dead_letters)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An open session: the client, the stream's context, the durable consumer and its messages.
pub(crate) struct Session {
    client: async_nats::Client,
    context: jetstream::Context,
    consumer: PullConsumer,
    messages: pull::Stream,
}

impl NatsConsumer {
    /// Consumes the JetStream stream `stream` at `url` (`nats://127.0.0.1:4222`) through the
    /// durable consumer `durable` (created when missing).
    pub fn new(
        url: impl Into<String>,
        stream: impl Into<String>,
        durable: impl Into<String>,
    ) -> Self {
        let stream = stream.into();
        let durable = durable.into();
        Self {
            url: url.into(),
            options: ConnectOptions::new(),
            dead_letters: (
                format!("{stream}_DEAD"),
                format!("annals.dead.{stream}.{durable}"),
                vec![format!("annals.dead.{stream}.>")],
            ),
            stream,
            durable,
            filter_subject: None,
            create: None,
            ack_wait: Duration::from_secs(30),
            config: ConsumerConfig::new(),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// Connects with `options` (credentials, TLS, a name); its connection timeout is
    /// replaced by the consumer's own.
    #[must_use]
    pub fn with_options(mut self, options: ConnectOptions) -> Self {
        self.options = options;
        self
    }

    /// Takes only the messages of `subject` (wildcards allowed: `orders.order.>`).
    #[must_use]
    pub fn with_filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = Some(subject.into());
        self
    }

    /// Creates the stream with `config` when a session finds it missing (its name is
    /// replaced by the consumer's stream name), as [`NatsPublisher::create_stream`] does: a
    /// consumer started before its publisher then waits for messages instead of failing.
    ///
    /// [`NatsPublisher::create_stream`]: crate::NatsPublisher::create_stream
    #[must_use]
    pub fn create_stream(mut self, mut config: stream::Config) -> Self {
        config.name.clone_from(&self.stream);
        self.create = Some(config);
        self
    }

    /// How long JetStream waits for an acknowledgement before it delivers a message again
    /// (default 30 s): after a consumer dies, its message comes again this long after it was
    /// delivered.
    #[must_use]
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait.max(Duration::from_millis(100));
        self
    }

    /// Dead letters go to `subject` in the stream `stream`, which is created taking
    /// `subject` when missing.
    #[must_use]
    pub fn with_dead_letters(
        mut self,
        stream: impl Into<String>,
        subject: impl Into<String>,
    ) -> Self {
        let subject = subject.into();
        self.dead_letters = (stream.into(), subject.clone(), vec![subject]);
        self
    }

    /// Handles messages as `config` says.
    #[must_use]
    pub fn with_config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    /// How long connecting may take (default 3 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The durable consumer's name.
    pub fn durable(&self) -> &str {
        &self.durable
    }

    /// The dead-letter stream and subject.
    pub fn dead_letters(&self) -> (&str, &str) {
        (&self.dead_letters.0, &self.dead_letters.1)
    }

    fn describe(&self) -> String {
        format!(
            "NATS JetStream consumer {} of stream {} at {}",
            self.durable, self.stream, self.url
        )
    }

    fn connect_error(&self, source: impl Into<annals::BoxError>) -> BrokerError {
        BrokerError::Connect {
            broker: self.describe(),
            source: source.into(),
        }
    }

    fn client_error(&self, what: &'static str, source: impl Into<annals::BoxError>) -> BrokerError {
        BrokerError::Client {
            broker: self.describe(),
            what,
            source: source.into(),
        }
    }

    /// Consumes until `shutdown` completes (a message being handled is finished and
    /// acknowledged first). Outages are retried with the backoff, logged as warnings.
    ///
    /// # Errors
    /// [`BrokerError::Poisoned`] under [`Poison::Stop`]; [`BrokerError::Config`].
    pub async fn run<H: Handler>(
        &self,
        handler: H,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Consumed, BrokerError> {
        consume_sessions(self, &handler, shutdown, false).await
    }

    /// Consumes until nothing is left: no message waits to be delivered and none waits for
    /// its acknowledgement (one failed and waiting for its delay, or held by a consumer that
    /// died, is waited for). For batch jobs and tests.
    ///
    /// # Errors
    /// As [`NatsConsumer::run`], and the first session's failure (an unreachable server is
    /// reported, not waited for).
    pub async fn drain<H: Handler>(&self, handler: H) -> Result<Consumed, BrokerError> {
        consume_sessions(self, &handler, std::future::pending(), true).await
    }

    /// Connects, and finds or creates the stream, the dead-letter stream and the durable
    /// consumer.
    async fn open(&self) -> Result<Session, BrokerError> {
        let connecting = self
            .options
            .clone()
            .connection_timeout(self.connect_timeout)
            .connect(self.url.as_str());
        let client =
            tokio::time::timeout(self.connect_timeout + Duration::from_secs(1), connecting)
                .await
                .map_err(|_| {
                    self.connect_error(format!("no answer within {:?}", self.connect_timeout))
                })?
                .map_err(|e| self.connect_error(e))?;
        let context = jetstream::new(client.clone());
        let stream = match &self.create {
            Some(config) => context
                .get_or_create_stream(config.clone())
                .await
                .map_err(|e| self.connect_error(e))?,
            None => context
                .get_stream(&self.stream)
                .await
                .map_err(|e| self.connect_error(e))?,
        };
        if self.config.poison == Poison::DeadLetter {
            let (name, _, subjects) = &self.dead_letters;
            context
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: subjects.clone(),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| self.connect_error(e))?;
        }
        let config = pull::Config {
            durable_name: Some(self.durable.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            max_ack_pending: i64::try_from(self.config.in_flight).unwrap_or(i64::MAX),
            filter_subject: self.filter_subject.clone().unwrap_or_default(),
            ..Default::default()
        };
        let consumer: PullConsumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| self.connect_error(e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.config.in_flight.clamp(1, 256))
            .expires(Duration::from_secs(10))
            .heartbeat(Duration::from_secs(3))
            .messages()
            .await
            .map_err(|e| self.connect_error(e))?;
        Ok(Session {
            client,
            context,
            consumer,
            messages,
        })
    }

    /// Handles one message and settles it: ack, a delayed negative ack, or a dead letter.
    async fn process(
        &self,
        handler: &dyn Handler,
        session: &Session,
        message: jetstream::Message,
        totals: &mut Consumed,
    ) -> Result<(), BrokerError> {
        let attempt = message
            .info()
            .map(|info| u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let headers = message.headers.as_ref();
        let id = headers
            .and_then(|h| h.get(NATS_MESSAGE_ID))
            .map(|v| v.as_str());
        let read = Delivery::read(
            id,
            |name| {
                headers
                    .and_then(|h| h.get(name))
                    .map(|v| Cow::Borrowed(v.as_str()))
            },
            message.subject.to_string(),
            message.payload.clone(),
            None,
            attempt,
        );
        let mut delivery = match read {
            Ok(delivery) => delivery,
            Err(reason) => {
                let reason = format!("not a message of an Annals publisher: {reason}");
                let id = id.and_then(|id| id.parse().ok());
                return self
                    .give_up(session, &message, id, attempt, reason, totals)
                    .await;
            }
        };
        let m = &message;
        let verdict = handle(
            handler,
            &self.config,
            &self.durable,
            &mut delivery,
            move || async move {
                if let Err(error) = m.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %error, "telling JetStream the work goes on failed");
                }
            },
            Some(self.ack_wait / 2),
        )
        .await;
        match verdict {
            Verdict::Ack => {
                message
                    .ack()
                    .await
                    .map_err(|e| self.client_error("acknowledging", e))?;
                totals.handled += 1;
                Ok(())
            }
            Verdict::Retry { delay, .. } => {
                message
                    .ack_with(AckKind::Nak(Some(delay)))
                    .await
                    .map_err(|e| self.client_error("sending a negative acknowledgement", e))?;
                totals.retried += 1;
                Ok(())
            }
            Verdict::GiveUp { reason } => {
                self.give_up(
                    session,
                    &message,
                    Some(delivery.event_id),
                    attempt,
                    reason,
                    totals,
                )
                .await
            }
        }
    }

    /// Gives a message up as [`Poison`] says.
    async fn give_up(
        &self,
        session: &Session,
        message: &jetstream::Message,
        event_id: Option<uuid::Uuid>,
        attempts: u32,
        reason: String,
        totals: &mut Consumed,
    ) -> Result<(), BrokerError> {
        if self.config.poison == Poison::Stop {
            return Err(BrokerError::Poisoned {
                consumer: self.describe(),
                subject: message.subject.to_string(),
                event_id,
                attempts,
                reason,
            });
        }
        let (_, subject, _) = &self.dead_letters;
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(dead_letter_headers::REASON, header_text(&reason));
        headers.insert(
            dead_letter_headers::ATTEMPTS,
            async_nats::HeaderValue::from(attempts),
        );
        headers.insert(dead_letter_headers::CONSUMER, self.durable.as_str());
        let stored = async {
            session
                .context
                .publish_with_headers(subject.clone(), headers, message.payload.clone())
                .await?
                .await
        }
        .await;
        if let Err(error) = stored {
            // Never dropped: the message comes again, and is given up again.
            let delay = self.config.backoff.delay(attempts);
            tracing::error!(
                consumer = %self.durable,
                dead_letters = %subject,
                error = error_chain(&error),
                retry_in = ?delay,
                "a message given up could not be dead-lettered; it comes again"
            );
            message
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(|e| self.client_error("sending a negative acknowledgement", e))?;
            totals.retried += 1;
            return Ok(());
        }
        message
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| self.client_error("terminating a dead-lettered message", e))?;
        log_given_up(
            &self.durable,
            &message.subject,
            event_id,
            attempts,
            &reason,
            subject,
        );
        totals.dead_lettered += 1;
        Ok(())
    }
}

impl Sessions for NatsConsumer {
    type Session = Session;
    type Kept = ();

    fn consumer(&self) -> &str {
        &self.durable
    }

    fn describe(&self) -> String {
        NatsConsumer::describe(self)
    }

    fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    async fn open(&self) -> Result<Session, BrokerError> {
        NatsConsumer::open(self).await
    }

    async fn consume(
        &self,
        handler: &dyn Handler,
        session: &mut Session,
        shutdown: &mut (impl Future<Output = ()> + Send + Unpin),
        drain: bool,
        totals: &mut Consumed,
        failures: &mut u32,
        _kept: &mut (),
    ) -> Result<(), BrokerError> {
        loop {
            let next = next_message(&mut session.messages, shutdown, drain, self.config.idle).await;
            let message = match next {
                Next::Shutdown => return Ok(()),
                Next::Idle => {
                    let info = session
                        .consumer
                        .get_info()
                        .await
                        .map_err(|e| self.client_error("asking what is left", e))?;
                    if info.num_pending == 0 && info.num_ack_pending == 0 {
                        return Ok(());
                    }
                    continue;
                }
                Next::Ended => {
                    return Err(self.client_error("pulling messages", "the message stream ended"));
                }
                Next::Message(Err(error)) => {
                    if matches!(error.kind(), pull::MessagesErrorKind::MissingHeartbeat) {
                        tracing::debug!(consumer = %self.durable, "missed a heartbeat");
                        continue;
                    }
                    return Err(self.client_error("pulling messages", error));
                }
                Next::Message(Ok(message)) => message,
            };
            *failures = 0;
            self.process(handler, session, message, totals).await?;
        }
    }

    async fn close(&self, session: Session, ended_well: bool) {
        if !ended_well {
            return;
        }
        // The last acknowledgements leave before the connection closes (a lost one only
        // brings its message again).
        let flush = session.client.flush();
        let flushed = tokio::time::timeout(Duration::from_secs(2), flush);
        if !matches!(flushed.await, Ok(Ok(()))) {
            tracing::debug!(
                consumer = %self.durable,
                "flushing the last acknowledgements failed"
            );
        }
    }
}

/// `text` as one header value: control characters as spaces, at most 1,024 bytes.
pub(crate) fn header_text(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 1_024 {
        let mut end = 1_024;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}
