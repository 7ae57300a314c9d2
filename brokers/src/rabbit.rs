//! Publishing to RabbitMQ (lapin, AMQP 0-9-1).

use std::{collections::VecDeque, fmt, time::Duration};

use annals::RecordedEvent;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::{Broker, BrokerError, Message, Published, Refusal, Subjects, headers};

/// Publishes to a RabbitMQ topic exchange.
///
/// Each event is published to the exchange with the routing key [`Subjects`] names (default
/// `events.<category>.<type>`), persistent (delivery mode 2), `mandatory`, with `message_id`
/// set to the event id, `type` to the event type, `correlation_id` to the metadata's,
/// `timestamp` to when the store committed it, `content_type` `application/json`, and the
/// other headers of [`headers`](crate::headers) in the header table (the event type and the
/// correlation id only in their properties). The channel is in confirm mode: a batch returns
/// once RabbitMQ has confirmed every message (up to [`window`](RabbitPublisher::with_window)
/// confirms are awaited at once). A message no queue takes (returned as unroutable) or that
/// RabbitMQ negatively acknowledges is refused, and follows the publisher's failure policy.
///
/// A session is one connection and one channel; it is not recovered after a failure: the
/// batch fails and the next try publishes it again, from its first message, on a new
/// connection. RabbitMQ has no deduplication: consumers see the messages published again as
/// repeats, and drop them by `message_id`.
#[derive(Clone)]
pub struct RabbitPublisher {
    url: String,
    exchange: String,
    declare: bool,
    subjects: Subjects,
    window: usize,
    confirm_timeout: Duration,
    connect_timeout: Duration,
}

impl fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisher")
            .field("exchange", &self.exchange)
            .field("subjects", &self.subjects)
            .field("window", &self.window)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish_non_exhaustive()
    }
}

impl RabbitPublisher {
    /// Publishes through the broker at `url` (`amqp://guest:guest@127.0.0.1:5672/%2f`) to
    /// the topic exchange `exchange`, which each session declares (durable) when missing.
    pub fn new(url: impl Into<String>, exchange: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            exchange: exchange.into(),
            declare: true,
            subjects: Subjects::prefixed("events"),
            window: 1_024,
            confirm_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// Names routing keys with `subjects`.
    #[must_use]
    pub fn with_subjects(mut self, subjects: Subjects) -> Self {
        self.subjects = subjects;
        self
    }

    /// Leaves the exchange alone: it must exist (declared by whoever owns the topology).
    #[must_use]
    pub fn without_declaring(mut self) -> Self {
        self.declare = false;
        self
    }

    /// Sets how many confirms may be awaited at once (at least 1; default 1,024).
    #[must_use]
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Sets how long a confirm may take (default 5 s; keep it below the runner's
    /// `io_timeout`).
    #[must_use]
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Sets how long connecting may take (default 3 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The exchange's name.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    fn client_error(&self, what: &'static str, error: lapin::Error) -> BrokerError {
        BrokerError::Client {
            broker: self.describe(),
            what,
            source: Box::new(error),
        }
    }

    async fn open(&self) -> Result<RabbitSession, BrokerError> {
        let connect_error = |source: annals::BoxError| BrokerError::Connect {
            broker: self.describe(),
            source,
        };
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .map_err(|e| connect_error(Box::new(e)))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| connect_error(Box::new(e)))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| connect_error(Box::new(e)))?;
        if self.declare {
            channel
                .exchange_declare(
                    self.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| connect_error(Box::new(e)))?;
        }
        Ok(RabbitSession {
            connection,
            channel,
        })
    }

    /// Waits for one confirm and notes what it says in `published`: the message at `index`
    /// stored or negatively acknowledged, and any returned (unroutable) message it carries.
    ///
    /// lapin hands a returned message to whichever confirm completes next, which need not be
    /// the confirm of the returned message itself (one broker ack may cover several
    /// messages): a returned message is matched to its message by `message_id`.
    async fn settle(
        &self,
        messages: &[Message],
        index: usize,
        confirm: PublisherConfirm,
        published: &mut Published,
    ) -> Result<(), BrokerError> {
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| BrokerError::Timeout {
                broker: self.describe(),
                after: self.confirm_timeout,
            })?
            .map_err(|error| {
                tracing::debug!(error = %error, "a publisher confirm failed");
                BrokerError::ConnectionLost {
                    broker: self.describe(),
                    unconfirmed: messages.len() - index,
                }
            })?;
        let (acked, returned) = match confirmation {
            Confirmation::Ack(returned) => (true, returned),
            Confirmation::Nack(returned) => (false, returned),
            Confirmation::NotRequested => {
                return Err(BrokerError::Config(
                    "the channel is not in confirm mode: nothing was confirmed".to_owned(),
                ));
            }
        };
        if acked {
            published.stored += 1;
        } else {
            published.refused.push(Refusal {
                index,
                reason: format!("negatively acknowledged by exchange {}", self.exchange),
            });
        }
        if let Some(returned) = returned {
            let id = returned
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str());
            let at = messages
                .iter()
                .position(|m| id.is_some_and(|id| m.event_id.hyphenated().to_string() == id));
            let Some(at) = at else {
                tracing::warn!(
                    ?id,
                    "RabbitMQ returned a message this batch did not publish"
                );
                return Ok(());
            };
            published.refused.retain(|r| r.index != at);
            published.refused.push(Refusal {
                index: at,
                reason: format!(
                    "returned as unroutable by exchange {} ({} {}): no queue is bound for routing key {}",
                    self.exchange, returned.reply_code, returned.reply_text, returned.routing_key
                ),
            });
            // It was counted as stored when its own confirm came, or will be.
            published.stored = published.stored.saturating_sub(1);
        }
        Ok(())
    }
}

/// The properties of a message: persistent, `message_id` (the event id), `type` (the event
/// type), `correlation_id`, `timestamp` (when the store committed the event, whole seconds),
/// `content_type`, and in the header table the rest of [`headers`](crate::headers): schema
/// version, stream, stream version, position, causation id, `traceparent`, `tracestate`.
///
/// The event type and the correlation id travel once, in their AMQP properties, not again
/// as `Annals-Event-Type` and `Annals-Correlation-Id` headers: RabbitMQ decodes and stores
/// every property and header of every persistent message, and each one costs (two fewer
/// header fields measured about a tenth more messages/s; every property dropped, the rate of
/// the bare client; see BENCHMARKS.md).
fn properties(message: &Message) -> BasicProperties {
    let mut table = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    table.insert(
        headers::SCHEMA_VERSION.into(),
        AMQPValue::LongUInt(message.schema_version),
    );
    table.insert(headers::STREAM.into(), text(message.stream_id.as_str()));
    table.insert(
        headers::STREAM_VERSION.into(),
        AMQPValue::LongLongInt(i64::try_from(message.stream_version).unwrap_or(i64::MAX)),
    );
    table.insert(headers::POSITION.into(), text(&message.position_text()));
    if let Some(id) = message.causation_id {
        let mut buffer = uuid::Uuid::encode_buffer();
        table.insert(
            headers::CAUSATION_ID.into(),
            text(id.hyphenated().encode_lower(&mut buffer)),
        );
    }
    if let Some(trace) = &message.trace {
        table.insert(headers::TRACEPARENT.into(), text(&trace.traceparent));
        if let Some(state) = &trace.tracestate {
            table.insert(headers::TRACESTATE.into(), text(state));
        }
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(message.event_id.to_string().into())
        .with_type(message.event_type.as_str().into())
        .with_content_type("application/json".into())
        .with_timestamp(u64::try_from(message.recorded_at.unix_timestamp()).unwrap_or(0))
        .with_headers(table);
    if let Some(id) = message.correlation_id {
        properties = properties.with_correlation_id(id.to_string().into());
    }
    properties
}

/// An open connection and confirm-mode channel of a [`RabbitPublisher`].
pub struct RabbitSession {
    connection: Connection,
    channel: Channel,
}

impl fmt::Debug for RabbitSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSession")
            .field("connected", &self.connection.status().connected())
            .field("channel", &self.channel.id())
            .finish()
    }
}

impl RabbitSession {
    /// The session's channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

impl Broker for RabbitPublisher {
    type Session = RabbitSession;

    fn describe(&self) -> String {
        let url = match self.url.split_once('@') {
            // Leave credentials out of errors and logs.
            Some((scheme, host)) => match scheme.split_once("://") {
                Some((scheme, _)) => format!("{scheme}://{host}"),
                None => host.to_owned(),
            },
            None => self.url.clone(),
        };
        format!("RabbitMQ exchange {} at {url}", self.exchange)
    }

    fn subject(&self, event: &RecordedEvent) -> String {
        self.subjects.subject(event)
    }

    async fn connect(&self) -> Result<RabbitSession, BrokerError> {
        tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| BrokerError::Connect {
                broker: self.describe(),
                source: format!("no answer within {:?}", self.connect_timeout).into(),
            })?
    }

    fn is_open(&self, session: &RabbitSession) -> bool {
        session.connection.status().connected() && session.channel.status().connected()
    }

    async fn publish(
        &self,
        session: &mut RabbitSession,
        messages: &[Message],
    ) -> Result<Published, BrokerError> {
        let exchange: ShortString = self.exchange.as_str().into();
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut published = Published::default();
        let mut pending: VecDeque<(usize, PublisherConfirm)> =
            VecDeque::with_capacity(self.window.min(messages.len()));
        for (index, message) in messages.iter().enumerate() {
            if pending.len() >= self.window
                && let Some((at, confirm)) = pending.pop_front()
            {
                self.settle(messages, at, confirm, &mut published).await?;
            }
            let sent = tokio::time::timeout(
                self.confirm_timeout,
                session.channel.basic_publish(
                    exchange.clone(),
                    message.subject.as_str().into(),
                    options,
                    &message.payload,
                    properties(message),
                ),
            )
            .await
            .map_err(|_| BrokerError::Timeout {
                broker: self.describe(),
                after: self.confirm_timeout,
            })?
            .map_err(|e| self.client_error("publishing", e))?;
            pending.push_back((index, sent));
        }
        while let Some((at, confirm)) = pending.pop_front() {
            self.settle(messages, at, confirm, &mut published).await?;
        }
        published.refused.sort_by_key(|r| r.index);
        Ok(published)
    }
}
