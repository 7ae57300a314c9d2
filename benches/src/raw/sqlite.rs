//! Raw SQLite baselines: sqlx's SQLite driver alone on a table of the events' shape.

use std::path::Path;

use futures::TryStreamExt;
use sqlx::{
    Connection, Executor, QueryBuilder, Row, Sqlite, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::{BenchResult, ledger::Deposited, workload::RawRow};

/// Opens (creating) a database file in WAL mode with `synchronous = FULL`, the durable
/// setting, and creates `raw_events`.
///
/// # Errors
/// SQLite failures.
pub(crate) async fn open(path: &Path) -> BenchResult<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    pool.execute(
        "CREATE TABLE raw_events (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            stream_id TEXT NOT NULL,
            stream_version INTEGER NOT NULL,
            event_id BLOB NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            schema_version INTEGER NOT NULL,
            payload TEXT NOT NULL,
            metadata TEXT NOT NULL,
            recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            UNIQUE (stream_id, stream_version)
        )",
    )
    .await?;
    Ok(pool)
}

/// Inserts `rows` in one transaction with one multi-row `INSERT` statement (the fast way
/// with sqlx's SQLite driver, where every statement is a round trip to its worker thread).
///
/// # Errors
/// SQLite failures.
pub(crate) async fn insert_batch(pool: &SqlitePool, rows: &[RawRow]) -> BenchResult<()> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    // 7 bound values per row: 1,000 rows stay far below SQLite's 32,766-variable limit.
    for chunk in rows.chunks(1_000) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO raw_events (stream_id, stream_version, event_id, event_type, \
             schema_version, payload, metadata) ",
        );
        insert.push_values(chunk, |mut b, row| {
            b.push_bind(&row.stream_id)
                .push_bind(row.stream_version)
                .push_bind(row.event_id)
                .push_bind(&row.event_type)
                .push_bind(row.schema_version)
                .push_bind(&row.payload)
                .push_bind(&row.metadata);
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Scans the table in position order, decoding each payload into a typed deposit; returns
/// the count and a checksum.
///
/// # Errors
/// SQLite or decode failures.
pub(crate) async fn scan_all(pool: &SqlitePool) -> BenchResult<(u64, i64)> {
    let mut rows = sqlx::query(
        "SELECT position, stream_id, stream_version, event_id, event_type, schema_version, \
         payload, metadata, recorded_at FROM raw_events ORDER BY position",
    )
    .fetch(pool);
    let (mut count, mut sum) = (0u64, 0i64);
    while let Some(row) = rows.try_next().await? {
        let _position: i64 = row.try_get(0)?;
        let _stream: &str = row.try_get(1)?;
        let _version: i64 = row.try_get(2)?;
        let _id: uuid::Uuid = row.try_get(3)?;
        let _type: &str = row.try_get(4)?;
        let _schema: i64 = row.try_get(5)?;
        let d: Deposited = serde_json::from_str(row.try_get::<&str, _>(6)?)?;
        let _meta: annals::Metadata = serde_json::from_str(row.try_get::<&str, _>(7)?)?;
        let _at: &str = row.try_get(8)?;
        count += 1;
        sum = sum.wrapping_add(d.amount);
    }
    Ok((count, sum))
}
