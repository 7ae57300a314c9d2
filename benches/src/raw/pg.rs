//! Raw PostgreSQL baselines: what sqlx alone does with a table of the events' shape.

use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, types::Json};
use time::OffsetDateTime;
use uuid::Uuid;

use annals::{Aggregate, Metadata};

use crate::{
    BenchResult,
    ledger::{Account, Deposited, LedgerEvent},
    workload::RawRow,
};

/// Creates `raw_events` in the pool's schema, the usual event-table design, with `payload`
/// and `metadata` of type `json_type` (`jsonb` for the usual design).
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn create_table(pool: &PgPool, json_type: &str) -> BenchResult<()> {
    let ddl = format!(
        "CREATE TABLE raw_events (
            position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            stream_id text NOT NULL,
            stream_version bigint NOT NULL,
            event_id uuid NOT NULL UNIQUE,
            event_type text NOT NULL,
            schema_version integer NOT NULL,
            payload {json_type} NOT NULL,
            metadata {json_type} NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (stream_id, stream_version)
        )"
    );
    sqlx::query(AssertSqlSafe(ddl)).execute(pool).await?;
    Ok(())
}

fn escape_copy_text(out: &mut String, field: &str) {
    for c in field.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// `COPY raw_events FROM STDIN` of `rows` (text format), one statement, autocommit.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn copy_rows(conn: &mut PgConnection, rows: &[RawRow]) -> BenchResult<u64> {
    let mut text = String::with_capacity(rows.len() * 400);
    for row in rows {
        escape_copy_text(&mut text, &row.stream_id);
        text.push('\t');
        text.push_str(&row.stream_version.to_string());
        text.push('\t');
        text.push_str(&row.event_id.to_string());
        text.push('\t');
        escape_copy_text(&mut text, &row.event_type);
        text.push('\t');
        text.push_str(&row.schema_version.to_string());
        text.push('\t');
        escape_copy_text(&mut text, &row.payload);
        text.push('\t');
        escape_copy_text(&mut text, &row.metadata);
        text.push('\n');
    }
    let mut copy = conn
        .copy_in_raw(
            "COPY raw_events (stream_id, stream_version, event_id, event_type, schema_version, \
             payload, metadata) FROM STDIN",
        )
        .await?;
    copy.send(text.into_bytes()).await?;
    Ok(copy.finish().await?)
}

/// One single-row INSERT in its own transaction (BEGIN, INSERT, COMMIT: three round trips,
/// as a framework's append transaction has at least).
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn insert_one(conn: &mut PgConnection, row: &RawRow) -> BenchResult<()> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO raw_events (stream_id, stream_version, event_id, event_type, \
         schema_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)",
    )
    .bind(&row.stream_id)
    .bind(row.stream_version)
    .bind(row.event_id)
    .bind(&row.event_type)
    .bind(row.schema_version)
    .bind(&row.payload)
    .bind(&row.metadata)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A row decoded into typed values, as an application reading its own table would.
#[derive(Debug, sqlx::FromRow)]
#[allow(
    dead_code,
    reason = "decoding every column is the work the baseline measures"
)]
pub(crate) struct TypedRow {
    /// Global position.
    pub(crate) position: i64,
    /// Stream id.
    pub(crate) stream_id: String,
    /// Version in the stream.
    pub(crate) stream_version: i64,
    /// Event id.
    pub(crate) event_id: Uuid,
    /// Type name.
    pub(crate) event_type: String,
    /// Payload schema version.
    pub(crate) schema_version: i32,
    /// The typed payload.
    pub(crate) payload: Json<Deposited>,
    /// The typed metadata.
    pub(crate) metadata: Json<Metadata>,
    /// Commit time.
    pub(crate) recorded_at: OffsetDateTime,
}

impl TypedRow {
    /// The typed event (the table holds only deposits).
    pub(crate) fn event(self) -> LedgerEvent {
        LedgerEvent::Deposited(self.payload.0)
    }
}

macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT position, stream_id, stream_version, event_id, event_type, schema_version, ",
            "payload, metadata, recorded_at FROM raw_events ",
            $rest
        )
    };
}

/// Scans the whole table in position order, streamed, decoding every row; returns the count
/// and a checksum of the amounts so the work cannot be skipped.
///
/// # Errors
/// PostgreSQL or decode failures.
pub(crate) async fn scan_all(pool: &PgPool) -> BenchResult<(u64, i64)> {
    let mut rows = sqlx::query_as::<_, TypedRow>(select!("ORDER BY position")).fetch(pool);
    let (mut count, mut sum) = (0u64, 0i64);
    while let Some(row) = rows.try_next().await? {
        let LedgerEvent::Deposited(d) = row.event();
        count += 1;
        sum = sum.wrapping_add(d.amount);
    }
    Ok((count, sum))
}

/// What folding an aggregate needs of a row: the same columns the store reads for
/// `Repository::load` (`StreamRead::for_folding`), so both sides of `pg.load` fetch alike.
#[derive(Debug, sqlx::FromRow)]
#[allow(
    dead_code,
    reason = "decoding every column is the work the baseline measures"
)]
pub(crate) struct FoldRow {
    /// Global position.
    pub(crate) position: i64,
    /// Version in the stream.
    pub(crate) stream_version: i64,
    /// Type name.
    pub(crate) event_type: String,
    /// Payload schema version.
    pub(crate) schema_version: i32,
    /// The typed payload.
    pub(crate) payload: Json<Deposited>,
}

/// Scans one stream in version order, reading what folding needs, and applies its events to
/// an [`Account`]; returns it and the stream's version.
///
/// # Errors
/// PostgreSQL or decode failures.
pub(crate) async fn load_stream<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    stream: &str,
) -> BenchResult<(Account, u64)> {
    let sql = "SELECT position, stream_version, event_type, schema_version, payload \
               FROM raw_events WHERE stream_id = $1 ORDER BY stream_version";
    let mut rows = sqlx::query_as::<_, FoldRow>(sql)
        .bind(stream)
        .fetch(executor);
    let mut account = Account::default();
    let mut version = 0;
    while let Some(row) = rows.try_next().await? {
        account.apply(&LedgerEvent::Deposited(row.payload.0));
        version = u64::try_from(row.stream_version)?;
    }
    Ok((account, version))
}

/// One autocommit `INSERT` of a row: the unique `(stream_id, stream_version)` refuses a
/// version written meanwhile (a hand-written command path's concurrency check).
///
/// # Errors
/// PostgreSQL failures (a unique violation on a conflict).
pub(crate) async fn insert_row(conn: &mut PgConnection, row: &RawRow) -> BenchResult<()> {
    sqlx::query(
        "INSERT INTO raw_events (stream_id, stream_version, event_id, event_type, \
         schema_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)",
    )
    .bind(&row.stream_id)
    .bind(row.stream_version)
    .bind(row.event_id)
    .bind(&row.event_type)
    .bind(row.schema_version)
    .bind(&row.payload)
    .bind(&row.metadata)
    .execute(conn)
    .await?;
    Ok(())
}
