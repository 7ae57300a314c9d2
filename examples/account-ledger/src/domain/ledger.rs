//! The ledger's use cases over any event store: single-account commands through the
//! repository, and transfers appended to both accounts in one atomic multi-stream append.

use std::time::Duration;

use annals::{
    Backoff, CommandContext, CommandError, Decision, EventStore, LogPosition, Repository, Retries,
    StreamId,
};
use uuid::Uuid;

use super::{
    account::Account,
    command::{AccountCommand, AccountError},
};
use crate::money::Currency;

/// How often a command is decided again when its account changed meanwhile.
const CONFLICT_RETRIES: u32 = 10;

/// How often an append that failed on a transient store error (a dropped connection) is
/// sent again; safe, since the same event ids are stored once.
const TRANSIENT_RETRIES: u32 = 3;

/// The waits between retries (with jitter, so contending processes spread out).
const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(5),
    max: Duration::from_millis(500),
};

/// Why a ledger command stored nothing. Rejections are for the person who typed the
/// command; conflicts mean "try again"; store failures are infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// No account by that name.
    #[error("unknown account {0:?}: open it first with `ledger open {0} OWNER CURRENCY`")]
    UnknownAccount(String),
    /// The account refused the command.
    #[error("{source} (account {account})")]
    Rejected {
        /// The refusing account.
        account: String,
        /// Its reason.
        source: AccountError,
    },
    /// The account kept changing through every retry.
    #[error("account {0} kept changing while the command ran; run it again")]
    Conflict(String),
    /// The store failed or a stored event did not decode.
    #[error(transparent)]
    Store(#[from] annals::Error),
}

impl LedgerError {
    fn from_command(account: &str, error: CommandError<AccountError>) -> Self {
        match error {
            CommandError::Rejected(AccountError::NotOpen) => {
                Self::UnknownAccount(account.to_owned())
            }
            CommandError::Rejected(source) => Self::Rejected {
                account: account.to_owned(),
                source,
            },
            CommandError::Conflict { .. } => Self::Conflict(account.to_owned()),
            CommandError::Store(e) => Self::Store(e),
            other => Self::Conflict(format!("{account} ({other})")),
        }
    }
}

/// What a successful command stored.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The state of the (first) account after it.
    pub account: Account,
    /// The global position of the last event appended (`None`: nothing changed).
    pub position: Option<LogPosition>,
}

/// The ledger: accounts in an event store.
#[derive(Debug, Clone)]
pub struct Ledger<S> {
    accounts: Repository<Account, S>,
}

impl<S: EventStore + Clone> Ledger<S> {
    /// A ledger over `store`.
    ///
    /// Every command loads its account afresh (snapshot plus tail): the repository's cache
    /// is not used, because transfers append through `append_multi` beside it and a stale
    /// cached state could refuse a command (say, for insufficient funds) without ever
    /// reaching the store's version check.
    pub fn new(store: S) -> Self {
        Self {
            accounts: Repository::new(store).with_retries(
                Retries::none()
                    .conflicts(CONFLICT_RETRIES)
                    .transient(TRANSIENT_RETRIES)
                    .with_backoff(BACKOFF)
                    .with_sleep(|d| Box::pin(tokio::time::sleep(d))),
            ),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        self.accounts.store()
    }

    /// Loads an account.
    ///
    /// # Errors
    /// [`LedgerError::UnknownAccount`] when it was never opened; store failures.
    pub async fn account(&self, id: &str) -> Result<Account, LedgerError> {
        let loaded = self
            .accounts
            .load(id)
            .await
            .map_err(|e| self.bad_id(id, e))?;
        if loaded.version == 0 {
            return Err(LedgerError::UnknownAccount(id.to_owned()));
        }
        Ok(loaded.state)
    }

    fn bad_id(&self, id: &str, error: annals::Error) -> LedgerError {
        match error {
            annals::Error::InvalidStreamId { .. } => LedgerError::UnknownAccount(id.to_owned()),
            other => LedgerError::Store(other),
        }
    }

    /// Runs one command against one account.
    ///
    /// # Errors
    /// See [`LedgerError`]; nothing is appended on any error.
    pub async fn execute(
        &self,
        id: &str,
        command: AccountCommand,
        ctx: &CommandContext,
    ) -> Result<Outcome, LedgerError> {
        let done = self
            .accounts
            .execute(id, command, ctx)
            .await
            .map_err(|e| LedgerError::from_command(id, e))?;
        Ok(Outcome {
            account: done.state,
            position: done.append.map(|a| a.last_position),
        })
    }

    /// Moves `amount` from one account to another: both sides are decided on the current
    /// state of each account and appended in one multi-stream append, each stream at its
    /// expected version. A concurrent change of either account makes the append conflict;
    /// it is then decided again from fresh state.
    ///
    /// # Errors
    /// See [`LedgerError`]; neither account changes on any error.
    pub async fn transfer(
        &self,
        from: &str,
        to: &str,
        amount: i64,
        currency: Option<Currency>,
        memo: &str,
        ctx: &CommandContext,
    ) -> Result<(Uuid, Outcome), LedgerError> {
        if from == to {
            return Err(LedgerError::Rejected {
                account: from.to_owned(),
                source: AccountError::SelfTransfer,
            });
        }
        let transfer_id = Uuid::now_v7();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let debit = self
                .decide(
                    from,
                    AccountCommand::SendTransfer {
                        transfer_id,
                        to: to.to_owned(),
                        amount,
                        currency: currency.clone(),
                        memo: memo.to_owned(),
                    },
                    ctx,
                )
                .await?;
            let from_currency = debit
                .state
                .currency
                .clone()
                .ok_or_else(|| LedgerError::UnknownAccount(from.to_owned()))?;
            let credit = self
                .decide(
                    to,
                    AccountCommand::ReceiveTransfer {
                        transfer_id,
                        from: from.to_owned(),
                        amount,
                        currency: from_currency,
                        memo: memo.to_owned(),
                    },
                    ctx,
                )
                .await?;
            let appends = vec![debit.to_append(), credit.to_append()];
            let mut transient = 0;
            let appended = loop {
                // The same appends again after a transient failure: the same event ids are
                // stored once, so a lost answer is answered by the store's idempotency.
                match self.store().append_multi(appends.clone()).await {
                    Err(e) if e.is_transient() && transient < TRANSIENT_RETRIES => {
                        tokio::time::sleep(BACKOFF.delay(transient)).await;
                        transient += 1;
                    }
                    other => break other,
                }
            };
            match appended {
                Ok(results) => {
                    let position = results.iter().map(|r| r.last_position).max();
                    return Ok((
                        transfer_id,
                        Outcome {
                            account: debit.state,
                            position,
                        },
                    ));
                }
                Err(annals::Error::Conflict { stream, .. }) => {
                    if attempts > CONFLICT_RETRIES {
                        return Err(LedgerError::Conflict(account_of(&stream)));
                    }
                    tokio::time::sleep(BACKOFF.delay(attempts - 1)).await;
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    async fn decide(
        &self,
        id: &str,
        command: AccountCommand,
        ctx: &CommandContext,
    ) -> Result<Decision<Account>, LedgerError> {
        self.accounts
            .decide(id, command, ctx)
            .await
            .map_err(|e| LedgerError::from_command(id, e))
    }
}

/// The account id inside an account stream id (`account-alice` is `alice`).
pub fn account_of(stream: &StreamId) -> String {
    let s = stream.as_str();
    s.strip_prefix("account-").unwrap_or(s).to_owned()
}
