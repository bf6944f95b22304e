//! The store's LISTEN connection: the journal's last seq and other nodes' takeover requests.
//!
//! One dedicated connection (a pooled one would be handed to other work). Every transaction
//! that appends an event NOTIFYs [`JOURNAL_CHANNEL`] with its seq, delivered at its commit;
//! [`RecordStore::request_takeover`](crate::records::RecordStore::request_takeover) NOTIFYs
//! [`TAKEOVER_CHANNEL`]. A lost connection is reopened with backoff, and the last seq is read
//! again after each reconnection, since notifications sent meanwhile are lost.

use super::{explain, Takeovers};
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification};

/// Carries each committed journal seq (as text).
pub const JOURNAL_CHANNEL: &str = "ftpd_journal";
/// Carries takeover requests, as `{"user": …, "path": …}`.
pub const TAKEOVER_CHANNEL: &str = "ftpd_takeover";

/// How often a quiet connection is checked, so that a dead one is noticed.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long the check may take before the connection counts as dead.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A takeover request, as sent on [`TAKEOVER_CHANNEL`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TakeoverRequest {
    pub user: String,
    pub path: String,
}

/// Where notifications go.
#[derive(Clone, Debug)]
pub struct Targets {
    pub seq: Arc<watch::Sender<u64>>,
    pub takeovers: Takeovers,
}

/// One open LISTEN connection.
struct Session {
    client: Client,
    /// Notifications, then the reason the connection ended.
    notes: mpsc::UnboundedReceiver<Result<Notification, String>>,
}

impl Session {
    /// Connects, LISTENs on both channels, then reads the last seq (in this order, so that
    /// no commit falls between the two unseen).
    async fn open(config: &Config, targets: &Targets) -> Result<Self, tokio_postgres::Error> {
        let (client, mut connection) = config.connect(NoTls).await?;
        let (tx, notes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(Ok(n)).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let _ = tx.send(Err(explain(&e)));
                        return;
                    }
                    None => {
                        let _ = tx.send(Err("connection closed".to_string()));
                        return;
                    }
                }
            }
        });
        client
            .batch_execute(&format!(
                "LISTEN {JOURNAL_CHANNEL}; LISTEN {TAKEOVER_CHANNEL}"
            ))
            .await?;
        let last: i64 = client
            .query_one(
                "SELECT value FROM ftpd_counters WHERE name = 'journal.seq'",
                &[],
            )
            .await?
            .try_get(0)?;
        raise(&targets.seq, u64::try_from(last).unwrap_or(0));
        Ok(Session { client, notes })
    }

    /// Hands out notifications until the connection ends; returns why it ended.
    async fn follow(mut self, targets: &Targets) -> String {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                note = self.notes.recv() => match note {
                    Some(Ok(n)) => deliver(&n, targets),
                    Some(Err(why)) => return why,
                    None => return "connection closed".to_string(),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, self.client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return explain(&e),
                        Err(_) => return format!("no answer within {PING_TIMEOUT:?}"),
                    }
                }
            }
        }
    }
}

/// Opens the LISTEN connection and keeps it open in a task of its own (reconnecting) until
/// the runtime stops. Fails when the first connection cannot be opened.
pub async fn start(mut config: Config, targets: Targets) -> Result<(), tokio_postgres::Error> {
    // Told apart from the pool's connections in `pg_stat_activity`.
    let name = format!("{} listen", config.get_application_name().unwrap_or("ftpd"));
    config.application_name(name);
    let first = Session::open(&config, &targets).await?;
    tokio::spawn(run(config, targets, first));
    Ok(())
}

async fn run(config: Config, targets: Targets, mut session: Session) {
    loop {
        let why = session.follow(&targets).await;
        tracing::warn!(reason = %why, "PostgreSQL: the LISTEN connection was lost; reconnecting");
        let mut failures = 0u32;
        session = loop {
            tokio::time::sleep(backoff(failures)).await;
            match Session::open(&config, &targets).await {
                Ok(s) => break s,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %explain(&e), failures, "PostgreSQL: cannot reopen the LISTEN connection yet");
                    }
                }
            }
        };
        tracing::info!(failures, "PostgreSQL: the LISTEN connection is back");
    }
}

/// The wait before reconnection attempt `failures + 1`: 100 ms doubling up to 5 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << failures.min(16))
        .min(Duration::from_secs(5))
}

/// Acts on one notification.
fn deliver(n: &Notification, targets: &Targets) {
    match n.channel() {
        JOURNAL_CHANNEL => match n.payload().parse::<u64>() {
            Ok(seq) => raise(&targets.seq, seq),
            Err(_) => tracing::warn!(
                payload = n.payload(),
                "PostgreSQL: ignoring a journal notification that is not a seq"
            ),
        },
        TAKEOVER_CHANNEL => match serde_json::from_str::<TakeoverRequest>(n.payload()) {
            Ok(r) => {
                let subscriber = targets
                    .takeovers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(tx) = subscriber.as_ref() {
                    let _ = tx.send((r.user, r.path));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL: ignoring a malformed takeover request")
            }
        },
        _ => {}
    }
}

/// Sets the last seq to `seq` if that is higher (notifications and local commits may race:
/// the value only grows).
pub fn raise(last: &watch::Sender<u64>, seq: u64) {
    last.send_if_modified(|v| {
        let newer = seq > *v;
        if newer {
            *v = seq;
        }
        newer
    });
}
