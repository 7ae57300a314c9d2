//! The Lua scripts that make every Redis read-model write atomic and fenced.
//!
//! Each script touches keys of one hash tag only (the projection's, or one generation's), so
//! it runs unchanged on Redis Cluster. Replies are arrays whose first element says what
//! happened: `ok`, `fenced <stored>`, `checkpoint <stored>`, `wrongtype <key> <type> <want>`.

use std::sync::LazyLock;

use redis::Script;

/// Refuses a fence lower than the stored one. Shared prelude of every script.
macro_rules! fence_check {
    () => {
        "local stored_fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
         if stored_fence > tonumber(ARGV[1]) then return {'fenced', tostring(stored_fence)} end
        "
    };
}

/// KEYS: projection meta. ARGV: fence, store id. Claims the projection, records the store
/// when none is, returns its generations and the store recorded before.
pub(crate) static CLAIM_PROJECTION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        fence_check!(),
        "redis.call('HSET', KEYS[1], 'fence', ARGV[1])
         local v = redis.call('HMGET', KEYS[1], 'current', 'building', 'retired', 'store')
         if not v[4] then redis.call('HSET', KEYS[1], 'store', ARGV[2]) end
         return {'ok', v[1] or '', v[2] or '', v[3] or '', v[4] or ''}"
    ))
});

/// KEYS: projection meta. ARGV: fence, store id. Forgets every generation (returning them, to
/// be deleted) and records the store.
pub(crate) static RESET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        fence_check!(),
        "local v = redis.call('HMGET', KEYS[1], 'current', 'building', 'retired')
         redis.call('HDEL', KEYS[1], 'current', 'building', 'retired')
         redis.call('HSET', KEYS[1], 'store', ARGV[2], 'fence', ARGV[1])
         return {'ok', v[1] or '', v[2] or '', v[3] or ''}"
    ))
});

/// KEYS: projection meta. ARGV: fence. Returns the generation being built, allocating one.
pub(crate) static BEGIN_BUILD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        fence_check!(),
        "redis.call('HSET', KEYS[1], 'fence', ARGV[1])
         local building = redis.call('HGET', KEYS[1], 'building')
         if building then return {'ok', building} end
         local n = redis.call('HINCRBY', KEYS[1], 'next', 1)
         local floor = math.max(tonumber(redis.call('HGET', KEYS[1], 'current') or '0'),
                                tonumber(redis.call('HGET', KEYS[1], 'retired') or '0'))
         if n <= floor then
           n = floor + 1
           redis.call('HSET', KEYS[1], 'next', n)
         end
         redis.call('HSET', KEYS[1], 'building', n)
         return {'ok', tostring(n)}"
    ))
});

/// KEYS: projection meta. ARGV: fence, generation. Points readers at the generation.
pub(crate) static SWITCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        fence_check!(),
        "local old = redis.call('HGET', KEYS[1], 'current')
         redis.call('HSET', KEYS[1], 'current', ARGV[2], 'fence', ARGV[1])
         if redis.call('HGET', KEYS[1], 'building') == ARGV[2] then
           redis.call('HDEL', KEYS[1], 'building')
         end
         if old and old ~= ARGV[2] then redis.call('HSET', KEYS[1], 'retired', old) end
         return {'ok', old or ''}"
    ))
});

/// KEYS: projection meta. ARGV: generation. Forgets a retired generation once dropped.
pub(crate) static FORGET_RETIRED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('HGET', KEYS[1], 'retired') == ARGV[1] then
           redis.call('HDEL', KEYS[1], 'retired')
         end
         return {'ok'}",
    )
});

/// KEYS: generation meta. ARGV: fence. Claims a generation, returns its checkpoint.
pub(crate) static CLAIM_GENERATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        fence_check!(),
        "redis.call('HSET', KEYS[1], 'fence', ARGV[1])
         return {'ok', redis.call('HGET', KEYS[1], 'checkpoint') or ''}"
    ))
});

/// KEYS: generation meta, then one key per command. ARGV: fence, expected checkpoint, new
/// checkpoint, check types (`1`/`0`), the plan (three bytes per command: its number in
/// `names`, its key's type as a number in `kinds` (`0`: any, `6`: known to the writer
/// already), its argument count (`255`: given as text before the arguments)), then every
/// command's arguments.
///
/// Checks the fence and the checkpoint, then (when asked) the type of every key before
/// writing anything (a Redis script does not roll back a command that fails half-way), then
/// runs the commands and stores the checkpoint and fence. One plan string instead of a
/// name, type and count per command keeps the arguments Redis turns into Lua strings few.
pub(crate) static COMMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        fence_check!(),
        "local cp = redis.call('HGET', KEYS[1], 'checkpoint') or ''
         if cp ~= ARGV[2] then return {'checkpoint', cp} end
         local plan = ARGV[5] or ''
         local n = #plan
         local byte = string.byte
         if ARGV[4] == '1' then
           local kinds = {'hash', 'zset', 'list', 'set', 'string'}
           local seen = {}
           local k = 2
           for c = 2, n, 3 do
             local kind = byte(plan, c)
             if kind == 0 then
               seen[KEYS[k]] = '*'
             elseif kind <= 5 then
               local key, want = KEYS[k], kinds[kind]
               local known = seen[key]
               if known == nil then
                 local t = redis.call('TYPE', key)['ok']
                 if t ~= 'none' and t ~= want then return {'wrongtype', key, t, want} end
                 seen[key] = want
               elseif known == '*' then
                 seen[key] = want
               elseif known ~= want then
                 return {'wrongtype', key, known, want}
               end
             end
             k = k + 1
           end
         end
         local names = {'HSET', 'HINCRBY', 'HDEL', 'ZADD', 'ZINCRBY', 'ZREM', 'LPUSH', 'LTRIM',
                        'RPUSH', 'INCRBY', 'SET', 'SADD', 'SREM', 'DEL'}
         local call = redis.call
         local i, k = 6, 2
         for c = 1, n, 3 do
           local op, _, argc = byte(plan, c, c + 2)
           local name, key = names[op], KEYS[k]
           if argc == 2 then
             call(name, key, ARGV[i], ARGV[i + 1])
           elseif argc == 1 then
             call(name, key, ARGV[i])
           elseif argc == 0 then
             call(name, key)
           else
             if argc == 255 then
               argc = tonumber(ARGV[i])
               i = i + 1
             end
             call(name, key, unpack(ARGV, i, i + argc - 1))
           end
           i, k = i + argc, k + 1
         end
         redis.call('HSET', KEYS[1], 'checkpoint', ARGV[3], 'fence', ARGV[1])
         return {'ok'}"
    ))
});

/// KEYS: any key of the generation (routes the call to its node). ARGV: cursor, pattern,
/// count. One SCAN step over that node.
pub(crate) static SCAN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
         return r",
    )
});
