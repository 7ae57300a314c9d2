//! The store's identity, exact event counts, and what holds the log back (`log_hold`).

mod common;

use std::time::Duration;

use annals::{EventStore, ExpectedVersion, LogPosition, LogRead, StreamId, testing::new_event};
use annals_postgres::PgEventStore;
use futures::TryStreamExt;
use serde_json::json;
use sqlx::{Connection, PgConnection};

fn sid(name: &str) -> StreamId {
    StreamId::new(name).expect("a stream id")
}

const END: LogPosition = LogPosition::new(u64::MAX, u64::MAX);

async fn append(store: &PgEventStore, stream: &str, n: usize) {
    let events = (0..n).map(|i| new_event("E", json!({ "i": i }))).collect();
    store
        .append(&sid(stream), ExpectedVersion::Any, events)
        .await
        .expect("append");
}

async fn log_len(store: &PgEventStore) -> u64 {
    store
        .read_all(LogRead::from_start())
        .try_collect::<Vec<_>>()
        .await
        .expect("read the log")
        .len() as u64
}

/// The store's `log_hold` once `done` accepts it, or after ten seconds: transactions of other
/// tests in the same cluster may hold the horizon for a moment.
async fn hold_of(
    store: &PgEventStore,
    done: impl Fn(Option<&annals::LogHold>) -> bool,
) -> Option<annals::LogHold> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hold = store.log_hold().await.expect("log hold");
        if done(hold.as_ref()) || std::time::Instant::now() > deadline {
            return hold;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_schema_has_its_own_id_and_every_handle_sees_it() {
    let (Some(a), Some(b)) = (
        common::try_store(common::config()).await,
        common::try_store(common::config()).await,
    ) else {
        return;
    };
    let id_a = a.store_id().await.expect("id");
    assert_ne!(id_a, b.store_id().await.expect("id"), "two new schemas");

    // Another handle, migrating again (a restarted process): the same id.
    let again = PgEventStore::connect(common::config().with_schema(a.schema()))
        .await
        .expect("connect");
    again.migrate().await.expect("migrate again");
    assert_eq!(again.store_id().await.expect("id"), id_a);

    // A store made anew in the same schema is another store.
    a.drop_schema().await.expect("drop");
    again.migrate().await.expect("recreate");
    assert_ne!(again.store_id().await.expect("id"), id_a);
    again.drop_schema().await.expect("drop");
    b.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn concurrent_migrations_make_one_id() {
    let config = common::config();
    let handles: Vec<PgEventStore> =
        futures::future::try_join_all((0..4).map(|_| PgEventStore::connect(config.clone())))
            .await
            .expect("connect");
    futures::future::try_join_all(handles.iter().map(|h| h.migrate()))
        .await
        .expect("migrate at once");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM store_info")
        .fetch_one(handles[0].pool())
        .await
        .expect("count");
    assert_eq!(rows, 1);
    let id = handles[0].store_id().await.expect("id");
    for h in &handles {
        assert_eq!(h.store_id().await.expect("id"), id);
    }
    handles[0].drop_schema().await.expect("drop");
}

/// A transaction held open by another session hides the events committed after it began:
/// `log_hold` names that session, `count_events` counts what a reader sees, and both clear
/// once it ends. (Another test's transaction older than this one's, in the same cluster, would
/// be named instead: the tests of this file hold nothing open.)
#[tokio::test]
async fn an_open_transaction_is_named_and_held_back_events_are_not_counted() {
    let Some(store) =
        common::try_store(common::config().with_visibility_wait(Duration::from_millis(100))).await
    else {
        return;
    };
    append(&store, "before", 2).await;
    assert_eq!(
        hold_of(&store, |h| h.is_none()).await,
        None,
        "nothing is held"
    );

    let mut holder = PgConnection::connect(&common::database_url())
        .await
        .expect("a second connection");
    sqlx::query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    let (pid, _): (i32, String) =
        sqlx::query_as("SELECT pg_backend_pid(), pg_current_xact_id()::text")
            .fetch_one(&mut holder)
            .await
            .expect("take a transaction id");
    // Even a young transaction holds nothing until something commits after it.
    assert_eq!(hold_of(&store, |h| h.is_none()).await, None);

    append(&store, "after", 3).await;
    append(&store, "after", 1).await;
    // Another session's older transaction (another test's) would be named first: wait for it.
    let hold = hold_of(&store, |h| h.is_some_and(|h| h.pid == Some(i64::from(pid))))
        .await
        .expect("the open transaction holds the log back");
    assert!(hold.since <= time::OffsetDateTime::now_utc());
    assert!(
        hold.query
            .as_deref()
            .is_some_and(|q| q.contains("pg_current_xact_id")),
        "{hold:?}"
    );
    let seen = log_len(&store).await;
    assert_eq!(
        seen, 2,
        "a reader sees only what came before the open transaction"
    );
    assert_eq!(
        store
            .count_events(LogPosition::START, END)
            .await
            .expect("count"),
        seen
    );
    let head = store.head_position().await.expect("head").expect("a head");
    assert_eq!(
        store
            .count_events(LogPosition::START, head)
            .await
            .expect("count"),
        2
    );
    assert_eq!(store.count_events(head, END).await.expect("count"), 0);

    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("rollback");
    assert_eq!(
        hold_of(&store, |h| h.is_none()).await,
        None,
        "the hold has ended"
    );
    assert_eq!(
        store
            .count_events(LogPosition::START, END)
            .await
            .expect("count"),
        6
    );
    assert_eq!(store.count_events(head, END).await.expect("count"), 4);
    assert_eq!(log_len(&store).await, 6);
    store.drop_schema().await.expect("drop");
}
