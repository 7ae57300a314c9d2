//! The runner with a tantivy read model: catch-up, live, read-your-writes, scored search,
//! dead letters.

mod common;

use std::time::Duration;

use annals::{EventStore, ExpectedVersion, StreamId};
use annals_projections::{FailurePolicy, ProjectionConfig, RunnerConfig};
use common::*;
use tantivy::schema::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_searches_and_parks_poison() {
    let dir = tempfile::tempdir().unwrap();
    let (store, poison, _) = store_with_odd_event(500, "bad", "Poison", 0).await;
    let (search, schema) = Search::new("search");
    let model = search.open(dir.path(), schema);
    let runner = runner_with(
        &store,
        RunnerConfig::new().with_lease_ttl(Duration::from_secs(2)),
        search.clone(),
        model.clone(),
        ProjectionConfig::new().with_policy(FailurePolicy::DeadLetter),
    );
    let head = store.head_position().await.unwrap().unwrap();
    runner.wait_for("search", head).await.unwrap();
    let view = model.view().unwrap().unwrap();
    assert_eq!(view.num_docs(), 500 + 37);
    assert_eq!(view.checkpoint().unwrap(), Some(head));
    let letters = view.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].position, poison);

    // Live upserts replace the account document; read your writes.
    let done = store
        .append(
            &StreamId::new("acc-1").unwrap(),
            ExpectedVersion::Any,
            vec![deposit("acc-1", 3, "zebra crossing")],
        )
        .await
        .unwrap();
    runner.wait_for("search", done.last_position).await.unwrap();
    let view = model.view().unwrap().unwrap();
    let hits = view.search_text("zebra", &[search.memo], 10).unwrap();
    assert_eq!(hits.len(), 2, "the deposit and the account's latest memo");
    assert!(hits.iter().all(|h| h.score > 0.0));
    let account = view.get("account:acc-1").unwrap().unwrap();
    assert_eq!(
        account.get_first(search.memo).and_then(|v| v.as_str()),
        Some("zebra crossing")
    );
    assert_eq!(view.num_docs(), 501 + 37);
    assert!(view.search_text("memo:(", &[search.memo], 1).is_err());
    runner.shutdown().await;
}
