//! A silent network (issue 16): the database stops answering without closing anything, as
//! behind a firewall that drops packets. Every wait of the store is bounded by its I/O timeout
//! and reported as a transient error; once the network forwards again, the store works, and a
//! subscription taken up again from its last event misses nothing and repeats nothing.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use annals::{
    EventStore, ExpectedVersion, LogPosition, LogRead, RecordedEvent, StreamId, testing::new_event,
};
use annals_postgres::{Error, PgConfig};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;

const BOUND: Duration = Duration::from_secs(2);

/// How long a report may take beyond the bound: a call may first wait for a pooled connection
/// (the acquire timeout, set to the bound here), and an append then asks whether the server
/// can be reached at all (the connect timeout, also the bound); plus scheduling.
const SLACK: Duration = Duration::from_secs(5);

fn sid(name: &str) -> StreamId {
    StreamId::new(name).expect("a stream id")
}

/// Copies bytes from one side to the other, holding them (without closing anything) while
/// the proxy, or this connection, is silent.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
    this: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while silent.load(Ordering::SeqCst) || this.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// A loopback proxy to PostgreSQL on a port of its own. Setting `silent` makes it stop
/// forwarding bytes, in both directions, on every connection, without closing any; setting a
/// flag of `connections` (one per connection, in the order they were accepted) silences that
/// connection alone.
struct Proxy {
    port: u16,
    silent: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Proxy {
    fn accepted(&self) -> usize {
        self.connections.lock().expect("lock").len()
    }

    fn silence(&self, connection: usize) {
        self.connections.lock().expect("lock")[connection].store(true, Ordering::SeqCst);
    }
}

async fn proxy(upstream: (String, u16)) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let silent = Arc::new(AtomicBool::new(false));
    let connections: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
    let (quiet, accepted) = (silent.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let this = Arc::new(AtomicBool::new(false));
            accepted.lock().expect("lock").push(this.clone());
            let upstream = upstream.clone();
            let quiet = quiet.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::select! {
                    () = pass(client_read, server_write, quiet.clone(), this.clone()) => {}
                    () = pass(server_read, client_write, quiet, this) => {}
                }
            });
        }
    });
    Proxy {
        port,
        silent,
        connections,
    }
}

/// Asserts that `error` is transient and reported within the bound: the store's timeout of a
/// statement, or no connection to be had (every pooled one was busy waiting, and a new one
/// cannot be opened through the silent network).
fn assert_timed_out(error: &annals::Error, started: Instant, what: &str) -> bool {
    let took = started.elapsed();
    assert!(took < BOUND + SLACK, "{what}: reported after {took:?}");
    assert!(error.is_transient(), "{what}: {error:?}");
    let annals::Error::Backend { source, .. } = error else {
        panic!("{what}: a backend error, got {error:?}");
    };
    let timed_out = source
        .downcast_ref::<Error>()
        .is_some_and(|e| matches!(e, Error::TimedOut { after, .. } if *after == BOUND));
    let no_connection = source
        .downcast_ref::<Error>()
        .is_some_and(|e| matches!(e, Error::Unreachable { .. }))
        || source
            .downcast_ref::<sqlx::Error>()
            .is_some_and(|e| matches!(e, sqlx::Error::PoolTimedOut));
    assert!(
        timed_out || no_connection,
        "{what}: a timeout, got {source}"
    );
    eprintln!("{what}: {source} after {took:?}");
    timed_out
}

/// The next item of `events`, within the bound and the slack.
async fn next(
    events: &mut BoxStream<'_, annals::Result<RecordedEvent>>,
) -> Option<annals::Result<RecordedEvent>> {
    tokio::time::timeout(BOUND * 4, events.next())
        .await
        .expect("the subscription answers within the bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_network_is_reported_within_the_bound_and_the_store_recovers() {
    let options: PgConnectOptions = common::database_url().parse().expect("url");
    let proxy = proxy((options.get_host().to_owned(), options.get_port())).await;
    let silent = proxy.silent.clone();
    let config = PgConfig::from_options(options.clone().host("127.0.0.1").port(proxy.port))
        .with_schema(common::unique_schema())
        .with_max_connections(8)
        .with_acquire_timeout(BOUND)
        .with_connect_timeout(BOUND)
        .with_io_timeout(BOUND)
        .with_listener_check(Duration::from_secs(1))
        .with_poll_interval(Duration::from_millis(100));
    let Some(store) = common::try_store(config).await else {
        return;
    };
    let s = sid("silent-s");
    let mut version = 0;
    for i in 0..5 {
        version = store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![new_event("E", json!({ "i": i }))],
            )
            .await
            .expect("append through the proxy")
            .stream_version;
    }
    let mut seen: Vec<RecordedEvent> = Vec::new();
    let mut live = store.subscribe(LogPosition::START);
    while seen.len() < 5 {
        seen.push(next(&mut live).await.expect("an event").expect("no error"));
    }

    // The network goes silent.
    silent.store(true, Ordering::SeqCst);

    let started = Instant::now();
    let error = match next(&mut live).await {
        Some(Err(error)) => error,
        Some(Ok(event)) => panic!("an event while silent: {event:?}"),
        None => panic!("the subscription ended without an error"),
    };
    assert_timed_out(&error, started, "subscription");
    drop(live);

    let started = Instant::now();
    let read: annals::Result<Vec<_>> = store.read_all(LogRead::from_start()).try_collect().await;
    assert_timed_out(&read.expect_err("a read while silent"), started, "read_all");

    let started = Instant::now();
    let error = store
        .stream_version(&s)
        .await
        .expect_err("a version while silent");
    assert_timed_out(&error, started, "stream_version");

    // One lone append (the direct path), then several at once (the writers).
    let lone = vec![new_event("E", json!({ "lone": true }))];
    let started = Instant::now();
    let error = store
        .append(&s, ExpectedVersion::Any, lone.clone())
        .await
        .expect_err("an append while silent");
    // The direct path's connection is its own: the statement was sent, its answer never came.
    assert!(assert_timed_out(&error, started, "lone append"));
    let annals::Error::Backend { source, .. } = &error else {
        unreachable!("checked above")
    };
    assert!(
        source.to_string().contains("may have been stored"),
        "{source}"
    );
    let batch: Vec<_> = (0..4)
        .map(|i| {
            (
                sid(&format!("silent-g{i}")),
                vec![new_event("E", json!({ "g": i }))],
            )
        })
        .collect();
    let started = Instant::now();
    let appends: Vec<_> = batch
        .iter()
        .cloned()
        .map(|(stream, events)| {
            let store = store.clone();
            tokio::spawn(async move { store.append(&stream, ExpectedVersion::Any, events).await })
        })
        .collect();
    for append in appends {
        let error = append
            .await
            .expect("task")
            .expect_err("an append while silent");
        assert_timed_out(&error, started, "grouped append");
    }

    // The network forwards again: the same appends, retried with their event ids, are stored
    // once (whether or not the first attempts reached the server), and new ones go through.
    silent.store(false, Ordering::SeqCst);
    let retried = store
        .append(&s, ExpectedVersion::Any, lone)
        .await
        .expect("the lone append, retried");
    assert_eq!(retried.stream_version, version + 1);
    for (stream, events) in &batch {
        let result = store
            .append(stream, ExpectedVersion::Any, events.clone())
            .await
            .expect("a grouped append, retried");
        assert_eq!(result.stream_version, 1);
    }
    for i in 0..3 {
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![new_event("E", json!({ "after": i }))],
            )
            .await
            .expect("an append after the silence");
    }
    assert_eq!(
        store.stream_version(&s).await.expect("version"),
        version + 4
    );
    let all: Vec<RecordedEvent> = store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .expect("read_all after the silence");
    assert_eq!(all.len(), 5 + 1 + 4 + 3, "every event once");

    // The subscription, taken up again after its last event, gets exactly the rest, in order.
    let last = seen.last().expect("events").position;
    let mut live = store.subscribe(last);
    while seen.len() < all.len() {
        seen.push(next(&mut live).await.expect("an event").expect("no error"));
    }
    let ids = |events: &[RecordedEvent]| events.iter().map(|e| e.event_id).collect::<Vec<_>>();
    assert_eq!(ids(&seen), ids(&all), "no gap, no repeat");
    // And it follows live appends.
    let appended = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![new_event("E", json!({ "live": true }))],
        )
        .await
        .expect("a live append");
    let event = next(&mut live).await.expect("an event").expect("no error");
    assert_eq!(event.position, appended.last_position);
    drop(live);
    store.drop_schema().await.expect("drop");
}

/// A subscription's listener cut off by a silent network (its connection alone) is found by
/// its health check and replaced; meanwhile the subscription looks at the log at each check,
/// not only at its (here very long) poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_listener_is_replaced() {
    let options: PgConnectOptions = common::database_url().parse().expect("url");
    let proxy = proxy((options.get_host().to_owned(), options.get_port())).await;
    let config = PgConfig::from_options(options.clone().host("127.0.0.1").port(proxy.port))
        .with_schema(common::unique_schema())
        .with_io_timeout(Duration::from_secs(1))
        .with_listener_check(Duration::from_secs(1))
        // Polls alone would take a minute to see an event.
        .with_poll_interval(Duration::from_secs(60));
    let Some(store) = common::try_store(config).await else {
        return;
    };
    let s = sid("listened");
    let append = async |i: u64| {
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![new_event("E", json!({ "i": i }))],
            )
            .await
            .expect("append")
    };
    append(0).await;
    // The pool holds an idle connection for the subscription's reads, so the one connection
    // the subscription opens is its listener's.
    let _ = store.stream_version(&s).await.expect("version");
    let before = proxy.accepted();
    let mut live = store.subscribe(LogPosition::START);
    next(&mut live).await.expect("an event").expect("no error");
    assert_eq!(
        proxy.accepted(),
        before + 1,
        "one connection: the listener's"
    );
    // Notifications work: the next event comes at once, not at the next poll.
    append(1).await;
    let started = Instant::now();
    next(&mut live).await.expect("an event").expect("no error");
    assert!(started.elapsed() < Duration::from_secs(5));

    proxy.silence(before);
    tokio::time::sleep(Duration::from_millis(200)).await;
    append(2).await;
    let started = Instant::now();
    let event = tokio::time::timeout(Duration::from_secs(20), live.next())
        .await
        .expect("the event comes before the next poll")
        .expect("an event")
        .expect("no error");
    assert_eq!(event.stream_version, 3);
    eprintln!(
        "delivered {:?} after the listener went silent",
        started.elapsed()
    );
    // The check (a round trip, unanswered within the I/O timeout) replaces the listener.
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.accepted() == before + 1 {
        assert!(Instant::now() < deadline, "no new listener");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the subscription goes on.
    append(3).await;
    let event = next(&mut live).await.expect("an event").expect("no error");
    assert_eq!(event.stream_version, 4);
    drop(live);
    store.drop_schema().await.expect("drop");
}
