//! Reading a Redis read model: a view of one generation.

use annals::LogPosition;

use super::RedisConnection;
use crate::{Error, Generation, Result, model::decode_checkpoint};

/// A reader's handle on one generation of a Redis read model.
#[derive(Debug, Clone)]
pub struct RedisView {
    connection: RedisConnection,
    generation: Generation,
    prefix: String,
}

impl RedisView {
    pub(crate) fn new(connection: RedisConnection, generation: Generation, prefix: String) -> Self {
        Self {
            connection,
            generation,
            prefix,
        }
    }

    /// The generation this view reads.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The full key of a relative key, for commands the helpers do not cover.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A connection to run such commands on.
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut connection = self.connection.clone();
        Ok(cmd.query_async(&mut connection).await?)
    }

    /// The checkpoint of this generation.
    ///
    /// # Errors
    /// [`Error::Redis`], [`Error::Corrupt`].
    pub async fn checkpoint(&self) -> Result<Option<LogPosition>> {
        let text: Option<String> = self
            .query(redis::cmd("HGET").arg(self.key("__meta")).arg("checkpoint"))
            .await?;
        decode_checkpoint(text.as_deref().unwrap_or(""))
    }

    /// `HGETALL`: an entity's hash.
    ///
    /// # Errors
    /// [`Error::Redis`].
    pub async fn hash(&self, key: &str) -> Result<Vec<(String, String)>> {
        self.query(redis::cmd("HGETALL").arg(self.key(key))).await
    }

    /// `HGET`: one field of an entity's hash.
    ///
    /// # Errors
    /// [`Error::Redis`].
    pub async fn field(&self, key: &str, field: &str) -> Result<Option<String>> {
        self.query(redis::cmd("HGET").arg(self.key(key)).arg(field))
            .await
    }

    /// `GET`: a string or counter.
    ///
    /// # Errors
    /// [`Error::Redis`].
    pub async fn get(&self, key: &str) -> Result<Option<String>> {
        self.query(redis::cmd("GET").arg(self.key(key))).await
    }

    /// The `n` highest entries of a ranking, highest first, with their scores.
    ///
    /// # Errors
    /// [`Error::Redis`].
    pub async fn top(&self, key: &str, n: usize) -> Result<Vec<(String, f64)>> {
        let stop = n as i64 - 1;
        self.query(
            redis::cmd("ZRANGE")
                .arg(self.key(key))
                .arg(0)
                .arg(stop)
                .arg("REV")
                .arg("WITHSCORES"),
        )
        .await
    }

    /// The items of a list, first to last (newest first for [`RedisBatch::push_recent`](super::RedisBatch::push_recent)).
    ///
    /// # Errors
    /// [`Error::Redis`].
    pub async fn list(&self, key: &str) -> Result<Vec<String>> {
        self.query(redis::cmd("LRANGE").arg(self.key(key)).arg(0).arg(-1))
            .await
    }

    /// The members of a set, sorted.
    ///
    /// # Errors
    /// [`Error::Redis`].
    pub async fn members(&self, key: &str) -> Result<Vec<String>> {
        let mut members: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.key(key)))
            .await?;
        members.sort();
        Ok(members)
    }

    /// The events parked in this generation's dead-letter list, in log order.
    ///
    /// # Errors
    /// [`Error::Redis`], [`Error::Corrupt`].
    pub async fn dead_letters(&self) -> Result<Vec<crate::DeadLetter>> {
        let values: Vec<String> = self
            .query(redis::cmd("HVALS").arg(self.key(super::DEAD_LETTER_KEY)))
            .await?;
        let mut letters = values
            .iter()
            .map(|json| {
                serde_json::from_str::<crate::DeadLetter>(json).map_err(|_| Error::Corrupt {
                    what: "dead letter".to_owned(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        letters.sort_by_key(|l| l.position);
        Ok(letters)
    }
}
