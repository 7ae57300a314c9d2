//! Publishers for Annals: the global log is an outbox already (every event committed once,
//! in order, with a stable id), and a [`Publisher`] follows it on the projection engine
//! (checkpoint, one fenced owner, failure policy, status) and publishes the events it chooses
//! to a broker: NATS JetStream ([`NatsPublisher`]) or RabbitMQ ([`RabbitPublisher`]).
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

mod broker;
mod error;
mod memory;
mod message;
mod model;
mod nats;
mod publisher;
mod rabbit;

pub use broker::{Broker, Published, Refusal};
pub use error::BrokerError;
pub use memory::{MemoryBroker, MemorySession};
pub use message::{Message, Subjects, TraceHeaders, trace_context};
pub use model::{BrokerBatch, BrokerModel, BrokerWriter};
pub use nats::{NatsPublisher, NatsSession};
pub use publisher::Publisher;
pub use rabbit::{RabbitPublisher, RabbitSession};

/// The names of the headers every published message carries (NATS headers, AMQP header
/// table), beside the broker's own deduplication id (`Nats-Msg-Id`, AMQP `message_id`) set to
/// the event id.
pub mod headers {
    /// The event's stored type.
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
    /// The correlation id of the event's metadata, when set.
    pub const CORRELATION_ID: &str = "Annals-Correlation-Id";
    /// The causation id of the event's metadata, when set.
    pub const CAUSATION_ID: &str = "Annals-Causation-Id";
    /// The W3C `traceparent`, when the event carries one (see
    /// [`trace_context`](crate::trace_context)).
    pub const TRACEPARENT: &str = "traceparent";
    /// The W3C `tracestate`, when the event carries one.
    pub const TRACESTATE: &str = "tracestate";
}
