//! Model-based property testing of a store: any sequence of appends gives the same answers,
//! and leaves the same log, as the reference [`InMemoryEventStore`].
//!
//! The sequences mix single- and multi-stream appends, every kind of expected version,
//! retries of earlier batches (idempotent, or a conflict), and tampered retries (an earlier
//! batch's ids with other contents or in another order). A store runs it with proptest:
//!
//! ```ignore
//! proptest::proptest! {
//!     #[test]
//!     fn answers_like_the_reference_store(ops in annals::testing::model::ops()) {
//!         tokio::runtime::Runtime::new().unwrap().block_on(async {
//!             annals::testing::model::check(&my_fresh_store().await, ops).await
//!         });
//!     }
//! }
//! ```
//!
//! Stores number their positions differently, so positions are compared by the place of
//! the event they name in the store's own log: a store whose append answers a retry with the
//! positions of other events than the original's fails, as one that stores a retry twice.

use std::collections::HashMap;

use futures::TryStreamExt;
use proptest::prelude::*;
use serde_json::json;

use crate::{
    AppendResult, EventStore, ExpectedVersion, InMemoryEventStore, LogPosition, LogRead, NewEvent,
    RecordedEvent, StreamAppend, StreamId, testing::new_event,
};

/// One step of a generated sequence.
#[derive(Debug, Clone)]
pub enum Op {
    /// Appends `n` fresh events to each of `streams` (indexes into the stream names) in one
    /// atomic call.
    Append {
        /// The streams written, each with its expected version.
        streams: Vec<(usize, Expect)>,
        /// Fresh events per stream.
        n: usize,
    },
    /// Sends an earlier batch again (index modulo the batches sent so far), with another
    /// expected version.
    Retry {
        /// Which earlier batch.
        batch: usize,
        /// The expected version every stream of the retry carries.
        expect: Expect,
    },
    /// Sends an earlier batch's events reversed, or with its first event's contents replaced.
    Tamper {
        /// Which earlier batch.
        batch: usize,
        /// Reverse the first stream's events (when it has more than one) instead.
        reverse: bool,
    },
}

/// An expected version, as generated.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// [`ExpectedVersion::Any`].
    Any,
    /// [`ExpectedVersion::NoStream`].
    NoStream,
    /// [`ExpectedVersion::StreamExists`].
    StreamExists,
    /// [`ExpectedVersion::Exact`].
    Exact(u64),
}

impl Expect {
    /// The expected version it stands for.
    pub fn get(self) -> ExpectedVersion {
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

/// Sequences of 1 to 24 steps.
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..25)
}

/// The stream names: one plain, two with characters that break naive quoting.
const NAMES: [&str; 3] = ["a", "b'c", "d%"];

/// What an append returned, comparable across stores: positions as places in the log.
#[derive(Debug, PartialEq)]
enum Answer {
    Ok(Vec<(u64, Option<usize>, Option<usize>)>),
    Conflict(StreamId, u64),
    Idempotency,
    Invalid,
    Other(String),
}

/// What an append returned, before its positions are placed.
enum Raw {
    Ok(Vec<AppendResult>),
    Err(Answer),
}

async fn run<S: EventStore>(store: &S, appends: Vec<StreamAppend>) -> Raw {
    match store.append_multi(appends).await {
        Ok(results) => Raw::Ok(results),
        Err(crate::Error::Conflict { stream, actual, .. }) => {
            Raw::Err(Answer::Conflict(stream, actual))
        }
        Err(crate::Error::IdempotencyConflict { .. }) => Raw::Err(Answer::Idempotency),
        Err(crate::Error::InvalidAppend { .. }) => Raw::Err(Answer::Invalid),
        Err(other) => Raw::Err(Answer::Other(other.to_string())),
    }
}

async fn whole_log<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .expect("reading the whole log")
}

/// A store's whole log, and the answers it gave with their positions placed in that log.
async fn settle<S: EventStore>(store: &S, raw: Vec<Raw>) -> (Vec<RecordedEvent>, Vec<Answer>) {
    let log = whole_log(store).await;
    let place: HashMap<LogPosition, usize> = log
        .iter()
        .enumerate()
        .map(|(i, e)| (e.position, i))
        .collect();
    let answers = raw
        .into_iter()
        .map(|r| match r {
            Raw::Ok(results) => Answer::Ok(
                results
                    .iter()
                    .map(|r| {
                        (
                            r.stream_version,
                            place.get(&r.first_position).copied(),
                            place.get(&r.last_position).copied(),
                        )
                    })
                    .collect(),
            ),
            Raw::Err(answer) => answer,
        })
        .collect();
    (log, answers)
}

/// The appends one step sends, given the batches sent before it; `None` for a retry before
/// anything was sent.
fn appends_of(op: Op, sent: &[Vec<StreamAppend>]) -> Option<Vec<StreamAppend>> {
    let earlier = |batch: usize| (!sent.is_empty()).then(|| sent[batch % sent.len()].clone());
    match op {
        Op::Append { streams, n } => Some(
            streams
                .into_iter()
                .map(|(s, e)| {
                    let events: Vec<NewEvent> = (0..n)
                        .map(|i| new_event("Noted", json!({ "i": i })))
                        .collect();
                    StreamAppend::new(
                        StreamId::new(NAMES[s]).expect("a valid id"),
                        e.get(),
                        events,
                    )
                })
                .collect(),
        ),
        Op::Retry { batch, expect } => earlier(batch).map(|mut again| {
            for a in &mut again {
                a.expected = expect.get();
            }
            again
        }),
        Op::Tamper { batch, reverse } => earlier(batch).map(|mut again| {
            let first = &mut again[0];
            if reverse && first.events.len() > 1 {
                first.events.reverse();
            } else {
                first.events[0] =
                    new_event("Noted", json!({ "other": true })).with_id(first.events[0].event_id);
            }
            again
        }),
    }
}

/// Runs `ops` against `store` (fresh, empty) and against a reference in-memory store, and
/// panics where they differ: an append's answer (versions, conflicts, idempotency verdicts,
/// the events its positions name), or the final log (order, streams, versions, ids, types,
/// payloads).
///
/// # Panics
/// On the first difference, naming it.
pub async fn check<S: EventStore>(store: &S, ops: Vec<Op>) {
    let model = InMemoryEventStore::new();
    let mut sent: Vec<Vec<StreamAppend>> = Vec::new();
    let (mut expected, mut actual) = (Vec::new(), Vec::new());
    for op in ops {
        let Some(appends) = appends_of(op, &sent) else {
            continue;
        };
        expected.push(run(&model, appends.clone()).await);
        actual.push(run(store, appends.clone()).await);
        sent.push(appends);
    }
    let (model_log, expected) = settle(&model, expected).await;
    let (store_log, actual) = settle(store, actual).await;
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        assert_eq!(a, e, "append {i} of {sent:?}");
    }
    let contents = |log: &[RecordedEvent]| {
        log.iter()
            .map(|e| {
                (
                    e.stream_id.clone(),
                    e.stream_version,
                    e.event_id,
                    e.event_type.clone(),
                    e.payload.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        contents(&store_log),
        contents(&model_log),
        "the log after {sent:?}"
    );
}

/// Sequences for [`check_concurrent`]: 2 to 6 writers, each with 1 to 12 steps.
pub fn concurrent_ops() -> impl Strategy<Value = Vec<Vec<Op>>> {
    prop::collection::vec(prop::collection::vec(op(), 1..13), 2..7)
}

/// What one writer sent, and how the store answered.
struct Sent {
    appends: Vec<StreamAppend>,
    answer: crate::Result<Vec<AppendResult>>,
}

async fn writer<S: EventStore>(store: &S, ops: Vec<Op>) -> Vec<Sent> {
    let mut sent: Vec<Vec<StreamAppend>> = Vec::new();
    let mut answers = Vec::new();
    for op in ops {
        let Some(appends) = appends_of(op, &sent) else {
            continue;
        };
        answers.push(store.append_multi(appends.clone()).await);
        sent.push(appends);
    }
    sent.into_iter()
        .zip(answers)
        .map(|(appends, answer)| Sent { appends, answer })
        .collect()
}

/// Runs each writer's `ops` at the same time against `store` (fresh, empty), then checks the
/// invariants no interleaving may break, against the store's whole log:
///
/// - no event id is stored twice, and each stream's versions are 1, 2, 3, ... in log order;
/// - every successful append's events are stored, on their streams, with their contents, at
///   the versions its answer gives, and its answer's positions name its first and last event;
/// - every stored event belongs to an append answered with success: a refused append (a
///   conflict, say) stored nothing, unless a later retry of the same ids succeeded;
/// - a conflict reports a version the stream really reached.
///
/// # Panics
/// On the first broken invariant, naming it.
pub async fn check_concurrent<S: EventStore>(store: &S, writers: Vec<Vec<Op>>) {
    let sent: Vec<Sent> =
        futures::future::join_all(writers.into_iter().map(|ops| writer(store, ops)))
            .await
            .into_iter()
            .flatten()
            .collect();
    let log = whole_log(store).await;
    let succeeded: std::collections::HashSet<uuid::Uuid> = sent
        .iter()
        .filter(|s| s.answer.is_ok())
        .flat_map(|s| s.appends.iter().flat_map(|a| &a.events))
        .map(|e| e.event_id)
        .collect();
    let mut by_id: HashMap<uuid::Uuid, &RecordedEvent> = HashMap::new();
    let mut heads: HashMap<&StreamId, u64> = HashMap::new();
    for event in &log {
        assert!(
            succeeded.contains(&event.event_id),
            "event {} is stored, but every append of it was refused",
            event.event_id
        );
        assert!(
            by_id.insert(event.event_id, event).is_none(),
            "event {} is stored twice",
            event.event_id
        );
        let head = heads.entry(&event.stream_id).or_insert(0);
        assert_eq!(
            event.stream_version,
            *head + 1,
            "stream {} skips or repeats a version in the log",
            event.stream_id
        );
        *head = event.stream_version;
    }
    for s in &sent {
        match &s.answer {
            Ok(results) => {
                assert_eq!(results.len(), s.appends.len(), "one result per stream");
                for (append, result) in s.appends.iter().zip(results) {
                    let n = append.events.len() as u64;
                    for (i, event) in append.events.iter().enumerate() {
                        let stored = by_id.get(&event.event_id).unwrap_or_else(|| {
                            panic!("event {} of a successful append is missing", event.event_id)
                        });
                        assert_eq!(stored.stream_id, append.stream, "stored on another stream");
                        assert_eq!(stored.payload, event.payload, "stored with other contents");
                        assert_eq!(
                            stored.stream_version,
                            result.stream_version + 1 - n + i as u64,
                            "stored at another version than the answer gives"
                        );
                        if i == 0 {
                            assert_eq!(stored.position, result.first_position, "first position");
                        }
                        if i as u64 + 1 == n {
                            assert_eq!(stored.position, result.last_position, "last position");
                        }
                    }
                }
            }
            Err(crate::Error::Conflict { stream, actual, .. }) => {
                let head = heads.get(stream).copied().unwrap_or(0);
                assert!(
                    *actual <= head,
                    "conflict on {stream} reports version {actual}, the stream ends at {head}"
                );
            }
            Err(_) => {}
        }
    }
}
