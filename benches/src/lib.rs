//! The Annals benchmark runner: each scenario times the framework and, in the same run, the
//! raw baseline that bounds it (the database, Redis or tantivy used directly), and reports
//! events/s and their ratio. `cargo run --release -p annals-bench -- all` runs them all.
//!
//! The library part exists for the criterion micro-benchmarks and the tests; the binary is
//! `src/main.rs`.

pub mod commands;
pub mod cpu;
pub mod ledger;
pub mod timed;
pub mod workload;

mod cli;
mod env;
mod raw;
mod report;
mod runner;
mod scenarios;

pub use cli::{Args, run};

/// The environment variable `name` parsed as a `T`; `None` when it is unset. The examples and
/// `command_cpu`'s stores read their settings with it.
///
/// # Errors
/// A value that does not parse (`NOTIFY=0` for a `bool`, say), named with the variable:
/// ignored, it would leave the default in place while the run claims the setting.
pub fn env_setting<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(value) => value.parse().map(Some).map_err(|_| {
            format!(
                "{name}={value:?} is not a valid {}",
                std::any::type_name::<T>()
            )
        }),
    }
}
/// [`env_setting`] for the examples' settings: the value, or `default` when the variable is
/// unset. A value that does not parse ends the process with its message (exit code 2), as a
/// command-line tool ends on a bad argument.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match env_setting(name) {
        Ok(value) => value.unwrap_or(default),
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    }
}
pub use report::{BaselineResult, Row, Stats, Status, Target};

/// The runner's error type: anything, with its message.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How big each scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Events of the batched append, the global-log replay and the projection rebuilds.
    pub events: u64,
    /// Events per append call of the batched append (and per fill call).
    pub batch: usize,
    /// Streams of the cached command path (one command each); the uncached path makes as
    /// many commands, ten on each of a tenth as many aggregates.
    pub streams: u64,
    /// Events of the aggregate that is loaded.
    pub aggregate_events: u64,
}

impl Sizes {
    /// The default sizes: `all` finishes in a few minutes on 2 cores.
    pub const DEFAULT: Self = Self {
        events: 200_000,
        batch: 1_000,
        streams: 10_000,
        aggregate_events: 10_000,
    };

    /// Tiny sizes that only check each scenario works.
    pub const QUICK: Self = Self {
        events: 400,
        batch: 100,
        streams: 100,
        aggregate_events: 300,
    };
}
