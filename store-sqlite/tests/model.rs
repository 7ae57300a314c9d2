//! Model-based property test: any sequence of appends (single and multi-stream, every kind of
//! expected version, retries of earlier batches, reused ids) gives the same answers and the
//! same log in SQLite as in the reference in-memory store.

use annals::{
    AppendResult, EventStore, ExpectedVersion, InMemoryEventStore, LogRead, NewEvent, StreamAppend,
    StreamId, testing::new_event,
};
use annals_sqlite::SqliteEventStore;
use futures::TryStreamExt;
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Op {
    /// Appends `n` fresh events to each of `streams` (indexes into the stream names).
    Append {
        streams: Vec<(usize, Expect)>,
        n: usize,
    },
    /// Sends an earlier batch again (index modulo the batches sent so far).
    Retry { batch: usize, expect: Expect },
    /// Sends an earlier batch's events in reverse order, or with one event replaced.
    Tamper { batch: usize, reverse: bool },
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Any,
    NoStream,
    StreamExists,
    Exact(u64),
}

impl Expect {
    fn get(self) -> ExpectedVersion {
        match self {
            Self::Any => ExpectedVersion::Any,
            Self::NoStream => ExpectedVersion::NoStream,
            Self::StreamExists => ExpectedVersion::StreamExists,
            Self::Exact(v) => ExpectedVersion::Exact(v),
        }
    }
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoStream),
        Just(Expect::StreamExists),
        (0u64..6).prop_map(Expect::Exact),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop::collection::vec((0usize..3, expect()), 1..3), 1usize..4)
            .prop_map(|(streams, n)| Op::Append { streams, n }),
        1 => (any::<usize>(), expect()).prop_map(|(batch, expect)| Op::Retry { batch, expect }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(batch, reverse)| Op::Tamper { batch, reverse }),
    ]
}

const NAMES: [&str; 3] = ["a", "b'c", "d%"];

/// What an append returned, comparable across stores.
#[derive(Debug, PartialEq)]
enum Answer {
    Ok(Vec<AppendResult>),
    Conflict(StreamId, u64),
    Idempotency,
    Invalid,
    Other(String),
}

async fn run<S: EventStore>(store: &S, appends: Vec<StreamAppend>) -> Answer {
    match store.append_multi(appends).await {
        Ok(r) => Answer::Ok(r),
        Err(annals::Error::Conflict { stream, actual, .. }) => Answer::Conflict(stream, actual),
        Err(annals::Error::IdempotencyConflict { .. }) => Answer::Idempotency,
        Err(annals::Error::InvalidAppend { .. }) => Answer::Invalid,
        Err(other) => Answer::Other(other.to_string()),
    }
}

async fn check(ops: Vec<Op>) {
    let model = InMemoryEventStore::new();
    let sqlite = SqliteEventStore::in_memory().await.expect("store");
    let mut sent: Vec<Vec<StreamAppend>> = Vec::new();
    for op in ops {
        let appends = match op {
            Op::Append { streams, n } => streams
                .into_iter()
                .map(|(s, e)| {
                    let events: Vec<NewEvent> = (0..n)
                        .map(|i| new_event("Noted", json!({ "i": i })))
                        .collect();
                    StreamAppend::new(StreamId::new(NAMES[s]).expect("id"), e.get(), events)
                })
                .collect(),
            Op::Retry { batch, expect } if !sent.is_empty() => {
                let mut again = sent[batch % sent.len()].clone();
                for a in &mut again {
                    a.expected = expect.get();
                }
                again
            }
            Op::Tamper { batch, reverse } if !sent.is_empty() => {
                let mut again = sent[batch % sent.len()].clone();
                let first = &mut again[0];
                if reverse && first.events.len() > 1 {
                    first.events.reverse();
                } else {
                    first.events[0] = new_event("Noted", json!({ "other": true }))
                        .with_id(first.events[0].event_id);
                }
                again
            }
            _ => continue,
        };
        let expected = run(&model, appends.clone()).await;
        let actual = run(&sqlite, appends.clone()).await;
        assert_eq!(actual, expected, "for {appends:?}");
        sent.push(appends);
    }
    let log = |events: Vec<annals::RecordedEvent>| {
        events
            .into_iter()
            .map(|e| {
                (
                    e.position,
                    e.stream_id,
                    e.stream_version,
                    e.event_id,
                    e.payload,
                )
            })
            .collect::<Vec<_>>()
    };
    let expected = log(model
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .expect("log"));
    let actual = log(sqlite
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .expect("log"));
    assert_eq!(actual, expected);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sqlite_answers_like_the_reference_store(ops in prop::collection::vec(op(), 1..25)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(check(ops));
    }
}
