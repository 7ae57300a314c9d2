//! The Redis-shaped read model: per account its balance and status (a hash) and its 50 most
//! recent transactions (a capped list), a ranking of accounts by balance per currency (a
//! sorted set) and the total per currency (a hash).
//!
//! Keys live under a generation, `{prefix}:g7:acct:alice`; `{prefix}:active` names the
//! generation readers use. A rebuild fills the next generation beside it (blue/green), then
//! switches `active` and drops the old one. `{prefix}` is in braces, a Redis Cluster hash tag,
//! so all keys of one ledger share a slot.

use std::collections::HashMap;

use annals::{LogPosition, RecordedEvent};

use super::{
    entry::{Entry, Transaction},
    kv::{Kv, Op},
    runner::{ProjectionError, ReadModel, format_position, parse_position},
};
use crate::domain::AccountEvent;

/// How many recent transactions each account keeps.
pub const RECENT: i64 = 50;

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

/// The balances read model over a [`Kv`], at one generation.
#[derive(Debug, Clone)]
pub struct Balances {
    kv: Kv,
    prefix: String,
    generation: u64,
    /// Whether this handle follows the active generation (false while building a new one).
    follows_active: bool,
    directory: HashMap<String, String>,
}

impl Balances {
    /// Opens the active generation under `prefix`, creating the first one if there is none.
    ///
    /// # Errors
    /// [`ProjectionError::Kv`] when Redis fails.
    pub async fn open(kv: Kv, prefix: &str) -> Result<Self, ProjectionError> {
        let prefix = format!("{{{prefix}}}");
        let mut model = Self {
            kv,
            prefix,
            generation: 0,
            follows_active: true,
            directory: HashMap::new(),
        };
        model.generation = model.active_generation().await?;
        Ok(model)
    }

    /// The generation readers use; the first caller of a new ledger creates it (with `NX`,
    /// so two processes starting at once agree on one).
    async fn active_generation(&self) -> Result<u64, ProjectionError> {
        let active = format!("{}:active", self.prefix);
        if let Some(g) = self.kv.get(&active).await?.and_then(|g| g.parse().ok()) {
            return Ok(g);
        }
        let g = self
            .kv
            .incr(&format!("{}:generations", self.prefix))
            .await?;
        self.kv.set_if_absent(&active, &g.to_string()).await?;
        let current = self.kv.get(&active).await?;
        current
            .as_deref()
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| ProjectionError::BadCheckpoint(current.unwrap_or_default()))
    }

    /// A fresh, empty generation beside the active one, for a blue/green rebuild.
    ///
    /// # Errors
    /// [`ProjectionError::Kv`] when Redis fails.
    pub async fn next_generation(&self) -> Result<Self, ProjectionError> {
        let g = self
            .kv
            .incr(&format!("{}:generations", self.prefix))
            .await?;
        let mut next = self.clone();
        next.generation = u64::try_from(g).unwrap_or(self.generation + 1);
        next.follows_active = false;
        next.directory.clear();
        self.kv.delete_prefix(&next.base()).await?;
        Ok(next)
    }

    /// Makes this generation the one readers use and deletes `old`'s keys.
    ///
    /// # Errors
    /// [`ProjectionError::Kv`] when Redis fails.
    pub async fn activate(&self, old: &Self) -> Result<(), ProjectionError> {
        self.kv
            .set(
                &format!("{}:active", self.prefix),
                &self.generation.to_string(),
            )
            .await?;
        if old.generation != self.generation {
            self.kv.delete_prefix(&old.base()).await?;
        }
        Ok(())
    }

    /// The generation this handle reads and writes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn base(&self) -> String {
        format!("{}:g{}:", self.prefix, self.generation)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.base())
    }

    /// One account, or `None` if the read model has not seen it.
    ///
    /// # Errors
    /// [`ProjectionError::Kv`] when Redis fails.
    pub async fn account(&self, id: &str) -> Result<Option<AccountView>, ProjectionError> {
        let h = self.kv.hgetall(&self.key(&format!("acct:{id}"))).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let field = |f: &str| h.get(f).cloned().unwrap_or_default();
        let int = |f: &str| h.get(f).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(AccountView {
            id: id.to_owned(),
            owner: field("owner"),
            currency: field("currency"),
            balance: int("balance"),
            status: field("status"),
            transactions: int("transactions"),
        }))
    }

    /// The most recent transactions of an account, newest first.
    ///
    /// # Errors
    /// [`ProjectionError::Kv`] when Redis fails, [`ProjectionError::Corrupt`] for an entry
    /// that does not parse.
    pub async fn recent(&self, id: &str) -> Result<Vec<Transaction>, ProjectionError> {
        let raw = self.kv.list(&self.key(&format!("tx:{id}"))).await?;
        raw.iter()
            .map(|s| serde_json::from_str(s).map_err(ProjectionError::Corrupt))
            .collect()
    }

    /// Per currency (sorted), its total and its `n` richest accounts.
    ///
    /// # Errors
    /// [`ProjectionError::Kv`] when Redis fails.
    pub async fn top(
        &self,
        n: usize,
    ) -> Result<Vec<(String, i64, Vec<(String, i64)>)>, ProjectionError> {
        let mut totals: Vec<(String, i64)> = self
            .kv
            .hgetall(&self.key("totals"))
            .await?
            .into_iter()
            .map(|(c, v)| (c, v.parse().unwrap_or(0)))
            .collect();
        totals.sort();
        let mut out = Vec::new();
        for (currency, total) in totals {
            let top = self
                .kv
                .top(&self.key(&format!("rank:{currency}")), n)
                .await?;
            out.push((currency, total, top));
        }
        Ok(out)
    }

    fn checkpoint_key(&self) -> String {
        self.key("checkpoint")
    }

    async fn currency_of(&mut self, account: &str) -> Result<String, ProjectionError> {
        if let Some(c) = self.directory.get(account) {
            return Ok(c.clone());
        }
        let view = self.account(account).await?;
        let currency = view.map(|v| v.currency).unwrap_or_default();
        self.directory.insert(account.to_owned(), currency.clone());
        Ok(currency)
    }

    async fn ops(&mut self, entry: &Entry) -> Result<Vec<Op>, ProjectionError> {
        let acct = self.key(&format!("acct:{}", entry.account));
        let hset = |field: &str, value: &str| Op::HSet {
            key: acct.clone(),
            field: field.to_owned(),
            value: value.to_owned(),
        };
        let mut ops = Vec::new();
        match &entry.event {
            AccountEvent::Opened { owner, currency } => {
                let currency = currency.as_str();
                self.directory
                    .insert(entry.account.clone(), currency.to_owned());
                ops.push(hset("owner", owner));
                ops.push(hset("currency", currency));
                ops.push(hset("status", "open"));
                ops.push(hset("balance", "0"));
                ops.push(hset("transactions", "0"));
                ops.push(Op::ZIncrBy {
                    key: self.key(&format!("rank:{currency}")),
                    member: entry.account.clone(),
                    by: 0,
                });
                ops.push(Op::HIncrBy {
                    key: self.key("totals"),
                    field: currency.to_owned(),
                    by: 0,
                });
            }
            AccountEvent::Frozen { .. } => ops.push(hset("status", "frozen")),
            AccountEvent::Closed => ops.push(hset("status", "closed")),
            _ => {}
        }
        if let Some(tx) = entry.transaction() {
            let currency = self.currency_of(&entry.account).await?;
            let delta = tx.amount;
            ops.push(Op::HIncrBy {
                key: acct.clone(),
                field: "balance".into(),
                by: delta,
            });
            ops.push(Op::HIncrBy {
                key: acct.clone(),
                field: "transactions".into(),
                by: 1,
            });
            ops.push(Op::ZIncrBy {
                key: self.key(&format!("rank:{currency}")),
                member: entry.account.clone(),
                by: delta,
            });
            ops.push(Op::HIncrBy {
                key: self.key("totals"),
                field: currency,
                by: delta,
            });
            ops.push(Op::PushCapped {
                key: self.key(&format!("tx:{}", entry.account)),
                value: serde_json::to_string(&tx).map_err(ProjectionError::Corrupt)?,
                keep: RECENT,
            });
        }
        Ok(ops)
    }
}

impl ReadModel for Balances {
    fn name(&self) -> &'static str {
        "balances"
    }

    async fn checkpoint(&mut self) -> Result<Option<LogPosition>, ProjectionError> {
        if self.follows_active {
            let active = self.active_generation().await?;
            if active != self.generation {
                self.generation = active;
                self.directory.clear();
            }
        }
        match self.kv.get(&self.checkpoint_key()).await? {
            None => Ok(None),
            Some(s) => parse_position(&s).map(Some),
        }
    }

    async fn apply(
        &mut self,
        from: Option<LogPosition>,
        batch: &[RecordedEvent],
    ) -> Result<bool, ProjectionError> {
        let Some(last) = batch.last() else {
            return Ok(true);
        };
        let mut ops = Vec::new();
        for recorded in batch {
            if let Some(entry) = Entry::decode(recorded)? {
                ops.extend(self.ops(&entry).await?);
            }
        }
        let expected = from.map(format_position).unwrap_or_default();
        let active_key = format!("{}:active", self.prefix);
        let generation = self.generation.to_string();
        let guard = self
            .follows_active
            .then_some((active_key.as_str(), generation.as_str()));
        let applied = self
            .kv
            .apply(
                &self.checkpoint_key(),
                &expected,
                &format_position(last.position),
                guard,
                &ops,
            )
            .await?;
        if !applied {
            // Another process moved the checkpoint, or a rebuild switched generations (and
            // dropped this one): forget what we learnt and follow the active generation.
            // The next `checkpoint` call moves to the active generation.
            self.directory.clear();
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use annals::{CommandContext, EventStore, InMemoryEventStore};

    use super::*;
    use crate::{
        domain::{AccountCommand, Ledger},
        projections::catch_up,
    };

    async fn deposit(ledger: &Ledger<InMemoryEventStore>, amount: i64) {
        let cmd = AccountCommand::Deposit {
            amount,
            currency: None,
            memo: "m".into(),
            counterparty: "c".into(),
        };
        ledger
            .execute("a", cmd, &CommandContext::new())
            .await
            .unwrap();
    }

    async fn up_to_date(model: &mut Balances, store: &InMemoryEventStore) {
        let head = store.head_position().await.unwrap();
        catch_up(store, model, head, None).await.unwrap();
    }

    #[tokio::test]
    async fn a_stale_handle_follows_a_blue_green_switch() {
        let ledger = Ledger::new(InMemoryEventStore::new());
        let open = AccountCommand::Open {
            owner: "A".into(),
            currency: "EUR".parse().unwrap(),
        };
        ledger
            .execute("a", open, &CommandContext::new())
            .await
            .unwrap();
        deposit(&ledger, 100).await;
        let kv = Kv::memory();
        let mut blue = Balances::open(kv.clone(), "t").await.unwrap();
        // A second process opening at the same time agrees on the generation.
        assert_eq!(
            Balances::open(kv.clone(), "t").await.unwrap().generation(),
            1
        );
        up_to_date(&mut blue, ledger.store()).await;

        let mut green = blue.next_generation().await.unwrap();
        up_to_date(&mut green, ledger.store()).await;
        green.activate(&blue).await.unwrap();
        assert_eq!(green.generation(), 2);

        // The old handle's generation is gone; its next catch-up moves to the live one
        // instead of rebuilding the dropped generation.
        deposit(&ledger, 50).await;
        up_to_date(&mut blue, ledger.store()).await;
        assert_eq!(blue.generation(), 2);
        let a = blue.account("a").await.unwrap().unwrap();
        assert_eq!((a.balance, a.transactions), (150, 2));
        let top = blue.top(5).await.unwrap();
        assert_eq!(top, [("EUR".to_owned(), 150, vec![("a".to_owned(), 150)])]);
        assert_eq!(blue.recent("a").await.unwrap().len(), 2);
    }
}
