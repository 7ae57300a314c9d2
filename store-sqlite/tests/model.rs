//! Model-based property test: any sequence of appends (single and multi-stream, every kind of
//! expected version, retries of earlier batches, reused ids) gives the same answers and the
//! same log in SQLite as in the reference in-memory store (`annals::testing::model`), and
//! writers racing with such sequences keep the store's invariants.

use annals_sqlite::SqliteEventStore;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sqlite_answers_like_the_reference_store(ops in annals::testing::model::ops()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let store = SqliteEventStore::in_memory().await.expect("store");
            annals::testing::model::check(&store, ops).await;
        });
    }

    #[test]
    fn racing_writers_keep_the_invariants(writers in annals::testing::model::concurrent_ops()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let store = SqliteEventStore::in_memory().await.expect("store");
            annals::testing::model::check_concurrent(&store, writers).await;
        });
    }
}
