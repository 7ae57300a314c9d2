//! The conformance suite: one async check per rule of the [`EventStore`] contract.
//!
//! Each check takes a fresh, empty store and panics on a violation. Run them all with
//! [`conformance_tests!`](crate::conformance_tests).

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt, future::join_all};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Counter, CounterCommand, CounterEvent, new_event};
use crate::{
    Aggregate, CommandContext, DomainEvent, Error, EventStore, EventType, ExpectedVersion,
    LogPosition, LogRead, Metadata, NewEvent, Payload, RecordedEvent, Repository, Snapshot,
    StreamAppend, StreamId, StreamRead,
};

fn sid(name: &str) -> StreamId {
    StreamId::new(name).expect("a valid stream id")
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| new_event("Noted", json!({ "i": i })))
        .collect()
}

async fn read_stream<S: EventStore>(store: &S, stream: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, StreamRead::forward())
        .try_collect()
        .await
        .expect("reading a stream")
}

async fn read_all<S: EventStore>(store: &S, read: LogRead) -> Vec<RecordedEvent> {
    store
        .read_all(read)
        .try_collect()
        .await
        .expect("reading the log")
}

async fn log_len<S: EventStore>(store: &S) -> usize {
    read_all(store, LogRead::from_start()).await.len()
}

/// Appended events read back with every envelope field intact.
pub async fn append_and_read_back<S: EventStore>(store: S) {
    let stream = sid("order-1");
    let correlation = Uuid::now_v7();
    let mut metadata = Metadata {
        correlation_id: Some(correlation),
        causation_id: Some(Uuid::now_v7()),
        occurred_at: Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time")),
        custom: serde_json::Map::new(),
        trace: Some(crate::TraceContext::new_root()),
    };
    metadata.custom.insert("user".into(), json!("ada"));
    let batch: Vec<NewEvent> = events(3)
        .into_iter()
        .map(|e| e.with_metadata(metadata.clone()))
        .collect();
    let before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let result = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("first append");
    assert_eq!(result.stream_version, 3);
    assert!(result.first_position < result.last_position);

    let stored = read_stream(&store, &stream).await;
    assert_eq!(stored.len(), 3);
    for (i, (new, rec)) in batch.iter().zip(&stored).enumerate() {
        assert_eq!(rec.stream_version, i as u64 + 1);
        assert_eq!(rec.stream_id, stream);
        assert_eq!(rec.event_id, new.event_id);
        assert_eq!(rec.event_type, new.event_type);
        assert_eq!(rec.schema_version, 1);
        assert_eq!(rec.payload, new.payload, "payload text is kept exactly");
        assert_eq!(rec.metadata, metadata);
        assert!(rec.recorded_at > before, "recorded_at is the commit time");
    }
    assert_eq!(stored[0].position, result.first_position);
    assert_eq!(stored[2].position, result.last_position);
    assert!(stored.windows(2).all(|w| w[0].position < w[1].position));

    let more = store
        .append(&stream, ExpectedVersion::Exact(3), events(2))
        .await
        .expect("second append");
    assert_eq!(more.stream_version, 5);
    assert!(more.first_position > result.last_position);
    assert_eq!(store.stream_version(&stream).await.expect("version"), 5);
    assert_eq!(
        store.stream_version(&sid("nope")).await.expect("version"),
        0
    );
    let log = read_all(&store, LogRead::from_start()).await;
    let versions: Vec<u64> = log.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

fn assert_conflict(result: crate::Result<crate::AppendResult>, stream: &StreamId, actual: u64) {
    match result {
        Err(Error::Conflict {
            stream: s,
            actual: a,
            ..
        }) => {
            assert_eq!(&s, stream);
            assert_eq!(a, actual, "the conflict reports the actual version");
        }
        other => panic!("expected a conflict at version {actual}, got {other:?}"),
    }
}

/// Each kind of expected version is enforced, and a conflict writes nothing.
pub async fn expected_version_rules<S: EventStore>(store: S) {
    let a = sid("a");
    let r = store
        .append(&a, ExpectedVersion::StreamExists, events(1))
        .await;
    assert_conflict(r, &a, 0);
    let r = store.append(&a, ExpectedVersion::Exact(1), events(1)).await;
    assert_conflict(r, &a, 0);
    assert_eq!(log_len(&store).await, 0, "conflicts write nothing");

    store
        .append(&a, ExpectedVersion::NoStream, events(2))
        .await
        .expect("NoStream on a new stream");
    let r = store.append(&a, ExpectedVersion::NoStream, events(1)).await;
    assert_conflict(r, &a, 2);
    let r = store.append(&a, ExpectedVersion::Exact(0), events(1)).await;
    assert_conflict(r, &a, 2);
    let r = store.append(&a, ExpectedVersion::Exact(1), events(3)).await;
    assert_conflict(r, &a, 2);
    let r = store.append(&a, ExpectedVersion::Exact(3), events(1)).await;
    assert_conflict(r, &a, 2);
    assert_eq!(log_len(&store).await, 2, "conflicts write nothing");

    let r = store
        .append(&a, ExpectedVersion::StreamExists, events(1))
        .await
        .expect("StreamExists on an existing stream");
    assert_eq!(r.stream_version, 3);
    let r = store
        .append(&a, ExpectedVersion::Exact(3), events(1))
        .await
        .expect("Exact at the current version");
    assert_eq!(r.stream_version, 4);
    let r = store
        .append(&a, ExpectedVersion::Any, events(2))
        .await
        .expect("Any");
    assert_eq!(r.stream_version, 6);
    let b = sid("b");
    let r = store
        .append(&b, ExpectedVersion::Any, events(1))
        .await
        .expect("Any creates a stream");
    assert_eq!(r.stream_version, 1);
    let r = store
        .append(&sid("c"), ExpectedVersion::Exact(0), events(1))
        .await
        .expect("Exact(0) creates a stream");
    assert_eq!(r.stream_version, 1);
    let versions: Vec<u64> = read_stream(&store, &a)
        .await
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
}

/// 32 writers race on one stream, each several times: every append succeeds or conflicts,
/// versions end up 1..N without gap or duplicate, and N is the number of successes.
pub async fn concurrent_writers_one_stream<S: EventStore>(store: S) {
    let stream = sid("contended");
    let writer = |w: usize| {
        let (store, stream) = (&store, &stream);
        async move {
            let mut stored = Vec::new();
            for attempt in 0..4 {
                let version = store.stream_version(stream).await.expect("version");
                let event = new_event("Noted", json!({ "writer": w, "attempt": attempt }));
                let id = event.event_id;
                match store
                    .append(stream, ExpectedVersion::Exact(version), vec![event])
                    .await
                {
                    Ok(r) => {
                        assert_eq!(r.stream_version, version + 1);
                        stored.push(id);
                    }
                    Err(Error::Conflict { .. }) => {}
                    Err(other) => panic!("writer {w}: expected success or conflict, got {other}"),
                }
            }
            stored
        }
    };
    let succeeded: Vec<Uuid> = join_all((0..32).map(writer))
        .await
        .into_iter()
        .flatten()
        .collect();
    let stored = read_stream(&store, &stream).await;
    let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
    let expected: Vec<u64> = (1..=succeeded.len() as u64).collect();
    assert_eq!(versions, expected, "versions are 1..N, N = successes");
    let stored_ids: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
    let succeeded: HashSet<Uuid> = succeeded.into_iter().collect();
    assert_eq!(
        stored_ids, succeeded,
        "exactly the successful appends are stored"
    );
}

/// 64 creators race to create one stream with `NoStream`: exactly one wins.
pub async fn concurrent_stream_creators<S: EventStore>(store: S) {
    let stream = sid("created-once");
    let attempts = (0..64).map(|i| {
        let (store, stream) = (&store, &stream);
        async move {
            let batch = vec![
                new_event("Created", json!({ "by": i })),
                new_event("Noted", json!({})),
            ];
            let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
            (
                ids,
                store.append(stream, ExpectedVersion::NoStream, batch).await,
            )
        }
    });
    let mut winners = Vec::new();
    for (ids, result) in join_all(attempts).await {
        match result {
            Ok(r) => {
                assert_eq!(r.stream_version, 2);
                winners.push(ids);
            }
            Err(Error::Conflict { actual, .. }) => assert_eq!(actual, 2),
            Err(other) => panic!("expected success or conflict, got {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creator wins");
    let stored: Vec<Uuid> = read_stream(&store, &stream)
        .await
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(stored, winners[0]);
    assert_eq!(log_len(&store).await, 2);
}

/// The same append retried concurrently with `Any` is stored once; every caller gets the
/// original result.
pub async fn concurrent_identical_retries<S: EventStore>(store: S) {
    let stream = sid("retried");
    store
        .append(&stream, ExpectedVersion::Any, events(1))
        .await
        .expect("seed");
    let batch = events(3);
    let tries = (0..16).map(|_| store.append(&stream, ExpectedVersion::Any, batch.clone()));
    let results: Vec<_> = join_all(tries).await;
    let first = results[0].as_ref().expect("a retry succeeds").clone();
    for r in &results {
        assert_eq!(r.as_ref().expect("every retry succeeds"), &first);
    }
    assert_eq!(first.stream_version, 4);
    assert_eq!(read_stream(&store, &stream).await.len(), 4, "stored once");
}

/// A multi-stream append is all or nothing.
pub async fn multi_stream_appends_are_atomic<S: EventStore>(store: S) {
    let (a, b, c) = (sid("acc-a"), sid("acc-b"), sid("acc-c"));
    store
        .append(&a, ExpectedVersion::NoStream, events(1))
        .await
        .expect("seed a");
    let results = store
        .append_multi(vec![
            StreamAppend::new(a.clone(), ExpectedVersion::Exact(1), events(2)),
            StreamAppend::new(b.clone(), ExpectedVersion::NoStream, events(1)),
        ])
        .await
        .expect("multi-stream append");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].stream_version, 3);
    assert_eq!(results[1].stream_version, 1);
    assert!(results[0].last_position < results[1].first_position);

    let before = log_len(&store).await;
    let failed = store
        .append_multi(vec![
            StreamAppend::new(a.clone(), ExpectedVersion::Exact(3), events(1)),
            StreamAppend::new(c.clone(), ExpectedVersion::NoStream, events(2)),
            StreamAppend::new(b.clone(), ExpectedVersion::Exact(5), events(1)),
        ])
        .await;
    match failed {
        Err(Error::Conflict { stream, actual, .. }) => {
            assert_eq!(stream, b);
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict on b, got {other:?}"),
    }
    assert_eq!(
        log_len(&store).await,
        before,
        "a conflict anywhere writes nothing"
    );
    assert_eq!(store.stream_version(&a).await.expect("version"), 3);
    assert_eq!(store.stream_version(&c).await.expect("version"), 0);

    let twice = store
        .append_multi(vec![
            StreamAppend::new(c.clone(), ExpectedVersion::Any, events(1)),
            StreamAppend::new(c.clone(), ExpectedVersion::Any, events(1)),
        ])
        .await;
    assert!(
        matches!(twice, Err(Error::InvalidAppend { .. })),
        "{twice:?}"
    );
    assert_eq!(log_len(&store).await, before);
}

/// Retrying a stored append returns the original result and writes nothing; reusing an id for
/// other content is an idempotency conflict.
pub async fn idempotent_retries<S: EventStore>(store: S) {
    let (s, t) = (sid("idem"), sid("other"));
    let batch = events(2);
    let original = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("append");
    store
        .append(&s, ExpectedVersion::Exact(2), events(1))
        .await
        .expect("a later append");
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
    ] {
        let again = store
            .append(&s, expected, batch.clone())
            .await
            .unwrap_or_else(|e| panic!("retry with {expected:?} failed: {e}"));
        assert_eq!(again, original, "a retry returns the original result");
    }
    assert_eq!(log_len(&store).await, 3, "retries write nothing");

    let mut changed = batch.clone();
    changed[1].payload = Payload::from_serialize(&json!({ "i": 99 })).expect("json");
    let r = store.append(&s, ExpectedVersion::Any, changed).await;
    assert!(matches!(r, Err(Error::IdempotencyConflict { .. })), "{r:?}");

    let partial = vec![batch[1].clone(), new_event("Noted", json!({}))];
    let r = store
        .append(&s, ExpectedVersion::Any, partial.clone())
        .await;
    assert!(matches!(r, Err(Error::IdempotencyConflict { .. })), "{r:?}");
    let r = store.append(&t, ExpectedVersion::Any, batch.clone()).await;
    assert!(matches!(r, Err(Error::IdempotencyConflict { .. })), "{r:?}");
    let reordered = vec![batch[1].clone(), batch[0].clone()];
    let r = store.append(&s, ExpectedVersion::Any, reordered).await;
    assert!(matches!(r, Err(Error::IdempotencyConflict { .. })), "{r:?}");
    assert_eq!(
        log_len(&store).await,
        3,
        "idempotency conflicts write nothing"
    );
    assert_eq!(store.stream_version(&t).await.expect("version"), 0);

    let multi = vec![
        StreamAppend::new(sid("m1"), ExpectedVersion::NoStream, events(1)),
        StreamAppend::new(sid("m2"), ExpectedVersion::NoStream, events(2)),
    ];
    let first = store.append_multi(multi.clone()).await.expect("multi");
    let again = store.append_multi(multi).await.expect("multi retry");
    assert_eq!(first, again);
    assert_eq!(log_len(&store).await, 6);
}

/// Stream ids that break naive SQL or pattern matching are stored and read byte-identically.
pub async fn hostile_stream_ids_round_trip<S: EventStore>(store: S) {
    let long = "x".repeat(crate::MAX_NAME_BYTES);
    let names = [
        "'; DROP TABLE events; --",
        "a%",
        "%",
        "_",
        "a_b",
        "\\",
        "back\\slash\\",
        "\"quoted\"",
        "emoji-🦀-🎉",
        "tab\tnew\nline",
        "$1",
        long.as_str(),
    ];
    for name in names {
        store
            .append(&sid(name), ExpectedVersion::NoStream, events(1))
            .await
            .unwrap_or_else(|e| panic!("append to {name:?}: {e}"));
    }
    for name in names {
        let stored = read_stream(&store, &sid(name)).await;
        assert_eq!(stored.len(), 1, "{name:?} reads only its own event");
        assert_eq!(stored[0].stream_id.as_str().as_bytes(), name.as_bytes());
        assert_eq!(store.stream_version(&sid(name)).await.expect("version"), 1);
    }
    assert!(
        read_stream(&store, &sid("a")).await.is_empty(),
        "'a%' is no pattern"
    );
    let log: Vec<String> = read_all(&store, LogRead::from_start())
        .await
        .iter()
        .map(|e| e.stream_id.to_string())
        .collect();
    assert_eq!(log, names);
    assert!(StreamId::new(format!("{long}x")).is_err());
}

/// Payloads and metadata with escapes, NUL characters, emoji and deep nesting come back as
/// the exact text that was written.
pub async fn awkward_payloads_round_trip<S: EventStore>(store: S) {
    let texts = [
        r#"{"nul":"a\u0000b"}"#,
        r#"{"emoji":"🦀","escaped":"\ud83e\udd80","quote":"\"'"}"#,
        r#"{ "spaced" : [1, 2.50, -0, 1e3] , "z":null}"#,
        r#"[[[[[[[[[[{"deep":true}]]]]]]]]]]"#,
        r#""just a string""#,
        "42",
    ];
    let mut metadata = Metadata::default();
    metadata.custom.insert("nul".into(), json!("x\u{0}y"));
    let batch: Vec<NewEvent> = texts
        .iter()
        .map(|t| {
            NewEvent::new(
                EventType::new("Odd").expect("type"),
                1,
                Payload::from_json(*t).expect("valid JSON"),
            )
            .with_metadata(metadata.clone())
        })
        .collect();
    let s = sid("odd");
    store
        .append(&s, ExpectedVersion::NoStream, batch)
        .await
        .expect("append");
    let stored = read_stream(&store, &s).await;
    let back: Vec<&str> = stored.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(back, texts);
    assert!(stored.iter().all(|e| e.metadata == metadata));
    assert!(Payload::from_json("{not json").is_err());
}

/// Reading the global log after any position returns exactly the events after it, once each,
/// in the same order, whatever the page size.
pub async fn global_log_from_every_position<S: EventStore>(store: S) {
    let streams = [sid("g1"), sid("g2"), sid("g3")];
    for round in 0..4 {
        for (i, s) in streams.iter().enumerate() {
            store
                .append(s, ExpectedVersion::Any, events(1 + (round + i) % 3))
                .await
                .expect("append");
        }
        store
            .append_multi(vec![
                StreamAppend::new(streams[0].clone(), ExpectedVersion::Any, events(1)),
                StreamAppend::new(streams[2].clone(), ExpectedVersion::Any, events(2)),
            ])
            .await
            .expect("multi");
    }
    let all = read_all(&store, LogRead::from_start()).await;
    let ids: Vec<Uuid> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "each once"
    );
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "in order"
    );
    for page_size in [1, 3, 7, 1000] {
        let paged = read_all(&store, LogRead::from_start().with_page_size(page_size)).await;
        let paged: Vec<Uuid> = paged.iter().map(|e| e.event_id).collect();
        assert_eq!(paged, ids, "page size {page_size}");
    }
    for (i, event) in all.iter().enumerate() {
        let rest = read_all(&store, LogRead::after(event.position).with_page_size(4)).await;
        let rest: Vec<Uuid> = rest.iter().map(|e| e.event_id).collect();
        assert_eq!(rest, ids[i + 1..], "after {}", event.position);
    }
    let limited = read_all(&store, LogRead::after(all[2].position).with_limit(5)).await;
    assert_eq!(limited.len(), 5);
    assert_eq!(limited[0].event_id, ids[3]);
    assert!(
        read_all(&store, LogRead::after(all[all.len() - 1].position))
            .await
            .is_empty()
    );
}

/// Streams read forward and backward from any version, with limits and small pages.
pub async fn read_stream_directions_and_limits<S: EventStore>(store: S) {
    let s = sid("dirs");
    store
        .append(&s, ExpectedVersion::NoStream, events(10))
        .await
        .expect("append");
    let versions = |read: StreamRead| {
        let store = &store;
        let s = &s;
        async move {
            store
                .read_stream(s, read)
                .map_ok(|e| e.stream_version)
                .try_collect::<Vec<u64>>()
                .await
                .expect("read")
        }
    };
    assert_eq!(
        versions(StreamRead::forward_from(4)).await,
        (4..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        versions(StreamRead::backward()).await,
        (1..=10).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        versions(StreamRead::backward_from(5).with_limit(2)).await,
        [5, 4]
    );
    assert_eq!(
        versions(StreamRead::forward().with_limit(3).with_page_size(2)).await,
        [1, 2, 3]
    );
    assert_eq!(
        versions(StreamRead::backward().with_page_size(3)).await,
        (1..=10).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        versions(StreamRead::forward().with_page_size(1))
            .await
            .len(),
        10
    );
    assert!(versions(StreamRead::forward_from(11)).await.is_empty());
    assert!(
        versions(StreamRead::forward().with_limit(0))
            .await
            .is_empty()
    );
    let missing = store
        .read_stream(&sid("missing"), StreamRead::forward())
        .try_collect::<Vec<_>>()
        .await
        .expect("read");
    assert!(missing.is_empty());

    // A read for folding returns what folding needs exactly as stored; the other fields are
    // either as stored or left out (nil, empty, the epoch), as `for_folding` documents.
    for read in [
        StreamRead::forward(),
        StreamRead::forward_from(4).with_page_size(3).with_limit(5),
    ] {
        let full: Vec<_> = store
            .read_stream(&s, read)
            .try_collect()
            .await
            .expect("read");
        let folding: Vec<_> = store
            .read_stream(&s, read.for_folding())
            .try_collect()
            .await
            .expect("read for folding");
        assert_eq!(folding.len(), full.len());
        for (f, e) in folding.iter().zip(&full) {
            assert_eq!(
                (f.position, &f.stream_id, f.stream_version),
                (e.position, &e.stream_id, e.stream_version)
            );
            assert_eq!(
                (&f.event_type, f.schema_version, &f.payload),
                (&e.event_type, e.schema_version, &e.payload)
            );
            assert!(f.event_id == e.event_id || f.event_id.is_nil());
            assert!(f.metadata == e.metadata || f.metadata == crate::Metadata::default());
            assert!(
                f.recorded_at == e.recorded_at || f.recorded_at == time::OffsetDateTime::UNIX_EPOCH
            );
        }
    }
}

/// Oversized events, empty appends and repeated ids fail with typed errors and write nothing.
pub async fn invalid_appends_write_nothing<S: EventStore>(store: S) {
    let s = sid("limits");
    let huge = "x".repeat(crate::Limits::default().max_event_bytes + 1);
    let big = vec![
        events(1).remove(0),
        new_event("Big", json!({ "blob": huge })),
    ];
    let r = store.append(&s, ExpectedVersion::Any, big).await;
    assert!(matches!(r, Err(Error::PayloadTooLarge { .. })), "{r:?}");
    let r = store.append(&s, ExpectedVersion::Any, vec![]).await;
    assert!(matches!(r, Err(Error::InvalidAppend { .. })), "{r:?}");
    let one = events(1).remove(0);
    let r = store
        .append(&s, ExpectedVersion::Any, vec![one.clone(), one])
        .await;
    assert!(matches!(r, Err(Error::InvalidAppend { .. })), "{r:?}");
    let r = store.append_multi(vec![]).await;
    assert!(matches!(r, Err(Error::InvalidAppend { .. })), "{r:?}");
    assert_eq!(log_len(&store).await, 0);
    assert_eq!(store.stream_version(&s).await.expect("version"), 0);
}

fn snapshot(stream: &StreamId, version: u64, schema: u32, payload: serde_json::Value) -> Snapshot {
    Snapshot {
        stream_id: stream.clone(),
        stream_version: version,
        schema_version: schema,
        payload: Payload::from_serialize(&payload).expect("json"),
        taken_at: OffsetDateTime::now_utc(),
    }
}

/// Snapshots round-trip, and the one with the highest version is kept.
pub async fn snapshots_keep_the_latest<S: EventStore>(store: S) {
    let s = sid("snap");
    assert!(store.load_snapshot(&s).await.expect("load").is_none());
    let v3 = snapshot(&s, 3, 1, json!({ "total": 3 }));
    store.save_snapshot(v3.clone()).await.expect("save");
    let loaded = store.load_snapshot(&s).await.expect("load").expect("some");
    assert_eq!(loaded.stream_version, 3);
    assert_eq!(loaded.schema_version, 1);
    assert_eq!(loaded.payload, v3.payload);
    assert_eq!(loaded.stream_id, s);
    store
        .save_snapshot(snapshot(&s, 5, 2, json!({ "total": 5 })))
        .await
        .expect("save");
    store
        .save_snapshot(snapshot(&s, 4, 2, json!({ "total": 4 })))
        .await
        .expect("save an older one");
    let loaded = store.load_snapshot(&s).await.expect("load").expect("some");
    assert_eq!((loaded.stream_version, loaded.schema_version), (5, 2));
    assert_eq!(loaded.payload.as_str(), r#"{"total":5}"#);
    assert!(
        store
            .load_snapshot(&sid("other"))
            .await
            .expect("load")
            .is_none()
    );
}

/// `read_aggregate` answers with the stream's snapshot of the schema version asked for (none
/// when another version is stored, or none is asked for) and the events after it, read as
/// asked: from a later first version, across pages, with a limit, for folding.
pub async fn read_aggregate_snapshot_and_tail<S: EventStore>(store: S) {
    let s = sid("agg");
    store
        .append(&s, ExpectedVersion::NoStream, events(12))
        .await
        .expect("append");
    let read = |snapshot_version: Option<u32>, read: StreamRead| {
        let store = &store;
        let s = &s;
        async move {
            let found = store
                .read_aggregate(s, snapshot_version, read)
                .await
                .expect("read_aggregate");
            let events: Vec<RecordedEvent> = found.events.try_collect().await.expect("events");
            (found.snapshot, events)
        }
    };
    let versions =
        |events: &[RecordedEvent]| events.iter().map(|e| e.stream_version).collect::<Vec<_>>();

    let (found, events) = read(Some(1), StreamRead::forward()).await;
    assert!(found.is_none());
    assert_eq!(versions(&events), (1..=12).collect::<Vec<_>>());
    assert_eq!(events, read_stream(&store, &s).await);

    store
        .save_snapshot(snapshot(&s, 5, 1, json!({ "total": 5 })))
        .await
        .expect("save");
    let stored = store.load_snapshot(&s).await.expect("load").expect("some");
    let (found, events) = read(Some(1), StreamRead::forward()).await;
    assert_eq!(found.as_ref(), Some(&stored));
    assert_eq!(versions(&events), (6..=12).collect::<Vec<_>>());
    let all = read_stream(&store, &s).await;
    assert_eq!(events, all[5..]);

    for (asked, read_as) in [
        (Some(2), StreamRead::forward()),
        (None, StreamRead::forward()),
    ] {
        let (found, events) = read(asked, read_as).await;
        assert!(found.is_none(), "{asked:?}");
        assert_eq!(versions(&events), (1..=12).collect::<Vec<_>>());
    }
    let (found, events) = read(None, StreamRead::forward_from(3)).await;
    assert!(found.is_none());
    assert_eq!(versions(&events), (3..=12).collect::<Vec<_>>());
    let (found, events) = read(Some(1), StreamRead::forward_from(8)).await;
    assert_eq!(found.map(|f| f.stream_version), Some(5));
    assert_eq!(versions(&events), (8..=12).collect::<Vec<_>>());
    let (_, events) = read(Some(1), StreamRead::forward().with_page_size(2)).await;
    assert_eq!(versions(&events), (6..=12).collect::<Vec<_>>());
    let (_, events) = read(
        Some(1),
        StreamRead::forward().with_page_size(3).with_limit(4),
    )
    .await;
    assert_eq!(versions(&events), [6, 7, 8, 9]);
    let (_, events) = read(None, StreamRead::forward().with_page_size(5).with_limit(0)).await;
    assert!(events.is_empty());

    // For folding: what folding needs as stored, the rest as stored or left out.
    for page in [1000, 2] {
        let (found, folding) = read(
            Some(1),
            StreamRead::forward().with_page_size(page).for_folding(),
        )
        .await;
        assert_eq!(found.as_ref(), Some(&stored));
        assert_eq!(folding.len(), 7);
        for (f, e) in folding.iter().zip(&all[5..]) {
            assert_eq!(
                (f.position, &f.stream_id, f.stream_version),
                (e.position, &e.stream_id, e.stream_version)
            );
            assert_eq!(
                (&f.event_type, f.schema_version, &f.payload),
                (&e.event_type, e.schema_version, &e.payload)
            );
            assert!(f.event_id == e.event_id || f.event_id.is_nil());
            assert!(f.metadata == e.metadata || f.metadata == crate::Metadata::default());
            assert!(f.recorded_at == e.recorded_at || f.recorded_at == OffsetDateTime::UNIX_EPOCH);
        }
    }

    // A snapshot of the whole stream leaves nothing to read; a missing stream has nothing.
    store
        .save_snapshot(snapshot(&s, 12, 1, json!({ "total": 12 })))
        .await
        .expect("save");
    let (found, events) = read(Some(1), StreamRead::forward().for_folding()).await;
    assert_eq!(found.map(|f| f.stream_version), Some(12));
    assert!(events.is_empty());
    let missing = store
        .read_aggregate(&sid("agg-missing"), Some(1), StreamRead::forward())
        .await
        .expect("read_aggregate");
    assert!(missing.snapshot.is_none());
    assert!(
        missing
            .events
            .try_collect::<Vec<_>>()
            .await
            .expect("read")
            .is_empty()
    );
}

/// The repository snapshots by policy, loads snapshot plus tail, and falls back to a full
/// replay when a snapshot does not decode or has another schema version.
pub async fn repository_snapshots_and_fallback<S: EventStore>(store: S) {
    let repo = Repository::<Counter, _>::new(store);
    let ctx = CommandContext::new();
    for amount in 1..=7 {
        repo.execute("c1", CounterCommand::Add(amount), &ctx)
            .await
            .expect("command");
    }
    let stream = repo.stream_id("c1").expect("stream id");
    let snap = repo
        .store()
        .load_snapshot(&stream)
        .await
        .expect("load")
        .expect("a snapshot every 5 events");
    assert_eq!(snap.stream_version, 5);
    assert_eq!(snap.schema_version, Counter::SNAPSHOT_VERSION);
    let expected = Counter {
        total: 28,
        events: 7,
    };
    assert_eq!(repo.load("c1").await.expect("load").state, expected);

    // A snapshot that lies in the right schema is trusted: proof that it is used at all.
    repo.store()
        .save_snapshot(snapshot(
            &stream,
            7,
            1,
            json!({ "total": 1000, "events": 7 }),
        ))
        .await
        .expect("save");
    assert_eq!(repo.load("c1").await.expect("load").state.total, 1000);
    // One that does not decode, or has another schema version, is ignored.
    repo.store()
        .save_snapshot(snapshot(&stream, 7, 1, json!({ "bogus": true })))
        .await
        .expect("save");
    let loaded = repo.load("c1").await.expect("load");
    assert_eq!(
        (loaded.state.clone(), loaded.version),
        (expected.clone(), 7)
    );
    repo.store()
        .save_snapshot(snapshot(
            &stream,
            7,
            99,
            json!({ "total": 1000, "events": 7 }),
        ))
        .await
        .expect("save");
    assert_eq!(repo.load("c1").await.expect("load").state, expected);

    let rejected = repo.execute("c1", CounterCommand::Add(-5), &ctx).await;
    assert!(matches!(rejected, Err(crate::CommandError::Rejected(_))));
    let done = repo
        .execute("c1", CounterCommand::Reset, &ctx)
        .await
        .expect("reset");
    assert_eq!(done.version, 8);
    let last = read_stream(repo.store(), &stream)
        .await
        .pop()
        .expect("event");
    assert_eq!(last.metadata.causation_id, Some(ctx.command_id));
    assert_eq!(last.metadata.correlation_id, Some(ctx.command_id));
}

/// Old schema versions are upcast on read; unknown types and versions are typed errors.
pub async fn upcasting_on_read<S: EventStore>(store: S) {
    let stream = StreamId::for_aggregate(Counter::TYPE, "old").expect("stream id");
    let v1 = NewEvent::new(
        EventType::new("Added").expect("type"),
        1,
        Payload::from_json(r#"{"n":5}"#).expect("json"),
    );
    let v2 = CounterEvent::Added { amount: 2 }
        .to_new_event()
        .expect("encode");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![v1, v2])
        .await
        .expect("append");
    let stored = read_stream(&store, &stream).await;
    assert_eq!(
        stored[0].schema_version, 1,
        "stored bytes are never rewritten"
    );
    assert_eq!(stored[0].payload.as_str(), r#"{"n":5}"#);
    assert_eq!(
        CounterEvent::decode(&stored[0]).expect("upcast"),
        CounterEvent::Added { amount: 5 }
    );
    let repo = Repository::<Counter, _>::new(store);
    assert_eq!(repo.load("old").await.expect("load").state.total, 7);

    let stray = StreamId::for_aggregate(Counter::TYPE, "stray").expect("stream id");
    let future_version = NewEvent::new(
        EventType::new("Added").expect("type"),
        3,
        Payload::from_json(r#"{"amount":1}"#).expect("json"),
    );
    repo.store()
        .append(&stray, ExpectedVersion::NoStream, vec![future_version])
        .await
        .expect("append");
    match repo.load("stray").await {
        Err(Error::UnknownSchemaVersion {
            event_type,
            schema_version: 3,
            latest: 2,
            position,
        }) => {
            assert_eq!(event_type, "Added");
            assert!(position > LogPosition::START);
        }
        other => panic!("expected an unknown schema version, got {other:?}"),
    }
    repo.store()
        .append(
            &stray,
            ExpectedVersion::Any,
            vec![new_event("Teleported", json!({}))],
        )
        .await
        .expect("append");
    let stored = read_stream(repo.store(), &stray).await;
    match CounterEvent::decode(&stored[1]) {
        Err(Error::UnknownEventType {
            event_type,
            schema_version: 1,
            position,
        }) => {
            assert_eq!(event_type, "Teleported");
            assert_eq!(position, stored[1].position);
        }
        other => panic!("expected an unknown event type, got {other:?}"),
    }
}

/// A subscription delivers the stored events, then new ones as they commit, without gap or
/// repeat, and resumes after a checkpoint.
pub async fn subscribe_catch_up_then_live<S: EventStore>(store: S) {
    let s = sid("live");
    store
        .append(&s, ExpectedVersion::NoStream, events(3))
        .await
        .expect("append");
    let (seen, written) = futures::join!(
        store
            .subscribe(LogPosition::START)
            .take(7)
            .try_collect::<Vec<_>>(),
        async {
            let mut ids = Vec::new();
            for _ in 0..4 {
                let batch = events(1);
                ids.push(batch[0].event_id);
                store
                    .append(&s, ExpectedVersion::Any, batch)
                    .await
                    .expect("append");
            }
            ids
        }
    );
    let seen = seen.expect("subscription");
    let versions: Vec<u64> = seen.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7]);
    let live: Vec<Uuid> = seen[3..].iter().map(|e| e.event_id).collect();
    assert_eq!(live, written);

    let resumed: Vec<u64> = store
        .subscribe(seen[4].position)
        .take(2)
        .map_ok(|e| e.stream_version)
        .try_collect()
        .await
        .expect("resume");
    assert_eq!(resumed, [6, 7]);
}

/// The head position is the last event a log reader can see.
pub async fn head_position_follows_the_log<S: EventStore>(store: S) {
    assert_eq!(store.head_position().await.expect("head"), None);
    store
        .append(&sid("h"), ExpectedVersion::Any, events(3))
        .await
        .expect("append");
    let r = store
        .append(&sid("h2"), ExpectedVersion::Any, events(2))
        .await
        .expect("append");
    assert_eq!(
        store.head_position().await.expect("head"),
        Some(r.last_position)
    );
    let last = read_all(&store, LogRead::from_start())
        .await
        .pop()
        .expect("events");
    assert_eq!(
        Some(last.position),
        store.head_position().await.expect("head")
    );
}

/// A store keeps one identity for all its handles, and counts the events between two
/// positions exactly as a reader of the log sees them.
pub async fn identity_and_event_counts<S: EventStore + Clone>(store: S) {
    let id = store.store_id().await.expect("store id");
    assert_eq!(store.clone().store_id().await.expect("store id"), id);
    assert_ne!(id, uuid::Uuid::nil(), "a store id is random, never nil");
    assert_eq!(
        store
            .count_events(LogPosition::START, LogPosition::new(u64::MAX, u64::MAX))
            .await
            .expect("count"),
        0
    );
    for (i, n) in [3usize, 1, 4, 2].into_iter().enumerate() {
        store
            .append(&sid(&format!("count-{i}")), ExpectedVersion::Any, events(n))
            .await
            .expect("append");
    }
    let log = read_all(&store, LogRead::from_start()).await;
    let mut positions = vec![LogPosition::START];
    positions.extend(log.iter().map(|e| e.position));
    for (a, after) in positions.iter().enumerate() {
        for (t, through) in positions.iter().enumerate() {
            let expected = t.saturating_sub(a) as u64;
            let counted = store.count_events(*after, *through).await.expect("count");
            assert_eq!(counted, expected, "events after {after} through {through}");
        }
    }
    let end = LogPosition::new(u64::MAX, u64::MAX);
    assert_eq!(
        store
            .count_events(LogPosition::START, end)
            .await
            .expect("count"),
        log.len() as u64
    );
    assert_eq!(store.store_id().await.expect("store id"), id);
}
