//! Snapshots: one row per stream, the one with the highest stream version wins.

use annals::{Error, Payload, Snapshot, StreamId};
use time::OffsetDateTime;

use crate::store::Shared;

/// Saves `snapshot` unless a snapshot of a higher stream version is stored.
pub(crate) async fn save(shared: &Shared, snapshot: Snapshot) -> annals::Result<()> {
    let err = |e| shared.backend(e);
    let version = i64::try_from(snapshot.stream_version).map_err(|e| Error::backend(false, e))?;
    let taken_at = i64::try_from(snapshot.taken_at.unix_timestamp_nanos())
        .map_err(|e| Error::backend(false, e))?;
    let mut conn = shared.writer.acquire().await.map_err(err)?;
    let result = write(shared, &mut conn, &snapshot, version, taken_at).await;
    if result.is_err() {
        shared.discard_after_failure(&mut conn);
    }
    result
}

async fn write(
    shared: &Shared,
    conn: &mut sqlx::SqliteConnection,
    snapshot: &Snapshot,
    version: i64,
    taken_at: i64,
) -> annals::Result<()> {
    let err = |e| shared.backend(e);
    // IMMEDIATE: take the write lock (waiting up to the busy timeout) before reading.
    let mut tx = sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE")
        .await
        .map_err(err)?;
    sqlx::query(
        "INSERT INTO snapshots (stream_id, stream_version, schema_version, payload, taken_at) \
         VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (stream_id) DO UPDATE SET \
            stream_version = excluded.stream_version, \
            schema_version = excluded.schema_version, \
            payload = excluded.payload, \
            taken_at = excluded.taken_at \
         WHERE excluded.stream_version >= snapshots.stream_version",
    )
    .bind(snapshot.stream_id.as_str())
    .bind(version)
    .bind(i64::from(snapshot.schema_version))
    .bind(snapshot.payload.as_str())
    .bind(taken_at)
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)
}

/// The stored snapshot of `stream`, if any.
pub(crate) async fn load(shared: &Shared, stream: &StreamId) -> annals::Result<Option<Snapshot>> {
    let row: Option<(i64, i64, String, i64)> = sqlx::query_as(
        "SELECT stream_version, schema_version, payload, taken_at \
         FROM snapshots WHERE stream_id = ?",
    )
    .bind(stream.as_str())
    .fetch_optional(&shared.readers)
    .await
    .map_err(|e| shared.backend(e))?;
    let Some((version, schema_version, payload, taken_at)) = row else {
        return Ok(None);
    };
    // A snapshot is a cache: a row that does not fit is ignored, and the stream replayed.
    let (Ok(stream_version), Ok(schema_version), Ok(taken_at)) = (
        u64::try_from(version),
        u32::try_from(schema_version),
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(taken_at)),
    ) else {
        tracing::warn!(stream = %stream, "ignoring a snapshot row out of range");
        return Ok(None);
    };
    Ok(Some(Snapshot {
        stream_id: stream.clone(),
        stream_version,
        schema_version,
        payload: Payload::from_stored(payload),
        taken_at,
    }))
}
