//! Where a log replay's CPU goes: the store's replay and the raw `jsonb` scan of the same
//! events, each timed with the CPU used by this process and by the PostgreSQL backends serving
//! it (and, apart, by all PostgreSQL processes), in microseconds an event. Far steadier than throughput on a shared 2-core machine, so it
//! shows changes of a few percent that `annals-bench pg.replay` cannot.
//!
//! `cargo run --release -p annals-bench --example replay_cpu` (Linux only: it reads `/proc`).
//! Settings from the environment: `DATABASE_URL`, `EVENTS` (default 500000), `RUNS` (4),
//! `WORKERS` (tokio worker threads, 2), `READS` (which reads each run times, in order,
//! comma-separated; default `store,raw`). The schemas `annals_replay_cpu` and
//! `annals_replay_cpu_load` are kept between runs (filled once per size) and dropped with
//! `DROP=1`.
//!
//! The reads:
//! - `store`: `read_all` from the start, each event decoded into the ledger's typed events;
//! - `raw`: the baseline, a typed sqlx scan of a `jsonb` table of the same rows;
//! - `untyped`: `read_all` without the typed decode (what the store's pipeline costs);
//! - `fetch`: the store's log query as one sqlx query on one connection, rows counted and
//!   not decoded: the ceiling one PostgreSQL backend and sqlx set for any log reader;
//! - `load`: 30 loads of one 10,000-event aggregate's stream as `Repository::load` reads it,
//!   typed decode included, from a schema holding only that stream (as `pg.load` has it).

use std::time::Instant;

use annals::{DomainEvent, EventStore, LogRead};
use annals_bench::{
    BenchResult, env_or,
    ledger::{Deposited, LedgerEvent},
    workload,
};
use annals_postgres::{PgConfig, PgEventStore};
use futures::TryStreamExt;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

/// A row of the raw table, decoded as `annals-bench`'s baseline decodes it.
#[derive(Debug, sqlx::FromRow)]
#[allow(dead_code, reason = "decoding every column is the work measured")]
struct RawRow {
    position: i64,
    stream_id: String,
    stream_version: i64,
    event_id: Uuid,
    event_type: String,
    schema_version: i32,
    payload: Json<Deposited>,
    metadata: Json<annals::Metadata>,
    recorded_at: OffsetDateTime,
}

async fn fill(store: &PgEventStore, events: u64) -> BenchResult<()> {
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await?;
    if u64::try_from(have)? == events {
        return Ok(());
    }
    // Stored events are immutable (even TRUNCATE is refused): start from a fresh schema.
    store.drop_schema().await?;
    store.migrate().await?;
    for b in workload::many_streams(events, 1_000) {
        store.append(&b.stream, b.expected(), b.events).await?;
    }
    sqlx::query(
        "CREATE TABLE raw_events AS SELECT sequence AS position, stream_id, stream_version, \
         event_id, event_type, schema_version, payload::jsonb AS payload, \
         '{}'::jsonb AS metadata, recorded_at FROM events ORDER BY tx, sequence",
    )
    .execute(store.pool())
    .await?;
    sqlx::query("ALTER TABLE raw_events ADD PRIMARY KEY (position)")
        .execute(store.pool())
        .await?;
    for vacuum in ["VACUUM ANALYZE events", "VACUUM ANALYZE raw_events"] {
        sqlx::query(vacuum).execute(store.pool()).await?;
    }
    Ok(())
}

/// What one timed run reads.
#[derive(Debug, Clone, Copy)]
enum Read {
    Store,
    Raw,
    Untyped,
    Fetch,
    Load,
}

impl std::str::FromStr for Read {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "store" => Ok(Self::Store),
            "raw" => Ok(Self::Raw),
            "untyped" => Ok(Self::Untyped),
            "fetch" => Ok(Self::Fetch),
            "load" => Ok(Self::Load),
            other => Err(format!(
                "unknown read {other:?}: expected store, raw, untyped, fetch or load"
            )),
        }
    }
}

async fn replay(store: &PgEventStore, typed: bool) -> BenchResult<u64> {
    let mut read = store.read_all(LogRead::from_start());
    let mut seen = 0;
    while let Some(recorded) = read.try_next().await? {
        if typed {
            std::hint::black_box(LedgerEvent::decode(&recorded)?);
        } else {
            std::hint::black_box(recorded);
        }
        seen += 1;
    }
    Ok(seen)
}

/// The store's log query (all of it visible now, in one query) on one connection, rows only.
async fn fetch(store: &PgEventStore) -> BenchResult<u64> {
    let mut conn = store.pool().acquire().await?;
    let mut rows = sqlx::query(
        "SELECT tx, sequence, stream_id, stream_version, event_id, event_type, schema_version, \
         payload, metadata, recorded_at FROM events WHERE (tx, sequence) > (0, 0) \
         AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint ORDER BY tx, sequence",
    )
    .fetch(&mut *conn);
    let mut seen = 0;
    while let Some(row) = rows.try_next().await? {
        std::hint::black_box(row);
        seen += 1;
    }
    Ok(seen)
}

/// The store of the `load` read: one aggregate of [`AGGREGATE`] events, alone in its schema and
/// analyzed but not vacuumed, as `annals-bench pg.load` fills it.
async fn aggregate(url: &str) -> BenchResult<PgEventStore> {
    let config = PgConfig::new(url)
        .with_schema("annals_replay_cpu_load")
        .with_max_connections(4);
    let store = PgEventStore::connect(config).await?;
    if env_or("DROP", 0) == 1 {
        store.drop_schema().await?;
        return Ok(store);
    }
    store.migrate().await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await?;
    if u64::try_from(have)? != AGGREGATE {
        store.drop_schema().await?;
        store.migrate().await?;
        for b in workload::one_stream(1, AGGREGATE, 1000) {
            store.append(&b.stream, b.expected(), b.events).await?;
        }
        sqlx::query("ANALYZE events").execute(store.pool()).await?;
    }
    Ok(store)
}

/// Events of the `load` read's aggregate.
const AGGREGATE: u64 = 10_000;

/// 30 loads of the aggregate's stream as `Repository::load` reads it (`for_folding`), each
/// event decoded into the ledger's types.
async fn load(store: &PgEventStore) -> BenchResult<u64> {
    use annals::StreamRead;
    let stream = annals_bench::workload::stream_of(1);
    let mut seen = 0;
    for _ in 0..30 {
        let mut read = store
            .read_aggregate(&stream, None, StreamRead::forward().for_folding())
            .await?
            .events;
        while let Some(recorded) = read.try_next().await? {
            std::hint::black_box(LedgerEvent::decode(&recorded)?);
            seen += 1;
        }
    }
    Ok(seen)
}

async fn raw_scan(store: &PgEventStore) -> BenchResult<u64> {
    let mut rows = sqlx::query_as::<_, RawRow>(
        "SELECT position, stream_id, stream_version, event_id, event_type, schema_version, \
         payload, metadata, recorded_at FROM raw_events ORDER BY position",
    )
    .fetch(store.pool());
    let mut seen = 0;
    while let Some(row) = rows.try_next().await? {
        std::hint::black_box(row);
        seen += 1;
    }
    Ok(seen)
}

async fn run() -> BenchResult<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let events = env_or("EVENTS", 500_000u64);
    let store =
        PgEventStore::connect(PgConfig::new(url.as_str()).with_schema("annals_replay_cpu")).await?;
    store.migrate().await?;
    if env_or("DROP", 0) == 1 {
        store.drop_schema().await?;
        aggregate(&url).await?;
        return Ok(());
    }
    let reads = std::env::var("READS")
        .unwrap_or_else(|_| "store,raw".to_owned())
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<Read>, _>>()?;
    fill(&store, events).await?;
    let load_store = if reads.iter().any(|r| matches!(r, Read::Load)) {
        Some(aggregate(&url).await?)
    } else {
        None
    };
    let us =
        |ticks: u64, n: u64| ticks as f64 / annals_bench::cpu::TICKS_PER_SECOND / n as f64 * 1e6;
    for _ in 0..env_or("RUNS", 4) {
        for &read in &reads {
            let before = annals_bench::cpu::Sample::take();
            let start = Instant::now();
            let n = match read {
                Read::Store => replay(&store, true).await?,
                Read::Raw => raw_scan(&store).await?,
                Read::Untyped => replay(&store, false).await?,
                Read::Fetch => fetch(&store).await?,
                Read::Load => {
                    load(load_store.as_ref().ok_or("no store for the load read")?).await?
                }
            };
            let wall = start.elapsed().as_secs_f64();
            let used = annals_bench::cpu::Sample::take().since(&before);
            let (client, server) = (us(used.client, n), us(used.backends, n));
            println!(
                "{:<8} {:>5.0}k events/s  client {client:.2} + backends {server:.2} = {:.2} us an \
                 event  (all postgres {:.2}; {:.2} cores busy)",
                format!("{read:?}").to_lowercase(),
                n as f64 / wall / 1e3,
                client + server,
                us(used.all_postgres, n),
                (used.client + used.all_postgres) as f64
                    / annals_bench::cpu::TICKS_PER_SECOND
                    / wall,
            );
        }
    }
    Ok(())
}

fn main() -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_or("WORKERS", 2usize).max(1))
        .enable_all()
        .build()?;
    // On a worker, as an application's code runs: not on the thread that blocks on it.
    runtime.block_on(async { tokio::spawn(run()).await? })
}
