//! A Redis-shaped key-value store: hashes, capped lists, sorted sets and strings, either in a
//! real Redis or kept in this process (the embedded mode). A batch of writes and its
//! checkpoint are applied atomically, and only if the stored checkpoint is still the one the
//! batch was computed from (a compare-and-set that fences out a second writer).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use redis::{AsyncCommands, Script, aio::ConnectionManager};
use serde::Serialize;

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `HSET key field value`.
    HSet {
        /// The hash.
        key: String,
        /// The field.
        field: String,
        /// The value.
        value: String,
    },
    /// `HINCRBY key field by`.
    HIncrBy {
        /// The hash.
        key: String,
        /// The field.
        field: String,
        /// The increment.
        by: i64,
    },
    /// `LPUSH key value` then `LTRIM key 0 keep-1`.
    PushCapped {
        /// The list.
        key: String,
        /// The new first element.
        value: String,
        /// How many elements to keep.
        keep: i64,
    },
    /// `ZINCRBY key by member`.
    ZIncrBy {
        /// The sorted set.
        key: String,
        /// The member.
        member: String,
        /// The increment.
        by: i64,
    },
}

/// Applies a batch if `GET KEYS[1]` equals ARGV[1] (empty: no checkpoint yet) and
/// `GET KEYS[2]` equals ARGV[4] (the guard: the generation is still the active one), then
/// sets the checkpoint to ARGV[2]. Runs atomically: all the batch or nothing. Every key the
/// ops write is declared too (`KEYS[3..]`, see [`script_keys`]), as Redis requires of scripts.
const APPLY: &str = r#"
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end
if ARGV[4] ~= '' and (redis.call('GET', KEYS[2]) or '') ~= ARGV[4] then return 0 end
for _, op in ipairs(cjson.decode(ARGV[3])) do
  if op.op == 'h_set' then redis.call('HSET', op.key, op.field, op.value)
  elseif op.op == 'h_incr_by' then redis.call('HINCRBY', op.key, op.field, op.by)
  elseif op.op == 'push_capped' then
    redis.call('LPUSH', op.key, op.value)
    redis.call('LTRIM', op.key, 0, op.keep - 1)
  elseif op.op == 'z_incr_by' then redis.call('ZINCRBY', op.key, op.by, op.member)
  else return redis.error_reply('unknown op ' .. tostring(op.op)) end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

/// Why the key-value store failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Redis failed.
    #[error("redis failed")]
    Redis(#[from] redis::RedisError),
    /// A batch could not be encoded.
    #[error("could not encode a batch")]
    Encode(#[from] serde_json::Error),
}

/// Hashes, lists, sorted sets and strings kept in this process.
#[derive(Debug, Default)]
pub struct MemoryKv {
    strings: HashMap<String, String>,
    hashes: HashMap<String, HashMap<String, String>>,
    lists: HashMap<String, VecDeque<String>>,
    zsets: HashMap<String, HashMap<String, i64>>,
}

/// A Redis-shaped store: in process, or a Redis server.
#[derive(Clone)]
pub enum Kv {
    /// In this process (embedded mode).
    Memory(Arc<Mutex<MemoryKv>>),
    /// A Redis server.
    Redis(ConnectionManager),
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memory(_) => "Kv::Memory",
            Self::Redis(_) => "Kv::Redis",
        })
    }
}

impl Kv {
    /// An empty in-process store.
    pub fn memory() -> Self {
        Self::Memory(Arc::default())
    }

    /// Connects to Redis at `url`.
    ///
    /// # Errors
    /// [`KvError::Redis`] when the URL is bad or the server does not answer.
    pub async fn redis(url: &str) -> Result<Self, KvError> {
        let client = redis::Client::open(url)?;
        Ok(Self::Redis(client.get_connection_manager().await?))
    }

    fn lock(m: &Mutex<MemoryKv>) -> MutexGuard<'_, MemoryKv> {
        // Each write below is one call on the maps, so a poisoned lock holds consistent data.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `ops` and moves `checkpoint_key` from `expected` to `next`, atomically. Returns
    /// false (and writes nothing) when the checkpoint was no longer `expected`, or when the
    /// `guard` key (if given) no longer holds its value.
    ///
    /// # Errors
    /// [`KvError`] from Redis.
    pub async fn apply(
        &self,
        checkpoint_key: &str,
        expected: &str,
        next: &str,
        guard: Option<(&str, &str)>,
        ops: &[Op],
    ) -> Result<bool, KvError> {
        let (guard_key, guard_value) = guard.unwrap_or((checkpoint_key, ""));
        match self {
            Self::Memory(m) => {
                let mut kv = Self::lock(m);
                let get = |k: &str| kv.strings.get(k).map_or("", String::as_str).to_owned();
                if get(checkpoint_key) != expected
                    || (!guard_value.is_empty() && get(guard_key) != guard_value)
                {
                    return Ok(false);
                }
                for op in ops {
                    kv.apply(op);
                }
                kv.strings
                    .insert(checkpoint_key.to_owned(), next.to_owned());
                Ok(true)
            }
            Self::Redis(con) => {
                let mut con = con.clone();
                let script = Script::new(APPLY);
                let mut invocation = script.prepare_invoke();
                for key in script_keys(checkpoint_key, guard_key, ops) {
                    invocation.key(key);
                }
                invocation
                    .arg(expected)
                    .arg(next)
                    .arg(serde_json::to_string(ops)?)
                    .arg(guard_value);
                let applied: i64 = invocation.invoke_async(&mut con).await?;
                Ok(applied == 1)
            }
        }
    }

    /// `GET key`.
    ///
    /// # Errors
    /// [`KvError`] from Redis.
    pub async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        match self {
            Self::Memory(m) => Ok(Self::lock(m).strings.get(key).cloned()),
            Self::Redis(con) => Ok(con.clone().get(key).await?),
        }
    }

    /// `SET key value`.
    ///
    /// # Errors
    /// [`KvError`] from Redis.
    pub async fn set(&self, key: &str, value: &str) -> Result<(), KvError> {
        match self {
            Self::Memory(m) => {
                Self::lock(m)
                    .strings
                    .insert(key.to_owned(), value.to_owned());
                Ok(())
            }
            Self::Redis(con) => Ok(con.clone().set(key, value).await?),
        }
    }

    /// `SET key value NX`: sets only when the key does not exist; returns whether it did.
    ///
    /// # Errors
    /// [`KvError`] from Redis.
    pub async fn set_if_absent(&self, key: &str, value: &str) -> Result<bool, KvError> {
        match self {
            Self::Memory(m) => {
                let mut kv = Self::lock(m);
                if kv.strings.contains_key(key) {
                    return Ok(false);
                }
                kv.strings.insert(key.to_owned(), value.to_owned());
                Ok(true)
            }
            Self::Redis(con) => Ok(con.clone().set_nx(key, value).await?),
        }
    }

    /// `INCR key`.
    ///
    /// # Errors
    /// [`KvError`] from Redis.
    pub async fn incr(&self, key: &str) -> Result<i64, KvError> {
        match self {
            Self::Memory(m) => {
                let mut kv = Self::lock(m);
                let next = kv
                    .strings
                    .get(key)
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0)
                    + 1;
                kv.strings.insert(key.to_owned(), next.to_string());
                Ok(next)
            }
            Self::Redis(con) => Ok(con.clone().incr(key, 1).await?),
        }
    }

    /// `HGETALL key`.
    ///
    /// # Errors
    /// [`KvError`] from Redis.
    pub async fn hgetall(&self, key: &str) -> Result<HashMap<String, String>, KvError> {
        match self {
            Self::Memory(m) => Ok(Self::lock(m).hashes.get(key).cloned().unwrap_or_default()),
            Self::Redis(con) => Ok(con.clone().hgetall(key).await?),
        }
    }

    /// `LRANGE key 0 -1`.
    ///
    /// # Errors
    /// [`KvError`] from Redis.
    pub async fn list(&self, key: &str) -> Result<Vec<String>, KvError> {
        match self {
            Self::Memory(m) => Ok(Self::lock(m)
                .lists
                .get(key)
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default()),
            Self::Redis(con) => Ok(con.clone().lrange(key, 0, -1).await?),
        }
    }

    /// `ZREVRANGE key 0 n-1 WITHSCORES`: the `n` highest members, highest first (ties by
    /// member name, descending, as Redis orders them).
    ///
    /// # Errors
    /// [`KvError`] from Redis.
    pub async fn top(&self, key: &str, n: usize) -> Result<Vec<(String, i64)>, KvError> {
        match self {
            Self::Memory(m) => {
                let kv = Self::lock(m);
                let mut all: Vec<(String, i64)> = kv
                    .zsets
                    .get(key)
                    .map(|z| z.iter().map(|(k, v)| (k.clone(), *v)).collect())
                    .unwrap_or_default();
                all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
                all.truncate(n);
                Ok(all)
            }
            Self::Redis(con) => {
                let stop = isize::try_from(n).unwrap_or(isize::MAX).saturating_sub(1);
                if n == 0 {
                    return Ok(Vec::new());
                }
                Ok(con.clone().zrevrange_withscores(key, 0, stop).await?)
            }
        }
    }

    /// Deletes every key starting with `prefix` (SCAN + UNLINK on Redis).
    ///
    /// # Errors
    /// [`KvError`] from Redis.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, KvError> {
        match self {
            Self::Memory(m) => {
                let mut kv = Self::lock(m);
                let before = kv.len();
                let p = |k: &String| !k.starts_with(prefix);
                kv.strings.retain(|k, _| p(k));
                kv.hashes.retain(|k, _| p(k));
                kv.lists.retain(|k, _| p(k));
                kv.zsets.retain(|k, _| p(k));
                Ok((before - kv.len()) as u64)
            }
            Self::Redis(con) => {
                let mut con = con.clone();
                let pattern = format!("{}*", glob_escape(prefix));
                let mut cursor: u64 = 0;
                let mut deleted = 0u64;
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut con)
                        .await?;
                    if !keys.is_empty() {
                        let n: u64 = redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async(&mut con)
                            .await?;
                        deleted += n;
                    }
                    if next == 0 {
                        return Ok(deleted);
                    }
                    cursor = next;
                }
            }
        }
    }
}

/// The keys a batch's script touches, each once: the checkpoint, the guard, then every key the
/// ops write, in order of first use.
fn script_keys<'a>(checkpoint: &'a str, guard: &'a str, ops: &'a [Op]) -> Vec<&'a str> {
    let mut keys = vec![checkpoint, guard];
    let mut seen: std::collections::HashSet<&str> = keys.iter().copied().collect();
    for op in ops {
        let key = match op {
            Op::HSet { key, .. }
            | Op::HIncrBy { key, .. }
            | Op::PushCapped { key, .. }
            | Op::ZIncrBy { key, .. } => key.as_str(),
        };
        if seen.insert(key) {
            keys.push(key);
        }
    }
    keys
}

impl MemoryKv {
    fn len(&self) -> usize {
        self.strings.len() + self.hashes.len() + self.lists.len() + self.zsets.len()
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::HSet { key, field, value } => {
                self.hashes
                    .entry(key.clone())
                    .or_default()
                    .insert(field.clone(), value.clone());
            }
            Op::HIncrBy { key, field, by } => {
                let h = self.hashes.entry(key.clone()).or_default();
                let v = h
                    .get(field)
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0);
                h.insert(field.clone(), (v + by).to_string());
            }
            Op::PushCapped { key, value, keep } => {
                let l = self.lists.entry(key.clone()).or_default();
                l.push_front(value.clone());
                l.truncate(usize::try_from(*keep).unwrap_or(0));
            }
            Op::ZIncrBy { key, member, by } => {
                *self
                    .zsets
                    .entry(key.clone())
                    .or_default()
                    .entry(member.clone())
                    .or_default() += by;
            }
        }
    }
}

/// Escapes Redis glob characters so a prefix matches literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_declares_every_key_it_writes_once() {
        let ops = vec![
            Op::HIncrBy {
                key: "{p}:g1:acct:a".into(),
                field: "balance".into(),
                by: 5,
            },
            Op::PushCapped {
                key: "{p}:g1:recent:a".into(),
                value: "x".into(),
                keep: 50,
            },
            Op::HSet {
                key: "{p}:g1:acct:a".into(),
                field: "status".into(),
                value: "open".into(),
            },
            Op::ZIncrBy {
                key: "{p}:g1:ranking".into(),
                member: "a".into(),
                by: 5,
            },
        ];
        assert_eq!(
            script_keys("{p}:g1:checkpoint", "{p}:active", &ops),
            [
                "{p}:g1:checkpoint",
                "{p}:active",
                "{p}:g1:acct:a",
                "{p}:g1:recent:a",
                "{p}:g1:ranking"
            ]
        );
        // Without a guard the checkpoint stands in for it, and KEYS[2] must still be there.
        assert_eq!(script_keys("{p}:c", "{p}:c", &[]), ["{p}:c", "{p}:c"]);
    }
}
