//! A payment gateway simulated in process: it answers after a short delay, keeps every
//! charge and refund by idempotency key (a repeated request gets the first answer and
//! moves no money), and can be told, per order, to decline, to fail for a while, to hang,
//! or to answer late.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use annals_projections::Retryable;
use uuid::Uuid;

/// How the gateway treats the charges of one order (its `reference`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Plan {
    /// Charge, and answer after the gateway's latency.
    #[default]
    Approve,
    /// Refuse the card: a permanent error, not worth retrying.
    Decline {
        /// The issuer's reason.
        reason: String,
    },
    /// Answer "503 unavailable" (a transient error) to the next `times` calls, then
    /// approve.
    Unavailable {
        /// How many calls fail.
        times: u32,
    },
    /// Never answer and charge nothing (a connection that went silent).
    Hang,
    /// Charge at once but answer only after `after`: a caller that gives up sooner does
    /// not know the card was charged; asking again with the same idempotency key gets the
    /// charge.
    AnswerLate {
        /// When the answer comes.
        after: Duration,
    },
}

/// Why the gateway did not charge or refund.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The card was refused: permanent.
    #[error("card declined: {reason}")]
    Declined {
        /// The issuer's reason.
        reason: String,
    },
    /// The gateway is having trouble (a 503): transient.
    #[error("payment gateway unavailable (503)")]
    Unavailable,
    /// No such charge to refund: permanent.
    #[error("no charge {charge_id}")]
    UnknownCharge {
        /// The charge asked for.
        charge_id: String,
    },
}

impl Retryable for GatewayError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable)
    }
}

/// Money taken from a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The gateway's id (`ch_0001`).
    pub id: String,
    /// The merchant's reference: the order id.
    pub reference: String,
    /// How much, in cents.
    pub amount_cents: u64,
}

/// Money given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// The gateway's id (`re_0001`).
    pub id: String,
    /// The charge it gives back.
    pub charge_id: String,
    /// How much, in cents.
    pub amount_cents: u64,
}

/// The simulated gateway. Cheap to clone: clones share the books.
#[derive(Debug, Clone)]
pub struct SimulatedGateway {
    latency: Duration,
    books: Arc<Mutex<Books>>,
}

#[derive(Debug, Default)]
struct Books {
    plans: HashMap<String, Plan>,
    /// Charges by idempotency key, and in the order made.
    charges: HashMap<Uuid, Charge>,
    charge_log: Vec<Charge>,
    refunds: HashMap<Uuid, Refund>,
    refund_log: Vec<Refund>,
    /// Charge requests received, by reference (repeats included).
    attempts: HashMap<String, u32>,
}

impl Books {
    fn charge(&mut self, key: Uuid, reference: &str, amount_cents: u64) -> Charge {
        if let Some(done) = self.charges.get(&key) {
            return done.clone();
        }
        let charge = Charge {
            id: format!("ch_{:04}", self.charge_log.len() + 1),
            reference: reference.to_owned(),
            amount_cents,
        };
        self.charges.insert(key, charge.clone());
        self.charge_log.push(charge.clone());
        charge
    }
}

/// What one charge request will do, decided under the lock.
enum Step {
    Answer(Result<Charge, GatewayError>, Duration),
    ChargeAfter(Duration),
    Hang,
}

impl SimulatedGateway {
    /// A gateway that answers after `latency` and approves every charge unless told
    /// otherwise ([`SimulatedGateway::plan`]).
    pub fn new(latency: Duration) -> Self {
        Self {
            latency,
            books: Arc::default(),
        }
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on, treats the charges of order `reference` as `plan` says.
    pub fn plan(&self, reference: &str, plan: Plan) {
        self.books().plans.insert(reference.to_owned(), plan);
    }

    /// Charges `amount_cents` for order `reference`, once per idempotency key `key`: a
    /// request with a key seen before gets the first charge back and takes no money.
    ///
    /// # Errors
    /// As the order's [`Plan`] says.
    pub async fn charge(
        &self,
        key: Uuid,
        reference: &str,
        amount_cents: u64,
    ) -> Result<Charge, GatewayError> {
        let step = {
            let mut books = self.books();
            *books.attempts.entry(reference.to_owned()).or_default() += 1;
            match books.charges.get(&key) {
                Some(done) => Step::Answer(Ok(done.clone()), self.latency),
                None => match books.plans.get_mut(reference) {
                    None | Some(Plan::Approve) => Step::ChargeAfter(self.latency),
                    Some(Plan::Decline { reason }) => Step::Answer(
                        Err(GatewayError::Declined {
                            reason: reason.clone(),
                        }),
                        self.latency,
                    ),
                    Some(Plan::Unavailable { times: 0 }) => Step::ChargeAfter(self.latency),
                    Some(Plan::Unavailable { times }) => {
                        *times -= 1;
                        Step::Answer(Err(GatewayError::Unavailable), self.latency)
                    }
                    Some(Plan::Hang) => Step::Hang,
                    Some(Plan::AnswerLate { after }) => {
                        let after = *after;
                        books.charge(key, reference, amount_cents);
                        Step::ChargeAfter(after)
                    }
                },
            }
        };
        match step {
            Step::Answer(answer, after) => {
                tokio::time::sleep(after).await;
                answer
            }
            // The charge is made when the answer leaves: a caller that gave up first
            // (dropped this future) charged nothing, unless the plan charged already.
            Step::ChargeAfter(after) => {
                tokio::time::sleep(after).await;
                Ok(self.books().charge(key, reference, amount_cents))
            }
            Step::Hang => std::future::pending().await,
        }
    }

    /// Refunds the charge `charge_id` in full, once per idempotency key `key`.
    ///
    /// # Errors
    /// [`GatewayError::UnknownCharge`].
    pub async fn refund(&self, key: Uuid, charge_id: &str) -> Result<Refund, GatewayError> {
        tokio::time::sleep(self.latency).await;
        let mut books = self.books();
        if let Some(done) = books.refunds.get(&key) {
            return Ok(done.clone());
        }
        let amount_cents = books
            .charge_log
            .iter()
            .find(|c| c.id == charge_id)
            .map(|c| c.amount_cents)
            .ok_or_else(|| GatewayError::UnknownCharge {
                charge_id: charge_id.to_owned(),
            })?;
        let refund = Refund {
            id: format!("re_{:04}", books.refund_log.len() + 1),
            charge_id: charge_id.to_owned(),
            amount_cents,
        };
        books.refunds.insert(key, refund.clone());
        books.refund_log.push(refund.clone());
        Ok(refund)
    }

    /// Every charge made, in order.
    pub fn charges(&self) -> Vec<Charge> {
        self.books().charge_log.clone()
    }

    /// Every refund made, in order.
    pub fn refunds(&self) -> Vec<Refund> {
        self.books().refund_log.clone()
    }

    /// The charges made for order `reference`.
    pub fn charges_for(&self, reference: &str) -> Vec<Charge> {
        self.books()
            .charge_log
            .iter()
            .filter(|c| c.reference == reference)
            .cloned()
            .collect()
    }

    /// How many charge requests order `reference` sent (retries and repeats included).
    pub fn attempts_for(&self, reference: &str) -> u32 {
        self.books()
            .attempts
            .get(reference)
            .copied()
            .unwrap_or_default()
    }
}
