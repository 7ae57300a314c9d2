//! A stock item (id: its SKU): goods received, reserved for orders while they last.

use std::collections::BTreeMap;

use annals::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The events of a stock item's stream (`stock-{sku}`).
#[derive(Debug, Clone, PartialEq, Eq, DomainEvent)]
pub enum StockEvent {
    /// Goods came in.
    #[event(name = "StockReceived")]
    Received {
        /// How many.
        quantity: u32,
    },
    /// Goods were set aside for an order.
    #[event(name = "StockReserved")]
    Reserved {
        /// The order.
        order: String,
        /// How many.
        quantity: u32,
    },
    /// Not enough goods for an order: nothing was set aside.
    #[event(name = "ReservationFailed")]
    ReservationFailed {
        /// The order.
        order: String,
        /// How many it wanted.
        requested: u32,
        /// How many there were.
        available: u32,
    },
}

/// What can be done to a stock item.
#[derive(Debug, Clone)]
pub enum StockCommand {
    /// Goods came in.
    Receive {
        /// How many.
        quantity: u32,
    },
    /// Set goods aside for an order, or record that there are not enough (never refused:
    /// the saga reacts to either event). No-op for an order that has its reservation.
    Reserve {
        /// The order.
        order: String,
        /// How many.
        quantity: u32,
    },
}

/// Why a stock item refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    /// Receiving or reserving nothing.
    #[error("a quantity of at least 1 is needed")]
    NoQuantity,
}

/// A stock item's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "stock", event = StockEvent, command = StockCommand, error = StockError)]
pub struct Stock {
    /// How many can still be reserved.
    pub available: u32,
    /// The reservations, by order.
    pub reserved: BTreeMap<String, u32>,
}

impl Stock {
    fn handle(&self, command: StockCommand) -> Result<Vec<StockEvent>, StockError> {
        match command {
            StockCommand::Receive { quantity: 0 } | StockCommand::Reserve { quantity: 0, .. } => {
                Err(StockError::NoQuantity)
            }
            StockCommand::Receive { quantity } => Ok(vec![StockEvent::Received { quantity }]),
            StockCommand::Reserve { order, .. } if self.reserved.contains_key(&order) => Ok(vec![]),
            StockCommand::Reserve { order, quantity } if quantity > self.available => {
                Ok(vec![StockEvent::ReservationFailed {
                    order,
                    requested: quantity,
                    available: self.available,
                }])
            }
            StockCommand::Reserve { order, quantity } => {
                Ok(vec![StockEvent::Reserved { order, quantity }])
            }
        }
    }

    fn apply(&mut self, event: &StockEvent) {
        match event {
            StockEvent::Received { quantity } => {
                self.available = self.available.saturating_add(*quantity);
            }
            StockEvent::Reserved { order, quantity } => {
                self.available = self.available.saturating_sub(*quantity);
                self.reserved.insert(order.clone(), *quantity);
            }
            StockEvent::ReservationFailed { .. } => {}
        }
    }
}
