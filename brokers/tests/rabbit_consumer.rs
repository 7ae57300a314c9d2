//! The RabbitMQ consumer against the real server (AMQP_URL), each test with an exchange,
//! queue and dead-letter queue of its own: what a handler gets, acks after `Ok` only,
//! redelivery with backoff in order, dead letters, `Poison::Stop`, and consumers aborted at
//! random points.

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use annals::{Backoff, InMemoryEventStore, RecordedEvent};
use annals_brokers::{
    BrokerError, ConsumerConfig, Delivery, Poison, Publisher, RabbitConsumer, RabbitPublisher,
    Subjects, dead_letter_headers, headers,
};
use annals_projections::{MemoryReadModel, ProgressDisplay, ProjectionConfig, ProjectionRunner};
use common::{Seen, check_deliveries, chosen, fast, filter, seed};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions},
    types::AMQPValue,
};
use uuid::Uuid;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn channel() -> Option<(Connection, Channel)> {
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&url(), ConnectionProperties::default()),
    )
    .await;
    match connected {
        Ok(Ok(connection)) => {
            let channel = connection.create_channel().await.unwrap();
            Some((connection, channel))
        }
        other => {
            common::unreachable("RabbitMQ at AMQP_URL", &format!("{other:?}"));
            None
        }
    }
}

/// An exchange, a queue (declared by the consumer, bound to `<prefix>.#`) and a dead-letter
/// queue of the test's own.
struct Own {
    exchange: String,
    queue: String,
    prefix: String,
}

impl Own {
    /// Names, and the queue declared and bound by a first (empty) drain of the consumer.
    async fn create() -> Self {
        let own = Self {
            exchange: common::unique("x"),
            queue: common::unique("q"),
            prefix: common::unique("p"),
        };
        own.consumer(ConsumerConfig::new())
            .drain(|_d: Delivery| async { Ok(()) })
            .await
            .unwrap();
        own
    }

    fn consumer(&self, config: ConsumerConfig) -> RabbitConsumer {
        RabbitConsumer::new(url(), &self.exchange, &self.queue)
            .with_binding_keys([format!("{}.#", self.prefix)])
            .with_config(config.with_idle_check(Duration::from_millis(300)))
    }

    async fn publish(&self, store: &InMemoryEventStore) {
        let runner = ProjectionRunner::new(store.clone()).with_config(fast());
        let rabbit = RabbitPublisher::new(url(), &self.exchange)
            .with_subjects(Subjects::prefixed(&self.prefix))
            .with_window(64);
        Publisher::new("out", filter(), rabbit)
            .add_to(
                &runner,
                MemoryReadModel::<()>::new("out").unwrap(),
                ProjectionConfig::new().with_progress(ProgressDisplay::Silent),
            )
            .unwrap();
        runner.catch_up(Duration::from_secs(60)).await.unwrap();
        runner.shutdown().await;
    }

    async fn drop(self, channel: &Channel) {
        for queue in [self.queue.clone(), format!("{}.dead", self.queue)] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
        channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
    }
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Delivery>>>);

impl Log {
    fn handler(
        &self,
    ) -> impl Fn(Delivery) -> futures::future::Ready<Result<(), annals::BoxError>>
    + Clone
    + Send
    + Sync
    + 'static {
        let log = self.clone();
        move |d: Delivery| {
            log.0.lock().unwrap().push(d);
            futures::future::ready(Ok(()))
        }
    }

    fn all(&self) -> Vec<Delivery> {
        self.0.lock().unwrap().clone()
    }
}

fn seen(deliveries: &[Delivery]) -> Vec<Seen> {
    deliveries
        .iter()
        .map(|d| Seen {
            event_id: d.event_id,
            stream: d.stream_id.to_string(),
            version: d.stream_version,
        })
        .collect()
}

fn assert_same_event(d: &Delivery, e: &RecordedEvent) {
    assert_eq!(d.event_id, e.event_id);
    assert_eq!(d.event_type, e.event_type);
    assert_eq!(d.schema_version, e.schema_version);
    assert_eq!(d.stream_id, e.stream_id);
    assert_eq!(d.stream_version, e.stream_version);
    assert_eq!(d.position, e.position);
    assert_eq!(d.correlation_id, e.metadata.correlation_id);
    assert_eq!(d.causation_id, e.metadata.causation_id);
    assert_eq!(d.payload_str().unwrap(), e.payload.as_str());
    assert_eq!(
        d.recorded_at.map(|t| t.unix_timestamp()),
        Some(e.recorded_at.unix_timestamp())
    );
    let trace = annals_brokers::trace_context(e).map(|t| t.traceparent);
    assert_eq!(d.trace.as_ref().map(|t| t.to_traceparent()), trace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hands_each_message_to_the_handler_once_in_order_with_its_headers() {
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let own = Own::create().await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 300).await;
    own.publish(&store).await;
    let log = Log::default();
    let consumed = own
        .consumer(ConsumerConfig::new().with_in_flight(32))
        .drain(log.handler())
        .await
        .unwrap();
    let want = chosen(&store).await;
    assert_eq!(consumed.handled, want.len() as u64);
    let got = log.all();
    assert_eq!(check_deliveries(&seen(&got), &want, false), 0);
    for (d, e) in got.iter().zip(&want) {
        assert_same_event(d, e);
        assert_eq!(d.attempt, 1);
        assert_eq!(d.subject, format!("{}.order.{}", own.prefix, e.event_type));
    }
    own.drop(&channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_comes_again_after_the_backoff_before_anything_later() {
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let own = Own::create().await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 60).await;
    own.publish(&store).await;
    let want = chosen(&store).await;
    let flaky = want[10].event_id;
    let log = Log::default();
    let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let handler = {
        let (log, times) = (log.clone(), times.clone());
        move |d: Delivery| {
            let (log, times) = (log.clone(), times.clone());
            async move {
                if d.event_id == flaky {
                    times.lock().unwrap().push(Instant::now());
                    if d.attempt < 3 {
                        return Err(format!("not yet (attempt {})", d.attempt).into());
                    }
                }
                log.0.lock().unwrap().push(d);
                Ok(())
            }
        }
    };
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
    let consumed = own
        .consumer(ConsumerConfig::new().with_backoff(backoff))
        .drain(handler)
        .await
        .unwrap();
    assert_eq!(consumed.retried, 2);
    assert_eq!(consumed.handled, want.len() as u64);
    let got = log.all();
    let ids: Vec<Uuid> = got.iter().map(|d| d.event_id).collect();
    assert_eq!(ids, want.iter().map(|e| e.event_id).collect::<Vec<_>>());
    assert_eq!(got[10].attempt, 3);
    let times = times.lock().unwrap().clone();
    assert!(
        times[1] - times[0] >= Duration::from_millis(90),
        "{times:?}"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(190),
        "{times:?}"
    );
    own.drop(&channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_goes_to_the_dead_letter_queue_and_the_rest_goes_on() {
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let own = Own::create().await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 60).await;
    own.publish(&store).await;
    // A message no Annals publisher wrote: given up at once.
    channel
        .basic_publish(
            own.exchange.as_str().into(),
            format!("{}.stranger.Hello", own.prefix).as_str().into(),
            BasicPublishOptions::default(),
            b"hi",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let want = chosen(&store).await;
    let poison = want[5].event_id;
    let log = Log::default();
    let handler = {
        let log = log.clone();
        move |d: Delivery| {
            let log = log.clone();
            async move {
                if d.event_id == poison {
                    return Err("the payload makes no sense".into());
                }
                log.0.lock().unwrap().push(d);
                Ok(())
            }
        }
    };
    let backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(50));
    let consumed = own
        .consumer(
            ConsumerConfig::new()
                .with_backoff(backoff)
                .with_max_deliveries(3),
        )
        .drain(handler)
        .await
        .unwrap();
    assert_eq!((consumed.dead_lettered, consumed.retried), (2, 2));
    let rest: Vec<RecordedEvent> = want
        .iter()
        .filter(|e| e.event_id != poison)
        .cloned()
        .collect();
    assert_eq!(check_deliveries(&seen(&log.all()), &rest, false), 0);

    let dead = format!("{}.dead", own.queue);
    let mut letters = Vec::new();
    while let Some(m) = channel
        .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        letters.push(m.delivery);
    }
    assert_eq!(letters.len(), 2);
    let header = |d: &lapin::message::Delivery, name: &str| match d
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)?
    {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    };
    let poisoned = &letters[0];
    assert_eq!(
        poisoned
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string()),
        Some(poison.to_string())
    );
    assert_eq!(
        header(poisoned, dead_letter_headers::REASON).as_deref(),
        Some("the payload makes no sense")
    );
    assert_eq!(
        header(poisoned, dead_letter_headers::ATTEMPTS).as_deref(),
        Some("3")
    );
    assert!(header(poisoned, headers::STREAM).is_some());
    assert_eq!(poisoned.properties.delivery_mode(), &Some(2));
    let stranger = &letters[1];
    assert_eq!(stranger.data, b"hi");
    let reason = header(stranger, dead_letter_headers::REASON).unwrap();
    assert!(
        reason.contains("not a message of an Annals publisher"),
        "{reason}"
    );
    assert_eq!(
        header(stranger, dead_letter_headers::ATTEMPTS).as_deref(),
        Some("1")
    );
    own.drop(&channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_stop_stops_and_leaves_the_message_for_the_next_run() {
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let own = Own::create().await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 20).await;
    own.publish(&store).await;
    let want = chosen(&store).await;
    let poison = want[3].event_id;
    let config = || {
        ConsumerConfig::new()
            .with_backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(20),
            ))
            .with_max_deliveries(2)
            .with_poison(Poison::Stop)
    };
    let failing = move |d: Delivery| async move {
        if d.event_id == poison {
            Err("refused".into())
        } else {
            Ok(())
        }
    };
    let error = own.consumer(config()).drain(failing).await.unwrap_err();
    let BrokerError::Poisoned {
        event_id, attempts, ..
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!((*event_id, *attempts), (Some(poison), 2));
    let log = Log::default();
    own.consumer(config()).drain(log.handler()).await.unwrap();
    let got = log.all();
    assert_eq!(got[0].event_id, poison);
    // Marked redelivered: it counts the earlier process's delivery.
    assert_eq!(got[0].attempt, 2);
    assert_eq!(got.len(), want.len() - 3);
    own.drop(&channel).await;
}

/// Consumers aborted at random points 15 times, with an "inbox" that records ids with the
/// effect: every event's effect happens once, in each stream's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_consumers_lose_nothing_and_keep_the_order() {
    use rand::Rng;
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let own = Own::create().await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 400).await;
    own.publish(&store).await;
    let want = chosen(&store).await;
    let effects: Arc<Mutex<(HashSet<Uuid>, Vec<Delivery>)>> = Arc::default();
    let redelivered = Arc::new(Mutex::new(0usize));
    let handler = {
        let (effects, redelivered) = (effects.clone(), redelivered.clone());
        move |d: Delivery| {
            let (effects, redelivered) = (effects.clone(), redelivered.clone());
            async move {
                let pause = Duration::from_micros(rand::rng().random_range(0..1_000));
                tokio::time::sleep(pause).await;
                {
                    let mut state = effects.lock().unwrap();
                    if state.0.insert(d.event_id) {
                        state.1.push(d);
                    } else {
                        *redelivered.lock().unwrap() += 1;
                    }
                }
                // Killed here, the effect is done and the message not acknowledged.
                let pause = Duration::from_micros(rand::rng().random_range(0..1_000));
                tokio::time::sleep(pause).await;
                Ok(())
            }
        }
    };
    for _ in 0..15 {
        let consumer = own.consumer(ConsumerConfig::new());
        let run = consumer.run(handler.clone(), std::future::pending());
        let wait = Duration::from_millis(rand::rng().random_range(0..150));
        assert!(tokio::time::timeout(wait, run).await.is_err());
    }
    let before = effects.lock().unwrap().1.len();
    eprintln!(
        "the aborted consumers handled {before} of {} events",
        want.len()
    );
    own.consumer(ConsumerConfig::new())
        .drain(handler)
        .await
        .unwrap();
    let state = effects.lock().unwrap().clone();
    assert_eq!(check_deliveries(&seen(&state.1), &want, false), 0);
    eprintln!(
        "{} events, {} deliveries again after an abort",
        want.len(),
        redelivered.lock().unwrap()
    );
    own.drop(&channel).await;
}

/// The whole path of the issue, with RabbitMQ (which keeps no deduplication window, so a
/// publisher restarted mid-batch sends messages again): a publisher aborted at random points
/// 10 times, then a consumer aborted at random points 10 times, each delivery processed
/// through a SQLite `annals-inbox` whose effect (a row per event) commits with the id. Every
/// chosen event's effect is there exactly once, in its stream's order, whatever was
/// delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_publisher_and_consumer_behind_an_inbox_give_each_effect_once() {
    use annals_inbox::{Processed, SqliteInbox};
    use annals_projections::InMemoryLeases;
    use rand::Rng;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let own = Own::create().await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 600).await;
    let want = chosen(&store).await;

    // The publisher: its checkpoint and lease survive each abort, as a real one's would.
    let leases = InMemoryLeases::new();
    let checkpoint = MemoryReadModel::<()>::new("out").unwrap();
    let start = || {
        let runner = ProjectionRunner::new(store.clone())
            .with_leases(leases.clone())
            .with_config(fast());
        let rabbit = RabbitPublisher::new(url(), &own.exchange)
            .with_subjects(Subjects::prefixed(&own.prefix))
            .with_window(16);
        Publisher::new("out", filter(), rabbit)
            .add_to(
                &runner,
                checkpoint.clone(),
                ProjectionConfig::new()
                    .with_batch_size(40)
                    .with_progress(ProgressDisplay::Silent),
            )
            .unwrap();
        runner
    };
    for _ in 0..10 {
        let runner = start();
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..80))).await;
        drop(runner);
        tokio::time::sleep(Duration::from_millis(160)).await;
    }
    let runner = start();
    runner.catch_up(Duration::from_secs(60)).await.unwrap();
    runner.shutdown().await;

    // The consumer's own database: the inbox and the effect, one transaction per message.
    let dir = tempfile::tempdir().unwrap();
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(dir.path().join("consumer.sqlite"))
                .create_if_missing(true),
        )
        .await
        .unwrap();
    sqlx::query("CREATE TABLE effects (n INTEGER PRIMARY KEY AUTOINCREMENT, event_id BLOB NOT NULL, stream TEXT NOT NULL, version INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let inbox = SqliteInbox::new(pool.clone(), "effects").unwrap();
    inbox.migrate().await.unwrap();
    let duplicates = Arc::new(Mutex::new(0usize));
    let handler = {
        let (inbox, duplicates) = (inbox.clone(), duplicates.clone());
        move |d: Delivery| {
            let (inbox, duplicates) = (inbox.clone(), duplicates.clone());
            async move {
                let pause = Duration::from_micros(rand::rng().random_range(0..800));
                tokio::time::sleep(pause).await;
                let (id, stream, version) = (
                    d.event_id,
                    d.stream_id.to_string(),
                    i64::try_from(d.stream_version).unwrap(),
                );
                let processed = inbox
                    .process(id, |tx| {
                        Box::pin(async move {
                            sqlx::query(
                                "INSERT INTO effects (event_id, stream, version) VALUES (?1, ?2, ?3)",
                            )
                            .bind(id)
                            .bind(stream)
                            .bind(version)
                            .execute(&mut **tx)
                            .await?;
                            Ok(())
                        })
                    })
                    .await?;
                if matches!(processed, Processed::Duplicate) {
                    *duplicates.lock().unwrap() += 1;
                }
                // Aborted here, the effect is committed and the message not acknowledged.
                let pause = Duration::from_micros(rand::rng().random_range(0..800));
                tokio::time::sleep(pause).await;
                Ok(())
            }
        }
    };
    for _ in 0..10 {
        let consumer = own.consumer(ConsumerConfig::new());
        let run = consumer.run(handler.clone(), std::future::pending());
        let wait = Duration::from_millis(rand::rng().random_range(0..120));
        assert!(tokio::time::timeout(wait, run).await.is_err());
    }
    own.consumer(ConsumerConfig::new())
        .drain(handler)
        .await
        .unwrap();

    let rows: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT event_id, stream, version FROM effects ORDER BY n")
            .fetch_all(&pool)
            .await
            .unwrap();
    let ids: HashSet<Uuid> = rows.iter().map(|r| r.0).collect();
    assert_eq!(ids.len(), rows.len(), "an effect ran twice");
    let wanted: HashSet<Uuid> = want.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, wanted, "every chosen event's effect, and nothing else");
    let mut last: std::collections::HashMap<&str, i64> = Default::default();
    for (_, stream, version) in &rows {
        let before = last.insert(stream.as_str(), *version);
        assert!(
            before.is_none_or(|b| b < *version),
            "{stream}: effect of version {version} after {before:?}"
        );
    }
    eprintln!(
        "{} effects once each; the inbox dropped {} repeated deliveries",
        rows.len(),
        duplicates.lock().unwrap()
    );
    pool.close().await;
    own.drop(&channel).await;
}
