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

/// A store's whole log, and the answers it gave with their positions placed in that log.
async fn settle<S: EventStore>(store: &S, raw: Vec<Raw>) -> (Vec<RecordedEvent>, Vec<Answer>) {
    let log: Vec<RecordedEvent> = store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .expect("reading the whole log");
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
        let appends = match op {
            Op::Append { streams, n } => streams
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
