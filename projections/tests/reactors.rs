//! Reactors on the engine: every effect stored exactly once, whatever happens to the
//! process that reacts (aborted at random points, two owners at once).

use std::{collections::HashMap, time::Duration};

use annals::{
    Aggregate, BoxError, CommandContext, DomainEvent, EventStore, InMemoryEventStore, LogRead,
    RecordedEvent, Repository, Retries,
};
use annals_projections::{
    EventFilter, FailurePolicy, InMemoryLeases, MemoryReadModel, ProjectionConfig,
    ProjectionRunner, Reaction, Reactor, RunnerConfig,
};
use futures::TryStreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum OrderEvent {
    Placed { customer: String, amount: i64 },
    Confirmed,
}

#[derive(Debug, Clone)]
enum OrderCommand {
    Place { customer: String, amount: i64 },
    Confirm,
}

#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("no such order")]
    Missing,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, command = OrderCommand, error = OrderError)]
struct Order {
    placed: bool,
    confirmed: bool,
}

impl Order {
    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { customer, amount } => {
                Ok(vec![OrderEvent::Placed { customer, amount }])
            }
            OrderCommand::Confirm if !self.placed => Err(OrderError::Missing),
            // Confirming twice is a no-op, as a real aggregate would make it.
            OrderCommand::Confirm if self.confirmed => Ok(vec![]),
            OrderCommand::Confirm => Ok(vec![OrderEvent::Confirmed]),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { .. } => self.placed = true,
            OrderEvent::Confirmed => self.confirmed = true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum WalletEvent {
    Charged { order: String, amount: i64 },
}

#[derive(Debug, Clone)]
struct Charge {
    order: String,
    amount: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "wallet", event = WalletEvent, command = Charge, error = Never)]
struct Wallet {
    spent: i64,
}

impl Wallet {
    // Not idempotent on its own: charging twice charges twice. Only the reactor's derived
    // ids keep the effect single.
    fn handle(&self, charge: Charge) -> Result<Vec<WalletEvent>, Never> {
        Ok(vec![WalletEvent::Charged {
            order: charge.order,
            amount: charge.amount,
        }])
    }

    fn apply(&mut self, event: &WalletEvent) {
        let WalletEvent::Charged { amount, .. } = event;
        self.spent += amount;
    }
}

/// Charges the customer of every placed order, then confirms the order: two commands per
/// event, on two aggregates.
struct Billing<S> {
    orders: Repository<Order, S>,
    wallets: Repository<Wallet, S>,
}

impl<S: EventStore + Clone + 'static> Reactor<S> for Billing<S> {
    fn name(&self) -> &str {
        "billing"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::aggregate::<Order>().and_types(["Placed"])
    }

    async fn react(
        &self,
        event: &RecordedEvent,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let OrderEvent::Placed { customer, amount } = OrderEvent::decode(event)? else {
            return Ok(());
        };
        let order = event.stream_id.to_string();
        reaction
            .execute(&self.wallets, &customer, Charge { order, amount })
            .await?;
        let id = event
            .stream_id
            .as_str()
            .trim_start_matches("order-")
            .to_owned();
        reaction
            .execute(&self.orders, &id, OrderCommand::Confirm)
            .await?;
        Ok(())
    }
}

fn billing<S: EventStore + Clone>(store: &S) -> Billing<S> {
    let retries = Retries::none()
        .conflicts(50)
        .transient(5)
        .with_sleep(|d| Box::pin(tokio::time::sleep(d)));
    Billing {
        orders: Repository::new(store.clone()).with_retries(retries.clone()),
        wallets: Repository::new(store.clone()).with_retries(retries),
    }
}

fn config() -> ProjectionConfig {
    ProjectionConfig::new()
        .with_batch_size(7)
        .with_policy(FailurePolicy::Retry {
            attempts: 20,
            backoff: annals_projections::Backoff::new(
                Duration::from_millis(1),
                Duration::from_millis(20),
            ),
            then: Box::new(FailurePolicy::Stop),
        })
}

fn quick_runner<S: EventStore + Clone + 'static>(
    store: &S,
    leases: &InMemoryLeases,
) -> ProjectionRunner<S> {
    ProjectionRunner::new(store.clone())
        .with_leases(leases.clone())
        .with_config(RunnerConfig {
            lease_ttl: Duration::from_millis(300),
            ..RunnerConfig::default()
        })
}

async fn place_orders<S: EventStore + Clone>(store: &S, from: usize, n: usize) {
    let orders = Repository::<Order, S>::new(store.clone());
    for i in from..from + n {
        let customer = format!("c{}", i % 7);
        orders
            .execute(
                &format!("o{i}"),
                OrderCommand::Place {
                    customer,
                    amount: 10 + i as i64,
                },
                &CommandContext::new(),
            )
            .await
            .expect("place");
    }
}

/// Every placed order charged once and confirmed once, each effect caused by its order's
/// event and in its correlation.
async fn assert_exactly_once<S: EventStore + Clone>(store: &S, orders: usize) {
    let events: Vec<RecordedEvent> = store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .expect("read the log");
    let placed: HashMap<uuid::Uuid, &RecordedEvent> = events
        .iter()
        .filter(|e| e.event_type.as_str() == "Placed")
        .map(|e| (e.event_id, e))
        .collect();
    assert_eq!(placed.len(), orders);
    let mut charges: HashMap<uuid::Uuid, u32> = HashMap::new();
    let mut confirmations: HashMap<uuid::Uuid, u32> = HashMap::new();
    for event in &events {
        let counter = match event.event_type.as_str() {
            "Charged" => &mut charges,
            "Confirmed" => &mut confirmations,
            _ => continue,
        };
        let cause = event.metadata.causation_id.expect("a causation id");
        let trigger = placed.get(&cause).expect("caused by a placed order");
        assert_eq!(
            event.metadata.correlation_id, trigger.metadata.correlation_id,
            "the reaction continues the trigger's correlation"
        );
        *counter.entry(cause).or_default() += 1;
    }
    for id in placed.keys() {
        assert_eq!(charges.get(id), Some(&1), "order event {id} charged once");
        assert_eq!(
            confirmations.get(id),
            Some(&1),
            "order event {id} confirmed once"
        );
    }
    let wallets = Repository::<Wallet, S>::new(store.clone());
    let mut spent = 0;
    for c in 0..7 {
        spent += wallets
            .load(&format!("c{c}"))
            .await
            .expect("load")
            .state
            .spent;
    }
    let expected: i64 = (0..orders).map(|i| 10 + i as i64).sum();
    assert_eq!(spent, expected);
}

#[tokio::test]
async fn a_reactor_turns_events_into_commands_once() {
    let store = InMemoryEventStore::new();
    place_orders(&store, 0, 40).await;
    let runner = ProjectionRunner::new(store.clone());
    runner
        .add_reactor(
            billing(&store),
            MemoryReadModel::<()>::new("billing").unwrap(),
            config(),
        )
        .unwrap();
    runner.catch_up(Duration::from_secs(30)).await.unwrap();
    place_orders(&store, 40, 10).await;
    let head = store.head_position().await.unwrap().unwrap();
    runner
        .wait_for_within("billing", head, Duration::from_secs(30))
        .await
        .unwrap();
    let status = runner.status("billing").unwrap();
    assert!(status.is_caught_up(), "{status}");
    // A reactor has no read model to rebuild.
    assert!(matches!(
        runner.rebuild("billing").await,
        Err(annals_projections::Error::NotRebuildable { .. })
    ));
    runner.shutdown().await;
    assert_exactly_once(&store, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_aborted_at_random_points_stores_every_effect_once() {
    let store = InMemoryEventStore::new();
    // One checkpoint store and one lease store outlive every "process".
    let checkpoints = MemoryReadModel::<()>::new("billing").unwrap();
    let leases = InMemoryLeases::new();
    place_orders(&store, 0, 60).await;
    let mut placed = 60;
    let mut rng = rand::rng();
    for _ in 0..20 {
        let runner = quick_runner(&store, &leases);
        // Several streams at once: a crash leaves effects after the checkpoint behind.
        runner
            .add_reactor(
                billing(&store),
                checkpoints.clone(),
                config().with_concurrency(3),
            )
            .unwrap();
        // Orders keep arriving while the reactor runs.
        place_orders(&store, placed, 5).await;
        placed += 5;
        tokio::time::sleep(Duration::from_micros(rng.random_range(0..20_000))).await;
        drop(runner); // aborts every task wherever it is, like a crash
        // The lease of the dead process expires.
        tokio::time::sleep(Duration::from_millis(310)).await;
    }
    let runner = quick_runner(&store, &leases);
    runner
        .add_reactor(billing(&store), checkpoints.clone(), config())
        .unwrap();
    runner.catch_up(Duration::from_secs(60)).await.unwrap();
    runner.shutdown().await;
    assert_exactly_once(&store, placed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_racing_store_every_effect_once() {
    let store = InMemoryEventStore::new();
    place_orders(&store, 0, 80).await;
    // Separate lease stores: both processes believe they own the reactor (a lease that
    // expired under a paused process, say); separate checkpoints, so nothing fences them.
    let a = ProjectionRunner::new(store.clone());
    let b = ProjectionRunner::new(store.clone());
    a.add_reactor(
        billing(&store),
        MemoryReadModel::<()>::new("billing").unwrap(),
        config(),
    )
    .unwrap();
    b.add_reactor(
        billing(&store),
        MemoryReadModel::<()>::new("billing").unwrap(),
        config().with_concurrency(4),
    )
    .unwrap();
    place_orders(&store, 80, 20).await;
    let (ra, rb) = tokio::join!(
        a.catch_up(Duration::from_secs(60)),
        b.catch_up(Duration::from_secs(60))
    );
    ra.unwrap();
    rb.unwrap();
    a.shutdown().await;
    b.shutdown().await;
    assert_exactly_once(&store, 100).await;
}

/// A reaction that fails after its first command: the retry finds that command stored and
/// does not repeat it.
struct FailsOnce<S> {
    billing: Billing<S>,
    failed: std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
}

impl<S: EventStore + Clone + 'static> Reactor<S> for FailsOnce<S> {
    fn name(&self) -> &str {
        "billing"
    }

    fn filter(&self) -> EventFilter {
        self.billing.filter()
    }

    async fn react(
        &self,
        event: &RecordedEvent,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let OrderEvent::Placed { customer, amount } = OrderEvent::decode(event)? else {
            return Ok(());
        };
        let order = event.stream_id.to_string();
        let charged = reaction
            .execute(&self.billing.wallets, &customer, Charge { order, amount })
            .await?;
        let first = self.failed.lock().unwrap().insert(event.event_id);
        if first {
            assert!(!charged.already_applied);
            return Err("the gateway hung up".into());
        }
        assert!(charged.already_applied, "the retry found the stored charge");
        let id = event
            .stream_id
            .as_str()
            .trim_start_matches("order-")
            .to_owned();
        reaction
            .execute(&self.billing.orders, &id, OrderCommand::Confirm)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_reaction_retried_does_not_repeat_its_first_command() {
    let store = InMemoryEventStore::new();
    place_orders(&store, 0, 12).await;
    let runner = ProjectionRunner::new(store.clone());
    let reactor = FailsOnce {
        billing: billing(&store),
        failed: Default::default(),
    };
    runner
        .add_reactor(
            reactor,
            MemoryReadModel::<()>::new("billing").unwrap(),
            config(),
        )
        .unwrap();
    runner.catch_up(Duration::from_secs(30)).await.unwrap();
    runner.shutdown().await;
    assert_exactly_once(&store, 12).await;
}

/// Billing, with the reaction to one order held at a gate until the test opens it.
struct Gated<S> {
    billing: Billing<S>,
    blocked: String,
    gate: std::sync::Arc<tokio::sync::Notify>,
}

impl<S: EventStore + Clone + 'static> Reactor<S> for Gated<S> {
    fn name(&self) -> &str {
        "billing"
    }

    fn filter(&self) -> EventFilter {
        self.billing.filter()
    }

    async fn react(
        &self,
        event: &RecordedEvent,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        if event.stream_id.as_str() == self.blocked {
            self.gate.notified().await;
        }
        self.billing.react(event, reaction).await
    }
}

async fn charges<S: EventStore>(store: &S) -> usize {
    let events: Vec<RecordedEvent> = store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap();
    events
        .iter()
        .filter(|e| e.event_type.as_str() == "Charged")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_does_not_hold_up_the_others() {
    let store = InMemoryEventStore::new();
    place_orders(&store, 0, 10).await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let reactor = Gated {
        billing: billing(&store),
        blocked: "order-o0".to_owned(),
        gate: gate.clone(),
    };
    let runner = ProjectionRunner::new(store.clone());
    runner
        .add_reactor(
            reactor,
            MemoryReadModel::<()>::new("billing").unwrap(),
            // One batch holds all ten: a batch is handled whole before the next one starts.
            config().with_concurrency(4).with_batch_size(100),
        )
        .unwrap();
    // The nine other orders are charged while the first one waits at its gate.
    let others = tokio::time::timeout(Duration::from_secs(20), async {
        while charges(&store).await < 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(others.is_ok(), "the other streams waited for the slow one");
    // The checkpoint cannot pass the event still being handled.
    let status = runner.status("billing").unwrap();
    let first = store
        .read_all(LogRead::from_start())
        .try_collect::<Vec<_>>()
        .await
        .unwrap()[0]
        .position;
    assert!(
        status.checkpoint < Some(first) || status.checkpoint.is_none(),
        "{status}"
    );
    gate.notify_one();
    runner.catch_up(Duration::from_secs(30)).await.unwrap();
    runner.shutdown().await;
    assert_exactly_once(&store, 10).await;
}

/// Pays each order out of the customer's wallet into the shop's in one atomic append over
/// both wallets (`execute_multi`).
struct Settlement<S> {
    wallets: Repository<Wallet, S>,
}

impl<S: EventStore + Clone + 'static> Reactor<S> for Settlement<S> {
    fn name(&self) -> &str {
        "settlement"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::aggregate::<Order>().and_types(["Placed"])
    }

    async fn react(
        &self,
        event: &RecordedEvent,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let OrderEvent::Placed { customer, amount } = OrderEvent::decode(event)? else {
            return Ok(());
        };
        let order = event.stream_id.to_string();
        let retries = Retries::none()
            .conflicts(50)
            .with_sleep(|d| Box::pin(tokio::time::sleep(d)));
        let wallets = &self.wallets;
        reaction
            .execute_multi(&retries, |context| {
                let (order, customer) = (order.clone(), customer.clone());
                async move {
                    let debit = Charge {
                        order: order.clone(),
                        amount,
                    };
                    let credit = Charge {
                        order,
                        amount: -amount,
                    };
                    let from = wallets.decide(&customer, debit, &context).await?;
                    let to = wallets.decide("shop", credit, &context).await?;
                    Ok(vec![from.to_append(), to.to_append()])
                }
            })
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_on_two_aggregates_appends_both_once() {
    let store = InMemoryEventStore::new();
    place_orders(&store, 0, 30).await;
    let settle = || Settlement {
        wallets: Repository::new(store.clone()),
    };
    // Two owners racing, each from its own checkpoint, both on the shop's wallet: conflicts
    // are decided again, repeats are answered from the store.
    let a = ProjectionRunner::new(store.clone());
    let b = ProjectionRunner::new(store.clone());
    for runner in [&a, &b] {
        runner
            .add_reactor(
                settle(),
                MemoryReadModel::<()>::new("settlement").unwrap(),
                config().with_concurrency(3),
            )
            .unwrap();
    }
    let (ra, rb) = tokio::join!(
        a.catch_up(Duration::from_secs(60)),
        b.catch_up(Duration::from_secs(60))
    );
    ra.unwrap();
    rb.unwrap();
    a.shutdown().await;
    b.shutdown().await;
    let events: Vec<RecordedEvent> = store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap();
    let charges: Vec<&RecordedEvent> = events
        .iter()
        .filter(|e| e.event_type.as_str() == "Charged")
        .collect();
    assert_eq!(charges.len(), 60, "one debit and one credit per order");
    // Each pair went in one append: adjacent in the log, same command (causation).
    let mut by_cause: HashMap<uuid::Uuid, Vec<&RecordedEvent>> = HashMap::new();
    for c in &charges {
        by_cause
            .entry(c.metadata.causation_id.unwrap())
            .or_default()
            .push(c);
    }
    assert_eq!(by_cause.len(), 30);
    for pair in by_cause.values() {
        assert_eq!(pair.len(), 2);
        // One append: consecutive in the log (nothing commits between them in memory).
        assert_eq!(
            pair[0].position.sequence + 1,
            pair[1].position.sequence,
            "one append"
        );
        assert_ne!(pair[0].stream_id, pair[1].stream_id);
    }
    let wallets = Repository::<Wallet, _>::new(store.clone());
    let shop = wallets.load("shop").await.unwrap().state.spent;
    let total: i64 = (0..30).map(|i| 10 + i as i64).sum();
    assert_eq!(shop, -total, "the shop received every order once");
}
