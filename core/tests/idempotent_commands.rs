//! Idempotent commands: a command executed again with its id is stored once and answered as
//! the first time; contexts caused by an event; derived ids.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicUsize, Ordering},
};

use annals::testing::{Counter, CounterCommand, CounterEvent, Intercept, Intercepted, new_event};
use annals::{
    AppendResult, CommandContext, CommandError, DomainEvent, Error, EventStore, ExpectedVersion,
    InMemoryEventStore, LogPosition, LogRead, RecordedEvent, Repository, Result, Retries,
    StreamAppend, StreamId, StreamRead, derive_event_id, derive_id,
};
use futures::TryStreamExt;
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

/// The first `failures` appends commit and then report a transient error, as when the
/// connection drops after the commit and before the answer. Clones share the counts.
#[derive(Debug, Default, Clone)]
struct LoseAnswers {
    failures: std::sync::Arc<AtomicUsize>,
    appends: std::sync::Arc<AtomicUsize>,
}

impl Intercept<InMemoryEventStore> for LoseAnswers {
    async fn append_multi(
        &self,
        inner: &InMemoryEventStore,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        let results = inner.append_multi(appends).await?;
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(Error::backend(true, "connection reset after commit"));
        }
        Ok(results)
    }
}

type LostAnswers = Intercepted<InMemoryEventStore, LoseAnswers>;

/// A store whose first `failures` appends lose their answers.
fn losing_answers(failures: usize) -> LostAnswers {
    let store = LostAnswers::default();
    store.intercept.failures.store(failures, Ordering::SeqCst);
    store
}

fn sid(name: &str) -> StreamId {
    StreamId::new(name).expect("a stream id")
}

async fn stored(store: &impl EventStore, stream: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(&sid(stream), StreamRead::forward())
        .try_collect()
        .await
        .expect("read")
}

#[tokio::test]
async fn an_idempotent_command_executed_twice_is_stored_once() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    let ctx = CommandContext::idempotent(Uuid::now_v7());
    let first = repo
        .execute("c", CounterCommand::Add(5), &ctx)
        .await
        .unwrap();
    assert!(!first.already_applied);
    let second = repo
        .execute("c", CounterCommand::Add(5), &ctx)
        .await
        .unwrap();
    assert!(second.already_applied);
    assert_eq!(
        second.append, first.append,
        "the same positions and version"
    );
    assert_eq!(second.events, vec![CounterEvent::Added { amount: 5 }]);
    assert_eq!((second.state.total, second.version), (5, 1));

    let events = stored(&store, "counter-c").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].event_id,
        derive_event_id(ctx.command_id, &sid("counter-c"), 0)
    );
}

#[tokio::test]
async fn a_retry_that_the_new_state_would_refuse_still_answers_ok() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    repo.execute("c", CounterCommand::Add(10), &CommandContext::new())
        .await
        .unwrap();
    let withdraw = CommandContext::idempotent(Uuid::now_v7());
    let first = repo
        .execute("c", CounterCommand::Take(10), &withdraw)
        .await
        .unwrap();
    assert_eq!(first.state.total, 0);
    // Taking 10 from 0 is refused, but this is the same command again.
    let again = repo
        .execute("c", CounterCommand::Take(10), &withdraw)
        .await
        .expect("a retry is answered, not refused");
    assert!(again.already_applied);
    assert_eq!(again.append, first.append);
    assert_eq!(again.events, vec![CounterEvent::Added { amount: -10 }]);
    // A new command is refused as usual.
    let refused = repo
        .execute(
            "c",
            CounterCommand::Take(10),
            &CommandContext::idempotent(Uuid::now_v7()),
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, CommandError::Rejected(_)), "{refused:?}");
    assert_eq!(stored(&store, "counter-c").await.len(), 2);
}

#[tokio::test]
async fn a_lost_answer_retried_by_the_repository_is_stored_once() {
    let store = losing_answers(1);
    let repo =
        Repository::<Counter, _>::new(store.clone()).with_retries(Retries::none().transient(3));
    let ctx = CommandContext::idempotent(Uuid::now_v7());
    let done = repo
        .execute("c", CounterCommand::Add(3), &ctx)
        .await
        .expect("the retry gets the original result");
    assert_eq!(
        store.intercept.appends.load(Ordering::SeqCst),
        2,
        "sent twice"
    );
    assert_eq!(stored(&store, "counter-c").await.len(), 1, "stored once");
    assert_eq!((done.state.total, done.version), (3, 1));
    assert_eq!(done.append.as_ref().map(|a| a.stream_version), Some(1));
}

#[tokio::test]
async fn a_cached_state_that_refuses_the_retry_is_checked_against_the_store() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone()).with_cache(10);
    repo.execute("c", CounterCommand::Add(1), &CommandContext::new())
        .await
        .unwrap();
    let ctx = CommandContext::idempotent(Uuid::now_v7());
    let first = repo
        .execute("c", CounterCommand::Take(1), &ctx)
        .await
        .unwrap();
    assert!(!first.already_applied);
    // The cached state (total 0) refuses; the stored events answer.
    let retry = repo
        .execute("c", CounterCommand::Take(1), &ctx)
        .await
        .unwrap();
    assert!(retry.already_applied);
    assert_eq!(retry.append, first.append);
    assert_eq!((retry.state.total, retry.version), (0, 2));
    assert_eq!(stored(&store, "counter-c").await.len(), 2);
    let next = repo
        .execute("c", CounterCommand::Add(2), &CommandContext::new())
        .await
        .unwrap();
    assert_eq!((next.state.total, next.version), (2, 3));
}

#[tokio::test]
async fn a_command_whose_answer_was_lost_is_not_appended_again() {
    let store = losing_answers(1);
    let repo = Repository::<Counter, _>::new(store.clone());
    let ctx = CommandContext::idempotent(Uuid::now_v7());
    let error = repo
        .execute("c", CounterCommand::Add(7), &ctx)
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    let retry = repo
        .execute("c", CounterCommand::Add(7), &ctx)
        .await
        .unwrap();
    assert!(retry.already_applied);
    assert_eq!(retry.events, vec![CounterEvent::Added { amount: 7 }]);
    let events = stored(&store, "counter-c").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        retry.append,
        Some(AppendResult {
            stream_version: 1,
            first_position: events[0].position,
            last_position: events[0].position,
        })
    );
}

/// Counter snapshots every 5 events: the command's event ends up before the snapshot.
#[tokio::test]
async fn a_retry_after_a_snapshot_still_answers_already_applied() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    let plain = CommandContext::new();
    for _ in 0..3 {
        repo.execute("c", CounterCommand::Add(1), &plain)
            .await
            .unwrap();
    }
    let take = CommandContext::idempotent(Uuid::now_v7());
    let first = repo
        .execute("c", CounterCommand::Take(3), &take)
        .await
        .unwrap();
    assert_eq!(first.version, 4);
    repo.execute("c", CounterCommand::Add(2), &plain)
        .await
        .unwrap();
    let snapshot = store
        .load_snapshot(&sid("counter-c"))
        .await
        .unwrap()
        .expect("a snapshot at version 5");
    assert_eq!(snapshot.stream_version, 5);

    // Refused on the new state (total 2): found by reading the stream.
    let again = repo
        .execute("c", CounterCommand::Take(3), &take)
        .await
        .expect("answered from the stored events");
    assert!(again.already_applied);
    assert_eq!(again.append, first.append);
    assert_eq!((again.state.total, again.version), (2, 5));

    // Accepted on the new state with the same payload: the store answers the append with
    // the original result, and the stored events answer the command.
    let add = CommandContext::idempotent(Uuid::now_v7());
    let first = repo
        .execute("c", CounterCommand::Add(4), &add)
        .await
        .unwrap();
    assert_eq!(first.version, 6);
    for _ in 0..5 {
        repo.execute("c", CounterCommand::Add(1), &plain)
            .await
            .unwrap();
    }
    assert!(
        store
            .load_snapshot(&sid("counter-c"))
            .await
            .unwrap()
            .is_some_and(|s| s.stream_version == 10)
    );
    let again = repo
        .execute("c", CounterCommand::Add(4), &add)
        .await
        .unwrap();
    assert!(again.already_applied);
    assert_eq!(again.events, first.events);
    assert_eq!(again.append, first.append);
    assert_eq!((again.state.total, again.version), (11, 11));

    // Accepted with another payload (as a command whose events depend on the state would
    // be): the store refuses the derived id, and the stored events answer.
    let again = repo
        .execute("c", CounterCommand::Add(40), &add)
        .await
        .unwrap();
    assert!(again.already_applied);
    assert_eq!(again.events, vec![CounterEvent::Added { amount: 4 }]);
    assert_eq!(again.append, first.append);

    // The same through a cache holding the current state.
    let cached = Repository::<Counter, _>::new(store.clone()).with_cache(4);
    cached
        .execute("c", CounterCommand::Add(1), &plain)
        .await
        .unwrap();
    let again = cached
        .execute("c", CounterCommand::Add(4), &add)
        .await
        .unwrap();
    assert!(again.already_applied);
    assert_eq!(again.append, first.append);
    assert_eq!((again.state.total, again.version), (12, 12));
    assert_eq!(stored(&store, "counter-c").await.len(), 12);
    // The cache holds the true state: the next command appends after it.
    let next = cached
        .execute("c", CounterCommand::Add(1), &plain)
        .await
        .unwrap();
    assert_eq!((next.state.total, next.version), (13, 13));
}

#[tokio::test]
async fn a_cached_repository_answers_a_retry_made_through_another() {
    let store = InMemoryEventStore::new();
    let cached = Repository::<Counter, _>::new(store.clone()).with_cache(4);
    let other = Repository::<Counter, _>::new(store.clone());
    cached
        .execute("c", CounterCommand::Add(1), &CommandContext::new())
        .await
        .unwrap();
    other
        .execute("c", CounterCommand::Add(3), &CommandContext::new())
        .await
        .unwrap();
    let ctx = CommandContext::idempotent(Uuid::now_v7());
    let first = other
        .execute("c", CounterCommand::Add(2), &ctx)
        .await
        .unwrap();
    // The cache says version 1; the command is at version 3.
    let again = cached
        .execute("c", CounterCommand::Add(2), &ctx)
        .await
        .unwrap();
    assert!(again.already_applied);
    assert_eq!(again.append, first.append);
    assert_eq!((again.state.total, again.version), (6, 3));
    assert_eq!(stored(&store, "counter-c").await.len(), 3);

    // A cache exactly one command behind: the store answers the append with the original
    // result, which is what a first call would have got; nothing is stored twice.
    let ctx = CommandContext::idempotent(Uuid::now_v7());
    let first = other
        .execute("c", CounterCommand::Add(5), &ctx)
        .await
        .unwrap();
    let again = cached
        .execute("c", CounterCommand::Add(5), &ctx)
        .await
        .unwrap();
    assert_eq!(again.append, first.append);
    assert_eq!(again.events, first.events);
    assert_eq!((again.state.total, again.version), (11, 4));
    assert_eq!(stored(&store, "counter-c").await.len(), 4);
}

#[tokio::test]
async fn different_command_ids_give_separate_events() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    let a = CommandContext::idempotent(Uuid::now_v7());
    let b = CommandContext::new().with_command_id(Uuid::now_v7());
    assert!(b.idempotent);
    let first = repo.execute("c", CounterCommand::Add(1), &a).await.unwrap();
    let second = repo.execute("c", CounterCommand::Add(1), &b).await.unwrap();
    assert!(!first.already_applied && !second.already_applied);
    assert_eq!(second.version, 2);
    // The same command id on another aggregate is another command there.
    let elsewhere = repo.execute("d", CounterCommand::Add(1), &a).await.unwrap();
    assert!(!elsewhere.already_applied);
    let events = stored(&store, "counter-c").await;
    assert_eq!(events.len(), 2);
    assert_ne!(events[0].event_id, events[1].event_id);
    assert_ne!(
        stored(&store, "counter-d").await[0].event_id,
        events[0].event_id
    );
}

#[tokio::test]
async fn a_context_caused_by_an_event_continues_its_correlation() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    let request = Uuid::now_v7();
    let ctx = CommandContext::new().with_correlation_id(request);
    repo.execute("a", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    let trigger = stored(&store, "counter-a").await.remove(0);
    assert_eq!(trigger.metadata.correlation_id, Some(request));

    let caused = CommandContext::caused_by(&trigger);
    assert!(!caused.idempotent);
    assert_eq!(caused.correlation_id, Some(request));
    assert_eq!(caused.causation_id, Some(trigger.event_id));
    assert_ne!(caused.command_id, trigger.event_id);
    repo.execute("b", CounterCommand::Add(1), &caused)
        .await
        .unwrap();
    let reaction = stored(&store, "counter-b").await.remove(0);
    assert_eq!(reaction.metadata.correlation_id, Some(request));
    assert_eq!(reaction.metadata.causation_id, Some(trigger.event_id));

    // An event with no correlation starts one: its own id.
    let bare = store
        .append(
            &sid("raw"),
            ExpectedVersion::Any,
            vec![new_event("E", json!({}))],
        )
        .await
        .unwrap();
    let bare = store
        .read_all(LogRead::after(LogPosition::START))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.position == bare.first_position)
        .unwrap();
    let caused = CommandContext::caused_by(&bare);
    assert_eq!(caused.correlation_id, Some(bare.event_id));
    let metadata = caused.clone().with_command_id(Uuid::now_v7()).metadata();
    assert_eq!(metadata.correlation_id, Some(bare.event_id));
    assert_eq!(metadata.causation_id, Some(bare.event_id));
    let other = Uuid::now_v7();
    assert_eq!(
        caused.with_causation_id(other).metadata().causation_id,
        Some(other)
    );
    // Without a causation id, the command is the cause.
    let plain = CommandContext::new();
    assert_eq!(plain.metadata().causation_id, Some(plain.command_id));
    assert_eq!(plain.metadata().correlation_id, Some(plain.command_id));
}

#[tokio::test]
async fn deciding_twice_with_one_idempotent_context_gives_the_same_ids() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    let ctx = CommandContext::idempotent(Uuid::now_v7());
    let a = repo
        .decide("c", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    let b = repo
        .decide("c", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    let ids = |d: &annals::Decision<Counter>| -> Vec<Uuid> {
        d.new_events.iter().map(|e| e.event_id).collect()
    };
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(
        ids(&a),
        vec![derive_event_id(ctx.command_id, &sid("counter-c"), 0)]
    );

    // Non-idempotent contexts keep fresh ids, even reused.
    let plain = CommandContext::new();
    assert!(!plain.idempotent);
    let c = repo
        .decide("c", CounterCommand::Add(1), &plain)
        .await
        .unwrap();
    let d = repo
        .decide("c", CounterCommand::Add(1), &plain)
        .await
        .unwrap();
    assert_ne!(ids(&c), ids(&d));
    let first = repo
        .execute("c", CounterCommand::Add(1), &plain)
        .await
        .unwrap();
    let second = repo
        .execute("c", CounterCommand::Add(1), &plain)
        .await
        .unwrap();
    assert!(!first.already_applied && !second.already_applied);
    assert_eq!(stored(&store, "counter-c").await.len(), 2);
}

#[tokio::test]
async fn a_retried_multi_stream_command_gets_its_original_results() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    repo.execute("from", CounterCommand::Add(5), &CommandContext::new())
        .await
        .unwrap();
    let ctx = CommandContext::idempotent(Uuid::now_v7());
    let transfer = || async {
        let debit = repo
            .decide("from", CounterCommand::Take(5), &ctx)
            .await
            .unwrap();
        let credit = repo
            .decide("to", CounterCommand::Add(5), &ctx)
            .await
            .unwrap();
        let applied = (debit.already_applied, credit.already_applied);
        let results = store
            .append_multi(vec![debit.to_append(), credit.to_append()])
            .await
            .expect("appended, or answered with the original results");
        (applied, results, debit)
    };
    let (applied, first, _) = transfer().await;
    assert_eq!(applied, (false, false));
    let (applied, again, debit) = transfer().await;
    assert_eq!(applied, (true, true));
    assert_eq!(again, first);
    assert!(debit.new_events.is_empty());
    assert_eq!(debit.events, vec![CounterEvent::Added { amount: -5 }]);
    assert_eq!((debit.state.total, debit.version), (0, 2));
    assert_eq!(stored(&store, "counter-from").await.len(), 2);
    assert_eq!(stored(&store, "counter-to").await.len(), 1);
}

#[tokio::test]
async fn decide_finds_a_command_older_than_the_snapshot_when_it_would_be_refused() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    repo.execute("c", CounterCommand::Add(5), &CommandContext::new())
        .await
        .unwrap();
    let ctx = CommandContext::idempotent(Uuid::now_v7());
    let first = repo
        .execute("c", CounterCommand::Take(5), &ctx)
        .await
        .unwrap();
    for _ in 0..3 {
        repo.execute("c", CounterCommand::Add(1), &CommandContext::new())
            .await
            .unwrap();
    }
    assert!(
        store
            .load_snapshot(&sid("counter-c"))
            .await
            .unwrap()
            .is_some()
    );
    let decision = repo
        .decide("c", CounterCommand::Take(5), &ctx)
        .await
        .expect("found, not refused");
    assert!(decision.already_applied);
    assert_eq!(decision.version, 5);
    let results = store
        .append_multi(vec![decision.to_append()])
        .await
        .unwrap();
    assert_eq!(Some(&results[0]), first.append.as_ref());
    assert_eq!(stored(&store, "counter-c").await.len(), 5);
}

#[tokio::test]
async fn an_id_reused_for_other_events_is_an_idempotency_conflict() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Counter, _>::new(store.clone());
    let id = Uuid::now_v7();
    // Someone stored an event under the id this command's first event gets in stream d.
    let taken = CounterEvent::Added { amount: 9 }
        .to_new_event()
        .unwrap()
        .with_id(derive_event_id(id, &sid("counter-d"), 0));
    store
        .append(&sid("counter-e"), ExpectedVersion::Any, vec![taken])
        .await
        .unwrap();
    let error = repo
        .execute("d", CounterCommand::Add(1), &CommandContext::idempotent(id))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CommandError::Store(Error::IdempotencyConflict { .. })
        ),
        "{error:?}"
    );
    assert!(stored(&store, "counter-d").await.is_empty());
}

#[test]
fn derived_ids_differ_by_each_input() {
    let command = Uuid::now_v7();
    let (a, b) = (sid("a"), sid("b"));
    let ids = [
        derive_event_id(command, &a, 0),
        derive_event_id(command, &a, 1),
        derive_event_id(command, &b, 0),
        derive_event_id(Uuid::now_v7(), &a, 0),
    ];
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert_eq!(derive_event_id(command, &a, 0).get_version_num(), 5);
}

fn stream_name() -> impl Strategy<Value = StreamId> {
    "[a-z0-9-]{1,12}".prop_map(|s| StreamId::new(s).expect("a stream id"))
}

proptest! {
    #[test]
    fn derive_event_id_is_a_function_without_collisions(
        tuples in proptest::collection::hash_set(
            (any::<u128>().prop_map(Uuid::from_u128), stream_name(), 0u32..8),
            1..64,
        )
    ) {
        let mut seen = HashSet::new();
        for (command, stream, index) in &tuples {
            let id = derive_event_id(*command, stream, *index);
            prop_assert_eq!(id, derive_event_id(*command, stream, *index));
            prop_assert!(seen.insert(id), "collision for {:?}", (command, stream, index));
        }
    }

    #[test]
    fn derive_id_is_a_function_without_collisions(
        inputs in proptest::collection::hash_set(
            (
                "[a-c]{0,3}",
                proptest::collection::vec(proptest::collection::vec(0u8..3, 0..3), 0..4),
            ),
            1..64,
        )
    ) {
        // Tiny alphabets make inputs whose concatenations coincide: the length prefixes must
        // still keep them apart.
        let mut seen = HashSet::new();
        for (scope, parts) in &inputs {
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let id = derive_id(scope, &parts);
            prop_assert_eq!(id, derive_id(scope, &parts));
            prop_assert!(seen.insert(id), "collision for {:?}", (scope, &parts));
        }
    }
}
