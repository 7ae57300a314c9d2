//! The payout saga: money leaves the ledger through an outside bank, a step no database
//! transaction can include. Each step is its own append; when the bank refuses, a
//! compensating event (`PayoutReversed`) puts the money back.
//!
//! 1. `StartPayout`: the account records `PayoutStarted`; the amount leaves the balance, so
//!    it cannot be spent twice while the bank works.
//! 2. The bank is called (here simulated; it may refuse or fail).
//! 3. `SettlePayout` on success, or the compensation `ReversePayout` on refusal.
//!
//! If the process dies between 2 and 3 the payout stays pending on the account (its state
//! lists it), to be settled or reversed once the bank's answer is known.

use std::time::Duration;

use annals::{CommandContext, EventStore};
use uuid::Uuid;

use super::{
    command::AccountCommand,
    ledger::{Ledger, LedgerError, Outcome},
};
use crate::money::Money;

/// What the outside bank answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BankAnswer {
    /// Paid, with the bank's reference.
    Paid(String),
    /// Refused, with the bank's reason.
    Refused(String),
}

/// A simulated outside bank: answers after a short delay, refusing when told to or when the
/// beneficiary looks wrong.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulatedBank {
    /// Refuse every payment (to show the compensation).
    pub fail: bool,
}

impl SimulatedBank {
    /// Asks the bank to pay `amount` to `beneficiary`.
    pub async fn pay(&self, beneficiary: &str, amount: &Money) -> BankAnswer {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.fail {
            BankAnswer::Refused(format!(
                "the beneficiary's bank rejected {amount} to {beneficiary}"
            ))
        } else if !beneficiary.chars().any(|c| c.is_ascii_digit()) {
            BankAnswer::Refused(format!("{beneficiary:?} is not an account number"))
        } else {
            BankAnswer::Paid(format!(
                "BANK-{}",
                &Uuid::now_v7().simple().to_string()[..12]
            ))
        }
    }
}

/// How a payout ended.
#[derive(Debug, Clone)]
pub struct PayoutResult {
    /// The saga's id.
    pub payout_id: Uuid,
    /// What the bank answered.
    pub answer: BankAnswer,
    /// The account after the last step.
    pub outcome: Outcome,
}

/// Runs the payout saga for `amount` minor units from `account` to `beneficiary`.
///
/// # Errors
/// A [`LedgerError`] from step 1 (nothing happened) or from step 3 (the payout is left
/// pending on the account and the bank's answer is in the error's context).
pub async fn run_payout<S: EventStore + Clone>(
    ledger: &Ledger<S>,
    bank: &SimulatedBank,
    account: &str,
    beneficiary: &str,
    amount: i64,
    memo: &str,
) -> Result<PayoutResult, LedgerError> {
    let payout_id = Uuid::now_v7();
    let ctx = CommandContext::new().with_correlation_id(payout_id);
    let started = ledger
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
    let currency = started
        .account
        .currency
        .clone()
        .ok_or_else(|| LedgerError::UnknownAccount(account.to_owned()))?;
    let answer = bank.pay(beneficiary, &Money::new(amount, currency)).await;
    let finish = match &answer {
        BankAnswer::Paid(_) => AccountCommand::SettlePayout { payout_id },
        BankAnswer::Refused(reason) => AccountCommand::ReversePayout {
            payout_id,
            reason: reason.clone(),
        },
    };
    let outcome = ledger.execute(account, finish, &ctx).await?;
    Ok(PayoutResult {
        payout_id,
        answer,
        outcome,
    })
}
