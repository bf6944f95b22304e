//! Opening the shared store at start: the connection settings, the pool, the schema and the
//! LISTEN connection, with retries while the server cannot be reached yet.

use super::db::Db;
use super::{blocking, explain, listen, schema, PgStore, Takeovers};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config, NoTls};

/// Connections in the pool: each running call holds one for its few round trips.
const POOL_SIZE: usize = 16;
/// Longest wait for a pooled connection, or for a new one to open.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the store could not be opened at start (ftpd stops: a bad setting).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("postgres_url cannot be used: {0}")]
    Url(String),
    #[error("cannot start the PostgreSQL client: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot reach PostgreSQL at postgres_url ({target}) within {}s: {cause}", waited.as_secs())]
    Unreachable {
        target: String,
        waited: Duration,
        cause: String,
    },
    #[error("PostgreSQL at postgres_url ({target}) refused ftpd: {cause}")]
    Refused { target: String, cause: String },
    #[error("cannot prepare ftpd's tables in PostgreSQL at postgres_url ({target}): {cause}")]
    Schema { target: String, cause: String },
}

/// What went wrong at one start attempt: worth another try, or not.
enum Attempt {
    Retry(String),
    Refused(String),
    Schema(String),
}

impl Attempt {
    /// Credentials and database names do not fix themselves; anything else (no route, a
    /// server starting up) may.
    fn of(e: &tokio_postgres::Error) -> Self {
        match e.code() {
            Some(c) if c.code().starts_with("28") || *c == SqlState::INVALID_CATALOG_NAME => {
                Attempt::Refused(explain(e))
            }
            _ => Attempt::Retry(explain(e)),
        }
    }

    fn of_pool(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => Attempt::of(&e),
            e => Attempt::Retry(e.to_string()),
        }
    }
}

/// Where `config` points, for messages: hosts, database and user, never the password.
fn target(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    format!(
        "host {}, database {}, user {}",
        if hosts.is_empty() {
            "(default)".to_string()
        } else {
            hosts.join(",")
        },
        config.get_dbname().unwrap_or("(default)"),
        config.get_user().unwrap_or("(default)"),
    )
}

/// Server-side limits for every session of a node (see [`PgStore::connect`]).
const SESSION_GUARDS: &str = "-c idle_in_transaction_session_timeout=5s -c lock_timeout=8s";

impl PgStore {
    /// Connects to `url` (a libpq URL or key=value string), creates or migrates the tables
    /// and opens the LISTEN connection. An unreachable server is tried again until `wait`
    /// has passed; refused credentials and a newer schema fail at once. `node` names the
    /// connections in `pg_stat_activity`.
    pub fn connect(url: &str, node: &str, wait: Duration) -> Result<Self, ConnectError> {
        let mut config: Config = url.parse().map_err(|e| ConnectError::Url(explain(&e)))?;
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(ConnectError::Url(
                "this ftpd talks to PostgreSQL without TLS, so sslmode can only be `disable` \
                 or `prefer`: reach the database over a Unix socket or a trusted network"
                    .to_string(),
            ));
        }
        if config.get_application_name().is_none() {
            config.application_name(format!("ftpd {node}"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        // A node paused or cut off inside a transaction must not keep its row locks (a
        // claim, the journal counter) and stall every other node: the server ends such a
        // session after a few seconds, and a statement waits for a lock only so long.
        let guards = SESSION_GUARDS;
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {guards}"),
            _ => guards.to_string(),
        };
        config.options(&options);
        let target = target(&config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ftpd-postgres")
            .enable_all()
            .build()
            .map_err(ConnectError::Runtime)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| ConnectError::Url(e.to_string()))?;
        let db = Db {
            pool,
            metrics: Default::default(),
            journal_seq: Arc::new(watch::Sender::new(0)),
        };
        let takeovers: Takeovers = Default::default();
        let listen = listen::Targets {
            seq: db.journal_seq.clone(),
            takeovers: takeovers.clone(),
        };
        let started = {
            let pool = db.pool.clone();
            blocking(rt.handle(), start(pool, config, listen, wait))
        };
        let store = PgStore {
            handle: rt.handle().clone(),
            rt: Some(rt),
            db,
            target: target.clone(),
            takeovers,
        };
        match started {
            Some(Ok(())) => {
                tracing::info!(target = %store.target, "records, journal and claims in PostgreSQL");
                Ok(store)
            }
            Some(Err(Attempt::Refused(cause))) => Err(ConnectError::Refused { target, cause }),
            Some(Err(Attempt::Schema(cause))) => Err(ConnectError::Schema { target, cause }),
            Some(Err(Attempt::Retry(cause))) => Err(ConnectError::Unreachable {
                target,
                waited: wait,
                cause,
            }),
            None => Err(ConnectError::Unreachable {
                target,
                waited: wait,
                cause: "the client stopped".to_string(),
            }),
        }
    }
}

/// Migrates the schema and opens the LISTEN connection, trying again with backoff while the
/// server cannot be reached, until `wait` has passed.
async fn start(
    pool: Pool,
    config: Config,
    listen: listen::Targets,
    wait: Duration,
) -> Result<(), Attempt> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut failures = 0u32;
    loop {
        let attempt = async {
            let mut client = pool.get().await.map_err(Attempt::of_pool)?;
            schema::migrate(&mut client).await.map_err(|e| match e {
                schema::SchemaError::Db(e) if e.as_db_error().is_none() => Attempt::of(&e),
                e => Attempt::Schema(e.to_string()),
            })?;
            listen::start(config.clone(), listen.clone())
                .await
                .map_err(|e| Attempt::of(&e))
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(Attempt::Retry(cause)) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(Attempt::Retry(cause));
                }
                if failures == 0 {
                    tracing::warn!(%cause, "PostgreSQL cannot be reached yet; trying again");
                }
                tokio::time::sleep(listen::backoff(failures).min(deadline - now)).await;
                failures = failures.saturating_add(1);
            }
            Err(e) => return Err(e),
        }
    }
}
