//! The PostgreSQL backend: any number of nodes sharing one database.
//!
//! ```text
//! fleetgate_schema  (version, applied_at)                  migrations applied, see `schema`
//! fleetgate_objects (key, value bytea, updated_at)         one row per object
//! fleetgate_leases  (name, owner, token, expires_at, released)
//! ```
//!
//! **Every change is one SQL statement**, so it is atomic without a client-side transaction and
//! cancel-safe: the statement commits whole or not at all, whenever the caller stops waiting.
//!
//! - `try_lock` is one `INSERT .. ON CONFLICT (name) DO UPDATE .. WHERE released OR expired
//!   RETURNING token`, with `token = old token + 1`: the row lock taken by `ON CONFLICT` makes
//!   concurrent grants of one name queue up, and each sees the previous one's result (never
//!   check-then-upsert). A lease row is never deleted, so tokens keep growing after a release.
//! - `put_fenced` locks the lease row (`SELECT .. FOR UPDATE`, which rechecks the row's newest
//!   version) and writes the object from that row, in one statement: no lease, no write.
//! - `renew` and `unlock` are updates conditional on name, token, owner, not released and (for
//!   `renew`) not expired.
//!
//! **Time is the database's.** Expiry is decided only by `clock_timestamp()` on the server, so
//! nodes with skewed clocks agree on who holds a lock. The [`Lease::expires`] reported to the
//! caller is on the caller's clock: the time just before the request was sent plus the time left
//! as the server computed it, so it is never later than the server's expiry.
//!
//! **Change events**: every write and delete notifies `fleetgate_changes` in the same statement;
//! see `listener`. A store reports its own writes directly, other nodes' writes through its
//! listening connection, which reconnects with backoff; changes made while it is down are not
//! reported (the contract's periodic resync covers them).
//!
//! **Connections**: a pool ([`deadpool_postgres`], at most [`PostgresOptions::pool_size`]
//! connections) plus the listening connection. A connection that fails is replaced on its next
//! use; one whose call was abandoned (timeout, cancellation) is closed rather than reused, so a
//! late answer can never be read by the next caller. Every call, including taking a connection
//! from the pool and connecting, is bounded by [`PostgresOptions::timeout`]: a call that would
//! hang (database stopped, network gone) reports [`Error::Unavailable`].
//! [`PostgresStore::connect`] needs the database up; [`PostgresStore::connect_lazy`] does not
//! (a node can start, and serve from its local cache, while the database is down): it applies
//! the schema migrations on its first successful call.
//!
//! **TLS** with `sslmode=require` in the URL (rustls; the server's certificate is verified
//! against [`PostgresOptions::ca_root_pem`] or the system's roots); otherwise plain TCP (see
//! [`PostgresUrl`]).
//!
//! Unlike the dir backend, a key may be both an object and the prefix of another (`a` and
//! `a/b`); callers should still not rely on that.

mod listener;
mod schema;
mod tls;
mod url;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio::sync::{OnceCell, broadcast};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};

use crate::{
    Change, Error, FencingToken, Lease, LockHolder, LockName, Result, Storage, StorageKey,
};
use listener::{AbortOnDrop, Forward, Session};
use tls::DbTls;
pub use url::{InvalidPostgresUrl, PostgresUrl};

/// The default bound on every call ([`PostgresOptions::timeout`]).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default number of pooled connections per store ([`PostgresOptions::pool_size`]).
const DEFAULT_POOL_SIZE: usize = 8;
/// Buffered change events per subscriber; a slower subscriber gets `Lagged` and must resync.
const EVENT_CAPACITY: usize = 1024;
/// Leases longer than this are granted for this long (keeps the SQL interval in range).
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// TCP keepalive: probe an idle connection after this long, then every `KEEPALIVE_INTERVAL`,
/// and give up after `KEEPALIVE_RETRIES` unanswered probes (a peer that vanished).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// `try_lock` rounds when the lease changes between the upsert and reading its holder.
const TRY_LOCK_ROUNDS: usize = 8;

const SQL_GET: &str = "SELECT value FROM fleetgate_objects WHERE key = $1::text";

const SQL_PUT: &str = "
    WITH w AS (
        INSERT INTO fleetgate_objects (key, value, updated_at)
        VALUES ($1::text, $2::bytea, now())
        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at
        RETURNING key)
    SELECT pg_notify('fleetgate_changes', $3::text) FROM w";

const SQL_PUT_FENCED: &str = "
    WITH l AS (
        SELECT 1 FROM fleetgate_leases
        WHERE name = $4::text AND token = $5::bigint AND owner = $6::text
          AND NOT released AND expires_at > clock_timestamp()
        FOR UPDATE),
    w AS (
        INSERT INTO fleetgate_objects (key, value, updated_at)
        SELECT $1::text, $2::bytea, now() FROM l
        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at
        RETURNING key)
    SELECT pg_notify('fleetgate_changes', $3::text) FROM w";

const SQL_DELETE: &str = "
    WITH d AS (DELETE FROM fleetgate_objects WHERE key = $1::text RETURNING key)
    SELECT pg_notify('fleetgate_changes', $2::text) FROM d";

/// `$2` is the escaped prefix followed by `/%` (see [`like_prefix`]).
const SQL_LIST: &str =
    "SELECT key FROM fleetgate_objects WHERE key = $1::text OR key LIKE $2::text";

/// Grants the lease if the name is new, released or expired; returns nothing otherwise.
const SQL_TRY_LOCK: &str = "
    INSERT INTO fleetgate_leases AS l (name, owner, token, expires_at, released)
    VALUES ($1::text, $2::text, 1, clock_timestamp() + $3::float8 * interval '1 second', false)
    ON CONFLICT (name) DO UPDATE
        SET owner = EXCLUDED.owner,
            token = l.token + 1,
            expires_at = clock_timestamp() + $3::float8 * interval '1 second',
            released = false
        WHERE l.released OR l.expires_at <= clock_timestamp()
    RETURNING l.token, extract(epoch FROM l.expires_at - clock_timestamp())::float8";

const SQL_HOLDER: &str = "
    SELECT owner, token, extract(epoch FROM expires_at - clock_timestamp())::float8,
           NOT released AND expires_at > clock_timestamp()
    FROM fleetgate_leases WHERE name = $1::text";

const SQL_RENEW: &str = "
    UPDATE fleetgate_leases SET expires_at = clock_timestamp() + $4::float8 * interval '1 second'
    WHERE name = $1::text AND token = $2::bigint AND owner = $3::text
      AND NOT released AND expires_at > clock_timestamp()
    RETURNING extract(epoch FROM expires_at - clock_timestamp())::float8";

const SQL_UNLOCK: &str = "
    UPDATE fleetgate_leases SET released = true, expires_at = least(expires_at, clock_timestamp())
    WHERE name = $1::text AND token = $2::bigint AND owner = $3::text AND NOT released";

const SQL_LOCKS: &str = "
    SELECT name, owner, token, extract(epoch FROM expires_at - clock_timestamp())::float8
    FROM fleetgate_leases WHERE NOT released AND expires_at > clock_timestamp()";

/// Tuning for [`PostgresStore::connect_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The bound on every call, connecting included (default 10 s).
    pub timeout: Duration,
    /// The most pooled connections (default 8); the store also keeps one listening connection.
    pub pool_size: usize,
    /// With `sslmode=require`: the PEM roots the server's certificate must chain to (default:
    /// the system's roots).
    pub ca_root_pem: Option<String>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            timeout: DEFAULT_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            ca_root_pem: None,
        }
    }
}

impl PostgresOptions {
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size.max(1);
        self
    }

    /// See [`PostgresOptions::ca_root_pem`].
    pub fn ca_root_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_root_pem = Some(pem.into());
        self
    }
}

/// Storage in a PostgreSQL database shared by every node. Cheap to clone; clones share the
/// pool, the listener and the change channel. See the module docs.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: PostgresUrl,
    pool: Pool,
    timeout: Duration,
    forward: Forward,
    /// Set once this store has brought the schema up to date: by [`PostgresStore::connect_with`]
    /// before it returns, or by the first call that reaches the database of a store from
    /// [`PostgresStore::connect_lazy_with`]. Migrations run at most once per store.
    migrated: OnceCell<()>,
    // Stops listening when the last clone is dropped.
    _listener: AbortOnDrop<()>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("PostgresStore")
            .field("url", &self.inner.url)
            .field("timeout", &self.inner.timeout)
            .field("pool_size", &status.size)
            .field("pool_available", &status.available)
            .finish_non_exhaustive()
    }
}

impl From<InvalidPostgresUrl> for Error {
    /// An invalid URL is a configuration mistake: validate it with [`PostgresUrl`]'s `FromStr`
    /// when loading the configuration, so this never happens at connect time.
    fn from(e: InvalidPostgresUrl) -> Error {
        Error::Io {
            path: "postgres url".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        }
    }
}

impl PostgresStore {
    /// Connect with default [`PostgresOptions`]. See [`PostgresStore::connect_with`].
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let url: PostgresUrl = url.parse()?;
        PostgresStore::connect_with(&url, PostgresOptions::default()).await
    }

    /// Connect, apply pending schema migrations, and start listening for other nodes' changes.
    /// [`Error::Unavailable`] if the database does not answer within the options' timeout.
    pub async fn connect_with(
        url: &PostgresUrl,
        options: PostgresOptions,
    ) -> Result<PostgresStore> {
        let what = format!("connect to {url}");
        let parts = Parts::new(url, &options)?;
        let first_session = bounded(options.timeout, &what, async {
            migrate(&parts.pool, url, &what).await?;
            Session::open(&parts.config, &parts.tls, &parts.forward)
                .await
                .map_err(|e| pg_error(&what, e))
        })
        .await?;
        Ok(parts.into_store(Some(first_session), OnceCell::new_with(Some(()))))
    }

    /// A store that connects on first use, with default [`PostgresOptions`]. See
    /// [`PostgresStore::connect_lazy_with`].
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns the change listener).
    pub fn connect_lazy(url: &str) -> Result<PostgresStore> {
        let url: PostgresUrl = url.parse()?;
        PostgresStore::connect_lazy_with(&url, PostgresOptions::default())
    }

    /// A store that connects on first use: for starting while the database is down. Fails only
    /// on an invalid URL; nothing is sent to the database here.
    ///
    /// Pending schema migrations are applied by the first call that reaches the database (once
    /// per store; concurrent first calls wait for it); until then every call reports
    /// [`Error::Unavailable`], like any call while the database is down. The change listener
    /// connects in the background with backoff: other nodes' changes are reported once it is
    /// up (this store's own writes always are).
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns the change listener).
    pub fn connect_lazy_with(url: &PostgresUrl, options: PostgresOptions) -> Result<PostgresStore> {
        let parts = Parts::new(url, &options)?;
        Ok(parts.into_store(None, OnceCell::new()))
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        bounded(self.inner.timeout, what, fut).await
    }

    /// A pooled connection, once the schema is known to be current (see `Inner::migrated`).
    async fn checkout<'w>(&self, what: &'w str) -> Result<Checkout<'w>> {
        let inner = &self.inner;
        inner
            .migrated
            .get_or_try_init(|| migrate(&inner.pool, &inner.url, what))
            .await?;
        checkout(&inner.pool, what).await
    }

    fn payload(&self, change: &Change) -> String {
        listener::payload(&self.inner.forward.origin, change)
    }

    fn notify(&self, change: Change) {
        // An error only means nobody is subscribed.
        let _ = self.inner.forward.events.send(change);
    }
}

#[async_trait::async_trait]
impl Storage for PostgresStore {
    async fn put(&self, key: &StorageKey, value: &[u8]) -> Result<()> {
        let what = format!("put {key}");
        let payload = self.payload(&Change::Put(key.clone()));
        self.bounded(&what, async {
            let conn = self.checkout(&what).await?;
            conn.execute(SQL_PUT, &[&key.as_str(), &value, &payload])
                .await?;
            conn.finish();
            Ok(())
        })
        .await?;
        self.notify(Change::Put(key.clone()));
        Ok(())
    }

    async fn put_fenced(&self, key: &StorageKey, value: &[u8], lease: &Lease) -> Result<()> {
        let what = format!("put {key} under lock {}", lease.name);
        let payload = self.payload(&Change::Put(key.clone()));
        let Ok(token) = i64::try_from(lease.token.0) else {
            return Err(lease_lost(lease)); // Never granted by this backend.
        };
        let written = self
            .bounded(&what, async {
                let conn = self.checkout(&what).await?;
                let n = conn
                    .execute(
                        SQL_PUT_FENCED,
                        &[
                            &key.as_str(),
                            &value,
                            &payload,
                            &lease.name.as_str(),
                            &token,
                            &lease.owner,
                        ],
                    )
                    .await?;
                conn.finish();
                Ok(n)
            })
            .await?;
        if written == 0 {
            return Err(lease_lost(lease));
        }
        self.notify(Change::Put(key.clone()));
        Ok(())
    }

    async fn get(&self, key: &StorageKey) -> Result<Option<Vec<u8>>> {
        let what = format!("get {key}");
        self.bounded(&what, async {
            let conn = self.checkout(&what).await?;
            let row = conn.query_opt(SQL_GET, &[&key.as_str()]).await?;
            conn.finish();
            row.map(|row| column(&row, 0, &what)).transpose()
        })
        .await
    }

    async fn delete(&self, key: &StorageKey) -> Result<()> {
        let what = format!("delete {key}");
        let payload = self.payload(&Change::Deleted(key.clone()));
        let removed = self
            .bounded(&what, async {
                let conn = self.checkout(&what).await?;
                let n = conn.execute(SQL_DELETE, &[&key.as_str(), &payload]).await?;
                conn.finish();
                Ok(n)
            })
            .await?;
        if removed > 0 {
            self.notify(Change::Deleted(key.clone()));
        }
        Ok(())
    }

    async fn list(&self, prefix: &StorageKey) -> Result<Vec<StorageKey>> {
        let what = format!("list {prefix}");
        let pattern = like_prefix(prefix);
        self.bounded(&what, async {
            let conn = self.checkout(&what).await?;
            let rows = conn.query(SQL_LIST, &[&prefix.as_str(), &pattern]).await?;
            conn.finish();
            rows.iter()
                .map(|row| {
                    let key: String = column(row, 0, &what)?;
                    StorageKey::new(key).map_err(|e| Error::Corrupt {
                        key: e.key.clone(),
                        detail: format!("stored key is invalid: {}", e.reason),
                    })
                })
                .collect()
        })
        .await
    }

    async fn try_lock(
        &self,
        name: &LockName,
        owner: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lease, LockHolder>> {
        let what = format!("lock {name}");
        let secs = ttl.min(MAX_TTL).as_secs_f64();
        self.bounded(&what, async {
            let conn = self.checkout(&what).await?;
            for _ in 0..TRY_LOCK_ROUNDS {
                let sent = SystemTime::now();
                let granted = conn
                    .query_opt(SQL_TRY_LOCK, &[&name.as_str(), &owner, &secs])
                    .await?;
                if let Some(row) = granted {
                    let lease = Lease {
                        name: name.clone(),
                        owner: owner.to_string(),
                        token: token(&row, 0, &what)?,
                        expires: expiry(sent, column(&row, 1, &what)?),
                    };
                    conn.finish();
                    return Ok(Ok(lease));
                }
                let sent = SystemTime::now();
                let holder = conn.query_opt(SQL_HOLDER, &[&name.as_str()]).await?;
                if let Some(row) = holder
                    && column::<bool>(&row, 3, &what)?
                {
                    let holder = LockHolder {
                        name: name.clone(),
                        owner: column(&row, 0, &what)?,
                        token: token(&row, 1, &what)?,
                        expires: expiry(sent, column(&row, 2, &what)?),
                    };
                    conn.finish();
                    return Ok(Err(holder));
                }
                // Released or expired between the two statements: try to take it again.
            }
            conn.finish();
            Err(Error::Unavailable {
                what: format!("{what}: the lease kept changing hands"),
                source: None,
            })
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let what = format!("renew lock {}", lease.name);
        let Ok(token) = i64::try_from(lease.token.0) else {
            return Err(lease_lost(lease));
        };
        let secs = ttl.min(MAX_TTL).as_secs_f64();
        let remaining = self
            .bounded(&what, async {
                let conn = self.checkout(&what).await?;
                let sent = SystemTime::now();
                let row = conn
                    .query_opt(
                        SQL_RENEW,
                        &[&lease.name.as_str(), &token, &lease.owner, &secs],
                    )
                    .await?;
                conn.finish();
                row.map(|row| column::<f64>(&row, 0, &what).map(|r| (sent, r)))
                    .transpose()
            })
            .await?;
        let Some((sent, remaining)) = remaining else {
            return Err(lease_lost(lease));
        };
        Ok(Lease {
            expires: expiry(sent, remaining),
            ..lease.clone()
        })
    }

    async fn unlock(&self, lease: &Lease) -> Result<()> {
        let what = format!("unlock {}", lease.name);
        let Ok(token) = i64::try_from(lease.token.0) else {
            return Ok(()); // Never granted by this backend: nothing to release.
        };
        self.bounded(&what, async {
            let conn = self.checkout(&what).await?;
            // Releasing a lost lease changes nothing and succeeds.
            conn.execute(SQL_UNLOCK, &[&lease.name.as_str(), &token, &lease.owner])
                .await?;
            conn.finish();
            Ok(())
        })
        .await
    }

    async fn locks(&self) -> Result<Vec<LockHolder>> {
        let what = "list locks";
        self.bounded(what, async {
            let conn = self.checkout(what).await?;
            let sent = SystemTime::now();
            let rows = conn.query(SQL_LOCKS, &[]).await?;
            conn.finish();
            rows.iter()
                .map(|row| {
                    let name: String = column(row, 0, what)?;
                    Ok(LockHolder {
                        name: LockName::new(&name),
                        owner: column(row, 1, what)?,
                        token: token(row, 2, what)?,
                        expires: expiry(sent, column(row, 3, what)?),
                    })
                })
                .collect()
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.forward.events.subscribe()
    }
}

/// What both ways of connecting build before any I/O: the connection settings, the pool and
/// the change channel.
struct Parts {
    url: PostgresUrl,
    config: tokio_postgres::Config,
    tls: DbTls,
    pool: Pool,
    timeout: Duration,
    forward: Forward,
}

impl Parts {
    fn new(url: &PostgresUrl, options: &PostgresOptions) -> Result<Parts> {
        let config = tune(url.config.clone(), options.timeout);
        let tls = if url.tls {
            DbTls::verified(options.ca_root_pem.as_deref())?
        } else {
            DbTls::plain()
        };
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .build()
            // Only fails for pool timeouts without a runtime; we set no pool timeouts.
            .map_err(|e| Error::Unavailable {
                what: format!("connect to {url}: building the connection pool"),
                source: Some(Box::new(e)),
            })?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let forward = Forward {
            events,
            origin: format!("{:016x}", fastrand::u64(..)),
        };
        Ok(Parts {
            url: url.clone(),
            config,
            tls,
            pool,
            timeout: options.timeout,
            forward,
        })
    }

    /// The store, its listener supervising `first` or (without one) connecting in the
    /// background.
    fn into_store(self, first: Option<Session>, migrated: OnceCell<()>) -> PostgresStore {
        let listener = AbortOnDrop(tokio::spawn(listener::run(
            self.config,
            self.tls,
            self.forward.clone(),
            first,
            self.timeout,
        )));
        PostgresStore {
            inner: Arc::new(Inner {
                url: self.url,
                pool: self.pool,
                timeout: self.timeout,
                forward: self.forward,
                migrated,
                _listener: listener,
            }),
        }
    }
}

/// Bring the schema up to date on a pooled connection.
async fn migrate(pool: &Pool, url: &PostgresUrl, what: &str) -> Result<()> {
    let mut conn = checkout(pool, what).await?;
    let found = schema::migrate(conn.client_mut())
        .await
        .map_err(|e| pg_error(what, e))?;
    conn.finish();
    tracing::debug!(%url, found, latest = schema::latest(), "schema up to date");
    Ok(())
}

/// A pooled connection used by one call. Unless [`Checkout::finish`] is called, dropping it
/// closes the connection instead of returning it to the pool: a call that failed, timed out or
/// was cancelled may have left a request in flight whose answer must not reach the next caller.
struct Checkout<'w> {
    // `None` only inside `drop`.
    conn: Option<Object>,
    what: &'w str,
    finished: bool,
}

async fn checkout<'w>(pool: &Pool, what: &'w str) -> Result<Checkout<'w>> {
    let conn = pool.get().await.map_err(|e| pool_error(what, e))?;
    Ok(Checkout {
        conn: Some(conn),
        what,
        finished: false,
    })
}

impl Checkout<'_> {
    #[allow(clippy::expect_used)]
    fn conn(&self) -> &Object {
        // Invariant: `conn` is taken only in `drop`.
        self.conn.as_ref().expect("connection present until drop")
    }

    #[allow(clippy::expect_used)]
    fn client_mut(&mut self) -> &mut tokio_postgres::Client {
        // Invariant: `conn` is taken only in `drop`.
        self.conn.as_mut().expect("connection present until drop")
    }

    /// Return the connection to the pool.
    fn finish(mut self) {
        self.finished = true;
    }

    async fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement> {
        self.conn()
            .prepare_cached(sql)
            .await
            .map_err(|e| pg_error(self.what, e))
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let statement = self.prepare(sql).await?;
        self.conn()
            .execute(&statement, params)
            .await
            .map_err(|e| pg_error(self.what, e))
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let statement = self.prepare(sql).await?;
        self.conn()
            .query(&statement, params)
            .await
            .map_err(|e| pg_error(self.what, e))
    }

    async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let statement = self.prepare(sql).await?;
        self.conn()
            .query_opt(&statement, params)
            .await
            .map_err(|e| pg_error(self.what, e))
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if !self.finished
            && let Some(conn) = self.conn.take()
        {
            // Detached from the pool, the client is dropped and its connection closed.
            drop(Object::take(conn));
        }
    }
}

/// Run `fut`, or report [`Error::Unavailable`] once `timeout` has passed.
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(Error::Unavailable {
            what: format!("{what}: no answer from PostgreSQL within {timeout:?}"),
            source: None,
        }),
    }
}

/// The connection settings this backend relies on, where the URL leaves them open.
fn tune(mut config: tokio_postgres::Config, timeout: Duration) -> tokio_postgres::Config {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("fleetgate");
    }
    // libpq's default idle time (2 h) would leave a vanished peer undetected for hours.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
    }
    config
}

/// `prefix/%` for `LIKE`, with `\`, `%` and `_` in the prefix escaped (keys contain `_`).
fn like_prefix(prefix: &StorageKey) -> String {
    let mut pattern = String::with_capacity(prefix.as_str().len() + 4);
    for ch in prefix.as_str().chars() {
        if matches!(ch, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push_str("/%");
    pattern
}

/// The caller-clock expiry of a lease with `remaining_secs` left (as the server computed it)
/// when a request sent at `sent` was answered.
fn expiry(sent: SystemTime, remaining_secs: f64) -> SystemTime {
    // NaN (never from PostgreSQL) counts as nothing left; clamp before converting.
    let secs = if remaining_secs.is_nan() {
        0.0
    } else {
        remaining_secs.clamp(0.0, MAX_TTL.as_secs_f64())
    };
    let left = Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO);
    sent.checked_add(left).unwrap_or(sent)
}

fn column<'r, T: FromSql<'r>>(row: &'r Row, index: usize, what: &str) -> Result<T> {
    row.try_get(index).map_err(|e| Error::Corrupt {
        key: what.to_string(),
        detail: format!("column {index}: {e}"),
    })
}

fn token(row: &Row, index: usize, what: &str) -> Result<FencingToken> {
    let raw: i64 = column(row, index, what)?;
    u64::try_from(raw)
        .map(FencingToken)
        .map_err(|_| Error::Corrupt {
            key: what.to_string(),
            detail: format!("negative fencing token {raw}"),
        })
}

fn lease_lost(lease: &Lease) -> Error {
    Error::LeaseLost {
        name: lease.name.clone(),
        token: lease.token,
    }
}

/// SQLSTATE classes (and codes) that say "try again later": connection exceptions, rollbacks
/// (serialisation failures, deadlocks), insufficient resources, operator intervention (shutdown,
/// starting up, cancelled), system errors, a lock not available, a read-only standby.
fn is_transient(sqlstate: &str) -> bool {
    matches!(sqlstate.get(..2), Some("08" | "40" | "53" | "57" | "58"))
        || matches!(sqlstate, "55P03" | "25006")
}

/// Connection failures and transient server errors are [`Error::Unavailable`]; any other error
/// the server reports (permissions, a schema changed by hand) is [`Error::Io`].
fn pg_error(what: &str, e: tokio_postgres::Error) -> Error {
    match e.code() {
        Some(code) if !is_transient(code.code()) => Error::Io {
            path: format!("postgres: {what}"),
            source: io::Error::other(e),
        },
        _ => Error::Unavailable {
            what: format!("{what}: {e}"),
            source: Some(Box::new(e)),
        },
    }
}

fn pool_error(what: &str, e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => pg_error(what, e),
        other => Error::Unavailable {
            what: format!("{what}: connection pool: {other}"),
            source: Some(Box::new(other)),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn like_prefix_escapes_wildcards() {
        // Keys cannot hold `%` or a backslash today; `_` is common (sanitised names).
        let key = StorageKey::new("certs/a_b").unwrap();
        assert_eq!(like_prefix(&key), "certs/a\\_b/%");
    }

    #[test]
    fn expiry_is_clamped() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(expiry(t, -1.0), t);
        assert_eq!(expiry(t, f64::NAN), t);
        assert_eq!(expiry(t, 1.5), t + Duration::from_millis(1500));
        assert_eq!(expiry(t, 1e300), t + MAX_TTL);
    }

    #[test]
    fn transient_sqlstates() {
        for code in [
            "08006", "40001", "40P01", "53300", "57P01", "57P03", "55P03",
        ] {
            assert!(is_transient(code), "{code}");
        }
        for code in ["42P01", "42501", "23505", "22P02"] {
            assert!(!is_transient(code), "{code}");
        }
    }
}
