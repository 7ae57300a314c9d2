//! tantivy read models: documents upserted by id through one writer per index, committed
//! with the checkpoint and fence in the commit payload; searches with scores.

mod batch;
mod config;
mod journal;
mod model;
mod view;
mod writer;

pub use batch::TantivyBatch;
pub use config::TantivyConfig;
pub use model::TantivyReadModel;
pub use view::{TantivyHit, TantivyView};
pub use writer::TantivyWriter;
