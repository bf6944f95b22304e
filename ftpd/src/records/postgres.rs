//! The shared store (`store = "postgres"`): records, journal and claims in PostgreSQL, for
//! several ftpd nodes behind one balancer.
//!
//! [`RecordStore`] is synchronous and runs on blocking threads while the client is async, so
//! the store owns a small runtime of its own for its pool and its LISTEN connection: each call
//! is spawned there and its result comes back over a std channel. That works from any thread
//! and never starts a runtime inside another.
//!
//! Tables (see `postgres/schema.rs`): `ftpd_records` (one row per file, a column per field),
//! `ftpd_journal` (seq, time, event JSON), `ftpd_counters` (the last journal seq),
//! `ftpd_claims` (holder, fence and expiry per file) and the `ftpd_fence` sequence.
//!
//! Opening is in `connect`, the records' and journal's SQL in `db`, the claims' in `claims`,
//! the LISTEN connection in `listen`.

mod claims;
mod columns;
mod connect;
mod db;
mod listen;
mod schema;
#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod tests;

pub use connect::ConnectError;

use crate::metrics::{StoreMetrics, Unfinished};
use crate::records::journal::{Event, JournalPage, Kind, Seen};
use crate::records::store::{Claim, Lease, RecordStore, StoreError};
use crate::records::Record;
use columns::Values;
use db::Db;
use deadpool_postgres::PoolError;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_postgres::error::SqlState;

/// Longest a call may take before it fails (a dead server, a lock held by a stuck node).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where takeover requests go once [`RecordStore::takeover_requests`] was called.
type Takeovers = Arc<Mutex<Option<mpsc::UnboundedSender<(String, String)>>>>;

/// A client error with its cause: the server's message and SQLSTATE, or the I/O error
/// (tokio-postgres' own `Display` says only "db error").
pub(crate) fn explain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code() == Some(&SqlState::DISK_FULL) {
            StoreError::SharedFull(explain(&e))
        } else {
            StoreError::Shared(explain(&e))
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            e => StoreError::Shared(format!("no connection to PostgreSQL: {e}")),
        }
    }
}

/// The store on PostgreSQL. Dropping it stops its runtime without waiting (safe anywhere).
pub struct PgStore {
    /// `Some` until drop, which shuts it down in the background.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    db: Db,
    target: String,
    takeovers: Takeovers,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Idle connections say goodbye to the server if their tasks get the chance.
        self.db.pool.close();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PgStore {
    /// Runs `call` on the store's runtime and waits for its result on this thread.
    fn run<T: Send + 'static>(
        &self,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let timed = async move {
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Shared(format!(
                    "PostgreSQL did not answer within {}s",
                    CALL_TIMEOUT.as_secs()
                ))),
            }
        };
        blocking(&self.handle, timed).unwrap_or_else(|| {
            Err(StoreError::Shared(
                "the PostgreSQL client has stopped".to_string(),
            ))
        })
    }
}

#[cfg(test)]
impl PgStore {
    /// Writes `record` and appends its event in one transaction, then fails before the commit
    /// (for the store contract's tests).
    pub(crate) fn fail_a_change(&self, user: &str, path: &str, record: &Record) -> StoreError {
        let (db, [user, path], record) = (self.db.clone(), owned([user, path]), *record);
        let failed = self.run(async move {
            let mut client = db.client().await?;
            let txn = client.transaction().await?;
            db::upsert(&txn, &user, &path, &Values::of(&record)).await?;
            let event = Event::of_record(Kind::Upload, &user, &path, &record);
            db.append(&txn, event).await?;
            Err::<(), _>(StoreError::Shared("failed before the commit".to_string()))
        });
        failed.expect_err("the change was made to fail")
    }
}

/// Spawns `fut` on `handle` and blocks this thread on a std channel until it is done: no
/// runtime is entered here, so any thread may call it. `None` if the runtime dropped it.
fn blocking<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().ok()
}

/// Owned copies of string arguments, for calls that move to the store's runtime.
fn owned<const N: usize>(values: [&str; N]) -> [String; N] {
    values.map(str::to_owned)
}

impl RecordStore for PgStore {
    fn get(&self, user: &str, path: &str) -> Result<Option<Record>, StoreError> {
        let (db, [user, path]) = (self.db.clone(), owned([user, path]));
        self.run(async move { db.get(&user, &path).await })
    }

    fn put(&self, user: &str, path: &str, record: &Record) -> Result<(), StoreError> {
        let (db, [user, path], values) = (self.db.clone(), owned([user, path]), Values::of(record));
        self.run(async move { db.put(&user, &path, &values).await })
    }

    fn remove(&self, user: &str, path: &str) -> Result<(), StoreError> {
        let (db, [user, path]) = (self.db.clone(), owned([user, path]));
        self.run(async move { db.remove(&user, &path).await })
    }

    fn rename(&self, user: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let (db, [user, from, to]) = (self.db.clone(), owned([user, from, to]));
        self.run(async move { db.rename(&user, &from, &to).await })
    }

    fn open_records(&self) -> Result<Vec<(String, String, Record)>, StoreError> {
        let db = self.db.clone();
        let found = self.run(async move { db.records(None, true).await })?;
        Ok(found.into_iter().filter(|r| r.2.open).collect())
    }

    fn records(
        &self,
        user: Option<&str>,
        keep: &dyn Fn(&Record) -> bool,
    ) -> Result<Vec<(String, String, Record)>, StoreError> {
        let (db, user) = (self.db.clone(), user.map(str::to_owned));
        let found = self.run(async move { db.records(user.as_deref(), false).await })?;
        Ok(found.into_iter().filter(|r| keep(&r.2)).collect())
    }

    fn unfinished(&self) -> Result<Unfinished, StoreError> {
        let db = self.db.clone();
        self.run(async move { db.unfinished().await })
    }

    fn metrics(&self) -> Option<Arc<StoreMetrics>> {
        Some(self.db.metrics.clone())
    }

    fn end_upload(&self, user: &str, path: &str, record: &Record) -> Result<Event, StoreError> {
        let (db, [user, path], record) = (self.db.clone(), owned([user, path]), *record);
        self.run(async move { db.end_upload(&user, &path, &record, None).await })
    }

    fn remove_and_journal(
        &self,
        kind: Kind,
        user: &str,
        path: &str,
        seen: Seen,
    ) -> Result<Event, StoreError> {
        let (db, [user, path]) = (self.db.clone(), owned([user, path]));
        self.run(async move { db.remove_and_journal(kind, &user, &path, seen).await })
    }

    fn rename_and_journal(
        &self,
        user: &str,
        from: &str,
        to: &str,
        seen: Seen,
    ) -> Result<Event, StoreError> {
        let (db, [user, from, to]) = (self.db.clone(), owned([user, from, to]));
        self.run(async move { db.rename_and_journal(&user, &from, &to, seen).await })
    }

    fn journal_page(&self, after: u64, limit: usize) -> Result<JournalPage, StoreError> {
        let db = self.db.clone();
        self.run(async move { db.journal_page(after, limit).await })
    }

    fn journal_prune(&self, before: SystemTime, max: usize) -> Result<usize, StoreError> {
        let db = self.db.clone();
        self.run(async move { db.journal_prune(before, max).await })
    }

    fn journal_watch(&self) -> watch::Receiver<u64> {
        self.db.journal_seq.subscribe()
    }

    fn shared(&self) -> bool {
        true
    }

    fn claim(
        &self,
        user: &str,
        path: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let (db, [user, path, node]) = (self.db.clone(), owned([user, path, node]));
        self.run(async move { db.claim(&user, &path, &node, ttl).await })
    }

    fn renew(
        &self,
        user: &str,
        path: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (db, [user, path], lease) = (self.db.clone(), owned([user, path]), lease.clone());
        self.run(async move { db.renew(&user, &path, &lease, ttl).await })
    }

    fn release(&self, user: &str, path: &str, lease: &Lease) -> Result<(), StoreError> {
        let (db, [user, path], lease) = (self.db.clone(), owned([user, path]), lease.clone());
        self.run(async move { db.release(&user, &path, &lease).await })
    }

    fn request_takeover(&self, user: &str, path: &str) -> Result<(), StoreError> {
        let (db, [user, path]) = (self.db.clone(), owned([user, path]));
        self.run(async move { db.request_takeover(&user, &path).await })
    }

    fn takeover_requests(&self) -> Option<mpsc::UnboundedReceiver<(String, String)>> {
        let mut subscriber = self
            .takeovers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if subscriber.is_some() {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        *subscriber = Some(tx);
        Some(rx)
    }

    fn put_fenced(
        &self,
        user: &str,
        path: &str,
        record: &Record,
        lease: &Lease,
    ) -> Result<(), StoreError> {
        let (db, [user, path]) = (self.db.clone(), owned([user, path]));
        let (values, lease) = (Values::of(record), lease.clone());
        self.run(async move { db.put_fenced(&user, &path, &values, &lease).await })
    }

    fn end_upload_fenced(
        &self,
        user: &str,
        path: &str,
        record: &Record,
        lease: &Lease,
    ) -> Result<Event, StoreError> {
        let (db, [user, path], record) = (self.db.clone(), owned([user, path]), *record);
        let lease = lease.clone();
        self.run(async move { db.end_upload(&user, &path, &record, Some(&lease)).await })
    }
}
