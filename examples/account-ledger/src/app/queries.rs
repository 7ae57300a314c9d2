//! The query commands: each brings its read model up to the store's head, then prints;
//! `rebuild` (blue/green, by the runner) and `status` (the runner's).

use annals::EventStore;
use time::{OffsetDateTime, macros::format_description};

use super::{App, AppError, read_side::StatusLine, report, say};
use crate::{
    cli::Rebuild,
    money::format_amount,
    projections::{BALANCES, Filter, SEARCH, Transaction},
};

fn signed(minor: i64) -> String {
    if minor > 0 {
        format!("+{}", format_amount(minor))
    } else {
        format_amount(minor)
    }
}

fn when(unix: i64) -> String {
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

fn describe(tx: &Transaction) -> String {
    let mut s = String::new();
    if !tx.counterparty.is_empty() {
        let dir = if tx.amount >= 0 { "from" } else { "to" };
        s.push_str(&format!("  {dir} {}", tx.counterparty));
    }
    if !tx.memo.is_empty() {
        s.push_str(&format!("  \"{}\"", tx.memo));
    }
    s
}

impl<S: EventStore + Clone + 'static> App<S> {
    pub(super) async fn print_balance(&self, account: &str) -> Result<(), AppError> {
        let model = self.read.balances().await?;
        let a = model
            .account(account)
            .await?
            .ok_or_else(|| AppError::UnknownAccount(account.to_owned()))?;
        say!(
            "{}  {}  {} {}  {}  ({} transactions)",
            a.id,
            a.owner,
            format_amount(a.balance),
            a.currency,
            a.status,
            a.transactions
        );
        Ok(())
    }

    pub(super) async fn print_history(&self, account: &str) -> Result<(), AppError> {
        let model = self.read.balances().await?;
        let a = model
            .account(account)
            .await?
            .ok_or_else(|| AppError::UnknownAccount(account.to_owned()))?;
        let recent = model.recent(account).await?;
        say!(
            "{} ({}): balance {} {}, {} of {} transactions, newest first",
            a.id,
            a.owner,
            format_amount(a.balance),
            a.currency,
            recent.len(),
            a.transactions
        );
        for tx in recent {
            say!(
                "  {}  {:<15} {:>12} {}{}",
                when(tx.time),
                tx.kind,
                signed(tx.amount),
                a.currency,
                describe(&tx)
            );
        }
        Ok(())
    }

    pub(super) async fn print_top(&self, n: usize) -> Result<(), AppError> {
        let model = self.read.balances().await?;
        let currencies = model.top(n).await?;
        if currencies.is_empty() {
            say!("no accounts yet");
        }
        for top in currencies {
            let currency = &top.currency;
            say!("{currency}: total {} {currency}", format_amount(top.total));
            for (i, (id, owner, balance)) in top.accounts.iter().enumerate() {
                say!(
                    "  {:>2}. {:<14} {:<22} {:>12} {currency}",
                    i + 1,
                    id,
                    owner,
                    format_amount(*balance)
                );
            }
        }
        Ok(())
    }

    pub(super) async fn print_search(&self, query: &str, filter: &Filter) -> Result<(), AppError> {
        let hits = self.read.search(query, filter).await?;
        say!("{} hit(s) for {query:?}", hits.len());
        for hit in hits {
            let tx = &hit.transaction;
            let currency = &hit.currency;
            say!(
                "  {}  {:<12} {:<20} {:<15} {:>12} {currency}{}",
                when(tx.time),
                tx.account,
                hit.owner,
                tx.kind,
                signed(tx.amount),
                describe(tx)
            );
        }
        Ok(())
    }

    pub(super) async fn rebuild(&self, which: Rebuild) -> Result<(), AppError> {
        let name = match which {
            Rebuild::Balances => BALANCES,
            Rebuild::Search => SEARCH,
        };
        let (before, report) = self.read.rebuild(name).await?;
        let from = before.map_or_else(|| "none".to_owned(), |g| g.0.to_string());
        say!(
            "rebuilt {name} from {} events in {} ms beside the live one; switched generation {from} -> {}",
            report.events,
            report.elapsed.as_millis(),
            report.generation.0
        );
        Ok(())
    }

    pub(super) async fn print_status(&self) -> Result<(), AppError> {
        let (head, lines) = self.read.status().await?;
        match head {
            Some(h) => say!("store head: {h}"),
            None => say!("store head: empty"),
        }
        let pending = crate::domain::pending_payouts(self.ledger.store()).await?;
        if pending.is_empty() {
            say!("payouts waiting for the bank: none");
        } else {
            say!("payouts waiting for the bank: {}", pending.len());
            for p in &pending {
                say!(
                    "  {} from {}: {} to {}",
                    p.payout_id,
                    p.account,
                    crate::money::format_amount(p.amount),
                    p.beneficiary
                );
            }
        }
        for line in lines {
            match line {
                StatusLine::Status(status, in_process) => {
                    let place = if in_process { "  (in process)" } else { "" };
                    say!("{status}{place}");
                }
                StatusLine::Unavailable(name, error) => {
                    say!("{name}: {}", report(&error));
                }
            }
        }
        Ok(())
    }

    /// Prints the payouts answered after `before` (by the reactor this process ran).
    pub(super) async fn print_answered(
        &self,
        before: Option<annals::LogPosition>,
    ) -> Result<(), AppError> {
        use futures::TryStreamExt;
        let read = annals::LogRead::after(before.unwrap_or(annals::LogPosition::START));
        let mut events = self.ledger.store().read_all(read);
        while let Some(event) = events.try_next().await? {
            if event.stream_id.category() != "account" {
                continue;
            }
            let account = crate::domain::account_of(&event.stream_id);
            match annals::DomainEvent::decode(&event)? {
                crate::domain::AccountEvent::PayoutSettled { payout_id } => {
                    say!("payout {payout_id} from {account}: the bank paid it; settled");
                }
                crate::domain::AccountEvent::PayoutReversed {
                    payout_id,
                    amount,
                    reason,
                } => say!(
                    "payout {payout_id} from {account}: the bank refused it ({reason}); compensated with PayoutReversed, {} back",
                    crate::money::format_amount(amount)
                ),
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) async fn print_notifications(
        &self,
        store: &crate::notify::NotifyStore,
        account: &str,
        limit: usize,
    ) -> Result<(), AppError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let feed = store.feed(account, limit).await?;
        if feed.is_empty() {
            say!(
                "no notifications for {account} yet (`ledger notify` consumes the ledger's events from NATS into the feeds)"
            );
            return Ok(());
        }
        let total = store.count(account).await?;
        say!(
            "notifications for {account}, newest first ({} of {total}):",
            feed.len()
        );
        for n in feed {
            say!(
                "  #{:<5} {}  {}",
                n.stream_version,
                when(n.received_at_ms.div_euclid(1_000)),
                n.text
            );
        }
        Ok(())
    }
}
