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
