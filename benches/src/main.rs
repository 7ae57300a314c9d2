//! `annals-bench`: run `annals-bench all`, or `annals-bench --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = annals_bench::Args::parse();
    match annals_bench::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
