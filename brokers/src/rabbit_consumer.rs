//! Consuming from RabbitMQ (lapin, AMQP 0-9-1): a durable queue bound to the topic exchange.

use std::{borrow::Cow, collections::HashMap, fmt, future::Future, time::Duration};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery as AmqpDelivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use time::OffsetDateTime;

use crate::{
    BrokerError, Consumed, ConsumerConfig, Delivery, Handler, Poison,
    consumer::{
        Next, Sessions, Verdict, consume_sessions, dead_letter_headers, handle, log_given_up,
        next_message,
    },
    error::error_chain,
    headers,
    nats_consumer::header_text,
};

/// Consumes a durable RabbitMQ queue bound to a topic exchange, handing each message to a
/// [`Handler`] and acknowledging it only after the handler returned `Ok`.
///
/// Each session declares the exchange (a durable topic exchange, as
/// [`RabbitPublisher`](crate::RabbitPublisher) does; unless
/// [`RabbitConsumer::without_declaring`]), the queue (durable), its bindings (default `#`:
/// everything the exchange routes), and the dead-letter queue (`<queue>.dead`, durable), then
/// consumes with a prefetch of [`ConsumerConfig::with_in_flight`] (default 1). Declare the
/// queue before the publisher publishes: RabbitMQ routes a message only to the queues bound
/// at that moment (the publisher's messages are `mandatory`, so an unbound one is refused
/// and follows its failure policy).
///
/// - **Order.** With a prefetch of 1 (the default), RabbitMQ hands out nothing new while a
///   message is unacknowledged, and puts a message given back (or held by a consumer whose
///   connection closed) back at its place, so messages are handled in queue order.
/// - **Failures.** A handler error waits the config's backoff, holding the message, then
///   gives it back (`basic.nack`, requeue) to be delivered again. RabbitMQ's classic queues
///   do not count deliveries: the consumer counts them per message id (a message that comes
///   back marked redelivered from another connection counts one earlier delivery), and uses
///   `x-delivery-count` where the queue provides it (quorum queues). So a poison message is
///   given up after [`ConsumerConfig::with_max_deliveries`] deliveries within one process.
/// - **Giving up.** [`Poison::DeadLetter`] publishes a copy with the reason to the
///   dead-letter queue (through the default exchange, persistent, confirmed) and then
///   acknowledges the original; [`Poison::Stop`] stops the consumer with an error instead.
/// - **Outages.** A broken connection fails the session; the consumer opens a new one after
///   the backoff (what it had not acknowledged is delivered again), logging a warning.
///
/// Each delivery runs in an `annals.consume` span whose parent is the trace context the
/// message carries.
#[derive(Clone)]
pub struct RabbitConsumer {
    url: String,
    exchange: String,
    queue: String,
    binding_keys: Vec<String>,
    declare: bool,
    dead_letter_queue: String,
    config: ConsumerConfig,
    connect_timeout: Duration,
}

impl fmt::Debug for RabbitConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("binding_keys", &self.binding_keys)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Session {
    connection: Closing,
    channel: Channel,
    /// A channel in confirm mode, for dead letters.
    dead: Channel,
    deliveries: lapin::Consumer,
}

impl Drop for Session {
    /// Closes the connection in the background, holding the session's channels and consumer
    /// until it is closed. lapin 4.12 can deadlock when the last handle of a consumer is
    /// dropped by the connection's error handling (it then holds its consumers' lock and waits
    /// for the channel's state) while its I/O thread receives a delivery for that channel
    /// (holding the state and waiting for the consumers): seen as a consumer that hung for
    /// ever after a `run` future was dropped mid-delivery. Kept here, no handle is the last
    /// one until the connection is closed.
    fn drop(&mut self) {
        let keep = (
            self.channel.clone(),
            self.dead.clone(),
            self.deliveries.clone(),
        );
        self.connection.close_in_background(keep);
    }
}

/// A connection closed when dropped, however a session ends: a `run` or `drain` future
/// dropped mid-message (or while the session opens) included. RabbitMQ gives a message back
/// to the queue only when the channel that holds it unacknowledged closes, and lapin keeps a
/// connection open while a consumer is registered on it, even when every handle is gone.
struct Closing(Option<Connection>);

impl Closing {
    /// Closes it now.
    async fn close(&mut self) {
        if let Some(connection) = self.0.take()
            && connection.status().connected()
        {
            let _ = connection.close(200, "bye".into()).await;
        }
    }

    /// Closes it on a task of its own (when there is a runtime), dropping `keep` only once
    /// it is closed; `keep` is dropped at once if it is closed already.
    fn close_in_background<K: Send + 'static>(&mut self, keep: K) {
        let Some(connection) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = connection.close(200, "consumer stopped".into()).await;
                drop(keep);
            });
        }
    }
}

impl std::ops::Deref for Closing {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Taken only by `close` and `drop`, which end its use.
        self.0.as_ref().expect("an open connection")
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.close_in_background(());
    }
}

impl RabbitConsumer {
    /// Consumes the queue `queue` bound to the topic exchange `exchange` at `url`
    /// (`amqp://guest:guest@127.0.0.1:5672/%2f`).
    pub fn new(
        url: impl Into<String>,
        exchange: impl Into<String>,
        queue: impl Into<String>,
    ) -> Self {
        let queue = queue.into();
        Self {
            url: url.into(),
            exchange: exchange.into(),
            dead_letter_queue: format!("{queue}.dead"),
            queue,
            binding_keys: vec!["#".to_owned()],
            declare: true,
            config: ConsumerConfig::new(),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// Binds the queue with these keys (AMQP topic patterns: `orders.order.*`, `orders.#`)
    /// instead of `#`.
    #[must_use]
    pub fn with_binding_keys<I: IntoIterator<Item = T>, T: Into<String>>(
        mut self,
        keys: I,
    ) -> Self {
        self.binding_keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// Leaves the exchange alone: it must exist (the queue, its bindings and the dead-letter
    /// queue are still declared).
    #[must_use]
    pub fn without_declaring(mut self) -> Self {
        self.declare = false;
        self
    }

    /// Dead letters go to the queue `queue` (declared durable) instead of `<queue>.dead`.
    #[must_use]
    pub fn with_dead_letter_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter_queue = queue.into();
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

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> &str {
        &self.dead_letter_queue
    }

    fn describe(&self) -> String {
        let url = match self.url.split_once('@') {
            Some((scheme, host)) => match scheme.split_once("://") {
                Some((scheme, _)) => format!("{scheme}://{host}"),
                None => host.to_owned(),
            },
            None => self.url.clone(),
        };
        format!("RabbitMQ queue {} at {url}", self.queue)
    }

    fn client_error(&self, what: &'static str, error: lapin::Error) -> BrokerError {
        BrokerError::Client {
            broker: self.describe(),
            what,
            source: Box::new(error),
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

    /// Consumes until the queue holds no message ready for delivery and no other consumer is
    /// attached to it (a message this consumer gave back, or one held by another consumer
    /// that may come back, is waited for: RabbitMQ does not count the messages a consumer
    /// holds). For batch jobs and tests.
    ///
    /// # Errors
    /// As [`RabbitConsumer::run`], and the first session's failure.
    pub async fn drain<H: Handler>(&self, handler: H) -> Result<Consumed, BrokerError> {
        consume_sessions(self, &handler, std::future::pending(), true).await
    }

    async fn open(&self) -> Result<Session, BrokerError> {
        let connect_error = |source: lapin::Error| BrokerError::Connect {
            broker: self.describe(),
            source: Box::new(source),
        };
        let connection = Closing(Some(
            Connection::connect(&self.url, ConnectionProperties::default())
                .await
                .map_err(connect_error)?,
        ));
        let channel = connection.create_channel().await.map_err(connect_error)?;
        let dead = connection.create_channel().await.map_err(connect_error)?;
        dead.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(connect_error)?;
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
                .map_err(connect_error)?;
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        for queue in [&self.queue, &self.dead_letter_queue] {
            channel
                .queue_declare(queue.as_str().into(), durable, FieldTable::default())
                .await
                .map_err(connect_error)?;
        }
        for key in &self.binding_keys {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    self.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(connect_error)?;
        }
        let prefetch = u16::try_from(self.config.in_flight).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(connect_error)?;
        let deliveries = channel
            .basic_consume(
                self.queue.as_str().into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(connect_error)?;
        Ok(Session {
            connection,
            channel,
            dead,
            deliveries,
        })
    }

    /// Which delivery of its message `delivery` is.
    fn attempt(delivery: &AmqpDelivery, attempts: &mut HashMap<String, u32>) -> u32 {
        let counted = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count"))
            .and_then(|v| match v {
                AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
                AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
                AMQPValue::LongUInt(n) => Some(*n),
                AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
                AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
                _ => None,
            });
        let key = message_key(delivery);
        let seen = attempts
            .entry(key)
            .or_insert(u32::from(delivery.redelivered));
        *seen = seen.saturating_add(1);
        match counted {
            Some(before) => before.saturating_add(1).max(*seen),
            None => *seen,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn process(
        &self,
        handler: &dyn Handler,
        session: &Session,
        delivery: AmqpDelivery,
        shutdown: &mut (impl Future<Output = ()> + Send + Unpin),
        totals: &mut Consumed,
        attempts: &mut HashMap<String, u32>,
    ) -> Result<(), BrokerError> {
        let attempt = Self::attempt(&delivery, attempts);
        let table = delivery.properties.headers().as_ref();
        let properties = &delivery.properties;
        let header = |name: &str| -> Option<Cow<'_, str>> {
            // The publisher sends these as properties; an older one sent headers.
            let property = match name {
                headers::EVENT_TYPE => properties.kind().as_ref(),
                headers::CORRELATION_ID => properties.correlation_id().as_ref(),
                _ => None,
            };
            if let Some(value) = property {
                return Some(Cow::Borrowed(value.as_str()));
            }
            match table?.inner().get(name)? {
                AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes())),
                AMQPValue::ShortString(s) => Some(Cow::Borrowed(s.as_str())),
                AMQPValue::LongUInt(n) => Some(Cow::Owned(n.to_string())),
                AMQPValue::LongLongInt(n) => Some(Cow::Owned(n.to_string())),
                AMQPValue::LongInt(n) => Some(Cow::Owned(n.to_string())),
                AMQPValue::ShortUInt(n) => Some(Cow::Owned(n.to_string())),
                AMQPValue::ShortInt(n) => Some(Cow::Owned(n.to_string())),
                _ => None,
            }
        };
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str);
        let recorded_at = delivery
            .properties
            .timestamp()
            .and_then(|t| i64::try_from(t).ok())
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
        let read = Delivery::read(
            id,
            header,
            delivery.routing_key.to_string(),
            bytes::Bytes::copy_from_slice(&delivery.data),
            recorded_at,
            attempt,
        );
        let mut message = match read {
            Ok(message) => message,
            Err(reason) => {
                let reason = format!("not a message of an Annals publisher: {reason}");
                let id = id.and_then(|id| id.parse().ok());
                return self
                    .give_up(session, &delivery, id, attempt, reason, totals, attempts)
                    .await;
            }
        };
        let verdict = handle(
            handler,
            &self.config,
            &self.queue,
            &mut message,
            || async {},
            None,
        )
        .await;
        match verdict {
            Verdict::Ack => {
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| self.client_error("acknowledging", e))?;
                attempts.remove(&message_key(&delivery));
                totals.handled += 1;
                Ok(())
            }
            Verdict::Retry { delay, .. } => {
                // Held (nothing else comes with a prefetch of 1), then given back.
                tokio::select! {
                    biased;
                    () = &mut *shutdown => {}
                    () = tokio::time::sleep(delay) => {}
                }
                self.requeue(&delivery).await?;
                totals.retried += 1;
                Ok(())
            }
            Verdict::GiveUp { reason } => {
                self.give_up(
                    session,
                    &delivery,
                    Some(message.event_id),
                    attempt,
                    reason,
                    totals,
                    attempts,
                )
                .await
            }
        }
    }

    async fn requeue(&self, delivery: &AmqpDelivery) -> Result<(), BrokerError> {
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .map_err(|e| self.client_error("giving a message back", e))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn give_up(
        &self,
        session: &Session,
        delivery: &AmqpDelivery,
        event_id: Option<uuid::Uuid>,
        attempts: u32,
        reason: String,
        totals: &mut Consumed,
        counts: &mut HashMap<String, u32>,
    ) -> Result<(), BrokerError> {
        if self.config.poison == Poison::Stop {
            return Err(BrokerError::Poisoned {
                consumer: self.describe(),
                subject: delivery.routing_key.to_string(),
                event_id,
                attempts,
                reason,
            });
        }
        let mut table = delivery.properties.headers().clone().unwrap_or_default();
        table.insert(
            dead_letter_headers::REASON.into(),
            AMQPValue::LongString(header_text(&reason).into()),
        );
        table.insert(
            dead_letter_headers::ATTEMPTS.into(),
            AMQPValue::LongUInt(attempts),
        );
        table.insert(
            dead_letter_headers::CONSUMER.into(),
            AMQPValue::LongString(self.queue.as_str().into()),
        );
        let properties: BasicProperties = delivery.properties.clone().with_headers(table);
        let stored = async {
            let confirm = session
                .dead
                .basic_publish(
                    ShortString::from(""),
                    self.dead_letter_queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    properties.with_delivery_mode(2),
                )
                .await
                .map_err(|e| error_chain(&e))?;
            match tokio::time::timeout(Duration::from_secs(10), confirm).await {
                Err(_) => Err("no confirm within 10 s".to_owned()),
                Ok(Err(e)) => Err(error_chain(&e)),
                Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(format!(
                    "returned: {} {}",
                    returned.reply_code, returned.reply_text
                )),
                Ok(Ok(other)) => Err(format!("not confirmed: {other:?}")),
            }
        }
        .await;
        if let Err(error) = stored {
            let delay = self.config.backoff.delay(attempts);
            tracing::error!(
                consumer = %self.queue,
                dead_letters = %self.dead_letter_queue,
                error,
                retry_in = ?delay,
                "a message given up could not be dead-lettered; it comes again"
            );
            tokio::time::sleep(delay).await;
            self.requeue(delivery).await?;
            totals.retried += 1;
            return Ok(());
        }
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| self.client_error("acknowledging a dead-lettered message", e))?;
        counts.remove(&message_key(delivery));
        log_given_up(
            &self.queue,
            delivery.routing_key.as_str(),
            event_id,
            attempts,
            &reason,
            &self.dead_letter_queue,
        );
        totals.dead_lettered += 1;
        Ok(())
    }
}

impl Sessions for RabbitConsumer {
    type Session = Session;
    /// Deliveries per message id, for queues that do not count them.
    type Kept = HashMap<String, u32>;

    fn consumer(&self) -> &str {
        &self.queue
    }

    fn describe(&self) -> String {
        RabbitConsumer::describe(self)
    }

    fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    async fn open(&self) -> Result<Session, BrokerError> {
        tokio::time::timeout(self.connect_timeout, RabbitConsumer::open(self))
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::Connect {
                    broker: self.describe(),
                    source: format!("no answer within {:?}", self.connect_timeout).into(),
                })
            })
    }

    async fn consume(
        &self,
        handler: &dyn Handler,
        session: &mut Session,
        shutdown: &mut (impl Future<Output = ()> + Send + Unpin),
        drain: bool,
        totals: &mut Consumed,
        failures: &mut u32,
        attempts: &mut HashMap<String, u32>,
    ) -> Result<(), BrokerError> {
        loop {
            let next =
                next_message(&mut session.deliveries, shutdown, drain, self.config.idle).await;
            let delivery = match next {
                Next::Shutdown => return Ok(()),
                Next::Idle => {
                    let queue = session
                        .channel
                        .queue_declare(
                            self.queue.as_str().into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await
                        .map_err(|e| self.client_error("asking what is left", e))?;
                    // Another consumer attached (or one whose connection is closing) may
                    // hold messages unacknowledged that come back: wait until it is gone.
                    if queue.message_count() == 0 && queue.consumer_count() <= 1 {
                        return Ok(());
                    }
                    continue;
                }
                Next::Ended => {
                    return Err(BrokerError::ConnectionLost {
                        broker: self.describe(),
                        unconfirmed: 0,
                    });
                }
                Next::Message(Err(error)) => return Err(self.client_error("consuming", error)),
                Next::Message(Ok(delivery)) => delivery,
            };
            *failures = 0;
            self.process(handler, session, delivery, shutdown, totals, attempts)
                .await?;
        }
    }

    async fn close(&self, mut session: Session, _ended_well: bool) {
        session.connection.close().await;
    }
}

/// What a message's deliveries are counted by: its `message_id`, else its payload's hash.
fn message_key(delivery: &AmqpDelivery) -> String {
    match delivery.properties.message_id() {
        Some(id) => id.to_string(),
        None => {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            delivery.data.hash(&mut hasher);
            delivery.routing_key.as_str().hash(&mut hasher);
            format!("#{:x}", hasher.finish())
        }
    }
}
