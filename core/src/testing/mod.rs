//! Test support (feature `testing`): the store conformance suite, the model-based property
//! test of appends ([`model`]), a given/when/then helper for aggregates, and a small fixture
//! aggregate.
//!
//! Every store runs the same suite with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! annals::conformance_tests!(|| async { annals::InMemoryEventStore::new() });
//! ```

pub mod conformance;
mod fixtures;
mod given;
mod intercept;
pub mod model;

pub use fixtures::{Counter, CounterCommand, CounterError, CounterEvent, new_event};
pub use given::{Given, Then, given};
pub use intercept::{Intercept, Intercepted};

/// Expands to one `#[tokio::test]` per conformance check, each given a fresh store from
/// `$factory` (an async closure or function returning the store), each bounded by a timeout.
///
/// The calling crate needs `tokio` (with `macros`, `rt-multi-thread` and `time`) among its
/// dev-dependencies.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            append_and_read_back,
            expected_version_rules,
            concurrent_writers_one_stream,
            concurrent_stream_creators,
            concurrent_identical_retries,
            multi_stream_appends_are_atomic,
            idempotent_retries,
            hostile_stream_ids_round_trip,
            awkward_payloads_round_trip,
            global_log_from_every_position,
            read_stream_directions_and_limits,
            invalid_appends_write_nothing,
            snapshots_keep_the_latest,
            read_aggregate_snapshot_and_tail,
            repository_snapshots_and_fallback,
            upcasting_on_read,
            subscribe_catch_up_then_live,
            head_position_follows_the_log,
            identity_and_event_counts,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let store = ($factory)().await;
                ::tokio::time::timeout(
                    ::std::time::Duration::from_secs(120),
                    $crate::testing::conformance::$name(store),
                )
                .await
                .expect("conformance check timed out after 120 s");
            }
        )*
    };
}
