//! Appends: one `BEGIN IMMEDIATE` transaction per call, on the single write connection.
//!
//! The common case pays for no idempotency lookup: the versions are checked, the rows are
//! inserted in multi-row statements, and the unique index on `event_id` catches a reused id.
//! Only then (or on a version conflict, which may be a retry) are the stored ids examined, in
//! a second transaction.

use std::sync::LazyLock;

use annals::{AppendResult, Error, LogPosition, StreamAppend};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use time::OffsetDateTime;

use crate::{idempotency::stored_results, store::Shared};

const COLUMNS: usize = 9;
const INSERT_HEAD: &str = "INSERT INTO events (seq, stream_key, stream_version, event_id, \
     event_type, schema_version, payload, metadata, recorded_at) VALUES ";

/// Rows per INSERT statement: a batch is cut greedily into these sizes, so a connection
/// prepares only these few statements and reuses them.
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

static INSERTS: LazyLock<[String; 5]> = LazyLock::new(|| CHUNKS.map(insert_sql));

fn insert_sql(rows: usize) -> String {
    let row = format!("({})", ["?"; COLUMNS].join(", "));
    format!("{INSERT_HEAD}{}", vec![row; rows].join(", "))
}

/// The outcome of one transaction.
enum Outcome {
    Done(Vec<AppendResult>),
    /// An event id is stored already: look at the stored ids first.
    CheckIds,
}

/// One event row, ready to bind.
struct Row<'a> {
    seq: i64,
    stream_key: i64,
    version: i64,
    event: &'a annals::NewEvent,
    metadata: &'a str,
}

/// Runs a checked append: `metadata` is each event's metadata JSON, in order over all
/// streams (`None` when empty), from [`annals::Limits::check_and_encode_metadata`].
pub(crate) async fn append(
    shared: &Shared,
    appends: Vec<StreamAppend>,
    metadata: Vec<Option<String>>,
) -> annals::Result<Vec<AppendResult>> {
    // One text per event, or some event would be left out of the rows.
    if metadata.len() != appends.iter().map(|a| a.events.len()).sum::<usize>() {
        return Err(Error::backend(
            false,
            "the encoded metadata does not match the events",
        ));
    }
    let mut conn = shared
        .writer
        .acquire()
        .await
        .map_err(|e| shared.backend(e))?;
    let result = attempts(shared, &mut conn, &appends, &metadata).await;
    if matches!(result, Err(Error::Backend { .. })) {
        shared.discard_after_failure(&mut conn);
    }
    result
}

async fn attempts(
    shared: &Shared,
    conn: &mut SqliteConnection,
    appends: &[StreamAppend],
    metadata: &[Option<String>],
) -> annals::Result<Vec<AppendResult>> {
    let outcome = match attempt(shared, conn, appends, metadata, false).await? {
        Outcome::CheckIds => attempt(shared, conn, appends, metadata, true).await?,
        done => done,
    };
    match outcome {
        Outcome::Done(results) => Ok(results),
        Outcome::CheckIds => Err(Error::InvalidAppend {
            reason: "an event id is stored twice",
        }),
    }
}

async fn attempt(
    shared: &Shared,
    conn: &mut SqliteConnection,
    appends: &[StreamAppend],
    metadata: &[Option<String>],
    check_ids: bool,
) -> annals::Result<Outcome> {
    let err = |e| shared.backend(e);
    let mut tx = sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE")
        .await
        .map_err(err)?;
    if check_ids && let Some(results) = stored_results(shared, &mut tx, appends).await? {
        return Ok(Outcome::Done(results));
    }
    let mut streams = Vec::with_capacity(appends.len());
    for append in appends {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT stream_key, version FROM streams WHERE stream_id = ?")
                .bind(append.stream.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(err)?;
        let actual = row.map_or(0, |(_, v)| u64::try_from(v).unwrap_or_default());
        if !append.expected.accepts(actual) {
            // Perhaps a retry of a stored append, which succeeds whatever its expectation.
            if !check_ids && let Some(results) = stored_results(shared, &mut tx, appends).await? {
                return Ok(Outcome::Done(results));
            }
            return Err(Error::Conflict {
                stream: append.stream.clone(),
                expected: append.expected,
                actual,
            });
        }
        streams.push((row.map(|(key, _)| key), actual));
    }

    let base: i64 = sqlx::query_scalar(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), \
                    coalesce((SELECT max(seq) FROM events), 0))",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(err)?;
    let now = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos())
        .map_err(|e| Error::backend(false, e))?;

    let total = appends.iter().map(|a| a.events.len()).sum();
    let mut rows = Vec::with_capacity(total);
    let mut results = Vec::with_capacity(appends.len());
    let mut seq = base;
    // As many texts as events (`append` checked it), taken stream by stream.
    let mut texts = metadata.iter().map(|m| m.as_deref().unwrap_or("{}"));
    for (append, (key, actual)) in appends.iter().zip(streams) {
        let actual = i64::try_from(actual).unwrap_or(i64::MAX);
        let count = i64::try_from(append.events.len()).unwrap_or(i64::MAX);
        let version = actual + count;
        let key = upsert_stream(&mut tx, append, key, version)
            .await
            .map_err(err)?;
        for (i, (event, metadata)) in (1..).zip(append.events.iter().zip(&mut texts)) {
            rows.push(Row {
                seq: seq + i,
                stream_key: key,
                version: actual + i,
                event,
                metadata,
            });
        }
        results.push(AppendResult {
            stream_version: u64::try_from(version).unwrap_or_default(),
            first_position: position(seq + 1),
            last_position: position(seq + count),
        });
        seq += count;
    }
    if let Err(e) = insert_rows(&mut tx, &rows, now).await {
        return match e {
            sqlx::Error::Database(db) if db.is_unique_violation() && !check_ids => {
                Ok(Outcome::CheckIds)
            }
            e => Err(err(e)),
        };
    }
    tx.commit().await.map_err(err)?;
    let last = u64::try_from(seq).unwrap_or_default();
    shared.head.send_if_modified(|head| {
        let newer = last > *head;
        *head = (*head).max(last);
        newer
    });
    Ok(Outcome::Done(results))
}

fn position(seq: i64) -> LogPosition {
    LogPosition::serial(u64::try_from(seq).unwrap_or_default())
}

/// Sets a stream's new version (creating its row) and returns its key.
async fn upsert_stream(
    tx: &mut Transaction<'_, Sqlite>,
    append: &StreamAppend,
    key: Option<i64>,
    version: i64,
) -> Result<i64, sqlx::Error> {
    match key {
        Some(key) => {
            sqlx::query("UPDATE streams SET version = ? WHERE stream_key = ?")
                .bind(version)
                .bind(key)
                .execute(&mut **tx)
                .await?;
            Ok(key)
        }
        None => {
            sqlx::query_scalar(
                "INSERT INTO streams (stream_id, version) VALUES (?, ?) RETURNING stream_key",
            )
            .bind(append.stream.as_str())
            .bind(version)
            .fetch_one(&mut **tx)
            .await
        }
    }
}

async fn insert_rows(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[Row<'_>],
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut rest = rows;
    for (size, sql) in CHUNKS.iter().zip(INSERTS.iter()) {
        while rest.len() >= *size {
            let (chunk, tail) = rest.split_at(*size);
            rest = tail;
            let mut query = sqlx::query(sql.as_str());
            for row in chunk {
                query = query
                    .bind(row.seq)
                    .bind(row.stream_key)
                    .bind(row.version)
                    .bind(row.event.event_id)
                    .bind(row.event.event_type.as_str())
                    .bind(i64::from(row.event.schema_version))
                    .bind(row.event.payload.as_str())
                    .bind(row.metadata)
                    .bind(now);
            }
            query.execute(&mut **tx).await?;
        }
    }
    Ok(())
}
