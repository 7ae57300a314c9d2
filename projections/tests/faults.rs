//! Redis connections cut and event-store reads failing mid-run: the runner retries with
//! backoff and resumes from the stored checkpoint, with nothing lost or doubled.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use annals::{
    AppendResult, EventStore, InMemoryEventStore, LogPosition, LogRead, RecordedEvent, Snapshot,
    StreamAppend, StreamId, StreamRead,
};
use annals_projections::{
    Backoff, ProjectionConfig, ProjectionState, RedisConnection, RedisReadModel, RunnerConfig,
};
use common::*;
use futures::{StreamExt, stream::BoxStream};
use tokio::{net::TcpListener, sync::watch};

fn fast() -> RunnerConfig {
    RunnerConfig::new()
        .with_lease_ttl(Duration::from_secs(2))
        .with_backoff(Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(100),
        ))
}

/// An event store whose log reads fail (transiently) every `every` events.
#[derive(Clone)]
struct FlakyStore {
    inner: InMemoryEventStore,
    reads: Arc<AtomicU64>,
    every: u64,
    failures: Arc<AtomicU64>,
}

impl FlakyStore {
    fn flaky<'a>(
        &'a self,
        events: BoxStream<'a, annals::Result<RecordedEvent>>,
    ) -> BoxStream<'a, annals::Result<RecordedEvent>> {
        events
            .map(move |event| {
                if self.reads.fetch_add(1, Ordering::SeqCst) % self.every == self.every - 1 {
                    self.failures.fetch_add(1, Ordering::SeqCst);
                    Err(annals::Error::backend(true, "injected read failure"))
                } else {
                    event
                }
            })
            .boxed()
    }
}

impl EventStore for FlakyStore {
    async fn append_multi(&self, appends: Vec<StreamAppend>) -> annals::Result<Vec<AppendResult>> {
        self.inner.append_multi(appends).await
    }
    fn read_stream<'a>(
        &'a self,
        stream: &StreamId,
        read: StreamRead,
    ) -> BoxStream<'a, annals::Result<RecordedEvent>> {
        self.inner.read_stream(stream, read)
    }
    fn read_all(&self, read: LogRead) -> BoxStream<'_, annals::Result<RecordedEvent>> {
        self.flaky(self.inner.read_all(read))
    }
    fn subscribe(&self, after: LogPosition) -> BoxStream<'_, annals::Result<RecordedEvent>> {
        self.flaky(self.inner.subscribe(after))
    }
    async fn stream_version(&self, stream: &StreamId) -> annals::Result<u64> {
        self.inner.stream_version(stream).await
    }
    async fn head_position(&self) -> annals::Result<Option<LogPosition>> {
        self.inner.head_position().await
    }
    async fn save_snapshot(&self, snapshot: Snapshot) -> annals::Result<()> {
        self.inner.save_snapshot(snapshot).await
    }
    async fn load_snapshot(&self, stream: &StreamId) -> annals::Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_read_failures_are_retried_without_loss_or_doubles() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let inner = InMemoryEventStore::new();
    seed(&inner, 0, 1000).await;
    let store = FlakyStore {
        inner: inner.clone(),
        reads: Arc::default(),
        every: 173,
        failures: Arc::default(),
    };
    let (runner, model) = run_balances(
        &store,
        &redis,
        &ns,
        fast(),
        ProjectionConfig::new().with_batch_size(40),
    );
    let head = seed(&inner, 1000, 200).await;
    runner.wait_for("balances", head).await.unwrap();
    assert!(store.failures.load(Ordering::SeqCst) >= 5);
    assert_balances(&model, &inner).await;
    let total: i64 = model
        .view()
        .await
        .unwrap()
        .unwrap()
        .get("total")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(total, expected_total(&inner).await);
    runner.shutdown().await;
    cleanup_redis(&redis, &ns).await;
}

/// A TCP proxy in front of Redis that can cut every connection and refuse new ones.
struct Proxy {
    url: String,
    cut: watch::Sender<u64>,
    down: Arc<AtomicBool>,
}

async fn proxy(upstream: &str) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let (cut, cuts) = watch::channel(0u64);
    let down = Arc::new(AtomicBool::new(false));
    let upstream = upstream.to_owned();
    let refusing = down.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if refusing.load(Ordering::SeqCst) {
                continue;
            }
            let mut cuts = cuts.clone();
            cuts.borrow_and_update();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cuts.changed() => {}
                }
            });
        }
    });
    Proxy { url, cut, down }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outages_mid_run_lose_and_double_nothing() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let proxy = proxy("127.0.0.1:6379").await;
    let through_proxy = RedisConnection::single(&proxy.url).await.unwrap();
    let store = seeded_store(500).await;
    let model = RedisReadModel::with_namespace(through_proxy, &ns, "balances").unwrap();
    let runner = runner_with(
        &store,
        fast(),
        Balances::new("balances"),
        model.clone(),
        ProjectionConfig::new().with_batch_size(25),
    );

    let appender = tokio::spawn({
        let store = store.clone();
        async move {
            let mut last = LogPosition::START;
            for i in 0..30 {
                last = seed(&store, 500 + i * 20, 20).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            last
        }
    });
    let mut saw_retrying = false;
    for round in 0..8u64 {
        tokio::time::sleep(Duration::from_millis(20 + round * 7)).await;
        proxy.down.store(true, Ordering::SeqCst);
        proxy.cut.send_replace(round + 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        saw_retrying |= matches!(
            runner.status("balances").unwrap().state,
            ProjectionState::Retrying { .. }
        );
        proxy.down.store(false, Ordering::SeqCst);
    }
    let head = appender.await.unwrap();
    let waited =
        tokio::time::timeout(Duration::from_secs(30), runner.wait_for("balances", head)).await;
    assert!(
        matches!(waited, Ok(Ok(()))),
        "{waited:?}, status {:?}",
        runner.status("balances")
    );
    // Read through a direct connection.
    let direct = RedisReadModel::with_namespace(redis.clone(), &ns, "balances").unwrap();
    assert_balances(&direct, &store).await;
    let view = direct.view().await.unwrap().unwrap();
    let total: i64 = view.get("total").await.unwrap().unwrap().parse().unwrap();
    assert_eq!(total, expected_total(&store).await);
    eprintln!("saw a Retrying state: {saw_retrying}");
    drop(runner);
    cleanup_redis(&redis, &ns).await;
}
