//! Appends from many tasks to one stream at once: the case where a one-statement append's
//! snapshot most often predates an append it waited for (store-postgres/PERFORMANCE.md,
//! "Versions from the events"), so its answer comes from the writers' second statement.
//!
//! `cargo run --release -p annals-bench --example hot_stream`. Settings from the environment:
//! `TASKS` (16), `APPENDS` per task (200), `RUNS` (3), `DATABASE_URL`. Each run works in a
//! fresh schema, and prints the appends a second and checks that the stream's versions are
//! 1..=TASKS*APPENDS with no gap.
use std::time::Instant;

use annals::{EventStore, EventType, ExpectedVersion, NewEvent, Payload, StreamId, StreamRead};
use annals_bench::env_or;
use annals_postgres::{PgConfig, PgEventStore};
use futures::TryStreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let tasks: u64 = env_or("TASKS", 16);
    let appends: u64 = env_or("APPENDS", 200);
    for _ in 0..env_or("RUNS", 3u64) {
        let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let store =
            PgEventStore::connect(PgConfig::new(url.as_str()).with_schema(schema.as_str())).await?;
        store.migrate().await?;
        let stream = StreamId::new("hot")?;
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let (store, stream) = (store.clone(), stream.clone());
                tokio::spawn(async move {
                    for i in 0..appends {
                        let payload =
                            Payload::from_serialize(&serde_json::json!({ "t": t, "i": i }))?;
                        let event = NewEvent::new(EventType::new("Noted")?, 1, payload);
                        store
                            .append(&stream, ExpectedVersion::Any, vec![event])
                            .await?;
                    }
                    Ok::<_, annals::Error>(())
                })
            })
            .collect();
        for handle in handles {
            handle.await??;
        }
        let elapsed = started.elapsed();
        let versions: Vec<u64> = store
            .read_stream(&stream, StreamRead::forward())
            .map_ok(|e| e.stream_version)
            .try_collect()
            .await?;
        let total = tasks * appends;
        if versions != (1..=total).collect::<Vec<_>>() {
            return Err(format!("the stream's versions are not 1..={total}").into());
        }
        println!(
            "{tasks} tasks, {total} appends to one stream: {:.0} appends/s",
            total as f64 / elapsed.as_secs_f64()
        );
        store.drop_schema().await?;
    }
    Ok(())
}
