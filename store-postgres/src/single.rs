//! The fast path of a group holding one call to one stream (the common command): one
//! statement (the `append_stream` function), the stream's advisory lock taken, its row
//! upserted or updated with the expected-version check in its `WHERE`, and the events inserted
//! only if that row was written. Anything else (a conflict, a stored event id) falls back to `append_group`, which
//! gives the exact answer.

use annals::{ExpectedVersion, StreamAppend};
use sqlx::PgExecutor;

/// The one-stream append: `append_stream` (migrations/0005_least_privilege.sql) takes the
/// log's lock (shared) and the stream's first, before anything takes the transaction's id, as
/// `lock_streams` in migrations/0003_stream_order.sql does, then moves the stream row on with
/// the expected-version check and inserts the events only if that row was written. A function
/// owned by the migrating role, so an application role may append without any right to write
/// the tables; one statement, one round trip, as before.
const APPEND_STREAM: &str =
    "SELECT o_version, o_seq, o_tx FROM append_stream($1, $2, $3, $4, $5, $6, $7, $8)";

/// What the fast path stored: the stream's new version, the events' sequence numbers in
/// order, and their transaction id. `None`: nothing was written, ask `append_group`.
pub(crate) type Stored = Option<(i64, Vec<i64>, i64)>;

pub(crate) async fn append(
    executor: impl PgExecutor<'_>,
    append: &StreamAppend,
    metadata: &[Option<String>],
) -> Result<Stored, sqlx::Error> {
    let expected = match append.expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => 0,
        ExpectedVersion::StreamExists => -2,
        ExpectedVersion::Exact(v) => i64::try_from(v).unwrap_or(i64::MAX),
    };
    let events = &append.events;
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<i32> = events
        .iter()
        .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
        .collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    let metadata: Vec<Option<&str>> = metadata.iter().map(|m| m.as_deref()).collect();
    let row: (Option<i64>, Vec<i64>, i64) = sqlx::query_as(APPEND_STREAM)
        .bind(append.stream.as_str())
        .bind(i64::try_from(events.len()).unwrap_or(i64::MAX))
        .bind(expected)
        .bind(&ids)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .fetch_one(executor)
        .await?;
    Ok(stored(row, events.len()))
}

/// The fast path's answer from its row: written only if every event got a sequence number.
fn stored((version, seq, tx): (Option<i64>, Vec<i64>, i64), events: usize) -> Stored {
    version
        .filter(|_| seq.len() == events)
        .map(|v| (v, seq, tx))
}
