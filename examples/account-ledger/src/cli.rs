//! The `ledger` command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{backends::Backend, money::Currency};

/// An account ledger on the Annals event store.
///
/// With DATABASE_URL and REDIS_URL set it uses PostgreSQL and Redis; with neither it keeps
/// everything in a data directory (SQLite store, tantivy index, in-process read models).
#[derive(Debug, Parser)]
#[command(name = "ledger", version)]
pub struct Cli {
    /// The data directory of the embedded mode (the search index lives here in both modes).
    #[arg(
        long,
        global = true,
        env = "LEDGER_DATA_DIR",
        default_value = "./.annals-data"
    )]
    pub data_dir: PathBuf,
    /// Where events and read models live.
    #[arg(long, global = true, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// PostgreSQL URL for the event store (server mode).
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis URL for the read models (server mode).
    #[arg(long, global = true, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PostgreSQL schema of the event store (server mode).
    #[arg(
        long,
        global = true,
        env = "LEDGER_PG_SCHEMA",
        default_value = "ledger"
    )]
    pub pg_schema: String,
    /// Prefix of every Redis key (server mode).
    #[arg(
        long,
        global = true,
        env = "LEDGER_REDIS_PREFIX",
        default_value = "ledger"
    )]
    pub redis_prefix: String,
    /// NATS server(s) for the ledger's events: `ledger work` publishes every account event
    /// to JetStream, `ledger notify` consumes them (without it, nothing is published).
    #[arg(long, global = true, env = "LEDGER_NATS_URL")]
    pub nats_url: Option<String>,
    /// The JetStream stream of the ledger's events (created when missing).
    #[arg(
        long,
        global = true,
        env = "LEDGER_NATS_STREAM",
        default_value = "LEDGER"
    )]
    pub nats_stream: String,
    /// The subject prefix of the ledger's events: `<prefix>.account.<EventType>`.
    #[arg(
        long,
        global = true,
        env = "LEDGER_NATS_PREFIX",
        default_value = "ledger"
    )]
    pub nats_prefix: String,
    /// How long a process's claim on a read model or reactor outlives it when it dies
    /// without letting go (killed), in seconds: another process takes over after that.
    #[arg(long, global = true, env = "LEDGER_LEASE_TTL", default_value = "5", value_parser = seconds)]
    pub lease_ttl: std::time::Duration,
    /// More log output on stderr from Annals and the ledger: -v info, -vv debug (commands,
    /// loads, appends, batches and reactions as spans, a line when each closes), -vvv trace
    /// (every event handled). RUST_LOG adds directives on top, and wins where both name a
    /// target (RUST_LOG=annals_sqlite=trace,sqlx=info).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// PostgreSQL + Redis when DATABASE_URL and REDIS_URL are both set, else embedded.
    Auto,
    /// The data directory, whatever the environment says.
    Embedded,
    /// PostgreSQL + Redis; both URLs are required.
    Server,
}

/// Which read model to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rebuild {
    /// Balances, recent transactions, rankings and totals.
    Balances,
    /// The full-text search index.
    Search,
}

/// An account id: a letter or digit, then letters, digits, `-`, `_` and `.`, at most 64
/// characters (so `..`, `.hidden` or `-x` are refused).
fn seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 3600.0 => Ok(std::time::Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "bad duration {s:?}: seconds, more than 0 and at most 3600, like 5 or 0.5"
        )),
    }
}

fn account_id(s: &str) -> Result<String, String> {
    let ok = s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "bad account id {s:?}: start with a letter or digit, then use up to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open an account: `ledger open alice "Alice Martin" EUR`.
    Open {
        /// The new account's id.
        #[arg(value_parser = account_id)]
        account: String,
        /// Who holds it.
        owner: String,
        /// Its currency (three letters).
        currency: Currency,
    },
    /// Deposit money from outside: `ledger deposit alice 120.00 --from "ACME payroll"`.
    Deposit {
        /// The account.
        #[arg(value_parser = account_id)]
        account: String,
        /// The amount, like 12.50.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// The amount's currency (defaults to the account's; must match it).
        #[arg(long)]
        currency: Option<Currency>,
        /// Free text.
        #[arg(long, default_value = "", conflicts_with = "memo_file")]
        memo: String,
        /// Read the memo from this file (`-`: standard input), for long texts.
        #[arg(long, value_name = "FILE")]
        memo_file: Option<PathBuf>,
        /// Who pays.
        #[arg(long = "from", default_value = "")]
        counterparty: String,
    },
    /// Withdraw money.
    Withdraw {
        /// The account.
        #[arg(value_parser = account_id)]
        account: String,
        /// The amount, like 12.50.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// The amount's currency (defaults to the account's; must match it).
        #[arg(long)]
        currency: Option<Currency>,
        /// Free text.
        #[arg(long, default_value = "", conflicts_with = "memo_file")]
        memo: String,
        /// Read the memo from this file (`-`: standard input), for long texts.
        #[arg(long, value_name = "FILE")]
        memo_file: Option<PathBuf>,
    },
    /// Move money between two accounts, atomically.
    Transfer {
        /// The debited account.
        #[arg(value_parser = account_id)]
        from: String,
        /// The credited account.
        #[arg(value_parser = account_id)]
        to: String,
        /// The amount, like 12.50.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// The amount's currency (defaults to the accounts'; must match both).
        #[arg(long)]
        currency: Option<Currency>,
        /// Free text.
        #[arg(long, default_value = "", conflicts_with = "memo_file")]
        memo: String,
        /// Read the memo from this file (`-`: standard input), for long texts.
        #[arg(long, value_name = "FILE")]
        memo_file: Option<PathBuf>,
    },
    /// Record a payout to an outside bank; `ledger work` asks the bank and settles it (or
    /// reverses it if the bank refuses).
    Payout {
        /// The debited account.
        #[arg(value_parser = account_id)]
        account: String,
        /// The amount, like 12.50.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// The beneficiary's bank account.
        #[arg(long)]
        to: String,
        /// Free text.
        #[arg(long, default_value = "", conflicts_with = "memo_file")]
        memo: String,
        /// Read the memo from this file (`-`: standard input), for long texts.
        #[arg(long, value_name = "FILE")]
        memo_file: Option<PathBuf>,
        /// Make the simulated bank refuse, to see the compensation.
        #[arg(long)]
        bank_fails: bool,
    },
    /// Freeze an account: no money moves in or out.
    Freeze {
        /// The account.
        #[arg(value_parser = account_id)]
        account: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Close an account (its balance must be zero).
    Close {
        /// The account.
        #[arg(value_parser = account_id)]
        account: String,
    },
    /// An account's balance and status.
    Balance {
        /// The account.
        #[arg(value_parser = account_id)]
        account: String,
    },
    /// An account's 50 most recent transactions.
    History {
        /// The account.
        #[arg(value_parser = account_id)]
        account: String,
    },
    /// The N accounts with the highest balance, per currency, with each currency's total.
    Top {
        /// How many.
        #[arg(default_value_t = 10)]
        n: usize,
    },
    /// Full-text search over transactions (memo, owner, counterparty).
    Search {
        /// The query (tantivy syntax: words, "phrases", owner:alice, AND/OR); "*" for all.
        query: String,
        /// Only this account.
        #[arg(long, value_parser = account_id)]
        account: Option<String>,
        /// Smallest amount, like 10.00.
        #[arg(long)]
        min: Option<String>,
        /// Largest amount.
        #[arg(long)]
        max: Option<String>,
        /// Most hits shown (at least 1).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Rebuild a read model from the store beside the live one, then switch (blue/green).
    Rebuild {
        /// Which one.
        #[arg(value_enum)]
        model: Rebuild,
    },
    /// Each read model's and reactor's position and how far it is behind the store, and
    /// the payouts waiting for the bank.
    Status,
    /// Work the reactors: ask the bank for each recorded payout and settle or reverse it.
    Work {
        /// Stop once every payout recorded so far is answered (otherwise run until Ctrl-C).
        #[arg(long)]
        once: bool,
        /// How long the simulated bank takes to answer, in milliseconds.
        #[arg(long, default_value_t = 20)]
        bank_latency_ms: u64,
    },
    /// Consume the ledger's events from NATS into each account's notification feed (the
    /// consumer's own store), once each even when a message comes twice; until Ctrl-C.
    Notify {
        /// Stop once every message of the stream has been consumed.
        #[arg(long)]
        once: bool,
        /// How long NATS waits for a message's acknowledgement before it delivers it again
        /// (after a consumer died), in seconds.
        #[arg(long, default_value = "10", value_parser = seconds)]
        ack_wait: std::time::Duration,
    },
    /// An account's notification feed, newest first (filled by `ledger notify`).
    Notifications {
        /// The account.
        #[arg(value_parser = account_id)]
        account: String,
        /// Most lines shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Generate random but plausible activity, for load.
    Seed {
        /// Accounts to open.
        #[arg(long, default_value_t = 100)]
        accounts: usize,
        /// Money movements to record.
        #[arg(long, default_value_t = 1_000)]
        events: usize,
        /// Random seed, for repeatable data.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Seed a little data in a fresh directory, run a few commands and queries, print them.
    Demo,
}

/// The crates whose level `-v` raises.
const OWN_CRATES: [&str; 8] = [
    "annals",
    "annals_postgres",
    "annals_sqlite",
    "annals_projections",
    "annals_projections_sql",
    "annals_brokers",
    "annals_inbox",
    "account_ledger",
];

/// The log filter: warnings from everything, `-v` raising Annals and the ledger to info,
/// debug, trace; then the directives of `RUST_LOG`, which win where both name a target.
fn log_filter(verbose: u8, rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let own = match verbose {
        0 => None,
        1 => Some("info"),
        2 => Some("debug"),
        _ => Some("trace"),
    };
    let mut directives = vec!["warn".to_owned()];
    if let Some(level) = own {
        directives.extend(OWN_CRATES.iter().map(|c| format!("{c}={level}")));
    }
    if let Some(rust_log) = rust_log.filter(|s| !s.trim().is_empty()) {
        directives.push(rust_log.to_owned());
    }
    tracing_subscriber::EnvFilter::builder().parse_lossy(directives.join(","))
}

/// What must live as long as the program for its spans to be exported (with the `otlp`
/// feature: the exporter, flushed when this is dropped).
struct Telemetry {
    #[cfg(feature = "otlp")]
    _flush: Option<otlp::Flush>,
}

/// Installs the `tracing` subscriber: human-readable lines on stderr, filtered by
/// [`log_filter`]; with `-vv` and more, a line when each span closes (with its duration).
/// With the `otlp` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported
/// over OTLP.
fn install_subscriber(verbose: u8) -> Telemetry {
    use std::io::IsTerminal;
    use tracing_subscriber::{fmt::format::FmtSpan, prelude::*};

    let rust_log = std::env::var("RUST_LOG").ok();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_span_events(if verbose >= 2 {
            FmtSpan::CLOSE
        } else {
            FmtSpan::NONE
        })
        .with_filter(log_filter(verbose, rust_log.as_deref()));
    #[cfg(feature = "otlp")]
    {
        let (otel, flush) = otlp::layer(rust_log.as_deref());
        let installed = tracing_subscriber::registry()
            .with(fmt)
            .with(otel)
            .try_init();
        Telemetry {
            _flush: installed.ok().and(flush),
        }
    }
    #[cfg(not(feature = "otlp"))]
    {
        // Fails only when a subscriber is installed already; that one stays.
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        Telemetry {}
    }
}

/// OTLP export of spans (feature `otlp`).
#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::{Layer, registry::LookupSpan};

    /// Flushes and shuts the exporter down when dropped.
    pub(super) struct Flush(SdkTracerProvider);

    impl Drop for Flush {
        fn drop(&mut self) {
            if let Err(error) = self.0.shutdown() {
                eprintln!("warning: exporting the last spans failed: {error}");
            }
        }
    }

    /// The OpenTelemetry layer, exporting to `OTEL_EXPORTER_OTLP_ENDPOINT` (HTTP, protobuf)
    /// at debug for Annals and the ledger (or as `RUST_LOG` says); none when the variable is
    /// unset or the exporter cannot be built.
    pub(super) fn layer<S>(
        rust_log: Option<&str>,
    ) -> (Option<impl Layer<S> + Send + Sync>, Option<Flush>)
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let Some(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
        else {
            return (None, None);
        };
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
        {
            Ok(exporter) => exporter,
            Err(error) => {
                eprintln!("warning: no OTLP export: {error}");
                return (None, None);
            }
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("ledger")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("account-ledger");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(super::log_filter(2, rust_log));
        (Some(layer), Some(Flush(provider)))
    }
}

/// Parses the arguments, runs the command, and prints any error as a person-readable line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = install_subscriber(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(Backend::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of a pipe (`ledger history alice | head -3`) has what it wanted.
        Err(e) if crate::app::is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::app::report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
