//! `read_stream`: keyset pages by stream version through the reading pipeline.

use crate::{
    bounded::Db,
    copy,
    pages::{self, PageSender, Sent, batch_rows, send_rows},
    read::{Names, stream_query, version_key},
};
use annals::{Direction, RecordedEvent, StreamId, StreamRead};
use futures::stream::BoxStream;

pub(crate) fn read_stream(
    db: Db,
    stream: StreamId,
    read: StreamRead,
) -> BoxStream<'static, annals::Result<RecordedEvent>> {
    let limit = read.limit.unwrap_or(u64::MAX);
    // Folding reads only what an aggregate needs; backward reads have no such use.
    let folding = read.for_folding && read.direction == Direction::Forward;
    pages::events(
        limit,
        Names::of_stream(stream.clone(), folding),
        move |tx| {
            tokio::spawn(produce(db, stream, read, folding, limit, tx));
        },
    )
}

/// Reads the stream's batches; `folding` as [`read_stream`] decided it.
async fn produce(
    db: Db,
    stream: StreamId,
    read: StreamRead,
    folding: bool,
    limit: u64,
    tx: PageSender,
) {
    let forward = read.direction == Direction::Forward;
    let page_size = read.page_size.max(1);
    let mut next = Some(if forward { read.from.max(1) } else { read.from });
    let mut left = limit;
    // The first page is one query, all a short stream needs. A longer stream's further
    // batches come as binary `COPY` ([`copy`]), which the client decodes in two thirds of the
    // time.
    let mut first = true;
    // For the batches this task decodes itself (the decoder decodes the first page's rows).
    let mut names = Names::of_stream(stream.clone(), folding);
    while let Some(from) = next.filter(|v| *v > 0 && left > 0) {
        let batch = if first {
            page_size
        } else {
            batch_rows(page_size)
        };
        let want = usize::try_from(left).map_or(batch, |l| l.min(batch));
        let sent = if first {
            let Some(conn) = pages::connection(&db, &tx).await else {
                return;
            };
            let query = stream_query(stream.as_str(), from, forward, read.for_folding, want);
            send_rows(&db, conn, query, page_size, version_key, &tx).await
        } else {
            let query = copy::Batch::Stream {
                stream: stream.clone(),
                from,
                forward,
                folding: read.for_folding,
            };
            let key = |e: &RecordedEvent| e.stream_version;
            copy::send_batch(&db, query, want, &mut names, page_size, key, &tx).await
        };
        first = false;
        next = None;
        match sent {
            Sent::Stopped => return,
            Sent::Done { rows, last } => {
                left = left.saturating_sub(rows as u64);
                if let (true, Some(v)) = (rows >= want, last) {
                    next = if forward {
                        v.checked_add(1)
                    } else {
                        v.checked_sub(1)
                    };
                }
            }
        }
    }
}
