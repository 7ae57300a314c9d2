//! Reading events: row decoding and the page queries of streams and of the global log.
//!
//! The global log is read in `(tx, sequence)` order, and only events whose transaction id is
//! below the oldest transaction still running (`pg_snapshot_xmin(pg_current_snapshot())`):
//! every transaction that can still commit has an id at or above that horizon, so nothing
//! can later appear before a position a reader has passed.

use std::collections::HashMap;

use annals::{EventType, Metadata, Payload, RecordedEvent, StreamId};
use sqlx::{
    Arguments, Postgres, Row,
    postgres::{PgArguments, PgRow},
    query::Query,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    bounded::Db,
    error::{backend, internal},
    group::position,
};

macro_rules! columns {
    () => {
        "tx, sequence, stream_id, stream_version, event_id, event_type, schema_version, \
         payload, metadata, recorded_at"
    };
}

/// The columns of a stream read: the stream id is the one asked for, so it is not sent.
macro_rules! stream_columns {
    () => {
        "tx, sequence, stream_version, event_id, event_type, schema_version, payload, metadata, \
         recorded_at"
    };
}

const STREAM_FORWARD: &str = concat!(
    "SELECT ",
    stream_columns!(),
    " FROM events WHERE stream_id = $1 AND stream_version >= $2 \
     ORDER BY stream_version LIMIT $3"
);

/// The columns of a forward stream read for folding an aggregate
/// ([`annals::StreamRead::for_folding`]): only what folding needs, about half the columns, so
/// both the server and the client do less.
macro_rules! fold_columns {
    () => {
        "tx, sequence, stream_version, event_type, schema_version, payload"
    };
}

pub(crate) use {columns, fold_columns, stream_columns};

const STREAM_FOLD: &str = concat!(
    "SELECT ",
    fold_columns!(),
    " FROM events WHERE stream_id = $1 AND stream_version >= $2 \
     ORDER BY stream_version LIMIT $3"
);

const STREAM_BACKWARD: &str = concat!(
    "SELECT ",
    stream_columns!(),
    " FROM events WHERE stream_id = $1 AND stream_version <= $2 \
     ORDER BY stream_version DESC LIMIT $3"
);

const LOG_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE (tx, sequence) > ($1, $2) \
     AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
     ORDER BY tx, sequence LIMIT $3"
);

/// After a short page: are there events after the checkpoint, committed by transactions
/// below `$3` (or the current snapshot's xmax), that the horizon still hides? And is any of
/// them visible now?
const PENDING: &str = "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin, \
    coalesce($3, pg_snapshot_xmax(pg_current_snapshot())::text::bigint) AS goal) \
    SELECT h.goal, \
      EXISTS (SELECT 1 FROM events e WHERE (e.tx, e.sequence) > ($1, $2) AND e.tx < h.goal), \
      EXISTS (SELECT 1 FROM events e WHERE (e.tx, e.sequence) > ($1, $2) \
        AND e.tx < h.xmin AND e.tx < h.goal) \
    FROM h";

/// The last visible event, and whether committed events wait behind the horizon.
const HEAD: &str = "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin, \
    coalesce($1, pg_snapshot_xmax(pg_current_snapshot())::text::bigint) AS goal) \
    SELECT h.goal, last.tx, last.sequence, \
      EXISTS (SELECT 1 FROM events e WHERE e.tx >= h.xmin AND e.tx < h.goal) \
    FROM h LEFT JOIN LATERAL (SELECT tx, sequence FROM events \
      WHERE tx < h.xmin ORDER BY tx DESC, sequence DESC LIMIT 1) AS last ON true";

/// Caches names seen in earlier rows, so a page of one stream builds its id once.
#[derive(Default)]
pub(crate) struct Names {
    stream: Option<StreamId>,
    /// Rows of [`stream_columns!`], all of `stream`.
    known_stream: bool,
    /// Rows of [`STREAM_FOLD`] (with `known_stream`).
    folding: bool,
    last_type: Option<EventType>,
    types: HashMap<String, EventType>,
}

impl Names {
    /// For the rows of a stream read ([`stream_columns!`], or [`STREAM_FOLD`]'s when
    /// `folding`): every row is of `stream`.
    pub(crate) fn of_stream(stream: StreamId, folding: bool) -> Self {
        Self {
            stream: Some(stream),
            known_stream: true,
            folding,
            ..Self::default()
        }
    }

    /// The stream named `name` (text not yet checked as UTF-8: a repeat of the last name,
    /// the common case, needs no check).
    fn stream(&mut self, name: &[u8]) -> annals::Result<StreamId> {
        match &self.stream {
            Some(id) if id.as_str().as_bytes() == name => Ok(id.clone()),
            _ => {
                let id = StreamId::new(utf8(name)?)?;
                self.stream = Some(id.clone());
                Ok(id)
            }
        }
    }

    /// The event type named `name`, unchecked text as for [`Names::stream`].
    fn event_type(&mut self, name: &[u8]) -> annals::Result<EventType> {
        // Runs of one type are the common case: compare before checking and hashing.
        if let Some(t) = self
            .last_type
            .as_ref()
            .filter(|t| t.as_str().as_bytes() == name)
        {
            return Ok(t.clone());
        }
        let name = utf8(name)?;
        if let Some(t) = self.types.get(name) {
            self.last_type = Some(t.clone());
            return Ok(t.clone());
        }
        let t = EventType::new(name)?;
        if self.types.len() < 1024 {
            self.types.insert(name.to_owned(), t.clone());
        }
        self.last_type = Some(t.clone());
        Ok(t)
    }
}

fn unsigned(n: i64) -> annals::Result<u64> {
    u64::try_from(n).map_err(|_| internal(false, "a stored number is negative"))
}

/// The columns of one stored row, read in order: a row of a query, or a row of a binary
/// `COPY` ([`crate::copy`]). [`decode`] reads both alike.
pub(crate) trait Columns<'r> {
    /// The next `bigint`.
    fn int8(&mut self) -> annals::Result<i64>;
    /// The next `integer`.
    fn int4(&mut self) -> annals::Result<i32>;
    /// The next `text`, `None` for NULL.
    fn text_or_null(&mut self) -> annals::Result<Option<&'r str>>;
    /// The next `uuid`.
    fn uuid(&mut self) -> annals::Result<Uuid>;
    /// The next `timestamptz`.
    fn timestamptz(&mut self) -> annals::Result<OffsetDateTime>;

    /// The next non-NULL `text`.
    fn text(&mut self) -> annals::Result<&'r str> {
        self.text_or_null()?.ok_or_else(null_text)
    }

    /// The next non-NULL `text` as bytes, which a source may leave unchecked as UTF-8 (the
    /// caller checks them, unless they equal a name it checked before).
    fn text_bytes(&mut self) -> annals::Result<&'r [u8]> {
        self.text().map(str::as_bytes)
    }
}

/// The error of a NULL where a stored text must be.
pub(crate) fn null_text() -> annals::Error {
    internal(false, "a stored text column is NULL")
}

/// Stored text as `str`: `simdutf8` gives `str::from_utf8`'s verdict several times faster
/// on a payload (the check was a twentieth of a replay's client instructions).
pub(crate) fn utf8(bytes: &[u8]) -> annals::Result<&str> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| internal(false, "stored text is not UTF-8"))
}

/// Reads a query row's columns in order.
pub(crate) struct RowColumns<'r> {
    row: &'r PgRow,
    at: usize,
}

impl<'r> RowColumns<'r> {
    /// The next column, without the per-value type check: the column types are this store's
    /// own schema (a mismatch still fails to decode, it is not unsafe).
    fn next<T: sqlx::Decode<'r, Postgres>>(&mut self) -> annals::Result<T> {
        let value = self.row.try_get_unchecked(self.at).map_err(backend)?;
        self.at += 1;
        Ok(value)
    }
}

impl<'r> Columns<'r> for RowColumns<'r> {
    fn int8(&mut self) -> annals::Result<i64> {
        self.next()
    }

    fn int4(&mut self) -> annals::Result<i32> {
        self.next()
    }

    fn text_or_null(&mut self) -> annals::Result<Option<&'r str>> {
        self.next()
    }

    fn uuid(&mut self) -> annals::Result<Uuid> {
        self.next()
    }

    fn timestamptz(&mut self) -> annals::Result<OffsetDateTime> {
        self.next()
    }
}

/// Decodes a row of [`columns!`], or of [`stream_columns!`] (or [`STREAM_FOLD`]'s, when
/// folding) when `names` is [`Names::of_stream`]. A folding row leaves out the event id, the
/// metadata and the commit time, which come back nil, empty and the epoch, as
/// [`annals::StreamRead::for_folding`] documents.
pub(crate) fn decode(row: &PgRow, names: &mut Names) -> annals::Result<RecordedEvent> {
    decode_columns(&mut RowColumns { row, at: 0 }, names)
}

/// [`decode`] of any source of columns.
pub(crate) fn decode_columns<'r>(
    col: &mut impl Columns<'r>,
    names: &mut Names,
) -> annals::Result<RecordedEvent> {
    let tx = col.int8()?;
    let sequence = col.int8()?;
    let stream_id = match (&names.stream, names.known_stream) {
        (Some(id), true) => id.clone(),
        _ => {
            let name = col.text_bytes()?;
            names.stream(name)?
        }
    };
    let stream_version = col.int8()?;
    let event_id = if names.folding {
        Uuid::nil()
    } else {
        col.uuid()?
    };
    let event_type = col.text_bytes()?;
    let schema_version = col.int4()?;
    let payload = col.text()?;
    let (metadata, recorded_at) = if names.folding {
        (Metadata::default(), OffsetDateTime::UNIX_EPOCH)
    } else {
        let metadata = match col.text_or_null()? {
            None => Metadata::default(),
            Some(json) => Metadata::from_json(json)?,
        };
        (metadata, col.timestamptz()?)
    };
    Ok(RecordedEvent {
        position: position(tx, sequence),
        stream_id,
        stream_version: unsigned(stream_version)?,
        event_id,
        event_type: names.event_type(event_type)?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| internal(false, "a stored schema version is negative"))?,
        payload: Payload::from_stored(payload.to_owned()),
        metadata,
        recorded_at,
    })
}

pub(crate) fn decode_all(rows: &[PgRow]) -> annals::Result<Vec<RecordedEvent>> {
    let mut names = Names::default();
    rows.iter().map(|row| decode(row, &mut names)).collect()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The query of one batch of a stream, from version `from` (inclusive) in a direction.
pub(crate) fn stream_query(
    stream: &str,
    from: u64,
    forward: bool,
    folding: bool,
    limit: usize,
) -> Query<'_, Postgres, PgArguments> {
    let sql = match (forward, folding) {
        (true, true) => STREAM_FOLD,
        (true, false) => STREAM_FORWARD,
        (false, _) => STREAM_BACKWARD,
    };
    // Room for the three parameters (each a 4-byte length and its bytes): no buffer grows.
    let mut arguments = PgArguments::default();
    arguments.reserve(3, 3 * 4 + stream.len() + 2 * 8);
    sqlx::query_with(sql, arguments)
        .bind(stream)
        .bind(to_i64(from))
        .bind(to_limit(limit))
}

/// The query of one batch of the global log after `after`, below the horizon.
pub(crate) fn log_query(
    after: annals::LogPosition,
    limit: usize,
) -> Query<'static, Postgres, PgArguments> {
    sqlx::query(LOG_PAGE)
        .bind(to_i64(after.commit))
        .bind(to_i64(after.sequence))
        .bind(to_limit(limit))
}

/// The log position of a row, without decoding the rest.
pub(crate) fn log_key(row: &PgRow) -> annals::Result<annals::LogPosition> {
    let tx: i64 = row.try_get_unchecked(0).map_err(backend)?;
    let sequence: i64 = row.try_get_unchecked(1).map_err(backend)?;
    Ok(position(tx, sequence))
}

/// The stream version of a row of [`stream_columns!`], without decoding the rest.
pub(crate) fn version_key(row: &PgRow) -> annals::Result<u64> {
    unsigned(row.try_get_unchecked(2).map_err(backend)?)
}

/// What [`pending`] found beyond a caught-up reader.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    /// The transaction id bound: only transactions below it are waited for.
    pub(crate) goal: i64,
    /// Events after the checkpoint from transactions below `goal` exist.
    pub(crate) waiting: bool,
    /// Some of them are below the horizon now: read again at once.
    pub(crate) visible: bool,
}

/// Asks whether a reader caught up at `after` has committed events still to wait for.
pub(crate) async fn pending(
    db: &Db,
    after: annals::LogPosition,
    goal: Option<i64>,
) -> annals::Result<Pending> {
    let (goal, waiting, visible): (i64, bool, bool) = db
        .read("a look at the log's end", async |c| {
            sqlx::query_as(PENDING)
                .bind(to_i64(after.commit))
                .bind(to_i64(after.sequence))
                .bind(goal)
                .fetch_one(c)
                .await
        })
        .await?;
    Ok(Pending {
        goal,
        waiting,
        visible,
    })
}

/// The last event below the horizon, the goal, and whether committed events below the goal
/// still wait behind the horizon.
pub(crate) async fn head(
    db: &Db,
    goal: Option<i64>,
) -> annals::Result<(i64, Option<annals::LogPosition>, bool)> {
    let (goal, tx, sequence, waiting): (i64, Option<i64>, Option<i64>, bool) = db
        .read("the log's head", async |c| {
            sqlx::query_as(HEAD).bind(goal).fetch_one(c).await
        })
        .await?;
    let last = tx.zip(sequence).map(|(t, s)| position(t, s));
    Ok((goal, last, waiting))
}

/// The events whose ids are given, as stored (for idempotent retries).
pub(crate) async fn by_ids(db: &Db, ids: &[Uuid]) -> annals::Result<Vec<RecordedEvent>> {
    let rows = db
        .read("a look-up of stored events", async |c| {
            sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM events WHERE event_id = ANY ($1)"
            ))
            .bind(ids)
            .fetch_all(c)
            .await
        })
        .await?;
    decode_all(&rows)
}
