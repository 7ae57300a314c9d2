//! The contract between a publisher and a broker.

use std::future::Future;

use annals::RecordedEvent;

use crate::{BrokerError, Message};

/// A message broker a [`Publisher`](crate::Publisher) publishes to: where an event goes
/// (its subject or routing key), how a session is opened, and how a run of messages is
/// published and confirmed.
///
/// [`NatsPublisher`](crate::NatsPublisher) and [`RabbitPublisher`](crate::RabbitPublisher)
/// implement it, and [`MemoryBroker`](crate::MemoryBroker) for tests. A bench drives the
/// publish path directly: [`Broker::connect`] once, then [`Broker::publish`] per batch of
/// [`Message::from_event`]s.
pub trait Broker: Send + Sync + 'static {
    /// An open connection, ready to publish.
    type Session: Send + 'static;

    /// Names the broker (and its stream or exchange) in errors and logs.
    fn describe(&self) -> String;

    /// The subject (NATS) or routing key (AMQP) of `event`.
    fn subject(&self, event: &RecordedEvent) -> String;

    /// Opens a session: connects, and checks or declares what publishing needs (the
    /// JetStream stream, the exchange).
    ///
    /// # Errors
    /// [`BrokerError::Connect`] and other transient errors while the broker is down.
    fn connect(&self) -> impl Future<Output = Result<Self::Session, BrokerError>> + Send;

    /// Whether `session` can still be used (its connection has not broken).
    fn is_open(&self, session: &Self::Session) -> bool;

    /// Publishes `messages` in order on one connection, pipelined (no round trip per
    /// message), and waits until the broker has confirmed or refused every one.
    ///
    /// Messages stored by the broker on one session are a prefix of the ones sent, in
    /// order, apart from the refused ones: a broken connection fails the call, and the
    /// session is not used again.
    ///
    /// # Errors
    /// Transport failures (a lost connection, a confirm that did not come in time): some
    /// messages may have been stored; the caller publishes them all again on a new
    /// session (the broker drops repeats by event id where it can).
    fn publish(
        &self,
        session: &mut Self::Session,
        messages: &[Message],
    ) -> impl Future<Output = Result<Published, BrokerError>> + Send;
}

/// What the broker said about a run of published messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Messages stored.
    pub stored: usize,
    /// Messages the broker recognised as repeats of ones it had stored (JetStream's
    /// duplicate window), and did not store again.
    pub duplicates: usize,
    /// Messages refused (unroutable, negatively acknowledged, rejected by the stream), in
    /// order.
    pub refused: Vec<Refusal>,
}

/// One refused message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Its index in the published slice.
    pub index: usize,
    /// What the broker said.
    pub reason: String,
}
