//! A projection's read model in Redis: generations under hash-tagged prefixes.

use std::sync::Arc;

use redis::Script;
use uuid::Uuid;

use super::{RedisBatch, RedisConnection, RedisView, RedisWriter, scripts};
use crate::{
    Error, Fence, Generation, Generations, ReadModel, Result, model::decode_checkpoint,
    projection::check_name,
};

/// The Redis read model of one projection.
///
/// Layout, for namespace `ns` and projection `p`: `{ns:p}:meta` (a hash: `current`,
/// `building`, `retired`, `next`, `fence`) says which generation serves; generation `g` keeps
/// every key under `{ns:p:g}:`, its checkpoint and fence in `{ns:p:g}:__meta`, parked events
/// in `{ns:p:g}:__dead_letters`. Cheap to clone; readers use [`RedisReadModel::view`].
#[derive(Debug, Clone)]
pub struct RedisReadModel {
    connection: RedisConnection,
    namespace: Arc<str>,
    projection: Arc<str>,
    check_types: bool,
}

/// Reads a Redis reply of the scripts: `ok ...`, or why the write was refused.
pub(crate) fn reply_ok(projection: &str, fence: Fence, reply: Vec<String>) -> Result<Vec<String>> {
    match reply.first().map(String::as_str) {
        Some("ok") => Ok(reply),
        Some("fenced") => Err(Error::Fenced {
            projection: projection.to_owned(),
            fence,
            stored: reply
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX),
        }),
        Some("wrongtype") => Err(Error::WrongType {
            key: reply.get(1).cloned().unwrap_or_default(),
            actual: reply.get(2).cloned().unwrap_or_default(),
            expected: reply.get(3).cloned().unwrap_or_default(),
        }),
        _ => Err(Error::Corrupt {
            what: format!("script reply {reply:?}"),
        }),
    }
}

fn parse_generation(text: Option<&String>) -> Result<Option<Generation>> {
    match text.map(String::as_str) {
        None | Some("") => Ok(None),
        Some(t) => t
            .parse()
            .map(|g| Some(Generation(g)))
            .map_err(|_| Error::Corrupt {
                what: format!("generation {t:?}"),
            }),
    }
}

impl RedisReadModel {
    /// The read model of `projection` under the default namespace `annals`.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a name that cannot be used in a key.
    pub fn new(connection: RedisConnection, projection: &str) -> Result<Self> {
        Self::with_namespace(connection, "annals", projection)
    }

    /// The read model of `projection` under `namespace` (letters, digits, `_`, `-`, `.`):
    /// separate applications or tests on one Redis use separate namespaces.
    ///
    /// # Errors
    /// [`Error::InvalidName`].
    pub fn with_namespace(
        connection: RedisConnection,
        namespace: &str,
        projection: &str,
    ) -> Result<Self> {
        check_name(namespace)?;
        check_name(projection)?;
        Ok(Self {
            connection,
            namespace: namespace.into(),
            projection: projection.into(),
            check_types: true,
        })
    }

    /// Whether each batch script checks the type of every key it writes before writing
    /// anything (on by default). The check makes a batch that uses a key as the wrong type
    /// fail whole instead of half-way (a Redis script does not roll back); it costs one
    /// `TYPE` per distinct key per batch. Turn it off only for projections whose keys each
    /// have one type by construction.
    pub fn with_type_checks(mut self, check: bool) -> Self {
        self.check_types = check;
        self
    }

    /// The connection, for reads the helpers do not cover.
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    fn meta_key(&self) -> String {
        format!("{{{}:{}}}:meta", self.namespace, self.projection)
    }

    pub(crate) fn prefix(&self, generation: Generation) -> String {
        format!(
            "{{{}:{}:{}}}:",
            self.namespace, self.projection, generation.0
        )
    }

    async fn run(&self, script: &Script, key: &str, args: &[String]) -> Result<Vec<String>> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(arg);
        }
        let mut connection = self.connection.clone();
        Ok(invocation.invoke_async(&mut connection).await?)
    }

    /// The generations of this projection, without claiming anything.
    ///
    /// # Errors
    /// [`Error::Redis`].
    pub async fn generations(&self) -> Result<Generations> {
        let mut connection = self.connection.clone();
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.meta_key())
            .arg(&["current", "building", "retired"])
            .query_async(&mut connection)
            .await?;
        let get = |i: usize| parse_generation(values.get(i).and_then(Option::as_ref));
        Ok(Generations {
            current: get(0)?,
            building: get(1)?,
            retired: get(2)?,
            store: None,
        })
    }

    /// The keys of a view's generation, relative to it, sorted (the `__meta` key excluded).
    ///
    /// # Errors
    /// [`Error::Redis`].
    pub async fn keys(&self, view: &RedisView) -> Result<Vec<String>> {
        let prefix = self.prefix(view.generation());
        Ok(self
            .scan(view.generation())
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .filter(|k| k != "__meta")
            .collect())
    }

    /// A view of the generation readers should use now, or `None` before the first build
    /// has completed. A view keeps pointing at its generation; take a new one per request,
    /// as a rebuild may switch generations (and drop the old one) at any time.
    ///
    /// # Errors
    /// [`Error::Redis`].
    pub async fn view(&self) -> Result<Option<RedisView>> {
        Ok(self.generations().await?.current.map(|generation| {
            RedisView::new(self.connection.clone(), generation, self.prefix(generation))
        }))
    }

    /// Lists every key of a generation (full names), one SCAN step at a time on the node
    /// that holds the generation's slot.
    pub(crate) async fn scan(&self, generation: Generation) -> Result<Vec<String>> {
        let prefix = self.prefix(generation);
        let pattern = format!("{prefix}*");
        let route = format!("{prefix}__meta");
        let mut cursor = "0".to_owned();
        let mut keys = Vec::new();
        loop {
            let mut connection = self.connection.clone();
            let (next, mut found): (String, Vec<String>) = scripts::SCAN
                .key(&route)
                .arg(&cursor)
                .arg(&pattern)
                .arg(1000)
                .invoke_async(&mut connection)
                .await?;
            keys.append(&mut found);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

impl ReadModel for RedisReadModel {
    type Batch = RedisBatch;
    type Writer = RedisWriter;

    fn projection(&self) -> &str {
        &self.projection
    }

    async fn claim(&self, fence: Fence, store: Uuid) -> Result<Generations> {
        let reply = self
            .run(
                &scripts::CLAIM_PROJECTION,
                &self.meta_key(),
                &[fence.to_string(), store.to_string()],
            )
            .await?;
        let reply = reply_ok(&self.projection, fence, reply)?;
        let recorded = match reply.get(4).map(String::as_str) {
            None | Some("") => None,
            Some(text) => Some(Uuid::parse_str(text).map_err(|_| Error::Corrupt {
                what: format!("store id {text:?}"),
            })?),
        };
        Ok(Generations {
            current: parse_generation(reply.get(1))?,
            building: parse_generation(reply.get(2))?,
            retired: parse_generation(reply.get(3))?,
            store: recorded,
        })
    }

    async fn reset(&self, fence: Fence, store: Uuid) -> Result<()> {
        let reply = self
            .run(
                &scripts::RESET,
                &self.meta_key(),
                &[fence.to_string(), store.to_string()],
            )
            .await?;
        let reply = reply_ok(&self.projection, fence, reply)?;
        for i in 1..=3 {
            if let Some(generation) = parse_generation(reply.get(i))? {
                self.drop_generation(generation).await?;
            }
        }
        Ok(())
    }

    async fn peek_generations(&self) -> Result<Generations> {
        let mut connection = self.connection.clone();
        let store: Option<String> = redis::cmd("HGET")
            .arg(self.meta_key())
            .arg("store")
            .query_async(&mut connection)
            .await?;
        let store = match store.as_deref() {
            None | Some("") => None,
            Some(text) => Some(Uuid::parse_str(text).map_err(|_| Error::Corrupt {
                what: format!("store id {text:?}"),
            })?),
        };
        Ok(Generations {
            store,
            ..self.generations().await?
        })
    }

    async fn peek_checkpoint(&self, generation: Generation) -> Result<Option<annals::LogPosition>> {
        let mut connection = self.connection.clone();
        let text: Option<String> = redis::cmd("HGET")
            .arg(format!("{}__meta", self.prefix(generation)))
            .arg("checkpoint")
            .query_async(&mut connection)
            .await?;
        decode_checkpoint(text.as_deref().unwrap_or(""))
    }

    async fn dead_letters(&self) -> Result<Vec<crate::DeadLetter>> {
        match self.view().await? {
            Some(view) => view.dead_letters().await,
            None => Ok(Vec::new()),
        }
    }

    async fn begin_build(&self, fence: Fence) -> Result<Generation> {
        let reply = self
            .run(
                &scripts::BEGIN_BUILD,
                &self.meta_key(),
                &[fence.to_string()],
            )
            .await?;
        let reply = reply_ok(&self.projection, fence, reply)?;
        parse_generation(reply.get(1))?.ok_or_else(|| Error::Corrupt {
            what: "begin_build returned no generation".to_owned(),
        })
    }

    async fn open_writer(&self, generation: Generation, fence: Fence) -> Result<RedisWriter> {
        let prefix: Arc<str> = self.prefix(generation).into();
        let meta = format!("{prefix}__meta");
        let reply = self
            .run(&scripts::CLAIM_GENERATION, &meta, &[fence.to_string()])
            .await?;
        let reply = reply_ok(&self.projection, fence, reply)?;
        let checkpoint = decode_checkpoint(reply.get(1).map_or("", String::as_str))?;
        Ok(RedisWriter::new(
            self.connection.clone(),
            self.projection.clone(),
            prefix,
            meta,
            fence,
            checkpoint,
            self.check_types,
        ))
    }

    async fn switch(&self, generation: Generation, fence: Fence) -> Result<Option<Generation>> {
        let args = [fence.to_string(), generation.0.to_string()];
        let reply = self.run(&scripts::SWITCH, &self.meta_key(), &args).await?;
        let reply = reply_ok(&self.projection, fence, reply)?;
        parse_generation(reply.get(1))
    }

    async fn drop_generation(&self, generation: Generation) -> Result<()> {
        let keys = self.scan(generation).await?;
        let mut connection = self.connection.clone();
        for chunk in keys.chunks(500) {
            let _: i64 = redis::cmd("UNLINK")
                .arg(chunk)
                .query_async(&mut connection)
                .await?;
        }
        let args = [generation.0.to_string()];
        let reply = self
            .run(&scripts::FORGET_RETIRED, &self.meta_key(), &args)
            .await?;
        reply_ok(&self.projection, 0, reply).map(|_| ())
    }
}
