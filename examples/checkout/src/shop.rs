//! The shop: a store, the runner with the saga, the payment processor and the deadline
//! timer, and the commands a front end would send.

use std::time::Duration;

use annals::{
    Aggregate, BoxError, CommandContext, DomainEvent, EventStore, RecordedEvent, StreamId,
    StreamRead,
};
use annals_projections::{
    Backoff, Deadlines, DependencyConfig, DependencyStatus, FailurePolicy, ProjectionConfig,
    ProjectionRunner, ReadModel,
};
use futures::TryStreamExt;

use crate::{
    domain::{
        Order, OrderCommand, OrderLine, OrderStatus, Payment, PaymentStatus, Stock, StockCommand,
    },
    gateway::SimulatedGateway,
    processor::{PAYMENTS, PaymentProcessor, repository},
    saga::{CHECKOUT, Checkout, CheckoutEvent, CheckoutState},
};

/// How the shop runs.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// How long an order waits for its payment before it is cancelled. Default 30 s.
    pub payment_timeout: Duration,
    /// How the gateway calls are guarded. Default: 5 s per attempt, 2 retries (backoff from
    /// 100 ms with jitter), a breaker opening after 5 failures for 10 s, 8 calls at once.
    pub gateway: DependencyConfig,
    /// How long the simulated gateway takes to answer. Default 50 ms.
    pub gateway_latency: Duration,
    /// What the saga and the processor do with an event whose handling fails (the gateway
    /// unreachable through all retries): by default, try again with backoff (100 ms to
    /// 2 s), up to 1,000 times, then stop.
    pub policy: FailurePolicy,
}

impl Default for ShopConfig {
    fn default() -> Self {
        Self {
            payment_timeout: Duration::from_secs(30),
            gateway: DependencyConfig::default()
                .with_timeout(Duration::from_secs(5))
                .with_retries(2)
                .with_backoff(Backoff::new(
                    Duration::from_millis(100),
                    Duration::from_secs(1),
                ))
                .with_failure_threshold(5)
                .with_open_for(Duration::from_secs(10))
                .with_max_concurrent(8)
                .with_max_wait(Duration::from_secs(1)),
            gateway_latency: Duration::from_millis(50),
            policy: FailurePolicy::retry_then_stop(
                1_000,
                Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            ),
        }
    }
}

/// What became of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderOutcome {
    /// The order.
    pub order_id: String,
    /// Where the order is.
    pub order: OrderStatus,
    /// Where its payment is.
    pub payment: PaymentStatus,
    /// The payment's gateway charge, if any.
    pub charge_id: Option<String>,
    /// The payment's gateway refund, if any.
    pub refund_id: Option<String>,
    /// Why the payment failed or was refunded, if it was.
    pub payment_reason: Option<String>,
    /// The saga's record, in order.
    pub saga: Vec<CheckoutEvent>,
}

impl OrderOutcome {
    /// True when nothing more will happen: completed and charged, or cancelled with no
    /// money kept (never charged, or refunded).
    pub fn is_settled(&self) -> bool {
        matches!(
            (&self.order, self.payment),
            (OrderStatus::Completed, PaymentStatus::Confirmed)
                | (
                    OrderStatus::Cancelled { .. },
                    PaymentStatus::Failed | PaymentStatus::Refunded
                )
        )
    }

    /// The saga's record as type names: `["CheckoutStarted", "PaymentReceived", ...]`.
    pub fn saga_steps(&self) -> Vec<&'static str> {
        self.saga.iter().map(DomainEvent::event_type).collect()
    }
}

/// The running shop over store `S`.
#[derive(Debug)]
pub struct Shop<S: EventStore + Clone + 'static> {
    store: S,
    runner: ProjectionRunner<S>,
    gateway: SimulatedGateway,
    processor: PaymentProcessor,
    checkout: Checkout,
}

impl<S: EventStore + Clone + 'static> Shop<S> {
    /// Starts the saga, the payment processor and the deadline timer on `runner` (given
    /// its leases already), keeping the checkpoints of the saga and the processor in the
    /// read models `checkpoints` opens for their names (`"checkout"`, `"payments"`). Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    /// The runner's, and `checkpoints`'.
    pub fn start<M, E>(
        runner: ProjectionRunner<S>,
        mut checkpoints: impl FnMut(&str) -> Result<M, E>,
        config: &ShopConfig,
    ) -> Result<Self, BoxError>
    where
        M: ReadModel,
        E: Into<BoxError>,
    {
        let store = runner.store().clone();
        let gateway = SimulatedGateway::new(config.gateway_latency);
        let processor = PaymentProcessor::new(gateway.clone(), config.gateway.clone());
        let deadlines = Deadlines::default();
        let checkout = Checkout::new(deadlines.clone(), config.payment_timeout);
        let reactor_config = ProjectionConfig::new().with_policy(config.policy.clone());
        runner.add_deadlines(&deadlines)?;
        runner.add_saga(
            checkout.clone(),
            checkpoints(CHECKOUT).map_err(Into::into)?,
            reactor_config.clone(),
        )?;
        runner.add_reactor(
            processor.clone(),
            checkpoints(PAYMENTS).map_err(Into::into)?,
            reactor_config,
        )?;
        Ok(Self {
            store,
            runner,
            gateway,
            processor,
            checkout,
        })
    }

    /// The event store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The simulated payment gateway (to plan its answers, and to look at its books).
    pub fn gateway(&self) -> &SimulatedGateway {
        &self.gateway
    }

    /// The saga.
    pub fn checkout(&self) -> &Checkout {
        &self.checkout
    }

    /// The gateway's guard: breaker state and counters.
    pub fn gateway_status(&self) -> DependencyStatus {
        self.processor.dependency().status()
    }

    /// The runner (for statuses).
    pub fn runner(&self) -> &ProjectionRunner<S> {
        &self.runner
    }

    /// Brings the stock of `sku` up to at least `quantity` available.
    ///
    /// # Errors
    /// The store's.
    pub async fn stock_up(&self, sku: &str, quantity: u32) -> Result<(), BoxError> {
        let stock = repository::<Stock, S>(self.store.clone());
        let available = stock.load(sku).await?.state.available;
        if available < quantity {
            let receive = StockCommand::Receive {
                quantity: quantity - available,
            };
            stock.execute(sku, receive, &CommandContext::new()).await?;
        }
        Ok(())
    }

    /// Places order `order_id`: the saga takes it from there.
    ///
    /// # Errors
    /// The order's refusal ([`OrderError`](crate::domain::OrderError)) and the store's.
    pub async fn place(
        &self,
        order_id: &str,
        customer: &str,
        line: OrderLine,
    ) -> Result<(), BoxError> {
        let place = OrderCommand::Place {
            customer: customer.to_owned(),
            line,
        };
        repository::<Order, S>(self.store.clone())
            .execute(order_id, place, &CommandContext::new())
            .await?;
        Ok(())
    }

    /// What became of order `order_id` so far.
    ///
    /// # Errors
    /// The store's.
    pub async fn outcome(&self, order_id: &str) -> Result<OrderOutcome, BoxError> {
        let order = repository::<Order, S>(self.store.clone())
            .load(order_id)
            .await?
            .state;
        let payment = repository::<Payment, S>(self.store.clone())
            .load(order_id)
            .await?
            .state;
        let stream = StreamId::for_aggregate(CheckoutState::TYPE, order_id)?;
        let recorded: Vec<RecordedEvent> = self
            .store
            .read_stream(&stream, StreamRead::forward())
            .try_collect()
            .await?;
        let saga = recorded
            .iter()
            .map(CheckoutEvent::decode)
            .collect::<Result<_, _>>()?;
        Ok(OrderOutcome {
            order_id: order_id.to_owned(),
            order: order.status,
            payment: payment.status,
            charge_id: payment.charge_id,
            refund_id: payment.refund_id,
            payment_reason: payment.reason,
            saga,
        })
    }

    /// Waits until order `order_id` is [settled](OrderOutcome::is_settled), at most
    /// `timeout`.
    ///
    /// # Errors
    /// The store's; the order not settled in time (with where it is).
    pub async fn settled(
        &self,
        order_id: &str,
        timeout: Duration,
    ) -> Result<OrderOutcome, BoxError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let outcome = self.outcome(order_id).await?;
            if outcome.is_settled() {
                return Ok(outcome);
            }
            if tokio::time::Instant::now() >= deadline {
                let statuses: Vec<String> = self
                    .runner
                    .statuses()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                return Err(format!(
                    "order {order_id} not settled within {timeout:?}: {outcome:?}; {}",
                    statuses.join("; ")
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the saga, the processor and the timer cleanly.
    pub async fn shutdown(self) {
        self.runner.shutdown().await;
    }
}
