//! The shared conformance suite again with one direct connection
//! (`PgConfig::with_direct_connections`, four by default): a lone call on the caller's task,
//! any concurrent one with the writers' group commits and the load batches.

mod common;

async fn fresh_direct() -> annals_postgres::PgEventStore {
    match common::try_store(common::config().with_direct_connections(1)).await {
        Some(store) => store,
        None => panic!("these tests need PostgreSQL at {}", common::database_url()),
    }
}

annals::conformance_tests!(fresh_direct);
