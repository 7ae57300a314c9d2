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

/// One page and small pages give the very same events: metadata, timestamps, odd stream ids
/// and odd payloads included. One page is one query, decoded by sqlx; a long read in small
/// pages switches to batches of binary `COPY`, decoded by the store.
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
        .read_all(LogRead::from_start().with_page_size(10_000))
        .try_collect()
        .await
        .unwrap();
    let by_copy: Vec<_> = store
        .read_all(LogRead::from_start().with_page_size(7))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(by_query.len(), 6000);
    assert_eq!(by_copy, by_query);
    for s in &streams {
        let one_page: Vec<_> = store
            .read_stream(s, StreamRead::forward().with_page_size(2000))
            .try_collect()
            .await
            .unwrap();
        let small: Vec<_> = store
            .read_stream(s, StreamRead::forward().with_page_size(7))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(small.len(), 1500);
        assert_eq!(small, one_page);
        let backward = |page| {
            store
                .read_stream(s, StreamRead::backward_from(1500).with_page_size(page))
                .try_collect::<Vec<_>>()
        };
        let mut back = backward(7).await.unwrap();
        assert_eq!(back, backward(2000).await.unwrap());
        back.reverse();
        assert_eq!(back, small);
        // The folding read (what `Repository::load` uses) sends only what folding needs.
        let folding = |page| {
            store
                .read_stream(s, StreamRead::forward().for_folding().with_page_size(page))
                .try_collect::<Vec<_>>()
        };
        let folding_one_page = folding(2000).await.unwrap();
        let folding = folding(7).await.unwrap();
        assert_eq!(folding, folding_one_page);
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

/// A long read dropped in the middle of a batch (a binary `COPY` with rows still unread) must
/// not hand its connection back to the pool, where the next query would read those rows. With
/// one connection in the pool, every read after the drop runs on the connection after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_dropped_mid_batch_leaves_the_pool_sound() {
    let Some(store) = common::try_store(common::config().with_max_connections(1)).await else {
        return;
    };
    let s = StreamId::new("long").unwrap();
    for chunk in 0..20u64 {
        let batch: Vec<_> = (0..1000)
            .map(|i| {
                new_event(
                    "Noted",
                    json!({ "n": chunk * 1000 + i, "pad": "x".repeat(200) }),
                )
            })
            .collect();
        store
            .append(&s, ExpectedVersion::Exact(chunk * 1000), batch)
            .await
            .unwrap();
    }
    for round in 0..3 {
        // Dropped after its first query, inside the binary `COPY` that follows.
        let mut events = store.read_stream(&s, StreamRead::forward().with_page_size(100));
        for _ in 0..150 {
            events.try_next().await.unwrap().unwrap();
        }
        drop(events);
        // Dropped after its first two queries, inside the binary `COPY` that follows.
        let mut log = store.read_all(LogRead::from_start().with_page_size(100));
        for _ in 0..(round + 1) * 250 {
            log.try_next().await.unwrap().unwrap();
        }
        drop(log);

        let versions: Vec<u64> = store
            .read_stream(
                &s,
                StreamRead::forward().with_page_size(100).with_limit(20_000),
            )
            .map_ok(|e| e.stream_version)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(versions, (1..=20_000).collect::<Vec<_>>(), "round {round}");
        let head = store
            .append(
                &s,
                ExpectedVersion::Exact(20_000 + round),
                vec![new_event("Noted", json!({}))],
            )
            .await
            .unwrap();
        assert_eq!(head.stream_version, 20_001 + round);
    }
    store.drop_schema().await.unwrap();
}

/// Long log reads go in ranges of transaction ids, the next read on a second connection while
/// the current one is handed on; sized from the density of the batch before, so appends of
/// very different sizes make ranges that are too wide, too narrow or empty. Every page size,
/// from every starting position, reads exactly the events an ordered SQL query lists, each
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_ranges_of_uneven_transactions_read_every_event_once() {
    let Some(store) = common::try_store(common::config()).await else {
        return;
    };
    // Runs of one-event appends, then large batches, then one-event appends again, on
    // several streams; some transactions in between write no event at all (conflicts).
    let mut versions = [0u64; 5];
    for round in 0..600u64 {
        let s = (round % 5) as usize;
        let n = match round {
            200..=260 => 1 + (round % 7) * 40,
            _ => 1,
        };
        let events: Vec<_> = (0..n)
            .map(|i| new_event("Noted", json!({ "round": round, "i": i })))
            .collect();
        let id = StreamId::new(format!("s{s}")).unwrap();
        store
            .append(&id, ExpectedVersion::Exact(versions[s]), events)
            .await
            .unwrap();
        versions[s] += n;
        if round % 50 == 0 {
            let stale = store
                .append(
                    &id,
                    ExpectedVersion::Exact(0),
                    vec![new_event("Stale", json!({}))],
                )
                .await;
            assert!(stale.is_err() || versions[s] == 0);
        }
    }
    let listed: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events ORDER BY tx, sequence")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert!(listed.len() > 5_000, "{} events", listed.len());
    let whole: Vec<_> = store
        .read_all(LogRead::from_start().with_page_size(500))
        .try_collect()
        .await
        .unwrap();
    for page in [1, 3, 40, 500] {
        for start in [0, 1, 17, 1_999, listed.len() - 30] {
            let after = match start {
                0 => LogRead::from_start(),
                n => LogRead::after(whole[n - 1].position),
            };
            let read: Vec<_> = store
                .read_all(after.with_page_size(page))
                .map_ok(|e| e.event_id)
                .try_collect()
                .await
                .unwrap();
            assert_eq!(read, listed[start..], "page {page}, from event {start}");
        }
    }
    store.drop_schema().await.unwrap();
}
