//! The store conformance suite against the in-memory store.

annals::conformance_tests!(|| async { annals::InMemoryEventStore::new() });
