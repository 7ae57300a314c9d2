//! Running one `ledger` command against a store and its read models, and printing the
//! result. Commands append to the store and need no read model; queries first bring their
//! read model up to the store's head, so a query always sees the writes of the commands
//! before it (read-your-writes across processes).

use std::{
    error::Error as StdError,
    io::Read as _,
    path::{Path, PathBuf},
};

use annals::{CommandContext, EventStore};

use crate::{
    cli::Command,
    domain::{AccountCommand, Ledger, LedgerError, SimulatedBank, start_payout},
    money::{Money, MoneyError, format_amount, parse_amount},
    notify::{NatsSettings, NotifyError, NotifyStore, NotifyTarget},
    projections::{Filter, ReadError},
};

mod queries;
mod read_side;

pub use read_side::{BalancesTarget, ReadConfig};

/// Writes a line to stdout; a closed pipe (`ledger history alice | head -3`) becomes
/// [`AppError::Output`], which ends the command quietly.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::app::AppError::Output)?
    }};
}
pub(crate) use say;

/// Why a command failed, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The domain refused, or the store failed.
    #[error(transparent)]
    Ledger(LedgerError),
    /// An event is larger than the store takes (a long memo).
    #[error(
        "too long: the event would be {size} bytes, and the store takes at most {limit} bytes per event; shorten the memo"
    )]
    TooLarge {
        /// The event's size in bytes.
        size: usize,
        /// The store's limit in bytes.
        limit: usize,
    },
    /// A typed amount or currency is wrong.
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// A read model failed or is unavailable.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The broker or the notification store failed.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] annals::Error),
    /// The account is not in the store.
    #[error("unknown account {0:?}: open it first with `ledger open {0} OWNER CURRENCY`")]
    UnknownAccount(String),
    /// Arguments that cannot mean anything (`--limit 0`, `--min` above `--max`).
    #[error("{0}")]
    BadArgument(String),
    /// `--memo-file` could not be read.
    #[error("cannot read the memo from {path}")]
    MemoFile {
        /// The file (`-` for stdin).
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Standard output is closed or failed (a closed pipe ends the command quietly).
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    /// A command that only the command line (not the demo script) runs.
    #[error("`{0}` cannot run here")]
    NotHere(&'static str),
}

impl From<LedgerError> for AppError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Store(annals::Error::PayloadTooLarge { size, limit, .. }) => {
                Self::TooLarge { size, limit }
            }
            other => Self::Ledger(other),
        }
    }
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

/// True when `error` (or a cause) is a write to a closed pipe: the reader (`head`) has all
/// it wanted, and the command ends quietly, as Unix tools do.
pub fn is_broken_pipe(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The memo: `--memo`, or the text of `--memo-file` (`-`: standard input) without its
/// final line break.
fn memo_text(memo: String, file: Option<PathBuf>) -> Result<String, AppError> {
    let Some(path) = file else {
        return Ok(memo);
    };
    let failed = |source| AppError::MemoFile {
        path: path.display().to_string(),
        source,
    };
    let mut text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(failed)?;
        text
    } else {
        std::fs::read_to_string(&path).map_err(failed)?
    };
    for end in ["\r\n", "\n"] {
        if text.ends_with(end) {
            text.truncate(text.len() - end.len());
            break;
        }
    }
    Ok(text)
}

/// Checks the search arguments before anything is read.
fn search_filter(
    account: Option<String>,
    min: Option<&str>,
    max: Option<&str>,
    limit: usize,
) -> Result<Filter, AppError> {
    if limit == 0 {
        return Err(AppError::BadArgument(
            "bad --limit 0: ask for at least one hit".to_owned(),
        ));
    }
    let min = min.map(parse_amount).transpose()?;
    let max = max.map(parse_amount).transpose()?;
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        return Err(AppError::BadArgument(format!(
            "bad range: --min {} is more than --max {}, so nothing could match",
            format_amount(lo),
            format_amount(hi)
        )));
    }
    Ok(Filter {
        account,
        min,
        max,
        limit,
    })
}

/// The ledger with its read models.
#[derive(Debug)]
pub struct App<S> {
    ledger: Ledger<S>,
    read: read_side::ReadSide<S>,
    nats: Option<NatsSettings>,
    notify: Option<NotifyTarget>,
}

impl<S: EventStore + Clone + 'static> App<S> {
    /// An app over `store`, with its read models as `read` says. No read model is touched
    /// before the first query.
    pub fn new(store: S, read: ReadConfig) -> Self {
        Self {
            ledger: Ledger::new(store.clone()),
            read: read_side::ReadSide::new(store, read),
            nats: None,
            notify: None,
        }
    }

    /// Publishes the account events to NATS in `ledger work`, and consumes them in
    /// `ledger notify` (none: nothing is published).
    pub fn with_nats(mut self, nats: Option<NatsSettings>) -> Self {
        self.nats = nats;
        self
    }

    /// Keeps the notification feed (`ledger notify`, `ledger notifications`) in `target`.
    pub fn with_notify_store(mut self, target: NotifyTarget) -> Self {
        self.notify = Some(target);
        self
    }

    async fn notify_store(&self) -> Result<NotifyStore, AppError> {
        let target = self.notify.as_ref().ok_or(AppError::NotHere("notify"))?;
        Ok(NotifyStore::open(target).await?)
    }

    /// Sets how long this process's leases outlive it if it is killed (default 5 s).
    pub fn with_lease_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.read.set_lease_ttl(ttl);
        self
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger<S> {
        &self.ledger
    }

    /// Stops the projections this app started, cleanly (their leases are released, so the
    /// next process takes them over at once).
    pub async fn shutdown(self) {
        self.read.shutdown().await;
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
                say!("opened {account} for {} in {currency}", done.account.owner);
            }
            Command::Deposit {
                account,
                amount,
                currency,
                memo,
                memo_file,
                counterparty,
            } => {
                let memo = memo_text(memo, memo_file)?;
                let amount = parse_amount(&amount)?;
                let cmd = AccountCommand::Deposit {
                    amount,
                    currency,
                    memo,
                    counterparty,
                };
                let a = self.ledger.execute(&account, cmd, &ctx).await?.account;
                say!(
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
                memo_file,
            } => {
                let memo = memo_text(memo, memo_file)?;
                let amount = parse_amount(&amount)?;
                let cmd = AccountCommand::Withdraw {
                    amount,
                    currency,
                    memo,
                };
                let a = self.ledger.execute(&account, cmd, &ctx).await?.account;
                say!(
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
                memo_file,
            } => {
                let memo = memo_text(memo, memo_file)?;
                let amount = parse_amount(&amount)?;
                let (id, done) = self
                    .ledger
                    .transfer(&from, &to, amount, currency, &memo, &ctx)
                    .await?;
                let a = done.account;
                say!(
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
                memo_file,
                bank_fails,
            } => {
                let memo = memo_text(memo, memo_file)?;
                let amount = parse_amount(&amount)?;
                let started =
                    start_payout(&self.ledger, &account, &to, amount, &memo, bank_fails).await?;
                let a = started.outcome.account;
                say!(
                    "payout {} recorded: {} left {account} for {to} and waits for the bank (`ledger work` asks it; `ledger status` lists pending payouts); balance {}",
                    started.payout_id,
                    money(amount, &a),
                    money(a.balance, &a)
                );
            }
            Command::Work {
                once,
                bank_latency_ms,
            } => {
                let bank = SimulatedBank {
                    latency: std::time::Duration::from_millis(bank_latency_ms),
                };
                if !once {
                    eprintln!("working the reactors until Ctrl-C");
                }
                let before = self.ledger.store().head_position().await?;
                let publisher = self
                    .nats
                    .as_ref()
                    .map(|n| (n.publisher_name(), n.publisher()));
                let statuses = self.read.work(&self.ledger, bank, once, publisher).await?;
                self.print_answered(before).await?;
                for status in statuses {
                    say!("{status}");
                }
            }
            Command::Freeze { account, reason } => {
                let done = self
                    .ledger
                    .execute(&account, AccountCommand::Freeze { reason }, &ctx)
                    .await?;
                match done.position {
                    Some(_) => say!("froze {account}: no money moves in or out"),
                    None => say!("{account} was frozen already"),
                }
            }
            Command::Close { account } => {
                self.ledger
                    .execute(&account, AccountCommand::Close, &ctx)
                    .await?;
                say!("closed {account}");
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
                let filter = search_filter(account, min.as_deref(), max.as_deref(), limit)?;
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
                say!("{report}");
            }
            Command::Notify { once, ack_wait } => {
                let nats = self.nats.as_ref().ok_or(NotifyError::NoBroker)?;
                let store = self.notify_store().await?;
                if !once {
                    eprintln!(
                        "consuming {} from {} into the notification feeds until Ctrl-C",
                        nats.stream, nats.url
                    );
                }
                let outcome = crate::notify::consume(nats, &store, ack_wait, once).await;
                store.close().await;
                let (handled, new) = outcome?;
                say!(
                    "consumed {handled} message(s) from NATS stream {}: {new} new notification(s), {} already in the feeds",
                    nats.stream,
                    handled - new
                );
            }
            Command::Notifications { account, limit } => {
                let store = self.notify_store().await?;
                let outcome = self.print_notifications(&store, &account, limit).await;
                store.close().await;
                outcome?;
            }
            Command::Demo => return Err(AppError::NotHere("demo")),
        }
        Ok(())
    }
}
