//! Sagas (process managers): a business process across aggregates, with its own
//! event-sourced state per instance.
//!
//! A [`Saga`] is a reactor with memory. Each event it wants belongs to one instance, named
//! by a key the event carries (an order id, a payout id): [`Saga::observe`] says which, and
//! what the event means as a command on the instance's state, an [`Aggregate`] stored like
//! any other in the stream `{State::TYPE}-{key}` (durable, auditable, replayable). The
//! runner records that, then calls [`Saga::act`] with what was recorded, to issue the next
//! commands (or compensations), schedule [deadlines](crate::Deadlines) and call the outside
//! world. An instance ends when its state says so (and then records nothing more).
//!
//! Recording and acting are steps of one reaction, so both happen once per event however
//! often it is delivered: a redelivered event finds its record already stored
//! ([`Executed::already_applied`]), and `act` runs again with the same recorded events and
//! issues the same commands, which find themselves stored too.

use std::{future::Future, time::Duration};

use annals::{Aggregate, BoxError, EventStore, Executed, RecordedEvent, Repository, Retries};

use crate::{
    EventFilter, ProjectionConfig, ProjectionRunner, Reaction, Reactor, ReadModel, Result,
};

/// What an event means for a saga: the instance it belongs to (its correlation key) and the
/// command it is for that instance's state.
#[derive(Debug, Clone)]
pub struct Observed<A: Aggregate> {
    /// The instance's key (an order id): its state lives in the stream `{A::TYPE}-{key}`.
    pub key: String,
    /// The command on the instance's state.
    pub command: A::Command,
}

impl<A: Aggregate> Observed<A> {
    /// `command` for the instance `key`.
    pub fn new(key: impl Into<String>, command: A::Command) -> Self {
        Self {
            key: key.into(),
            command,
        }
    }
}

/// A process manager whose state is event-sourced per instance.
pub trait Saga<S: EventStore>: Send + Sync + 'static {
    /// The state of one instance: its events are the saga's record of what happened.
    type State: Aggregate;

    /// The saga's name (as [`Reactor::name`]).
    fn name(&self) -> &str;

    /// The events the saga listens to, of every aggregate involved (and fired deadlines:
    /// [`DEADLINE_CATEGORY`](crate::DEADLINE_CATEGORY)).
    fn filter(&self) -> EventFilter;

    /// The instance `event` belongs to and the command it means for that instance's state;
    /// `None` when it concerns no instance.
    ///
    /// # Errors
    /// An event that cannot be read (the failure policy decides).
    fn observe(&self, event: &RecordedEvent) -> Result<Option<Observed<Self::State>>, BoxError>;

    /// Acts on what the instance `key` recorded for the current event (`recorded.events`;
    /// `recorded.state` is the instance's state now): issues commands through `reaction`,
    /// in the same order each time for the same recorded events.
    ///
    /// # Errors
    /// Any error: the failure policy decides; the commands issued before it stay stored.
    fn act(
        &self,
        key: &str,
        recorded: &Executed<Self::State>,
        reaction: &mut Reaction<'_, S>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The outside dependencies the saga calls, shown in its status.
    fn dependencies(&self) -> Vec<crate::resilience::Dependency> {
        Vec::new()
    }
}

/// A saga as a reactor: records, then acts.
struct SagaReactor<G: Saga<S>, S: EventStore> {
    saga: G,
    instances: Repository<G::State, S>,
}

impl<G, S> Reactor<S> for SagaReactor<G, S>
where
    G: Saga<S>,
    S: EventStore + Clone + 'static,
    <G::State as Aggregate>::Command: Clone + Sync,
{
    fn name(&self) -> &str {
        self.saga.name()
    }

    fn filter(&self) -> EventFilter {
        self.saga.filter()
    }

    fn dependencies(&self) -> Vec<crate::resilience::Dependency> {
        self.saga.dependencies()
    }

    async fn react(
        &self,
        event: &RecordedEvent,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let Some(Observed { key, command }) = self.saga.observe(event)? else {
            return Ok(());
        };
        let recorded = reaction
            .execute(&self.instances, &key, command)
            .await
            .map_err(|e| -> BoxError { Box::new(e) })?;
        self.saga.act(&key, &recorded, reaction).await
    }
}

impl<S: EventStore + Clone + 'static> ProjectionRunner<S> {
    /// Starts running `saga`, keeping its checkpoint in `checkpoints` (as
    /// [`add_reactor`](ProjectionRunner::add_reactor)). Its instances' state is recorded
    /// with conflict retries (two events of one instance handled by racing owners).
    ///
    /// # Errors
    /// As [`ProjectionRunner::add`].
    pub fn add_saga<G, M>(&self, saga: G, checkpoints: M, config: ProjectionConfig) -> Result<()>
    where
        G: Saga<S>,
        <G::State as Aggregate>::Command: Clone + Sync,
        M: ReadModel,
    {
        let retries = Retries::none()
            .conflicts(20)
            .transient(3)
            .with_backoff(annals::Backoff::new(
                Duration::from_millis(5),
                Duration::from_secs(1),
            ))
            .with_sleep(|d| Box::pin(tokio::time::sleep(d)));
        let instances = Repository::new(self.store().clone()).with_retries(retries);
        self.add_reactor(SagaReactor { saga, instances }, checkpoints, config)
    }
}
