//! Long reads as `COPY (SELECT ...) TO STDOUT (FORMAT binary)`, decoded by hand.
//!
//! A replay's rows cost the client about 1.2 µs each as query rows (sqlx's row machinery and
//! column accessors, then the typed decode) and about 0.65-0.8 µs as binary `COPY` data
//! decoded here (`replay_cpu`, BENCHMARKS.md). So a long read takes its batches this way: a log
//! read after two full pages (as ranges of transaction ids, `log/ranges.rs`), a stream read
//! after its first page. Short reads stay one query, one round trip.
//!
//! `COPY` takes no bound parameters, and this store never builds SQL text from values. The
//! statements here are constant: their parameters are set first, bound, with `set_config` on
//! the same connection (session settings `annals.read_1`, `annals.read_2`,
//! `annals.read_limit` and `annals.read_below`, overwritten by the next such read), and read
//! back in sub-selects
//! (`(SELECT current_setting(...))`), which PostgreSQL runs once per statement as initplans
//! and then uses as index conditions.
//!
//! sqlx does not track a `COPY` left unfinished: a connection returned to the pool in the
//! middle of one would hand its leftover rows to the next query. [`Copying`] closes the
//! connection instead unless the `COPY` ran to its end.

use annals::{RecordedEvent, StreamId};
use futures::{FutureExt, TryStreamExt};
use sqlx::{PgConnection, Postgres, pool::PoolConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    bounded::Db,
    error::{backend, internal},
    pages::{PageSender, Rows, Sent},
    read::{Columns, Names, decode_columns},
};

/// Sets the parameters of the statements below.
const SETTINGS: &str = "SELECT set_config('annals.read_1', $1, false), \
     set_config('annals.read_2', $2, false), set_config('annals.read_limit', $3, false), \
     set_config('annals.read_below', $4, false)";

macro_rules! copy {
    ($columns:expr, $($rest:expr),+) => {
        concat!(
            "COPY (SELECT ",
            $columns,
            " FROM events ",
            $($rest,)+
            ") TO STDOUT (FORMAT binary)"
        )
    };
}

// Each parameter is read in a sub-select, which PostgreSQL runs once per statement (an
// initplan) whatever the plan. `current_setting` itself is only stable: in a filter, rather
// than an index condition, it ran once per row, and a load of 10,000 events cost PostgreSQL
// twice its time (a sequential scan calling it per row, then a sort).

/// A range of the log: every event after the keyset whose transaction id is below
/// `annals.read_below`. The caller chose that bound at or below a horizon it read earlier, so
/// every transaction in the range has ended and the range is the same whenever it is read:
/// consecutive ranges can be read at once, on two connections. Its limit is set to the
/// largest `bigint`, so it ends only at the bound; a limit PostgreSQL cannot know when it
/// plans still makes it choose the ordered index scan (without one it chose a parallel bitmap
/// scan and a sort of each range).
const LOG_RANGE: &str = copy!(
    crate::read::columns!(),
    "WHERE (tx, sequence) > ((SELECT current_setting('annals.read_1')::bigint), \
     (SELECT current_setting('annals.read_2')::bigint)) \
     AND tx < (SELECT current_setting('annals.read_below')::bigint) \
     ORDER BY tx, sequence LIMIT (SELECT current_setting('annals.read_limit')::bigint)"
);

macro_rules! stream_copy {
    ($columns:expr, $version:literal, $order:literal) => {
        copy!(
            $columns,
            "WHERE stream_id = (SELECT current_setting('annals.read_1')) AND stream_version ",
            $version,
            " (SELECT current_setting('annals.read_2')::bigint) ORDER BY stream_version",
            $order,
            " LIMIT (SELECT current_setting('annals.read_limit')::bigint)"
        )
    };
}

const STREAM_FORWARD: &str = stream_copy!(crate::read::stream_columns!(), ">=", "");
const STREAM_FOLD: &str = stream_copy!(crate::read::fold_columns!(), ">=", "");
const STREAM_BACKWARD: &str = stream_copy!(crate::read::stream_columns!(), "<=", " DESC");

/// The number of columns a column list names: one more than its commas.
const fn column_count(columns: &str) -> usize {
    let bytes = columns.as_bytes();
    let (mut i, mut count) = (0, 1);
    while i < bytes.len() {
        if bytes[i] == b',' {
            count += 1;
        }
        i += 1;
    }
    count
}

/// One batch of a long read.
#[derive(Debug, Clone)]
pub(crate) enum Batch {
    /// The global log after `(commit, sequence)` and below transaction id `below`, which
    /// must be at or below a horizon read before: all of it, whatever the limit.
    LogRange {
        commit: u64,
        sequence: u64,
        below: u64,
    },
    /// A stream from version `from` (inclusive), as `read::stream_query`.
    Stream {
        stream: StreamId,
        from: u64,
        forward: bool,
        folding: bool,
    },
}

impl Batch {
    /// The statement and the number of columns of its rows.
    fn statement(&self) -> (&'static str, usize) {
        match self {
            Self::LogRange { .. } => (LOG_RANGE, column_count(crate::read::columns!())),
            Self::Stream { forward: false, .. } => (
                STREAM_BACKWARD,
                column_count(crate::read::stream_columns!()),
            ),
            Self::Stream { folding: true, .. } => {
                (STREAM_FOLD, column_count(crate::read::fold_columns!()))
            }
            Self::Stream { .. } => (STREAM_FORWARD, column_count(crate::read::stream_columns!())),
        }
    }

    /// The four settings: the keyset, the limit, and a range's upper bound.
    fn parameters(&self, limit: usize) -> [String; 4] {
        let limit = limit.to_string();
        match self {
            Self::LogRange {
                commit,
                sequence,
                below,
            } => [
                commit.to_string(),
                sequence.to_string(),
                i64::MAX.to_string(),
                below.to_string(),
            ],
            Self::Stream { stream, from, .. } => [
                stream.as_str().to_owned(),
                from.to_string(),
                limit,
                "0".into(),
            ],
        }
    }
}

/// A pooled connection in the middle of a `COPY`: closed, not pooled, when dropped before
/// [`Copying::finish`].
struct Copying(Option<PoolConnection<Postgres>>);

impl Copying {
    fn conn(&mut self) -> annals::Result<&mut PgConnection> {
        self.0
            .as_deref_mut()
            .ok_or_else(|| internal(false, "a COPY connection was used after its end"))
    }

    /// The `COPY` ran to its end (its `ReadyForQuery` read): the connection is idle again,
    /// kept for the next statement as a query read to its end is ([`Db::keep`]).
    fn finish(mut self, db: &Db) {
        if let Some(conn) = self.0.take() {
            db.keep(conn);
        }
    }
}

impl Drop for Copying {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Unread rows may follow: this connection must not serve another query.
            drop(conn.detach());
        }
    }
}

/// Runs one batch of at most `limit` rows as a binary `COPY` and sends its events to the
/// decoder in pages of `page_size`, keyed by `key`.
pub(crate) async fn send_batch<K>(
    db: &Db,
    batch: Batch,
    limit: usize,
    names: &mut Names,
    page_size: usize,
    key: impl Fn(&RecordedEvent) -> K,
    tx: &PageSender,
) -> Sent<K> {
    let (mut count, mut last) = (0usize, None);
    // Sends a page; false once the reader has gone.
    let mut send = async |page: Vec<RecordedEvent>| {
        count += page.len();
        last = page.last().map(&key);
        tx.send(Ok(Rows::Decoded(page))).await.is_ok()
    };
    let copied: annals::Result<bool> = async {
        // Out of time, the connection is dropped mid-statement: closed (see `Copying`).
        let bound = |error| annals::Error::backend(true, error);
        let mut conn = Copying(Some(db.acquire().await.map_err(backend)?));
        let (statement, columns) = batch.statement();
        let [first, second, third, fourth] = batch.parameters(limit);
        let settings = sqlx::query(SETTINGS)
            .bind(first)
            .bind(second)
            .bind(third)
            .bind(fourth)
            .execute(conn.conn()?);
        db.within("a read", settings)
            .await
            .map_err(bound)?
            .map_err(backend)?;
        let mut parser = Parser::new(columns);
        let mut last_time = None;
        // Each page sent is replaced by one of the same capacity: an emptied `Vec` grew again
        // from nothing, page after page, copying its events at each doubling.
        let capacity = page_size.min(4096);
        let mut page = Vec::with_capacity(capacity);
        {
            let copy = conn.conn()?.copy_out_raw(statement);
            let mut data = db
                .within("a read", copy)
                .await
                .map_err(bound)?
                .map_err(backend)?;
            loop {
                // PostgreSQL sends a binary `COPY` a row per message, which mostly wait in the
                // socket's buffer already: only a wait for the server is bounded (a bound per
                // row read the clock and armed a timer for each, 5 % of a replay's client time).
                let next = match data.try_next().now_or_never() {
                    Some(next) => next,
                    None => db.within("a read", data.try_next()).await.map_err(bound)?,
                };
                let Some(chunk) = next.map_err(backend)? else {
                    break;
                };
                parser.feed(&chunk, |row| {
                    page.push(decode_columns(
                        &mut CopyColumns::new(row, &mut last_time),
                        names,
                    )?);
                    Ok(())
                })?;
                if page.len() >= page_size
                    && !send(std::mem::replace(&mut page, Vec::with_capacity(capacity))).await
                {
                    return Ok(false);
                }
            }
        }
        parser.end()?;
        conn.finish(db);
        Ok(page.is_empty() || send(page).await)
    }
    .await;
    match copied {
        Ok(true) => Sent::Done { rows: count, last },
        Ok(false) => Sent::Stopped,
        Err(error) => {
            let _ = tx.send(Err(error)).await;
            Sent::Stopped
        }
    }
}

/// The signature, flags and extension length that open binary `COPY` data.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

fn malformed() -> annals::Error {
    internal(false, "malformed binary COPY data from PostgreSQL")
}

/// Splits binary `COPY` data, as it arrives in chunks of any size, into rows.
struct Parser {
    columns: usize,
    /// Bytes of an unfinished header or row, waiting for the next chunk.
    carry: Vec<u8>,
    header: bool,
    ended: bool,
}

impl Parser {
    fn new(columns: usize) -> Self {
        Self {
            columns,
            carry: Vec::new(),
            header: false,
            ended: false,
        }
    }

    /// Calls `row` with the fields of each whole row in `chunk` (after what was carried).
    fn feed(
        &mut self,
        chunk: &[u8],
        mut row: impl FnMut(&[u8]) -> annals::Result<()>,
    ) -> annals::Result<()> {
        if self.carry.is_empty() {
            let used = self.rows(chunk, &mut row)?;
            self.carry.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.carry);
            data.extend_from_slice(chunk);
            let used = self.rows(&data, &mut row)?;
            data.drain(..used);
            self.carry = data;
        }
        Ok(())
    }

    /// Parses whole rows from the front of `data`; returns how many bytes they took.
    fn rows(
        &mut self,
        data: &[u8],
        row: &mut impl FnMut(&[u8]) -> annals::Result<()>,
    ) -> annals::Result<usize> {
        let mut at = 0;
        if !self.header {
            let Some(len) = header_len(data)? else {
                return Ok(0);
            };
            self.header = true;
            at = len;
        }
        while let Some(count) = data.get(at..at + 2) {
            if self.ended {
                return Err(malformed());
            }
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.ended = true;
                at += 2;
                continue;
            }
            if usize::try_from(count).ok() != Some(self.columns) {
                return Err(malformed());
            }
            let Some(len) = row_len(&data[at + 2..], self.columns)? else {
                break;
            };
            row(&data[at + 2..at + 2 + len])?;
            at += 2 + len;
        }
        Ok(at)
    }

    /// The data ended: it must have ended with its trailer.
    fn end(&self) -> annals::Result<()> {
        if self.ended && self.carry.is_empty() {
            Ok(())
        } else {
            Err(malformed())
        }
    }
}

/// The length of the header at the front of `data`, `None` if it is not all there yet.
fn header_len(data: &[u8]) -> annals::Result<Option<usize>> {
    let fixed = SIGNATURE.len() + 8;
    if data.len() < fixed {
        return Ok(None);
    }
    if &data[..SIGNATURE.len()] != SIGNATURE {
        return Err(malformed());
    }
    let extension = u32::from_be_bytes(
        data[SIGNATURE.len() + 4..fixed]
            .try_into()
            .map_err(|_| malformed())?,
    );
    let len = fixed + usize::try_from(extension).map_err(|_| malformed())?;
    Ok((data.len() >= len).then_some(len))
}

/// The length of the fields of a row of `columns` at the front of `data`, `None` if the row
/// is not all there yet.
fn row_len(data: &[u8], columns: usize) -> annals::Result<Option<usize>> {
    let mut at = 0usize;
    for _ in 0..columns {
        let Some(len) = data.get(at..at + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len >= 0 {
            at += usize::try_from(len).map_err(|_| malformed())?;
        } else if len != -1 {
            return Err(malformed());
        }
    }
    Ok((data.len() >= at).then_some(at))
}

/// The fields of one whole row of binary `COPY` data, read in order.
struct CopyColumns<'r, 't> {
    data: &'r [u8],
    /// The last commit time decoded, by its raw value: the events of one transaction share
    /// it, and turning microseconds into a date costs more than the rest of a row's numbers.
    last_time: &'t mut Option<(i64, OffsetDateTime)>,
}

impl<'r, 't> CopyColumns<'r, 't> {
    fn new(data: &'r [u8], last_time: &'t mut Option<(i64, OffsetDateTime)>) -> Self {
        Self { data, last_time }
    }

    /// The next field's bytes, `None` for NULL. [`row_len`] has checked the lengths.
    fn field(&mut self) -> annals::Result<Option<&'r [u8]>> {
        let (len, rest) = self.data.split_first_chunk::<4>().ok_or_else(malformed)?;
        let len = i32::from_be_bytes(*len);
        let Ok(len) = usize::try_from(len) else {
            self.data = rest;
            return Ok(None);
        };
        let (value, rest) = rest.split_at_checked(len).ok_or_else(malformed)?;
        self.data = rest;
        Ok(Some(value))
    }

    fn value<const N: usize>(&mut self) -> annals::Result<[u8; N]> {
        self.field()?
            .and_then(|v| v.try_into().ok())
            .ok_or_else(malformed)
    }
}

/// PostgreSQL's epoch, 2000-01-01 00:00 UTC, which binary `timestamptz` counts from.
const POSTGRES_EPOCH: OffsetDateTime = time::macros::datetime!(2000-01-01 00:00 UTC);

impl<'r> Columns<'r> for CopyColumns<'r, '_> {
    fn int8(&mut self) -> annals::Result<i64> {
        Ok(i64::from_be_bytes(self.value()?))
    }

    fn int4(&mut self) -> annals::Result<i32> {
        Ok(i32::from_be_bytes(self.value()?))
    }

    fn text_or_null(&mut self) -> annals::Result<Option<&'r str>> {
        self.field()?.map(crate::read::utf8).transpose()
    }

    fn text_bytes(&mut self) -> annals::Result<&'r [u8]> {
        self.field()?.ok_or_else(crate::read::null_text)
    }

    fn uuid(&mut self) -> annals::Result<Uuid> {
        Ok(Uuid::from_bytes(self.value()?))
    }

    fn timestamptz(&mut self) -> annals::Result<OffsetDateTime> {
        let micros = i64::from_be_bytes(self.value()?);
        if let Some((last, time)) = *self.last_time
            && last == micros
        {
            return Ok(time);
        }
        let time = POSTGRES_EPOCH
            .checked_add(time::Duration::microseconds(micros))
            .ok_or_else(|| internal(false, "a stored time is out of range"))?;
        *self.last_time = Some((micros, time));
        Ok(time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_counts_follow_the_column_lists() {
        let counts = [
            Batch::LogRange {
                commit: 0,
                sequence: 0,
                below: 1,
            },
            Batch::Stream {
                stream: StreamId::new("s").unwrap(),
                from: 1,
                forward: false,
                folding: true,
            },
            Batch::Stream {
                stream: StreamId::new("s").unwrap(),
                from: 1,
                forward: true,
                folding: true,
            },
            Batch::Stream {
                stream: StreamId::new("s").unwrap(),
                from: 1,
                forward: true,
                folding: false,
            },
        ]
        .map(|b| b.statement().1);
        assert_eq!(counts, [10, 9, 6, 9]);
    }

    /// Every parameter is read once per statement, in a sub-select: a bare `current_setting`
    /// in a filter runs once per row.
    #[test]
    fn statements_read_each_setting_once() {
        let settings = [
            (LOG_RANGE, 4),
            (STREAM_FORWARD, 3),
            (STREAM_FOLD, 3),
            (STREAM_BACKWARD, 3),
        ];
        for (statement, n) in settings {
            let bare = statement.matches("current_setting(").count();
            let once = statement.matches("(SELECT current_setting(").count();
            assert_eq!((bare, once), (n, n), "{statement}");
        }
    }

    fn header() -> Vec<u8> {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&[0; 8]);
        data
    }

    fn row(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut data = i16::try_from(fields.len()).unwrap().to_be_bytes().to_vec();
        for field in fields {
            match field {
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    data.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
                    data.extend_from_slice(v);
                }
            }
        }
        data
    }

    fn parse(chunks: &[&[u8]], columns: usize) -> annals::Result<Vec<Vec<u8>>> {
        let mut parser = Parser::new(columns);
        let mut rows = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, |r| {
                rows.push(r.to_vec());
                Ok(())
            })?;
        }
        parser.end()?;
        Ok(rows)
    }

    fn data() -> (Vec<u8>, Vec<Vec<u8>>) {
        let rows = [
            row(&[Some(b"ab"), None]),
            row(&[Some(b""), Some(&7i64.to_be_bytes())]),
        ];
        let mut data = header();
        for r in &rows {
            data.extend_from_slice(r);
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        (data, rows.iter().map(|r| r[2..].to_vec()).collect())
    }

    /// A row of [`crate::read::columns!`] as binary `COPY` data, without its field count.
    fn log_row(stream: &[u8], event_type: &[u8], micros: i64) -> Vec<u8> {
        let row = row(&[
            Some(&5i64.to_be_bytes()),
            Some(&1i64.to_be_bytes()),
            Some(stream),
            Some(&1i64.to_be_bytes()),
            Some(Uuid::from_u128(1).as_bytes()),
            Some(event_type),
            Some(&1i32.to_be_bytes()),
            Some(b"{}"),
            None,
            Some(&micros.to_be_bytes()),
        ]);
        row[2..].to_vec()
    }

    /// Names and commit times are remembered from row to row: a repeat is recognised by its
    /// bytes, and anything else is decoded afresh and checked.
    #[test]
    fn remembered_names_and_times_give_each_row_its_own() {
        let (mut names, mut last_time) = (Names::default(), None);
        let mut decode = |stream: &[u8], event_type: &[u8], micros: i64| {
            let row = log_row(stream, event_type, micros);
            decode_columns(&mut CopyColumns::new(&row, &mut last_time), &mut names).map(|e| {
                (
                    e.stream_id.to_string(),
                    e.event_type.to_string(),
                    e.recorded_at,
                )
            })
        };
        let day = |d: i64| POSTGRES_EPOCH + time::Duration::days(d);
        let rows = [
            (&b"a"[..], &b"T"[..], 0),
            (b"a", b"T", 0),
            (b"b", b"U", 86_400_000_000),
            (b"a", b"T", 0),
            (b"ab", b"TU", 2 * 86_400_000_000),
        ];
        for (stream, event_type, micros) in rows {
            let (s, t, at) = decode(stream, event_type, micros).unwrap();
            assert_eq!(s.as_bytes(), stream);
            assert_eq!(t.as_bytes(), event_type);
            assert_eq!(at, day(micros / 86_400_000_000));
        }
        // Not UTF-8, after a valid name: an error, never the name before.
        assert!(decode(b"a\xff", b"T", 0).is_err());
        assert!(decode(b"a", b"T\xff", 0).is_err());
        assert!(decode(b"a", b"T", 0).is_ok());
    }

    #[test]
    fn rows_split_anywhere_between_chunks_parse_alike() {
        let (data, want) = data();
        assert_eq!(parse(&[&data], 2).unwrap(), want);
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            assert_eq!(parse(&[a, b], 2).unwrap(), want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(parse(&bytes, 2).unwrap(), want);
    }

    #[test]
    fn malformed_data_is_an_error_not_a_panic() {
        let (data, _) = data();
        // Truncated anywhere: no trailer.
        for cut in 0..data.len() {
            assert!(parse(&[&data[..cut]], 2).is_err(), "cut at {cut}");
        }
        // A wrong signature, a wrong column count, a bad length, data after the trailer.
        let mut bad = data.clone();
        bad[0] = b'X';
        assert!(parse(&[&bad], 2).is_err());
        assert!(parse(&[&data], 3).is_err());
        let mut bad = header();
        bad.extend_from_slice(&1i16.to_be_bytes());
        bad.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(parse(&[&bad], 1).is_err());
        let mut bad = data.clone();
        bad.extend_from_slice(&row(&[Some(b"x"), None]));
        assert!(parse(&[&bad], 2).is_err());
    }

    #[test]
    fn columns_decode_binary_values() {
        let row = row(&[
            Some(&(-3i64).to_be_bytes()),
            Some(&9i32.to_be_bytes()),
            Some("é".as_bytes()),
            None,
            Some(Uuid::from_u128(5).as_bytes()),
            Some(&86_400_000_000i64.to_be_bytes()),
            Some(&[0xff]),
            Some(&[1, 2]),
        ]);
        let mut last_time = None;
        let mut col = CopyColumns::new(&row[2..], &mut last_time);
        assert_eq!(col.int8().unwrap(), -3);
        assert_eq!(col.int4().unwrap(), 9);
        assert_eq!(col.text().unwrap(), "é");
        assert!(col.text().is_err(), "NULL where text is required");
        assert_eq!(col.uuid().unwrap(), Uuid::from_u128(5));
        assert_eq!(
            col.timestamptz().unwrap(),
            time::macros::datetime!(2000-01-02 00:00 UTC)
        );
        assert!(col.text().is_err(), "not UTF-8");
        assert!(col.int4().is_err(), "two bytes are no integer");
        assert!(col.int8().is_err(), "past the end");
    }
}
