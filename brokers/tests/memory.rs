//! The publisher on the engine, against the in-process broker: the read-model conformance
//! suite, order and completeness across aborted runs and broken connections, refusals under
//! each failure policy, and an outage in the status.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use annals::InMemoryEventStore;
use annals_brokers::{BrokerBatch, BrokerModel, MemoryBroker, Publisher, Subjects, headers};
use annals_projections::{
    Backoff, FailurePolicy, InMemoryLeases, MemoryBatch, MemoryReadModel, ProgressDisplay,
    ProjectionConfig, ProjectionRunner, ProjectionState, ReadModel, testing::Target,
};
use common::{Seen, check_deliveries, chosen, fast, filter, seed, wait_status};

type Model = BrokerModel<MemoryBroker, MemoryReadModel<String>>;

/// The conformance suite's target: the broker model over an in-process read model, which
/// keeps the suite's documents.
#[derive(Default)]
struct BrokerTarget {
    models: Mutex<HashMap<String, Model>>,
}

impl Target for BrokerTarget {
    type Model = Model;

    async fn model(&self, name: &str) -> Model {
        let mut models = self.models.lock().unwrap();
        models
            .entry(name.to_owned())
            .or_insert_with(|| {
                BrokerModel::new(
                    Arc::new(MemoryBroker::new()),
                    MemoryReadModel::new(name).unwrap(),
                )
            })
            .clone()
    }

    fn put(&self, batch: &mut BrokerBatch<MemoryBatch<String>>, key: &str, value: &str) {
        batch.inner_mut().put(key, value.to_owned());
    }

    async fn dump(&self, model: &Model) -> Option<BTreeMap<String, String>> {
        model.inner().view().map(|v| v.with(|docs| docs.clone()))
    }
}

mod conformance {
    annals_projections::read_model_conformance_tests!(async {
        Some(super::BrokerTarget::default())
    });
}

fn config() -> ProjectionConfig {
    ProjectionConfig::new()
        .with_batch_size(40)
        .with_page_size(60)
        .with_progress(ProgressDisplay::Silent)
}

fn seen(broker: &MemoryBroker) -> Vec<Seen> {
    broker
        .messages()
        .into_iter()
        .map(|m| Seen {
            event_id: m.event_id,
            stream: m.stream_id.to_string(),
            version: m.stream_version,
        })
        .collect()
}

fn start(
    store: &InMemoryEventStore,
    leases: &InMemoryLeases,
    broker: &MemoryBroker,
    inner: &MemoryReadModel<()>,
    config: ProjectionConfig,
) -> ProjectionRunner<InMemoryEventStore> {
    let runner = ProjectionRunner::new(store.clone())
        .with_leases(leases.clone())
        .with_config(fast());
    Publisher::new("out", filter(), broker.clone())
        .add_to(&runner, inner.clone(), config)
        .unwrap();
    runner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_chosen_events_with_their_headers() {
    let store = InMemoryEventStore::new();
    seed(&store, 0, 300).await;
    let broker = MemoryBroker::with_subjects(Subjects::prefixed("shop"));
    let inner = MemoryReadModel::<()>::new("out").unwrap();
    let runner = start(&store, &InMemoryLeases::new(), &broker, &inner, config());
    runner.catch_up(Duration::from_secs(30)).await.unwrap();
    let want = chosen(&store).await;
    assert_eq!(check_deliveries(&seen(&broker), &want, false), 0);
    let messages = broker.messages();
    let first = &messages[0];
    assert_eq!(first.subject, format!("shop.order.{}", first.event_type));
    let event = want.iter().find(|e| e.event_id == first.event_id).unwrap();
    assert_eq!(first.payload.as_ref(), event.payload.as_str().as_bytes());
    assert_eq!(first.position, event.position);
    for message in &messages {
        let event = want
            .iter()
            .find(|e| e.event_id == message.event_id)
            .unwrap();
        assert_eq!(message.trace, annals_brokers::trace_context(event));
        assert_eq!(message.correlation_id, event.metadata.correlation_id);
    }
    let custom = messages.iter().filter(|m| {
        m.trace
            .as_ref()
            .is_some_and(|t| t.traceparent == common::TRACEPARENT)
    });
    assert!(custom.count() > 10);
    let own = messages.iter().filter(|m| {
        m.trace
            .as_ref()
            .is_some_and(|t| t.traceparent != common::TRACEPARENT)
    });
    assert!(own.count() > 10);
    assert_eq!(headers::TRACEPARENT, "traceparent");
    // Live events follow.
    let last = seed(&store, 300, 100).await;
    runner
        .wait_for_within("out", last, Duration::from_secs(30))
        .await
        .unwrap();
    check_deliveries(&seen(&broker), &chosen(&store).await, false);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_can_start_after_a_position() {
    let store = InMemoryEventStore::new();
    let before = seed(&store, 0, 100).await;
    seed(&store, 100, 100).await;
    let broker = MemoryBroker::new();
    let runner = ProjectionRunner::new(store.clone()).with_config(fast());
    Publisher::new("out", filter(), broker.clone())
        .starting_after(before)
        .add_to(
            &runner,
            MemoryReadModel::<()>::new("out").unwrap(),
            config(),
        )
        .unwrap();
    runner.catch_up(Duration::from_secs(30)).await.unwrap();
    let want: Vec<_> = chosen(&store)
        .await
        .into_iter()
        .filter(|e| e.position > before)
        .collect();
    check_deliveries(&seen(&broker), &want, false);
    runner.shutdown().await;
}

/// Runs aborted at random points (mid-publish included) and connections broken half-way
/// through batches, 20 times: every event is stored once, in each stream's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_runs_and_broken_connections_lose_nothing_and_keep_order() {
    use rand::Rng;
    let store = InMemoryEventStore::new();
    let leases = InMemoryLeases::new();
    seed(&store, 0, 600).await;
    let broker = MemoryBroker::new();
    let inner = MemoryReadModel::<()>::new("out").unwrap();
    for round in 0..20 {
        let (wait, cut) = {
            let mut rng = rand::rng();
            (rng.random_range(0..25u64), rng.random_range(0..80usize))
        };
        if round % 3 == 0 {
            broker.break_after(cut);
        }
        let runner = start(&store, &leases, &broker, &inner, config());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if round % 4 == 0 {
            seed(&store, 600 + round * 20, 20).await;
        }
        drop(runner);
        tokio::time::sleep(Duration::from_millis(160)).await;
    }
    let runner = start(&store, &leases, &broker, &inner, config());
    runner.catch_up(Duration::from_secs(30)).await.unwrap();
    check_deliveries(&seen(&broker), &chosen(&store).await, false);
    assert!(broker.received() >= broker.messages().len());
    runner.shutdown().await;
}

/// An unreachable broker shows as `Retrying` with its error; once it is back, the status is
/// running again and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shows_in_the_status_and_loses_nothing() {
    let store = InMemoryEventStore::new();
    seed(&store, 0, 100).await;
    let broker = MemoryBroker::new();
    let inner = MemoryReadModel::<()>::new("out").unwrap();
    let runner = start(&store, &InMemoryLeases::new(), &broker, &inner, config());
    runner.catch_up(Duration::from_secs(30)).await.unwrap();
    broker.set_down(true);
    let last = seed(&store, 100, 50).await;
    let status = wait_status(&runner, "out", common::retrying).await;
    let ProjectionState::Retrying { error, .. } = &status.state else {
        unreachable!()
    };
    assert!(error.contains("in-process broker"), "{error}");
    assert!(status.checkpoint < Some(last));
    broker.set_down(false);
    runner
        .wait_for_within("out", last, Duration::from_secs(30))
        .await
        .unwrap();
    let status = wait_status(&runner, "out", |s| s.state == ProjectionState::Running).await;
    assert_eq!(status.checkpoint, Some(last));
    check_deliveries(&seen(&broker), &chosen(&store).await, false);
    runner.shutdown().await;
}

fn refuse_stream_3(broker: &MemoryBroker) {
    broker.refuse(|m| (m.stream_id.as_str() == "order-3").then(|| "no route".to_owned()));
}

/// Under `Stop` a refused message stops the publisher at its event; a restart after the fix
/// publishes it and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_stops_the_publisher_by_default() {
    let store = InMemoryEventStore::new();
    let last = seed(&store, 0, 200).await;
    let broker = MemoryBroker::new();
    refuse_stream_3(&broker);
    let inner = MemoryReadModel::<()>::new("out").unwrap();
    let runner = start(&store, &InMemoryLeases::new(), &broker, &inner, config());
    let status = wait_status(&runner, "out", |s| {
        matches!(s.state, ProjectionState::Stopped(_))
    })
    .await;
    let ProjectionState::Stopped(reason) = &status.state else {
        unreachable!()
    };
    let refused = chosen(&store)
        .await
        .into_iter()
        .find(|e| e.stream_id.as_str() == "order-3")
        .unwrap();
    assert_eq!(reason.event_id, refused.event_id, "{reason}");
    assert!(
        reason.error.contains("refused the message: no route"),
        "{reason}"
    );
    assert!(status.checkpoint.is_none_or(|c| c < refused.position));
    broker.accept_all();
    runner.restart("out").await.unwrap();
    // `restart` only sends the request: wait until the supervisor has acted on it.
    wait_status(&runner, "out", |s| {
        !matches!(s.state, ProjectionState::Stopped(_))
    })
    .await;
    runner
        .wait_for_within("out", last, Duration::from_secs(30))
        .await
        .unwrap();
    check_deliveries(&seen(&broker), &chosen(&store).await, false);
    runner.shutdown().await;
}

/// Under `DeadLetter` refused messages are parked with the checkpoint and the rest goes on;
/// a requeue after the fix publishes a parked one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_are_parked_under_dead_letter() {
    let store = InMemoryEventStore::new();
    let last = seed(&store, 0, 200).await;
    let broker = MemoryBroker::new();
    refuse_stream_3(&broker);
    let inner = MemoryReadModel::<()>::new("out").unwrap();
    let runner = start(
        &store,
        &InMemoryLeases::new(),
        &broker,
        &inner,
        config().with_policy(FailurePolicy::DeadLetter),
    );
    runner
        .wait_for_within("out", last, Duration::from_secs(30))
        .await
        .unwrap();
    let refused: Vec<_> = chosen(&store)
        .await
        .into_iter()
        .filter(|e| e.stream_id.as_str() == "order-3")
        .collect();
    let letters = inner.dead_letters().await.unwrap();
    assert_eq!(letters.len(), refused.len());
    assert!(letters[0].error.contains("no route"), "{letters:?}");
    assert!(seen(&broker).iter().all(|s| s.stream != "order-3"));
    // The status counts the letters the publisher parked, without a restart.
    let count = u64::try_from(refused.len()).unwrap();
    let status = runner.watch("out").unwrap().borrow().clone();
    assert_eq!(status.dead_letters, count, "{status}");
    broker.accept_all();
    runner.requeue("out", letters[0].event_id).await.unwrap();
    let status = runner.watch("out").unwrap().borrow().clone();
    assert_eq!(status.dead_letters, count - 1, "{status}");
    assert!(
        broker
            .messages()
            .iter()
            .any(|m| m.event_id == letters[0].event_id)
    );
    assert_eq!(inner.dead_letters().await.unwrap().len(), refused.len() - 1);
    runner.shutdown().await;
}

/// Under `Retry` the batch is published again until the event was refused `attempts` times,
/// shown as `Retrying`; then `then` applies. A refusal that clears in time loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_are_retried_then_parked() {
    let store = InMemoryEventStore::new();
    let last = seed(&store, 0, 120).await;
    let broker = MemoryBroker::new();
    refuse_stream_3(&broker);
    let inner = MemoryReadModel::<()>::new("out").unwrap();
    let policy = FailurePolicy::retry_then_dead_letter(
        3,
        Backoff::new(Duration::from_millis(5), Duration::from_millis(20)),
    );
    let runner = start(
        &store,
        &InMemoryLeases::new(),
        &broker,
        &inner,
        config().with_policy(policy),
    );
    let status = wait_status(&runner, "out", common::retrying).await;
    let ProjectionState::Retrying { error, .. } = &status.state else {
        unreachable!()
    };
    assert!(error.contains("(try 1 of 3): no route"), "{error}");
    runner
        .wait_for_within("out", last, Duration::from_secs(30))
        .await
        .unwrap();
    let refused = chosen(&store)
        .await
        .into_iter()
        .filter(|e| e.stream_id.as_str() == "order-3")
        .count();
    let letters = inner.dead_letters().await.unwrap();
    assert_eq!(letters.len(), refused);
    assert!(letters.iter().all(|l| l.attempts == 3), "{letters:?}");
    runner.shutdown().await;
}
