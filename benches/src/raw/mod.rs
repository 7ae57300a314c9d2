//! Baselines: the same work done with the database, Redis or tantivy directly.

pub(crate) mod pg;
pub(crate) mod redis;
pub(crate) mod sql;
pub(crate) mod sqlite;
pub(crate) mod tantivy;
