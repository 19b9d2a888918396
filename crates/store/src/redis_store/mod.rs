//! The Redis backend: any number of nodes sharing one Redis primary.
//!
//! ```text
//! <prefix>obj:<key>      string: the object's bytes
//! <prefix>index          sorted set, all scores 0: every object key (for `list`, by ZRANGEBYLEX)
//! <prefix>lease:<name>   hash {owner, token, expires (server unix ms)}, expiring at `expires`;
//!                        deleted by `unlock`
//! <prefix>token:<name>   string: the last token granted for <name>; never deleted
//! <prefix>locknames      set: every lock name ever granted (for `locks`)
//! <prefix>changes        pub/sub channel of change events (see `events`)
//! ```
//!
//! The prefix defaults to [`RedisStore::DEFAULT_PREFIX`]; several fleetgate clusters can share
//! a Redis database with different prefixes, as long as no prefix starts with another.
//!
//! **Atomicity.** Every write is one Lua script (see `scripts`): object + index + change event
//! in one step; `put_fenced` checks the lease (owner, token, unexpired by the server's clock)
//! and writes in the same script; `try_lock`, `renew` and `unlock` are compare-and-set scripts
//! on the lease hash. A call that times out or is cancelled has either run completely on the
//! server or not at all.
//!
//! **Tokens** come from `<prefix>token:<name>`, raised on each grant to
//! `max(last + 1, server time in ms)`, so they keep growing even if Redis loses the counter.
//!
//! **Timeouts.** Every call is bounded by [`RedisStore::DEFAULT_TIMEOUT`] (or
//! [`RedisStoreBuilder::timeout`]) and reports [`Error::Unavailable`] when Redis cannot be
//! reached, is frozen, or answers too slowly. The command connection
//! (`redis::aio::ConnectionManager`) reconnects by itself; the change subscription has its own
//! connection and task (see `events`).
//!
//! # What fleetgate requires of a Redis deployment
//!
//! - **Redis 5 or later** (scripts that call `TIME` and then write rely on effect replication,
//!   the only mode since Redis 7). Tested with 7.0.
//! - **One primary**, addressed directly by the URL (`redis://[:password@]host:port[/db]`, or
//!   `rediss://` for TLS, the server's certificate verified against
//!   [`RedisStoreBuilder::ca_root_pem`] or the system's roots).
//!   Redis Cluster is not supported: the client is not cluster-aware and the keys are not
//!   hash-tagged into one slot. Replicas with Sentinel failover work only as well as
//!   asynchronous replication: a failover can lose the last acknowledged writes, including a
//!   lease (the token floor above keeps fencing tokens growing across that).
//! - **Persistence**: `appendonly yes` with `appendfsync always` (or `everysec`, accepting that
//!   a crash loses up to a second of writes). Without it a Redis restart loses every certificate,
//!   account and lease; nodes keep serving from their local caches, but the cluster must
//!   order everything again.
//! - **No eviction**: `maxmemory-policy noeviction` (the default). An evicting policy would
//!   silently drop certificates and leases.
//! - Clocks: lease expiry is decided by the Redis server's clock; the nodes' clocks must agree
//!   with it to well under the lease TTL (NTP), because a node stops trusting its lease when
//!   its own clock passes `expires`.

mod events;
mod scripts;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use self::events::Subscriber;
use self::scripts::Scripts;
use crate::{
    Change, Error, FencingToken, Lease, LockHolder, LockName, Result, Storage, StorageKey,
};

/// Buffered change events per subscriber; a slower subscriber gets `Lagged` and must resync.
const EVENT_CAPACITY: usize = 1024;
/// Reconnect attempts of the command connection per outage episode before the pending calls
/// fail; the next call starts a new episode. Delays grow from 100 ms, capped at
/// [`RECONNECT_MAX_DELAY`].
const RECONNECT_RETRIES: usize = 8;
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// How to connect: see [`RedisStore::builder`].
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    ca_root_pem: Option<String>,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// Prefix of every key and of the change channel (default [`RedisStore::DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// For a `rediss://` URL (TLS, the server's certificate verified for the URL's host): the
    /// PEM roots it must chain to (default: the system's roots).
    pub fn ca_root_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_root_pem = Some(pem.into());
        self
    }

    /// Bound on every call (default [`RedisStore::DEFAULT_TIMEOUT`]); also the connect,
    /// response and subscription health-check timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connect, check that Redis answers, and wait until change events are subscribed, all
    /// within the timeout. [`Error::Unavailable`] if Redis cannot be reached (or the URL is
    /// invalid).
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns the subscriber task).
    pub async fn connect(self) -> Result<RedisStore> {
        let store = self.connect_lazy()?;
        let inner = &store.inner;
        let ready = async {
            let mut conn = inner.conn.clone();
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            let mut subscribed = inner.subscribed.clone();
            // An error means the subscriber task ended, which it never does while we hold it.
            let _ = subscribed.wait_for(|s| *s).await;
            Ok(())
        };
        inner
            .bounded(format!("connect to Redis at {}", inner.addr), ready)
            .await?;
        Ok(store)
    }

    /// A store that connects on first use and subscribes in the background: for starting while
    /// Redis is down. Fails only on an invalid URL ([`Error::Unavailable`]). Change events from
    /// other nodes arrive once the subscription is up; this store's own writes are always
    /// reported.
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns the subscriber task).
    pub fn connect_lazy(self) -> Result<RedisStore> {
        let invalid = |e: redis::RedisError| Error::Unavailable {
            what: "invalid Redis URL".to_string(),
            source: Some(Box::new(e)),
        };
        let client = match &self.ca_root_pem {
            Some(pem) if self.url.starts_with("rediss://") => redis::Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone().into_bytes()),
                },
            ),
            _ => redis::Client::open(self.url.as_str()),
        }
        .map_err(invalid)?;
        let addr = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| {
                Error::Unavailable {
                    what: format!("configure the Redis connection to {addr}"),
                    source: Some(Box::new(e)),
                }
            })?;
        let keys = Keys {
            prefix: self.prefix,
        };
        let origin = format!("{:016x}", fastrand::u64(..));
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (subscribed_tx, subscribed) = watch::channel(false);
        let subscriber = tokio::spawn(
            Subscriber {
                client,
                channel: keys.channel(),
                origin: origin.clone(),
                events: events.clone(),
                subscribed: subscribed_tx,
                timeout: self.timeout,
            }
            .run(),
        );
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                keys,
                origin,
                events,
                subscribed,
                subscriber,
                scripts: Scripts::new(),
                timeout: self.timeout,
                addr,
            }),
        })
    }
}

/// Storage in Redis (see the module docs for the layout and what Redis must provide).
/// Cheap to clone; clones share connections and the change channel.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    keys: Keys,
    /// Names this store in its change messages.
    origin: String,
    events: broadcast::Sender<Change>,
    subscribed: watch::Receiver<bool>,
    subscriber: JoinHandle<()>,
    scripts: Scripts,
    timeout: Duration,
    /// `host:port`, for messages (never the password).
    addr: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.inner.addr)
            .field("prefix", &self.inner.keys.prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The key prefix unless [`RedisStoreBuilder::prefix`] says otherwise.
    pub const DEFAULT_PREFIX: &str = "fleetgate:";
    /// The bound on every call unless [`RedisStoreBuilder::timeout`] says otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Options for connecting to `url` (`redis://[:password@]host:port[/db]`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: Self::DEFAULT_PREFIX.to_string(),
            timeout: Self::DEFAULT_TIMEOUT,
            ca_root_pem: None,
        }
    }

    /// Connect to `url` with key prefix `prefix` and the default timeout; see
    /// [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore> {
        Self::builder(url).prefix(prefix).connect().await
    }

    /// Whether the change subscription is up right now (for health reports).
    pub fn events_connected(&self) -> bool {
        *self.inner.subscribed.borrow()
    }

    fn notify(&self, change: Change) {
        // An error only means nobody is subscribed.
        let _ = self.inner.events.send(change);
    }
}

impl Inner {
    /// Run `call` bounded by the timeout, mapping failures to [`Error`]s about `what`.
    async fn bounded<T>(
        &self,
        what: String,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(redis_error(what, e)),
            Err(_) => Err(Error::Unavailable {
                what: format!(
                    "{what}: no answer from Redis at {} within {:?}",
                    self.addr, self.timeout
                ),
                source: None,
            }),
        }
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// Data errors (a key of the wrong type, a reply we cannot parse, a failing script) are
/// [`Error::Corrupt`]: retrying will not help. Everything else (I/O, refused or dropped
/// connections, a server loading, read-only or out of memory) is [`Error::Unavailable`].
fn redis_error(what: String, e: RedisError) -> Error {
    if is_data_error(&e) {
        Error::Corrupt {
            key: what,
            detail: e.to_string(),
        }
    } else {
        Error::Unavailable {
            what,
            source: Some(Box::new(e)),
        }
    }
}

fn is_data_error(e: &RedisError) -> bool {
    if matches!(e.kind(), ErrorKind::UnexpectedReturnType | ErrorKind::Parse) {
        return true;
    }
    // Also inside pipelines. A failing script is `ERR user_script:<line>: ...`; errors of the
    // commands it calls keep their own code (`READONLY ... script: ...` stays unavailable).
    e.clone().into_server_errors().is_some_and(|errors| {
        errors.iter().any(|(_, s)| {
            s.code() == "WRONGTYPE"
                || (s.code() == "ERR" && s.details().is_some_and(|d| d.starts_with("user_script")))
        })
    })
}

/// The key layout (see the module docs).
#[derive(Debug)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn object(&self, key: &StorageKey) -> String {
        format!("{}obj:{key}", self.prefix)
    }

    fn index(&self) -> String {
        format!("{}index", self.prefix)
    }

    fn lease(&self, name: &LockName) -> String {
        format!("{}lease:{name}", self.prefix)
    }

    fn token(&self, name: &LockName) -> String {
        format!("{}token:{name}", self.prefix)
    }

    fn lock_names(&self) -> String {
        format!("{}locknames", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }
}

#[async_trait::async_trait]
impl Storage for RedisStore {
    async fn put(&self, key: &StorageKey, value: &[u8]) -> Result<()> {
        let inner = &self.inner;
        let change = Change::Put(key.clone());
        let mut conn = inner.conn();
        let mut inv = inner.scripts.put.prepare_invoke();
        inv.key(inner.keys.object(key))
            .key(inner.keys.index())
            .arg(value)
            .arg(key.as_str())
            .arg(inner.keys.channel())
            .arg(events::encode(&inner.origin, &change));
        let call = inv.invoke_async::<i64>(&mut conn);
        inner.bounded(format!("put {key}"), call).await?;
        self.notify(change);
        Ok(())
    }

    async fn put_fenced(&self, key: &StorageKey, value: &[u8], lease: &Lease) -> Result<()> {
        let inner = &self.inner;
        let change = Change::Put(key.clone());
        let mut conn = inner.conn();
        let mut inv = inner.scripts.put_fenced.prepare_invoke();
        inv.key(inner.keys.object(key))
            .key(inner.keys.index())
            .key(inner.keys.lease(&lease.name))
            .arg(value)
            .arg(key.as_str())
            .arg(inner.keys.channel())
            .arg(events::encode(&inner.origin, &change))
            .arg(lease.owner.as_str())
            .arg(lease.token.0.to_string());
        let call = inv.invoke_async::<i64>(&mut conn);
        let written = inner
            .bounded(format!("put {key} under lock {}", lease.name), call)
            .await?;
        if written != 1 {
            return Err(lease_lost(lease));
        }
        self.notify(change);
        Ok(())
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>> {
        let inner = &self.inner;
        let mut conn = inner.conn();
        let mut cmd = redis::cmd("GET");
        cmd.arg(inner.keys.object(key));
        let call = cmd.query_async::<Option<Vec<u8>>>(&mut conn);
        inner.bounded(format!("get {key}"), call).await
    }

    async fn delete(&self, key: &StorageKey) -> Result<()> {
        let inner = &self.inner;
        let change = Change::Deleted(key.clone());
        let mut conn = inner.conn();
        let mut inv = inner.scripts.delete.prepare_invoke();
        inv.key(inner.keys.object(key))
            .key(inner.keys.index())
            .arg(key.as_str())
            .arg(inner.keys.channel())
            .arg(events::encode(&inner.origin, &change));
        let call = inv.invoke_async::<i64>(&mut conn);
        let removed = inner.bounded(format!("delete {key}"), call).await?;
        if removed == 1 {
            self.notify(change);
        }
        Ok(())
    }

    async fn list(&self, prefix: &StorageKey) -> Result<Vec<StorageKey>> {
        let inner = &self.inner;
        let mut conn = inner.conn();
        // Members starting with "<prefix>/" are exactly those in ["<prefix>/", "<prefix>0"):
        // '0' is the byte after '/'.
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGEBYLEX")
            .arg(inner.keys.index())
            .arg(format!("[{prefix}/"))
            .arg(format!("({prefix}0"))
            .cmd("ZSCORE")
            .arg(inner.keys.index())
            .arg(prefix.as_str());
        let call = pipe.query_async::<(Vec<String>, Option<String>)>(&mut conn);
        let (below, itself) = inner.bounded(format!("list {prefix}"), call).await?;
        let mut out = Vec::with_capacity(below.len() + 1);
        if itself.is_some() {
            out.push(prefix.clone());
        }
        for member in below {
            match StorageKey::new(member) {
                Ok(key) => out.push(key),
                Err(e) => {
                    let index = inner.keys.index();
                    tracing::warn!(error = %e, %index, "skipping an invalid key in the index");
                }
            }
        }
        Ok(out)
    }

    async fn try_lock(
        &self,
        name: &LockName,
        owner: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lease, LockHolder>> {
        let inner = &self.inner;
        let mut conn = inner.conn();
        let mut inv = inner.scripts.try_lock.prepare_invoke();
        inv.key(inner.keys.lease(name))
            .key(inner.keys.token(name))
            .key(inner.keys.lock_names())
            .arg(owner)
            .arg(millis(ttl))
            .arg(name.as_str());
        let call = inv.invoke_async::<(i64, String, u64, u64)>(&mut conn);
        let (granted, owner, token, expires) = inner.bounded(format!("lock {name}"), call).await?;
        let (name, token, expires) = (name.clone(), FencingToken(token), from_unix_millis(expires));
        Ok(if granted == 1 {
            Ok(Lease {
                name,
                owner,
                token,
                expires,
            })
        } else {
            Err(LockHolder {
                name,
                owner,
                token,
                expires,
            })
        })
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let inner = &self.inner;
        let mut conn = inner.conn();
        let mut inv = inner.scripts.renew.prepare_invoke();
        inv.key(inner.keys.lease(&lease.name))
            .arg(lease.owner.as_str())
            .arg(lease.token.0.to_string())
            .arg(millis(ttl));
        let call = inv.invoke_async::<u64>(&mut conn);
        let expires = inner
            .bounded(format!("renew lock {}", lease.name), call)
            .await?;
        if expires == 0 {
            return Err(lease_lost(lease));
        }
        Ok(Lease {
            expires: from_unix_millis(expires),
            ..lease.clone()
        })
    }

    async fn unlock(&self, lease: &Lease) -> Result<()> {
        let inner = &self.inner;
        let mut conn = inner.conn();
        let mut inv = inner.scripts.unlock.prepare_invoke();
        inv.key(inner.keys.lease(&lease.name))
            .arg(lease.owner.as_str())
            .arg(lease.token.0.to_string());
        let call = inv.invoke_async::<i64>(&mut conn);
        inner
            .bounded(format!("unlock {}", lease.name), call)
            .await?;
        Ok(())
    }

    async fn locks(&self) -> Result<Vec<LockHolder>> {
        let inner = &self.inner;
        let mut conn = inner.conn();
        let what = || "list locks".to_string();
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(inner.keys.lock_names());
        let names: Vec<String> = inner.bounded(what(), cmd.query_async(&mut conn)).await?;
        // Only names that are valid lock names (all we ever add) are looked up.
        let names: Vec<LockName> = names
            .into_iter()
            .filter_map(|n| {
                let name = LockName::new(&n);
                (name.as_str() == n).then_some(name)
            })
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("HMGET")
                .arg(inner.keys.lease(name))
                .arg(&["owner", "token", "expires"]);
        }
        type Row = (Option<String>, Option<u64>, Option<u64>);
        let rows: Vec<Row> = inner.bounded(what(), pipe.query_async(&mut conn)).await?;
        Ok(names
            .into_iter()
            .zip(rows)
            .filter_map(|(name, row)| match row {
                // A lease hash exists only until it expires (PEXPIREAT) or is released.
                (Some(owner), Some(token), Some(expires)) => Some(LockHolder {
                    name,
                    owner,
                    token: FencingToken(token),
                    expires: from_unix_millis(expires),
                }),
                _ => None,
            })
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.events.subscribe()
    }
}

fn lease_lost(lease: &Lease) -> Error {
    Error::LeaseLost {
        name: lease.name.clone(),
        token: lease.token,
    }
}

/// Longer lease TTLs are cut to this, so that `now + ttl` stays exact in Lua (below 2^53 ms).
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A lease TTL in whole milliseconds (at most [`MAX_TTL`]), as a script argument.
fn millis(ttl: Duration) -> String {
    ttl.min(MAX_TTL).as_millis().to_string()
}

fn from_unix_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn server_error(resp: &str) -> RedisError {
        match redis::parse_redis_value(resp.as_bytes()).unwrap() {
            redis::Value::ServerError(e) => RedisError::from(e),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn data_errors_are_corrupt_and_the_rest_unavailable() {
        let corrupt = [
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "-ERR user_script:1: attempt to compare nil script: abc, on @user_script:1.\r\n",
        ];
        for resp in corrupt {
            let e = redis_error("x".into(), server_error(resp));
            assert!(matches!(e, Error::Corrupt { .. }), "{resp}: {e:?}");
        }
        let unavailable = [
            "-READONLY You can't write against a read only replica. script: abc\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            "-NOPERM this user has no permissions to run the 'evalsha' command\r\n",
        ];
        for resp in unavailable {
            let e = redis_error("x".into(), server_error(resp));
            assert!(matches!(e, Error::Unavailable { .. }), "{resp}: {e:?}");
            assert!(e.is_retryable());
        }
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            redis_error("x".into(), io),
            Error::Unavailable { .. }
        ));
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = Keys {
            prefix: RedisStore::DEFAULT_PREFIX.to_string(),
        };
        let (k, name) = (
            StorageKey::new("certs/a.json").unwrap(),
            LockName::new("cert-a"),
        );
        assert_eq!(keys.object(&k), "fleetgate:obj:certs/a.json");
        assert_eq!(keys.index(), "fleetgate:index");
        assert_eq!(keys.lease(&name), "fleetgate:lease:cert-a");
        assert_eq!(keys.token(&name), "fleetgate:token:cert-a");
        assert_eq!(keys.lock_names(), "fleetgate:locknames");
        assert_eq!(keys.channel(), "fleetgate:changes");
    }

    #[test]
    fn ttl_is_capped() {
        assert_eq!(millis(Duration::from_millis(1500)), "1500");
        assert_eq!(millis(Duration::MAX), MAX_TTL.as_millis().to_string());
    }
}
