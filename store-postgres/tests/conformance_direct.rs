//! The shared conformance suite again with four direct connections
//! (`PgConfig::with_direct_connections`): appends and loads on the callers' tasks, up to four
//! at once, beside the writers' group commits.

mod common;

async fn fresh_direct() -> annals_postgres::PgEventStore {
    match common::try_store(common::config().with_direct_connections(4)).await {
        Some(store) => store,
        None => panic!("these tests need PostgreSQL at {}", common::database_url()),
    }
}

annals::conformance_tests!(fresh_direct);
