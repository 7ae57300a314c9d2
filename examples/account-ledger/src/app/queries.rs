//! The query commands: each brings its read model up to the store's head, then prints;
//! `rebuild` (blue/green) and `status`.

use std::time::Instant;

use annals::EventStore;
use indicatif::{ProgressBar, ProgressStyle};
use time::{OffsetDateTime, macros::format_description};

use super::{App, AppError};
use crate::{
    cli::Rebuild,
    money::format_amount,
    projections::{Balances, Filter, ReadModel, SearchIndex, Transaction, catch_up, lag},
};

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} events ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

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

impl<S: EventStore + Clone> App<S> {
    pub(super) async fn print_balance(&self, account: &str) -> Result<(), AppError> {
        let model = self.balances().await?;
        let a = model
            .account(account)
            .await?
            .ok_or_else(|| AppError::UnknownAccount(account.to_owned()))?;
        println!(
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
        let model = self.balances().await?;
        let a = model
            .account(account)
            .await?
            .ok_or_else(|| AppError::UnknownAccount(account.to_owned()))?;
        let recent = model.recent(account).await?;
        println!(
            "{} ({}): balance {} {}, {} of {} transactions, newest first",
            a.id,
            a.owner,
            format_amount(a.balance),
            a.currency,
            recent.len(),
            a.transactions
        );
        for tx in recent {
            println!(
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
        let model = self.balances().await?;
        let currencies = model.top(n).await?;
        if currencies.is_empty() {
            println!("no accounts yet");
        }
        for (currency, total, top) in currencies {
            println!("{currency}: total {} {currency}", format_amount(total));
            for (i, (id, balance)) in top.iter().enumerate() {
                let owner = model
                    .account(id)
                    .await?
                    .map(|a| a.owner)
                    .unwrap_or_default();
                println!(
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
        let index = self.search_index().await?;
        let hits = index.search(query, filter)?;
        println!("{} hit(s) for {query:?}", hits.len());
        for hit in hits {
            let tx = &hit.transaction;
            let currency = &hit.currency;
            println!(
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
        let store = self.ledger.store();
        let head = store.head_position().await?;
        let total = head.map_or(0, |h| h.sequence);
        let started = Instant::now();
        let (from, to, n) = match which {
            Rebuild::Balances => {
                let old = Balances::open(self.kv.clone(), &self.prefix).await?;
                let mut green = old.next_generation().await?;
                let bar = progress(total, "balances");
                let mut n = catch_up(store, &mut green, head, Some(&bar)).await?;
                // Events appended during the rebuild: catch up once more, then switch.
                n += catch_up(store, &mut green, store.head_position().await?, Some(&bar)).await?;
                bar.finish_and_clear();
                green.activate(&old).await?;
                (old.generation(), green.generation(), n)
            }
            Rebuild::Search => {
                let old = SearchIndex::open(&self.search_root)?;
                let mut green = old.next_generation()?;
                let bar = progress(total, "search");
                let mut n = catch_up(store, &mut green, head, Some(&bar)).await?;
                n += catch_up(store, &mut green, store.head_position().await?, Some(&bar)).await?;
                bar.finish_and_clear();
                let (from, to) = (old.generation(), green.generation());
                green.activate(old)?;
                (from, to, n)
            }
        };
        println!(
            "rebuilt {} from {n} events in {} ms beside the live one; switched generation {from} -> {to}",
            match which {
                Rebuild::Balances => "balances",
                Rebuild::Search => "search",
            },
            started.elapsed().as_millis()
        );
        Ok(())
    }

    pub(super) async fn print_status(&self) -> Result<(), AppError> {
        let store = self.ledger.store();
        let head = store.head_position().await?;
        match head {
            Some(h) => println!("store head: {h}"),
            None => println!("store head: empty"),
        }
        let mut balances = if self.embedded {
            // In-process read models exist only once replayed.
            self.balances().await?
        } else {
            Balances::open(self.kv.clone(), &self.prefix).await?
        };
        let mut search = SearchIndex::open(&self.search_root)?;
        let rows = [
            (
                balances.name(),
                balances.generation(),
                balances.checkpoint().await?,
            ),
            (
                search.name(),
                search.generation(),
                search.checkpoint().await?,
            ),
        ];
        for (name, generation, position) in rows {
            let l = lag(store, position, head).await?;
            let at = position.map_or("nothing yet".to_owned(), |p| p.to_string());
            let place = if self.embedded && name == "balances" {
                " (in process)"
            } else {
                ""
            };
            // No process follows the log between commands: each read model catches up when
            // a command reads it (`search` for the index, any balance query for balances).
            let hint = if l.behind > 0 {
                "  (catches up at its next query)"
            } else {
                ""
            };
            println!(
                "{name:<9} generation {generation}{place}  at {at}  lag {} event(s){hint}",
                l.behind
            );
        }
        Ok(())
    }
}
