//! The fast path of a group holding one call to one stream (the common command): one
//! statement, the stream's advisory lock taken, its newest version read from `events` and
//! checked (or, for a version this store has seen, not read at all: [`crate::seen`]), and the
//! events inserted after it. Anything else (a conflict, a stored event id, a version taken
//! since the statement's snapshot, which the key refuses) falls back to `append_group`, which
//! gives the exact answer.
//!
//! The statement is the `append_stream` function (migration 0005), which runs as its owner so
//! that an application role may append without any right to write the tables, or, for a role
//! that may write them itself (the owner, usually), the same statements sent plain
//! ([`Privileges`]): the function's `SET search_path`, saved and restored on every call, and
//! its PL/pgSQL cost about a fifth of the server's time for a one-event append, for nothing
//! such a role needs.

use std::sync::atomic::{AtomicBool, Ordering};

use annals::{ExpectedVersion, NewEvent, StreamAppend};
use sqlx::{
    Arguments,
    postgres::{PgArguments, PgConnection},
};

use crate::{bounded::Db, error::sql_state, seen::Check};

/// The one-stream append: `append_stream` (migrations/0007_versions_from_events.sql) takes the
/// log's lock (shared) and the stream's first, before anything takes the transaction's id, as
/// `lock_streams` in migrations/0003_stream_order.sql does, then reads the stream's newest
/// version in a statement of its own, checks it and inserts the events after it. A function
/// owned by the migrating role, so an application role may append without any right to write
/// the tables; one statement, one round trip, as before.
const APPEND_STREAM: &str =
    "SELECT o_version, o_seq, o_tx FROM append_stream($1, $2, $3, $4, $5, $6, $7, $8)";

/// The plain statements' start, up to the stream statement `s`: the log's lock (shared) and
/// the stream's come first, before anything takes the transaction's id, as `append_stream`
/// takes them; `l` reads from `g` and `s` from `l`, so they run in that order.
macro_rules! locked_stream {
    () => {
        "WITH g AS (SELECT pg_advisory_xact_lock_shared(stream_lock_key(''))), \
         l AS (SELECT pg_advisory_xact_lock(stream_lock_key($1)) FROM g), s AS ("
    };
}

/// `append_stream`'s body as one statement, events bound as arrays.
macro_rules! append_many {
    ($stream:expr) => {
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

/// One event: the same with scalar parameters (no arrays, `unnest` or ordinality for the
/// most common command), the insert itself the statement: its one row (version, sequence
/// number, transaction id) when the stream row was written, none otherwise. (The plan has
/// half the nodes of a final `SELECT` over the two: measurably less of the server's time to
/// start and run it.)
macro_rules! append_one {
    ($stream:expr) => {
        concat!(
            locked_stream!(),
            $stream,
            ") INSERT INTO events (tx, stream_id, stream_version, event_id, event_type, \
               schema_version, payload, metadata) \
             SELECT pg_current_xact_id()::text::bigint, $1, s.version, \
               $4::uuid, $5::text, $6::int, $7::text, $8::text \
             FROM s RETURNING stream_version, sequence, tx"
        )
    };
}

macro_rules! statements {
    ($(#[$doc:meta])* $name:ident, $stream:expr) => {
        $(#[$doc])*
        const $name: [&str; 2] = [append_many!($stream), append_one!($stream)];
    };
}

/// The stream's newest version, from the last entry of the events' key for it (`NULL` for a
/// stream with no events). It is read with the statement's snapshot, taken before the lock
/// was granted: a version appended meanwhile is not seen, the version written after the one
/// read is then taken, and the key refuses it (nothing is written; `append_group` answers).
macro_rules! newest {
    () => {
        "(SELECT e.stream_version FROM events AS e WHERE e.stream_id = $1 \
          ORDER BY e.stream_version DESC LIMIT 1)"
    };
}

statements!(
    /// `Any` (`$3` = -1): append after the stream's newest version, whatever it is.
    ANY,
    concat!("SELECT coalesce(", newest!(), ", 0) + $2 AS version FROM l")
);

statements!(
    /// `NoStream`, `Exact(0)` (`$3` = 0): append only to a stream with no events.
    NEW,
    "SELECT $2::bigint AS version FROM l \
     WHERE NOT EXISTS (SELECT 1 FROM events AS e WHERE e.stream_id = $1)"
);

statements!(
    /// `StreamExists` (`$3` = -2), `Exact(n)`: append if the stream has events, and its
    /// newest is `n`.
    EXISTING,
    concat!(
        "SELECT c.v + $2 AS version FROM (SELECT ",
        newest!(),
        " AS v FROM l) AS c WHERE c.v IS NOT NULL AND ($3 = -2 OR c.v = $3)"
    )
);

statements!(
    /// `Exact(n)` for a version `n` this store has read or written ([`crate::seen`]): append
    /// after it without reading anything. Version `n` exists for ever (events are never
    /// deleted), so the events written after it either continue the stream or collide with
    /// events stored since, which the key refuses.
    SEEN,
    "SELECT $3 + $2 AS version FROM l"
);

/// Whether appends may be sent as plain statements: true until the server refuses one for
/// want of privileges (`42501`, raised before the statement runs anything), then the append
/// functions for the store's lifetime. One flag per store.
#[derive(Debug)]
pub(crate) struct Privileges {
    plain: AtomicBool,
}

impl Default for Privileges {
    fn default() -> Self {
        Self {
            plain: AtomicBool::new(true),
        }
    }
}

impl Privileges {
    /// Whether to try a plain statement.
    pub(crate) fn plain(&self) -> bool {
        self.plain.load(Ordering::Relaxed)
    }

    /// After a plain statement failed with `error`: whether to send the function instead
    /// (the role may not write the tables; from now on every append uses the functions).
    pub(crate) fn refused(&self, error: &sqlx::Error) -> bool {
        let refused = sql_state(error).as_deref() == Some("42501");
        if refused {
            self.plain.store(false, Ordering::Relaxed);
        }
        refused
    }
}

/// What the fast path stored: the stream's new version, the events' sequence numbers in
/// order, and their transaction id. `None`: nothing was written, ask `append_group`.
pub(crate) type Stored = Option<(i64, Vec<i64>, i64)>;

/// Appends `append` by one statement on `conn`: plain when `privileges` allow, else (or when
/// the server refuses the plain one) through `append_stream`.
pub(crate) async fn append(
    conn: &mut PgConnection,
    append: &StreamAppend,
    metadata: &[Option<String>],
    db: &Db,
) -> Result<Stored, sqlx::Error> {
    let privileges = &db.privileges;
    // A contended stream's version is read by the function, after its lock.
    let check = db.seen.check(append);
    if privileges.plain() && check != Check::ReadAfterLock {
        let seen = check == Check::Seen;
        match plain(&mut *conn, append, metadata, seen).await {
            Err(error) if privileges.refused(&error) => {}
            // The version was read before an append the lock waited for: the function reads
            // it again once the lock is held. (A version seen and then taken is a conflict,
            // which the writers answer.)
            Err(error) if !seen && version_taken(&error) => {
                db.seen.contend(append.stream.as_str());
            }
            other => return other,
        }
    }
    function(conn, append, metadata).await
}

/// Whether `error` is the events' key refusing a version that is taken (not an event id).
pub(crate) fn version_taken(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint() == Some("events_pkey"))
}

fn expected_code(expected: ExpectedVersion) -> i64 {
    match expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => 0,
        ExpectedVersion::StreamExists => -2,
        ExpectedVersion::Exact(v) => i64::try_from(v).unwrap_or(i64::MAX),
    }
}

/// The plain statements, with `append_stream`'s parameters; `seen`: the expected version is
/// one this store has seen, and needs no read.
async fn plain(
    conn: &mut PgConnection,
    append: &StreamAppend,
    metadata: &[Option<String>],
    seen: bool,
) -> Result<Stored, sqlx::Error> {
    let expected = expected_code(append.expected);
    let sql = match expected {
        -1 => ANY,
        0 => NEW,
        n if n > 0 && seen => SEEN,
        _ => EXISTING,
    };
    let events = &append.events;
    if let [event] = events.as_slice() {
        let version = i32::try_from(event.schema_version).unwrap_or(i32::MAX);
        let metadata = metadata.first().and_then(|m| m.as_deref());
        let row: Option<(i64, i64, i64)> =
            sqlx::query_as_with(sql[1], one_event_arguments(append, event, metadata))
                .bind(append.stream.as_str())
                .bind(1i64)
                .bind(expected)
                .bind(event.event_id)
                .bind(event.event_type.as_str())
                .bind(version)
                .bind(event.payload.as_str())
                .bind(metadata)
                .fetch_optional(conn)
                .await?;
        return Ok(row.map(|(version, seq, tx)| (version, vec![seq], tx)));
    }
    let (ids, types, versions, payloads, metadata) = columns(append, metadata);
    let row: (Option<i64>, Vec<i64>, i64, i64) = sqlx::query_as(sql[0])
        .bind(append.stream.as_str())
        .bind(i64::try_from(events.len()).unwrap_or(i64::MAX))
        .bind(expected)
        .bind(&ids)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .fetch_one(conn)
        .await?;
    Ok(stored((row.0, row.1, row.2), events.len()))
}

/// Room for the one-event statement's eight parameters, so that binding them grows no
/// buffer: each is a 4-byte length and its bytes (three `int8`, a `uuid`, an `int4` and the
/// texts).
fn one_event_arguments(
    append: &StreamAppend,
    event: &NewEvent,
    metadata: Option<&str>,
) -> PgArguments {
    let texts = append.stream.as_str().len()
        + event.event_type.as_str().len()
        + event.payload.as_str().len()
        + metadata.map_or(0, str::len);
    let mut arguments = PgArguments::default();
    arguments.reserve(8, 8 * 4 + 3 * 8 + 16 + 4 + texts);
    arguments
}

/// The events' columns as arrays.
#[allow(
    clippy::type_complexity,
    reason = "the five bound arrays, named where they are bound"
)]
fn columns<'a>(
    append: &'a StreamAppend,
    metadata: &'a [Option<String>],
) -> (
    Vec<uuid::Uuid>,
    Vec<&'a str>,
    Vec<i32>,
    Vec<&'a str>,
    Vec<Option<&'a str>>,
) {
    let events = &append.events;
    (
        events.iter().map(|e| e.event_id).collect(),
        events.iter().map(|e| e.event_type.as_str()).collect(),
        events
            .iter()
            .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
            .collect(),
        events.iter().map(|e| e.payload.as_str()).collect(),
        metadata.iter().map(|m| m.as_deref()).collect(),
    )
}

/// `append_stream`.
async fn function(
    conn: &mut PgConnection,
    append: &StreamAppend,
    metadata: &[Option<String>],
) -> Result<Stored, sqlx::Error> {
    let (ids, types, versions, payloads, metadata) = columns(append, metadata);
    let row: (Option<i64>, Vec<i64>, i64) = sqlx::query_as(APPEND_STREAM)
        .bind(append.stream.as_str())
        .bind(i64::try_from(append.events.len()).unwrap_or(i64::MAX))
        .bind(expected_code(append.expected))
        .bind(&ids)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .fetch_one(conn)
        .await?;
    Ok(stored(row, append.events.len()))
}

/// The fast path's answer from its row: written only if every event got a sequence number.
fn stored((version, seq, tx): (Option<i64>, Vec<i64>, i64), events: usize) -> Stored {
    version
        .filter(|_| seq.len() == events)
        .map(|v| (v, seq, tx))
}
