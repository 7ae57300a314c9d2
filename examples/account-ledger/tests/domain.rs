//! Every rule of the account aggregate, with given / when / then; transfers and the payout
//! saga against the in-memory store.

use account_ledger::{
    domain::{
        Account, AccountCommand as C, AccountError as Why, AccountEvent as E, Ledger, LedgerError,
        Payouts, SimulatedBank, bank_dependency, pending_payouts, start_payout,
    },
    money::{Currency, Money},
};
use annals::{CommandContext, EventStore, InMemoryEventStore, LogRead, StreamId, testing::given};
use futures::TryStreamExt;
use uuid::Uuid;

fn eur() -> Currency {
    "EUR".parse().unwrap()
}

fn opened() -> E {
    E::Opened {
        owner: "Alice".into(),
        currency: eur(),
    }
}

fn deposited(amount: i64) -> E {
    E::Deposited {
        amount,
        memo: String::new(),
        counterparty: String::new(),
    }
}

fn deposit(amount: i64) -> C {
    C::Deposit {
        amount,
        currency: None,
        memo: String::new(),
        counterparty: String::new(),
    }
}

fn withdraw(amount: i64) -> C {
    C::Withdraw {
        amount,
        currency: None,
        memo: String::new(),
    }
}

#[test]
fn opening() {
    given::<Account>([])
        .when(C::Open {
            owner: " Alice ".into(),
            currency: eur(),
        })
        .then_expect_events([opened()]);
    given::<Account>([opened()])
        .when(C::Open {
            owner: "Alice".into(),
            currency: eur(),
        })
        .then_expect_error(Why::AlreadyOpen);
    given::<Account>([])
        .when(C::Open {
            owner: "  ".into(),
            currency: eur(),
        })
        .then_expect_error(Why::NoOwner);
}

#[test]
fn nothing_moves_on_an_account_never_opened() {
    given::<Account>([])
        .when(deposit(100))
        .then_expect_error(Why::NotOpen);
    given::<Account>([])
        .when(withdraw(100))
        .then_expect_error(Why::NotOpen);
    given::<Account>([])
        .when(C::Close)
        .then_expect_error(Why::NotOpen);
}

#[test]
fn amounts_must_be_positive() {
    given::<Account>([opened()])
        .when(deposit(0))
        .then_expect_error(Why::NotPositive(0));
    given::<Account>([opened(), deposited(500)])
        .when(withdraw(-5))
        .then_expect_error(Why::NotPositive(-5));
}

#[test]
fn amounts_and_balances_are_bounded() {
    use account_ledger::money::{MAX_AMOUNT, MAX_BALANCE};
    given::<Account>([opened()])
        .when(deposit(MAX_AMOUNT + 1))
        .then_expect_error(Why::TooLarge(MAX_AMOUNT + 1));
    given::<Account>([opened(), deposited(MAX_BALANCE)])
        .when(deposit(1))
        .then_expect_error(Why::TooLarge(1));
}

#[test]
fn no_overdraft() {
    let state = given::<Account>([opened(), deposited(12_000)])
        .when(withdraw(12_000))
        .then_expect_events([E::Withdrawn {
            amount: 12_000,
            memo: String::new(),
        }]);
    assert_eq!(state.balance, 0);
    given::<Account>([opened(), deposited(12_000)])
        .when(withdraw(50_000))
        .then_expect_error_message("insufficient funds: balance 120.00 EUR, requested 500.00 EUR");
}

#[test]
fn currencies_must_match() {
    given::<Account>([opened()])
        .when(C::Deposit {
            amount: 100,
            currency: Some("USD".parse().unwrap()),
            memo: String::new(),
            counterparty: String::new(),
        })
        .then_expect_error(Why::CurrencyMismatch {
            account: eur(),
            requested: "USD".parse().unwrap(),
        });
    given::<Account>([opened()])
        .when(C::ReceiveTransfer {
            transfer_id: Uuid::nil(),
            from: "carol".into(),
            amount: 100,
            currency: "GBP".parse().unwrap(),
            memo: String::new(),
        })
        .then_expect_error_message(
            "currency mismatch: the account holds EUR, the amount is in GBP",
        );
}

#[test]
fn frozen_accounts_move_nothing() {
    let frozen = || {
        [
            opened(),
            deposited(1_000),
            E::Frozen {
                reason: "stolen card".into(),
            },
        ]
    };
    given::<Account>(frozen())
        .when(deposit(1))
        .then_expect_error(Why::Frozen);
    given::<Account>(frozen())
        .when(withdraw(1))
        .then_expect_error(Why::Frozen);
    given::<Account>(frozen())
        .when(C::Freeze {
            reason: "again".into(),
        })
        .then_expect_events([]);
}

#[test]
fn closed_accounts_take_nothing_and_closing_needs_an_empty_account() {
    given::<Account>([opened(), deposited(1_000)])
        .when(C::Close)
        .then_expect_error(Why::NotEmpty(Money::new(1_000, eur())));
    let closed = given::<Account>([opened()])
        .when(C::Close)
        .then_expect_events([E::Closed]);
    assert_eq!(closed.status.as_str(), "closed");
    given::<Account>([opened(), E::Closed])
        .when(deposit(1))
        .then_expect_error(Why::Closed);
    given::<Account>([opened(), E::Closed])
        .when(C::Freeze {
            reason: String::new(),
        })
        .then_expect_error(Why::Closed);
}

#[test]
fn payouts_hold_the_money_until_settled_or_reversed() {
    let id = Uuid::now_v7();
    let started = E::PayoutStarted {
        payout_id: id,
        beneficiary: "DE89".into(),
        amount: 400,
        memo: String::new(),
    };
    let state = given::<Account>([opened(), deposited(1_000)])
        .when(C::StartPayout {
            payout_id: id,
            beneficiary: "DE89".into(),
            amount: 400,
            memo: String::new(),
        })
        .then_expect_events([started.clone()]);
    assert_eq!(state.balance, 600);
    given::<Account>([opened(), deposited(1_000), started.clone()])
        .when(C::Close)
        .then_expect_error(Why::NotEmpty(Money::new(600, eur())));
    // The compensation is allowed on a frozen account, and puts the money back.
    let state = given::<Account>([
        opened(),
        deposited(1_000),
        started.clone(),
        E::Frozen {
            reason: String::new(),
        },
    ])
    .when(C::ReversePayout {
        payout_id: id,
        reason: "refused".into(),
    })
    .then_expect_events([E::PayoutReversed {
        payout_id: id,
        amount: 400,
        reason: "refused".into(),
    }]);
    assert_eq!(state.balance, 1_000);
    assert!(state.pending_payouts.is_empty());
    given::<Account>([opened()])
        .when(C::SettlePayout { payout_id: id })
        .then_expect_error(Why::UnknownPayout(id));
}

async fn ledger_with(accounts: &[(&str, &str, i64)]) -> Ledger<InMemoryEventStore> {
    let ledger = Ledger::new(InMemoryEventStore::new());
    let ctx = CommandContext::new();
    for (id, currency, balance) in accounts {
        let open = C::Open {
            owner: id.to_uppercase(),
            currency: currency.parse().unwrap(),
        };
        ledger.execute(id, open, &ctx).await.unwrap();
        if *balance > 0 {
            ledger.execute(id, deposit(*balance), &ctx).await.unwrap();
        }
    }
    ledger
}

async fn log_len(ledger: &Ledger<InMemoryEventStore>) -> usize {
    let all: Vec<_> = ledger
        .store()
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap();
    all.len()
}

#[tokio::test]
async fn a_transfer_is_one_atomic_append_to_both_accounts() {
    let ledger = ledger_with(&[("a", "EUR", 1_000), ("b", "EUR", 0)]).await;
    let ctx = CommandContext::new();
    let (id, done) = ledger
        .transfer("a", "b", 300, None, "rent", &ctx)
        .await
        .unwrap();
    assert_eq!(done.account.balance, 700);
    assert_eq!(ledger.account("b").await.unwrap().balance, 300);
    let all: Vec<_> = ledger
        .store()
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap();
    let last_two = &all[all.len() - 2..];
    // Both sides carry the transfer id and were committed together.
    assert_eq!(last_two[0].stream_id, StreamId::new("account-a").unwrap());
    assert_eq!(last_two[1].stream_id, StreamId::new("account-b").unwrap());
    assert!(
        last_two
            .iter()
            .all(|e| e.payload.as_str().contains(&id.to_string()))
    );
    assert_eq!(
        last_two[0].metadata.correlation_id,
        last_two[1].metadata.correlation_id
    );
}

#[tokio::test]
async fn a_refused_transfer_appends_nothing() {
    let ledger = ledger_with(&[("a", "EUR", 1_000), ("b", "EUR", 0), ("u", "USD", 0)]).await;
    let ctx = CommandContext::new();
    let before = log_len(&ledger).await;
    let cases = [
        ("a", "b", 5_000),
        ("a", "u", 10),
        ("a", "nobody", 10),
        ("nobody", "a", 10),
        ("a", "a", 10),
        ("a", "b", 0),
    ];
    for (from, to, amount) in cases {
        let err = ledger
            .transfer(from, to, amount, None, "", &ctx)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::Rejected { .. } | LedgerError::UnknownAccount(_)
            ),
            "{from}->{to} {amount}: {err}"
        );
    }
    let err = ledger
        .transfer("a", "b", 5_000, None, "", &ctx)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "insufficient funds: balance 10.00 EUR, requested 50.00 EUR (account a)"
    );
    assert_eq!(log_len(&ledger).await, before);
    assert_eq!(ledger.account("a").await.unwrap().balance, 1_000);
}

#[tokio::test]
async fn the_payout_saga_settles_or_compensates() {
    let ledger = ledger_with(&[("a", "EUR", 1_000)]).await;
    let ok = start_payout(&ledger, "a", "DE89 1234", 300, "bill", false)
        .await
        .unwrap();
    assert_eq!(ok.outcome.account.balance, 700);
    let refused = start_payout(&ledger, "a", "DE89 1234", 200, "gym", true)
        .await
        .unwrap();
    // Recorded, not yet answered: both wait for the bank, their money out of the balance.
    assert_eq!(refused.outcome.account.balance, 500);
    assert_eq!(pending_payouts(ledger.store()).await.unwrap().len(), 2);

    let runner = annals_projections::ProjectionRunner::new(ledger.store().clone());
    let reactor = Payouts::new(ledger.clone(), SimulatedBank::default(), bank_dependency());
    runner
        .add_reactor(
            reactor,
            annals_projections::MemoryReadModel::<()>::new("payouts").unwrap(),
            annals_projections::ProjectionConfig::new(),
        )
        .unwrap();
    runner
        .catch_up(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let status = runner.status("payouts").unwrap();
    assert_eq!(
        status.dependencies.len(),
        1,
        "the bank's guards show in the status"
    );
    assert_eq!(status.dependencies[0].calls, 2);
    runner.shutdown().await;

    let account = ledger.account("a").await.unwrap();
    assert_eq!(
        account.balance, 700,
        "paid 3.00, the refused 2.00 came back"
    );
    assert!(account.pending_payouts.is_empty());
    assert!(pending_payouts(ledger.store()).await.unwrap().is_empty());
    let events: Vec<annals::RecordedEvent> = ledger
        .store()
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        &types[types.len() - 4..],
        [
            "PayoutStarted",
            "PayoutStarted",
            "PayoutSettled",
            "PayoutReversed"
        ]
    );
    // Each answer continues its payout's correlation and names the start as its cause.
    for (answer, start) in [
        (events.len() - 2, events.len() - 4),
        (events.len() - 1, events.len() - 3),
    ] {
        assert_eq!(
            events[answer].metadata.correlation_id,
            events[start].metadata.correlation_id
        );
        assert_eq!(
            events[answer].metadata.causation_id,
            Some(events[start].event_id)
        );
    }
}

#[tokio::test]
async fn snapshots_every_100_events() {
    let ledger = ledger_with(&[("a", "EUR", 0)]).await;
    let ctx = CommandContext::new();
    for _ in 0..149 {
        ledger.execute("a", deposit(1), &ctx).await.unwrap();
    }
    let snapshot = ledger
        .store()
        .load_snapshot(&StreamId::new("account-a").unwrap())
        .await
        .unwrap()
        .expect("a snapshot after 100 events");
    assert_eq!(snapshot.stream_version, 100);
    let state: Account = snapshot.payload.deserialize().unwrap();
    assert_eq!(state.balance, 99);
    // A fresh ledger (no cache) loads from the snapshot plus the 50 events after it.
    let fresh = Ledger::new(ledger.store().clone());
    assert_eq!(fresh.account("a").await.unwrap().balance, 149);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_never_overdraw_and_conserve_money() {
    let ledger = ledger_with(&[("a", "EUR", 1_000), ("b", "EUR", 0), ("c", "EUR", 0)]).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let to = if i % 2 == 0 { "b" } else { "c" };
                ledger
                    .transfer("a", to, 100, None, "race", &CommandContext::new())
                    .await
            })
        })
        .collect();
    let mut moved = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => moved += 100,
            Err(LedgerError::Rejected {
                source: Why::InsufficientFunds { .. },
                ..
            })
            | Err(LedgerError::Conflict(_)) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    let (a, b, c) = (
        ledger.account("a").await.unwrap().balance,
        ledger.account("b").await.unwrap().balance,
        ledger.account("c").await.unwrap().balance,
    );
    assert!(a >= 0);
    assert_eq!(a, 1_000 - moved);
    assert_eq!(a + b + c, 1_000, "money was created or lost");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn command() -> impl Strategy<Value = C> {
        prop_oneof![
            (-50i64..5_000).prop_map(deposit),
            (-50i64..5_000).prop_map(withdraw),
            Just(C::Freeze {
                reason: String::new()
            }),
            Just(C::Close),
            (1i64..2_000).prop_map(|amount| C::StartPayout {
                payout_id: Uuid::now_v7(),
                beneficiary: "DE1".into(),
                amount,
                memo: String::new(),
            }),
        ]
    }

    proptest! {
        /// Whatever is asked, the balance never goes negative and always equals the sum of
        /// the applied events' deltas; a refused command changes nothing.
        #[test]
        fn the_balance_is_never_negative(commands in prop::collection::vec(command(), 0..60)) {
            let mut account = Account::default();
            account.apply(&opened());
            let mut sum = 0i64;
            for command in commands {
                let before = account.clone();
                match account.handle(command) {
                    Ok(events) => {
                        for e in &events {
                            sum += e.balance_delta();
                            account.apply(e);
                        }
                    }
                    Err(_) => prop_assert_eq!(&account, &before),
                }
                prop_assert!(account.balance >= 0);
                prop_assert_eq!(account.balance, sum);
            }
        }
    }
}
