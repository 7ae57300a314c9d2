//! The NATS JetStream consumer against the real server (NATS_URL), each test with a stream,
//! subjects and dead-letter stream of its own: what a handler gets, acks after `Ok` only,
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
    BrokerError, ConsumerConfig, Delivery, NatsConsumer, NatsPublisher, Poison, Publisher,
    Subjects, dead_letter_headers, headers,
};
use annals_projections::{MemoryReadModel, ProgressDisplay, ProjectionConfig, ProjectionRunner};
use async_nats::jetstream::{self, stream};
use common::{Seen, check_deliveries, chosen, fast, filter, seed};
use uuid::Uuid;

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn jetstream() -> Option<jetstream::Context> {
    let connected = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url())).await;
    match connected {
        Ok(Ok(client)) => Some(jetstream::new(client)),
        other => {
            common::unreachable("NATS at NATS_URL", &format!("{other:?}"));
            None
        }
    }
}

/// A stream of the test's own taking `<prefix>.>`, and its dead-letter stream and subject.
struct Own {
    stream: String,
    prefix: String,
    dead_stream: String,
    dead_subject: String,
}

impl Own {
    async fn create(js: &jetstream::Context) -> Self {
        let own = Self {
            stream: common::unique("C"),
            prefix: common::unique("c"),
            dead_stream: common::unique("D"),
            dead_subject: common::unique("dead"),
        };
        js.create_stream(stream::Config {
            name: own.stream.clone(),
            subjects: vec![format!("{}.>", own.prefix)],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
        own
    }

    fn consumer(&self, config: ConsumerConfig) -> NatsConsumer {
        NatsConsumer::new(url(), &self.stream, "handler")
            .with_dead_letters(&self.dead_stream, &self.dead_subject)
            .with_ack_wait(Duration::from_millis(600))
            .with_config(config.with_idle_check(Duration::from_millis(300)))
    }

    /// Publishes the chosen events of `store` and waits until they are all in the stream.
    async fn publish(&self, store: &InMemoryEventStore) {
        let runner = ProjectionRunner::new(store.clone()).with_config(fast());
        let nats = NatsPublisher::new(url(), &self.stream)
            .with_subjects(Subjects::prefixed(&self.prefix))
            .with_window(64);
        Publisher::new("out", filter(), nats)
            .add_to(
                &runner,
                MemoryReadModel::<()>::new("out").unwrap(),
                ProjectionConfig::new().with_progress(ProgressDisplay::Silent),
            )
            .unwrap();
        runner.catch_up(Duration::from_secs(60)).await.unwrap();
        runner.shutdown().await;
    }

    async fn drop(self, js: &jetstream::Context) {
        js.delete_stream(&self.stream).await.unwrap();
        let _ = js.delete_stream(&self.dead_stream).await;
    }
}

/// What a handler saw: every delivery, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Delivery>>>);

impl Log {
    fn push(&self, d: &Delivery) {
        self.0.lock().unwrap().push(d.clone());
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
    let trace = annals_brokers::trace_context(e).map(|t| t.traceparent);
    assert_eq!(d.trace.as_ref().map(|t| t.to_traceparent()), trace);
    if let Some(parent) = &d.trace {
        assert_eq!(d.consume_trace.trace_id(), parent.trace_id());
        assert_ne!(d.consume_trace.span_id(), parent.span_id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hands_each_message_to_the_handler_once_in_order_with_its_headers() {
    let Some(js) = jetstream().await else { return };
    let own = Own::create(&js).await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 300).await;
    own.publish(&store).await;

    let log = Log::default();
    let handler = {
        let log = log.clone();
        move |d: Delivery| {
            let log = log.clone();
            async move {
                log.push(&d);
                Ok(())
            }
        }
    };
    // Several messages in flight: nothing fails, so the order holds.
    let consumed = own
        .consumer(ConsumerConfig::new().with_in_flight(32))
        .drain(handler)
        .await
        .unwrap();
    let want = chosen(&store).await;
    assert_eq!(consumed.handled, want.len() as u64);
    assert_eq!((consumed.retried, consumed.dead_lettered), (0, 0));
    let got = log.all();
    assert_eq!(check_deliveries(&seen(&got), &want, false), 0);
    for (d, e) in got.iter().zip(&want) {
        assert_same_event(d, e);
        assert_eq!(d.attempt, 1);
        assert_eq!(d.subject, format!("{}.order.{}", own.prefix, e.event_type));
    }
    // All acknowledged: a second drain finds nothing.
    let again = own
        .consumer(ConsumerConfig::new())
        .drain(|_d: Delivery| async { Err::<(), _>("nothing should come".into()) })
        .await
        .unwrap();
    assert_eq!(again.handled + again.retried, 0);
    own.drop(&js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_comes_again_after_the_backoff_before_anything_later() {
    let Some(js) = jetstream().await else { return };
    let own = Own::create(&js).await;
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
                if d.event_id == flaky && d.attempt < 3 {
                    times.lock().unwrap().push(Instant::now());
                    return Err(format!("not yet (attempt {})", d.attempt).into());
                }
                if d.event_id == flaky {
                    times.lock().unwrap().push(Instant::now());
                }
                log.push(&d);
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
    // In order, each once: the later messages waited for the failed one.
    assert_eq!(check_deliveries(&seen(&got), &want, false), 0);
    let ids: Vec<Uuid> = got.iter().map(|d| d.event_id).collect();
    assert_eq!(ids, want.iter().map(|e| e.event_id).collect::<Vec<_>>());
    assert_eq!(got[10].attempt, 3);
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 3);
    // Backoff: at least half the ceiling (100 ms, then 200 ms).
    assert!(
        times[1] - times[0] >= Duration::from_millis(90),
        "{times:?}"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(190),
        "{times:?}"
    );
    own.drop(&js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_goes_to_the_dead_letters_and_the_rest_goes_on() {
    let Some(js) = jetstream().await else { return };
    let own = Own::create(&js).await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 60).await;
    own.publish(&store).await;
    // A message no Annals publisher wrote: given up at once.
    js.publish(format!("{}.stranger.Hello", own.prefix), "hi".into())
        .await
        .unwrap()
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
                log.push(&d);
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
    assert_eq!(consumed.dead_lettered, 2);
    assert_eq!(consumed.retried, 2);
    let rest: Vec<RecordedEvent> = want
        .iter()
        .filter(|e| e.event_id != poison)
        .cloned()
        .collect();
    assert_eq!(check_deliveries(&seen(&log.all()), &rest, false), 0);

    let mut dead = js.get_stream(&own.dead_stream).await.unwrap();
    let info = dead.info().await.unwrap().state.clone();
    assert_eq!(info.messages, 2);
    let first = dead.get_raw_message(info.first_sequence).await.unwrap();
    let second = dead.get_raw_message(info.first_sequence + 1).await.unwrap();
    let header = |m: &jetstream::message::StreamMessage, n: &str| {
        m.headers.get(n).map(|v| v.as_str().to_owned())
    };
    let (poisoned, stranger) = if header(&first, "Nats-Msg-Id") == Some(poison.to_string()) {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(poisoned.subject.as_str(), own.dead_subject);
    assert_eq!(header(&poisoned, "Nats-Msg-Id"), Some(poison.to_string()));
    assert_eq!(
        header(&poisoned, dead_letter_headers::REASON).as_deref(),
        Some("the payload makes no sense")
    );
    assert_eq!(
        header(&poisoned, dead_letter_headers::ATTEMPTS).as_deref(),
        Some("3")
    );
    assert_eq!(
        header(&poisoned, dead_letter_headers::CONSUMER).as_deref(),
        Some("handler")
    );
    assert!(header(&poisoned, headers::STREAM).is_some());
    assert_eq!(stranger.payload.as_ref(), b"hi");
    let reason = header(&stranger, dead_letter_headers::REASON).unwrap();
    assert!(
        reason.contains("not a message of an Annals publisher"),
        "{reason}"
    );
    assert_eq!(
        header(&stranger, dead_letter_headers::ATTEMPTS).as_deref(),
        Some("1")
    );
    own.drop(&js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_stop_stops_and_leaves_the_message_for_the_next_run() {
    let Some(js) = jetstream().await else { return };
    let own = Own::create(&js).await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 20).await;
    own.publish(&store).await;
    let want = chosen(&store).await;
    let poison = want[3].event_id;
    let failing = move |d: Delivery| async move {
        if d.event_id == poison {
            Err("refused".into())
        } else {
            Ok(())
        }
    };
    let config = || {
        ConsumerConfig::new()
            .with_backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(20),
            ))
            .with_max_deliveries(2)
            .with_poison(Poison::Stop)
    };
    let error = own.consumer(config()).drain(failing).await.unwrap_err();
    let BrokerError::Poisoned {
        event_id, attempts, ..
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!((*event_id, *attempts), (Some(poison), 2));
    assert!(!error.is_transient());
    // The next run gets it again, first.
    let log = Log::default();
    let handler = {
        let log = log.clone();
        move |d: Delivery| {
            let log = log.clone();
            async move {
                log.push(&d);
                Ok(())
            }
        }
    };
    own.consumer(config()).drain(handler).await.unwrap();
    let got = log.all();
    assert_eq!(got[0].event_id, poison);
    assert!(got[0].attempt >= 3, "{}", got[0].attempt);
    assert_eq!(got.len(), want.len() - 3);
    own.drop(&js).await;
}

/// Consumers aborted at random points (mid-handler, between the handler and the ack) 15
/// times, with an "inbox" that records ids with the effect: every event's effect happens
/// once, in each stream's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_consumers_lose_nothing_and_keep_the_order() {
    use rand::Rng;
    let Some(js) = jetstream().await else { return };
    let own = Own::create(&js).await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 1_200).await;
    own.publish(&store).await;
    let want = chosen(&store).await;

    // The effect and the id, recorded together (as an inbox does in one transaction).
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
        // A killed consumer's message comes again after ack_wait: run long enough for that.
        let consumer = own
            .consumer(ConsumerConfig::new())
            .with_ack_wait(Duration::from_millis(200));
        let run = consumer.run(handler.clone(), std::future::pending());
        let wait = Duration::from_millis(rand::rng().random_range(0..700));
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
    own.drop(&js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_at_shutdown_and_a_consumer_started_first_waits_for_messages() {
    let Some(js) = jetstream().await else { return };
    let stream = common::unique("W");
    let prefix = common::unique("w");
    let config = stream::Config {
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::Memory,
        ..Default::default()
    };
    let log = Log::default();
    let handler = {
        let log = log.clone();
        move |d: Delivery| {
            let log = log.clone();
            async move {
                log.push(&d);
                Ok(())
            }
        }
    };
    // The consumer creates the stream and waits.
    let consumer = NatsConsumer::new(url(), &stream, "early")
        .create_stream(config.clone())
        .with_dead_letters(format!("{stream}_DEAD"), format!("{prefix}dead"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        consumer
            .run(handler, async {
                let _ = stopped.await;
            })
            .await
    });
    let store = InMemoryEventStore::new();
    seed(&store, 0, 40).await;
    let want = chosen(&store).await;
    let runner = ProjectionRunner::new(store.clone()).with_config(fast());
    Publisher::new(
        "out",
        filter(),
        NatsPublisher::new(url(), &stream)
            .with_subjects(Subjects::prefixed(&prefix))
            .create_stream(config),
    )
    .add_to(
        &runner,
        MemoryReadModel::<()>::new("out").unwrap(),
        ProjectionConfig::new().with_progress(ProgressDisplay::Silent),
    )
    .unwrap();
    runner.catch_up(Duration::from_secs(60)).await.unwrap();
    runner.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.all().len() < want.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    let consumed = running.await.unwrap().unwrap();
    assert_eq!(consumed.handled, want.len() as u64);
    assert_eq!(check_deliveries(&seen(&log.all()), &want, false), 0);
    js.delete_stream(&stream).await.unwrap();
    let _ = js.delete_stream(format!("{stream}_DEAD")).await;
}
