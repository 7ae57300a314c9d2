//! The reading pipeline, three stages on their own tasks: a producer fetches keyset pages of
//! raw rows, starting the next query as soon as a page has arrived; a decoder turns rows into
//! events; the caller's stream hands them out. The database works on page N+2 while the
//! decoder handles page N+1 and the caller consumes page N (decoding typed events, say), and
//! memory holds a handful of pages however long the read.

use annals::RecordedEvent;
use futures::{
    FutureExt, StreamExt,
    stream::{self, BoxStream},
};
use sqlx::{
    Postgres,
    pool::PoolConnection,
    postgres::{PgArguments, PgRow},
    query::Query,
};
use tokio::sync::mpsc;

use crate::{
    bounded::{Db, close},
    error::backend,
    read::{Names, decode},
};

/// How many rows one query streams: several pages, so the per-query cost (a round trip,
/// planning, an index descent) is paid once per batch, while memory still holds pages only.
pub(crate) fn batch_rows(page_size: usize) -> usize {
    page_size
        .saturating_mul(16)
        .clamp(page_size, 50_000.max(page_size))
}

/// A connection for one query of a read, or `None` after sending the error to the reader.
///
/// A query on an acquired connection streams its rows through one layer of sqlx's row
/// stream fewer than a query on the pool, which wraps the connection's stream in one of its
/// own: about 5 % of a replay's time.
pub(crate) async fn connection(db: &Db, tx: &PageSender) -> Option<PoolConnection<Postgres>> {
    match db.acquire().await {
        Ok(conn) => Some(conn),
        Err(error) => {
            let _ = tx.send(Err(backend(error))).await;
            None
        }
    }
}

/// How [`send_rows`] ended.
pub(crate) enum Sent<K> {
    /// Every row was sent: how many, and the key of the last one.
    Done { rows: usize, last: Option<K> },
    /// The reader has gone or an error was sent: stop producing.
    Stopped,
}

/// Runs `query` on `conn` and streams its rows to the decoder in pages of `page_size` rows.
/// The query's rows are read as the pages are taken, so a slow reader holds the query back
/// (TCP back-pressure) instead of piling up rows. Each wait for the server's next rows is
/// bounded by the I/O timeout; the connection is then closed. Read to the end, it is kept for
/// the next statement ([`Db::keep`]); otherwise it goes back to the pool.
pub(crate) async fn send_rows<K>(
    db: &Db,
    mut conn: PoolConnection<Postgres>,
    query: Query<'_, Postgres, PgArguments>,
    page_size: usize,
    key: impl Fn(&PgRow) -> annals::Result<K>,
    tx: &PageSender,
) -> Sent<K> {
    let mut timed_out = false;
    let sent = send_query_rows(
        db,
        query.fetch(&mut *conn),
        page_size,
        key,
        tx,
        &mut timed_out,
    )
    .await;
    match (&sent, timed_out) {
        (_, true) => close(conn),
        // Every row read: the connection is idle again, ready for the next statement.
        (Sent::Done { .. }, false) => db.keep(conn),
        // Stopped mid-read or failed: the pool tests it.
        (Sent::Stopped, false) => drop(conn),
    }
    sent
}

async fn send_query_rows<K>(
    db: &Db,
    mut rows: BoxStream<'_, Result<PgRow, sqlx::Error>>,
    page_size: usize,
    key: impl Fn(&PgRow) -> annals::Result<K>,
    tx: &PageSender,
    timed_out: &mut bool,
) -> Sent<K> {
    // A page sent is replaced by one of the same capacity, not grown again from nothing.
    let capacity = page_size.min(4096);
    let mut page = Vec::with_capacity(capacity);
    let mut count = 0usize;
    let mut last = None;
    loop {
        // Rows already in the socket's buffer need no bound: only a wait for the server is
        // bounded (see `copy.rs`).
        let row = match rows.next().now_or_never() {
            Some(row) => Ok(row),
            None => db.within("a read", rows.next()).await,
        };
        let row = match row {
            Ok(row) => row,
            Err(error) => {
                *timed_out = true;
                let _ = tx.send(Err(annals::Error::backend(true, error))).await;
                return Sent::Stopped;
            }
        };
        let end = row.is_none();
        match row {
            Some(Ok(row)) => {
                count += 1;
                page.push(row);
            }
            Some(Err(error)) => {
                let _ = tx.send(Err(backend(error))).await;
                return Sent::Stopped;
            }
            None => {}
        }
        if page.len() >= page_size || (end && !page.is_empty()) {
            match page.last().map(&key) {
                Some(Ok(k)) => last = Some(k),
                Some(Err(error)) => {
                    let _ = tx.send(Err(error)).await;
                    return Sent::Stopped;
                }
                None => {}
            }
            if tx
                .send(Ok(Rows::Query(std::mem::replace(
                    &mut page,
                    Vec::with_capacity(capacity),
                ))))
                .await
                .is_err()
            {
                return Sent::Stopped;
            }
        }
        if end {
            return Sent::Done { rows: count, last };
        }
    }
}

/// A page of a read as a producer sends it.
pub(crate) enum Rows {
    /// Rows of a query, for the decoder to decode.
    Query(Vec<PgRow>),
    /// Events the producer decoded itself (from binary `COPY` data, [`crate::copy`]).
    Decoded(Vec<RecordedEvent>),
}

/// What a producer sends: a page, or the error that ends the read.
pub(crate) type Page = annals::Result<Rows>;

/// The sending half a producer gets.
pub(crate) type PageSender = mpsc::Sender<Page>;

/// A stream of at most `limit` events decoded (with `names`) from the pages `start` produces. `start` runs
/// on first poll and must spawn the producer; the producer stops when the stream is dropped
/// (its sends fail, and [`mpsc::Sender::closed`] wakes it while it waits).
pub(crate) fn events(
    limit: u64,
    names: Names,
    start: impl FnOnce(PageSender) + Send + 'static,
) -> BoxStream<'static, annals::Result<RecordedEvent>> {
    if limit == 0 {
        return stream::empty().boxed();
    }
    PageStream {
        start: Some(Box::new(move || {
            let (rows_tx, rows_rx) = mpsc::channel(1);
            let (events_tx, events_rx) = mpsc::channel(1);
            start(rows_tx);
            tokio::spawn(decoder(rows_rx, events_tx, limit, names));
            events_rx
        })),
        pages: None,
        page: Vec::new().into_iter(),
    }
    .boxed()
}

/// The decoder's pages of events, or the error that ends them.
type EventPages = mpsc::Receiver<annals::Result<Vec<RecordedEvent>>>;

/// Hands out the events of the decoder's pages one by one.
///
/// A hand-written stream rather than a chain of combinators (`once`, `flatten`, `flat_map`
/// over an iterator): each layer of such a chain moved every event (256 bytes) once more on
/// its way out, about a tenth of a replay's client time spent in `memmove`.
struct PageStream {
    /// Starts the producer and the decoder on first poll.
    start: Option<Box<dyn FnOnce() -> EventPages + Send>>,
    pages: Option<EventPages>,
    /// What is left of the page being handed out.
    page: std::vec::IntoIter<RecordedEvent>,
}

impl futures::Stream for PageStream {
    type Item = annals::Result<RecordedEvent>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            if let Some(event) = self.page.next() {
                return Poll::Ready(Some(Ok(event)));
            }
            let this = &mut *self;
            let pages = match (&mut this.pages, this.start.take()) {
                (Some(pages), _) => pages,
                (None, Some(start)) => this.pages.insert(start()),
                // Ended: the decoder's channel closed.
                (None, None) => return Poll::Ready(None),
            };
            match pages.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(page))) => this.page = page.into_iter(),
                // The decoder ends after an error: what follows is the end.
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => {
                    this.pages = None;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// Decodes pages of rows into pages of events, at most `limit` events in all.
async fn decoder(
    mut rows: mpsc::Receiver<Page>,
    events: mpsc::Sender<annals::Result<Vec<RecordedEvent>>>,
    mut limit: u64,
    mut names: Names,
) {
    while let Some(page) = rows.recv().await {
        let decoded = page.and_then(|page| match page {
            Rows::Query(rows) => {
                let n = usize::try_from(limit).map_or(rows.len(), |l| l.min(rows.len()));
                rows.iter()
                    .take(n)
                    .map(|row| decode(row, &mut names))
                    .collect::<annals::Result<Vec<_>>>()
            }
            Rows::Decoded(mut events) => {
                events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                Ok(events)
            }
        });
        let stop = match &decoded {
            Ok(page) => {
                limit -= page.len() as u64;
                limit == 0
            }
            Err(_) => true,
        };
        if events.send(decoded).await.is_err() || stop {
            return;
        }
    }
}
