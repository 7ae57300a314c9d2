//! The shared `annals::testing` suite, twice: against a fresh temporary file per check
//! (removed when the check drops the store), and against the in-memory variant.

mod common;

mod file {
    use super::common::TempStore;
    annals::conformance_tests!(TempStore::new);
}

mod memory {
    use annals_sqlite::SqliteEventStore;
    annals::conformance_tests!(|| async {
        SqliteEventStore::in_memory()
            .await
            .expect("an in-memory store")
    });
}
