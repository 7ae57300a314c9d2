//! The W3C trace context of a command's span survives the file: written with the events'
//! metadata, read back after reopening; rows written before the field existed, or holding a
//! hostile value, still read (without a context).

mod common;

use annals::testing::{Counter, CounterCommand};
use annals::{CommandContext, EventStore, LogRead, RecordedEvent, Repository, TraceContext};
use annals_sqlite::SqliteEventStore;
use common::{config, raw_connection, temp_dir};
use futures::TryStreamExt;

async fn log(store: &SqliteEventStore) -> Vec<RecordedEvent> {
    store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .expect("read the log")
}

#[tokio::test]
async fn the_commands_trace_context_survives_storage() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    let parent = TraceContext::from_headers(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("vendor=v1"),
    )
    .unwrap();
    {
        let store = SqliteEventStore::open(config(&path)).await.expect("open");
        let counters = Repository::<Counter, _>::new(store.clone());
        let ctx = CommandContext::new().with_trace(parent.clone());
        counters
            .execute("c", CounterCommand::Add(3), &ctx)
            .await
            .unwrap();
        counters
            .execute("c", CounterCommand::Add(4), &CommandContext::new())
            .await
            .unwrap();
        store.close().await;
    }
    let store = SqliteEventStore::open(config(&path)).await.expect("reopen");
    let events = log(&store).await;
    assert_eq!(events.len(), 2);
    let first = TraceContext::from_metadata(&events[0].metadata).expect("a trace context");
    assert_eq!(first.trace_id(), parent.trace_id());
    assert_ne!(first.span_id(), parent.span_id(), "the command's own span");
    assert_eq!(first.tracestate(), Some("vendor=v1"));
    let second = TraceContext::from_metadata(&events[1].metadata).expect("a trace context");
    assert_ne!(second.trace_id(), parent.trace_id(), "a new trace");
    // Also through a stream read, as a repository or a reactor reads.
    let stream = events[0].stream_id.clone();
    let read: Vec<RecordedEvent> = store
        .read_stream(&stream, annals::StreamRead::forward())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(read[0].metadata.trace.as_ref(), Some(first));
    store.close().await;
}

#[tokio::test]
async fn rows_without_or_with_a_hostile_trace_context_still_read() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    let store = SqliteEventStore::open(config(&path)).await.expect("open");
    let counters = Repository::<Counter, _>::new(store.clone());
    for _ in 0..3 {
        counters
            .execute("c", CounterCommand::Add(1), &CommandContext::new())
            .await
            .unwrap();
    }
    // Another program (or an old version) wrote these rows' metadata.
    let mut raw = raw_connection(&path).await;
    let rows = [
        (
            1,
            r#"{"correlation_id":"0195d2a4-7c6e-7cc2-9d7b-1f1f0c3c1a10"}"#,
        ),
        (
            2,
            r#"{"trace":{"traceparent":"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}}"#,
        ),
        (
            3,
            r#"{"trace":{"traceparent":"'; DROP TABLE events; --","tracestate":"\u0000"}}"#,
        ),
    ];
    for (seq, metadata) in rows {
        sqlx::query("UPDATE events SET metadata = ? WHERE seq = ?")
            .bind(metadata)
            .bind(seq)
            .execute(&mut raw)
            .await
            .unwrap();
    }
    let events = log(&store).await;
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.metadata.trace.is_none()));
    assert!(events[0].metadata.correlation_id.is_some());
    assert_eq!(counters.load("c").await.unwrap().state.total, 3);
    store.close().await;
}
