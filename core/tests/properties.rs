//! Property tests of the core invariants: appends against a model, upcaster chains, and the
//! envelope's serialized form.

use std::collections::HashMap;

use annals::{
    BoxError, Error, EventStore, EventType, ExpectedVersion, InMemoryEventStore, LogPosition,
    LogRead, Metadata, NewEvent, Payload, RecordedEvent, StreamId, StreamRead, UpcasterChain,
};
use futures::{TryStreamExt, executor::block_on, future::join_all};
use proptest::prelude::*;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

fn expected_strategy() -> impl Strategy<Value = ExpectedVersion> {
    prop_oneof![
        Just(ExpectedVersion::Any),
        Just(ExpectedVersion::NoStream),
        Just(ExpectedVersion::StreamExists),
        (0u64..6).prop_map(ExpectedVersion::Exact),
    ]
}

#[derive(Debug, Clone)]
struct Op {
    stream: usize,
    expected: ExpectedVersion,
    events: usize,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    (0usize..3, expected_strategy(), 1usize..4).prop_map(|(stream, expected, events)| Op {
        stream,
        expected,
        events,
    })
}

fn batch(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            NewEvent::new(
                EventType::new("Noted").unwrap(),
                1,
                Payload::from_serialize(&json!({ "i": i })).unwrap(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any sequence of appends with random expected versions behaves exactly like a map of
    /// stream versions: the same successes, the same conflicts (with the actual version), and
    /// a log holding exactly the successful appends in order.
    #[test]
    fn appends_follow_the_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        let store = InMemoryEventStore::new();
        let streams: Vec<StreamId> = (0..3).map(|i| StreamId::new(format!("s{i}")).unwrap()).collect();
        let mut model: HashMap<usize, u64> = HashMap::new();
        let mut expected_log: Vec<(usize, u64)> = Vec::new();
        for op in &ops {
            let actual = model.get(&op.stream).copied().unwrap_or(0);
            let result = block_on(store.append(&streams[op.stream], op.expected, batch(op.events)));
            if op.expected.accepts(actual) {
                let r = result.expect("the model accepts this append");
                prop_assert_eq!(r.stream_version, actual + op.events as u64);
                for v in actual + 1..=actual + op.events as u64 {
                    expected_log.push((op.stream, v));
                }
                model.insert(op.stream, r.stream_version);
            } else {
                match result {
                    Err(Error::Conflict { actual: a, .. }) => prop_assert_eq!(a, actual),
                    other => prop_assert!(false, "expected a conflict, got {:?}", other),
                }
            }
        }
        let log: Vec<RecordedEvent> = block_on(store.read_all(LogRead::from_start()).try_collect()).unwrap();
        let got: Vec<(usize, u64)> = log
            .iter()
            .map(|e| (streams.iter().position(|s| *s == e.stream_id).unwrap(), e.stream_version))
            .collect();
        prop_assert_eq!(got, expected_log);
        for (i, s) in streams.iter().enumerate() {
            prop_assert_eq!(block_on(store.stream_version(s)).unwrap(), model.get(&i).copied().unwrap_or(0));
        }
    }

    /// Concurrent appends with random expected versions never leave a gap or a duplicate
    /// version, and exactly the successful appends are stored.
    #[test]
    fn concurrent_appends_keep_versions_dense(ops in prop::collection::vec(op_strategy(), 1..30)) {
        let store = InMemoryEventStore::new();
        let streams: Vec<StreamId> = (0..3).map(|i| StreamId::new(format!("s{i}")).unwrap()).collect();
        let results = block_on(join_all(ops.iter().map(|op| {
            let events = batch(op.events);
            let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
            let fut = store.append(&streams[op.stream], op.expected, events);
            async move { (ids, fut.await) }
        })));
        let mut stored_ids = Vec::new();
        for (ids, result) in results {
            match result {
                Ok(_) => stored_ids.extend(ids),
                Err(Error::Conflict { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected error {}", other),
            }
        }
        let mut all_ids = Vec::new();
        for s in &streams {
            let events: Vec<RecordedEvent> = block_on(store.read_stream(s, StreamRead::forward()).try_collect()).unwrap();
            let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
            prop_assert_eq!(versions, (1..=events.len() as u64).collect::<Vec<_>>());
            all_ids.extend(events.iter().map(|e| e.event_id));
        }
        all_ids.sort();
        stored_ids.sort();
        prop_assert_eq!(all_ids, stored_ids);
    }
}

fn marker_step(version: u32) -> impl Fn(Value) -> Result<Value, BoxError> + Send + Sync {
    move |mut v: Value| {
        let trail = v["trail"].as_array().cloned().unwrap_or_default();
        let mut trail = trail;
        trail.push(json!(version));
        v["trail"] = Value::Array(trail);
        Ok(v)
    }
}

fn recorded(event_type: &str, version: u32, payload: Value) -> RecordedEvent {
    RecordedEvent {
        position: LogPosition::serial(7),
        stream_id: StreamId::new("s").unwrap(),
        stream_version: 1,
        event_id: Uuid::now_v7(),
        event_type: EventType::new(event_type).unwrap(),
        schema_version: version,
        payload: Payload::from_serialize(&payload).unwrap(),
        metadata: Metadata::default(),
        recorded_at: OffsetDateTime::now_utc(),
    }
}

proptest! {
    /// A chain of steps 1→2→…→latest applies exactly the steps from the stored version up,
    /// in order, and reports the latest version.
    #[test]
    fn upcasting_runs_each_step_once_in_order(latest in 1u32..10, stored in 1u32..10, x in any::<i64>()) {
        let stored = stored.min(latest);
        let mut builder = UpcasterChain::builder().event_type("E", latest);
        for from in 1..latest {
            builder = builder.step("E", from, marker_step(from));
        }
        let chain = builder.build().unwrap();
        let out = chain.upcast(recorded("E", stored, json!({ "x": x }))).unwrap();
        prop_assert_eq!(out.schema_version, latest);
        let value: Value = out.payload.deserialize().unwrap();
        prop_assert_eq!(&value["x"], &json!(x));
        let trail: Vec<u32> = value["trail"].as_array().map(|a| a.iter().map(|v| v.as_u64().unwrap() as u32).collect()).unwrap_or_default();
        prop_assert_eq!(trail, (stored..latest).collect::<Vec<_>>());
    }

    /// A chain with a hole in its steps is refused when built; a version above the latest or
    /// below the first step is a typed error naming the event.
    #[test]
    fn gaps_and_unknown_versions_are_errors(latest in 3u32..10, hole_at in 1u32..9, stored in 0u32..12) {
        let hole = 1 + hole_at % (latest - 1);
        let mut builder = UpcasterChain::builder().event_type("E", latest);
        for from in 1..latest {
            if from != hole {
                builder = builder.step("E", from, marker_step(from));
            }
        }
        let gap_below_latest = hole > 1;
        match builder.build() {
            Err(Error::InvalidUpcasterChain { .. }) => prop_assert!(gap_below_latest),
            Ok(chain) => {
                // Only a missing first step is not a gap: versions below it are unknown.
                prop_assert!(!gap_below_latest);
                let result = chain.upcast(recorded("E", stored, json!({})));
                if stored == 0 || stored == 1 || stored > latest {
                    let is_unknown_version = matches!(result, Err(Error::UnknownSchemaVersion { .. }));
                    prop_assert!(is_unknown_version);
                } else {
                    prop_assert_eq!(result.unwrap().schema_version, latest);
                }
            }
            Err(other) => prop_assert!(false, "unexpected {}", other),
        }
    }
}

fn json_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC*".prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// A recorded event survives its JSON form unchanged, whatever its ids, payload and
    /// metadata hold.
    #[test]
    fn envelope_round_trips(
        stream in "[^\\x00]{1,64}",
        event_type in "[A-Za-z][A-Za-z0-9_.]{0,40}",
        payload in json_strategy(),
        custom in json_strategy(),
        version in 1u32..100,
        position in (0u64..u64::MAX / 2, 0u64..u64::MAX / 2),
        with_ids in any::<bool>(),
    ) {
        let mut metadata = Metadata::default();
        if with_ids {
            metadata.correlation_id = Some(Uuid::now_v7());
            metadata.causation_id = Some(Uuid::new_v4());
            metadata.occurred_at = Some(OffsetDateTime::from_unix_timestamp(1_600_000_000).unwrap());
        }
        metadata.custom.insert("v".into(), custom);
        let event = RecordedEvent {
            position: LogPosition::new(position.0, position.1),
            stream_id: StreamId::new(&stream).unwrap(),
            stream_version: 3,
            event_id: Uuid::now_v7(),
            event_type: EventType::new(&event_type).unwrap(),
            schema_version: version,
            payload: Payload::from_serialize(&payload).unwrap(),
            metadata: metadata.clone(),
            recorded_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        };
        let text = serde_json::to_string(&event).unwrap();
        let back: RecordedEvent = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &event);
        let meta_text = metadata.to_json().unwrap();
        // The size the limits check is the stored text's, counted without building it.
        prop_assert_eq!(metadata.json_len().unwrap(), meta_text.len());
        let meta_back = Metadata::from_json(&meta_text).unwrap();
        prop_assert_eq!(meta_back, metadata);
        // The payload text is kept exactly, and is valid JSON equal to the value.
        let reparsed = Payload::from_json(event.payload.as_str()).unwrap();
        prop_assert_eq!(reparsed.deserialize::<Value>().unwrap(), payload);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Writers racing with appends, retries and tampered retries never break the invariants
    /// of `annals::testing::model::check_concurrent` in the reference store either.
    #[test]
    fn racing_writers_keep_the_invariants(writers in annals::testing::model::concurrent_ops()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(annals::testing::model::check_concurrent(&InMemoryEventStore::new(), writers));
    }
}
