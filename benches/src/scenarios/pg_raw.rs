//! The PostgreSQL baselines of each scenario, timed on their own schema.

use crate::{
    BenchResult,
    env::{Ctx, PgSchema},
    raw::pg,
    runner::timed,
    workload::{Batch, RawRow},
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
        drop(conn);
        crate::env::settle(&schema.pool, "raw_events").await?;
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
            let (account, _) = pg::load_stream(&schema.pool, stream).await?;
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
