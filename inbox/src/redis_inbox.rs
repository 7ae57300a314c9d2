//! [`RedisInbox`]: processed ids as Redis keys, written by the Lua script that runs the
//! effect.
//!
//! Every effect is one Lua script, the inbox's check around the caller's code:
//!
//! 1. `EXISTS` the id key: when it exists, return "duplicate" and do nothing else;
//! 2. run the effect (the caller's script body, or the commands of a [`RedisCommands`]);
//! 3. `SET` the id key, with `PX` the retention when there is one.
//!
//! Redis runs a script alone: no command of another client runs between its first and last
//! command, so of any number of concurrent deliveries of one id exactly one finds the key
//! missing and runs the effect, whichever connection or process they come from. It needs
//! no `WATCH` (which belongs to a connection, and the connections here are multiplexed)
//! and no retry loop, and it is one round trip. The id is written last because Redis has
//! no rollback: a script that raises an error keeps the writes it made before, so writing
//! the id first would record a message whose effect failed. Written last, a failed effect
//! leaves the id unrecorded and the message can be processed again; a script refuses
//! before it writes (`return redis.error_reply(...)`), or its partial writes stay.

use std::{fmt, sync::Arc, time::Duration};

use redis::{ToRedisArgs, Value, aio::ConnectionLike};
use uuid::Uuid;

use crate::{InboxError, Processed, names};

/// How long a processed id is remembered.
///
/// A message delivered again after its id is forgotten is processed again. `Forever` is
/// exact but the ids grow without bound (about 100 bytes each in Redis); a duration keeps
/// memory bounded and is safe as long as it is longer than any redelivery the broker can
/// make (JetStream: the stream's `max_age`, or `max_deliver` times `ack_wait` and the
/// backoff; RabbitMQ: as long as a message can wait in a queue or a dead-letter loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// Ids are never forgotten.
    #[default]
    Forever,
    /// Ids are forgotten this long after they were recorded (by Redis's clock, with
    /// millisecond precision, at least one millisecond).
    For(Duration),
}

impl Retention {
    /// The `PX` argument in milliseconds, 0 for none.
    fn millis(self) -> u64 {
        match self {
            Self::Forever => 0,
            Self::For(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }
}

/// The inbox's check around an effect body; see the module documentation.
const WRAPPER_HEAD: &str = r"-- annals-inbox: KEYS[1] is the id key and KEYS[2..] the effect's keys; ARGV[1] is the
-- retention in milliseconds (0: forever) and ARGV[2..] the effect's arguments.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0}
end
local effect_keys, effect_args = {}, {}
for i = 2, #KEYS do effect_keys[i - 1] = KEYS[i] end
for i = 2, #ARGV do effect_args[i - 1] = ARGV[i] end
local result = (function(KEYS, ARGV)
";

const WRAPPER_TAIL: &str = r"
end)(effect_keys, effect_args)
if type(result) == 'table' and result.err then
  return {2, result.err}
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('SET', KEYS[1], '1', 'PX', ttl)
else
  redis.call('SET', KEYS[1], '1')
end
return {1, result}
";

/// The effect body that runs the commands of a [`RedisCommands`]: ARGV[1] is the number of
/// commands; each command is a shape (`k` for a key, `a` for an argument, per part) and its
/// parts, a key given as its index in KEYS.
const COMMANDS_BODY: &str = r"
local out = {}
local i = 2
for c = 1, tonumber(ARGV[1]) do
  local shape = ARGV[i]
  i = i + 1
  local parts = {}
  for p = 1, #shape do
    if string.sub(shape, p, p) == 'k' then
      parts[p] = KEYS[tonumber(ARGV[i])]
    else
      parts[p] = ARGV[i]
    end
    i = i + 1
  end
  out[c] = redis.call(unpack(parts))
end
return out
";

/// A Lua effect, wrapped once in the inbox's check; cheap to clone, meant to be built once
/// and reused (Redis caches it by its SHA1).
///
/// The body is the code of a Lua function that sees the effect's keys as `KEYS` and its
/// arguments as `ARGV` (numbered from 1, the inbox's own stripped) and may `return` a
/// value, which [`RedisInbox::process`] hands back in [`Processed::Done`]. Returning
/// `redis.error_reply(message)` refuses the message: the id is not recorded and `process`
/// fails with [`InboxError::Refused`]. Refuse before writing: Redis keeps the writes a
/// script made before it returned or raised an error.
///
/// Name every key in `KEYS` (never build key names inside the script): on a Redis Cluster
/// all of them must hash to the inbox's slot, which [`RedisInbox::key`] gives.
///
/// ```
/// use annals_inbox::EffectScript;
///
/// let deposit = EffectScript::new(
///     r"
///     local amount = tonumber(ARGV[1])
///     if amount == nil or amount <= 0 then
///       return redis.error_reply('not a positive amount')
///     end
///     return redis.call('INCRBY', KEYS[1], amount)
///     ",
/// );
/// ```
#[derive(Clone)]
pub struct EffectScript {
    script: Arc<redis::Script>,
}

impl fmt::Debug for EffectScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EffectScript")
            .field("sha", &self.script.get_hash())
            .finish()
    }
}

impl EffectScript {
    /// Wraps the Lua function body `body`; see the type's documentation.
    pub fn new(body: &str) -> Self {
        Self {
            script: Arc::new(redis::Script::new(&format!(
                "{WRAPPER_HEAD}{body}{WRAPPER_TAIL}"
            ))),
        }
    }
}

/// One run of an [`EffectScript`] with its keys and arguments, or a list of
/// [`RedisCommands`]: what [`RedisInbox::process`] runs when a message is new.
#[derive(Debug, Clone)]
pub struct RedisEffect {
    script: EffectScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl RedisEffect {
    /// A run of `script`, with no keys or arguments yet.
    pub fn new(script: &EffectScript) -> Self {
        Self {
            script: script.clone(),
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Adds the next key (`KEYS[n]` in the body; several when `key` is a list).
    #[must_use]
    pub fn key(mut self, key: impl ToRedisArgs) -> Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds the next argument (`ARGV[n]` in the body; several when `arg` is a list).
    #[must_use]
    pub fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        arg.write_redis_args(&mut self.args);
        self
    }
}

/// Redis commands run in order by the inbox's script when a message is new; their replies
/// come back as an array in [`Processed::Done`].
///
/// For effects that only write. An effect that must read before it decides (refuse an
/// overdraft) is an [`EffectScript`]. A command that fails (a key of the wrong type) aborts
/// the script without recording the id, but the commands before it stay applied.
///
/// ```
/// use annals_inbox::RedisCommands;
///
/// let effect = RedisCommands::new()
///     .cmd("HINCRBY").key("{shop}:balances").arg("alice").arg(25)
///     .cmd("RPUSH").key("{shop}:journal").arg("deposit alice 25");
/// ```
#[derive(Debug, Clone, Default)]
pub struct RedisCommands {
    keys: Vec<Vec<u8>>,
    /// For each command its shape, then its parts.
    parts: Vec<Vec<u8>>,
    commands: usize,
    /// The index in `parts` of the current command's shape.
    shape: Option<usize>,
}

impl RedisCommands {
    /// No commands yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the next command, `name` (`"HSET"`, `"INCRBY"`, ...).
    #[must_use]
    pub fn cmd(mut self, name: &str) -> Self {
        self.shape = Some(self.parts.len());
        self.parts.push(b"a".to_vec());
        self.parts.push(name.as_bytes().to_vec());
        self.commands += 1;
        self
    }

    /// Adds a key to the current command (several when `key` is a list).
    ///
    /// # Panics
    /// Before the first [`RedisCommands::cmd`].
    #[must_use]
    pub fn key(mut self, key: impl ToRedisArgs) -> Self {
        let shape = self
            .shape
            .expect("RedisCommands::key before RedisCommands::cmd");
        for key in key.to_redis_args() {
            self.keys.push(key);
            // KEYS of the body count from 1.
            self.parts.push(self.keys.len().to_string().into_bytes());
            self.parts[shape].push(b'k');
        }
        self
    }

    /// Adds an argument to the current command (several when `arg` is a list).
    ///
    /// # Panics
    /// Before the first [`RedisCommands::cmd`].
    #[must_use]
    pub fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        let shape = self
            .shape
            .expect("RedisCommands::arg before RedisCommands::cmd");
        for arg in arg.to_redis_args() {
            self.parts.push(arg);
            self.parts[shape].push(b'a');
        }
        self
    }
}

impl From<RedisCommands> for RedisEffect {
    fn from(commands: RedisCommands) -> Self {
        static SCRIPT: std::sync::LazyLock<EffectScript> =
            std::sync::LazyLock::new(|| EffectScript::new(COMMANDS_BODY));
        let mut args = Vec::with_capacity(commands.parts.len() + 1);
        args.push(commands.commands.to_string().into_bytes());
        args.extend(commands.parts);
        Self {
            script: SCRIPT.clone(),
            keys: commands.keys,
            args,
        }
    }
}

impl From<&EffectScript> for RedisEffect {
    fn from(script: &EffectScript) -> Self {
        Self::new(script)
    }
}

/// An inbox in Redis: one key per processed id, `{prefix}:inbox:<consumer>:<id>`, written
/// by the same Lua script that runs the effect (see [`RedisInbox::process`]).
///
/// All keys of an inbox share the hash tag `{prefix}`, so on a Redis Cluster they live in
/// one slot and the effect's keys must too: name them with [`RedisInbox::key`]. Keys under
/// `{prefix}:inbox:` are the inbox's own.
///
/// Ids expire with the [`Retention`] (forever by default). Keep the ids from being
/// evicted: a `maxmemory-policy` other than `noeviction` may drop them (`volatile-*`
/// policies those with a retention), and a dropped id is processed again. A failover to a
/// replica that had not received the last scripts loses their effects and ids together.
///
/// `C` is any multiplexed connection: the reconnecting
/// [`ConnectionManager`](redis::aio::ConnectionManager) of [`RedisInbox::connect`], a
/// [`ClusterConnection`](redis::cluster_async::ClusterConnection), or another
/// [`ConnectionLike`] (annals-projections' `RedisConnection`).
#[derive(Clone)]
pub struct RedisInbox<C = redis::aio::ConnectionManager> {
    connection: C,
    prefix: String,
    consumer: String,
    retention: Retention,
}

impl<C> fmt::Debug for RedisInbox<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisInbox")
            .field("prefix", &self.prefix)
            .field("consumer", &self.consumer)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl RedisInbox<redis::aio::ConnectionManager> {
    /// Connects to one server (`redis://host:port/db`) through a reconnecting connection
    /// manager; connecting times out after 5 s and a reply after 10 s, so that a silent
    /// network is a transient error within seconds (a script whose reply timed out may
    /// have run: the next delivery is then answered `Duplicate`).
    ///
    /// # Errors
    /// [`InboxError::InvalidName`] for a bad `prefix` or `consumer` (see
    /// [`RedisInbox::new`]); [`InboxError::Redis`] when the url is invalid or the server
    /// is unreachable.
    pub async fn connect(url: &str, prefix: &str, consumer: &str) -> Result<Self, InboxError> {
        names::check_name("key prefix", prefix)?;
        names::check_name("consumer", consumer)?;
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let manager = redis::aio::ConnectionManager::new_with_config(client, config).await?;
        Self::new(manager, prefix, consumer)
    }
}

impl<C> RedisInbox<C>
where
    C: ConnectionLike + Clone + Send + Sync,
{
    /// An inbox for `consumer` (the receiving service or handler; each has its own ids)
    /// with its keys under `{prefix}`, remembering ids forever (see
    /// [`RedisInbox::with_retention`]).
    ///
    /// # Errors
    /// [`InboxError::InvalidName`] when `prefix` or `consumer` is not 1 to 128 ASCII
    /// letters, digits, `_`, `-`, `.` (no `:` or braces: key names stay unambiguous).
    pub fn new(connection: C, prefix: &str, consumer: &str) -> Result<Self, InboxError> {
        names::check_name("key prefix", prefix)?;
        names::check_name("consumer", consumer)?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            consumer: consumer.to_owned(),
            retention: Retention::Forever,
        })
    }

    /// How long ids are remembered; see [`Retention`].
    #[must_use]
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The consumer whose ids this inbox records.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The key `{prefix}:<name>`, in the inbox's hash slot: the name for an effect's keys
    /// on a Redis Cluster.
    pub fn key(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.prefix)
    }

    /// The key that records `message_id` as processed by this consumer.
    pub fn id_key(&self, message_id: Uuid) -> String {
        format!(
            "{{{}}}:inbox:{}:{}",
            self.prefix,
            self.consumer,
            message_id.hyphenated()
        )
    }

    /// Processes the message `message_id` once: in one script, checks its id, runs
    /// `effect` and records the id, or answers [`Processed::Duplicate`] without running the
    /// effect when the id is recorded. The value is what the effect script returned (an
    /// array of the replies for [`RedisCommands`]).
    ///
    /// # Errors
    /// [`InboxError::Refused`] when the script returned an error reply,
    /// [`InboxError::Redis`] when Redis failed or a command of the effect raised an error
    /// (the id is not recorded in either case). A reply that timed out may come from a
    /// script that ran: the next delivery answers `Duplicate`.
    pub async fn process(
        &self,
        message_id: Uuid,
        effect: impl Into<RedisEffect>,
    ) -> Result<Processed<Value>, InboxError> {
        let effect = effect.into();
        let mut invocation = effect.script.script.prepare_invoke();
        invocation.key(self.id_key(message_id));
        for key in &effect.keys {
            invocation.key(key.as_slice());
        }
        invocation.arg(self.retention.millis());
        for arg in &effect.args {
            invocation.arg(arg.as_slice());
        }
        let mut connection = self.connection.clone();
        let reply: Value = invocation.invoke_async(&mut connection).await?;
        let Value::Array(mut items) = reply else {
            return Err(InboxError::UnexpectedReply(format!("{reply:?}")));
        };
        let value = if items.len() > 1 {
            items.swap_remove(1)
        } else {
            Value::Nil
        };
        match items.first() {
            Some(Value::Int(1)) => Ok(Processed::Done(value)),
            Some(Value::Int(0)) => {
                tracing::debug!(consumer = %self.consumer, %message_id, "duplicate delivery");
                Ok(Processed::Duplicate)
            }
            Some(Value::Int(2)) => Err(InboxError::Refused(match value {
                Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Value::SimpleString(text) => text,
                other => format!("{other:?}"),
            })),
            other => Err(InboxError::UnexpectedReply(format!("{other:?}"))),
        }
    }

    /// Whether `message_id` is recorded as processed (and not expired).
    ///
    /// # Errors
    /// [`InboxError::Redis`].
    pub async fn is_processed(&self, message_id: Uuid) -> Result<bool, InboxError> {
        let mut connection = self.connection.clone();
        let exists: bool = redis::cmd("EXISTS")
            .arg(self.id_key(message_id))
            .query_async(&mut connection)
            .await?;
        Ok(exists)
    }
}
