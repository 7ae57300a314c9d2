//! The runner against a real Redis: catch-up, live, read-your-writes, failure policies,
//! panics, fencing, blue/green rebuilds.

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use annals::{EventStore, ExpectedVersion, StreamId};
use annals_projections::{
    Backoff, Error, FailurePolicy, Generation, GenerationWriter, ProjectionConfig, ProjectionState,
    ReadModel, RedisReadModel, RunnerConfig,
};
use common::*;

fn fast() -> RunnerConfig {
    RunnerConfig::new()
        .with_lease_ttl(Duration::from_millis(500))
        .with_lease_poll(Duration::from_millis(20))
        .with_backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(200),
        ))
        .with_retire_grace(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_follows_live_and_reads_your_writes() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let store = seeded_store(1500).await;
    let model = RedisReadModel::with_namespace(redis.clone(), &ns, "balances").unwrap();
    assert!(
        model.view().await.unwrap().is_none(),
        "no model before the first build"
    );
    let runner = runner_with(
        &store,
        fast(),
        Balances::new("balances"),
        model.clone(),
        ProjectionConfig::new().with_batch_size(200),
    );
    let head = store.head_position().await.unwrap().unwrap();
    runner.wait_for("balances", head).await.unwrap();
    assert_balances(&model, &store).await;

    // Live: each append is visible once wait_for returns.
    for i in 0..20 {
        let done = store
            .append(
                &StreamId::new("acc-live").unwrap(),
                ExpectedVersion::Any,
                vec![deposit("live", 5, "x")],
            )
            .await
            .unwrap();
        runner
            .wait_for("balances", done.last_position)
            .await
            .unwrap();
        let view = model.view().await.unwrap().unwrap();
        assert_eq!(
            view.field("account:live", "balance").await.unwrap(),
            Some(((i + 1) * 5).to_string())
        );
    }
    let status = runner.status("balances").unwrap();
    assert_eq!(status.state, ProjectionState::Running);
    assert_eq!(status.lag, 0);
    assert_eq!(status.generation, Some(Generation(1)));
    let view = model.view().await.unwrap().unwrap();
    assert_eq!(view.checkpoint().await.unwrap(), status.checkpoint);
    assert_eq!(view.list("recent").await.unwrap().len(), 25);
    let top = view.top("ranking", 3).await.unwrap();
    assert_eq!(top.len(), 3);
    assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
    runner.shutdown().await;
    cleanup_redis(&redis, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_stops_at_its_position_by_default() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let (store, poison, after) = store_with_odd_event(100, "bad", "Poison", 50).await;
    let (runner, model) = run_balances(
        &store,
        &redis,
        &ns,
        fast(),
        ProjectionConfig::new().with_batch_size(64),
    );
    let err = runner.wait_for("balances", after).await.unwrap_err();
    let Error::Stopped(reason) = err else {
        panic!("expected a stop, got {err:?}")
    };
    assert_eq!(reason.position, poison);
    assert_eq!(reason.event_type, "Poison");
    assert!(reason.error.contains("poison event"), "{}", reason.error);
    let stored = store
        .read_all(annals::LogRead::after(annals::LogPosition::START))
        .collect_vec()
        .await;
    let poison_event = stored.iter().find(|e| e.position == poison).unwrap();
    assert_eq!(reason.event_id, poison_event.event_id);
    // The first build never completed, so nothing serves yet; the building generation's
    // checkpoint sits just before the poison event and nothing after it was applied.
    let status = runner.status("balances").unwrap();
    assert!(is_stopped(&status));
    assert!(model.view().await.unwrap().is_none());
    let gens = model.generations().await.unwrap();
    let mut writer = model.open_writer(gens.building.unwrap(), 99).await.unwrap();
    let before = stored
        .iter()
        .rev()
        .find(|e| e.position < poison)
        .unwrap()
        .position;
    assert_eq!(writer.checkpoint(), Some(before));
    let _ = writer.flush().await.unwrap();
    // A restart meets the same event again and stops again: never a silent skip.
    runner.restart("balances").await.unwrap();
    let err = runner.wait_for("balances", after).await.unwrap_err();
    assert!(matches!(err, Error::Stopped(r) if r.position == poison));
    drop(runner);
    cleanup_redis(&redis, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_policy_parks_and_goes_on() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let (store, poison, head) = store_with_odd_event(100, "bad", "Poison", 100).await;
    let policy = FailurePolicy::retry_then_dead_letter(
        3,
        Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
    );
    let (runner, model) = run_balances(
        &store,
        &redis,
        &ns,
        fast(),
        ProjectionConfig::new()
            .with_policy(policy)
            .with_batch_size(64),
    );
    runner.wait_for("balances", head).await.unwrap();
    assert_balances(&model, &store).await;
    let view = model.view().await.unwrap().unwrap();
    let letters = view.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].position, poison);
    assert_eq!(letters[0].attempts, 3);
    assert!(letters[0].error.contains("poison"));
    // The poison handler's own write (a million added to the total) was rolled back.
    let total: i64 = view.get("total").await.unwrap().unwrap().parse().unwrap();
    assert_eq!(total, expected_total(&store).await);
    runner.shutdown().await;
    cleanup_redis(&redis, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_retries_a_flaky_handler() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let (store, _, head) = store_with_odd_event(20, "f", "Flaky", 20).await;
    let model = RedisReadModel::with_namespace(redis.clone(), &ns, "balances").unwrap();
    let mut projection = Balances::new("balances");
    projection.flaky_failures = 2;
    let calls = projection.flaky_calls.clone();
    let policy = FailurePolicy::retry_then_stop(
        5,
        Backoff::new(Duration::from_millis(5), Duration::from_millis(20)),
    );
    let runner = runner_with(
        &store,
        fast(),
        projection,
        model.clone(),
        ProjectionConfig::new().with_policy(policy),
    );
    runner.wait_for("balances", head).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let view = model.view().await.unwrap().unwrap();
    assert_eq!(view.get("flaky").await.unwrap(), Some("1".to_owned()));
    assert!(view.dead_letters().await.unwrap().is_empty());
    assert_balances(&model, &store).await;

    // Retries exhausted: stop.
    let mut stubborn = Balances::new("stubborn");
    stubborn.flaky_failures = u32::MAX;
    let model2 = RedisReadModel::with_namespace(redis.clone(), &ns, "stubborn").unwrap();
    let policy = FailurePolicy::retry_then_stop(
        3,
        Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
    );
    let calls = stubborn.flaky_calls.clone();
    runner
        .add(
            stubborn,
            model2,
            ProjectionConfig::new().with_policy(policy),
        )
        .unwrap();
    let err = runner.wait_for("stubborn", head).await.unwrap_err();
    assert!(
        matches!(&err, Error::Stopped(r) if r.event_type == "Flaky"),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    drop(runner);
    cleanup_redis(&redis, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_stops_only_its_projection() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let (store, _, head) = store_with_odd_event(50, "p", "Panic", 50).await;
    let broken = RedisReadModel::with_namespace(redis.clone(), &ns, "broken").unwrap();
    let runner = runner_with(
        &store,
        fast(),
        Balances::new("broken"),
        broken,
        ProjectionConfig::new(),
    );
    // Same projection type, but this one does not want `Panic` events.
    let healthy = RedisReadModel::with_namespace(redis.clone(), &ns, "healthy").unwrap();
    runner
        .add(
            Healthy(Balances::new("healthy")),
            healthy.clone(),
            ProjectionConfig::new(),
        )
        .unwrap();
    let err = runner.wait_for("broken", head).await.unwrap_err();
    assert!(
        matches!(&err, Error::Stopped(r) if r.error.contains("handler panicked: handler exploded")),
        "{err:?}"
    );
    runner.wait_for("healthy", head).await.unwrap();
    assert_balances(&healthy, &store).await;
    let more = seed(&store, 100, 10).await;
    runner.wait_for("healthy", more).await.unwrap();
    assert_balances(&healthy, &store).await;
    drop(runner);
    cleanup_redis(&redis, &ns).await;
}

struct Healthy(Balances);

impl annals_projections::Projection for Healthy {
    type Model = RedisReadModel;
    fn name(&self) -> &str {
        self.0.name()
    }
    fn filter(&self) -> annals_projections::EventFilter {
        annals_projections::EventFilter::types(["Deposited"])
    }
    fn handle(
        &self,
        event: &annals::RecordedEvent,
        batch: &mut annals_projections::RedisBatch,
    ) -> Result<(), annals::BoxError> {
        self.0.handle(event, batch)
    }
}

#[tokio::test]
async fn a_fenced_writer_cannot_write() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let model = RedisReadModel::with_namespace(redis.clone(), &ns, "balances").unwrap();
    let (generation, mut old) = begin_writing(&model).await;
    let mut batch = old.batch();
    batch.incrby("total", 1);
    let first = annals::LogPosition::serial(1);
    assert_eq!(
        old.write(batch, first, annals_projections::Durability::Now)
            .await
            .unwrap(),
        Some(first)
    );

    // A new owner claims the projection and the generation with fence 2 …
    let gens = model.claim(2, uuid::Uuid::nil()).await.unwrap();
    assert_eq!(gens.building, Some(generation));
    let mut new = model.open_writer(generation, 2).await.unwrap();
    assert_eq!(new.checkpoint(), Some(first));
    // … so the paused old owner's next write, switch and claim are all refused.
    let mut batch = old.batch();
    batch.incrby("total", 100);
    let err = old
        .write(
            batch,
            annals::LogPosition::serial(2),
            annals_projections::Durability::Now,
        )
        .await
        .unwrap_err();
    assert_fenced_out(&model, generation, err).await;
    assert!(
        model
            .open_writer(generation, 1)
            .await
            .unwrap_err()
            .is_ownership_lost()
    );

    // The new owner's replay of an already committed batch is refused (checkpoint moved),
    // and nothing of it lands.
    let mut stale = model.open_writer(generation, 2).await.unwrap();
    let mut batch = new.batch();
    batch.incrby("total", 10);
    new.write(
        batch,
        annals::LogPosition::serial(2),
        annals_projections::Durability::Now,
    )
    .await
    .unwrap();
    let mut batch = stale.batch();
    batch.incrby("total", 10);
    let err = stale
        .write(
            batch,
            annals::LogPosition::serial(2),
            annals_projections::Durability::Now,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::CheckpointMoved { .. }) && err.is_transient(),
        "{err:?}"
    );

    // A batch using a key as the wrong type is refused whole.
    let mut batch = new.batch();
    batch.incrby("other", 5);
    batch.hset("total", "f", "v");
    assert!(!batch.is_empty());
    let err = new
        .write(
            batch,
            annals::LogPosition::serial(3),
            annals_projections::Durability::Now,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    model.switch(generation, 2).await.unwrap();
    let view = model.view().await.unwrap().unwrap();
    assert_eq!(view.get("total").await.unwrap(), Some("11".to_owned()));
    assert_eq!(view.get("other").await.unwrap(), None);
    assert_eq!(
        view.checkpoint().await.unwrap(),
        Some(annals::LogPosition::serial(2))
    );
    cleanup_redis(&redis, &ns).await;
}

trait CollectVec {
    async fn collect_vec(self) -> Vec<annals::RecordedEvent>;
}

impl<'a> CollectVec for futures::stream::BoxStream<'a, annals::Result<annals::RecordedEvent>> {
    async fn collect_vec(self) -> Vec<annals::RecordedEvent> {
        use futures::TryStreamExt;
        self.try_collect().await.unwrap()
    }
}
