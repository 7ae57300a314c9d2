//! `ledger seed`: plausible random activity (salaries, card payments, rent shared between
//! friends) for load and for the demo. Repeatable for a given seed; runs again add to it.

use std::time::Instant;

use annals::{CommandContext, EventStore};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

use crate::domain::{AccountCommand, AccountError, Ledger, LedgerError};

const FIRST: &[&str] = &[
    "Ada", "Ben", "Chloé", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
    "Lars", "Maya", "Noah", "Olga", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Viktor",
];
const LAST: &[&str] = &[
    "Okafor", "Schmidt", "Rossi", "Nakamura", "García", "Novak", "Dubois", "Kowalski", "Haddad",
    "Larsen", "Fischer", "Moreau", "Silva", "Jensen", "Ivanova", "Patel",
];
const PAYERS: &[(&str, &str)] = &[
    ("ACME GmbH payroll", "salary"),
    ("Stadtwerke Berlin", "deposit refund"),
    ("Finanzamt", "tax refund 2025"),
    ("Grandma", "birthday present"),
    ("Vinted", "sold a winter coat"),
    ("Northwind Traders", "invoice 2026-0412 paid"),
];
const SPENDING: &[&str] = &[
    "cash at ATM Alexanderplatz",
    "groceries at the market",
    "train ticket to Hamburg",
    "bookshop card payment",
    "pharmacy",
    "bike repair",
];
const SHARED: &[&str] = &[
    "rent share",
    "dinner at Lucia's",
    "concert tickets",
    "holiday flat deposit",
    "birthday gift collection",
    "electricity bill split",
];

struct Seeded {
    id: String,
    currency: String,
    balance: i64,
}

/// Opens `accounts` accounts (reusing those that exist) and records `events` money
/// movements between them, never overdrawing. Returns a one-line summary.
///
/// # Errors
/// Store failures; the activity stops at the first.
pub async fn seed<S: EventStore + Clone>(
    ledger: &Ledger<S>,
    accounts: usize,
    events: usize,
    seed: u64,
) -> Result<String, LedgerError> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let bar = ProgressBar::new((accounts + events) as u64);
    bar.set_style(
        ProgressStyle::with_template("seeding [{bar:30}] {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut all = Vec::with_capacity(accounts);
    for i in 0..accounts {
        let id = format!("c{i:05}");
        let first = FIRST.choose(&mut rng).copied().unwrap_or("Ada");
        let last = LAST.choose(&mut rng).copied().unwrap_or("Okafor");
        let currency = match rng.random_range(0..10) {
            0..=5 => "EUR",
            6..=8 => "USD",
            _ => "GBP",
        };
        let open = AccountCommand::Open {
            owner: format!("{first} {last}"),
            currency: currency
                .parse()
                .map_err(|_| LedgerError::UnknownAccount(id.clone()))?,
        };
        let account = match ledger.execute(&id, open, &CommandContext::new()).await {
            Ok(done) => done.account,
            Err(LedgerError::Rejected {
                source: AccountError::AlreadyOpen,
                ..
            }) => ledger.account(&id).await?,
            Err(e) => return Err(e),
        };
        if account.status.as_str() == "open" {
            all.push(Seeded {
                id,
                currency: account.currency.map(|c| c.to_string()).unwrap_or_default(),
                balance: account.balance,
            });
        }
        bar.inc(1);
    }
    let mut recorded = 0usize;
    while recorded < events && !all.is_empty() {
        let i = rng.random_range(0..all.len());
        let ctx = CommandContext::new();
        let roll = rng.random_range(0..10);
        if roll < 4 || all[i].balance < 500 {
            let (payer, memo) = PAYERS.choose(&mut rng).copied().unwrap_or(PAYERS[0]);
            let amount = rng.random_range(20..3_000) * 100 + rng.random_range(0..100);
            let cmd = AccountCommand::Deposit {
                amount,
                currency: None,
                memo: memo.to_owned(),
                counterparty: payer.to_owned(),
            };
            ledger.execute(&all[i].id, cmd, &ctx).await?;
            all[i].balance += amount;
        } else if roll < 6 {
            let amount = rng.random_range(1..=all[i].balance.min(20_000));
            let memo = SPENDING.choose(&mut rng).copied().unwrap_or("cash");
            let cmd = AccountCommand::Withdraw {
                amount,
                currency: None,
                memo: memo.to_owned(),
            };
            ledger.execute(&all[i].id, cmd, &ctx).await?;
            all[i].balance -= amount;
        } else {
            let j = rng.random_range(0..all.len());
            if i == j || all[i].currency != all[j].currency {
                continue;
            }
            let amount = rng.random_range(1..=all[i].balance.min(50_000));
            let memo = SHARED.choose(&mut rng).copied().unwrap_or("rent share");
            let (from, to) = (all[i].id.clone(), all[j].id.clone());
            ledger
                .transfer(&from, &to, amount, None, memo, &ctx)
                .await?;
            all[i].balance -= amount;
            all[j].balance += amount;
        }
        recorded += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(format!(
        "seeded {} accounts and {recorded} movements in {} ms",
        all.len(),
        started.elapsed().as_millis()
    ))
}
