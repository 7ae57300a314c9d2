//! Reactors: log followers whose effects are commands, stored exactly once.

pub(crate) mod clock;
pub(crate) mod deadline;
pub(crate) mod saga;

use std::{future::Future, marker::PhantomData};

use annals::{
    Aggregate, AppendResult, BoxError, CommandContext, CommandError, Error as StoreError,
    EventStore, Executed, RecordedEvent, Repository, Retries, StreamAppend, TraceContext,
};
use tracing::{Instrument, field::Empty};
use uuid::Uuid;

use crate::{
    EventFilter, LookupKeys, ProjectionConfig, ProjectionRunner, ReadModel, Result,
    resilience::Dependency, runner::consumer::Consumer,
};

/// The scope under which reaction command ids are derived.
const COMMAND_SCOPE: &str = "annals.reactor.command";

/// A log follower that turns events into commands, each stored exactly once.
///
/// A [`Reactor`] runs on the same engine as projections ([`ProjectionRunner::add_reactor`]):
/// one owner at a time through a lease with fencing, a checkpoint committed in a read model
/// (any target: `SqliteTables` or `PgTables` of `annals-projections-sql` with no tables, Redis,
/// or [`MemoryReadModel`](crate::MemoryReadModel) for tests), the failure policy, the status
/// and `wait_for`.
///
/// Delivery is at least once: after a crash, or when a new owner takes over from one that
/// still runs, a reactor sees again the events after the last committed checkpoint. Its
/// effects are exactly once all the same, because every command a reaction issues gets an
/// id derived from (reactor, triggering event id, step) ([`Reaction::command`]), and the
/// events of an idempotent command get ids derived from that id: the store keeps each event
/// id once, and [`Repository::execute`](annals::Repository::execute) answers a repeated
/// command from what it stored the first time.
///
/// A reaction must therefore issue its commands in the same order each time it handles the
/// same event (the step number is the command's place in that order), and decide from the
/// event and from state it loads (not from a clock or a random number).
///
/// ```
/// use annals::{BoxError, EventStore, RecordedEvent};
/// use annals_projections::{EventFilter, Reaction, Reactor};
///
/// /// Greets every new customer (a command on the `mailbox` aggregate in a real app).
/// struct Welcome;
///
/// impl<S: EventStore + Clone + 'static> Reactor<S> for Welcome {
///     fn name(&self) -> &str {
///         "welcome"
///     }
///
///     fn filter(&self) -> EventFilter {
///         EventFilter::types(["CustomerRegistered"]).and_categories(["customer"])
///     }
///
///     async fn react(
///         &self,
///         event: &RecordedEvent,
///         reaction: &mut Reaction<'_, S>,
///     ) -> Result<(), BoxError> {
///         let context = reaction.command(); // idempotent, correlated, caused by `event`
///         let _ = (event, context);         // repository.execute(id, command, &context)
///         Ok(())
///     }
/// }
/// ```
///
/// Implement it generically over the store (`impl<S: EventStore + Clone + 'static>
/// Reactor<S> for MyReactor`) or for one store type.
pub trait Reactor<S: EventStore>: Send + Sync + 'static {
    /// The reactor's name: ASCII letters, digits, `_`, `-` and `.`, at most 100 bytes. It
    /// names the lease, the status, the checkpoint and the ids of the commands it issues, so
    /// renaming a reactor makes it issue its commands again (under new ids).
    fn name(&self) -> &str;

    /// The events this reactor wants. Others pass by (the checkpoint moves past them).
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    /// Reacts to one event: loads what it needs, issues commands through `reaction`, calls
    /// the outside world. Issue commands in the same order each time the same event is
    /// handled (see above).
    ///
    /// # Errors
    /// Any error: the reactor's [`FailurePolicy`](crate::FailurePolicy) decides (retry with
    /// backoff, park the event in the dead-letter list, or stop). The commands issued before
    /// the error stay stored; handling the event again finds them and does not repeat them.
    fn react(
        &self,
        event: &RecordedEvent,
        reaction: &mut Reaction<'_, S>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The outside dependencies this reactor calls (a bank, a payment gateway), whose
    /// guards ([`Dependency`]: breaker, bulkhead, failures) the reactor's status shows.
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
}

/// One reaction in progress: the triggering event, the store, and the ids of the commands
/// it issues.
#[derive(Debug)]
pub struct Reaction<'a, S> {
    reactor: &'a str,
    store: &'a S,
    event: &'a RecordedEvent,
    step: u32,
    trace: Option<TraceContext>,
}

impl<'a, S: EventStore> Reaction<'a, S> {
    /// A reaction of `reactor` to `event` (the runner makes these; tests may too). Its
    /// commands continue the event's trace context, if it has one.
    pub fn new(reactor: &'a str, store: &'a S, event: &'a RecordedEvent) -> Self {
        Self {
            reactor,
            store,
            event,
            step: 0,
            trace: event.metadata.trace.clone(),
        }
    }

    /// Sets the trace context of the span the reaction runs in; the commands it issues are
    /// its children. The runner sets the context of its `annals.reaction` span, a child of
    /// the event's.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The name of the reactor (or saga) reacting.
    pub fn reactor(&self) -> &str {
        self.reactor
    }

    /// The event being reacted to.
    pub fn event(&self) -> &RecordedEvent {
        self.event
    }

    /// The W3C trace context the reaction runs in (see [`with_trace`](Self::with_trace)):
    /// pass [`TraceContext::child`]'s `traceparent` to the outside services it calls.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// The event store.
    pub fn store(&self) -> &S {
        self.store
    }

    /// How many commands (and effect ids) this reaction has issued so far.
    pub fn step(&self) -> u32 {
        self.step
    }

    /// The id of the next effect: derived from (reactor, triggering event id, step), the
    /// same each time the event is handled. Each call takes the next step.
    ///
    /// Use it as the idempotency key of a call to the outside world (a payment gateway's
    /// `Idempotency-Key`), so a repeated reaction does not pay twice.
    pub fn effect_id(&mut self) -> Uuid {
        let id = annals::derive_id(
            COMMAND_SCOPE,
            &[
                self.reactor.as_bytes(),
                self.event.event_id.as_bytes(),
                &self.step.to_be_bytes(),
            ],
        );
        self.step += 1;
        id
    }

    /// The context of the next command: an idempotent command whose id is the next
    /// [`effect_id`](Reaction::effect_id), continuing the trigger's correlation (its
    /// correlation id, or its own id when it has none), with the trigger as causation, in the
    /// reaction's trace (the command's span is a child of the reaction's).
    pub fn command(&mut self) -> CommandContext {
        let id = self.effect_id();
        let context = CommandContext::caused_by(self.event).with_command_id(id);
        match &self.trace {
            Some(trace) => context.with_trace(trace.clone()),
            None => context,
        }
    }

    /// Runs `command` on the aggregate `id` with the next step's context
    /// ([`Reaction::command`]), under the repository's own retries. A command this reaction
    /// issued before (redelivery, a racing owner) is answered from the store, with
    /// [`Executed::already_applied`] set.
    ///
    /// # Errors
    /// As [`Repository::execute`].
    pub async fn execute<A: Aggregate>(
        &mut self,
        repository: &Repository<A, S>,
        id: &str,
        command: A::Command,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A::Command: Clone,
    {
        let context = self.command();
        repository.execute(id, command, &context).await
    }

    /// One command on several aggregates, appended atomically: `decide` is given the next
    /// step's context and returns the appends (from [`Repository::decide`] and
    /// [`annals::Decision::to_append`]); they are appended in one
    /// [`EventStore::append_multi`]. On a conflict `decide` is called again (with the same
    /// context) after a backoff, as `retries` allows; after a transient store error the same
    /// appends are sent again. A command this reaction appended before is answered by the
    /// store with the original results (its decisions carry the stored events again), so a
    /// repeated reaction appends nothing. Empty appends are left out; when every append is
    /// empty nothing is sent and `Ok(vec![])` is returned.
    ///
    /// # Errors
    /// `decide`'s error; the store's, once `retries` are used up.
    pub async fn execute_multi<F, Fut>(
        &mut self,
        retries: &Retries,
        mut decide: F,
    ) -> Result<Vec<AppendResult>, BoxError>
    where
        F: FnMut(CommandContext) -> Fut + Send,
        Fut: Future<Output = Result<Vec<StreamAppend>, BoxError>> + Send,
    {
        let context = self.command();
        let mut conflicts = 0u32;
        loop {
            let appends: Vec<StreamAppend> = decide(context.clone())
                .await?
                .into_iter()
                .filter(|a| !a.events.is_empty())
                .collect();
            if appends.is_empty() {
                return Ok(Vec::new());
            }
            let mut transient = 0u32;
            let outcome = loop {
                match self.store.append_multi(appends.clone()).await {
                    Err(e) if e.is_transient() && transient < retries.max_transient() => {
                        retries.wait(transient).await;
                        transient += 1;
                    }
                    other => break other,
                }
            };
            match outcome {
                Ok(results) => return Ok(results),
                Err(StoreError::Conflict { .. }) if conflicts < retries.max_conflicts() => {
                    retries.wait(conflicts).await;
                    conflicts += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A reactor as a consumer of the engine.
struct Reacting<R, S, M> {
    reactor: R,
    name: String,
    store: S,
    model: PhantomData<fn() -> M>,
}

impl<R, S, M> Consumer for Reacting<R, S, M>
where
    R: Reactor<S>,
    S: EventStore + Clone + 'static,
    M: ReadModel,
{
    type Model = M;

    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        self.reactor.filter()
    }

    fn lookups(&self, _event: &RecordedEvent, _keys: &mut LookupKeys) {}

    fn dependencies(&self) -> Vec<Dependency> {
        self.reactor.dependencies()
    }

    fn builds_models(&self) -> bool {
        false
    }

    fn detached(&self) -> bool {
        true
    }

    async fn handle(
        &self,
        event: &RecordedEvent,
        _batch: &mut <M as ReadModel>::Batch,
    ) -> Result<(), BoxError> {
        let span = reaction_span(&self.name, event);
        // Always made: the commands of the reaction carry it, subscriber or not.
        let trace = TraceContext::for_span(&span, event.metadata.trace.as_ref());
        let mut reaction = Reaction::new(&self.name, &self.store, event).with_trace(trace);
        self.reactor
            .react(event, &mut reaction)
            .instrument(span)
            .await
    }
}

/// The span of one reaction (`annals.reaction`, at debug): the reactor and the triggering
/// event's stream, position, type, id, correlation and causation. Its parent is the event's
/// trace context (a new trace for an event without one).
fn reaction_span(reactor: &str, event: &RecordedEvent) -> tracing::Span {
    tracing::debug_span!(
        "annals.reaction",
        reactor,
        stream = %event.stream_id,
        position = %event.position,
        event_type = %event.event_type,
        event_id = %event.event_id,
        correlation_id = event.metadata.correlation_id.map(tracing::field::display),
        causation_id = event.metadata.causation_id.map(tracing::field::display),
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
    )
}

impl<S: EventStore + Clone + 'static> ProjectionRunner<S> {
    /// Starts running `reactor`, keeping its checkpoint in `checkpoints` (a read model opened
    /// for the reactor's name; its batches stay empty). Must be called inside a tokio
    /// runtime.
    ///
    /// A new reactor starts at the beginning of the log (its commands for events it handled
    /// under another process are found, not repeated). [`rebuild`](ProjectionRunner::rebuild)
    /// does not apply to reactors.
    ///
    /// # Errors
    /// As [`ProjectionRunner::add`].
    pub fn add_reactor<R, M>(
        &self,
        reactor: R,
        checkpoints: M,
        config: ProjectionConfig,
    ) -> Result<()>
    where
        R: Reactor<S>,
        M: ReadModel,
    {
        let name = reactor.name().to_owned();
        let consumer = Reacting {
            reactor,
            name,
            store: self.store().clone(),
            model: PhantomData,
        };
        self.add_consumer(consumer, checkpoints, config, false)
    }
}
