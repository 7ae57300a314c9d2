//! Quick local measurements of the store beside raw PostgreSQL baselines, to check design
//! choices (the benches crate holds the real benchmarks).
//!
//! `cargo run --release -p annals-postgres --example measure` (uses DATABASE_URL).

use std::time::{Duration, Instant};

use annals::{
    EventStore, EventType, ExpectedVersion, LogRead, NewEvent, Payload, StreamId, StreamRead,
};
use annals_postgres::{PgConfig, PgEventStore};
use futures::{TryStreamExt, future::join_all};
use sqlx::{Connection, PgPool, postgres::PgPoolOptions, types::Json};

/// The typed shape of the payload, as a replaying application decodes it.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Deposit {
    account: String,
    amount: i64,
    currency: String,
    memo: String,
    tags: Vec<String>,
}

fn payload(i: u64) -> String {
    format!(
        r#"{{"account":"acc-{i:08}","amount":{},"currency":"EUR","memo":"transfer for invoice {i} of the monthly subscription plan","tags":["a","b"]}}"#,
        i % 100_000
    )
}

fn event(i: u64) -> NewEvent {
    NewEvent::new(
        EventType::new("Deposited").unwrap(),
        1,
        Payload::from_json(payload(i)).unwrap(),
    )
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn raw_setup(pool: &PgPool) {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS raw_events; CREATE TABLE raw_events (\
         sequence bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, stream_id text NOT NULL, \
         stream_version bigint NOT NULL, event_id uuid NOT NULL UNIQUE, event_type text NOT NULL, \
         payload jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(), \
         UNIQUE (stream_id, stream_version))",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::main]
async fn main() {
    // On a worker thread like every other task: the future of `main` itself runs on the
    // blocking thread, where every socket wake-up crosses threads.
    tokio::spawn(run()).await.unwrap();
}

async fn run() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("annals_measure_{}", std::process::id());
    let store = PgEventStore::connect(
        PgConfig::new(url.clone())
            .with_schema(schema.clone())
            .with_max_connections(70)
            .with_writers(
                std::env::var("WRITERS")
                    .ok()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(2),
            ),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let raw = PgPoolOptions::new()
        .max_connections(66)
        .connect_with(
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap()
                .options([("search_path", schema.as_str())]),
        )
        .await
        .unwrap();
    raw_setup(&raw).await;

    // COPY baseline: 100 x 1000 rows.
    let batches = 100u64;
    let t = Instant::now();
    let mut conn = raw.acquire().await.unwrap();
    for b in 0..batches {
        let mut data = String::new();
        for i in 0..1000 {
            let n = b * 1000 + i;
            let p = payload(n).replace('\\', "\\\\");
            data.push_str(&format!(
                "copy-{b}\t{}\t{}\tDeposited\t{p}\n",
                i + 1,
                uuid::Uuid::now_v7()
            ));
        }
        let mut copy = conn
            .copy_in_raw("COPY raw_events (stream_id, stream_version, event_id, event_type, payload) FROM STDIN")
            .await
            .unwrap();
        copy.send(data.as_bytes()).await.unwrap();
        copy.finish().await.unwrap();
    }
    drop(conn);
    let copy_rate = rate(batches * 1000, t.elapsed());
    println!("raw COPY:                    {copy_rate:>10.0} events/s");

    let t = Instant::now();
    for b in 0..batches {
        let s = StreamId::new(format!("batch-{b}")).unwrap();
        let events = (0..1000).map(|i| event(b * 1000 + i)).collect();
        store
            .append(&s, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    let append_rate = rate(batches * 1000, t.elapsed());
    println!(
        "batched append (1000/call):  {append_rate:>10.0} events/s  ({:.0}% of COPY)",
        100.0 * append_rate / copy_rate
    );

    // Single-row INSERT transactions.
    async fn raw_inserts(raw: &PgPool, tag: &str, n: u64) {
        let mut conn = raw.acquire().await.unwrap();
        for i in 0..n {
            let mut tx = conn.begin().await.unwrap();
            sqlx::query("INSERT INTO raw_events (stream_id, stream_version, event_id, event_type, payload) VALUES ($1, 1, $2, 'Deposited', $3)")
                .bind(format!("{tag}-{i}"))
                .bind(uuid::Uuid::now_v7())
                .bind(Json(serde_json::from_str::<serde_json::Value>(&payload(i)).unwrap()))
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    }
    let n = 3000u64;
    let t = Instant::now();
    raw_inserts(&raw, "one", n).await;
    let raw1 = rate(n, t.elapsed());
    println!("raw INSERT tx, 1 conn:       {raw1:>10.0} tx/s");

    let t = Instant::now();
    for i in 0..n {
        let s = StreamId::new(format!("cmd-{}", i % 10_000)).unwrap();
        store
            .append(&s, ExpectedVersion::Exact(i / 10_000), vec![event(i)])
            .await
            .unwrap();
    }
    let ours1 = rate(n, t.elapsed());
    println!(
        "append 1 event, 1 task:      {ours1:>10.0} appends/s ({:.0}% of raw)",
        100.0 * ours1 / raw1
    );

    let per = 200u64;
    let t = Instant::now();
    join_all((0..64).map(|w| {
        let raw = raw.clone();
        async move { raw_inserts(&raw, &format!("many{w}"), per).await }
    }))
    .await;
    let raw64 = rate(64 * per, t.elapsed());
    println!("raw INSERT tx, 64 conns:     {raw64:>10.0} tx/s");

    let t = Instant::now();
    join_all((0..64u64).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..per {
                let s = StreamId::new(format!("task-{w}-{}", i % 50)).unwrap();
                store
                    .append(&s, ExpectedVersion::Exact(i / 50), vec![event(i)])
                    .await
                    .unwrap();
            }
        })
    }))
    .await;
    let ours64 = rate(64 * per, t.elapsed());
    println!(
        "append 1 event, 64 tasks:    {ours64:>10.0} appends/s ({:.1}x raw)",
        ours64 / raw64
    );

    // Replay, after one untimed pass over both tables: the first read of fresh rows sets
    // their hint bits (writes), which would make whichever read runs first look slow.
    let s = StreamId::new("long").unwrap();
    for chunk in 0..10u64 {
        let events = (0..1000).map(|i| event(chunk * 1000 + i)).collect();
        store
            .append(&s, ExpectedVersion::Exact(chunk * 1000), events)
            .await
            .unwrap();
    }
    sqlx::query("SELECT count(*) FROM raw_events")
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM events")
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query("ANALYZE raw_events")
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query("ANALYZE events").execute(&raw).await.unwrap();
    let t = Instant::now();
    let mut rows = 0u64;
    {
        let mut conn = raw.acquire().await.unwrap();
        let mut s = sqlx::query_as::<_, (i64, String, i64, uuid::Uuid, String, Json<serde_json::Value>)>(
            "SELECT sequence, stream_id, stream_version, event_id, event_type, payload FROM raw_events ORDER BY sequence",
        )
        .fetch(&mut *conn);
        while let Some(r) = s.try_next().await.unwrap() {
            rows += (r.0 > 0) as u64;
        }
    }
    let raw_scan = rate(rows, t.elapsed());
    let t = Instant::now();
    let mut stream_rows = 0u64;
    for _ in 0..5 {
        let mut conn = raw.acquire().await.unwrap();
        let mut s = sqlx::query_as::<_, (i64, String, i64, uuid::Uuid, String, Json<serde_json::Value>)>(
            "SELECT sequence, stream_id, stream_version, event_id, event_type, payload FROM raw_events \
             WHERE stream_id = 'cmd-0' OR stream_id LIKE 'copy-%' AND stream_id < 'copy-18' ORDER BY sequence",
        )
        .fetch(&mut *conn);
        while let Some(r) = s.try_next().await.unwrap() {
            stream_rows += (r.0 > 0) as u64;
        }
    }
    let raw_stream = rate(stream_rows, t.elapsed());
    println!("raw jsonb scan, ~10k rows x5:{raw_stream:>10.0} rows/s");
    println!("raw jsonb scan:              {raw_scan:>10.0} rows/s ({rows} rows)");

    // The store's page query alone (fetch, no decoding): the server's share of a replay.
    let t = Instant::now();
    let mut after = (0i64, 0i64);
    let mut fetched = 0u64;
    loop {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT tx, sequence, stream_id, stream_version, event_id, event_type, schema_version, \
             payload, metadata, recorded_at FROM events WHERE (tx, sequence) > ($1, $2) \
             AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
             ORDER BY tx, sequence LIMIT 1000",
        )
        .bind(after.0)
        .bind(after.1)
        .fetch_all(&raw)
        .await
        .unwrap();
        let Some(last) = rows.last() else { break };
        after = (last.get(0), last.get(1));
        fetched += rows.len() as u64;
    }
    let fetch_only = rate(fetched, t.elapsed());
    println!(
        "page query, no decode:       {fetch_only:>10.0} rows/s ({:.2}x raw)",
        fetch_only / raw_scan
    );

    for page in [1000usize, 5000] {
        let t = Instant::now();
        let mut count = 0u64;
        let mut log = store.read_all(LogRead::from_start().with_page_size(page));
        while let Some(e) = log.try_next().await.unwrap() {
            count += (e.stream_version > 0) as u64;
        }
        let ours = rate(count, t.elapsed());
        println!(
            "read_all page {page}:          {ours:>10.0} events/s ({count} events, {:.2}x raw)",
            ours / raw_scan
        );
    }
    // Both sides decoding payloads into the typed struct.
    let t = Instant::now();
    let mut typed = 0u64;
    {
        let mut conn = raw.acquire().await.unwrap();
        let mut s = sqlx::query_as::<_, (i64, String, i64, uuid::Uuid, String, Json<Deposit>)>(
            "SELECT sequence, stream_id, stream_version, event_id, event_type, payload FROM raw_events ORDER BY sequence",
        )
        .fetch(&mut *conn);
        while let Some(r) = s.try_next().await.unwrap() {
            typed += (r.5.amount >= 0) as u64;
        }
    }
    let raw_typed = rate(typed, t.elapsed());
    println!("raw typed jsonb scan:        {raw_typed:>10.0} rows/s");
    let t = Instant::now();
    let mut count = 0u64;
    let mut log = store.read_all(LogRead::from_start());
    while let Some(e) = log.try_next().await.unwrap() {
        let d: Deposit = serde_json::from_str(e.payload.as_str()).unwrap();
        count += (d.amount >= 0) as u64;
    }
    let ours = rate(count, t.elapsed());
    println!(
        "read_all + typed decode:     {ours:>10.0} events/s ({:.2}x raw typed)",
        ours / raw_typed
    );

    let t = Instant::now();
    let mut count = 0u64;
    for _ in 0..5 {
        let mut events = store.read_stream(&s, StreamRead::forward());
        while let Some(e) = events.try_next().await.unwrap() {
            count += (e.stream_version > 0) as u64;
        }
    }
    let ours = rate(count, t.elapsed());
    println!(
        "read_stream 10k x5:          {ours:>10.0} events/s ({:.2}x raw)",
        ours / raw_stream
    );

    store.drop_schema().await.unwrap();
}
