//! The fast path of a group holding one call to one stream (the common command): one plain
//! SQL statement, the stream's advisory lock taken, its row upserted or updated with the
//! expected-version check in its `WHERE`, and the events inserted only if that row was
//! written. Anything else (a conflict, a stored event id) falls back to `append_group`, which
//! gives the exact answer.

use annals::{ExpectedVersion, StreamAppend};
use sqlx::PgExecutor;

/// The statements' start, up to the stream statement `s`: the log's lock (shared) and the
/// stream's come first, before anything takes the transaction's id, as `lock_streams` in
/// migrations/0003_stream_order.sql takes them; `l` reads from `g` and `s` from `l`, so they
/// run in that order.
macro_rules! locked_stream {
    () => {
        "WITH g AS (SELECT pg_advisory_xact_lock_shared(stream_lock_key(''))), \
         l AS (SELECT pg_advisory_xact_lock(stream_lock_key($1)) FROM g), s AS ("
    };
}

macro_rules! append_one {
    ($stream:literal) => {
        concat!(
            locked_stream!(),
            $stream,
            "), ins AS (\
             INSERT INTO events (tx, stream_id, stream_version, event_id, event_type, \
               schema_version, payload, metadata) \
             SELECT pg_current_xact_id()::text::bigint, $1, s.version - $2 + u.pos, \
               u.id, u.t, u.sv, u.p, u.m \
             FROM s, unnest($4::uuid[], $5::text[], $6::int[], $7::text[], $8::text[]) \
               WITH ORDINALITY AS u(id, t, sv, p, m, pos) \
             RETURNING sequence, tx) \
             SELECT (SELECT version FROM s), \
               coalesce((SELECT array_agg(sequence ORDER BY sequence) FROM ins), '{}'), \
               coalesce((SELECT min(tx) FROM ins), 0), $3::bigint"
        )
    };
}

/// One event: the same statements with scalar parameters instead of arrays (no array
/// building, `unnest` or ordinality for the most common command).
macro_rules! append_scalar {
    ($stream:literal) => {
        concat!(
            locked_stream!(),
            $stream,
            "), ins AS (\
             INSERT INTO events (tx, stream_id, stream_version, event_id, event_type, \
               schema_version, payload, metadata) \
             SELECT pg_current_xact_id()::text::bigint, $1, s.version, \
               $4::uuid, $5::text, $6::int, $7::text, $8::text \
             FROM s RETURNING sequence, tx) \
             SELECT (SELECT version FROM s), \
               coalesce((SELECT array_agg(sequence) FROM ins), '{}'), \
               coalesce((SELECT min(tx) FROM ins), 0), $3::bigint"
        )
    };
}

macro_rules! statements {
    ($(#[$doc:meta])* $name:ident, $stream:literal) => {
        $(#[$doc])*
        const $name: [&str; 2] = [append_one!($stream), append_scalar!($stream)];
    };
}

statements!(
    /// `Any`: create the stream or move it on, whatever its version.
    ANY,
    "INSERT INTO streams AS st (stream_id, version) SELECT $1, $2 FROM l \
     ON CONFLICT (stream_id) DO UPDATE SET version = st.version + $2 RETURNING version"
);

statements!(
    /// `NoStream`, `Exact(0)`: create the stream, or write nothing if it exists.
    NEW,
    "INSERT INTO streams (stream_id, version) SELECT $1, $2 FROM l \
     ON CONFLICT (stream_id) DO NOTHING RETURNING version"
);

statements!(
    /// `StreamExists` (`$3` = -2), `Exact(n)`: move an existing stream on if it is at `n`.
    EXISTING,
    "UPDATE streams SET version = version + $2 FROM l \
     WHERE stream_id = $1 AND ($3 = -2 OR version = $3) RETURNING version"
);

/// What the fast path stored: the stream's new version, the events' sequence numbers in
/// order, and their transaction id. `None`: nothing was written, ask `append_group`.
pub(crate) type Stored = Option<(i64, Vec<i64>, i64)>;

pub(crate) async fn append(
    executor: impl PgExecutor<'_>,
    append: &StreamAppend,
    metadata: &[Option<String>],
) -> Result<Stored, sqlx::Error> {
    let (sql, expected) = match append.expected {
        ExpectedVersion::Any => (ANY, -1),
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => (NEW, 0),
        ExpectedVersion::StreamExists => (EXISTING, -2),
        ExpectedVersion::Exact(v) => (EXISTING, i64::try_from(v).unwrap_or(i64::MAX)),
    };
    let events = &append.events;
    if let [event] = events.as_slice() {
        let version = i32::try_from(event.schema_version).unwrap_or(i32::MAX);
        let row: (Option<i64>, Vec<i64>, i64, i64) = sqlx::query_as(sql[1])
            .bind(append.stream.as_str())
            .bind(1i64)
            .bind(expected)
            .bind(event.event_id)
            .bind(event.event_type.as_str())
            .bind(version)
            .bind(event.payload.as_str())
            .bind(metadata.first().and_then(|m| m.as_deref()))
            .fetch_one(executor)
            .await?;
        return Ok(stored(row, 1));
    }
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<i32> = events
        .iter()
        .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
        .collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    let metadata: Vec<Option<&str>> = metadata.iter().map(|m| m.as_deref()).collect();
    let row: (Option<i64>, Vec<i64>, i64, i64) = sqlx::query_as(sql[0])
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
fn stored((version, seq, tx, _): (Option<i64>, Vec<i64>, i64, i64), events: usize) -> Stored {
    version
        .filter(|_| seq.len() == events)
        .map(|v| (v, seq, tx))
}
