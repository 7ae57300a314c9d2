//! Model-based property test: any sequence of appends (single and multi-stream, every kind of
//! expected version, retries of earlier batches, reused ids) gives the same answers and the
//! same log in PostgreSQL as in the reference in-memory store (`annals::testing::model`), and
//! writers racing with such sequences keep the store's invariants.
//!
//! The sequences take every append path of the store: a lone one-stream call on the direct
//! connection, its fall-back to the group function on a conflict or a stored id, and the
//! group function itself for multi-stream calls, first without and then with the lookup of
//! stored ids.

mod common;

use std::future::Future;

use annals::testing::model;
use annals_postgres::PgEventStore;
use proptest::prelude::*;

/// Runs `check` on a store in a schema of its own (created, migrated and dropped: about
/// 70 ms), on a runtime of two workers.
fn in_fresh_schema<F: Future<Output = ()>>(check: impl FnOnce(PgEventStore) -> F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let Some(store) = common::try_store(common::config()).await else {
            return;
        };
        check(store.clone()).await;
        store.drop_schema().await.expect("drop the test schema");
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn postgres_answers_like_the_reference_store(ops in model::ops()) {
        in_fresh_schema(|store| async move { model::check(&store, ops).await });
    }

    /// Racing writers share group commits: each caller still gets its own answer, and a
    /// conflict in a group stores nothing of that caller's append.
    #[test]
    fn racing_writers_keep_the_invariants(writers in model::concurrent_ops()) {
        in_fresh_schema(|store| async move { model::check_concurrent(&store, writers).await });
    }
}
