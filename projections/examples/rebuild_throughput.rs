//! Rough rebuild throughput against the raw write rate of the same work, for a quick check
//! (the `benches` crate measures this properly).
//!
//! `cargo run --release -p annals-projections --example rebuild_throughput [events]`
//! Needs Redis at REDIS_URL (default redis://127.0.0.1:6379).

use std::time::{Duration, Instant};

use annals::{
    BoxError, EventStore, EventType, ExpectedVersion, InMemoryEventStore, NewEvent, Payload,
    RecordedEvent, StreamId,
};
use annals_projections::{
    EventFilter, ProgressDisplay, Projection, ProjectionConfig, ProjectionRunner, RedisBatch,
    RedisConnection, RedisReadModel, RunnerConfig, TantivyBatch, TantivyConfig, TantivyReadModel,
};
use serde::Deserialize;
use tantivy::{
    Index, IndexWriter, TantivyDocument, Term,
    schema::{Field, STORED, STRING, Schema, TEXT},
};

#[derive(Deserialize)]
struct Deposit {
    account: String,
    amount: i64,
    memo: String,
}

struct Balances;

impl Projection for Balances {
    type Model = RedisReadModel;
    fn name(&self) -> &str {
        "bench_balances"
    }
    fn filter(&self) -> EventFilter {
        EventFilter::types(["Deposited"])
    }
    fn handle(&self, event: &RecordedEvent, batch: &mut RedisBatch) -> Result<(), BoxError> {
        let d: Deposit = event.payload.deserialize()?;
        let key = format!("account:{}", d.account);
        batch.hincrby(&key, "balance", d.amount);
        batch.zincrby("ranking", &d.account, d.amount as f64);
        batch.incrby("total", d.amount);
        Ok(())
    }
}

#[derive(Clone)]
struct Search {
    account: Field,
    memo: Field,
}

impl Projection for Search {
    type Model = TantivyReadModel;
    fn name(&self) -> &str {
        "bench_search"
    }
    fn handle(&self, event: &RecordedEvent, batch: &mut TantivyBatch) -> Result<(), BoxError> {
        let d: Deposit = event.payload.deserialize()?;
        let mut doc = TantivyDocument::new();
        doc.add_text(self.account, &d.account);
        doc.add_text(self.memo, &d.memo);
        batch.upsert(event.event_id.to_string(), doc);
        Ok(())
    }
}

/// Prints the baseline's rate, then the first build's and the rebuild's, each with its share
/// of the baseline's speed.
fn print_rates(
    baseline: &str,
    unit: &str,
    n: usize,
    raw: Duration,
    built: Duration,
    rebuilt: Duration,
) {
    println!(
        "{baseline} {:.0} {unit}; first build {:.0} events/s ({:.0}%); rebuild {:.0} events/s ({:.0}%)",
        rate(n, raw),
        rate(n, built),
        100.0 * raw.as_secs_f64() / built.as_secs_f64(),
        rate(n, rebuilt),
        100.0 * raw.as_secs_f64() / rebuilt.as_secs_f64(),
    );
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let store = InMemoryEventStore::new();
    for chunk in 0..n.div_ceil(1000) {
        let events: Vec<NewEvent> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| {
                let json = serde_json::json!({
                    "account": format!("acc-{}", i % 10_000),
                    "amount": (i % 100) as i64 + 1,
                    "memo": format!("memo word{} number{i}", i % 50),
                });
                NewEvent::new(
                    EventType::new("Deposited").unwrap(),
                    1,
                    Payload::from_serialize(&json).unwrap(),
                )
            })
            .collect();
        store
            .append(
                &StreamId::new(format!("s-{chunk}"))?,
                ExpectedVersion::Any,
                events,
            )
            .await?;
    }
    let head = store.head_position().await?.ok_or("empty")?;
    let events: Vec<RecordedEvent> = {
        use futures::TryStreamExt;
        store
            .read_all(annals::LogRead::from_start())
            .try_collect()
            .await?
    };

    // Redis: raw pipelined writes of the same commands, 5,000 events per pipeline.
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = RedisConnection::single(&url).await?;
    let ns = format!("bench{}", uuid::Uuid::new_v4().simple());
    let mut c = redis.clone();
    let started = Instant::now();
    for chunk in events.chunks(5000) {
        let mut pipe = redis::pipe();
        for e in chunk {
            let d: Deposit = e.payload.deserialize()?;
            let p = format!("{{{ns}:raw}}:");
            pipe.cmd("HINCRBY")
                .arg(format!("{p}account:{}", d.account))
                .arg("balance")
                .arg(d.amount)
                .ignore();
            pipe.cmd("ZINCRBY")
                .arg(format!("{p}ranking"))
                .arg(d.amount as f64)
                .arg(&d.account)
                .ignore();
            pipe.cmd("INCRBY")
                .arg(format!("{p}total"))
                .arg(d.amount)
                .ignore();
        }
        let () = pipe.query_async(&mut c).await?;
    }
    let raw = started.elapsed();

    let checks = std::env::var("TYPE_CHECKS").map_or(true, |v| v != "0");
    let model = RedisReadModel::with_namespace(redis.clone(), &ns, "bench_balances")?
        .with_type_checks(checks);
    let runner = ProjectionRunner::new(store.clone()).with_config(RunnerConfig::new());
    let config = ProjectionConfig::new().with_progress(ProgressDisplay::Silent);
    let started = Instant::now();
    runner.add(Balances, model, config.clone())?;
    runner.wait_for("bench_balances", head).await?;
    let built = started.elapsed();
    let report = runner.rebuild("bench_balances").await?;
    print_rates(
        "redis: raw pipelined",
        "events/s",
        n,
        raw,
        built,
        report.elapsed,
    );
    runner.shutdown().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{ns}:*"))
        .query_async(&mut c)
        .await?;
    for chunk in keys.chunks(1000) {
        let _: i64 = redis::cmd("DEL").arg(chunk).query_async(&mut c).await?;
    }

    // tantivy: the same documents indexed directly (upsert by id, one commit).
    let mut builder = Schema::builder();
    let id = builder.add_text_field("id", STRING | STORED);
    let account = builder.add_text_field("account", STRING | STORED);
    let memo = builder.add_text_field("memo", TEXT | STORED);
    let schema = builder.build();
    let dir = tempfile::tempdir()?;
    let budget = 256 << 20;
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let started = Instant::now();
    {
        let index = Index::create_in_dir(&raw_dir, schema.clone())?;
        let mut writer: IndexWriter = index.writer(budget)?;
        for e in &events {
            let d: Deposit = e.payload.deserialize()?;
            let eid = e.event_id.to_string();
            let mut doc = TantivyDocument::new();
            doc.add_text(account, &d.account);
            doc.add_text(memo, &d.memo);
            doc.add_text(id, &eid);
            writer.delete_term(Term::from_field_text(id, &eid));
            writer.add_document(doc)?;
        }
        writer.commit()?;
    }
    let raw = started.elapsed();
    let model = TantivyReadModel::open(
        dir.path(),
        "bench_search",
        schema,
        id,
        TantivyConfig::new().with_memory_budget(budget),
    )?;
    let runner = ProjectionRunner::new(store.clone());
    let started = Instant::now();
    runner.add(Search { account, memo }, model, config)?;
    runner.wait_for("bench_search", head).await?;
    let built = started.elapsed();
    let report = runner.rebuild("bench_search").await?;
    print_rates("tantivy: direct", "docs/s", n, raw, built, report.elapsed);
    runner.shutdown().await;
    Ok(())
}
