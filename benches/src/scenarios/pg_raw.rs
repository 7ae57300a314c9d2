//! The PostgreSQL baselines of each scenario, timed on their own schema.

use annals::CommandContext;

use crate::{
    BenchResult,
    env::{Ctx, PgSchema},
    ledger::{Deposited, LedgerEvent},
    raw::pg,
    runner::timed,
    workload::{self, Batch, RawRow},
};

/// The payload column type of the baseline tables: `jsonb`, the usual design.
pub(crate) const JSONB: &str = "jsonb";

/// Raw `COPY` of the same rows, one `COPY` statement per batch, into a fresh table.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn copy(ctx: &Ctx, batches: &[Batch], json_type: &str) -> BenchResult<f64> {
    let rows: Vec<Vec<RawRow>> = batches.iter().map(RawRow::of_batch).collect();
    let events = rows.iter().map(|r| r.len() as u64).sum();
    let schema = ctx.pg_schema(1).await?;
    let result = async {
        pg::create_table(&schema.pool, json_type).await?;
        let mut conn = schema.pool.acquire().await?;
        timed(events, async {
            for batch in &rows {
                pg::copy_rows(&mut conn, batch).await?;
            }
            Ok(())
        })
        .await
    }
    .await;
    schema.drop().await?;
    result
}

/// The rows of the command-path baseline: version 1 (set up untimed) and version 2 (the
/// timed insert) of each stream, with command metadata like the repository writes.
pub(crate) fn command_rows(streams: u64) -> (Vec<RawRow>, Vec<RawRow>) {
    let context = CommandContext::new();
    let row = |n: u64, version: u64| {
        let event = LedgerEvent::Deposited(Deposited::sample(n, n + version))
            .new_event()
            .with_metadata(context.metadata());
        RawRow::of(&workload::stream_of(n), version, &event)
    };
    (
        (0..streams).map(|n| row(n, 1)).collect(),
        (0..streams).map(|n| row(n, 2)).collect(),
    )
}

/// Raw single-row INSERT transactions on `connections` connections, one task each, over
/// streams that already hold one event.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn insert_tx(ctx: &Ctx, streams: u64, connections: usize) -> BenchResult<f64> {
    let (setup, timed_rows) = command_rows(streams);
    let schema = ctx.pg_schema(connections as u32).await?;
    let result = async {
        pg::create_table(&schema.pool, JSONB).await?;
        let mut conn = schema.pool.acquire().await?;
        for chunk in setup.chunks(1_000) {
            pg::copy_rows(&mut conn, chunk).await?;
        }
        drop(conn);
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            conns.push(schema.pool.acquire().await?);
        }
        let shares = split(timed_rows, connections);
        timed(streams, async {
            let tasks: Vec<_> = conns
                .into_iter()
                .zip(shares)
                .map(|(mut conn, rows)| {
                    tokio::spawn(async move {
                        for row in &rows {
                            pg::insert_one(&mut conn, row).await?;
                        }
                        BenchResult::Ok(())
                    })
                })
                .collect();
            for task in tasks {
                task.await??;
            }
            Ok(())
        })
        .await
    }
    .await;
    schema.drop().await?;
    result
}

/// Splits `items` round-robin into `parts` shares.
pub(crate) fn split<T>(items: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let parts = parts.max(1);
    let mut shares: Vec<Vec<T>> = (0..parts).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        shares[i % parts].push(item);
    }
    shares
}

/// A schema with `raw_events` (jsonb) filled by COPY with `batches`, for the scan baselines.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn filled(ctx: &Ctx, batches: &[Batch]) -> BenchResult<PgSchema> {
    let schema = ctx.pg_schema(2).await?;
    let filled = async {
        pg::create_table(&schema.pool, JSONB).await?;
        let mut conn = schema.pool.acquire().await?;
        for batch in batches {
            pg::copy_rows(&mut conn, &RawRow::of_batch(batch)).await?;
        }
        sqlx::query("ANALYZE raw_events")
            .execute(&mut *conn)
            .await?;
        BenchResult::Ok(())
    }
    .await;
    match filled {
        Ok(()) => Ok(schema),
        Err(e) => {
            schema.drop().await?;
            Err(e)
        }
    }
}

/// One timed raw jsonb scan of the whole table; events/s.
pub(crate) async fn scan(schema: &PgSchema, events: u64) -> BenchResult<f64> {
    timed(events, async {
        let (seen, _) = pg::scan_all(&schema.pool).await?;
        check_count(seen, events)
    })
    .await
}

/// `loads` timed raw jsonb scans of one stream, each applied to the aggregate; events/s.
pub(crate) async fn load_stream(
    schema: &PgSchema,
    stream: &str,
    events: u64,
    loads: u64,
) -> BenchResult<f64> {
    timed(events * loads, async {
        for _ in 0..loads {
            let account = pg::load_stream(&schema.pool, stream).await?;
            check_count(account.deposits, events)?;
        }
        Ok(())
    })
    .await
}

/// An error unless `seen == expected`.
///
/// # Errors
/// When the counts differ.
pub(crate) fn check_count(seen: u64, expected: u64) -> BenchResult<()> {
    if seen == expected {
        Ok(())
    } else {
        Err(format!("read {seen} events, expected {expected}").into())
    }
}
