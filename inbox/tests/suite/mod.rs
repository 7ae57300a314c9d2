//! The inbox conformance suite: the same checks, generic over a [`Backend`], run by every
//! inbox (PostgreSQL, SQLite, Redis) through [`inbox_suite!`].

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::Arc,
    time::Duration,
};

use annals_inbox::{InboxError, Processed};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use uuid::Uuid;

/// What the test effect does after it wrote its record of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Returns at once.
    Succeed,
    /// Fails (the inbox must roll its write back, or, in Redis, refuse before writing).
    Fail,
    /// Holds the transaction a little before returning, so that concurrent deliveries of
    /// the same id meet it in flight.
    Slow,
}

/// An inbox backend under test, with the effect the suite counts: each run of the effect
/// appends the message id to a log of its consumer, in the store of the inbox (so that
/// the inbox commits it with the id).
pub trait Backend: Send + Sync + 'static {
    /// The inbox type.
    type Inbox: Clone + Send + Sync + 'static;

    /// A migrated inbox of `consumer`, in this test's schema, file or key prefix.
    fn inbox(&self, consumer: &str) -> impl Future<Output = Self::Inbox> + Send;

    /// Builds an inbox of `consumer` (no I/O): the name checks.
    fn try_inbox(&self, consumer: &str) -> Result<(), InboxError>;

    /// Processes `id` with the test effect.
    fn deliver(
        &self,
        inbox: &Self::Inbox,
        id: Uuid,
        effect: Effect,
    ) -> impl Future<Output = Result<Processed<()>, InboxError>> + Send;

    /// Whether the inbox has `id` recorded.
    fn is_processed(&self, inbox: &Self::Inbox, id: Uuid) -> impl Future<Output = bool> + Send;

    /// Every run of the effect for `consumer`, sorted.
    fn effects(&self, consumer: &str) -> impl Future<Output = Vec<Uuid>> + Send;

    /// `prune(older_than)`, or `None` when the backend forgets by time to live instead.
    fn prune(
        &self,
        inbox: &Self::Inbox,
        older_than: Duration,
    ) -> impl Future<Output = Option<u64>> + Send;

    /// Removes this test's schema, file or keys.
    fn cleanup(&self) -> impl Future<Output = ()> + Send;
}

/// Runs each check as a test of its own, on a backend the factory makes fresh for it (a
/// factory gives `None` when the backend's server is unreachable outside CI).
#[macro_export]
macro_rules! inbox_suite {
    ($factory:expr) => {
        $crate::inbox_suite!(@each $factory;
            a_redelivery_changes_nothing,
            concurrent_deliveries_have_one_effect,
            a_failed_effect_records_nothing,
            consumers_are_independent,
            prune_forgets_old_ids,
            hostile_names_are_refused,
            random_deliveries_have_one_effect_per_successful_id,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(backend) = ($factory).await else { return };
                let backend = ::std::sync::Arc::new(backend);
                ::tokio::time::timeout(
                    ::std::time::Duration::from_secs(180),
                    $crate::suite::$name(backend.clone()),
                )
                .await
                .expect("inbox conformance check timed out after 180 s");
                $crate::suite::Backend::cleanup(&*backend).await;
            }
        )*
    };
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

/// A message processed twice (or five times) has its effect once; the inbox knows it.
pub async fn a_redelivery_changes_nothing<B: Backend>(backend: Arc<B>) {
    let inbox = backend.inbox("billing").await;
    let first = Uuid::now_v7();
    assert!(!backend.is_processed(&inbox, first).await);
    assert_eq!(
        backend
            .deliver(&inbox, first, Effect::Succeed)
            .await
            .unwrap(),
        Processed::Done(())
    );
    assert!(backend.is_processed(&inbox, first).await);
    for _ in 0..4 {
        let again = backend
            .deliver(&inbox, first, Effect::Succeed)
            .await
            .unwrap();
        assert!(again.is_duplicate(), "a redelivery ran the effect again");
    }
    let second = Uuid::now_v7();
    assert_eq!(
        backend
            .deliver(&inbox, second, Effect::Succeed)
            .await
            .unwrap(),
        Processed::Done(())
    );
    assert_eq!(
        backend.effects("billing").await,
        sorted(vec![first, second])
    );
}

/// 50 deliveries of one id racing in 50 tasks: exactly one runs the effect, the others see
/// a duplicate, none fails. Three ids, one after the other.
pub async fn concurrent_deliveries_have_one_effect<B: Backend>(backend: Arc<B>) {
    let inbox = backend.inbox("racing").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = Uuid::new_v4();
        ids.push(id);
        let start = Arc::new(tokio::sync::Barrier::new(50));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (backend, inbox, start) = (backend.clone(), inbox.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    backend.deliver(&inbox, id, Effect::Slow).await
                })
            })
            .collect();
        let (mut done, mut duplicates) = (0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Ok(Processed::Done(())) => done += 1,
                Ok(Processed::Duplicate) => duplicates += 1,
                Err(e) => panic!("a concurrent delivery failed: {e} ({e:?})"),
            }
        }
        assert_eq!((done, duplicates), (1, 49), "deliveries of {id}");
    }
    assert_eq!(backend.effects("racing").await, sorted(ids));
}

/// An effect that fails leaves no trace: not its writes, not the id; the message is
/// processed when it comes again, and after that a failing redelivery is a duplicate.
pub async fn a_failed_effect_records_nothing<B: Backend>(backend: Arc<B>) {
    let inbox = backend.inbox("flaky").await;
    let id = Uuid::new_v4();
    for _ in 0..2 {
        let error = backend.deliver(&inbox, id, Effect::Fail).await.unwrap_err();
        assert!(!error.is_transient(), "{error:?}");
        assert!(!backend.is_processed(&inbox, id).await);
    }
    assert!(backend.effects("flaky").await.is_empty());
    assert_eq!(
        backend.deliver(&inbox, id, Effect::Succeed).await.unwrap(),
        Processed::Done(())
    );
    // The effect does not run for a duplicate, so it cannot fail either.
    assert!(
        backend
            .deliver(&inbox, id, Effect::Fail)
            .await
            .unwrap()
            .is_duplicate()
    );
    assert_eq!(backend.effects("flaky").await, vec![id]);
}

/// Consumers (whose names differ by a character, by case, or are prefixes of each other)
/// keep their ids apart: the same id is new to each, and one consumer's ids never make
/// another's messages duplicates.
pub async fn consumers_are_independent<B: Backend>(backend: Arc<B>) {
    let names = ["orders", "orders-audit", "orders.audit", "Orders", "o"];
    let mut inboxes = Vec::new();
    for name in names {
        inboxes.push(backend.inbox(name).await);
    }
    let shared = Uuid::new_v4();
    for inbox in &inboxes {
        assert_eq!(
            backend
                .deliver(inbox, shared, Effect::Succeed)
                .await
                .unwrap(),
            Processed::Done(())
        );
    }
    // Ids each consumer sees alone.
    let mut own = BTreeMap::new();
    for (name, inbox) in names.iter().zip(&inboxes) {
        let id = Uuid::new_v4();
        backend
            .deliver(inbox, id, Effect::Succeed)
            .await
            .unwrap()
            .done()
            .unwrap();
        own.insert(*name, id);
    }
    for (name, inbox) in names.iter().zip(&inboxes) {
        assert!(
            backend
                .deliver(inbox, shared, Effect::Succeed)
                .await
                .unwrap()
                .is_duplicate()
        );
        for (other, id) in &own {
            assert_eq!(
                backend.is_processed(inbox, *id).await,
                other == name,
                "{name} knows {other}'s id"
            );
        }
        assert_eq!(
            backend.effects(name).await,
            sorted(vec![shared, own[name]]),
            "effects of {name}"
        );
    }
    // A message another consumer processed is new here.
    let late = Uuid::new_v4();
    backend
        .deliver(&inboxes[0], late, Effect::Succeed)
        .await
        .unwrap()
        .done()
        .unwrap();
    assert_eq!(
        backend
            .deliver(&inboxes[1], late, Effect::Succeed)
            .await
            .unwrap(),
        Processed::Done(())
    );
}

/// `prune(older_than)` forgets the consumer's ids at least that old, and only the
/// consumer's: a forgotten id is processed again (the trade-off of retention).
pub async fn prune_forgets_old_ids<B: Backend>(backend: Arc<B>) {
    let inbox = backend.inbox("pruned").await;
    let other = backend.inbox("kept").await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    backend
        .deliver(&inbox, a, Effect::Succeed)
        .await
        .unwrap()
        .done()
        .unwrap();
    backend
        .deliver(&inbox, b, Effect::Succeed)
        .await
        .unwrap()
        .done()
        .unwrap();
    backend
        .deliver(&other, a, Effect::Succeed)
        .await
        .unwrap()
        .done()
        .unwrap();
    let Some(young) = backend.prune(&inbox, Duration::from_secs(3600)).await else {
        eprintln!("notice: this backend forgets ids by time to live; no prune");
        return;
    };
    assert_eq!(young, 0, "ids younger than an hour were pruned");
    assert!(backend.is_processed(&inbox, a).await);
    // Timestamps have millisecond precision in SQLite.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(backend.prune(&inbox, Duration::ZERO).await, Some(2));
    assert!(!backend.is_processed(&inbox, a).await);
    assert!(
        backend.is_processed(&other, a).await,
        "another consumer's id was pruned"
    );
    assert_eq!(
        backend.deliver(&inbox, a, Effect::Succeed).await.unwrap(),
        Processed::Done(()),
        "a forgotten id is new again"
    );
    assert!(
        backend
            .deliver(&other, a, Effect::Succeed)
            .await
            .unwrap()
            .is_duplicate()
    );
    assert_eq!(backend.effects("pruned").await, sorted(vec![a, a, b]));
    assert_eq!(backend.prune(&inbox, Duration::MAX).await, Some(0));
}

/// Consumer names that are not plain are a typed error before any I/O; the store is
/// unharmed and a good name still works.
pub async fn hostile_names_are_refused<B: Backend>(backend: Arc<B>) {
    let long = "c".repeat(129);
    for name in [
        "",
        "x'; DROP TABLE annals_inbox; --",
        "x\"; DROP SCHEMA public CASCADE; --",
        "a:b",
        "{tag}",
        "a b",
        "line\nbreak",
        "nul\0",
        "*",
        "ünïcode",
        long.as_str(),
    ] {
        match backend.try_inbox(name) {
            Err(InboxError::InvalidName {
                what, name: got, ..
            }) => {
                assert_eq!(what, "consumer");
                assert_eq!(got, name);
            }
            other => panic!("{name:?} was accepted: {other:?}"),
        }
    }
    let inbox = backend.inbox("after-the-attack").await;
    let id = Uuid::new_v4();
    assert_eq!(
        backend.deliver(&inbox, id, Effect::Succeed).await.unwrap(),
        Processed::Done(())
    );
}

/// One delivery in a generated sequence.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    /// Which of the case's five ids.
    id: usize,
    /// Whether the effect fails.
    fail: bool,
}

/// Rounds of 1 to 4 deliveries run concurrently; ids repeat, a third of the effects fail.
fn rounds() -> impl Strategy<Value = Vec<Vec<Delivery>>> {
    let delivery =
        (0..5usize, proptest::bool::weighted(0.3)).prop_map(|(id, fail)| Delivery { id, fail });
    proptest::collection::vec(proptest::collection::vec(delivery, 1..=4), 1..=10)
}

/// Random sequences of deliveries, with duplicates, failures and concurrent rounds: the
/// effect runs exactly once per id that was processed successfully, a failing effect is
/// never recorded, an id processed before is always a duplicate, and the ids the inbox
/// knows are exactly those.
pub async fn random_deliveries_have_one_effect_per_successful_id<B: Backend>(backend: Arc<B>) {
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&rounds(), |rounds| {
        tokio::task::block_in_place(|| handle.block_on(check_rounds(&*backend, rounds)))
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

async fn check_rounds<B: Backend>(
    backend: &B,
    rounds: Vec<Vec<Delivery>>,
) -> Result<(), TestCaseError> {
    let consumer = format!("prop-{}", Uuid::new_v4().simple());
    let inbox = backend.inbox(&consumer).await;
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let mut done = BTreeSet::new();
    for round in rounds {
        let before = done.clone();
        let results = futures::future::join_all(round.iter().map(|d| {
            let effect = if d.fail {
                Effect::Fail
            } else {
                Effect::Succeed
            };
            backend.deliver(&inbox, ids[d.id], effect)
        }))
        .await;
        let mut duplicates = Vec::new();
        for (delivery, result) in round.iter().zip(results) {
            match result {
                Ok(Processed::Done(())) => {
                    prop_assert!(!delivery.fail, "a failing effect was recorded");
                    prop_assert!(done.insert(delivery.id), "a second effect for one id");
                }
                Ok(Processed::Duplicate) => duplicates.push(delivery.id),
                Err(e) => {
                    prop_assert!(delivery.fail, "a succeeding effect failed: {e:?}");
                    prop_assert!(
                        !before.contains(&delivery.id),
                        "the effect ran for an id processed before"
                    );
                }
            }
        }
        for id in duplicates {
            prop_assert!(done.contains(&id), "a duplicate of an id never processed");
        }
        for delivery in round.iter().filter(|d| !d.fail) {
            prop_assert!(
                done.contains(&delivery.id),
                "a successful delivery left no id"
            );
        }
    }
    let expected = sorted(done.iter().map(|&i| ids[i]).collect());
    prop_assert_eq!(backend.effects(&consumer).await, expected);
    for (i, id) in ids.iter().enumerate() {
        prop_assert_eq!(backend.is_processed(&inbox, *id).await, done.contains(&i));
    }
    Ok(())
}
