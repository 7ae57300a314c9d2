//! Repository behaviour: conflict retries, the version-checked cache, metadata flow, atomic
//! decisions across aggregates.

use std::sync::atomic::{AtomicUsize, Ordering};

use annals::testing::{Counter, CounterCommand, CounterEvent, Intercept, Intercepted, new_event};
use annals::{
    AppendResult, CommandContext, CommandError, EventStore, ExpectedVersion, InMemoryEventStore,
    LogRead, RecordedEvent, Repository, Result, Snapshot, StreamAppend, StreamId, StreamRead,
};
use futures::TryStreamExt;
use serde_json::json;
use uuid::Uuid;

/// Lets another writer slip an event into the target stream just before each of the first
/// `n` appends.
#[derive(Debug, Default)]
struct Interfere(AtomicUsize);

impl Intercept<InMemoryEventStore> for Interfere {
    async fn append_multi(
        &self,
        inner: &InMemoryEventStore,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>> {
        let left = self.0.load(Ordering::SeqCst);
        if left > 0 {
            self.0.store(left - 1, Ordering::SeqCst);
            let intruder = CounterEvent::Added { amount: 100 };
            let event = annals::DomainEvent::to_new_event(&intruder)?;
            inner
                .append(&appends[0].stream, ExpectedVersion::Any, vec![event])
                .await?;
        }
        inner.append_multi(appends).await
    }
}

fn interfering(times: usize) -> Intercepted<InMemoryEventStore, Interfere> {
    Intercepted::new(
        InMemoryEventStore::new(),
        Interfere(AtomicUsize::new(times)),
    )
}

#[tokio::test]
async fn a_conflict_without_retries_is_reported_and_writes_nothing() {
    let repo = Repository::<Counter, _>::new(interfering(1));
    let err = repo
        .execute("c", CounterCommand::Add(1), &CommandContext::new())
        .await
        .unwrap_err();
    match err {
        CommandError::Conflict {
            expected, actual, ..
        } => {
            assert_eq!(expected, ExpectedVersion::Exact(0));
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let state = repo.load("c").await.unwrap();
    assert_eq!(
        (state.state.total, state.version),
        (100, 1),
        "only the intruder"
    );
}

#[tokio::test]
async fn conflicts_are_retried_with_a_fresh_decision() {
    let repo = Repository::<Counter, _>::new(interfering(2)).with_conflict_retries(2);
    let done = repo
        .execute("c", CounterCommand::Add(1), &CommandContext::new())
        .await
        .unwrap();
    assert_eq!(done.version, 3);
    assert_eq!(done.state.total, 201);

    let repo = Repository::<Counter, _>::new(interfering(3)).with_conflict_retries(2);
    let err = repo
        .execute("c", CounterCommand::Add(1), &CommandContext::new())
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "retries are bounded: {err:?}");
}

#[tokio::test]
async fn a_stale_cache_is_reloaded_without_losing_the_other_writer() {
    let store = InMemoryEventStore::new();
    let cached = Repository::<Counter, _>::new(store.clone()).with_cache(10);
    let other = Repository::<Counter, _>::new(store.clone());
    let ctx = CommandContext::new();
    cached
        .execute("c", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    other
        .execute("c", CounterCommand::Add(10), &ctx)
        .await
        .unwrap();
    // The cache still says version 1: the append conflicts, the cache is dropped and the
    // command decided again on the real state, with no retries configured.
    let done = cached
        .execute("c", CounterCommand::Add(100), &ctx)
        .await
        .unwrap();
    assert_eq!((done.state.total, done.version), (111, 3));
    // And the cache now serves the new state.
    let again = cached
        .execute("c", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    assert_eq!((again.state.total, again.version), (112, 4));
    let stored = cached.load("c").await.unwrap();
    assert_eq!((stored.state.total, stored.version), (112, 4));
}

#[tokio::test]
async fn a_rejection_or_no_op_on_a_stale_cache_is_decided_again_on_the_stored_state() {
    let store = InMemoryEventStore::new();
    let cached = Repository::<Counter, _>::new(store.clone()).with_cache(10);
    let other = Repository::<Counter, _>::new(store.clone());
    let ctx = CommandContext::new();
    cached
        .execute("c", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    cached
        .execute("c", CounterCommand::Reset, &ctx)
        .await
        .unwrap();
    other
        .execute("c", CounterCommand::Add(50), &ctx)
        .await
        .unwrap();
    // The cache says total 0 at version 2; the store holds 50 at version 3.
    let taken = cached
        .execute("c", CounterCommand::Take(30), &ctx)
        .await
        .expect("the stored state allows it");
    assert_eq!((taken.state.total, taken.version), (20, 4));

    // Now the cache and the store agree on 0 at version 5; another writer adds 7.
    cached
        .execute("c", CounterCommand::Take(20), &ctx)
        .await
        .unwrap();
    other
        .execute("c", CounterCommand::Add(7), &ctx)
        .await
        .unwrap();
    // On the cached 0 a reset is a no-op; on the stored 7 it is not.
    let reset = cached
        .execute("c", CounterCommand::Reset, &ctx)
        .await
        .unwrap();
    assert_eq!(
        reset.events,
        [CounterEvent::Reset],
        "not a no-op on the stored 7"
    );
    assert_eq!(cached.load("c").await.unwrap().state.total, 0);
}

#[tokio::test]
async fn a_rejected_command_appends_nothing_and_keeps_its_error() {
    let repo = Repository::<Counter, _>::new(InMemoryEventStore::new());
    let err = repo
        .execute("c", CounterCommand::Add(0), &CommandContext::new())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CommandError::Rejected(annals::testing::CounterError::NotPositive(0))
    ));
    assert_eq!(err.to_string(), "amount must be positive, got 0");
    assert!(!err.is_conflict() && !err.is_transient());
    assert_eq!(repo.store().head_position().await.unwrap(), None);
}

#[tokio::test]
async fn metadata_keeps_the_correlation_and_names_the_command() {
    let repo = Repository::<Counter, _>::new(InMemoryEventStore::new());
    let correlation = Uuid::now_v7();
    let ctx = CommandContext::new()
        .with_correlation_id(correlation)
        .with_custom("user", json!("ada"));
    repo.execute("c", CounterCommand::Add(2), &ctx)
        .await
        .unwrap();
    let events: Vec<RecordedEvent> = repo
        .store()
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap();
    let meta = &events[0].metadata;
    assert_eq!(meta.correlation_id, Some(correlation));
    assert_eq!(meta.causation_id, Some(ctx.command_id));
    assert_eq!(meta.custom["user"], json!("ada"));
    assert!(meta.occurred_at.is_some());
}

#[tokio::test]
async fn decisions_on_two_aggregates_append_atomically() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    let ctx = CommandContext::new();
    repo.execute("a", CounterCommand::Add(5), &ctx)
        .await
        .unwrap();
    let a = repo.decide("a", CounterCommand::Reset, &ctx).await.unwrap();
    let b = repo
        .decide("b", CounterCommand::Add(5), &ctx)
        .await
        .unwrap();
    assert_eq!(a.state.total, 0);
    // Another writer moves b first: the whole pair fails.
    store
        .append(
            &b.stream,
            ExpectedVersion::Any,
            vec![new_event("Reset", json!({}))],
        )
        .await
        .unwrap();
    let err = store
        .append_multi(vec![a.to_append(), b.to_append()])
        .await
        .unwrap_err();
    assert!(err.is_conflict());
    assert_eq!(repo.load("a").await.unwrap().state.total, 5, "a untouched");
    let b = repo
        .decide("b", CounterCommand::Add(5), &ctx)
        .await
        .unwrap();
    let results = store
        .append_multi(vec![a.to_append(), b.to_append()])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(repo.load("a").await.unwrap().state.total, 0);
    assert_eq!(repo.load("b").await.unwrap().state.total, 5);
}

/// Fails the first `failures` appends with a transient error, half of them after the append
/// committed (its answer lost on the way back). Clones share everything.
#[derive(Debug, Clone, Default)]
struct LoseAnswers {
    failures: std::sync::Arc<AtomicUsize>,
    calls: std::sync::Arc<AtomicUsize>,
}

impl Intercept<InMemoryEventStore> for LoseAnswers {
    async fn append_multi(
        &self,
        inner: &InMemoryEventStore,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            if call.is_multiple_of(2) {
                // Committed, but the caller never hears so.
                inner.append_multi(appends).await?;
            }
            return Err(annals::Error::backend(true, "connection reset by peer"));
        }
        inner.append_multi(appends).await
    }
}

#[tokio::test]
async fn transient_append_failures_are_retried_with_backoff_and_stored_once() {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };
    let store = Intercepted::<InMemoryEventStore, LoseAnswers>::default();
    store.intercept.failures.store(4, Ordering::SeqCst);
    let waits = Arc::new(Mutex::new(Vec::new()));
    let seen = waits.clone();
    let backoff = annals::Backoff::new(Duration::from_millis(8), Duration::from_millis(40));
    let retries = annals::Retries::none()
        .transient(4)
        .with_backoff(backoff)
        .with_sleep(move |d| {
            seen.lock().unwrap().push(d);
            Box::pin(async move { tokio::time::sleep(d).await })
        });
    let counters = Repository::<Counter, _>::new(store.clone()).with_retries(retries);
    let ctx = CommandContext::new();
    let done = counters
        .execute("c", CounterCommand::Add(5), &ctx)
        .await
        .expect("retried through the transient failures");
    assert_eq!((done.state.total, done.version), (5, 1));
    // The first attempt committed and lost its answer: the retries got the original result,
    // and the event is stored once.
    let stream = StreamId::new("counter-c").unwrap();
    let stored: Vec<RecordedEvent> = store
        .inner
        .read_stream(&stream, StreamRead::forward())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    let waits = waits.lock().unwrap().clone();
    assert_eq!(waits.len(), 4);
    for (attempt, wait) in waits.iter().enumerate() {
        let ceiling = backoff.ceiling(attempt as u32);
        assert!(
            *wait >= ceiling / 2 && *wait <= ceiling,
            "{attempt}: {wait:?}"
        );
    }

    // Without transient retries the caller gets the transient error, classified.
    store.intercept.failures.store(1, Ordering::SeqCst);
    let plain = Repository::<Counter, _>::new(store.clone());
    let err = plain
        .execute("d", CounterCommand::Add(1), &ctx)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

/// A counter that keeps no snapshots (the default policy).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Unsnapshotted(Counter);

impl annals::Aggregate for Unsnapshotted {
    const TYPE: &'static str = "counter";
    type Event = CounterEvent;
    type Command = CounterCommand;
    type Error = annals::testing::CounterError;

    fn handle(
        &self,
        command: CounterCommand,
    ) -> std::result::Result<Vec<CounterEvent>, Self::Error> {
        self.0.handle(command)
    }

    fn apply(&mut self, event: &CounterEvent) {
        self.0.apply(event);
    }
}

/// Counts the snapshot reads the store is asked for.
#[derive(Debug, Default)]
struct CountSnapshotReads(AtomicUsize);

impl Intercept<InMemoryEventStore> for CountSnapshotReads {
    async fn load_snapshot(
        &self,
        inner: &InMemoryEventStore,
        stream: &StreamId,
    ) -> Result<Option<Snapshot>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        inner.load_snapshot(stream).await
    }
}

type CountingSnapshots = Intercepted<InMemoryEventStore, CountSnapshotReads>;

#[tokio::test]
async fn an_aggregate_that_keeps_no_snapshots_never_reads_one() {
    let repo = Repository::<Unsnapshotted, _>::new(CountingSnapshots::default());
    let ctx = CommandContext::new();
    for amount in 1..=6 {
        repo.execute("n", CounterCommand::Add(amount), &ctx)
            .await
            .unwrap();
    }
    // A snapshot saved by hand (or under an earlier policy) is only a cache: ignored.
    let stream = repo.stream_id("n").unwrap();
    repo.store()
        .save_snapshot(Snapshot {
            stream_id: stream.clone(),
            stream_version: 6,
            schema_version: 1,
            payload: annals::Payload::from_serialize(&json!({ "total": 1000, "events": 6 }))
                .unwrap(),
            taken_at: time::OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    let loaded = repo.load("n").await.unwrap();
    assert_eq!((loaded.state.0.total, loaded.version), (21, 6));
    assert_eq!(repo.store().intercept.0.load(Ordering::SeqCst), 0);

    // An aggregate with a policy reads snapshot and tail (here, through the default
    // `read_aggregate`: one snapshot read per load).
    let counters = Repository::<Counter, _>::new(CountingSnapshots::default());
    counters
        .execute("c", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    counters.load("c").await.unwrap();
    assert_eq!(counters.store().intercept.0.load(Ordering::SeqCst), 2);
}
