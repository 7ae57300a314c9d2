//! Redis read models: a hash per entity, sorted sets for rankings, lists for recent items,
//! counters; each batch committed with its checkpoint and fence in one Lua script.

mod args;
mod batch;
mod connection;
mod model;
mod scripts;
mod view;
mod writer;

pub use batch::{DEAD_LETTER_KEY, LOOKUP_KEY, RedisBatch};
pub use connection::RedisConnection;
pub use model::RedisReadModel;
pub use view::RedisView;
pub use writer::RedisWriter;
