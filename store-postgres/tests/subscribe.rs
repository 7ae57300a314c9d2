//! Live subscriptions: catch-up then live through a burst of concurrent writers, with and
//! without notifications, resuming from a checkpoint.

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use annals::{
    EventStore, ExpectedVersion, LogPosition, LogRead, RecordedEvent, StreamId, testing::new_event,
};
use annals_postgres::{PgConfig, PgEventStore, TestHooks};
use futures::{StreamExt, TryStreamExt, future::join_all};
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

async fn burst(schema: &str, writers: usize, appends: usize) -> Vec<Uuid> {
    let tasks = (0..writers).map(|w| {
        let schema = schema.to_owned();
        tokio::spawn(async move {
            let hooks = TestHooks {
                in_transaction_delay: Some(Arc::new(|| {
                    Duration::from_millis(rand::rng().random_range(0..15))
                })),
                ..TestHooks::default()
            };
            let store = PgEventStore::connect(
                PgConfig::new(common::database_url())
                    .with_schema(schema)
                    .with_max_connections(2)
                    .with_test_hooks(hooks),
            )
            .await
            .unwrap();
            let s = StreamId::new(format!("writer-{w}")).unwrap();
            let mut ids = Vec::new();
            for i in 0..appends {
                let e = new_event("Noted", json!({ "w": w, "i": i }));
                ids.push(e.event_id);
                store
                    .append(&s, ExpectedVersion::Any, vec![e])
                    .await
                    .unwrap();
            }
            ids
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect()
}

async fn follow(store: &PgEventStore, after: LogPosition, n: usize) -> Vec<RecordedEvent> {
    tokio::time::timeout(
        Duration::from_secs(60),
        store.subscribe(after).take(n).try_collect::<Vec<_>>(),
    )
    .await
    .expect("the subscription delivers every event")
    .unwrap()
}

async fn catch_up_then_live_through_a_burst(config: PgConfig) {
    let Some(store) = common::try_store(config).await else {
        return;
    };
    let s = StreamId::new("early").unwrap();
    for _ in 0..3 {
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![new_event("Early", json!({}))],
            )
            .await
            .unwrap();
    }
    let (writers, appends) = (8, 12);
    let total = 3 + writers * appends;
    let schema = store.schema().to_owned();
    let (seen, written) = tokio::join!(follow(&store, LogPosition::START, total), async {
        // Let the subscription catch up first, so the burst arrives live.
        tokio::time::sleep(Duration::from_millis(100)).await;
        burst(&schema, writers, appends).await
    });
    let ids: Vec<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), total, "no repeat");
    assert!(written.iter().all(|id| ids.contains(id)), "no gap");
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    let log: Vec<Uuid> = store
        .read_all(LogRead::from_start())
        .map_ok(|e| e.event_id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids, log, "the subscription's order is the log's order");

    // Resuming after a checkpoint continues exactly there.
    let checkpoint = seen[40].position;
    let resumed = follow(&store, checkpoint, total - 41).await;
    let resumed: Vec<Uuid> = resumed.iter().map(|e| e.event_id).collect();
    assert_eq!(resumed, ids[41..]);
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_with_notifications_sees_a_burst_once_each() {
    catch_up_then_live_through_a_burst(common::config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_without_notifications_polls() {
    // Every notification lost: polling alone must deliver everything.
    catch_up_then_live_through_a_burst(
        common::config()
            .with_notify(false)
            .with_poll_interval(Duration::from_millis(50)),
    )
    .await;
}

/// With polling all but off, a live subscription still sees each append of another store at
/// once: the writer's notification (committed asynchronously, see `writer.rs`) wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_a_subscription_that_does_not_poll() {
    let config = common::config().with_poll_interval(Duration::from_secs(3600));
    let schema = config.schema().to_owned();
    let Some(reader) = common::try_store(config).await else {
        return;
    };
    let writer = PgEventStore::connect(
        PgConfig::new(common::database_url())
            .with_schema(schema)
            .with_max_connections(2),
    )
    .await
    .expect("a second store");
    let s = StreamId::new("woken").unwrap();
    let mut live = reader.subscribe(LogPosition::START);
    for i in 0..3 {
        let e = new_event("Noted", json!({ "i": i }));
        let id = e.event_id;
        writer
            .append(&s, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
        // A notification comes in milliseconds; without one, nothing would wake the
        // subscription before its listener's check, 15 s away, or its poll, an hour away.
        let seen = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .expect("woken by the notification")
            .expect("the subscription goes on")
            .expect("an event");
        assert_eq!(seen.event_id, id);
        // Past the notifier's 5 ms spacing: each append gets a notification of its own.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(live);
    reader.drop_schema().await.unwrap();
}
