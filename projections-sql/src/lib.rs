#![doc = include_str!("../README.md")]

mod batch;
mod common;
mod error;
mod row;
mod schema;
mod value;
mod view;

#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use batch::SqlBatch;
pub use error::{SqlError, is_transient};
#[cfg(feature = "postgres")]
pub use pg::{PgLeases, PgTables, PgWriter};
pub use row::SqlRow;
pub use schema::SqlSchema;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteLeases, SqliteTables, SqliteWriter};
pub use value::SqlValue;
pub use view::SqlView;
