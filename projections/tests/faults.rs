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
    EventStore, InMemoryEventStore, LogPosition, LogRead, RecordedEvent,
    testing::{Intercept, Intercepted},
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

/// Log reads fail (transiently) every `every` events. Clones share the counts.
#[derive(Clone)]
struct Flaky {
    reads: Arc<AtomicU64>,
    every: u64,
    failures: Arc<AtomicU64>,
    /// While set, head and count queries never answer (a silent network to the store).
    silent: Arc<AtomicBool>,
}

impl Flaky {
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

    async fn hang_while_silent(&self) {
        while self.silent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Intercept<InMemoryEventStore> for Flaky {
    fn read_all<'a>(
        &'a self,
        inner: &'a InMemoryEventStore,
        read: LogRead,
    ) -> BoxStream<'a, annals::Result<RecordedEvent>> {
        self.flaky(inner.read_all(read))
    }
    fn subscribe<'a>(
        &'a self,
        inner: &'a InMemoryEventStore,
        after: LogPosition,
    ) -> BoxStream<'a, annals::Result<RecordedEvent>> {
        self.flaky(inner.subscribe(after))
    }
    async fn head_position(
        &self,
        inner: &InMemoryEventStore,
    ) -> annals::Result<Option<LogPosition>> {
        self.hang_while_silent().await;
        inner.head_position().await
    }
    async fn count_events(
        &self,
        inner: &InMemoryEventStore,
        after: LogPosition,
        through: LogPosition,
    ) -> annals::Result<u64> {
        self.hang_while_silent().await;
        inner.count_events(after, through).await
    }
}

/// An event store whose log reads fail (transiently) every `every` events.
type FlakyStore = Intercepted<InMemoryEventStore, Flaky>;

fn flaky_store(inner: InMemoryEventStore, every: u64) -> FlakyStore {
    Intercepted::new(
        inner,
        Flaky {
            reads: Arc::default(),
            every,
            failures: Arc::default(),
            silent: Arc::default(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_read_failures_are_retried_without_loss_or_doubles() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let inner = InMemoryEventStore::new();
    seed(&inner, 0, 1000).await;
    let store = flaky_store(inner.clone(), 173);
    let (runner, model) = run_balances(
        &store,
        &redis,
        &ns,
        fast(),
        ProjectionConfig::new().with_batch_size(40),
    );
    let head = seed(&inner, 1000, 200).await;
    runner.wait_for("balances", head).await.unwrap();
    assert!(store.intercept.failures.load(Ordering::SeqCst) >= 5);
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
    /// While set, bytes are read but not passed on (packets dropped, no reset).
    silent: Arc<AtomicBool>,
}

/// Copies one direction, holding bytes back while `silent` is set.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while silent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

async fn proxy(upstream: &str) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let (cut, cuts) = watch::channel(0u64);
    let down = Arc::new(AtomicBool::new(false));
    let silent = Arc::new(AtomicBool::new(false));
    let upstream = upstream.to_owned();
    let refusing = down.clone();
    let quiet = silent.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            if refusing.load(Ordering::SeqCst) {
                continue;
            }
            let mut cuts = cuts.clone();
            cuts.borrow_and_update();
            let upstream = upstream.clone();
            let quiet = quiet.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::select! {
                    () = pass(client_read, server_write, quiet.clone()) => {}
                    () = pass(server_read, client_write, quiet) => {}
                    _ = cuts.changed() => {}
                }
            });
        }
    });
    Proxy {
        url,
        cut,
        down,
        silent,
    }
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

/// A Redis that stops answering without closing anything (a blackholed network): the write
/// waiting on it fails within the runner's I/O bound, the status says so within seconds,
/// and once Redis answers again every event lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_is_reported_within_the_io_bound_and_loses_nothing() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let proxy = proxy("127.0.0.1:6379").await;
    let through_proxy = RedisConnection::single(&proxy.url).await.unwrap();
    let store = seeded_store(300).await;
    let model = RedisReadModel::with_namespace(through_proxy, &ns, "balances").unwrap();
    let bound = Duration::from_millis(400);
    let runner = runner_with(
        &store,
        fast().with_io_timeout(bound),
        Balances::new("balances"),
        model.clone(),
        ProjectionConfig::new().with_batch_size(25),
    );
    let head = store.head_position().await.unwrap().unwrap();
    runner.wait_for("balances", head).await.unwrap();

    proxy.silent.store(true, Ordering::SeqCst);
    let silenced = std::time::Instant::now();
    let head = seed(&store, 300, 20).await;
    let status = wait_status(&runner, "balances", |s| {
        matches!(&s.state, ProjectionState::Retrying { error, .. } if error.contains("did not answer within"))
    })
    .await;
    let noticed = silenced.elapsed();
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?}: {status}"
    );
    assert!(status.checkpoint < Some(head), "{status}");
    assert!(!status.is_caught_up());

    proxy.silent.store(false, Ordering::SeqCst);
    proxy.cut.send_replace(1);
    tokio::time::timeout(Duration::from_secs(30), runner.wait_for("balances", head))
        .await
        .expect("caught up after the network came back")
        .unwrap();
    let direct = RedisReadModel::with_namespace(redis.clone(), &ns, "balances").unwrap();
    assert_balances(&direct, &store).await;
    let view = direct.view().await.unwrap().unwrap();
    let total: i64 = view.get("total").await.unwrap().unwrap().parse().unwrap();
    assert_eq!(total, expected_total(&store).await);
    drop(runner);
    cleanup_redis(&redis, &ns).await;
}

/// A store that stops answering shows as degraded in the status within seconds (the
/// measurement is bounded), and the status heals once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_store_shows_as_degraded_within_seconds() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let inner = InMemoryEventStore::new();
    seed(&inner, 0, 100).await;
    let store = flaky_store(inner.clone(), u64::MAX);
    let (runner, model) = run_balances(
        &store,
        &redis,
        &ns,
        fast()
            .with_io_timeout(Duration::from_millis(300))
            .with_status_interval(Duration::from_millis(100)),
        ProjectionConfig::new(),
    );
    let head = inner.head_position().await.unwrap().unwrap();
    runner.wait_for("balances", head).await.unwrap();
    store.intercept.silent.store(true, Ordering::SeqCst);
    let silenced = std::time::Instant::now();
    let status = wait_status(&runner, "balances", |s| s.degraded.is_some()).await;
    assert!(silenced.elapsed() < Duration::from_secs(3), "{status}");
    assert!(status.to_string().contains("degraded"), "{status}");
    assert!(!status.is_caught_up());
    store.intercept.silent.store(false, Ordering::SeqCst);
    let status = wait_status(&runner, "balances", |s| s.degraded.is_none() && s.lag == 0).await;
    assert!(status.is_caught_up(), "{status}");
    assert_balances(&model, &inner).await;
    runner.shutdown().await;
    cleanup_redis(&redis, &ns).await;
}

/// A reader of a silent Redis gets an error within its connection's reply bound, not after
/// the kernel's TCP timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_a_silent_redis_gets_an_error_within_its_bound() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let proxy = proxy("127.0.0.1:6379").await;
    let bound = Duration::from_millis(300);
    let through_proxy =
        RedisConnection::single_with_timeouts(&proxy.url, Duration::from_secs(2), bound)
            .await
            .unwrap();
    let store = seeded_store(50).await;
    let model = RedisReadModel::with_namespace(through_proxy, &ns, "balances").unwrap();
    let runner = runner_with(
        &store,
        fast(),
        Balances::new("balances"),
        model.clone(),
        ProjectionConfig::new(),
    );
    let head = store.head_position().await.unwrap().unwrap();
    runner.wait_for("balances", head).await.unwrap();
    let view = model.view().await.unwrap().unwrap();
    proxy.silent.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let read = view.get("total").await;
    let waited = started.elapsed();
    assert!(read.is_err(), "{read:?}");
    assert!(read.unwrap_err().is_transient());
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    proxy.silent.store(false, Ordering::SeqCst);
    drop(runner);
    cleanup_redis(&redis, &ns).await;
}
