//! Group commit of concurrent one-stream calls. A group whose calls each append to a stream of
//! their own is judged and stored by one SQL statement (`batch.rs`); a call it cannot store
//! (a conflict, a retry of a stored append, a tampered retry, a new stream that another call
//! created) is answered by the group function. Either way every call gets the answer it
//! would get alone: the calls name different streams, so their answers cannot depend on the
//! order they run in, and the in-memory store, running them one by one, is the reference.

mod common;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use annals::{
    AppendResult, Error, EventStore, ExpectedVersion, InMemoryEventStore, NewEvent, StreamAppend,
    StreamId, StreamRead,
    testing::{model::Expect, new_event},
};
use annals_postgres::{PgEventStore, TestHooks};
use futures::{TryStreamExt, future::join_all};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use serde_json::json;

/// What one stream of a case starts with, and the call made to it, if any.
#[derive(Debug, Clone)]
struct Stream {
    /// Events stored before the calls (0: the stream does not exist).
    seeded: usize,
    call: Option<Call>,
}

#[derive(Debug, Clone)]
enum Call {
    /// `events` fresh events, expecting `expect`.
    Fresh { expect: Expect, events: usize },
    /// The seeding append sent again: the original result.
    Retry,
    /// The seeding append's first id with other contents: an idempotency conflict.
    Tamper,
}

fn stream() -> impl Strategy<Value = Stream> {
    let expect = prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoStream),
        Just(Expect::StreamExists),
        (0u64..4).prop_map(Expect::Exact),
    ];
    let call = prop_oneof![
        6 => (expect, 1usize..4).prop_map(|(expect, events)| Call::Fresh { expect, events }),
        1 => Just(Call::Retry),
        1 => Just(Call::Tamper),
    ];
    (0usize..4, prop::option::weighted(0.9, call))
        .prop_map(|(seeded, call)| Stream { seeded, call })
}

/// A stream whose call expects a version the store knows before it runs: a new stream's
/// (`NoStream`, `Exact(0)`), or one it stored itself while seeding (`Exact(k)` for `k` up to
/// the seeded length: the newest, which continues the stream, or an older, taken one), and
/// now and then one beyond the stream, which the store does not know.
/// Retries and tampered retries of the seeding append expect a new stream too.
fn known_stream() -> impl Strategy<Value = Stream> {
    (0usize..4).prop_flat_map(|seeded| {
        // Mostly the version that continues the stream, so that many groups are stored whole.
        let expect = prop_oneof![
            4 => Just(Expect::Exact(seeded as u64)),
            1 => Just(Expect::NoStream),
            1 => (0..=seeded as u64).prop_map(Expect::Exact),
            // Beyond the stream: not known, so the group must be judged (writing it blind
            // would leave a gap).
            1 => (seeded as u64 + 1..seeded as u64 + 3).prop_map(Expect::Exact),
        ];
        let call = prop_oneof![
            10 => (expect, 1usize..4).prop_map(|(expect, events)| Call::Fresh { expect, events }),
            1 => Just(Call::Retry),
            1 => Just(Call::Tamper),
        ];
        call.prop_map(move |call| Stream {
            seeded,
            call: Some(call),
        })
    })
}

/// What a call returned, comparable across stores (positions are checked apart).
#[derive(Debug, PartialEq)]
enum Answer {
    Ok(u64),
    Conflict(u64),
    Idempotency,
    Other(String),
}

fn answer(result: &Result<Vec<AppendResult>, Error>) -> Answer {
    match result {
        Ok(results) => Answer::Ok(results[0].stream_version),
        Err(Error::Conflict { actual, .. }) => Answer::Conflict(*actual),
        Err(Error::IdempotencyConflict { .. }) => Answer::Idempotency,
        Err(other) => Answer::Other(other.to_string()),
    }
}

fn events(n: usize, tag: &str) -> Vec<NewEvent> {
    (0..n)
        .map(|i| new_event("Noted", json!({ "tag": tag, "i": i })))
        .collect()
}

async fn read<S: EventStore>(store: &S, stream: &StreamId) -> Vec<annals::RecordedEvent> {
    store
        .read_stream(stream, StreamRead::forward())
        .try_collect()
        .await
        .expect("read the stream")
}

/// Seeds both stores alike, sends the calls to `store` all at once (so its one writer groups
/// them) and to the reference one by one, and compares the answers, the events the answers'
/// positions name, and what each stream holds afterwards.
async fn check(store: &PgEventStore, case: usize, streams: Vec<Stream>) {
    let model = InMemoryEventStore::new();
    let id = |i: usize| StreamId::new(format!("case{case}-s{i}")).expect("a valid id");
    let mut seeds: HashMap<usize, StreamAppend> = HashMap::new();
    for (i, s) in streams.iter().enumerate().filter(|(_, s)| s.seeded > 0) {
        let seed = StreamAppend::new(id(i), ExpectedVersion::NoStream, events(s.seeded, "seed"));
        for target in [&model as &dyn Seed, store] {
            target.seed(seed.clone()).await;
        }
        seeds.insert(i, seed);
    }
    let calls: Vec<(usize, StreamAppend)> = streams
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let append = match (s.call.as_ref()?, seeds.get(&i)) {
                (Call::Fresh { expect, events: n }, _) => {
                    StreamAppend::new(id(i), expect.get(), events(*n, "call"))
                }
                (Call::Retry, Some(seed)) => seed.clone(),
                (Call::Tamper, Some(seed)) => {
                    let mut tampered = seed.clone();
                    tampered.events[0] = new_event("Noted", json!({ "other": true }))
                        .with_id(seed.events[0].event_id);
                    tampered
                }
                (Call::Retry | Call::Tamper, None) => return None,
            };
            Some((i, append))
        })
        .collect();
    let mut expected = Vec::new();
    for (_, append) in &calls {
        expected.push(answer(&model.append_multi(vec![append.clone()]).await));
    }
    let actual = join_all(calls.iter().map(|(_, append)| {
        let (store, append) = (store.clone(), append.clone());
        tokio::spawn(async move { store.append_multi(vec![append]).await })
    }))
    .await;
    for (((i, append), expected), actual) in calls.iter().zip(&expected).zip(actual) {
        let actual = actual.expect("the call's task");
        assert_eq!(
            &answer(&actual),
            expected,
            "stream {i}, {append:?}, of {streams:?}"
        );
        if let Ok(results) = &actual {
            // The positions name the call's own first and last event.
            let stored = read(store, &append.stream).await;
            let at = |p| stored.iter().find(|e| e.position == p).map(|e| e.event_id);
            let ids = &append.events;
            assert_eq!(at(results[0].first_position), Some(ids[0].event_id));
            assert_eq!(at(results[0].last_position), ids.last().map(|e| e.event_id));
        }
    }
    for i in 0..streams.len() {
        let contents = |events: Vec<annals::RecordedEvent>| {
            events
                .into_iter()
                .map(|e| (e.stream_version, e.event_id, e.payload))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            contents(read(store, &id(i)).await),
            contents(read(&model, &id(i)).await),
            "stream {i} of {streams:?}"
        );
        assert_eq!(
            store.stream_version(&id(i)).await.expect("version"),
            model.stream_version(&id(i)).await.expect("version"),
        );
    }
}

/// Seeding either store through one call site.
trait Seed {
    fn seed(&self, append: StreamAppend) -> futures::future::BoxFuture<'_, ()>;
}

impl<S: EventStore> Seed for S {
    fn seed(&self, append: StreamAppend) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            self.append_multi(vec![append]).await.expect("seed");
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A store in a fresh schema with one writer, so concurrent calls queue up and share groups,
/// and the hooks that count the groups of the one-statement path.
fn one_writer(runtime: &tokio::runtime::Runtime) -> Option<(PgEventStore, TestHooks)> {
    let hooks = TestHooks::default();
    let config = common::config()
        .with_writers(1)
        .with_test_hooks(hooks.clone());
    let store = runtime.block_on(common::try_store(config))?;
    Some((store, hooks))
}

/// Runs `cases` generated cases through [`check`] on a store with one writer, then drops its
/// schema; the hooks tell which paths the groups took. `None` without a database.
fn check_cases(cases: u32, streams: impl Strategy<Value = Vec<Stream>>) -> Option<TestHooks> {
    let runtime = runtime();
    let (store, hooks) = one_writer(&runtime)?;
    let mut runner = TestRunner::new(Config::with_cases(cases));
    // Shrinking runs cases again: each run gets streams of its own.
    let case = AtomicUsize::new(0);
    let result = runner.run(&streams, |streams| {
        let case = case.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(check(&store, case, streams));
        Ok(())
    });
    runtime
        .block_on(store.drop_schema())
        .expect("drop the schema");
    if let Err(failure) = result {
        panic!("{failure}");
    }
    Some(hooks)
}

#[test]
fn grouped_one_stream_calls_get_the_answers_they_would_get_alone() {
    let Some(hooks) = check_cases(64, prop::collection::vec(stream(), 2..24)) else {
        return;
    };
    assert!(
        hooks.batched_groups.load(Ordering::Relaxed) > 0,
        "no group went through the one-statement path"
    );
}

/// The same for groups whose every call expects a version known before the statement runs:
/// they go to the statement that neither reads nor judges (`APPEND_KNOWN_PLAIN`), and a
/// taken version, a retry or a tampered retry among them sends the whole group to the
/// judging functions, which must still give each call its own answer.
#[test]
fn groups_of_known_versions_get_the_answers_they_would_get_alone() {
    // About one case in six makes a group that is stored whole: enough cases that some do.
    let Some(hooks) = check_cases(128, prop::collection::vec(known_stream(), 2..8)) else {
        return;
    };
    assert!(
        hooks.known_groups.load(Ordering::Relaxed) > 0,
        "no group went through the statement for known versions"
    );
}

/// Many concurrent commands on streams of their own: most are stored by the one-statement
/// path in shared transactions, each with its own version and positions.
#[test]
fn concurrent_commands_share_one_statement_groups() {
    let runtime = runtime();
    let Some((store, hooks)) = one_writer(&runtime) else {
        return;
    };
    runtime.block_on(async {
        let id = |i: usize| StreamId::new(format!("account-{i}")).expect("a valid id");
        for round in 0..3u64 {
            let calls = (0..200).map(|i| {
                let store = store.clone();
                let n = 1 + i % 2;
                let append = StreamAppend::new(
                    id(i),
                    ExpectedVersion::Exact(round * n as u64),
                    events(n, "deposit"),
                );
                tokio::spawn(async move { store.append_multi(vec![append]).await })
            });
            let mut commits: HashMap<u64, usize> = HashMap::new();
            for (i, result) in join_all(calls).await.into_iter().enumerate() {
                let results = result
                    .expect("task")
                    .unwrap_or_else(|e| panic!("call {i}: {e}"));
                let n = 1 + i as u64 % 2;
                assert_eq!(results[0].stream_version, round * n + n, "call {i}");
                *commits.entry(results[0].first_position.commit).or_default() += 1;
            }
            assert!(
                commits.values().any(|n| *n > 1),
                "no shared commits: {commits:?}"
            );
        }
        for i in 0..200 {
            let stored = read(&store, &id(i)).await;
            let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
            let n = 1 + i as u64 % 2;
            assert_eq!(versions, (1..=3 * n).collect::<Vec<_>>(), "stream {i}");
        }
        store.drop_schema().await.expect("drop the schema");
    });
    assert!(hooks.batched_groups.load(Ordering::Relaxed) > 0);
    assert!(hooks.known_groups.load(Ordering::Relaxed) > 0);
}

/// A group whose every version is known before it runs is stored without reading or judging
/// anything; a version another process took meanwhile (here a second handle, whose appends
/// this store has not seen) fails that statement on the key, and each call still gets its own
/// answer: the stale one a conflict naming the stream's true version, the others stored.
#[test]
fn a_version_taken_behind_the_stores_back_fails_only_its_call() {
    let runtime = runtime();
    let Some((store, _)) = one_writer(&runtime) else {
        return;
    };
    runtime.block_on(async {
        let other = PgEventStore::connect(common::config().with_schema(store.schema()))
            .await
            .expect("a second store on the same schema");
        let id = |i: usize| StreamId::new(format!("known-{i}")).expect("a valid id");
        for round in 0..8usize {
            let streams: Vec<StreamId> = (0..16).map(|i| id(round * 16 + i)).collect();
            for stream in &streams {
                let seed =
                    StreamAppend::new(stream.clone(), ExpectedVersion::NoStream, events(1, "seed"));
                store.append_multi(vec![seed]).await.expect("seed");
            }
            // Behind this store's back: stream `round` moves to version 2.
            let stale = &streams[round];
            let moved =
                StreamAppend::new(stale.clone(), ExpectedVersion::Exact(1), events(1, "other"));
            other
                .append_multi(vec![moved])
                .await
                .expect("the other handle's append");
            let calls = streams.iter().map(|stream| {
                let store = store.clone();
                let append =
                    StreamAppend::new(stream.clone(), ExpectedVersion::Exact(1), events(1, "call"));
                tokio::spawn(async move { store.append_multi(vec![append]).await })
            });
            for (i, result) in join_all(calls).await.into_iter().enumerate() {
                match (i == round, result.expect("task")) {
                    (true, Err(Error::Conflict { actual: 2, .. })) => {}
                    (false, Ok(results)) => assert_eq!(results[0].stream_version, 2, "call {i}"),
                    (_, other) => panic!("round {round}, call {i}: {other:?}"),
                }
            }
            for (i, stream) in streams.iter().enumerate() {
                let tags: Vec<String> = read(&store, stream)
                    .await
                    .iter()
                    .map(|e| e.payload.as_str().to_owned())
                    .collect();
                let second = if i == round { "other" } else { "call" };
                assert_eq!(tags.len(), 2, "stream {i}: {tags:?}");
                assert!(tags[1].contains(second), "stream {i}: {tags:?}");
            }
        }
        store.drop_schema().await.expect("drop the schema");
    });
}

/// Creators of one stream racing from two store handles (two processes, as far as the
/// database knows) among other new streams: exactly one creator wins, the others get a
/// conflict, and every other call is stored, whichever path each group takes.
#[test]
fn creators_racing_from_two_handles_get_one_winner() {
    let runtime = runtime();
    let Some(store) = runtime.block_on(common::try_store(common::config().with_writers(1))) else {
        return;
    };
    runtime.block_on(async {
        let other = PgEventStore::connect(common::config().with_schema(store.schema()))
            .await
            .expect("a second store on the same schema");
        let raced = StreamId::new("raced").expect("id");
        let mut calls = Vec::new();
        for i in 0..40 {
            let (store, other, raced) = (store.clone(), other.clone(), raced.clone());
            calls.push(tokio::spawn(async move {
                if i % 10 == 0 {
                    // Creators of one stream from both handles: exactly one wins.
                    let append =
                        StreamAppend::new(raced, ExpectedVersion::NoStream, events(1, "raced"));
                    let target = if i % 20 == 0 { &other } else { &store };
                    (i, target.append_multi(vec![append]).await)
                } else {
                    let id = StreamId::new(format!("plain-{i}")).expect("id");
                    let append =
                        StreamAppend::new(id, ExpectedVersion::NoStream, events(1, "plain"));
                    (i, store.append_multi(vec![append]).await)
                }
            }));
        }
        let mut winners = 0;
        for call in join_all(calls).await {
            let (i, result) = call.expect("task");
            match (i % 10, result) {
                (0, Ok(_)) => winners += 1,
                (0, Err(Error::Conflict { actual: 1, .. })) => {}
                (_, Ok(results)) => assert_eq!(results[0].stream_version, 1),
                (_, other) => panic!("call {i}: {other:?}"),
            }
        }
        assert_eq!(winners, 1);
        assert_eq!(read(&store, &raced).await.len(), 1);
        store.drop_schema().await.expect("drop the schema");
    });
}
