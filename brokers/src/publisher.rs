//! The publisher: a projection whose read model is a broker.

use std::{fmt, marker::PhantomData, sync::Arc};

use annals::{BoxError, EventStore, LogPosition, RecordedEvent};
use annals_projections::{EventFilter, Projection, ProjectionConfig, ProjectionRunner, ReadModel};

use crate::{Broker, BrokerModel, Message, message::subject_problem};

/// Publishes chosen events of the global log to a broker, on the projection engine: the
/// runner gives it a checkpoint, one owner at a time (fenced), a failure policy, a status and
/// blue/green generations like any projection.
///
/// Every event its filter accepts becomes one [`Message`] (payload, headers, the event id as
/// deduplication id) to the subject [`Broker::subject`] names; a batch's messages are
/// published pipelined, and the checkpoint moves past them only once the broker has
/// confirmed every one. Delivery is at least once, in each stream's order: after a crash or
/// an outage the messages since the checkpoint are published again, and the broker drops the
/// repeats where it can (JetStream's duplicate window); consumers should still drop repeats
/// by message id.
///
/// A rebuild (`runner.rebuild`) publishes every chosen event of the log again, from the
/// start; so does a first run over an existing log, unless [`Publisher::starting_after`]
/// says where to begin.
///
/// ```ignore
/// let nats = NatsPublisher::new("nats://127.0.0.1:4222", "ORDERS").with_subjects(Subjects::prefixed("orders"));
/// Publisher::new("orders-out", EventFilter::categories(["order"]), nats)
///     .add_to(&runner, MemoryReadModel::<()>::new("orders-out")?, ProjectionConfig::new())?;
/// ```
pub struct Publisher<B: Broker, C> {
    name: String,
    filter: EventFilter,
    broker: Arc<B>,
    after: Option<LogPosition>,
    _model: PhantomData<fn() -> C>,
}

impl<B: Broker, C> fmt::Debug for Publisher<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("name", &self.name)
            .field("filter", &self.filter)
            .field("broker", &self.broker.describe())
            .field("after", &self.after)
            .finish()
    }
}

impl<B: Broker, C: ReadModel> Publisher<B, C> {
    /// A publisher named `name` (the projection's name: its lease, status and read model)
    /// of the events `filter` accepts, to `broker`.
    pub fn new(name: impl Into<String>, filter: EventFilter, broker: B) -> Self {
        Self::shared(name, filter, Arc::new(broker))
    }

    /// [`Publisher::new`] with a broker shared with others.
    pub fn shared(name: impl Into<String>, filter: EventFilter, broker: Arc<B>) -> Self {
        Self {
            name: name.into(),
            filter,
            broker,
            after: None,
            _model: PhantomData,
        }
    }

    /// Publishes only events after `position` (the checkpoint still moves over the earlier
    /// ones): to start a publisher on an existing log from now on, pass the store's head.
    #[must_use]
    pub fn starting_after(mut self, position: LogPosition) -> Self {
        self.after = Some(position);
        self
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<B> {
        &self.broker
    }

    /// The read model to run this publisher into: `inner` keeps its checkpoints, refused
    /// messages stop it (see [`BrokerModel::with_refusal_policy`]).
    pub fn model(&self, inner: C) -> BrokerModel<B, C> {
        BrokerModel::new(self.broker.clone(), inner)
    }

    /// Starts the publisher in `runner`, its checkpoints kept in `inner`, refused messages
    /// following `config.policy` like failing events.
    ///
    /// # Errors
    /// As [`ProjectionRunner::add`].
    pub fn add_to<S: EventStore + Clone + 'static>(
        self,
        runner: &ProjectionRunner<S>,
        inner: C,
        config: ProjectionConfig,
    ) -> annals_projections::Result<()> {
        let model = self.model(inner).with_refusal_policy(config.policy.clone());
        runner.add(self, model, config)
    }

    /// The message for `event`, or why it cannot be published.
    ///
    /// # Errors
    /// The broker's subject for it cannot be used (empty, an empty token, whitespace or a
    /// wildcard).
    pub fn message(&self, event: &RecordedEvent) -> Result<Message, BoxError> {
        let subject = self.broker.subject(event);
        if let Some(problem) = subject_problem(&subject) {
            return Err(format!(
                "cannot publish event {} ({}): its subject {subject:?} is invalid: {problem}",
                event.event_id, event.event_type
            )
            .into());
        }
        Ok(Message::from_event(event, subject))
    }
}

impl<B: Broker, C: ReadModel> Projection for Publisher<B, C> {
    type Model = BrokerModel<B, C>;

    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        self.filter.clone()
    }

    fn handle(
        &self,
        event: &RecordedEvent,
        batch: &mut <Self::Model as ReadModel>::Batch,
    ) -> Result<(), BoxError> {
        if self.after.is_some_and(|after| event.position <= after) {
            return Ok(());
        }
        batch.publish(self.message(event)?);
        Ok(())
    }
}
