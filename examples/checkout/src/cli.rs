//! The `checkout` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::demo::{self, Backend, DemoConfig};

/// The checkout example of Annals: an order → payment → inventory saga with a compensating
/// refund and a payment deadline.
#[derive(Debug, Parser)]
#[command(name = "checkout", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a few orders through every path of the saga and prints what became of each.
    Demo(DemoArgs),
}

/// The options of `checkout demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The directory of the SQLite store (default: a new temporary directory, removed at
    /// the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Run on PostgreSQL at this URL instead of SQLite.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The PostgreSQL schema (created when missing).
    #[arg(long, default_value = "checkout")]
    pub pg_schema: String,
    /// Seconds an order waits for its payment before it is cancelled.
    #[arg(long, default_value = "1", value_parser = seconds)]
    pub payment_timeout: Duration,
    /// Seconds one call to the payment gateway may take.
    #[arg(long, default_value = "1.5", value_parser = seconds)]
    pub gateway_timeout: Duration,
}

/// A positive number of seconds.
fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s}"))?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{s}: give between 0 and 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Quiet unless RUST_LOG asks (`RUST_LOG=warn` shows the retries).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), annals::BoxError> {
    let Command::Demo(args) = cli.command;
    let config = DemoConfig {
        payment_timeout: args.payment_timeout,
        gateway_timeout: args.gateway_timeout,
    };
    let mut stdout = std::io::stdout();
    match (args.database_url, args.data_dir) {
        (Some(url), _) => {
            let backend = Backend::Postgres {
                url,
                schema: args.pg_schema,
            };
            demo::run(&backend, &config, &mut stdout).await?;
        }
        (None, Some(dir)) => {
            demo::run(&Backend::Sqlite { dir }, &config, &mut stdout).await?;
        }
        (None, None) => {
            let temp = tempfile::tempdir()?;
            let backend = Backend::Sqlite {
                dir: temp.path().to_owned(),
            };
            demo::run(&backend, &config, &mut stdout).await?;
        }
    }
    Ok(())
}
