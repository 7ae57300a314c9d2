//! The ledger's projections on `annals-projections`, driven directly (no command line): the
//! balances through a blue/green rebuild, and the search index learning an account's owner
//! from its lookups after a restart from a mid-log checkpoint and after a rebuild.

use std::time::Duration;

use account_ledger::{
    domain::{AccountCommand, Ledger},
    projections::{
        BALANCES, Balances, Filter, LedgerLeases, MemoryBalances, SEARCH, SearchProjection,
        open_index, search,
    },
};
use annals::{CommandContext, InMemoryEventStore};
use annals_projections::{MemoryReadModel, ProgressDisplay, ProjectionConfig, ProjectionRunner};

const WAIT: Duration = Duration::from_secs(10);

fn config() -> ProjectionConfig {
    ProjectionConfig::new().with_progress(ProgressDisplay::Silent)
}

async fn open(ledger: &Ledger<InMemoryEventStore>, id: &str, owner: &str) {
    let cmd = AccountCommand::Open {
        owner: owner.into(),
        currency: "EUR".parse().unwrap(),
    };
    ledger
        .execute(id, cmd, &CommandContext::new())
        .await
        .unwrap();
}

async fn deposit(ledger: &Ledger<InMemoryEventStore>, id: &str, amount: i64, memo: &str) {
    let cmd = AccountCommand::Deposit {
        amount,
        currency: None,
        memo: memo.into(),
        counterparty: "c".into(),
    };
    ledger
        .execute(id, cmd, &CommandContext::new())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balances_follow_a_blue_green_rebuild() {
    let ledger = Ledger::new(InMemoryEventStore::new());
    open(&ledger, "a", "Ada").await;
    deposit(&ledger, "a", 100, "m").await;
    let runner = ProjectionRunner::new(ledger.store().clone());
    let model = MemoryReadModel::new(BALANCES).unwrap();
    runner.add(MemoryBalances, model.clone(), config()).unwrap();
    runner.catch_up(WAIT).await.unwrap();
    let before = Balances::Memory(model.view().unwrap());

    let report = runner.rebuild(BALANCES).await.unwrap();
    assert_eq!(report.generation.0, 2);

    // The switched-in generation follows the log.
    deposit(&ledger, "a", 50, "m").await;
    runner.catch_up(WAIT).await.unwrap();
    let view = Balances::Memory(model.view().unwrap());
    let a = view.account("a").await.unwrap().unwrap();
    assert_eq!(
        (a.owner.as_str(), a.balance, a.transactions),
        ("Ada", 150, 2)
    );
    let top = view.top(5).await.unwrap();
    assert_eq!(top.len(), 1);
    assert_eq!((top[0].currency.as_str(), top[0].total), ("EUR", 150));
    assert_eq!(top[0].accounts, [("a".to_owned(), "Ada".to_owned(), 150)]);
    assert_eq!(view.recent("a").await.unwrap().len(), 2);
    // A view taken before the switch still reads its own, consistent generation.
    assert_eq!(before.account("a").await.unwrap().unwrap().balance, 100);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_knows_the_owner_after_a_restart_and_after_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::new(InMemoryEventStore::new());
    open(&ledger, "a", "Ada Lovelace").await;
    deposit(&ledger, "a", 100, "first").await;
    // One process (one runner) per command, as the command line runs.
    let run = || async {
        let leases = LedgerLeases::sqlite(&dir.path().join("leases.sqlite"), [BALANCES])
            .await
            .unwrap();
        leases.prepare().await.unwrap();
        let runner = ProjectionRunner::new(ledger.store().clone()).with_leases(leases);
        let (model, fields) = open_index(dir.path()).unwrap();
        runner
            .add(SearchProjection::new(fields), model.clone(), config())
            .unwrap();
        runner.catch_up(WAIT).await.unwrap();
        (runner, model, fields)
    };
    let (runner, ..) = run().await;
    runner.shutdown().await;

    // The account's `Opened` lies before the checkpoint the next runner resumes from: the
    // owner comes from the lookups stored with the index.
    deposit(&ledger, "a", 7, "second").await;
    let (runner, model, fields) = run().await;
    let filter = Filter {
        limit: 10,
        ..Filter::default()
    };
    let hits = search(&model.view().unwrap().unwrap(), &fields, "second", &filter).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].owner.as_str(), hits[0].currency.as_str()),
        ("Ada Lovelace", "EUR")
    );
    assert_eq!(hits[0].transaction.amount, 7);

    // And from the log again by a rebuild.
    runner.rebuild(SEARCH).await.unwrap();
    let view = model.view().unwrap().unwrap();
    let hits = search(&view, &fields, "owner:lovelace", &filter).unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.owner == "Ada Lovelace"));
    runner.shutdown().await;
}
