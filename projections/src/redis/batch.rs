//! The commands a Redis projection's handler adds for a run of events.

use std::sync::Arc;

use redis::ToRedisArgs;

use super::args::Args;
use crate::{DeadLetter, Lookups, WriteBatch};

/// The key (relative to the generation) that holds parked events: a hash from event id to
/// the letter as JSON.
pub const DEAD_LETTER_KEY: &str = "__dead_letters";

/// The key (relative to the generation) that holds the projection's lookups: a hash from
/// lookup key to JSON value.
pub const LOOKUP_KEY: &str = "__lookups";

/// Writes into one generation of a Redis read model, committed in one Lua script together
/// with the checkpoint and fence.
///
/// Keys are given relative to the generation (`"account:42"`); the batch adds the
/// generation's prefix, `{<namespace>:<projection>:<generation>}:`, whose hash tag puts all
/// of a generation's keys in one cluster slot. Keys starting with `__` are reserved.
///
/// Every key is used as one type only (a hash, a sorted set, a list, a string or a set): a
/// batch that would write a key as another type than it holds is refused whole with
/// [`Error::WrongType`](crate::Error::WrongType) before anything is written. Keep counters
/// (`hincrby`, `incrby`) apart from fields written as text, which Redis cannot check ahead.
#[derive(Debug, Clone)]
pub struct RedisBatch {
    prefix: Arc<str>,
    keys: Vec<String>,
    /// Three bytes per command: its [`Op`], its key's [`Kind`] and its argument count.
    plan: Vec<u8>,
    args: Args,
    starts: Vec<usize>,
    lookups: Lookups,
}

/// The commands a batch can hold, numbered as in the commit script's table.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Op {
    Hset = 1,
    Hincrby = 2,
    Hdel = 3,
    Zadd = 4,
    Zincrby = 5,
    Zrem = 6,
    Lpush = 7,
    Ltrim = 8,
    Rpush = 9,
    Incrby = 10,
    Set = 11,
    Sadd = 12,
    Srem = 13,
    Del = 14,
}

/// The type a command gives its key, numbered as in the commit script's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// Any type (`DEL`).
    Any = 0,
    Hash = 1,
    Zset = 2,
    List = 3,
    Set = 4,
    String = 5,
    /// The writer's earlier commands gave the key this command's type: no `TYPE` in Redis.
    Known = 6,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Any | Kind::Known => "*",
            Kind::Hash => "hash",
            Kind::Zset => "zset",
            Kind::List => "list",
            Kind::Set => "set",
            Kind::String => "string",
        }
    }
}

/// The plan's argument count meaning "the count is the command's first argument".
const LONG: u8 = 255;

impl RedisBatch {
    pub(crate) fn new(prefix: Arc<str>) -> Self {
        Self {
            prefix,
            keys: Vec::new(),
            plan: Vec::new(),
            args: Args::default(),
            starts: Vec::new(),
            lookups: Lookups::new(),
        }
    }

    /// Adds the lookups the handlers set as commands on the generation's lookup hash.
    pub(crate) fn write_lookups(&mut self) {
        let lookups = std::mem::take(&mut self.lookups);
        for (key, value) in lookups.changes() {
            match value {
                Some(value) => self.push(Op::Hset, Kind::Hash, LOOKUP_KEY, &[&key, &value]),
                None => self.push(Op::Hdel, Kind::Hash, LOOKUP_KEY, &[&key]),
            }
        }
    }

    /// The keys (one per command), the plan (three bytes per command: command number, key
    /// type number, argument count) and the arguments of every command, in order.
    pub(crate) fn into_parts(self) -> (Vec<String>, Vec<u8>, Args) {
        (self.keys, self.plan, self.args)
    }

    /// True when some command's key type must be checked in Redis.
    pub(crate) fn needs_type_checks(&self) -> bool {
        self.plan.chunks_exact(3).any(
            |c| !matches!(c.get(1), Some(&k) if k == Kind::Any as u8 || k == Kind::Known as u8),
        )
    }

    /// Checks each command's key type against `known` (the types this writer's earlier
    /// commands gave their keys), marks the commands that need no check in Redis, and
    /// records the types this batch gives its keys.
    ///
    /// # Errors
    /// [`Error::WrongType`](crate::Error::WrongType) when a command uses a known key as
    /// another type.
    pub(crate) fn resolve_types(
        &mut self,
        known: &mut std::collections::HashMap<String, &'static str>,
    ) -> crate::Result<()> {
        for (key, step) in self.keys.iter().zip(self.plan.chunks_exact_mut(3)) {
            let Some(kind) = step.get_mut(1).filter(|k| **k != Kind::Known as u8) else {
                continue;
            };
            let want = kind_of(*kind).name();
            match known.get(key.as_str()) {
                Some(&have) if want != "*" && (have == "*" || have == want) => {
                    *kind = Kind::Known as u8;
                    if have == want {
                        continue;
                    }
                }
                Some(&have) if want != "*" && have != want => {
                    return Err(crate::Error::WrongType {
                        key: key.clone(),
                        expected: want.to_owned(),
                        actual: have.to_owned(),
                    });
                }
                Some(&have) if have == want => continue,
                _ => {}
            }
            known.insert(key.clone(), want);
        }
        Ok(())
    }

    /// The number of commands added.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no command was added.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The full Redis key of a relative key in this generation.
    pub fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }

    fn push(&mut self, op: Op, kind: Kind, key: &str, args: &[&dyn ToRedisArgsDyn]) {
        self.starts.push(self.args.len());
        self.keys.push(self.key(key));
        let at = self.args.len();
        for arg in args {
            arg.append_to(&mut self.args);
        }
        let count = self.args.len() - at;
        let count = match u8::try_from(count) {
            Ok(count) if count < LONG => count,
            // Rare (an argument that expands to many): the count goes first, as text.
            _ => {
                self.args.insert(at, count.to_string().as_bytes());
                LONG
            }
        };
        self.plan.extend_from_slice(&[op as u8, kind as u8, count]);
    }

    /// `HSET key field value`: one field of an entity's hash.
    pub fn hset(&mut self, key: &str, field: impl ToRedisArgs, value: impl ToRedisArgs) {
        self.push(Op::Hset, Kind::Hash, key, &[&field, &value]);
    }

    /// `HSET key f1 v1 f2 v2 ..`: several fields of an entity's hash.
    pub fn hset_multiple<F: ToRedisArgs, V: ToRedisArgs>(&mut self, key: &str, fields: &[(F, V)]) {
        let args: Vec<&dyn ToRedisArgsDyn> = fields
            .iter()
            .flat_map(|(f, v)| [f as &dyn ToRedisArgsDyn, v as &dyn ToRedisArgsDyn])
            .collect();
        if !args.is_empty() {
            self.push(Op::Hset, Kind::Hash, key, &args);
        }
    }

    /// `HINCRBY key field by`: a counter in an entity's hash.
    pub fn hincrby(&mut self, key: &str, field: impl ToRedisArgs, by: i64) {
        self.push(Op::Hincrby, Kind::Hash, key, &[&field, &by]);
    }

    /// `HDEL key field`.
    pub fn hdel(&mut self, key: &str, field: impl ToRedisArgs) {
        self.push(Op::Hdel, Kind::Hash, key, &[&field]);
    }

    /// `ZADD key score member`: a ranking entry.
    pub fn zadd(&mut self, key: &str, member: impl ToRedisArgs, score: f64) {
        self.push(Op::Zadd, Kind::Zset, key, &[&score, &member]);
    }

    /// `ZINCRBY key by member`: moves a ranking entry.
    pub fn zincrby(&mut self, key: &str, member: impl ToRedisArgs, by: f64) {
        self.push(Op::Zincrby, Kind::Zset, key, &[&by, &member]);
    }

    /// `ZREM key member`.
    pub fn zrem(&mut self, key: &str, member: impl ToRedisArgs) {
        self.push(Op::Zrem, Kind::Zset, key, &[&member]);
    }

    /// `LPUSH key value` then `LTRIM key 0 cap-1`: the `cap` most recent items, newest first.
    pub fn push_recent(&mut self, key: &str, value: impl ToRedisArgs, cap: usize) {
        self.push(Op::Lpush, Kind::List, key, &[&value]);
        let last = cap.saturating_sub(1) as i64;
        self.push(Op::Ltrim, Kind::List, key, &[&0i64, &last]);
    }

    /// `RPUSH key value`: appends to a list.
    pub fn rpush(&mut self, key: &str, value: impl ToRedisArgs) {
        self.push(Op::Rpush, Kind::List, key, &[&value]);
    }

    /// `INCRBY key by`: a counter.
    pub fn incrby(&mut self, key: &str, by: i64) {
        self.push(Op::Incrby, Kind::String, key, &[&by]);
    }

    /// `SET key value`.
    pub fn set(&mut self, key: &str, value: impl ToRedisArgs) {
        self.push(Op::Set, Kind::String, key, &[&value]);
    }

    /// `SADD key member`.
    pub fn sadd(&mut self, key: &str, member: impl ToRedisArgs) {
        self.push(Op::Sadd, Kind::Set, key, &[&member]);
    }

    /// `SREM key member`.
    pub fn srem(&mut self, key: &str, member: impl ToRedisArgs) {
        self.push(Op::Srem, Kind::Set, key, &[&member]);
    }

    /// `DEL key`: removes a key of any type.
    pub fn del(&mut self, key: &str) {
        self.push(Op::Del, Kind::Any, key, &[]);
    }
}

impl WriteBatch for RedisBatch {
    fn savepoint(&self) -> usize {
        self.keys.len()
    }

    fn rollback_to(&mut self, savepoint: usize) {
        if let Some(&start) = self.starts.get(savepoint) {
            self.args.truncate(start);
            self.plan.truncate(savepoint * 3);
            self.keys.truncate(savepoint);
            self.starts.truncate(savepoint);
        }
    }

    fn park(&mut self, letter: DeadLetter) {
        // A DeadLetter has string keys and plain values only: encoding cannot fail.
        let json = serde_json::to_string(&letter).unwrap_or_default();
        let id = letter.event_id.to_string();
        self.push(Op::Hset, Kind::Hash, DEAD_LETTER_KEY, &[&id, &json]);
    }

    fn unpark(&mut self, event_id: uuid::Uuid) {
        self.push(
            Op::Hdel,
            Kind::Hash,
            DEAD_LETTER_KEY,
            &[&event_id.to_string()],
        );
    }

    fn is_empty(&self) -> bool {
        RedisBatch::is_empty(self) && self.lookups.is_unchanged()
    }

    fn lookups(&self) -> &Lookups {
        &self.lookups
    }

    fn lookups_mut(&mut self) -> &mut Lookups {
        &mut self.lookups
    }
}

fn kind_of(byte: u8) -> Kind {
    match byte {
        1 => Kind::Hash,
        2 => Kind::Zset,
        3 => Kind::List,
        4 => Kind::Set,
        5 => Kind::String,
        6 => Kind::Known,
        _ => Kind::Any,
    }
}

/// `ToRedisArgs` as an object, so one helper takes arguments of several types.
trait ToRedisArgsDyn {
    fn append_to(&self, out: &mut Args);
}

impl<T: ToRedisArgs> ToRedisArgsDyn for T {
    fn append_to(&self, out: &mut Args) {
        self.write_redis_args(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_forgets_commands_after_the_savepoint() {
        let mut batch = RedisBatch::new("{ns:p:1}:".into());
        batch.hincrby("a", "n", 1);
        let mark = batch.savepoint();
        batch.push_recent("r", "x", 10);
        batch.del("b");
        assert_eq!(batch.len(), 4);
        batch.rollback_to(mark);
        let (keys, plan, args) = batch.into_parts();
        assert_eq!(keys, ["{ns:p:1}:a"]);
        assert_eq!(plan, [Op::Hincrby as u8, Kind::Hash as u8, 2]);
        let args: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8(a.to_vec()).unwrap())
            .collect();
        assert_eq!(args, ["n", "1"]);
    }

    #[test]
    fn known_key_types_skip_the_redis_check_and_catch_mismatches() {
        let mut known = std::collections::HashMap::new();
        let mut first = RedisBatch::new("{ns:p:1}:".into());
        first.hincrby("a", "n", 1);
        first.hincrby("a", "n", 1);
        first.resolve_types(&mut known).unwrap();
        assert!(first.needs_type_checks());
        let (_, plan, _) = first.into_parts();
        // First sight is checked in Redis; the second use of the key is not.
        assert_eq!(plan[1], Kind::Hash as u8);
        assert_eq!(plan[4], Kind::Known as u8);
        let mut second = RedisBatch::new("{ns:p:1}:".into());
        second.zadd("a", "m", 1.0);
        assert!(matches!(
            second.resolve_types(&mut known),
            Err(crate::Error::WrongType { .. })
        ));
        let mut third = RedisBatch::new("{ns:p:1}:".into());
        third.del("a");
        third.zadd("a", "m", 1.0);
        third.resolve_types(&mut known).unwrap();
        assert_eq!(known["{ns:p:1}:a"], "zset");
        let mut fourth = RedisBatch::new("{ns:p:1}:".into());
        fourth.zadd("a", "n", 2.0);
        fourth.resolve_types(&mut known).unwrap();
        assert!(!fourth.needs_type_checks());
    }

    #[test]
    fn an_argument_that_expands_to_many_gets_its_count_as_text() {
        let mut batch = RedisBatch::new("{x}:".into());
        let many: Vec<(String, i64)> = (0..200).map(|i| (format!("f{i}"), i)).collect();
        batch.hset_multiple("h", &many);
        batch.sadd("s", vec!["m"; 300]);
        let (keys, plan, args) = batch.into_parts();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            plan,
            [
                Op::Hset as u8,
                Kind::Hash as u8,
                LONG,
                Op::Sadd as u8,
                Kind::Set as u8,
                LONG
            ]
        );
        let args: Vec<&[u8]> = args.iter().collect();
        assert_eq!(args[0], b"400");
        assert_eq!(args[1], b"f0");
        assert_eq!(args[401], b"300");
        assert_eq!(args.len(), 1 + 400 + 1 + 300);
    }

    proptest::proptest! {
        /// Rolling back to a savepoint leaves exactly the batch built without the commands
        /// after it.
        #[test]
        fn rollback_equals_never_adding(
            before in proptest::collection::vec((0u8..4, "[a-c]{1,2}", -5i64..5), 0..8),
            after in proptest::collection::vec((0u8..4, "[a-c]{1,2}", -5i64..5), 0..8),
        ) {
            fn add(batch: &mut RedisBatch, (op, key, n): &(u8, String, i64)) {
                match op {
                    0 => batch.hincrby(key, "f", *n),
                    1 => batch.zadd(key, "m", *n as f64),
                    2 => batch.push_recent(key, *n, 3),
                    _ => batch.del(key),
                }
            }
            let mut full = RedisBatch::new("{x}:".into());
            let mut plain = RedisBatch::new("{x}:".into());
            for c in &before {
                add(&mut full, c);
                add(&mut plain, c);
            }
            let mark = full.savepoint();
            for c in &after {
                add(&mut full, c);
            }
            full.rollback_to(mark);
            proptest::prop_assert_eq!(full.into_parts(), plain.into_parts());
        }
    }
}
