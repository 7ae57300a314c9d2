//! Long reads go page by page (keyset, never OFFSET): every page size returns each event once,
//! in order, across page boundaries.

mod common;

use annals::{EventStore, ExpectedVersion, LogRead, StreamId, StreamRead, testing::new_event};
use futures::TryStreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_stream_and_log_read_in_pages() {
    let Some(store) = common::try_store(common::config()).await else {
        return;
    };
    let s = StreamId::new("long").unwrap();
    let total = 12_000u64;
    for chunk in 0..(total / 1000) {
        let batch: Vec<_> = (0..1000)
            .map(|i| new_event("Noted", json!({ "n": chunk * 1000 + i })))
            .collect();
        store
            .append(&s, ExpectedVersion::Exact(chunk * 1000), batch)
            .await
            .unwrap();
    }
    let other = StreamId::new("other").unwrap();
    store
        .append(
            &other,
            ExpectedVersion::Any,
            vec![new_event("Noted", json!({}))],
        )
        .await
        .unwrap();

    for page in [1000, 777] {
        let mut expect = 1u64;
        let mut events = store.read_stream(&s, StreamRead::forward().with_page_size(page));
        while let Some(e) = events.try_next().await.unwrap() {
            assert_eq!(e.stream_version, expect);
            expect += 1;
        }
        assert_eq!(expect, total + 1);
    }
    let backward: Vec<u64> = store
        .read_stream(
            &s,
            StreamRead::backward_from(2500)
                .with_page_size(999)
                .with_limit(2000),
        )
        .map_ok(|e| e.stream_version)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(backward, (501..=2500).rev().collect::<Vec<_>>());

    let mut count = 0u64;
    let mut last = None;
    let mut log = store.read_all(LogRead::from_start().with_page_size(1000));
    while let Some(e) = log.try_next().await.unwrap() {
        assert!(last < Some(e.position));
        last = Some(e.position);
        count += 1;
    }
    assert_eq!(count, total + 1);

    store.drop_schema().await.unwrap();
}

/// Small pages and large ones (which switch to multi-page batches) give the very same events:
/// metadata, timestamps, odd stream ids and odd payloads included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_and_large_pages_read_the_same_events() {
    let Some(store) = common::try_store(common::config()).await else {
        return;
    };
    let streams: Vec<StreamId> = ["a", "b/ü", "c'; --", "d\\x"]
        .iter()
        .map(|s| StreamId::new(*s).unwrap())
        .collect();
    for chunk in 0..12u64 {
        let batch: Vec<_> = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                let event = new_event(
                    "Noted",
                    json!({ "n": n, "text": "zé \u{1F600} \"q\" \\ \n", "nested": { "k": [n] } }),
                );
                if n % 3 == 0 {
                    let mut metadata = annals::Metadata {
                        correlation_id: Some(uuid::Uuid::now_v7()),
                        ..annals::Metadata::default()
                    };
                    metadata.custom.insert("who".into(), json!("tester"));
                    event.with_metadata(metadata)
                } else {
                    event
                }
            })
            .collect();
        let s = &streams[(chunk % 4) as usize];
        store.append(s, ExpectedVersion::Any, batch).await.unwrap();
    }
    let by_query: Vec<_> = store
        .read_all(LogRead::from_start().with_page_size(7))
        .try_collect()
        .await
        .unwrap();
    let by_copy: Vec<_> = store
        .read_all(LogRead::from_start().with_page_size(500))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(by_query.len(), 6000);
    assert_eq!(by_copy, by_query);
    for s in &streams {
        let small: Vec<_> = store
            .read_stream(s, StreamRead::forward().with_page_size(7))
            .try_collect()
            .await
            .unwrap();
        let large: Vec<_> = store
            .read_stream(s, StreamRead::forward().with_page_size(100))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(small.len(), 1500);
        assert_eq!(large, small);
        // The folding read (what `Repository::load` uses) sends only what folding needs.
        let folding: Vec<_> = store
            .read_stream(s, StreamRead::forward().for_folding())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(folding.len(), 1500);
        for (f, e) in folding.iter().zip(&small) {
            assert_eq!(
                (f.position, f.stream_version),
                (e.position, e.stream_version)
            );
            assert_eq!((&f.event_type, &f.payload), (&e.event_type, &e.payload));
            assert!(f.event_id.is_nil());
            assert_eq!(f.metadata, annals::Metadata::default());
        }
    }
    store.drop_schema().await.unwrap();
}
