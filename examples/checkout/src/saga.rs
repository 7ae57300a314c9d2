//! The checkout saga: order → payment → stock, with a payment deadline and compensations.
//!
//! Each order has an instance, keyed by the order id, whose state ([`CheckoutState`]) is
//! event-sourced in the stream `checkout-{order id}`: the saga's own record of what it saw
//! and decided. The steps:
//!
//! 1. `OrderPlaced` → record `CheckoutStarted`; request the payment; schedule the payment
//!    deadline.
//! 2. `PaymentConfirmed` → record `PaymentReceived`; cancel the deadline; reserve the stock.
//! 3. `StockReserved` → record `StockSecured`; complete the order. Done.
//! 4. `ReservationFailed` → record `StockMissing`; compensate: refund the payment and
//!    cancel the order. Done.
//! 5. `PaymentFailed` (declined) → record `PaymentRefused`; cancel the deadline and the
//!    order. Done.
//! 6. The deadline fires before a payment → record `PaymentOverdue`; cancel the order. The
//!    payment processor will not charge a cancelled order, and a confirmation that arrives
//!    anyway (the gateway answered late) → record `LatePaymentReceived`; refund it.

use std::{convert::Infallible, time::Duration};

use annals::{Aggregate, BoxError, DomainEvent, EventStore, Executed, RecordedEvent};
use annals_projections::{
    DEADLINE_CATEGORY, DeadlineEvent, Deadlines, EventFilter, Observed, Reaction, Saga,
};
use serde::{Deserialize, Serialize};

use crate::{
    domain::{
        Order, OrderCommand, OrderEvent, Payment, PaymentCommand, PaymentEvent, Stock,
        StockCommand, StockEvent, format_cents, instance_id,
    },
    processor::repository,
};

/// The saga's name: its lease, checkpoint and deadlines are under it.
pub const CHECKOUT: &str = "checkout";

/// The name of the payment deadline of each instance.
pub const PAYMENT_DEADLINE: &str = "payment";

/// The saga's record of one order (stream `checkout-{order id}`).
#[derive(Debug, Clone, PartialEq, Eq, DomainEvent)]
pub enum CheckoutEvent {
    /// The order was placed: payment requested, deadline scheduled.
    #[event(name = "CheckoutStarted")]
    Started {
        /// The stock item.
        sku: String,
        /// How many.
        quantity: u32,
        /// The price, in cents.
        amount_cents: u64,
    },
    /// The payment came in time: stock is being reserved.
    #[event(name = "PaymentReceived")]
    PaymentReceived,
    /// The payment failed: the order is cancelled.
    #[event(name = "PaymentRefused")]
    PaymentRefused {
        /// Why.
        reason: String,
    },
    /// The stock is set aside: the order is completed.
    #[event(name = "StockSecured")]
    StockSecured,
    /// Not enough stock: the payment is refunded and the order cancelled.
    #[event(name = "StockMissing")]
    StockMissing {
        /// How many the order wanted.
        requested: u32,
        /// How many there were.
        available: u32,
    },
    /// The deadline passed without a payment: the order is cancelled.
    #[event(name = "PaymentOverdue")]
    PaymentOverdue,
    /// A payment confirmed after the deadline cancelled the order: it is refunded.
    #[event(name = "LatePaymentReceived")]
    LatePaymentReceived,
}

/// What an observed event means for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutCommand {
    /// `OrderPlaced`.
    Start {
        /// The stock item.
        sku: String,
        /// How many.
        quantity: u32,
        /// The price, in cents.
        amount_cents: u64,
    },
    /// `PaymentConfirmed`.
    ConfirmPayment,
    /// `PaymentFailed`.
    FailPayment {
        /// Why.
        reason: String,
    },
    /// `StockReserved`.
    ConfirmReservation,
    /// `ReservationFailed`.
    FailReservation {
        /// How many the order wanted.
        requested: u32,
        /// How many there were.
        available: u32,
    },
    /// The payment deadline fired.
    ExpirePayment,
}

/// Where an instance is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckoutPhase {
    /// Nothing seen yet.
    #[default]
    New,
    /// Waiting for the payment (the deadline runs).
    AwaitingPayment,
    /// Paid; waiting for the stock reservation.
    Reserving,
    /// The order was completed. Ended.
    Completed,
    /// Paid but out of stock: refunded and cancelled. Ended.
    Compensated,
    /// The payment failed: cancelled. Ended.
    PaymentFailed,
    /// The deadline passed: cancelled. A late payment is still refunded.
    TimedOut,
    /// A late payment was refunded. Ended.
    LatePaymentRefunded,
}

/// The state of one checkout instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(
    name = "checkout",
    event = CheckoutEvent,
    command = CheckoutCommand,
    error = Infallible
)]
pub struct CheckoutState {
    /// Where it is.
    pub phase: CheckoutPhase,
    /// The stock item.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// The price, in cents.
    pub amount_cents: u64,
}

impl CheckoutState {
    /// True when the instance will record nothing more.
    pub fn has_ended(&self) -> bool {
        matches!(
            self.phase,
            CheckoutPhase::Completed
                | CheckoutPhase::Compensated
                | CheckoutPhase::PaymentFailed
                | CheckoutPhase::LatePaymentRefunded
        )
    }

    /// Every command is accepted; one that comes in the wrong phase (a duplicate, a
    /// deadline that fired as the payment arrived) records nothing.
    fn handle(&self, command: CheckoutCommand) -> Result<Vec<CheckoutEvent>, Infallible> {
        use CheckoutCommand as C;
        use CheckoutPhase as P;
        Ok(match (command, self.phase) {
            (
                C::Start {
                    sku,
                    quantity,
                    amount_cents,
                },
                P::New,
            ) => vec![CheckoutEvent::Started {
                sku,
                quantity,
                amount_cents,
            }],
            (C::ConfirmPayment, P::AwaitingPayment) => vec![CheckoutEvent::PaymentReceived],
            (C::ConfirmPayment, P::TimedOut) => vec![CheckoutEvent::LatePaymentReceived],
            (C::FailPayment { reason }, P::AwaitingPayment) => {
                vec![CheckoutEvent::PaymentRefused { reason }]
            }
            (C::ConfirmReservation, P::Reserving) => vec![CheckoutEvent::StockSecured],
            (
                C::FailReservation {
                    requested,
                    available,
                },
                P::Reserving,
            ) => vec![CheckoutEvent::StockMissing {
                requested,
                available,
            }],
            (C::ExpirePayment, P::AwaitingPayment) => vec![CheckoutEvent::PaymentOverdue],
            _ => vec![],
        })
    }

    fn apply(&mut self, event: &CheckoutEvent) {
        self.phase = match event {
            CheckoutEvent::Started {
                sku,
                quantity,
                amount_cents,
            } => {
                self.sku.clone_from(sku);
                self.quantity = *quantity;
                self.amount_cents = *amount_cents;
                CheckoutPhase::AwaitingPayment
            }
            CheckoutEvent::PaymentReceived => CheckoutPhase::Reserving,
            CheckoutEvent::PaymentRefused { .. } => CheckoutPhase::PaymentFailed,
            CheckoutEvent::StockSecured => CheckoutPhase::Completed,
            CheckoutEvent::StockMissing { .. } => CheckoutPhase::Compensated,
            CheckoutEvent::PaymentOverdue => CheckoutPhase::TimedOut,
            CheckoutEvent::LatePaymentReceived => CheckoutPhase::LatePaymentRefunded,
        };
    }
}

/// The checkout saga (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Checkout {
    deadlines: Deadlines,
    payment_timeout: Duration,
}

impl Checkout {
    /// The saga, scheduling its payment deadlines `payment_timeout` after the order in
    /// `deadlines` (the same the runner fires: [`ProjectionRunner::add_deadlines`]).
    ///
    /// [`ProjectionRunner::add_deadlines`]: annals_projections::ProjectionRunner::add_deadlines
    pub fn new(deadlines: Deadlines, payment_timeout: Duration) -> Self {
        Self {
            deadlines,
            payment_timeout,
        }
    }

    /// How long an order waits for its payment.
    pub fn payment_timeout(&self) -> Duration {
        self.payment_timeout
    }

    /// The reason an order is cancelled with when its payment is overdue.
    pub fn overdue_reason(&self) -> String {
        format!("no payment within {:?}", self.payment_timeout)
    }
}

impl<S: EventStore + Clone + 'static> Saga<S> for Checkout {
    type State = CheckoutState;

    fn name(&self) -> &str {
        CHECKOUT
    }

    fn filter(&self) -> EventFilter {
        // `and_types` on `EventFilter::aggregate` would add to the aggregate's types: name
        // the category and the types instead.
        EventFilter::categories([Order::TYPE])
            .and_types(["OrderPlaced"])
            .or(EventFilter::categories([Payment::TYPE])
                .and_types(["PaymentConfirmed", "PaymentFailed"]))
            .or(EventFilter::categories([Stock::TYPE])
                .and_types(["StockReserved", "ReservationFailed"]))
            .or(EventFilter::categories([DEADLINE_CATEGORY]).and_types(["DeadlineFired"]))
    }

    fn observe(&self, event: &RecordedEvent) -> Result<Option<Observed<CheckoutState>>, BoxError> {
        if let Some(fired) = DeadlineEvent::fired_for(CHECKOUT, event) {
            return Ok((fired.name == PAYMENT_DEADLINE)
                .then(|| Observed::new(fired.key, CheckoutCommand::ExpirePayment)));
        }
        if let Some(order) = instance_id::<Order>(event) {
            return Ok(match OrderEvent::decode(event)? {
                OrderEvent::Placed {
                    sku,
                    quantity,
                    amount_cents,
                    ..
                } => Some(Observed::new(
                    order,
                    CheckoutCommand::Start {
                        sku,
                        quantity,
                        amount_cents,
                    },
                )),
                _ => None,
            });
        }
        if let Some(order) = instance_id::<Payment>(event) {
            let command = match PaymentEvent::decode(event)? {
                PaymentEvent::Confirmed { .. } => CheckoutCommand::ConfirmPayment,
                PaymentEvent::Failed { reason } => CheckoutCommand::FailPayment { reason },
                _ => return Ok(None),
            };
            return Ok(Some(Observed::new(order, command)));
        }
        if instance_id::<Stock>(event).is_some() {
            return Ok(match StockEvent::decode(event)? {
                StockEvent::Reserved { order, .. } => {
                    Some(Observed::new(order, CheckoutCommand::ConfirmReservation))
                }
                StockEvent::ReservationFailed {
                    order,
                    requested,
                    available,
                } => Some(Observed::new(
                    order,
                    CheckoutCommand::FailReservation {
                        requested,
                        available,
                    },
                )),
                StockEvent::Received { .. } => None,
            });
        }
        Ok(None)
    }

    async fn act(
        &self,
        key: &str,
        recorded: &Executed<CheckoutState>,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let store = reaction.store().clone();
        let orders = repository::<Order, S>(store.clone());
        let payments = repository::<Payment, S>(store.clone());
        let stock = repository::<Stock, S>(store);
        let state = &recorded.state;
        for event in &recorded.events {
            match event {
                CheckoutEvent::Started { amount_cents, .. } => {
                    let request = PaymentCommand::Request {
                        amount_cents: *amount_cents,
                    };
                    reaction.execute(&payments, key, request).await?;
                    self.deadlines
                        .schedule(reaction, key, PAYMENT_DEADLINE, self.payment_timeout)
                        .await?;
                }
                CheckoutEvent::PaymentReceived => {
                    self.deadlines
                        .cancel(reaction, key, PAYMENT_DEADLINE)
                        .await?;
                    let reserve = StockCommand::Reserve {
                        order: key.to_owned(),
                        quantity: state.quantity,
                    };
                    reaction.execute(&stock, &state.sku, reserve).await?;
                }
                CheckoutEvent::PaymentRefused { reason } => {
                    self.deadlines
                        .cancel(reaction, key, PAYMENT_DEADLINE)
                        .await?;
                    let reason = format!("payment failed: {reason}");
                    reaction
                        .execute(&orders, key, OrderCommand::Cancel { reason })
                        .await?;
                }
                CheckoutEvent::StockSecured => {
                    reaction
                        .execute(&orders, key, OrderCommand::Complete)
                        .await?;
                }
                CheckoutEvent::StockMissing {
                    requested,
                    available,
                } => {
                    let refund = PaymentCommand::Refund {
                        reason: format!(
                            "out of stock: refunding {}",
                            format_cents(state.amount_cents)
                        ),
                    };
                    reaction.execute(&payments, key, refund).await?;
                    let reason = format!(
                        "out of stock: {requested} × {} requested, {available} available",
                        state.sku
                    );
                    reaction
                        .execute(&orders, key, OrderCommand::Cancel { reason })
                        .await?;
                }
                CheckoutEvent::PaymentOverdue => {
                    let reason = self.overdue_reason();
                    reaction
                        .execute(&orders, key, OrderCommand::Cancel { reason })
                        .await?;
                }
                CheckoutEvent::LatePaymentReceived => {
                    let refund = PaymentCommand::Refund {
                        reason: "confirmed after the order was cancelled".to_owned(),
                    };
                    reaction.execute(&payments, key, refund).await?;
                }
            }
        }
        Ok(())
    }
}
