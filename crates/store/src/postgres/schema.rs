//! Versioned schema migrations, applied by every node when it connects.
//!
//! All of it runs in one transaction that first takes a transaction-scoped advisory lock, so
//! nodes starting at the same moment apply each migration exactly once, one after another, and a
//! node that dies half way leaves nothing behind. A migration is never edited once released:
//! changes are new entries at the end of [`MIGRATIONS`].

use tokio_postgres::Client;

/// The advisory lock key that serialises migrations ("fleetgat" in ASCII, as a bigint).
const MIGRATION_LOCK: i64 = 0x666c_6565_7467_6174;

/// `(version, SQL)`, in order. Versions start at 1 and have no gaps.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    // Keys use the "C" collation: byte order, and `LIKE 'prefix/%'` can use the primary key index.
    "CREATE TABLE fleetgate_objects (
         key        text COLLATE \"C\" PRIMARY KEY,
         value      bytea NOT NULL,
         updated_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE fleetgate_leases (
         name       text COLLATE \"C\" PRIMARY KEY,
         owner      text NOT NULL,
         token      bigint NOT NULL CHECK (token > 0),
         expires_at timestamptz NOT NULL,
         released   boolean NOT NULL DEFAULT false
     );",
)];

/// The newest schema version this build knows.
pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Bring the schema up to [`latest`]. Returns the version found before.
pub(super) async fn migrate(client: &mut Client) -> Result<i32, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1::bigint)",
        &[&MIGRATION_LOCK],
    )
    .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS fleetgate_schema (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::integer FROM fleetgate_schema",
            &[],
        )
        .await?
        .try_get(0)?;
    if found > latest() {
        tracing::warn!(
            found,
            known = latest(),
            "the database schema is newer than this build; running anyway (migrations only add)"
        );
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tracing::info!(version, "applying schema migration");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO fleetgate_schema (version) VALUES ($1::integer)",
            &[version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(found)
}
