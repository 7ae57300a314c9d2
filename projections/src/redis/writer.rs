//! The writer of one Redis generation: one fenced Lua script per batch.

use std::{collections::HashMap, sync::Arc};

use redis::{ErrorKind, ServerErrorKind};
use tokio::task::JoinHandle;

use annals::LogPosition;

use super::{RedisBatch, RedisConnection, model::reply_ok, scripts};
use crate::{
    Durability, Error, Fence, GenerationWriter, Result,
    model::{decode_checkpoint, encode_checkpoint},
};

/// Writes batches into one Redis generation.
///
/// Deferred writes (catch-up and rebuilds) are pipelined: while one batch's script runs in
/// Redis, the runner computes the next batch, which is sent once the first has succeeded. The
/// next batch expects the checkpoint the first one sets, so if the first fails the second is
/// refused whole, and the runner resumes from the stored checkpoint.
#[derive(Debug)]
pub struct RedisWriter {
    connection: RedisConnection,
    projection: Arc<str>,
    prefix: Arc<str>,
    meta: Arc<str>,
    fence: Fence,
    /// Committed and acknowledged.
    checkpoint: Option<LogPosition>,
    /// What the batch in flight will set.
    sent: Option<LogPosition>,
    in_flight: Option<JoinHandle<Result<LogPosition>>>,
    check_types: bool,
    /// Key types this writer's batches established: those keys need no `TYPE` in Redis,
    /// since no one else writes this generation. Bounded; cleared when full.
    known: HashMap<String, &'static str>,
}

const KNOWN_KEYS: usize = 1_000_000;

impl Drop for RedisWriter {
    fn drop(&mut self) {
        if let Some(task) = self.in_flight.take() {
            task.abort();
        }
    }
}

impl RedisWriter {
    pub(crate) fn new(
        connection: RedisConnection,
        projection: Arc<str>,
        prefix: Arc<str>,
        meta: String,
        fence: Fence,
        checkpoint: Option<LogPosition>,
        check_types: bool,
    ) -> Self {
        Self {
            connection,
            projection,
            prefix,
            meta: meta.into(),
            fence,
            checkpoint,
            sent: checkpoint,
            in_flight: None,
            check_types,
            known: HashMap::new(),
        }
    }

    /// Waits for the batch in flight, if any.
    async fn settle(&mut self) -> Result<()> {
        if let Some(task) = self.in_flight.take() {
            let through = task.await.map_err(|e| Error::WorkerPanicked {
                projection: self.projection.to_string(),
                message: e.to_string(),
            })??;
            self.checkpoint = Some(through);
        }
        Ok(())
    }
}

/// Runs one batch's script.
#[allow(clippy::too_many_arguments)]
async fn commit(
    mut connection: RedisConnection,
    projection: Arc<str>,
    meta: Arc<str>,
    fence: Fence,
    expected: Option<LogPosition>,
    through: LogPosition,
    check_types: bool,
    batch: RedisBatch,
) -> Result<LogPosition> {
    let check_types = check_types && batch.needs_type_checks();
    let (keys, plan, args) = batch.into_parts();
    // `EVALSHA` built directly: a `ScriptInvocation` would copy every argument once more.
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(scripts::COMMIT.get_hash())
        .arg(1 + keys.len())
        .arg(&*meta)
        .arg(&keys)
        .arg(fence)
        .arg(encode_checkpoint(expected))
        .arg(encode_checkpoint(Some(through)))
        .arg(if check_types { "1" } else { "0" })
        .arg(&plan)
        .arg(&args);
    drop((keys, plan, args));
    let reply: Vec<String> = match cmd.query_async(&mut connection).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            scripts::COMMIT.load_async(&mut connection).await?;
            cmd.query_async(&mut connection).await?
        }
        reply => reply?,
    };
    if reply.first().map(String::as_str) == Some("checkpoint") {
        let stored = decode_checkpoint(reply.get(1).map_or("", String::as_str))?;
        return Err(Error::CheckpointMoved {
            projection: projection.to_string(),
            expected,
            stored,
        });
    }
    reply_ok(&projection, fence, reply)?;
    Ok(through)
}

impl GenerationWriter for RedisWriter {
    type Batch = RedisBatch;

    fn checkpoint(&self) -> Option<LogPosition> {
        self.checkpoint
    }

    fn batch(&self) -> RedisBatch {
        RedisBatch::new(self.prefix.clone())
    }

    async fn load_lookups(&mut self, keys: &[String]) -> Result<Vec<Option<String>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // The batch in flight may set some of them.
        self.settle().await?;
        let mut connection = self.connection.clone();
        let key = format!("{}{}", self.prefix, super::batch::LOOKUP_KEY);
        Ok(redis::cmd("HMGET")
            .arg(key)
            .arg(keys)
            .query_async(&mut connection)
            .await?)
    }

    async fn dead_letter_count(&mut self) -> Result<u64> {
        self.settle().await?;
        let mut connection = self.connection.clone();
        let key = format!("{}{}", self.prefix, super::DEAD_LETTER_KEY);
        Ok(redis::cmd("HLEN")
            .arg(key)
            .query_async(&mut connection)
            .await?)
    }

    async fn write(
        &mut self,
        mut batch: RedisBatch,
        through: LogPosition,
        durability: Durability,
    ) -> Result<Option<LogPosition>> {
        batch.write_lookups();
        if self.check_types {
            if self.known.len() > KNOWN_KEYS {
                self.known.clear();
            }
            batch.resolve_types(&mut self.known)?;
        }
        let expected = self.sent;
        self.settle().await?;
        let task = tokio::spawn(commit(
            self.connection.clone(),
            self.projection.clone(),
            self.meta.clone(),
            self.fence,
            expected,
            through,
            self.check_types,
            batch,
        ));
        self.sent = Some(through);
        self.in_flight = Some(task);
        if durability == Durability::Now {
            self.settle().await?;
        }
        Ok(self.checkpoint)
    }

    async fn flush(&mut self) -> Result<Option<LogPosition>> {
        self.settle().await?;
        Ok(self.checkpoint)
    }
}
