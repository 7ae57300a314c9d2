//! Configurable limits are enforced before anything is stored.

use annals::testing::new_event;
use annals::{Error, EventStore, ExpectedVersion, InMemoryEventStore, Limits, StreamId};
use serde_json::json;

#[tokio::test]
async fn configured_limits_refuse_oversized_and_overlong_appends() {
    let limits = Limits::default()
        .with_max_event_bytes(64)
        .with_max_events_per_append(3);
    let store = InMemoryEventStore::with_limits(limits);
    let s = StreamId::new("limited").unwrap();

    let big = new_event("Big", json!({ "text": "x".repeat(60) }));
    let big_id = big.event_id;
    match store.append(&s, ExpectedVersion::Any, vec![big]).await {
        Err(Error::PayloadTooLarge {
            event_id,
            size,
            limit: 64,
        }) => {
            assert_eq!(event_id, big_id);
            assert!(size > 64);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    let four: Vec<_> = (0..4).map(|i| new_event("E", json!({ "i": i }))).collect();
    let err = store
        .append(&s, ExpectedVersion::Any, four)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidAppend { .. }), "{err:?}");
    assert_eq!(store.stream_version(&s).await.unwrap(), 0, "nothing stored");

    let three: Vec<_> = (0..3).map(|i| new_event("E", json!({ "i": i }))).collect();
    assert_eq!(
        store
            .append(&s, ExpectedVersion::Any, three)
            .await
            .unwrap()
            .stream_version,
        3
    );
}

#[tokio::test]
async fn metadata_counts_toward_an_events_size() {
    let store = InMemoryEventStore::with_limits(Limits::default().with_max_event_bytes(100));
    let s = StreamId::new("limited-by-metadata").unwrap();
    let mut event = new_event("Small", json!({ "n": 1 }));
    event
        .metadata
        .custom
        .insert("note".into(), json!("m".repeat(80)));
    let expected = event.payload.len() + event.metadata.to_json().unwrap().len();
    assert!(event.payload.len() <= 100 && expected > 100);
    match store.append(&s, ExpectedVersion::Any, vec![event]).await {
        Err(Error::PayloadTooLarge {
            size, limit: 100, ..
        }) => assert_eq!(size, expected),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), 0, "nothing stored");
}

proptest::proptest! {
    /// A stream named twice, or an event id used twice, is refused exactly when it happens,
    /// with its own reason, for appends of one to forty streams and events (below and above
    /// the sizes where the check changes how it looks for repeats).
    #[test]
    fn repeats_are_refused_exactly_when_present(
        appends in proptest::collection::vec(
            (0u8..24, proptest::collection::vec(0u8..48, 1..4)),
            1..14,
        ),
    ) {
        let ids: Vec<uuid::Uuid> = (0..48).map(|_| uuid::Uuid::new_v4()).collect();
        let built: Vec<annals::StreamAppend> = appends
            .iter()
            .map(|(stream, events)| {
                let events = events
                    .iter()
                    .map(|i| {
                        let mut e = new_event("E", json!({}));
                        e.event_id = ids[usize::from(*i)];
                        e
                    })
                    .collect();
                annals::StreamAppend::new(
                    StreamId::new(format!("s-{stream}")).unwrap(),
                    ExpectedVersion::Any,
                    events,
                )
            })
            .collect();
        let first_repeat = |names: Vec<u8>| {
            let mut seen = std::collections::HashSet::new();
            names.into_iter().position(|n| !seen.insert(n))
        };
        let stream_repeat = first_repeat(appends.iter().map(|(s, _)| *s).collect());
        let id_repeat = first_repeat(appends.iter().flat_map(|(_, e)| e.clone()).collect());
        let result = Limits::default().check(&built);
        match result {
            Ok(()) => proptest::prop_assert!(stream_repeat.is_none() && id_repeat.is_none()),
            Err(Error::InvalidAppend { reason }) => {
                let names_stream = reason.contains("stream appears twice");
                let names_id = reason.contains("event id appears twice");
                proptest::prop_assert!(
                    (names_stream && stream_repeat.is_some())
                        || (names_id && id_repeat.is_some()),
                    "{reason}"
                );
            }
            Err(other) => proptest::prop_assert!(false, "unexpected {other:?}"),
        }
    }
    /// A store that encodes the metadata while it checks gets the same answer as from
    /// `check`, sizes included (each event's metadata counts by the text stored, `{}` for
    /// empty metadata), and, when the call passes, each event's metadata text in order.
    #[test]
    fn encoded_metadata_is_measured_as_check_measures_it(
        events in proptest::collection::vec((0usize..120, 0usize..120), 1..6),
        limit in 20usize..260,
    ) {
        let built: Vec<annals::NewEvent> = events
            .iter()
            .map(|(payload, note)| {
                let mut e = new_event("E", json!({ "p": "x".repeat(*payload) }));
                if *note > 0 {
                    e.metadata.custom.insert("note".into(), json!("m".repeat(*note)));
                }
                e
            })
            .collect();
        let expected: Vec<Option<String>> = built
            .iter()
            .map(|e| (!e.metadata.is_empty()).then(|| e.metadata.to_json().unwrap()))
            .collect();
        let appends = vec![annals::StreamAppend::new(
            StreamId::new("sized").unwrap(),
            ExpectedVersion::Any,
            built,
        )];
        let limits = Limits::default().with_max_event_bytes(limit);
        let checked = limits.check(&appends);
        let encoded = limits.check_and_encode_metadata(&appends);
        proptest::prop_assert_eq!(
            format!("{:?}", encoded.as_ref().map(|_| ())),
            format!("{checked:?}")
        );
        if let Ok(encoded) = encoded {
            proptest::prop_assert_eq!(encoded, expected);
        }
    }
}
