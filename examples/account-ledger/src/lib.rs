#![doc = include_str!("../README.md")]

mod app;
mod backends;
mod cli;
mod demo;
pub mod domain;
pub mod money;
pub mod notify;
pub mod projections;
mod seed;

pub use app::{App, AppError, BalancesTarget, ReadConfig, is_broken_pipe, report};
pub use backends::{Backend, BackendError, embedded_app};
pub use cli::{BackendChoice, Cli, Command, Rebuild, main};
pub use demo::run as run_demo;
pub use seed::seed;
