//! A given/when/then kit for sagas and reactors: events in, the events their commands
//! appended out, deadlines fired by a clock the test moves.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), annals::BoxError> {
//! use annals_projections::testing::SagaTest;
//! let mut test = SagaTest::new()?;
//! // test.saga(MySaga::new(test.deadlines().clone()))?;
//! // test.given::<Order>("o1", [OrderEvent::Placed { .. }]).await?;
//! // let then = test.when::<Payment>("p1", [PaymentEvent::Failed { .. }]).await?;
//! // assert_eq!(then.of::<Order>()?, [("o1".into(), OrderEvent::Cancelled)]);
//! let then = test.advance(std::time::Duration::from_secs(30)).await?;
//! assert!(then.events().is_empty());
//! # Ok(()) }
//! ```

use std::time::Duration;

use annals::{
    Aggregate, BoxError, DomainEvent, EventStore, ExpectedVersion, InMemoryEventStore, LogPosition,
    LogRead, RecordedEvent, StreamId,
};
use futures::TryStreamExt;

use crate::{
    Deadlines, ManualClock, MemoryReadModel, ProjectionConfig, ProjectionRunner, Reactor, Saga,
};

/// How long one step of a test may take before it fails.
const SETTLE: Duration = Duration::from_secs(30);

/// A saga (or reactor) under test, on an [`InMemoryEventStore`] with a [`ManualClock`].
#[derive(Debug)]
pub struct SagaTest {
    store: InMemoryEventStore,
    clock: ManualClock,
    deadlines: Deadlines,
    runner: ProjectionRunner<InMemoryEventStore>,
    seen: Option<LogPosition>,
}

/// What the sagas and reactors appended after one `given`, `when` or `advance`.
#[derive(Debug, Clone)]
pub struct Then {
    events: Vec<RecordedEvent>,
}

impl Then {
    /// Every appended event, in log order.
    pub fn events(&self) -> &[RecordedEvent] {
        &self.events
    }

    /// The appended events of aggregate `A` (by stream category), decoded, with the
    /// aggregate id each went to.
    ///
    /// # Errors
    /// An event of `A`'s streams that does not decode.
    pub fn of<A: Aggregate>(&self) -> Result<Vec<(String, A::Event)>, BoxError> {
        self.events
            .iter()
            .filter(|e| e.stream_id.category() == A::TYPE)
            .map(|e| Ok((e.stream_id.instance().to_owned(), A::Event::decode(e)?)))
            .collect()
    }

    /// The stored type names of every appended event, in log order.
    pub fn types(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.event_type.as_str()).collect()
    }
}

impl SagaTest {
    /// An empty store, a manual clock standing at the current time, and the deadline timer.
    ///
    /// # Errors
    /// Outside a tokio runtime.
    pub fn new() -> Result<Self, BoxError> {
        let store = InMemoryEventStore::new();
        let clock = ManualClock::default();
        let deadlines = Deadlines::new(clock.clone());
        let runner = ProjectionRunner::new(store.clone());
        runner.add_deadlines(&deadlines)?;
        Ok(Self {
            store,
            clock,
            deadlines,
            runner,
            seen: None,
        })
    }

    /// The store (to read streams, or to append by hand).
    pub fn store(&self) -> &InMemoryEventStore {
        &self.store
    }

    /// The deadlines, due by the test's clock: give them to the saga under test.
    pub fn deadlines(&self) -> &Deadlines {
        &self.deadlines
    }

    /// The test's clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// The runner (for statuses).
    pub fn runner(&self) -> &ProjectionRunner<InMemoryEventStore> {
        &self.runner
    }

    /// Runs `saga` in the test (several sagas and reactors may run together), stopping at
    /// the first failing event.
    ///
    /// # Errors
    /// As [`ProjectionRunner::add_saga`].
    pub fn saga<G>(&mut self, saga: G) -> Result<&mut Self, BoxError>
    where
        G: Saga<InMemoryEventStore>,
        <G::State as Aggregate>::Command: Clone + Sync,
    {
        self.saga_with(saga, ProjectionConfig::new())
    }

    /// Runs `saga` with `config` (a failure policy that retries, say).
    ///
    /// # Errors
    /// As [`ProjectionRunner::add_saga`].
    pub fn saga_with<G>(&mut self, saga: G, config: ProjectionConfig) -> Result<&mut Self, BoxError>
    where
        G: Saga<InMemoryEventStore>,
        <G::State as Aggregate>::Command: Clone + Sync,
    {
        let checkpoints = MemoryReadModel::<()>::new(saga.name())?;
        self.runner.add_saga(saga, checkpoints, config)?;
        Ok(self)
    }

    /// Runs `reactor` in the test, stopping at the first failing event.
    ///
    /// # Errors
    /// As [`ProjectionRunner::add_reactor`].
    pub fn reactor<R: Reactor<InMemoryEventStore>>(
        &mut self,
        reactor: R,
    ) -> Result<&mut Self, BoxError> {
        self.reactor_with(reactor, ProjectionConfig::new())
    }

    /// Runs `reactor` with `config`.
    ///
    /// # Errors
    /// As [`ProjectionRunner::add_reactor`].
    pub fn reactor_with<R: Reactor<InMemoryEventStore>>(
        &mut self,
        reactor: R,
        config: ProjectionConfig,
    ) -> Result<&mut Self, BoxError> {
        let checkpoints = MemoryReadModel::<()>::new(reactor.name())?;
        self.runner.add_reactor(reactor, checkpoints, config)?;
        Ok(self)
    }

    /// Appends `events` to the stream of aggregate `A`'s instance `id` (as if some command
    /// had), then lets the sagas react until nothing more happens.
    ///
    /// # Errors
    /// The store's; a saga that stops or fails; nothing settling within 30 s.
    pub async fn given<A: Aggregate>(
        &mut self,
        id: &str,
        events: impl IntoIterator<Item = A::Event>,
    ) -> Result<Then, BoxError> {
        let stream = StreamId::for_aggregate(A::TYPE, id)?;
        let new_events = events
            .into_iter()
            .map(|e| e.to_new_event())
            .collect::<annals::Result<Vec<_>>>()?;
        let appended = self
            .store
            .append(&stream, ExpectedVersion::Any, new_events)
            .await?;
        self.seen = self.seen.max(Some(appended.last_position));
        self.settle().await
    }

    /// The same as [`given`](SagaTest::given): the event under test.
    ///
    /// # Errors
    /// As [`SagaTest::given`].
    pub async fn when<A: Aggregate>(
        &mut self,
        id: &str,
        events: impl IntoIterator<Item = A::Event>,
    ) -> Result<Then, BoxError> {
        self.given::<A>(id, events).await
    }

    /// Moves the clock forward by `by` and lets due deadlines fire and the sagas react.
    ///
    /// # Errors
    /// As [`SagaTest::given`].
    pub async fn advance(&mut self, by: Duration) -> Result<Then, BoxError> {
        self.clock.advance(by);
        self.settle().await
    }

    /// Runs until the log stops growing and no deadline is due; returns what was appended
    /// after the last look.
    ///
    /// # Errors
    /// As [`SagaTest::given`].
    pub async fn settle(&mut self) -> Result<Then, BoxError> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let head = self.store.head_position().await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.runner.catch_up(left).await?;
            // A due deadline is fired by the timer, which appends: wait for it.
            while self.deadlines.due_now() > 0 {
                if tokio::time::Instant::now() >= deadline {
                    return Err("deadlines were due and did not fire within 30 s".into());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if self.store.head_position().await? == head {
                break;
            }
        }
        let after = self.seen.unwrap_or(LogPosition::START);
        let events: Vec<RecordedEvent> = self
            .store
            .read_all(LogRead::after(after))
            .try_collect()
            .await?;
        if let Some(last) = events.last() {
            self.seen = Some(last.position);
        }
        Ok(Then { events })
    }
}
