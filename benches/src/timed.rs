//! Where a command's time goes: an event store that times the two calls a command makes
//! (loading its aggregate, appending its events), and the same timers for the hand-written
//! path's two statements. `command_cpu` prints the mean of each after every run, so the
//! split between the load and the append is measured in the same minutes as the rates.
//!
//! The timers read the clock twice a call (tens of nanoseconds against the hundreds of
//! microseconds of a round trip), and every call is timed, the framework's and the
//! baseline's alike.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use annals::{
    AggregateRead, AppendResult, EventStore, LogHold, LogPosition, LogRead, RecordedEvent, Result,
    Snapshot, StreamAppend, StreamId, StreamRead,
};
use futures::stream::BoxStream;
use uuid::Uuid;

/// The wall time of the loads and appends timed so far, and how many there were.
#[derive(Debug, Default)]
pub struct CallTimes {
    load_ns: AtomicU64,
    loads: AtomicU64,
    append_ns: AtomicU64,
    appends: AtomicU64,
}

/// The mean wall time of a load and of an append, in microseconds (`None`: no such call).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallSplit {
    /// A load: the repository's `read_aggregate`, or the hand-written `SELECT`.
    pub load_us: Option<f64>,
    /// An append: `append_multi`, or the hand-written `INSERT`.
    pub append_us: Option<f64>,
}

impl CallTimes {
    /// Counts a load that began at `started` and has just ended.
    pub fn load_ended(&self, started: Instant) {
        add(&self.load_ns, &self.loads, started);
    }

    /// Counts an append that began at `started` and has just ended.
    pub fn append_ended(&self, started: Instant) {
        add(&self.append_ns, &self.appends, started);
    }

    /// Forgets the calls timed so far.
    pub fn reset(&self) {
        for counter in [&self.load_ns, &self.loads, &self.append_ns, &self.appends] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// The means so far.
    pub fn split(&self) -> CallSplit {
        CallSplit {
            load_us: mean_us(&self.load_ns, &self.loads),
            append_us: mean_us(&self.append_ns, &self.appends),
        }
    }
}

fn add(total: &AtomicU64, count: &AtomicU64, started: Instant) {
    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    total.fetch_add(ns, Ordering::Relaxed);
    count.fetch_add(1, Ordering::Relaxed);
}

fn mean_us(total: &AtomicU64, count: &AtomicU64) -> Option<f64> {
    let n = count.load(Ordering::Relaxed);
    (n > 0).then(|| total.load(Ordering::Relaxed) as f64 / n as f64 / 1e3)
}

/// `store`, with its `read_aggregate` and `append_multi` calls timed into [`CallTimes`];
/// every other call is passed on untimed.
#[derive(Debug, Clone)]
pub struct Timed<S> {
    store: S,
    times: Arc<CallTimes>,
}

impl<S> Timed<S> {
    /// Times `store`'s calls into `times`.
    pub fn new(store: S, times: Arc<CallTimes>) -> Self {
        Self { store, times }
    }
}

impl<S: EventStore> EventStore for Timed<S> {
    fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> impl Future<Output = Result<Vec<AppendResult>>> + Send {
        let started = Instant::now();
        let append = self.store.append_multi(appends);
        async move {
            let result = append.await;
            self.times.append_ended(started);
            result
        }
    }

    fn read_stream<'a>(
        &'a self,
        stream: &StreamId,
        read: StreamRead,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        self.store.read_stream(stream, read)
    }

    fn read_aggregate<'a>(
        &'a self,
        stream: &StreamId,
        snapshot_version: Option<u32>,
        read: StreamRead,
    ) -> impl Future<Output = Result<AggregateRead<'a>>> + Send + 'a {
        let started = Instant::now();
        let load = self.store.read_aggregate(stream, snapshot_version, read);
        async move {
            let result = load.await;
            self.times.load_ended(started);
            result
        }
    }

    fn read_all(&self, read: LogRead) -> BoxStream<'_, Result<RecordedEvent>> {
        self.store.read_all(read)
    }

    fn subscribe(&self, after: LogPosition) -> BoxStream<'_, Result<RecordedEvent>> {
        self.store.subscribe(after)
    }

    fn stream_version(&self, stream: &StreamId) -> impl Future<Output = Result<u64>> + Send {
        self.store.stream_version(stream)
    }

    fn head_position(&self) -> impl Future<Output = Result<Option<LogPosition>>> + Send {
        self.store.head_position()
    }

    fn store_id(&self) -> impl Future<Output = Result<Uuid>> + Send {
        self.store.store_id()
    }

    fn count_events(
        &self,
        after: LogPosition,
        through: LogPosition,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.store.count_events(after, through)
    }

    fn log_hold(&self) -> impl Future<Output = Result<Option<LogHold>>> + Send {
        self.store.log_hold()
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> impl Future<Output = Result<()>> + Send {
        self.store.save_snapshot(snapshot)
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send {
        self.store.load_snapshot(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Deposited, LedgerEvent};
    use annals::{ExpectedVersion, InMemoryEventStore};

    #[tokio::test]
    async fn loads_and_appends_are_timed_and_counted_apart() {
        let times = Arc::new(CallTimes::default());
        let store = Timed::new(InMemoryEventStore::new(), times.clone());
        assert_eq!(
            times.split(),
            CallSplit {
                load_us: None,
                append_us: None
            }
        );
        let stream = StreamId::new("timed-1").unwrap();
        for n in 0..3 {
            let event = LedgerEvent::Deposited(Deposited::sample(1, n)).new_event();
            store
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await
                .unwrap();
        }
        store
            .read_aggregate(&stream, None, StreamRead::forward())
            .await
            .unwrap();
        assert_eq!(times.appends.load(Ordering::Relaxed), 3);
        assert_eq!(times.loads.load(Ordering::Relaxed), 1);
        let split = times.split();
        assert!(split.load_us.is_some_and(|us| us >= 0.0));
        assert!(split.append_us.is_some_and(|us| us >= 0.0));
        // Calls that are neither are passed on, untimed.
        assert_eq!(store.stream_version(&stream).await.unwrap(), 3);
        assert_eq!(times.appends.load(Ordering::Relaxed), 3);
    }
}
