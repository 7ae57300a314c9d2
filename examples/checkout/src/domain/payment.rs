//! The payment of one order (same id as the order): requested by the checkout saga, charged
//! by the payment processor at the gateway, refunded when the saga compensates.

use annals::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The events of a payment's stream (`payment-{order id}`).
#[derive(Debug, Clone, PartialEq, Eq, DomainEvent)]
pub enum PaymentEvent {
    /// The saga asked for the money: the payment processor charges the card.
    #[event(name = "PaymentRequested")]
    Requested {
        /// How much, in cents.
        amount_cents: u64,
    },
    /// The gateway charged the card.
    #[event(name = "PaymentConfirmed")]
    Confirmed {
        /// The gateway's id of the charge.
        charge_id: String,
    },
    /// No money was taken: the card was declined, or the order was cancelled before the
    /// charge.
    #[event(name = "PaymentFailed")]
    Failed {
        /// Why.
        reason: String,
    },
    /// The saga asked for the money back: the payment processor refunds at the gateway.
    #[event(name = "RefundRequested")]
    RefundRequested {
        /// Why.
        reason: String,
    },
    /// The gateway gave the money back.
    #[event(name = "PaymentRefunded")]
    Refunded {
        /// The gateway's id of the refund.
        refund_id: String,
    },
}

/// What can be done to a payment.
#[derive(Debug, Clone)]
pub enum PaymentCommand {
    /// Ask for `amount_cents`.
    Request {
        /// How much, in cents.
        amount_cents: u64,
    },
    /// Record the gateway's charge (no-op when recorded already).
    Confirm {
        /// The gateway's id of the charge.
        charge_id: String,
    },
    /// Record that no money was taken (no-op when failed already).
    Fail {
        /// Why.
        reason: String,
    },
    /// Ask for the money back (no-op when asked already).
    Refund {
        /// Why.
        reason: String,
    },
    /// Record the gateway's refund (no-op when recorded already).
    MarkRefunded {
        /// The gateway's id of the refund.
        refund_id: String,
    },
}

/// Why a payment refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// A payment is requested once.
    #[error("the payment was requested already")]
    AlreadyRequested,
    /// Only a requested payment is confirmed or fails.
    #[error("the payment is not waiting for a charge (it is {0:?})")]
    NotAwaitingCharge(PaymentStatus),
    /// Only a confirmed payment is refunded.
    #[error("the payment was not charged (it is {0:?})")]
    NotCharged(PaymentStatus),
    /// Only a refund asked for is recorded.
    #[error("no refund was asked for (the payment is {0:?})")]
    NoRefundAsked(PaymentStatus),
}

/// Where a payment is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    /// Not requested.
    #[default]
    None,
    /// Waiting for the gateway.
    Requested,
    /// Charged.
    Confirmed,
    /// Not charged, for good.
    Failed,
    /// Charged; the refund is under way.
    Refunding,
    /// Charged and given back.
    Refunded,
}

/// A payment's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "payment", event = PaymentEvent, command = PaymentCommand, error = PaymentError)]
pub struct Payment {
    /// Where it is.
    pub status: PaymentStatus,
    /// How much, in cents.
    pub amount_cents: u64,
    /// The gateway's charge, once charged.
    pub charge_id: Option<String>,
    /// The gateway's refund, once refunded.
    pub refund_id: Option<String>,
    /// Why it failed or was refunded.
    pub reason: Option<String>,
}

impl Payment {
    fn handle(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        use PaymentStatus as S;
        let status = self.status;
        Ok(match (command, status) {
            (PaymentCommand::Request { amount_cents }, S::None) => {
                vec![PaymentEvent::Requested { amount_cents }]
            }
            (PaymentCommand::Request { .. }, _) => return Err(PaymentError::AlreadyRequested),
            (PaymentCommand::Confirm { charge_id }, S::Requested) => {
                vec![PaymentEvent::Confirmed { charge_id }]
            }
            (PaymentCommand::Confirm { charge_id }, S::Confirmed | S::Refunding | S::Refunded)
                if self.charge_id.as_deref() == Some(charge_id.as_str()) =>
            {
                vec![]
            }
            (PaymentCommand::Fail { reason }, S::Requested) => {
                vec![PaymentEvent::Failed { reason }]
            }
            (PaymentCommand::Fail { .. }, S::Failed) => vec![],
            (PaymentCommand::Confirm { .. } | PaymentCommand::Fail { .. }, _) => {
                return Err(PaymentError::NotAwaitingCharge(status));
            }
            (PaymentCommand::Refund { reason }, S::Confirmed) => {
                vec![PaymentEvent::RefundRequested { reason }]
            }
            (PaymentCommand::Refund { .. }, S::Refunding | S::Refunded) => vec![],
            (PaymentCommand::Refund { .. }, _) => return Err(PaymentError::NotCharged(status)),
            (PaymentCommand::MarkRefunded { refund_id }, S::Refunding) => {
                vec![PaymentEvent::Refunded { refund_id }]
            }
            (PaymentCommand::MarkRefunded { .. }, S::Refunded) => vec![],
            (PaymentCommand::MarkRefunded { .. }, _) => {
                return Err(PaymentError::NoRefundAsked(status));
            }
        })
    }

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::Requested { amount_cents } => {
                self.status = PaymentStatus::Requested;
                self.amount_cents = *amount_cents;
            }
            PaymentEvent::Confirmed { charge_id } => {
                self.status = PaymentStatus::Confirmed;
                self.charge_id = Some(charge_id.clone());
            }
            PaymentEvent::Failed { reason } => {
                self.status = PaymentStatus::Failed;
                self.reason = Some(reason.clone());
            }
            PaymentEvent::RefundRequested { reason } => {
                self.status = PaymentStatus::Refunding;
                self.reason = Some(reason.clone());
            }
            PaymentEvent::Refunded { refund_id } => {
                self.status = PaymentStatus::Refunded;
                self.refund_id = Some(refund_id.clone());
            }
        }
    }
}
