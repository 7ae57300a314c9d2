//! An event store in process memory, for tests and prototypes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::{
    StreamExt,
    channel::mpsc,
    stream::{self, BoxStream},
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    AppendResult, Direction, Error, EventStore, Limits, LogPosition, LogRead, RecordedEvent,
    Result, Snapshot, StreamAppend, StreamId, StreamRead,
};

/// An [`EventStore`] kept in memory, with exactly the semantics of the durable stores.
///
/// Appends take one lock, so they commit serially and the global log is trivially gap-free.
/// Clones share the same events.
#[derive(Debug, Clone, Default)]
pub struct InMemoryEventStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    limits: Limits,
    watchers: Mutex<Vec<mpsc::Sender<()>>>,
    /// Made when the store is created; clones share it.
    id: Uuid,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            limits: Limits::default(),
            watchers: Mutex::default(),
            id: Uuid::new_v4(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    log: Vec<RecordedEvent>,
    /// Indexes into `log` of each stream's events, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    ids: HashMap<Uuid, usize>,
    snapshots: HashMap<StreamId, Snapshot>,
}

impl State {
    fn version(&self, stream: &StreamId) -> u64 {
        self.streams.get(stream).map_or(0, |e| e.len() as u64)
    }

    /// The original results when every id of the append is stored already as the same event.
    fn replayed(&self, appends: &[StreamAppend]) -> Result<Option<Vec<AppendResult>>> {
        let mut found = 0usize;
        let mut first_missing = None;
        let mut total = 0usize;
        for event in appends.iter().flat_map(|a| &a.events) {
            total += 1;
            if self.ids.contains_key(&event.event_id) {
                found += 1;
            } else if first_missing.is_none() {
                first_missing = Some(event.event_id);
            }
        }
        if found == 0 {
            return Ok(None);
        }
        if let (Some(event_id), true) = (first_missing, found < total) {
            // Some ids stored, some not: this is not a retry of one earlier append.
            let stored = appends
                .iter()
                .flat_map(|a| &a.events)
                .find(|e| self.ids.contains_key(&e.event_id))
                .map_or(event_id, |e| e.event_id);
            return Err(Error::IdempotencyConflict { event_id: stored });
        }
        let mut results = Vec::with_capacity(appends.len());
        for append in appends {
            let mut previous: Option<&RecordedEvent> = None;
            for event in &append.events {
                let stored = &self.log[self.ids[&event.event_id]];
                let in_order =
                    previous.is_none_or(|p| p.stream_version + 1 == stored.stream_version);
                if !in_order || !event.is_stored_as(&append.stream, stored) {
                    return Err(Error::IdempotencyConflict {
                        event_id: event.event_id,
                    });
                }
                previous = Some(stored);
            }
            let first = &self.log[self.ids[&append.events[0].event_id]];
            let last = previous.unwrap_or(first);
            results.push(AppendResult {
                stream_version: last.stream_version,
                first_position: first.position,
                last_position: last.position,
            });
        }
        Ok(Some(results))
    }
}

impl InMemoryEventStore {
    /// An empty store with default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store enforcing `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            shared: Arc::new(Shared {
                limits,
                ..Shared::default()
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every mutation below validates first and then only pushes; a panic cannot leave the
        // state half-written, so a poisoned lock still guards consistent data.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append_now(&self, appends: &[StreamAppend]) -> Result<Vec<AppendResult>> {
        self.shared.limits.check(appends)?;
        let mut state = self.state();
        if let Some(results) = state.replayed(appends)? {
            return Ok(results);
        }
        for append in appends {
            let actual = state.version(&append.stream);
            if !append.expected.accepts(actual) {
                return Err(Error::Conflict {
                    stream: append.stream.clone(),
                    expected: append.expected,
                    actual,
                });
            }
        }
        let now = OffsetDateTime::now_utc();
        let mut results = Vec::with_capacity(appends.len());
        for append in appends {
            let mut version = state.version(&append.stream);
            let mut first = None;
            let mut last = LogPosition::START;
            for event in &append.events {
                version += 1;
                let index = state.log.len();
                let position = LogPosition::serial(index as u64 + 1);
                state.log.push(RecordedEvent {
                    position,
                    stream_id: append.stream.clone(),
                    stream_version: version,
                    event_id: event.event_id,
                    event_type: event.event_type.clone(),
                    schema_version: event.schema_version,
                    payload: event.payload.clone(),
                    metadata: event.metadata.clone(),
                    recorded_at: now,
                });
                state.ids.insert(event.event_id, index);
                state
                    .streams
                    .entry(append.stream.clone())
                    .or_default()
                    .push(index);
                first.get_or_insert(position);
                last = position;
            }
            results.push(AppendResult {
                stream_version: version,
                first_position: first.unwrap_or(last),
                last_position: last,
            });
        }
        drop(state);
        self.wake_subscribers();
        Ok(results)
    }

    fn wake_subscribers(&self) {
        let mut watchers = self
            .shared
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A full channel already holds a wake-up; a closed one belongs to a dropped subscriber.
        watchers.retain_mut(|w| match w.try_send(()) {
            Ok(()) => true,
            Err(e) => e.is_full(),
        });
    }

    fn stream_page(
        &self,
        stream: &StreamId,
        next: u64,
        dir: Direction,
        n: usize,
    ) -> Vec<RecordedEvent> {
        let state = self.state();
        let Some(indexes) = state.streams.get(stream) else {
            return Vec::new();
        };
        let len = indexes.len() as u64;
        let versions: Vec<u64> = match dir {
            Direction::Forward => (next.max(1)..=len).take(n).collect(),
            Direction::Backward => (1..=next.min(len)).rev().take(n).collect(),
        };
        versions
            .into_iter()
            .map(|v| state.log[indexes[v as usize - 1]].clone())
            .collect()
    }

    fn log_page(&self, after: LogPosition, n: usize) -> Vec<RecordedEvent> {
        let state = self.state();
        let start = (after.sequence as usize).min(state.log.len());
        state.log[start..].iter().take(n).cloned().collect()
    }
}

impl EventStore for InMemoryEventStore {
    async fn append_multi(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        self.append_now(&appends)
    }

    fn read_stream<'a>(
        &'a self,
        stream: &StreamId,
        read: StreamRead,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        let stream = stream.clone();
        let limit = read.limit.unwrap_or(u64::MAX);
        let pages = stream::unfold((read.from, limit), move |(next, left)| {
            let page = if left == 0 || (read.direction == Direction::Backward && next == 0) {
                Vec::new()
            } else {
                let n = read
                    .page_size
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                self.stream_page(&stream, next, read.direction, n)
            };
            let Some(last) = page.last() else {
                return futures::future::ready(None);
            };
            let next = match read.direction {
                Direction::Forward => last.stream_version + 1,
                Direction::Backward => last.stream_version - 1,
            };
            let left = left - page.len() as u64;
            futures::future::ready(Some((page, (next, left))))
        });
        pages
            .flat_map(|page| stream::iter(page.into_iter().map(Ok)))
            .boxed()
    }

    fn read_all(&self, read: LogRead) -> BoxStream<'_, Result<RecordedEvent>> {
        let limit = read.limit.unwrap_or(u64::MAX);
        let pages = stream::unfold((read.after, limit), move |(after, left)| {
            let n = read
                .page_size
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let page = if n == 0 {
                Vec::new()
            } else {
                self.log_page(after, n)
            };
            let Some(last) = page.last() else {
                return futures::future::ready(None);
            };
            let state = (last.position, left - page.len() as u64);
            futures::future::ready(Some((page, state)))
        });
        pages
            .flat_map(|page| stream::iter(page.into_iter().map(Ok)))
            .boxed()
    }

    fn subscribe(&self, after: LogPosition) -> BoxStream<'_, Result<RecordedEvent>> {
        let (tx, rx) = mpsc::channel(1);
        // Registered before the first read, so no commit between a read and the wait is missed.
        self.shared
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        let pages = stream::unfold((after, rx), move |(after, mut rx)| async move {
            loop {
                let page = self.log_page(after, crate::DEFAULT_PAGE_SIZE);
                if let Some(last) = page.last() {
                    let after = last.position;
                    return Some((page, (after, rx)));
                }
                // The sender lives in the store, so this only ends when the store is dropped.
                rx.next().await?;
            }
        });
        pages
            .flat_map(|page| stream::iter(page.into_iter().map(Ok)))
            .boxed()
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        Ok(self.state().version(stream))
    }

    async fn head_position(&self) -> Result<Option<LogPosition>> {
        Ok(self.state().log.last().map(|e| e.position))
    }

    async fn store_id(&self) -> Result<Uuid> {
        Ok(self.shared.id)
    }

    async fn count_events(&self, after: LogPosition, through: LogPosition) -> Result<u64> {
        let state = self.state();
        // Serial positions: the log is sorted, so two binary searches bound the range.
        let from = state.log.partition_point(|e| e.position <= after);
        let to = state.log.partition_point(|e| e.position <= through);
        Ok(to.saturating_sub(from) as u64)
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let mut state = self.state();
        let keep_old = state
            .snapshots
            .get(&snapshot.stream_id)
            .is_some_and(|old| old.stream_version > snapshot.stream_version);
        if !keep_old {
            state.snapshots.insert(snapshot.stream_id.clone(), snapshot);
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self.state().snapshots.get(stream).cloned())
    }
}
