//! The conformance suite every read-model target passes (feature `testing`), as the event
//! stores share theirs: atomic batch and checkpoint, lookups read through pending writes and
//! kept across restarts and rebuilds, fencing, generations, rebuilds aborted at any point,
//! a replaced event store, dead letters.
//!
//! A target implements [`Target`] (a fresh model, a `put` into its batch, a dump of what
//! readers see) and runs the suite with [`read_model_conformance_tests!`]:
//!
//! ```ignore
//! annals_projections::read_model_conformance_tests!(MemoryTarget);
//! ```
//!
//! The suite's projection, [`Accounts`], keeps a running total per account *in its lookups*
//! (`total:<account>`) and writes `owner:total` per account into the read model: a lookup
//! lost, doubled or read stale shows as a wrong total.
//!
//! [`read_model_conformance_tests!`]: crate::read_model_conformance_tests

mod saga;

pub use saga::{SagaTest, Then};

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use annals::{
    BoxError, EventStore, EventType, ExpectedVersion, InMemoryEventStore, LogPosition, NewEvent,
    Payload, RecordedEvent, StreamId,
};
use futures::TryStreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{
    Backoff, Durability, Error, EventFilter, FailurePolicy, GenerationWriter, InMemoryLeases,
    LookupKeys, ProgressDisplay, Projection, ProjectionConfig, ProjectionRunner, ProjectionState,
    ProjectionStatus, ReadModel, RunnerConfig, StoreChange, WriteBatch,
};

/// A read-model target under test.
pub trait Target: Send + Sync + 'static {
    /// The read model.
    type Model: ReadModel + Clone;

    /// A fresh, empty read model for projection `name`, apart from every other test's
    /// (its own namespace, directory or schema). Several calls with one name in one test
    /// must return handles to the same model.
    fn model(&self, name: &str) -> impl Future<Output = Self::Model> + Send;

    /// Adds "set `key` to `value`" to a batch (replacing any earlier value).
    fn put(&self, batch: &mut <Self::Model as ReadModel>::Batch, key: &str, value: &str);

    /// Every key and value readers see now (`None` before the first build switched in).
    fn dump(
        &self,
        model: &Self::Model,
    ) -> impl Future<Output = Option<BTreeMap<String, String>>> + Send;
}

/// What the suite's events carry.
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    #[serde(default)]
    owner: String,
    #[serde(default)]
    amount: i64,
}

/// The suite's projection: per account, its owner (from its `Opened` event, read back by
/// later events through lookups) and its running total (kept in lookups).
pub struct Accounts<T: Target> {
    name: String,
    target: Arc<T>,
    /// While false, `Poison` events fail.
    fixed: Arc<AtomicBool>,
}

impl<T: Target> std::fmt::Debug for Accounts<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<T: Target> Accounts<T> {
    /// The projection `name` writing through `target`.
    pub fn new(name: &str, target: Arc<T>) -> Self {
        Self {
            name: name.to_owned(),
            target,
            fixed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn with_fix(name: &str, target: Arc<T>, fixed: Arc<AtomicBool>) -> Self {
        Self {
            name: name.to_owned(),
            target,
            fixed,
        }
    }
}

fn account_of(event: &RecordedEvent) -> &str {
    event
        .stream_id
        .as_str()
        .split_once('-')
        .map_or("", |(_, a)| a)
}

impl<T: Target> Projection for Accounts<T> {
    type Model = T::Model;

    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        EventFilter::types(["Opened", "Deposited", "Poison"]).and_categories(["acct"])
    }

    fn lookups(&self, event: &RecordedEvent, keys: &mut LookupKeys) {
        if event.event_type.as_str() == "Deposited" {
            let account = account_of(event);
            keys.add(format!("owner:{account}"));
            keys.add(format!("total:{account}"));
        }
    }

    fn handle(
        &self,
        event: &RecordedEvent,
        batch: &mut <Self::Model as ReadModel>::Batch,
    ) -> Result<(), BoxError> {
        let account = account_of(event);
        let body: Body = event.payload.deserialize()?;
        match event.event_type.as_str() {
            "Opened" => {
                batch
                    .lookups_mut()
                    .set(format!("owner:{account}"), &body.owner)?;
                batch.lookups_mut().set(format!("total:{account}"), &0i64)?;
                self.target.put(
                    batch,
                    &format!("acct:{account}"),
                    &format!("{}:0", body.owner),
                );
            }
            "Deposited" => {
                let owner: String = batch
                    .lookups()
                    .get(&format!("owner:{account}"))?
                    .ok_or("a deposit before its account was opened")?;
                let total: i64 = batch
                    .lookups()
                    .get(&format!("total:{account}"))?
                    .unwrap_or(0)
                    + body.amount;
                batch
                    .lookups_mut()
                    .set(format!("total:{account}"), &total)?;
                self.target.put(
                    batch,
                    &format!("acct:{account}"),
                    &format!("{owner}:{total}"),
                );
            }
            _ => {
                // Poison: fails until fixed; writes a marker once handled.
                if !self.fixed.load(Ordering::SeqCst) {
                    return Err(format!("poison {}", event.event_id).into());
                }
                self.target
                    .put(batch, &format!("poison:{}", event.event_id), "handled");
            }
        }
        Ok(())
    }
}

fn event(event_type: &str, body: &Body) -> NewEvent {
    NewEvent::new(
        EventType::new(event_type).unwrap_or_else(|e| panic!("{e}")),
        1,
        Payload::from_serialize(body).unwrap_or_else(|e| panic!("{e}")),
    )
}

/// Appends `n` events after `from` (an account opens on its first event, each account
/// gets deposits; every 13th event is `Deposited` in another category, which the filter
/// must drop; every `poison_every`th is a `Poison` on an account, 0 for none). Returns the
/// last position.
pub async fn seed(
    store: &InMemoryEventStore,
    from: usize,
    n: usize,
    poison_every: usize,
) -> LogPosition {
    let mut last = LogPosition::START;
    for i in from..from + n {
        let account = i % 23;
        let stream = StreamId::new(format!("acct-{account}")).unwrap_or_else(|e| panic!("{e}"));
        let version = store.stream_version(&stream).await.unwrap_or(0);
        let (stream, e) = if version == 0 {
            let body = Body {
                owner: format!("owner {account}"),
                amount: 0,
            };
            (stream, event("Opened", &body))
        } else if i % 13 == 0 {
            let other = StreamId::new(format!("other-{account}")).unwrap_or_else(|e| panic!("{e}"));
            let body = Body {
                owner: String::new(),
                amount: 1_000_000,
            };
            (other, event("Deposited", &body))
        } else if poison_every > 0 && i % poison_every == 0 {
            (
                stream,
                event(
                    "Poison",
                    &Body {
                        owner: String::new(),
                        amount: 0,
                    },
                ),
            )
        } else {
            let body = Body {
                owner: String::new(),
                amount: (i % 97) as i64 + 1,
            };
            (stream, event("Deposited", &body))
        };
        last = store
            .append(&stream, ExpectedVersion::Any, vec![e])
            .await
            .unwrap_or_else(|e| panic!("append: {e}"))
            .last_position;
    }
    last
}

/// What [`Accounts`] should show for `store`'s events (`handled`: whether poison events
/// were handled).
pub async fn expected(store: &InMemoryEventStore, handled: bool) -> BTreeMap<String, String> {
    let events: Vec<RecordedEvent> = store
        .read_all(annals::LogRead::from_start())
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    let mut owners = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.stream_id.category() == "acct") {
        let account = account_of(e).to_owned();
        let body: Body = e.payload.deserialize().unwrap_or_else(|e| panic!("{e}"));
        match e.event_type.as_str() {
            "Opened" => {
                owners.insert(account.clone(), body.owner);
                totals.insert(account.clone(), 0);
            }
            "Deposited" => *totals.entry(account.clone()).or_default() += body.amount,
            _ => {
                if handled {
                    out.insert(format!("poison:{}", e.event_id), "handled".to_owned());
                }
            }
        }
        let owner = owners.get(&account).cloned().unwrap_or_default();
        out.insert(
            format!("acct:{account}"),
            format!("{owner}:{}", totals.get(&account).copied().unwrap_or(0)),
        );
    }
    out
}

fn fast() -> RunnerConfig {
    RunnerConfig::new()
        .with_lease_ttl(Duration::from_millis(150))
        .with_lease_poll(Duration::from_millis(10))
        .with_backoff(Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .with_retire_grace(Duration::from_millis(50))
        .with_status_interval(Duration::from_millis(50))
}

fn small_batches() -> ProjectionConfig {
    ProjectionConfig::new()
        .with_batch_size(37)
        .with_page_size(50)
        .with_progress(ProgressDisplay::Silent)
}

fn runner<T: Target, S: EventStore + Clone + 'static>(
    store: &S,
    leases: &InMemoryLeases,
    projection: Accounts<T>,
    model: T::Model,
    config: ProjectionConfig,
) -> ProjectionRunner<S> {
    let runner = ProjectionRunner::new(store.clone())
        .with_leases(leases.clone())
        .with_config(fast());
    runner
        .add(projection, model, config)
        .unwrap_or_else(|e| panic!("add: {e}"));
    runner
}

const WAIT: Duration = Duration::from_secs(60);

async fn wait_status<S: EventStore + Clone + 'static>(
    runner: &ProjectionRunner<S>,
    name: &str,
    check: impl Fn(&ProjectionStatus) -> bool,
) -> ProjectionStatus {
    let mut rx = runner.watch(name).unwrap_or_else(|e| panic!("{e}"));
    let found = tokio::time::timeout(WAIT, async {
        loop {
            {
                let s = rx.borrow_and_update();
                if check(&s) {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("status never matched; last: {:?}", runner.status(name)))
}

async fn dump<T: Target>(target: &T, model: &T::Model) -> BTreeMap<String, String> {
    target
        .dump(model)
        .await
        .unwrap_or_else(|| panic!("no generation serves"))
}

/// Catches up, follows live, reads its writes; lookups set by one event are read by the
/// next in the same batch and in later batches; events of other categories never arrive;
/// the status counts lag in events and ends at 0.
pub async fn catch_up_and_follow<T: Target>(target: T) {
    let target = Arc::new(target);
    let store = InMemoryEventStore::new();
    seed(&store, 0, 300, 0).await;
    let model = target.model("accounts").await;
    let projection = Accounts::new("accounts", target.clone());
    let runner = runner(
        &store,
        &InMemoryLeases::new(),
        projection,
        model.clone(),
        small_batches(),
    );
    let statuses = runner
        .catch_up(WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(statuses.len(), 1);
    assert_eq!(
        dump(target.as_ref(), &model).await,
        expected(&store, false).await
    );
    let last = seed(&store, 300, 200, 0).await;
    runner
        .wait_for_within("accounts", last, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        dump(target.as_ref(), &model).await,
        expected(&store, false).await
    );
    let status = wait_status(&runner, "accounts", |s| {
        s.lag == 0 && s.measured_at.is_some() && s.head == Some(last)
    })
    .await;
    assert!(status.is_caught_up(), "{status}");
    // Another process sees the same from the read model and the store alone.
    let seen = crate::inspect(&store, &model)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen.checkpoint, Some(last), "{seen}");
    assert_eq!((seen.lag, seen.head), (0, Some(last)), "{seen}");
    assert_eq!(seen.built_from_this_store, Some(true), "{seen}");
    assert_eq!(seen.generations.current, status.generation, "{seen}");
    // A position the log will not reach in time: the wait ends with the status, not never.
    let beyond = LogPosition::serial(last.sequence + 10);
    let err = runner
        .wait_for_within("accounts", beyond, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    runner.shutdown().await;
}

/// A new runner resumes from a mid-log checkpoint and still knows every owner and total
/// (lookups persisted with the batches), ending exactly like one uninterrupted run.
pub async fn restart_from_a_mid_log_checkpoint<T: Target>(target: T) {
    let target = Arc::new(target);
    let store = InMemoryEventStore::new();
    let leases = InMemoryLeases::new();
    let first = seed(&store, 0, 400, 0).await;
    let model = target.model("accounts").await;
    let run = runner(
        &store,
        &leases,
        Accounts::new("accounts", target.clone()),
        model.clone(),
        small_batches(),
    );
    run.wait_for_within("accounts", first, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    run.shutdown().await;
    seed(&store, 400, 400, 0).await;
    let run = runner(
        &store,
        &leases,
        Accounts::new("accounts", target.clone()),
        model.clone(),
        small_batches(),
    );
    run.catch_up(WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        dump(target.as_ref(), &model).await,
        expected(&store, false).await
    );
    // And after an abort (a crash) in the middle of a live run.
    seed(&store, 800, 100, 0).await;
    drop(run);
    seed(&store, 900, 100, 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let run = runner(
        &store,
        &leases,
        Accounts::new("accounts", target.clone()),
        model.clone(),
        small_batches(),
    );
    run.catch_up(WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        dump(target.as_ref(), &model).await,
        expected(&store, false).await
    );
    run.shutdown().await;
}

/// Runners aborted at random points of catch-ups and rebuilds, 20 times, end exactly like
/// a clean run: every batch landed whole with its checkpoint or not at all, lookups
/// included.
pub async fn aborted_runs_equal_a_clean_run<T: Target>(target: T) {
    let target = Arc::new(target);
    let store = InMemoryEventStore::new();
    let leases = InMemoryLeases::new();
    seed(&store, 0, 600, 0).await;
    let model = target.model("accounts").await;
    for round in 0..20 {
        let run = runner(
            &store,
            &leases,
            Accounts::new("accounts", target.clone()),
            model.clone(),
            small_batches(),
        );
        let (wait, rebuild) = {
            let mut rng = rand::rng();
            (rng.random_range(0..30u64), rng.random_bool(0.6))
        };
        if rebuild {
            // Sends the request; the zero timeout cuts the wait for its completion.
            let _ = tokio::time::timeout(Duration::ZERO, run.rebuild("accounts")).await;
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if round % 4 == 0 {
            seed(&store, 600 + round * 10, 10, 0).await;
        }
        drop(run);
        // Let the dead owner's lease expire, as after a real crash.
        tokio::time::sleep(Duration::from_millis(160)).await;
    }
    let run = runner(
        &store,
        &leases,
        Accounts::new("accounts", target.clone()),
        model.clone(),
        small_batches(),
    );
    run.catch_up(WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    let head = store.head_position().await.ok().flatten();
    wait_status(&run, "accounts", |s| {
        s.rebuild.is_none() && s.checkpoint == head
    })
    .await;
    let aborted = dump(target.as_ref(), &model).await;
    assert_eq!(aborted, expected(&store, false).await);
    // A rebuild from scratch agrees.
    run.rebuild("accounts")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dump(target.as_ref(), &model).await, aborted);
    run.shutdown().await;
}

/// A rebuild makes the lookups again from the log: a new generation gets the same owners and
/// totals, and readers switch to it whole.
pub async fn rebuilds_make_lookups_again<T: Target>(target: T) {
    let target = Arc::new(target);
    let store = InMemoryEventStore::new();
    seed(&store, 0, 500, 0).await;
    let model = target.model("accounts").await;
    let run = runner(
        &store,
        &InMemoryLeases::new(),
        Accounts::new("accounts", target.clone()),
        model.clone(),
        small_batches(),
    );
    run.catch_up(WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    let before = run.status("accounts").and_then(|s| s.generation);
    let report = run
        .rebuild("accounts")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(Some(report.generation) > before);
    seed(&store, 500, 50, 0).await;
    run.catch_up(WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        dump(target.as_ref(), &model).await,
        expected(&store, false).await
    );
    run.shutdown().await;
}

/// Once a new owner has claimed the projection and its generation with a higher fence, the
/// old owner's write, switch and claim are refused, and nothing of its batch lands.
pub async fn fenced_owners_cannot_write<T: Target>(target: T) {
    let target = Arc::new(target);
    let model = target.model("accounts").await;
    let store = uuid::Uuid::new_v4();
    model
        .claim(1, store)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let generation = model.begin_build(1).await.unwrap_or_else(|e| panic!("{e}"));
    let mut old = model
        .open_writer(generation, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut batch = old.batch();
    target.put(&mut batch, "a", "1");
    old.write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    old.flush().await.unwrap_or_else(|e| panic!("{e}"));
    // tantivy allows one writer per index: the old one must be gone before the new opens.
    drop(old);
    model
        .claim(2, store)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut new = model
        .open_writer(generation, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(new.checkpoint(), Some(LogPosition::serial(1)));
    let mut batch = new.batch();
    target.put(&mut batch, "b", "2");
    new.write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    new.flush().await.unwrap_or_else(|e| panic!("{e}"));
    drop(new);
    // The paused old owner comes back with fence 1.
    match model.open_writer(generation, 1).await {
        Err(err) => assert!(err.is_ownership_lost(), "{err:?}"),
        Ok(_) => panic!("a writer opened with a fence lower than one seen"),
    }
    assert!(
        model
            .switch(generation, 1)
            .await
            .unwrap_err()
            .is_ownership_lost()
    );
    assert!(model.claim(1, store).await.unwrap_err().is_ownership_lost());
    model
        .switch(generation, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = dump(target.as_ref(), &model).await;
    assert_eq!(seen.get("a").map(String::as_str), Some("1"));
    assert_eq!(seen.get("b").map(String::as_str), Some("2"));
}

/// A read model built from one store and then run over another (the store was recreated)
/// stops with a clear error by default, keeping readers on the old model and never
/// reporting progress it did not make; with [`StoreChange::Rebuild`] it is rebuilt from the
/// new store.
pub async fn a_replaced_store_is_never_followed_silently<T: Target>(target: T) {
    let target = Arc::new(target);
    let old = InMemoryEventStore::new();
    seed(&old, 0, 300, 0).await;
    let model = target.model("accounts").await;
    let leases = InMemoryLeases::new();
    let run = runner(
        &old,
        &leases,
        Accounts::new("accounts", target.clone()),
        model.clone(),
        small_batches(),
    );
    run.catch_up(WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    run.shutdown().await;
    let built = dump(target.as_ref(), &model).await;

    // A new store with fewer events: positions start again at 1.
    let new = InMemoryEventStore::new();
    let last = seed(&new, 1000, 40, 0).await;
    let run = runner(
        &new,
        &leases,
        Accounts::new("accounts", target.clone()),
        model.clone(),
        small_batches(),
    );
    let err = run
        .wait_for_within("accounts", last, WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
    let status = run.status("accounts").unwrap_or_else(|| panic!("status"));
    let ProjectionState::Failed { error } = &status.state else {
        panic!("expected a failure, got {status}");
    };
    assert!(error.contains("built from event store"), "{error}");
    assert_eq!(status.checkpoint, None, "{status}");
    assert_eq!(
        dump(target.as_ref(), &model).await,
        built,
        "readers keep the old model"
    );
    run.shutdown().await;

    let run = runner(
        &new,
        &leases,
        Accounts::new("accounts", target.clone()),
        model.clone(),
        small_batches().on_store_change(StoreChange::Rebuild),
    );
    run.catch_up(WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        dump(target.as_ref(), &model).await,
        expected(&new, false).await
    );
    run.shutdown().await;
}

/// Poison events are parked (counted in the status, builds included), requeued after a fix
/// (handled, letter gone, in one write) or skipped, and a rebuild re-creates the letters of
/// events that still fail.
pub async fn dead_letters_park_requeue_and_skip<T: Target>(target: T) {
    let target = Arc::new(target);
    let store = InMemoryEventStore::new();
    seed(&store, 0, 400, 29).await;
    let model = target.model("accounts").await;
    let fixed = Arc::new(AtomicBool::new(false));
    let config = small_batches().with_policy(FailurePolicy::DeadLetter);
    let run = runner(
        &store,
        &InMemoryLeases::new(),
        Accounts::with_fix("accounts", target.clone(), fixed.clone()),
        model.clone(),
        config,
    );
    run.catch_up(WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    let letters = model.dead_letters().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(letters.len() >= 5, "{} letters", letters.len());
    let parked = letters.len() as u64;
    // Parked during the first build, counted once it serves.
    assert_eq!(run.status("accounts").map(|s| s.dead_letters), Some(parked));
    assert_eq!(
        dump(target.as_ref(), &model).await,
        expected(&store, false).await
    );

    // A rebuild while still broken parks them all again, in the new generation.
    run.rebuild("accounts")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        model
            .dead_letters()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .len() as u64,
        parked
    );
    assert_eq!(run.status("accounts").map(|s| s.dead_letters), Some(parked));

    // Still broken: a requeue fails and keeps the letter.
    let first = letters[0].event_id;
    let err = run.requeue("accounts", first).await.unwrap_err();
    assert!(matches!(err, Error::Stopped(_)), "{err:?}");
    // Fixed: requeue handles it and removes the letter; skip removes another unhandled.
    fixed.store(true, Ordering::SeqCst);
    run.requeue("accounts", first)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = letters[1].event_id;
    run.skip("accounts", second)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = run.skip("accounts", second).await.unwrap_err();
    assert!(matches!(err, Error::NoDeadLetter { .. }), "{err:?}");
    let left: Vec<_> = model
        .dead_letters()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|l| l.event_id)
        .collect();
    assert_eq!(left.len() as u64, parked - 2);
    assert!(!left.contains(&first) && !left.contains(&second));
    assert_eq!(
        run.status("accounts").map(|s| s.dead_letters),
        Some(parked - 2)
    );
    let seen = dump(target.as_ref(), &model).await;
    assert_eq!(
        seen.get(&format!("poison:{first}")).map(String::as_str),
        Some("handled")
    );
    assert!(!seen.contains_key(&format!("poison:{second}")));
    // Every account is still right (the requeue did not disturb the totals).
    let want = expected(&store, false).await;
    for (k, v) in want.iter().filter(|(k, _)| k.starts_with("acct:")) {
        assert_eq!(seen.get(k), Some(v), "{k}");
    }
    // With the fix in place a rebuild handles every poison event: no letters left.
    run.rebuild("accounts")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        model
            .dead_letters()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    assert_eq!(
        dump(target.as_ref(), &model).await,
        expected(&store, true).await
    );
    run.shutdown().await;
}

/// Expands to one `#[tokio::test]` per read-model conformance check, each given a fresh
/// target from `$factory` (an expression evaluated per test, or an async block with
/// `async`), each bounded by a timeout.
#[macro_export]
macro_rules! read_model_conformance_tests {
    ($factory:expr) => {
        $crate::read_model_conformance_tests!(@each $factory;
            catch_up_and_follow,
            restart_from_a_mid_log_checkpoint,
            aborted_runs_equal_a_clean_run,
            rebuilds_make_lookups_again,
            fenced_owners_cannot_write,
            a_replaced_store_is_never_followed_silently,
            dead_letters_park_requeue_and_skip,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(target) = ($factory).await else { return };
                ::tokio::time::timeout(
                    ::std::time::Duration::from_secs(180),
                    $crate::testing::$name(target),
                )
                .await
                .expect("read-model conformance check timed out after 180 s");
            }
        )*
    };
}
