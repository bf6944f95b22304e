//! A fresh PostgreSQL database per test, on the server that the libpq variables name
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, as `pg_virtualenv` sets them); dropped after.

use super::{explain, PgStore};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_postgres::{Config, NoTls};

/// Whether the PostgreSQL tests can run. Without `PGHOST` they are skipped (said on standard
/// output), unless `POSTGRES_TESTS=required`, where that is a failure.
pub fn available(test: &str) -> bool {
    if std::env::var_os("PGHOST").is_some() {
        return true;
    }
    assert!(
        std::env::var("POSTGRES_TESTS").as_deref() != Ok("required"),
        "{test}: POSTGRES_TESTS=required but PGHOST is unset (run under pg_virtualenv)"
    );
    println!("{test}: skipped, PGHOST is unset (run under pg_virtualenv to test PostgreSQL)");
    false
}

/// A libpq key=value string from the environment, for database `dbname`.
fn conninfo(dbname: &str) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = vec![format!("dbname={}", quote(dbname))];
    for (var, key) in [
        ("PGHOST", "host"),
        ("PGPORT", "port"),
        ("PGUSER", "user"),
        ("PGPASSWORD", "password"),
    ] {
        if let Ok(v) = std::env::var(var) {
            parts.push(format!("{key}={}", quote(&v)));
        }
    }
    parts.join(" ")
}

/// Runs each statement on its own (CREATE DATABASE refuses a transaction) in the server's
/// maintenance database, on a thread and runtime of its own: callable from any test.
fn admin(statements: Vec<String>) -> Result<(), String> {
    let maintenance = std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".to_string());
    let info = conninfo(&maintenance);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let config: Config = info.parse().map_err(|e| explain(&e))?;
            let (client, connection) = config.connect(NoTls).await.map_err(|e| explain(&e))?;
            tokio::spawn(connection);
            for sql in statements {
                client.batch_execute(&sql).await.map_err(|e| explain(&e))?;
            }
            Ok(())
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the admin thread panicked".to_string()))
}

/// One test's database.
pub struct TestDb {
    name: String,
}

impl TestDb {
    /// A new empty database, or `None` when the PostgreSQL tests are skipped.
    pub fn create(test: &str) -> Option<TestDb> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if !available(test) {
            return None;
        }
        let name = format!(
            "ftpd_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        admin(vec![
            format!("CREATE DATABASE {name}"),
            // Tests need no durability, and thousands of commits go faster without fsync.
            format!("ALTER DATABASE {name} SET synchronous_commit = off"),
        ])
        .unwrap_or_else(|e| panic!("{test}: cannot create a test database: {e}"));
        Some(TestDb { name })
    }

    /// The connection string of this database.
    pub fn url(&self) -> String {
        conninfo(&self.name)
    }

    /// A store on this database, as node `node`.
    pub fn connect(&self, node: &str) -> PgStore {
        PgStore::connect(&self.url(), node, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = admin(vec![format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )]) {
            eprintln!("cannot drop the test database {}: {e}", self.name);
        }
    }
}
