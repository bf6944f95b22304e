//! The tables of the shared store, created and migrated by ftpd itself at start.
//!
//! `ftpd_schema` holds the version applied; [`MIGRATIONS`] are applied in order, all in one
//! transaction under an advisory lock, so that nodes starting together migrate once and a
//! failed migration leaves the previous version whole.

use tokio_postgres::Client;

/// The advisory lock taken while migrating ("ftpd" in ASCII): one node migrates, the others
/// wait for it and then find nothing left to do.
const MIGRATION_LOCK: i64 = 0x6674_7064;

/// Ordered migrations; entry `n` brings the schema from version `n` to `n + 1`. Never edit
/// one that has shipped: add the next.
///
/// Text columns are `COLLATE "C"` so that the order of paths is their byte order (a
/// directory's records are one range, `path/` up to `path0`, as in the embedded store).
/// Unsigned values (`size`, `file_ino`) keep their 64 bits in a `bigint` (two's complement).
pub const MIGRATIONS: &[&str] = &[
    // 1: records, journal, its seq counter, claims and their fences.
    r#"
    CREATE TABLE ftpd_records (
        username      text COLLATE "C" NOT NULL,
        path          text COLLATE "C" NOT NULL,
        declared      bigint CHECK (declared BETWEEN 0 AND 4294967295),
        size          bigint NOT NULL,
        crc           bigint NOT NULL CHECK (crc BETWEEN 0 AND 4294967295),
        state         text NOT NULL
                      CHECK (state IN ('partial', 'complete', 'verified', 'mismatch', 'untracked')),
        open          boolean NOT NULL,
        updated       timestamptz NOT NULL CHECK (isfinite(updated)),
        file_ino      bigint NOT NULL,
        file_mtime_ns bigint NOT NULL,
        PRIMARY KEY (username, path)
    );
    -- Every node looks for uploads a dead node left open, every lease_seconds.
    CREATE INDEX ftpd_records_open ON ftpd_records (username, path) WHERE open;
    CREATE TABLE ftpd_journal (
        seq   bigint PRIMARY KEY,
        time  timestamptz NOT NULL,
        event json NOT NULL
    );
    CREATE TABLE ftpd_counters (
        name  text PRIMARY KEY,
        value bigint NOT NULL
    );
    INSERT INTO ftpd_counters (name, value) VALUES ('journal.seq', 0);
    CREATE SEQUENCE ftpd_fence;
    CREATE TABLE ftpd_claims (
        username   text COLLATE "C" NOT NULL,
        path       text COLLATE "C" NOT NULL,
        holder     text NOT NULL,
        fence      bigint NOT NULL,
        expires_at timestamptz NOT NULL,
        PRIMARY KEY (username, path)
    );
    "#,
];

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{}", super::explain(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A newer ftpd migrated this database: this one does not know its tables.
    #[error("the database's schema is version {found}, newer than this ftpd knows ({known}); run the newer ftpd")]
    Newer { found: i32, known: usize },
}

/// Brings the schema to the last version of [`MIGRATIONS`]; returns the version found.
pub async fn migrate(client: &mut Client) -> Result<i32, SchemaError> {
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS ftpd_schema (
             one     boolean PRIMARY KEY DEFAULT true CHECK (one),
             version integer NOT NULL
         );
         INSERT INTO ftpd_schema (version) VALUES (0) ON CONFLICT (one) DO NOTHING;",
    )
    .await?;
    let found: i32 = txn
        .query_one("SELECT version FROM ftpd_schema", &[])
        .await?
        .try_get(0)?;
    let known = MIGRATIONS.len();
    let from = usize::try_from(found).unwrap_or(0);
    if from > known {
        return Err(SchemaError::Newer { found, known });
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        txn.batch_execute(sql).await?;
        let version = i32::try_from(n + 1).unwrap_or(i32::MAX);
        txn.execute("UPDATE ftpd_schema SET version = $1", &[&version])
            .await?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    txn.commit().await?;
    Ok(found)
}
