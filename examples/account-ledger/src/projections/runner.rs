//! Catching a read model up with the global log: read after its checkpoint in batches, and
//! write each batch together with its new checkpoint, atomically.

use annals::{EventStore, LogPosition, LogRead, RecordedEvent};
use futures::TryStreamExt;
use indicatif::ProgressBar;

use super::kv::KvError;

/// Events written per read-model batch (one Lua call or one tantivy commit).
const BATCH: usize = 1_000;

/// Why a read model could not be read or brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Reading the event store failed, or a stored event did not decode.
    #[error(transparent)]
    Store(#[from] annals::Error),
    /// The key-value store failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The search index failed.
    #[error("the search index failed")]
    Search(#[from] tantivy::TantivyError),
    /// A search query did not parse.
    #[error("bad search query")]
    Query(#[from] tantivy::query::QueryParserError),
    /// The data directory failed.
    #[error("the search index directory failed")]
    Io(#[from] std::io::Error),
    /// A read-model value did not parse.
    #[error("a read-model value is corrupt")]
    Corrupt(#[source] serde_json::Error),
    /// A checkpoint did not parse.
    #[error("the checkpoint {0:?} is corrupt")]
    BadCheckpoint(String),
}

/// A read model kept by folding the global log.
pub(crate) trait ReadModel {
    /// Its name in `ledger status`.
    fn name(&self) -> &'static str;

    /// The position of the last event it has written (`None`: nothing yet).
    async fn checkpoint(&mut self) -> Result<Option<LogPosition>, ProjectionError>;

    /// Writes a batch of events that directly follow `from`, and moves the checkpoint to the
    /// last of them in the same atomic write. Returns false, writing nothing, when the
    /// checkpoint is no longer `from` (another process wrote meanwhile).
    async fn apply(
        &mut self,
        from: Option<LogPosition>,
        batch: &[RecordedEvent],
    ) -> Result<bool, ProjectionError>;
}

/// Encodes a position as `commit:sequence`.
pub(crate) fn format_position(p: LogPosition) -> String {
    format!("{}:{}", p.commit, p.sequence)
}

/// Parses [`format_position`]'s text.
pub(crate) fn parse_position(s: &str) -> Result<LogPosition, ProjectionError> {
    let bad = || ProjectionError::BadCheckpoint(s.to_owned());
    let (c, q) = s.split_once(':').ok_or_else(bad)?;
    Ok(LogPosition::new(
        c.parse().map_err(|_| bad())?,
        q.parse().map_err(|_| bad())?,
    ))
}

/// Brings `model` up to `until` (the store's head when called), showing progress on `bar`.
/// Returns how many events were written.
///
/// # Errors
/// Store and read-model failures; what was written before stays, with its checkpoint.
pub(crate) async fn catch_up<S: EventStore, M: ReadModel>(
    store: &S,
    model: &mut M,
    until: Option<LogPosition>,
    bar: Option<&ProgressBar>,
) -> Result<u64, ProjectionError> {
    let Some(until) = until else {
        return Ok(0);
    };
    let mut written = 0u64;
    'restart: loop {
        let mut from = model.checkpoint().await?;
        if from.is_some_and(|f| f >= until) {
            return Ok(written);
        }
        let mut events = store
            .read_all(LogRead::after(from.unwrap_or(LogPosition::START)).with_page_size(BATCH));
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let next = events.try_next().await?;
            let done = match &next {
                None => true,
                Some(e) => e.position >= until,
            };
            if let Some(e) = next
                && e.position <= until
            {
                batch.push(e);
            }
            if !batch.is_empty() && (batch.len() >= BATCH || done) {
                let last = batch.last().map(|e| e.position);
                if !model.apply(from, &batch).await? {
                    continue 'restart;
                }
                written += batch.len() as u64;
                if let Some(bar) = bar {
                    bar.inc(batch.len() as u64);
                }
                from = last;
                batch.clear();
            }
            if done {
                return Ok(written);
            }
        }
    }
}

/// How far a read model is behind the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    /// The read model's checkpoint.
    pub position: Option<LogPosition>,
    /// The store's head.
    pub head: Option<LogPosition>,
    /// Events in the store after the checkpoint.
    pub behind: u64,
}

/// Counts the events after `position`, up to `head`.
///
/// # Errors
/// Store failures.
pub(crate) async fn lag<S: EventStore>(
    store: &S,
    position: Option<LogPosition>,
    head: Option<LogPosition>,
) -> Result<Lag, ProjectionError> {
    let mut behind = 0u64;
    if let Some(h) = head {
        let mut events = store
            .read_all(LogRead::after(position.unwrap_or(LogPosition::START)).with_page_size(BATCH));
        while let Some(e) = events.try_next().await? {
            if e.position > h {
                break;
            }
            behind += 1;
        }
    }
    Ok(Lag {
        position,
        head,
        behind,
    })
}
