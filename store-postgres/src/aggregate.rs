//! `read_aggregate`: an aggregate's snapshot and the first page of its events in one query,
//! on the caller's task.
//!
//! A command that loads its aggregate used to ask twice (the snapshot, then the stream read
//! through the reading pipeline's producer and decoder tasks): two round trips, two pool
//! checkouts, two task hand-offs. Here one statement answers both, its rows are decoded
//! where they arrive, and only a stream longer than a page goes on through the pipeline
//! ([`crate::stream`]) from the version after the page.
//!
//! The statement is the stream read's own page query when no snapshot is asked for.
//! Otherwise a `UNION ALL` of the snapshot row (found by stream and schema version; its event
//! columns NULL, so `tx IS NULL` marks it) and the page of events after it: the events'
//! first version is the later of the one asked for and the one after the snapshot, computed
//! by the server from the same snapshot row. The snapshot row is told apart by its NULL
//! `tx`, wherever it comes, and the events keep their order.

use annals::{AggregateRead, Direction, Payload, Snapshot, StreamId, StreamRead};
use futures::{FutureExt, StreamExt, stream};
use sqlx::{
    Row,
    postgres::{PgConnection, PgRow},
};

use crate::{
    bounded::Db,
    direct::Direct,
    error::{backend, internal},
    loads::{Load, Loads},
    read::{Names, decode, fold_columns, stream_columns, stream_query},
};

/// The snapshot (`$4`: its schema version) and the first page of a stream's events after it
/// (`$2`: the first version asked for, `$3`: the page size), for folding: the folding
/// columns, the snapshot's `taken_at` last.
const SNAPSHOT_FOLD: &str = concat!(
    "WITH s AS (SELECT stream_version, schema_version, payload, taken_at FROM snapshots \
       WHERE stream_id = $1 AND schema_version = $4) \
     SELECT NULL::bigint, NULL::bigint, stream_version, NULL::text, schema_version, payload, \
       taken_at FROM s \
     UNION ALL \
     (SELECT ",
    fold_columns!(),
    ", NULL::timestamptz FROM events WHERE stream_id = $1 \
       AND stream_version >= greatest($2::bigint, (SELECT stream_version + 1 FROM s)) \
       ORDER BY stream_version LIMIT $3)"
);

/// The same with every column of a stream read; the snapshot's `taken_at` is in
/// `recorded_at`'s place.
const SNAPSHOT_FULL: &str = concat!(
    "WITH s AS (SELECT stream_version, schema_version, payload, taken_at FROM snapshots \
       WHERE stream_id = $1 AND schema_version = $4) \
     SELECT NULL::bigint, NULL::bigint, stream_version, NULL::uuid, NULL::text, \
       schema_version, payload, NULL::text, taken_at FROM s \
     UNION ALL \
     (SELECT ",
    stream_columns!(),
    " FROM events WHERE stream_id = $1 \
       AND stream_version >= greatest($2::bigint, (SELECT stream_version + 1 FROM s)) \
       ORDER BY stream_version LIMIT $3)"
);

/// What a load is called in errors.
const OPERATION: &str = "reading an aggregate";

/// Where the snapshot row keeps its columns: version, schema version, payload, `taken_at`.
const SNAPSHOT_COLUMNS_FOLD: [usize; 4] = [2, 4, 5, 6];
const SNAPSHOT_COLUMNS_FULL: [usize; 4] = [2, 5, 6, 8];

/// Reads `stream`'s snapshot of schema version `snapshot_version` (if asked for) and its
/// events after it, as [`annals::EventStore::read_aggregate`] documents.
pub(crate) async fn read(
    db: &Db,
    loads: &Loads,
    direct: Option<&Direct>,
    stream: StreamId,
    snapshot_version: Option<u32>,
    read: StreamRead,
) -> annals::Result<AggregateRead<'static>> {
    if read.direction == Direction::Backward {
        // No use of its own: the snapshot alone, and the read as asked for.
        let snapshot = match snapshot_version {
            // Out of line, as the statement below: a command's load never reads backward.
            Some(version) => load_snapshot(db, &stream, version).boxed().await?,
            None => None,
        };
        let events = crate::stream::read_stream(db.clone(), stream, read);
        return Ok(AggregateRead { snapshot, events });
    }
    let since = db.seen.epoch();
    let limit = read.limit.unwrap_or(u64::MAX);
    let page_size = read.page_size.max(1);
    let want = usize::try_from(limit).map_or(page_size, |l| l.min(page_size));
    let from = read.from.max(1);
    let folding = read.for_folding;
    let id = stream.as_str();
    let statement = async |c: &mut PgConnection| match snapshot_version {
        None => {
            stream_query(id, from, true, folding, want)
                .fetch_all(c)
                .await
        }
        Some(version) => {
            let sql = if folding {
                SNAPSHOT_FOLD
            } else {
                SNAPSHOT_FULL
            };
            sqlx::query(sql)
                .bind(id)
                .bind(i64::try_from(from).unwrap_or(i64::MAX))
                .bind(i64::try_from(want).unwrap_or(i64::MAX))
                .bind(i32::try_from(version).unwrap_or(i32::MAX))
                .fetch_all(c)
                .await
        }
    };
    let rows: Vec<PgRow> = if snapshot_version.is_none() && folding {
        // A plain load (what a command reads), batched with concurrent ones.
        let load = Load {
            stream: stream.clone(),
            from,
            want,
        };
        loads.read(db, direct, load).await?
    } else {
        // Out of line: the future of a load with a snapshot (or of every column) is not part
        // of the usual load's, which stays smaller to allocate and has less code to run.
        db.read(OPERATION, statement).boxed().await?
    };
    let mut names = Names::of_stream(stream.clone(), folding);
    let mut snapshot = None;
    let mut page = Vec::with_capacity(rows.len());
    for row in &rows {
        if snapshot_version.is_some() && is_snapshot(row)? {
            let columns = if folding {
                SNAPSHOT_COLUMNS_FOLD
            } else {
                SNAPSHOT_COLUMNS_FULL
            };
            snapshot = Some(snapshot_of(row, &stream, columns)?);
        } else {
            page.push(decode(row, &mut names)?);
        }
    }
    drop(rows);
    let last = page.last().map(|e| e.stream_version);
    if let Some(last) = last {
        db.seen.record(stream.as_str(), last, since);
    }
    let read_so_far = page.len() as u64;
    let first = stream::iter(page.into_iter().map(Ok));
    let events = match last {
        // A full page, and more wanted: the rest through the reading pipeline.
        Some(last) if read_so_far >= want as u64 && read_so_far < limit => {
            let rest = StreamRead {
                from: last.saturating_add(1),
                limit: read.limit.map(|l| l - read_so_far),
                ..read
            };
            first
                .chain(crate::stream::read_stream(db.clone(), stream, rest))
                .boxed()
        }
        _ => first.boxed(),
    };
    Ok(AggregateRead { snapshot, events })
}

/// Whether a row of the snapshot statements is the snapshot's (its `tx` is NULL).
fn is_snapshot(row: &PgRow) -> annals::Result<bool> {
    let tx: Option<i64> = row.try_get_unchecked(0).map_err(backend)?;
    Ok(tx.is_none())
}

fn snapshot_of(
    row: &PgRow,
    stream: &StreamId,
    [v, sv, p, t]: [usize; 4],
) -> annals::Result<Snapshot> {
    let version: i64 = row.try_get_unchecked(v).map_err(backend)?;
    let schema: i32 = row.try_get_unchecked(sv).map_err(backend)?;
    let payload: String = row.try_get_unchecked(p).map_err(backend)?;
    let taken_at: time::OffsetDateTime = row.try_get_unchecked(t).map_err(backend)?;
    Ok(Snapshot {
        stream_id: stream.clone(),
        stream_version: u64::try_from(version)
            .map_err(|_| internal(false, "a stored snapshot version is negative"))?,
        schema_version: u32::try_from(schema)
            .map_err(|_| internal(false, "a stored snapshot schema version is negative"))?,
        payload: Payload::from_stored(payload),
        taken_at,
    })
}

/// The stream's snapshot if it has schema version `version`.
async fn load_snapshot(
    db: &Db,
    stream: &StreamId,
    version: u32,
) -> annals::Result<Option<Snapshot>> {
    let id = stream.as_str();
    let row: Option<PgRow> = db
        .read("loading a snapshot", async |c| {
            sqlx::query(
                "SELECT stream_version, schema_version, payload, taken_at \
                 FROM snapshots WHERE stream_id = $1 AND schema_version = $2",
            )
            .bind(id)
            .bind(i32::try_from(version).unwrap_or(i32::MAX))
            .fetch_optional(c)
            .await
        })
        .await?;
    row.map(|row| snapshot_of(&row, stream, [0, 1, 2, 3]))
        .transpose()
}
