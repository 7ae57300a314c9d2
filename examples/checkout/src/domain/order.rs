//! The order: placed by a customer, then completed or cancelled by the checkout saga.

use annals::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// What an order buys: one stock item, a quantity, and the price of it all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The stock item (its id in the `stock` streams).
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// The total price, in cents.
    pub amount_cents: u64,
}

/// The events of an order's stream (`order-{id}`).
#[derive(Debug, Clone, PartialEq, Eq, DomainEvent)]
pub enum OrderEvent {
    /// A customer placed the order: the checkout saga starts.
    #[event(name = "OrderPlaced")]
    Placed {
        /// Who ordered.
        customer: String,
        /// The stock item.
        sku: String,
        /// How many.
        quantity: u32,
        /// The total price, in cents.
        amount_cents: u64,
    },
    /// Paid and reserved: the order will ship.
    #[event(name = "OrderCompleted")]
    Completed,
    /// The order will not ship.
    #[event(name = "OrderCancelled")]
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// What can be done to an order.
#[derive(Debug, Clone)]
pub enum OrderCommand {
    /// Place it.
    Place {
        /// Who orders.
        customer: String,
        /// What.
        line: OrderLine,
    },
    /// Complete it (no-op when completed already).
    Complete,
    /// Cancel it (no-op when cancelled already).
    Cancel {
        /// Why.
        reason: String,
    },
}

/// Why an order refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// An order is placed once.
    #[error("the order was placed already")]
    AlreadyPlaced,
    /// Nothing can happen to an order before it is placed.
    #[error("the order was not placed")]
    NotPlaced,
    /// An order of nothing.
    #[error("an order needs a quantity of at least 1")]
    NoQuantity,
    /// A cancelled order is not completed.
    #[error("the order was cancelled")]
    Cancelled,
    /// A completed order is not cancelled.
    #[error("the order was completed")]
    Completed,
}

/// Where an order is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Not placed yet.
    #[default]
    New,
    /// Placed: the checkout is running.
    Placed,
    /// Paid and reserved.
    Completed,
    /// Cancelled, and why.
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// An order's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, command = OrderCommand, error = OrderError)]
pub struct Order {
    /// Where it is.
    pub status: OrderStatus,
    /// Who ordered (once placed).
    pub customer: Option<String>,
    /// What it buys (once placed).
    pub line: Option<OrderLine>,
}

impl Order {
    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus as S;
        match (command, &self.status) {
            (OrderCommand::Place { line, .. }, S::New) if line.quantity == 0 => {
                Err(OrderError::NoQuantity)
            }
            (OrderCommand::Place { customer, line }, S::New) => Ok(vec![OrderEvent::Placed {
                customer,
                sku: line.sku,
                quantity: line.quantity,
                amount_cents: line.amount_cents,
            }]),
            (OrderCommand::Place { .. }, _) => Err(OrderError::AlreadyPlaced),
            (_, S::New) => Err(OrderError::NotPlaced),
            (OrderCommand::Complete, S::Placed) => Ok(vec![OrderEvent::Completed]),
            (OrderCommand::Complete, S::Completed) => Ok(vec![]),
            (OrderCommand::Complete, S::Cancelled { .. }) => Err(OrderError::Cancelled),
            (OrderCommand::Cancel { reason }, S::Placed) => {
                Ok(vec![OrderEvent::Cancelled { reason }])
            }
            (OrderCommand::Cancel { .. }, S::Cancelled { .. }) => Ok(vec![]),
            (OrderCommand::Cancel { .. }, S::Completed) => Err(OrderError::Completed),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed {
                customer,
                sku,
                quantity,
                amount_cents,
            } => {
                self.status = OrderStatus::Placed;
                self.customer = Some(customer.clone());
                self.line = Some(OrderLine {
                    sku: sku.clone(),
                    quantity: *quantity,
                    amount_cents: *amount_cents,
                });
            }
            OrderEvent::Completed => self.status = OrderStatus::Completed,
            OrderEvent::Cancelled { reason } => {
                self.status = OrderStatus::Cancelled {
                    reason: reason.clone(),
                };
            }
        }
    }
}
