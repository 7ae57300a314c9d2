//! Running one `ledger` command against a store and its read models, and printing the
//! result. Queries first bring their read model up to the store's head, so a command always
//! sees the writes of the commands before it (read-your-writes across processes).

use std::{
    error::Error as StdError,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use annals::{CommandContext, EventStore};

use crate::{
    cli::Command,
    domain::{AccountCommand, BankAnswer, Ledger, LedgerError, SimulatedBank, run_payout},
    money::{Money, MoneyError, format_amount, parse_amount},
    projections::{Balances, Filter, Kv, ProjectionError, SearchIndex, catch_up},
};

mod queries;

/// Why a command failed, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The domain refused, or the store failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A typed amount or currency is wrong.
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// A read model failed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] annals::Error),
    /// The account is not in the store.
    #[error("unknown account {0:?}: open it first with `ledger open {0} OWNER CURRENCY`")]
    UnknownAccount(String),
    /// A command that only the command line (not the demo script) runs.
    #[error("`{0}` cannot run here")]
    NotHere(&'static str),
}

/// The error and its causes on one line: `a: b: c`.
pub fn report(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// The ledger with its read models.
#[derive(Debug)]
pub struct App<S> {
    ledger: Ledger<S>,
    kv: Kv,
    prefix: String,
    search_root: PathBuf,
    embedded: bool,
    replayed: AtomicBool,
}

impl<S: EventStore + Clone> App<S> {
    /// An app over `store`, with its Redis-shaped read models in `kv` under `prefix` and
    /// the search index under `search_root`. `embedded` read models live in this process
    /// and are rebuilt by replay at the first query.
    pub fn new(store: S, kv: Kv, prefix: &str, search_root: PathBuf, embedded: bool) -> Self {
        Self {
            ledger: Ledger::new(store),
            kv,
            prefix: prefix.to_owned(),
            search_root,
            embedded,
            replayed: AtomicBool::new(false),
        }
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger<S> {
        &self.ledger
    }

    /// The balances read model, caught up with the store's head.
    ///
    /// # Errors
    /// Store and read-model failures.
    pub async fn balances(&self) -> Result<Balances, AppError> {
        let mut model = Balances::open(self.kv.clone(), &self.prefix).await?;
        let head = self.ledger.store().head_position().await?;
        let started = Instant::now();
        let n = catch_up(self.ledger.store(), &mut model, head, None).await?;
        if self.embedded && !self.replayed.swap(true, Ordering::Relaxed) {
            eprintln!(
                "(rebuilt the in-process read models by replaying {n} events in {} ms)",
                started.elapsed().as_millis()
            );
        }
        Ok(model)
    }

    /// The search index, caught up with the store's head.
    ///
    /// # Errors
    /// Store and index failures.
    pub async fn search_index(&self) -> Result<SearchIndex, AppError> {
        let mut index = SearchIndex::open(&self.search_root)?;
        let head = self.ledger.store().head_position().await?;
        catch_up(self.ledger.store(), &mut index, head, None).await?;
        Ok(index)
    }

    /// Runs one command, printing what it did.
    ///
    /// # Errors
    /// [`AppError`]; a failed command appends nothing.
    pub async fn run(&self, command: Command) -> Result<(), AppError> {
        let ctx = CommandContext::new();
        let money = |minor: i64, a: &crate::domain::Account| match &a.currency {
            Some(c) => Money::new(minor, c.clone()).to_string(),
            None => format_amount(minor),
        };
        match command {
            Command::Open {
                account,
                owner,
                currency,
            } => {
                let cmd = AccountCommand::Open {
                    owner,
                    currency: currency.clone(),
                };
                let done = self.ledger.execute(&account, cmd, &ctx).await?;
                println!("opened {account} for {} in {currency}", done.account.owner);
            }
            Command::Deposit {
                account,
                amount,
                currency,
                memo,
                counterparty,
            } => {
                let amount = parse_amount(&amount)?;
                let cmd = AccountCommand::Deposit {
                    amount,
                    currency,
                    memo,
                    counterparty,
                };
                let a = self.ledger.execute(&account, cmd, &ctx).await?.account;
                println!(
                    "deposited {} into {account}; balance {}",
                    money(amount, &a),
                    money(a.balance, &a)
                );
            }
            Command::Withdraw {
                account,
                amount,
                currency,
                memo,
            } => {
                let amount = parse_amount(&amount)?;
                let cmd = AccountCommand::Withdraw {
                    amount,
                    currency,
                    memo,
                };
                let a = self.ledger.execute(&account, cmd, &ctx).await?.account;
                println!(
                    "withdrew {} from {account}; balance {}",
                    money(amount, &a),
                    money(a.balance, &a)
                );
            }
            Command::Transfer {
                from,
                to,
                amount,
                currency,
                memo,
            } => {
                let amount = parse_amount(&amount)?;
                let (id, done) = self
                    .ledger
                    .transfer(&from, &to, amount, currency, &memo, &ctx)
                    .await?;
                let a = done.account;
                println!(
                    "transferred {} from {from} to {to} in one atomic append (transfer {id}); {from} now holds {}",
                    money(amount, &a),
                    money(a.balance, &a)
                );
            }
            Command::Payout {
                account,
                amount,
                to,
                memo,
                bank_fails,
            } => {
                let amount = parse_amount(&amount)?;
                let bank = SimulatedBank { fail: bank_fails };
                let r = run_payout(&self.ledger, &bank, &account, &to, amount, &memo).await?;
                let a = r.outcome.account;
                match r.answer {
                    BankAnswer::Paid(reference) => println!(
                        "paid {} from {account} to {to} (bank reference {reference}); balance {}",
                        money(amount, &a),
                        money(a.balance, &a)
                    ),
                    BankAnswer::Refused(reason) => println!(
                        "the bank refused the payout ({reason}); compensated with PayoutReversed, {account} is back at {}",
                        money(a.balance, &a)
                    ),
                }
            }
            Command::Freeze { account, reason } => {
                let done = self
                    .ledger
                    .execute(&account, AccountCommand::Freeze { reason }, &ctx)
                    .await?;
                match done.position {
                    Some(_) => println!("froze {account}: no money moves in or out"),
                    None => println!("{account} was frozen already"),
                }
            }
            Command::Close { account } => {
                self.ledger
                    .execute(&account, AccountCommand::Close, &ctx)
                    .await?;
                println!("closed {account}");
            }
            Command::Balance { account } => self.print_balance(&account).await?,
            Command::History { account } => self.print_history(&account).await?,
            Command::Top { n } => self.print_top(n).await?,
            Command::Search {
                query,
                account,
                min,
                max,
                limit,
            } => {
                let filter = Filter {
                    account,
                    min: min.as_deref().map(parse_amount).transpose()?,
                    max: max.as_deref().map(parse_amount).transpose()?,
                    limit,
                };
                self.print_search(&query, &filter).await?;
            }
            Command::Rebuild { model } => self.rebuild(model).await?,
            Command::Status => self.print_status().await?,
            Command::Seed {
                accounts,
                events,
                seed,
            } => {
                let report = crate::seed::seed(&self.ledger, accounts, events, seed).await?;
                println!("{report}");
            }
            Command::Demo => return Err(AppError::NotHere("demo")),
        }
        Ok(())
    }
}
