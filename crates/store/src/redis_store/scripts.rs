//! The Lua scripts behind every write. Each runs atomically on the server: no other command
//! runs between its check and its write, and Redis 7 replicates (and appends to the AOF) its
//! effects as one `MULTI`/`EXEC`, so a replica or a restart never sees half of it.
//!
//! Times are the server's (`TIME`, unix milliseconds), so lease expiry never depends on the
//! clocks of the nodes. Numbers that leave a script are decimal strings: Lua 5.1 numbers are
//! doubles, exact for integers below 2^53, and `%d` formats them without an exponent.
//!
//! Every key a script touches is passed in `KEYS` (the prefix is the client's business).

use redis::Script;

/// Shared head of every script that needs the time.
macro_rules! with_now {
    ($body:expr) => {
        concat!(
            "local t = redis.call('TIME')\n",
            "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n",
            $body
        )
    };
}

/// Whether the lease hash in `KEYS[n]` is the current, unexpired grant to `owner`/`token`:
/// defines `is_current(key, owner, token)`.
macro_rules! with_is_current {
    ($body:expr) => {
        with_now!(concat!(
            "local function is_current(key, owner, token)\n",
            "  local l = redis.call('HMGET', key, 'owner', 'token', 'expires')\n",
            "  local exp = tonumber(l[3])\n",
            "  return l[1] == owner and l[2] == token and exp ~= nil and exp > now\n",
            "end\n",
            $body
        ))
    };
}

/// `KEYS`: object, index. `ARGV`: value, storage key, channel, message.
/// Sets the object, indexes it, publishes the change. Returns 1.
const PUT: &str = "\
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// `KEYS`: object, index, lease. `ARGV`: value, storage key, channel, message, owner, token.
/// Like [`PUT`] if the lease is the current grant; returns 1, or 0 (nothing written) if not.
const PUT_FENCED: &str = with_is_current!(
    "\
if not is_current(KEYS[3], ARGV[5], ARGV[6]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"
);

/// `KEYS`: object, index. `ARGV`: storage key, channel, message.
/// Deletes and unindexes the object; publishes only if it existed. Returns 1 or 0.
const DELETE: &str = "\
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if n == 1 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return n
";

/// `KEYS`: lease, token counter, lock-name set. `ARGV`: owner, ttl (ms), lock name.
///
/// If the lease is held and unexpired, returns `{0, owner, token, expires}` of the holder.
/// Otherwise grants it: the new token is `max(last token + 1, now)`, stored in the counter
/// (never deleted), and the lease hash gets owner, token, expires = now + ttl, and expires
/// itself at that moment. Returns `{1, owner, token, expires}`.
///
/// The `now` floor keeps tokens growing even if the counter was lost (a restart without
/// persistence, a failover to a replica that missed the last writes): every later grant gets
/// at least the server's current time in milliseconds, larger than any token granted earlier
/// at the rate of at most one grant per name per millisecond.
const TRY_LOCK: &str = with_now!(
    "\
local l = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires')
local exp = tonumber(l[3])
if l[1] and l[2] and exp and exp > now then
  return {0, l[1], l[2], l[3]}
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local token = string.format('%d', math.max(last + 1, now))
local expires = string.format('%d', now + tonumber(ARGV[2]))
redis.call('SET', KEYS[2], token)
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token, 'expires', expires)
redis.call('PEXPIREAT', KEYS[1], expires)
return {1, ARGV[1], token, expires}
"
);

/// `KEYS`: lease. `ARGV`: owner, token, ttl (ms).
/// If the lease is the current grant, moves its expiry to now + ttl and returns it (a decimal
/// string); otherwise returns 0 and changes nothing.
const RENEW: &str = with_is_current!(
    "\
if not is_current(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
local expires = string.format('%d', now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'expires', expires)
redis.call('PEXPIREAT', KEYS[1], expires)
return expires
"
);

/// `KEYS`: lease. `ARGV`: owner, token.
/// Deletes the lease if it is this grant (expired or not); another grant is left alone.
/// Returns 1 if deleted, else 0.
const UNLOCK: &str = "\
local l = redis.call('HMGET', KEYS[1], 'owner', 'token')
if l[1] == ARGV[1] and l[2] == ARGV[2] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The scripts, hashed once (`EVALSHA`, falling back to `EVAL` after a server restart).
pub(super) struct Scripts {
    pub put: Script,
    pub put_fenced: Script,
    pub delete: Script,
    pub try_lock: Script,
    pub renew: Script,
    pub unlock: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            put: Script::new(PUT),
            put_fenced: Script::new(PUT_FENCED),
            delete: Script::new(DELETE),
            try_lock: Script::new(TRY_LOCK),
            renew: Script::new(RENEW),
            unlock: Script::new(UNLOCK),
        }
    }
}
