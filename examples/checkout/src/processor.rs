//! The payment processor: a reactor that turns `PaymentRequested` into a charge at the
//! gateway and `RefundRequested` into a refund, and records the gateway's answers.
//!
//! Each gateway call goes through a [`Dependency`] (timeout per attempt, retries with
//! jittered backoff, circuit breaker, bulkhead) and carries the reaction's
//! [`effect_id`](Reaction::effect_id) as its idempotency key: the same for every attempt,
//! every retry of the reactor and every redelivery of the event, so the card is charged at
//! most once per request. When the gateway stays unreachable the call's error goes back to
//! the runner, whose failure policy tries the event again later (with the same key).

use std::time::Duration;

use annals::{Aggregate, BoxError, DomainEvent, EventStore, RecordedEvent, Repository, Retries};
use annals_projections::{Dependency, DependencyConfig, EventFilter, Reaction, Reactor};

use crate::{
    domain::{
        Order, OrderStatus, Payment, PaymentCommand, PaymentEvent, PaymentStatus, instance_id,
    },
    gateway::SimulatedGateway,
};

/// The processor's name (its lease, status and checkpoint).
pub const PAYMENTS: &str = "payments";

/// What the processor records when the order was cancelled before its card was charged.
pub const CANCELLED_BEFORE_CHARGE: &str = "the order was cancelled before it was charged";

/// Charges and refunds at the gateway; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct PaymentProcessor {
    gateway: SimulatedGateway,
    guard: Dependency,
}

impl PaymentProcessor {
    /// A processor calling `gateway` through a [`Dependency`] named `payment-gateway`
    /// guarded as `config` says.
    pub fn new(gateway: SimulatedGateway, config: DependencyConfig) -> Self {
        Self {
            gateway,
            guard: Dependency::new("payment-gateway", config),
        }
    }

    /// The guarded dependency (its [`status`](Dependency::status) for a CLI).
    pub fn dependency(&self) -> &Dependency {
        &self.guard
    }

    /// Charges the card for `payment`, unless it was decided already or its order was
    /// cancelled meanwhile (a payment deadline passed): then nothing is charged.
    async fn charge<S: EventStore + Clone>(
        &self,
        payment: &str,
        payments: &Repository<Payment, S>,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        // Step 0, whatever happens next: the gateway's idempotency key.
        let key = reaction.effect_id();
        let state = payments.load(payment).await?.state;
        if state.status != PaymentStatus::Requested {
            return Ok(()); // answered on an earlier delivery
        }
        let orders = Repository::<Order, S>::new(reaction.store().clone());
        if matches!(
            orders.load(payment).await?.state.status,
            OrderStatus::Cancelled { .. }
        ) {
            let reason = CANCELLED_BEFORE_CHARGE.to_owned();
            reaction
                .execute(payments, payment, PaymentCommand::Fail { reason })
                .await?;
            return Ok(());
        }
        let amount = state.amount_cents;
        let answer = self
            .guard
            .call(|| self.gateway.charge(key, payment, amount))
            .await;
        let command = match answer {
            Ok(charge) => PaymentCommand::Confirm {
                charge_id: charge.id,
            },
            // Declined: the gateway answered for good.
            Err(error) if !error.is_transient() => PaymentCommand::Fail {
                reason: error
                    .into_inner()
                    .map_or_else(|| "refused".to_owned(), |e| e.to_string()),
            },
            // Timed out, unavailable, breaker open, bulkhead full: try the event again later.
            Err(error) => return Err(error.into()),
        };
        reaction.execute(payments, payment, command).await?;
        Ok(())
    }

    /// Gives the money of `payment` back.
    async fn refund<S: EventStore + Clone>(
        &self,
        payment: &str,
        payments: &Repository<Payment, S>,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let key = reaction.effect_id();
        let state = payments.load(payment).await?.state;
        if state.status != PaymentStatus::Refunding {
            return Ok(());
        }
        let charge_id = state
            .charge_id
            .ok_or("a payment being refunded has no charge")?;
        let refund = self
            .guard
            .call(|| self.gateway.refund(key, &charge_id))
            .await?;
        reaction
            .execute(
                payments,
                payment,
                PaymentCommand::MarkRefunded {
                    refund_id: refund.id,
                },
            )
            .await?;
        Ok(())
    }
}

/// A repository that retries conflicts and transient store errors with backoff.
pub(crate) fn repository<A: Aggregate, S: EventStore>(store: S) -> Repository<A, S> {
    let retries = Retries::none()
        .conflicts(10)
        .transient(3)
        .with_backoff(annals::Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(500),
        ))
        .with_sleep(|d| Box::pin(tokio::time::sleep(d)));
    Repository::new(store).with_retries(retries)
}

impl<S: EventStore + Clone + 'static> Reactor<S> for PaymentProcessor {
    fn name(&self) -> &str {
        PAYMENTS
    }

    fn filter(&self) -> EventFilter {
        EventFilter::categories([Payment::TYPE]).and_types(["PaymentRequested", "RefundRequested"])
    }

    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.guard.clone()]
    }

    async fn react(
        &self,
        event: &RecordedEvent,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let Some(payment) = instance_id::<Payment>(event) else {
            return Ok(());
        };
        let payments = repository::<Payment, S>(reaction.store().clone());
        match PaymentEvent::decode(event)? {
            PaymentEvent::Requested { .. } => self.charge(payment, &payments, reaction).await,
            PaymentEvent::RefundRequested { .. } => self.refund(payment, &payments, reaction).await,
            _ => Ok(()),
        }
    }
}
