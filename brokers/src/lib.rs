//! Publishers and consumers for Annals: the global log is an outbox already (every event
//! committed once, in order, with a stable id), and a [`Publisher`] follows it on the
//! projection engine (checkpoint, one fenced owner, failure policy, status) and publishes the
//! events it chooses to a broker: NATS JetStream ([`NatsPublisher`]) or RabbitMQ
//! ([`RabbitPublisher`]). On the other side, [`NatsConsumer`] (a durable pull consumer) and
//! [`RabbitConsumer`] (a durable queue bound to the topic exchange) hand each message, its
//! headers read back into a [`Delivery`], to a [`Handler`], and acknowledge it only after the
//! handler returned `Ok`.
//!
//! Delivery is at least once and in each stream's order; the event id is the broker's
//! deduplication id (`Nats-Msg-Id`, AMQP `message_id`), and the checkpoint moves past a batch
//! only after the broker has confirmed each of its messages. A broker outage shows in the
//! runner's status as `Retrying` with the broker's error, and the batch is published again
//! once the broker is back; a message the broker refuses follows the failure policy.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use annals::InMemoryEventStore;
//! use annals_brokers::{NatsPublisher, Publisher, Subjects};
//! use annals_projections::{EventFilter, MemoryReadModel, ProjectionConfig, ProjectionRunner};
//!
//! let runner = ProjectionRunner::new(InMemoryEventStore::new());
//! let nats = NatsPublisher::new("nats://127.0.0.1:4222", "ORDERS")
//!     .with_subjects(Subjects::prefixed("orders"));
//! // The checkpoint lives in the inner read model: a durable one (SqliteTables, PgTables,
//! // Redis) resumes after a restart; an in-memory one publishes the log again.
//! Publisher::new("orders-out", EventFilter::categories(["order"]), nats).add_to(
//!     &runner,
//!     MemoryReadModel::<()>::new("orders-out")?,
//!     ProjectionConfig::new(),
//! )?;
//! # Ok(()) }
//! ```
//!
//! # Consuming
//!
//! A handler gets the event (id, type, schema version, stream and version, position,
//! correlation and causation ids, payload, the trace context) and runs in an
//! `annals.consume` span whose parent is the message's trace context, so one trace runs from
//! the command that appended the event to the handler. A handler error has the message
//! delivered again after a backoff; after [`ConsumerConfig::with_max_deliveries`] failed
//! deliveries it goes to a dead-letter subject or queue ([`Poison`]), never silently
//! dropped. Delivery is at least once: make the effect idempotent by the event id, e.g. with
//! an inbox of `annals-inbox`, which records the id in the transaction of the effect.
//!
//! ```no_run
//! # async fn run(inbox: annals_inbox::SqliteInbox) -> Result<(), Box<dyn std::error::Error>> {
//! use annals_brokers::{ConsumerConfig, Delivery, NatsConsumer};
//!
//! let consumer = NatsConsumer::new("nats://127.0.0.1:4222", "ORDERS", "billing")
//!     .with_filter_subject("orders.order.>")
//!     .with_config(ConsumerConfig::new().with_max_deliveries(5));
//! consumer
//!     .run(
//!         move |delivery: Delivery| {
//!             let inbox = inbox.clone();
//!             async move {
//!                 inbox
//!                     .process(delivery.event_id, |tx| {
//!                         Box::pin(async move {
//!                             // The effect, in the transaction that records the id.
//!                             sqlx::query("INSERT INTO invoices (event) VALUES (?1)")
//!                                 .bind(delivery.event_id)
//!                                 .execute(&mut **tx)
//!                                 .await?;
//!                             Ok(())
//!                         })
//!                     })
//!                     .await?;
//!                 Ok(())
//!             }
//!         },
//!         async { tokio::signal::ctrl_c().await.ok(); },
//!     )
//!     .await?;
//! # Ok(()) }
//! ```

mod broker;
mod consumer;
mod error;
mod memory;
mod message;
mod model;
mod nats;
mod nats_consumer;
mod publisher;
mod rabbit;
mod rabbit_consumer;

pub use broker::{Broker, Published, Refusal};
pub use consumer::{Consumed, ConsumerConfig, Delivery, Handler, Poison, dead_letter_headers};
pub use error::BrokerError;
pub use memory::{MemoryBroker, MemorySession};
pub use message::{Message, Subjects, TraceHeaders, trace_context};
pub use model::{BrokerBatch, BrokerModel, BrokerWriter};
pub use nats::{NatsPublisher, NatsSession};
pub use nats_consumer::NatsConsumer;
pub use publisher::Publisher;
pub use rabbit::{RabbitPublisher, RabbitSession};
pub use rabbit_consumer::RabbitConsumer;

/// The names of the headers every published message carries (NATS headers, AMQP header
/// table), beside the broker's own deduplication id (`Nats-Msg-Id`, AMQP `message_id`) set to
/// the event id.
///
/// AMQP messages carry the event type and the correlation id in their `type` and
/// `correlation_id` properties instead of the [`EVENT_TYPE`](headers::EVENT_TYPE) and
/// [`CORRELATION_ID`](headers::CORRELATION_ID) headers (each fact once: RabbitMQ decodes and
/// stores every field of every persistent message); [`RabbitConsumer`] reads either.
pub mod headers {
    /// The event's stored type (AMQP: the `type` property).
    pub const EVENT_TYPE: &str = "Annals-Event-Type";
    /// The payload's schema version.
    pub const SCHEMA_VERSION: &str = "Annals-Schema-Version";
    /// The event's stream.
    pub const STREAM: &str = "Annals-Stream";
    /// The event's version in its stream (consumers can check order and drop repeats with
    /// it).
    pub const STREAM_VERSION: &str = "Annals-Stream-Version";
    /// The event's position in the global log, `commit:sequence`.
    pub const POSITION: &str = "Annals-Position";
    /// The correlation id of the event's metadata, when set (AMQP: the `correlation_id`
    /// property).
    pub const CORRELATION_ID: &str = "Annals-Correlation-Id";
    /// The causation id of the event's metadata, when set.
    pub const CAUSATION_ID: &str = "Annals-Causation-Id";
    /// The W3C `traceparent`, when the event carries one (see
    /// [`trace_context`](crate::trace_context)).
    pub const TRACEPARENT: &str = "traceparent";
    /// The W3C `tracestate`, when the event carries one.
    pub const TRACESTATE: &str = "tracestate";
}
