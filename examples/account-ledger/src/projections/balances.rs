//! The balances read model: per account its owner, currency, balance, status, number of
//! transactions and its 50 most recent transactions; per currency a ranking of accounts by
//! balance and the total.
//!
//! Two targets, one meaning:
//! - Redis (server mode, [`RedisBalances`]): a hash per account (`acct:alice`: owner,
//!   currency, status, balance, transactions), a capped list of recent transactions
//!   (`tx:alice`, newest first), a sorted set per currency (`rank:EUR`) and a hash of totals
//!   (`totals`), all under the generation's hash tag.
//! - In process (embedded mode, [`MemoryBalances`]): one [`AccountDoc`] per account
//!   (`acct:alice`); rankings and totals are computed from them when read.
//!
//! Both learn an account's owner and currency from its `Opened` event as a lookup
//! ([`Change::of`]), which the runner stores with each batch.

use std::collections::{BTreeMap, VecDeque};

use annals::{BoxError, RecordedEvent};
use annals_projections::{
    EventFilter, LookupKeys, MemoryBatch, MemoryReadModel, MemoryView, Projection, RedisBatch,
    RedisReadModel, RedisView, WriteBatch,
};

use super::{
    ReadError,
    entry::{Change, Transaction, declare},
};
use crate::domain::Account;

/// How many recent transactions each account keeps.
pub const RECENT: usize = 50;

/// The projection's name: its status line, its lease, its Redis keys.
pub const BALANCES: &str = "balances";

fn account_key(id: &str) -> String {
    format!("acct:{id}")
}

/// An account as the read model shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    /// The account id.
    pub id: String,
    /// Who holds it.
    pub owner: String,
    /// Its currency.
    pub currency: String,
    /// Balance in minor units.
    pub balance: i64,
    /// `open`, `frozen` or `closed`.
    pub status: String,
    /// How many transactions it has had.
    pub transactions: i64,
}

/// One currency in [`Balances::top`]: its total and its richest accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyTop {
    /// The currency.
    pub currency: String,
    /// The sum of its accounts' balances, in minor units.
    pub total: i64,
    /// Account id, owner and balance, richest first.
    pub accounts: Vec<(String, String, i64)>,
}

/// One account in the in-process model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountDoc {
    /// Who holds it.
    pub owner: String,
    /// Its currency.
    pub currency: String,
    /// Balance in minor units.
    pub balance: i64,
    /// `open`, `frozen` or `closed`.
    pub status: String,
    /// How many transactions it has had.
    pub transactions: i64,
    /// The most recent transactions, newest first, at most [`RECENT`].
    pub recent: VecDeque<Transaction>,
}

/// The balances projection into the in-process model (embedded mode).
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryBalances;

impl Projection for MemoryBalances {
    type Model = MemoryReadModel<AccountDoc>;

    fn name(&self) -> &str {
        BALANCES
    }

    fn filter(&self) -> EventFilter {
        EventFilter::aggregate::<Account>()
    }

    fn lookups(&self, event: &RecordedEvent, keys: &mut LookupKeys) {
        declare(event, keys);
    }

    fn handle(
        &self,
        event: &RecordedEvent,
        batch: &mut MemoryBatch<AccountDoc>,
    ) -> Result<(), BoxError> {
        let Some((account, change)) = Change::of(event, batch.lookups_mut())? else {
            return Ok(());
        };
        batch.update(account_key(&account), |doc| match change {
            Change::Opened(info) => {
                doc.owner = info.owner;
                doc.currency = info.currency;
                doc.status = "open".to_owned();
            }
            Change::Status(status) => doc.status = status.to_owned(),
            Change::Moved { tx, .. } => {
                doc.balance += tx.amount;
                doc.transactions += 1;
                doc.recent.push_front(tx);
                doc.recent.truncate(RECENT);
            }
        });
        Ok(())
    }
}

/// The balances projection into Redis (server mode).
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisBalances;

impl Projection for RedisBalances {
    type Model = RedisReadModel;

    fn name(&self) -> &str {
        BALANCES
    }

    fn filter(&self) -> EventFilter {
        EventFilter::aggregate::<Account>()
    }

    fn lookups(&self, event: &RecordedEvent, keys: &mut LookupKeys) {
        declare(event, keys);
    }

    fn handle(&self, event: &RecordedEvent, batch: &mut RedisBatch) -> Result<(), BoxError> {
        let Some((account, change)) = Change::of(event, batch.lookups_mut())? else {
            return Ok(());
        };
        let acct = account_key(&account);
        match change {
            Change::Opened(info) => {
                batch.hset_multiple(
                    &acct,
                    &[
                        ("owner", info.owner.as_str()),
                        ("currency", info.currency.as_str()),
                        ("status", "open"),
                        ("balance", "0"),
                        ("transactions", "0"),
                    ],
                );
                batch.zincrby(&format!("rank:{}", info.currency), &account, 0.0);
                batch.hincrby("totals", &info.currency, 0);
            }
            Change::Status(status) => batch.hset(&acct, "status", status),
            Change::Moved { tx, info } => {
                batch.hincrby(&acct, "balance", tx.amount);
                batch.hincrby(&acct, "transactions", 1);
                // Balances stay far below 2^53 (see `money::MAX_BALANCE`): exact as f64.
                batch.zincrby(
                    &format!("rank:{}", info.currency),
                    &account,
                    tx.amount as f64,
                );
                batch.hincrby("totals", &info.currency, tx.amount);
                batch.push_recent(
                    &format!("tx:{account}"),
                    serde_json::to_string(&tx)?,
                    RECENT,
                );
            }
        }
        Ok(())
    }
}

/// A reader's view of the balances read model, at the generation that served when taken.
#[derive(Debug)]
pub enum Balances {
    /// The in-process model.
    Memory(MemoryView<AccountDoc>),
    /// Redis.
    Redis(RedisView),
}

impl Balances {
    /// One account, or `None` if the read model has not seen it.
    ///
    /// # Errors
    /// [`ReadError::Projection`] when Redis fails.
    pub async fn account(&self, id: &str) -> Result<Option<AccountView>, ReadError> {
        let key = account_key(id);
        match self {
            Self::Memory(view) => Ok(view.get(&key).map(|doc| AccountView {
                id: id.to_owned(),
                owner: doc.owner,
                currency: doc.currency,
                balance: doc.balance,
                status: doc.status,
                transactions: doc.transactions,
            })),
            Self::Redis(view) => {
                let hash: BTreeMap<String, String> = view.hash(&key).await?.into_iter().collect();
                if hash.is_empty() {
                    return Ok(None);
                }
                let text = |f: &str| hash.get(f).cloned().unwrap_or_default();
                let int = |f: &str| hash.get(f).and_then(|v| v.parse().ok()).unwrap_or(0);
                Ok(Some(AccountView {
                    id: id.to_owned(),
                    owner: text("owner"),
                    currency: text("currency"),
                    balance: int("balance"),
                    status: text("status"),
                    transactions: int("transactions"),
                }))
            }
        }
    }

    /// The most recent transactions of an account, newest first.
    ///
    /// # Errors
    /// [`ReadError::Projection`] when Redis fails, [`ReadError::Corrupt`] for an entry that
    /// does not parse.
    pub async fn recent(&self, id: &str) -> Result<Vec<Transaction>, ReadError> {
        match self {
            Self::Memory(view) => Ok(view
                .get(&account_key(id))
                .map(|doc| doc.recent.into_iter().collect())
                .unwrap_or_default()),
            Self::Redis(view) => view
                .list(&format!("tx:{id}"))
                .await?
                .iter()
                .map(|s| serde_json::from_str(s).map_err(ReadError::Corrupt))
                .collect(),
        }
    }

    /// Per currency (sorted), its total and its `n` richest accounts (equal balances by
    /// account id, descending, as Redis orders them).
    ///
    /// # Errors
    /// [`ReadError::Projection`] when Redis fails.
    pub async fn top(&self, n: usize) -> Result<Vec<CurrencyTop>, ReadError> {
        match self {
            Self::Memory(view) => Ok(view.with(|docs| {
                let mut by_currency: BTreeMap<&str, Vec<(&str, &AccountDoc)>> = BTreeMap::new();
                for (key, doc) in docs {
                    let id = key.strip_prefix("acct:").unwrap_or(key);
                    by_currency
                        .entry(&doc.currency)
                        .or_default()
                        .push((id, doc));
                }
                by_currency
                    .into_iter()
                    .map(|(currency, mut accounts)| {
                        let total = accounts.iter().map(|(_, d)| d.balance).sum();
                        accounts.sort_by(|a, b| b.1.balance.cmp(&a.1.balance).then(b.0.cmp(a.0)));
                        CurrencyTop {
                            currency: currency.to_owned(),
                            total,
                            accounts: accounts
                                .into_iter()
                                .take(n)
                                .map(|(id, d)| (id.to_owned(), d.owner.clone(), d.balance))
                                .collect(),
                        }
                    })
                    .collect()
            })),
            Self::Redis(view) => {
                let mut totals = view.hash("totals").await?;
                totals.sort();
                let mut out = Vec::with_capacity(totals.len());
                for (currency, total) in totals {
                    let ranked = if n == 0 {
                        Vec::new()
                    } else {
                        view.top(&format!("rank:{currency}"), n).await?
                    };
                    let mut accounts = Vec::with_capacity(ranked.len());
                    for (id, balance) in ranked {
                        let owner = view
                            .field(&account_key(&id), "owner")
                            .await?
                            .unwrap_or_default();
                        // Exact: balances are integers far below 2^53.
                        accounts.push((id, owner, balance.round() as i64));
                    }
                    out.push(CurrencyTop {
                        currency,
                        total: total.parse().unwrap_or(0),
                        accounts,
                    });
                }
                Ok(out)
            }
        }
    }
}
