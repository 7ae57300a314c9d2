//! The NATS JetStream publisher against real servers: the shared one (NATS_URL, each test with
//! a stream and subjects of its own) and, for the outage, a nats-server the test runs itself.

mod common;

use std::time::Duration;

use annals::InMemoryEventStore;
use annals_brokers::{NatsPublisher, Publisher, Subjects, headers};
use annals_projections::{
    FailurePolicy, InMemoryLeases, MemoryReadModel, ProgressDisplay, ProjectionConfig,
    ProjectionRunner, ProjectionState, ReadModel,
};
use annals_projections_sql::{SqlSchema, SqliteTables};
use async_nats::jetstream::{self, message::StreamMessage, stream};
use common::{Seen, check_deliveries, chosen, fast, filter, seed, wait_status};

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A JetStream context on `url`, or `None` (a panic under CI) when the server is down.
async fn jetstream_at(url: &str) -> Option<jetstream::Context> {
    let connected = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url)).await;
    match connected {
        Ok(Ok(client)) => Some(jetstream::new(client)),
        other => {
            common::unreachable(&format!("NATS at {url}"), &format!("{other:?}"));
            None
        }
    }
}

/// A stream of the test's own, taking `<prefix>.>`, and its prefix.
async fn own_stream(js: &jetstream::Context, storage: stream::StorageType) -> (String, String) {
    let name = common::unique("T");
    let prefix = common::unique("t");
    js.create_stream(stream_config(&name, &prefix, storage))
        .await
        .unwrap();
    (name, prefix)
}

fn stream_config(name: &str, prefix: &str, storage: stream::StorageType) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        storage,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Every message the stream holds, in stream order.
async fn read_stream(js: &jetstream::Context, name: &str) -> Vec<StreamMessage> {
    let mut stream = js.get_stream(name).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::with_capacity(state.messages as usize);
    if state.messages == 0 {
        return out;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        out.push(stream.get_raw_message(sequence).await.unwrap());
    }
    out
}

fn header<'a>(message: &'a StreamMessage, name: &str) -> Option<&'a str> {
    message.headers.get(name).map(|v| v.as_str())
}

fn seen(messages: &[StreamMessage]) -> Vec<Seen> {
    messages
        .iter()
        .map(|m| Seen {
            event_id: header(m, "Nats-Msg-Id").unwrap().parse().unwrap(),
            stream: header(m, headers::STREAM).unwrap().to_owned(),
            version: header(m, headers::STREAM_VERSION).unwrap().parse().unwrap(),
        })
        .collect()
}

fn config() -> ProjectionConfig {
    ProjectionConfig::new()
        .with_batch_size(97)
        .with_page_size(200)
        .with_progress(ProgressDisplay::Silent)
}

fn publisher_to(url: &str, stream: &str, prefix: &str) -> NatsPublisher {
    NatsPublisher::new(url, stream)
        .with_subjects(Subjects::prefixed(prefix))
        .with_window(64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_each_chosen_event_once_with_its_headers() {
    let Some(js) = jetstream_at(&url()).await else {
        return;
    };
    let (name, prefix) = own_stream(&js, stream::StorageType::Memory).await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 400).await;
    let runner = ProjectionRunner::new(store.clone()).with_config(fast());
    Publisher::new("out", filter(), publisher_to(&url(), &name, &prefix))
        .add_to(
            &runner,
            MemoryReadModel::<()>::new("out").unwrap(),
            config(),
        )
        .unwrap();
    runner.catch_up(Duration::from_secs(60)).await.unwrap();
    let last = seed(&store, 400, 100).await;
    runner
        .wait_for_within("out", last, Duration::from_secs(60))
        .await
        .unwrap();
    runner.shutdown().await;

    let want = chosen(&store).await;
    let stored = read_stream(&js, &name).await;
    assert_eq!(check_deliveries(&seen(&stored), &want, false), 0);
    for (message, event) in stored.iter().zip(&want) {
        assert_eq!(
            message.subject.as_str(),
            format!("{prefix}.order.{}", event.event_type)
        );
        assert_eq!(message.payload.as_ref(), event.payload.as_str().as_bytes());
        let id = event.event_id.to_string();
        assert_eq!(header(message, "Nats-Msg-Id"), Some(id.as_str()));
        assert_eq!(
            header(message, headers::EVENT_TYPE),
            Some(event.event_type.as_str())
        );
        assert_eq!(header(message, headers::SCHEMA_VERSION), Some("1"));
        assert_eq!(
            header(message, headers::STREAM),
            Some(event.stream_id.as_str())
        );
        let position = format!("{}:{}", event.position.commit, event.position.sequence);
        assert_eq!(header(message, headers::POSITION), Some(position.as_str()));
        let correlation = event.metadata.correlation_id.map(|id| id.to_string());
        assert_eq!(
            header(message, headers::CORRELATION_ID),
            correlation.as_deref()
        );
        let causation = event.metadata.causation_id.map(|id| id.to_string());
        assert_eq!(header(message, headers::CAUSATION_ID), causation.as_deref());
        let trace = annals_brokers::trace_context(event).map(|t| t.traceparent);
        assert_eq!(header(message, headers::TRACEPARENT), trace.as_deref());
    }
    js.delete_stream(&name).await.unwrap();
}

/// The publisher aborted at random points (mid-publish included) 20 times, with its
/// checkpoints in a SQLite file as a restarted process would find them: every chosen event
/// is stored once, in each stream's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_runs_store_each_event_once_in_stream_order() {
    use rand::Rng;
    let Some(js) = jetstream_at(&url()).await else {
        return;
    };
    let (name, prefix) = own_stream(&js, stream::StorageType::File).await;
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("checkpoints.db").display()
    ))
    .await
    .unwrap();
    let inner = SqliteTables::new(pool, "out", SqlSchema::new()).unwrap();
    let store = InMemoryEventStore::new();
    let leases = InMemoryLeases::new();
    seed(&store, 0, 1_500).await;
    let start = || {
        let runner = ProjectionRunner::new(store.clone())
            .with_leases(leases.clone())
            .with_config(fast());
        Publisher::new("out", filter(), publisher_to(&url(), &name, &prefix))
            .add_to(&runner, inner.clone(), config())
            .unwrap();
        runner
    };
    for round in 0..20 {
        let wait = rand::rng().random_range(0..60u64);
        let runner = start();
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if round % 4 == 0 {
            seed(&store, 1_500 + round * 30, 30).await;
        }
        drop(runner);
        // Let the dead owner's lease expire, as after a real crash.
        tokio::time::sleep(Duration::from_millis(160)).await;
    }
    let runner = start();
    runner.catch_up(Duration::from_secs(60)).await.unwrap();
    runner.shutdown().await;
    let stored = read_stream(&js, &name).await;
    check_deliveries(&seen(&stored), &chosen(&store).await, false);
    js.delete_stream(&name).await.unwrap();
}

/// A nats-server of the test's own goes away (SIGTERM) in the middle of a catch-up and
/// comes back with its store: the status shows the outage as `Retrying` with the broker's
/// error and then running again, and every event is stored once, in each stream's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outage_shows_in_the_status_and_loses_nothing() {
    if jetstream_at(&url()).await.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = common::OwnNats::start(dir.path()).await else {
        return;
    };
    let name = "OUTAGE";
    let prefix = "outage";
    let store = InMemoryEventStore::new();
    seed(&store, 0, 3_000).await;
    let runner = ProjectionRunner::new(store.clone()).with_config(fast());
    let nats = publisher_to(&server.url(), name, prefix)
        .create_stream(stream_config(name, prefix, stream::StorageType::File))
        .with_ack_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(1));
    let inner = MemoryReadModel::<()>::new("out").unwrap();
    Publisher::new("out", filter(), nats)
        .add_to(&runner, inner.clone(), config().with_batch_size(500))
        .unwrap();
    // Let it publish part of the log, then take the server away mid-catch-up.
    wait_status(&runner, "out", |s| s.checkpoint.is_some()).await;
    server.stop().await;
    let last = seed(&store, 3_000, 200).await;
    let status = wait_status(&runner, "out", common::retrying).await;
    let ProjectionState::Retrying { error, .. } = &status.state else {
        unreachable!()
    };
    assert!(error.contains("NATS JetStream stream OUTAGE"), "{error}");
    assert!(status.checkpoint < Some(last), "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await;
    runner
        .wait_for_within("out", last, Duration::from_secs(60))
        .await
        .unwrap();
    let status = wait_status(&runner, "out", |s| s.state == ProjectionState::Running).await;
    assert_eq!(status.checkpoint, Some(last));
    runner.shutdown().await;
    let js = jetstream_at(&server.url()).await.unwrap();
    let stored = read_stream(&js, name).await;
    check_deliveries(&seen(&stored), &chosen(&store).await, false);
}

/// The server goes away while the publisher is idle (caught up, no event coming): the idle
/// check shows the outage as `Retrying` without waiting for an event, then `Running` once the
/// server is back, and the events appended later are stored once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_while_idle_shows_in_the_status() {
    if jetstream_at(&url()).await.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = common::OwnNats::start(dir.path()).await else {
        return;
    };
    let name = "IDLE";
    let prefix = "idle";
    let store = InMemoryEventStore::new();
    let first = seed(&store, 0, 200).await;
    let runner = ProjectionRunner::new(store.clone())
        .with_config(fast().with_idle_check(Duration::from_millis(200)));
    let nats = publisher_to(&server.url(), name, prefix)
        .create_stream(stream_config(name, prefix, stream::StorageType::File))
        .with_ack_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(1));
    Publisher::new("out", filter(), nats)
        .add_to(
            &runner,
            MemoryReadModel::<()>::new("out").unwrap(),
            config(),
        )
        .unwrap();
    runner
        .wait_for_within("out", first, Duration::from_secs(60))
        .await
        .unwrap();
    server.stop().await;
    let status = wait_status(&runner, "out", common::retrying).await;
    let ProjectionState::Retrying { error, .. } = &status.state else {
        unreachable!()
    };
    assert!(error.contains("NATS JetStream stream IDLE"), "{error}");
    assert_eq!(status.checkpoint, Some(first), "{status}");
    server.restart().await;
    wait_status(&runner, "out", |s| s.state == ProjectionState::Running).await;
    let last = seed(&store, 200, 100).await;
    runner
        .wait_for_within("out", last, Duration::from_secs(60))
        .await
        .unwrap();
    runner.shutdown().await;
    let js = jetstream_at(&server.url()).await.unwrap();
    let stored = read_stream(&js, name).await;
    check_deliveries(&seen(&stored), &chosen(&store).await, false);
}

/// A message no stream takes (no responders) is refused: under `DeadLetter` it is parked with
/// the checkpoint and the rest is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_no_stream_takes_follows_the_failure_policy() {
    let Some(js) = jetstream_at(&url()).await else {
        return;
    };
    let (name, prefix) = own_stream(&js, stream::StorageType::Memory).await;
    let elsewhere = common::unique("nowhere");
    let subjects = {
        let prefix = prefix.clone();
        Subjects::custom(move |e| {
            let to = if e.stream_id.as_str() == "order-3" {
                &elsewhere
            } else {
                &prefix
            };
            format!("{to}.{}.{}", e.stream_id.category(), e.event_type)
        })
    };
    let store = InMemoryEventStore::new();
    let last = seed(&store, 0, 200).await;
    let runner = ProjectionRunner::new(store.clone()).with_config(fast());
    let inner = MemoryReadModel::<()>::new("out").unwrap();
    Publisher::new(
        "out",
        filter(),
        publisher_to(&url(), &name, &prefix).with_subjects(subjects),
    )
    .add_to(
        &runner,
        inner.clone(),
        config().with_policy(FailurePolicy::DeadLetter),
    )
    .unwrap();
    runner
        .wait_for_within("out", last, Duration::from_secs(60))
        .await
        .unwrap();
    runner.shutdown().await;
    let want = chosen(&store).await;
    let (refused, published): (Vec<_>, Vec<_>) = want
        .into_iter()
        .partition(|e| e.stream_id.as_str() == "order-3");
    let letters = inner.dead_letters().await.unwrap();
    assert_eq!(letters.len(), refused.len());
    assert!(
        letters[0]
            .error
            .contains("no JetStream stream takes subject"),
        "{letters:?}"
    );
    let stored = read_stream(&js, &name).await;
    check_deliveries(&seen(&stored), &published, false);
    js.delete_stream(&name).await.unwrap();
}
