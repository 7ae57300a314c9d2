//! The payout saga: money leaves the ledger through an outside bank, a step no database
//! transaction can include. Each step is its own append, and a reactor (not the command
//! that asked for the payout) talks to the bank, so a process killed at any point leaves
//! nothing half done:
//!
//! 1. `ledger payout` runs `StartPayout`: the account records `PayoutStarted`; the amount
//!    leaves the balance, so it cannot be spent twice while the bank works. The command
//!    returns here.
//! 2. The [`Payouts`] reactor, run by any `ledger` process that works the reactors
//!    (`ledger work`, the demo), sees `PayoutStarted` and asks the bank, through a guarded
//!    [`Dependency`] (timeout, retries with jitter, circuit breaker, bulkhead), with an
//!    idempotency key derived from the event: asked twice, the bank answers the same.
//! 3. It records `PayoutSettled` when the bank paid, or the compensation `PayoutReversed`
//!    when it refused, as an idempotent command: a reaction repeated after a crash finds
//!    it stored and does not record it again.
//!
//! Until step 3 the payout is pending on the account (`ledger status` lists it).

use std::time::Duration;

use annals::{BoxError, CommandContext, DomainEvent, EventStore, RecordedEvent};
use annals_projections::{
    EventFilter, Reaction, Reactor,
    resilience::{Dependency, DependencyConfig, Retryable},
};
use uuid::Uuid;

use super::{
    account::Account,
    command::AccountCommand,
    events::AccountEvent,
    ledger::{Ledger, LedgerError, Outcome, account_of},
};
use crate::money::Money;

/// The name the payout reactor runs under (lease, checkpoint, status).
pub const PAYOUTS: &str = "payouts";

/// The metadata field that tells the simulated bank to refuse a payout (`--bank-fails`).
pub const SIMULATE_REFUSAL: &str = "simulated_bank_refuses";

/// What the outside bank answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BankAnswer {
    /// Paid, with the bank's reference.
    Paid(String),
    /// Refused, with the bank's reason.
    Refused(String),
}

/// The bank could not be reached (never returned by the simulation, but a real bank's
/// client has them, and the reactor retries them).
#[derive(Debug, thiserror::Error)]
#[error("the bank is unreachable: {0}")]
pub struct BankUnreachable(String);

impl Retryable for BankUnreachable {
    fn is_transient(&self) -> bool {
        true
    }
}

/// A simulated outside bank: answers after a short delay, refusing when told to or when the
/// beneficiary looks wrong. Like a real payment API it honours idempotency keys: the same
/// key gets the same answer (and reference), so a payout asked twice is paid once.
#[derive(Debug, Clone, Copy)]
pub struct SimulatedBank {
    /// How long the bank takes to answer.
    pub latency: Duration,
}

impl Default for SimulatedBank {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(20),
        }
    }
}

impl SimulatedBank {
    /// Asks the bank to pay `amount` to `beneficiary`, under `idempotency_key`; `refuse`
    /// makes it refuse (to show the compensation).
    ///
    /// # Errors
    /// [`BankUnreachable`] (not in this simulation).
    pub async fn pay(
        &self,
        idempotency_key: Uuid,
        beneficiary: &str,
        amount: &Money,
        refuse: bool,
    ) -> Result<BankAnswer, BankUnreachable> {
        tokio::time::sleep(self.latency).await;
        Ok(if refuse {
            BankAnswer::Refused(format!(
                "the beneficiary's bank rejected {amount} to {beneficiary}"
            ))
        } else if !beneficiary.chars().any(|c| c.is_ascii_digit()) {
            BankAnswer::Refused(format!("{beneficiary:?} is not an account number"))
        } else {
            BankAnswer::Paid(format!(
                "BANK-{}",
                &idempotency_key.simple().to_string()[..12]
            ))
        })
    }
}

/// A payout just recorded (step 1).
#[derive(Debug, Clone)]
pub struct StartedPayout {
    /// The saga's id (also the correlation id of every event of the payout).
    pub payout_id: Uuid,
    /// The account after the money left it.
    pub outcome: Outcome,
}

/// Records a payout of `amount` minor units from `account` to `beneficiary` (step 1): the
/// money leaves the balance and waits for the bank. The [`Payouts`] reactor does the rest.
/// `bank_refuses` asks the simulated bank to refuse it.
///
/// # Errors
/// A [`LedgerError`]; nothing is recorded then.
pub async fn start_payout<S: EventStore + Clone>(
    ledger: &Ledger<S>,
    account: &str,
    beneficiary: &str,
    amount: i64,
    memo: &str,
    bank_refuses: bool,
) -> Result<StartedPayout, LedgerError> {
    let payout_id = Uuid::now_v7();
    let mut ctx = CommandContext::new().with_correlation_id(payout_id);
    if bank_refuses {
        ctx = ctx.with_custom(SIMULATE_REFUSAL, serde_json::Value::Bool(true));
    }
    let outcome = ledger
        .execute(
            account,
            AccountCommand::StartPayout {
                payout_id,
                beneficiary: beneficiary.to_owned(),
                amount,
                memo: memo.to_owned(),
            },
            &ctx,
        )
        .await?;
    Ok(StartedPayout { payout_id, outcome })
}

/// The bank's guards: a 2 s timeout per attempt, 3 retries with jittered backoff, a breaker
/// that opens after 5 failures in a row for 10 s, and at most 8 calls at once.
pub fn bank_dependency() -> Dependency {
    Dependency::new(
        "bank",
        DependencyConfig::default()
            .with_timeout(Duration::from_secs(2))
            .with_retries(3)
            .with_failure_threshold(5)
            .with_open_for(Duration::from_secs(10))
            .with_max_concurrent(8),
    )
}

/// The payout reactor (steps 2 and 3).
#[derive(Debug, Clone)]
pub struct Payouts<S> {
    ledger: Ledger<S>,
    bank: SimulatedBank,
    dependency: Dependency,
}

impl<S: EventStore + Clone> Payouts<S> {
    /// The reactor over `ledger`, calling `bank` through `dependency`.
    pub fn new(ledger: Ledger<S>, bank: SimulatedBank, dependency: Dependency) -> Self {
        Self {
            ledger,
            bank,
            dependency,
        }
    }
}

impl<S: EventStore + Clone + 'static> Reactor<S> for Payouts<S> {
    fn name(&self) -> &str {
        PAYOUTS
    }

    fn filter(&self) -> EventFilter {
        EventFilter::aggregate::<Account>().and_types(["PayoutStarted"])
    }

    fn dependencies(&self) -> Vec<Dependency> {
        vec![self.dependency.clone()]
    }

    async fn react(
        &self,
        event: &RecordedEvent,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let AccountEvent::PayoutStarted {
            payout_id,
            beneficiary,
            amount,
            ..
        } = AccountEvent::decode(event)?
        else {
            return Ok(());
        };
        let account = account_of(&event.stream_id);
        let state = self.ledger.account(&account).await?;
        if !state.pending_payouts.contains_key(&payout_id) {
            // Settled or reversed already (this is a repeated delivery).
            return Ok(());
        }
        let currency = state
            .currency
            .clone()
            .ok_or_else(|| LedgerError::UnknownAccount(account.clone()))?;
        let money = Money::new(amount, currency);
        let refuse = event
            .metadata
            .custom
            .get(SIMULATE_REFUSAL)
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let key = reaction.effect_id();
        let answer = self
            .dependency
            .call(|| self.bank.pay(key, &beneficiary, &money, refuse))
            .await?;
        let finish = match &answer {
            BankAnswer::Paid(reference) => {
                tracing::info!(%payout_id, %account, reference, "payout settled");
                AccountCommand::SettlePayout { payout_id }
            }
            BankAnswer::Refused(reason) => {
                tracing::info!(%payout_id, %account, reason, "payout refused; reversing");
                AccountCommand::ReversePayout {
                    payout_id,
                    reason: reason.clone(),
                }
            }
        };
        let context = reaction.command();
        self.ledger.execute(&account, finish, &context).await?;
        Ok(())
    }
}

/// A payout waiting for the bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPayout {
    /// The account it left.
    pub account: String,
    /// The saga's id.
    pub payout_id: Uuid,
    /// Minor units.
    pub amount: i64,
    /// Who receives it.
    pub beneficiary: String,
}

/// The payouts the log shows started and neither settled nor reversed, oldest first.
///
/// # Errors
/// Store failures and events that do not decode.
pub async fn pending_payouts<S: EventStore>(store: &S) -> Result<Vec<PendingPayout>, LedgerError> {
    use futures::TryStreamExt;
    let mut pending: Vec<PendingPayout> = Vec::new();
    let mut events = store.read_all(annals::LogRead::from_start());
    while let Some(event) = events.try_next().await? {
        if event.stream_id.category() != "account"
            || !event.event_type.as_str().starts_with("Payout")
        {
            continue;
        }
        match AccountEvent::decode(&event)? {
            AccountEvent::PayoutStarted {
                payout_id,
                beneficiary,
                amount,
                ..
            } => pending.push(PendingPayout {
                account: account_of(&event.stream_id),
                payout_id,
                amount,
                beneficiary,
            }),
            AccountEvent::PayoutSettled { payout_id }
            | AccountEvent::PayoutReversed { payout_id, .. } => {
                pending.retain(|p| p.payout_id != payout_id);
            }
            _ => {}
        }
    }
    Ok(pending)
}
