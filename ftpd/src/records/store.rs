//! The checksum store: one [`Record`] per (user, path), durable across crashes.
//!
//! Behind the [`RecordStore`] trait so that a shared store can later serve several nodes; the
//! embedded default is [`RedbStore`], a single file in the state directory (redb commits are
//! crash-safe and fsynced). Records live outside every user's root, so FTP cannot see them.

use crate::records::journal::{Event, JournalPage, Kind, Seen};
use crate::records::record::Record;
use redb::backends::FileBackend;
use redb::{Database, ReadableTable, StorageBackend, TableDefinition};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// The journal's events by seq, each the JSON of an [`Event`] (see `records/journal.rs`).
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// Counters; [`JOURNAL_SEQ`] is the last seq allocated.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const JOURNAL_SEQ: &str = "journal.seq";

/// A store failure (I/O, corruption); the FTP reply to it is a local error, or a full-disk
/// reply when the disk or a quota is full.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Boxed: redb's error is large, and this travels through every storage call.
    #[error("checksum store: {0}")]
    Db(Box<redb::Error>),
    /// The database was closed after an I/O error and is not reopened yet (backoff).
    #[error("checksum store closed after an I/O error ({cause}); reopening in {retry_in:?}")]
    Unavailable {
        cause: io::ErrorKind,
        retry_in: Duration,
    },
    /// The shared store (PostgreSQL) failed or could not be reached.
    #[error("shared store: {0}")]
    Shared(String),
    /// The shared store ran out of disk space: answered as a full disk, as the embedded
    /// store's is.
    #[error("shared store: {0}")]
    SharedFull(String),
    /// This writer's claim on the file is gone (another node holds a newer one): nothing it
    /// writes may be committed.
    #[error("the claim on the file (fence {fence}) was lost to another node")]
    Fenced { fence: u64 },
}

impl StoreError {
    /// The kind of the I/O error behind this failure, if it was one: a full disk
    /// (`StorageFull`) or quota (`QuotaExceeded`) is answered as such, not as a local error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            StoreError::Db(e) => match e.as_ref() {
                redb::Error::Io(io) => Some(io.kind()),
                _ => None,
            },
            StoreError::Unavailable { cause, .. } => Some(*cause),
            StoreError::SharedFull(_) => Some(io::ErrorKind::StorageFull),
            StoreError::Shared(_) | StoreError::Fenced { .. } => None,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(Box::new(e.into())) }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A node's claim on one file across the nodes sharing a store. `fence` grows with every new
/// holder, and every record commit of an upload carries it, so a writer that lost its claim
/// (paused, partitioned) can never overwrite a newer writer's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub node: String,
    pub fence: u64,
}

/// The answer to [`RecordStore::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    Acquired(Lease),
    /// Another node holds the file; its claim runs out in `expires_in` unless renewed.
    Held {
        node: String,
        expires_in: Duration,
    },
}

/// Runs `work` while `holder` holds the claim on `path` (for `ttl`), then gives the claim up;
/// `Ok(None)` when another holder has it. For short work on a blocking thread: reconciling a
/// dead writer's record, expiring a file. A failed release is reported before `work`'s result.
pub fn while_claimed<T, E: From<StoreError>>(
    store: &dyn RecordStore,
    (user, path): (&str, &str),
    holder: &str,
    ttl: Duration,
    work: impl FnOnce(&Lease) -> Result<T, E>,
) -> Result<Option<T>, E> {
    let lease = match store.claim(user, path, holder, ttl)? {
        Claim::Acquired(lease) => lease,
        Claim::Held { .. } => return Ok(None),
    };
    let done = work(&lease);
    store.release(user, path, &lease)?;
    done.map(Some)
}

/// Where records are kept. Paths are normalised, absolute within the user's root (`/a/b.ts`).
///
/// Every method blocks: callers run them off the async workers (`spawn_blocking`).
pub trait RecordStore: Send + Sync + std::fmt::Debug {
    /// The record of `path`, if any.
    fn get(&self, user: &str, path: &str) -> Result<Option<Record>, StoreError>;
    /// Writes the record durably (returns once it is on stable storage).
    fn put(&self, user: &str, path: &str, record: &Record) -> Result<(), StoreError>;
    /// Forgets `path`.
    fn remove(&self, user: &str, path: &str) -> Result<(), StoreError>;
    /// Moves the record of `from` (and, for a directory, of everything below it) to `to`.
    fn rename(&self, user: &str, from: &str, to: &str) -> Result<(), StoreError>;
    /// Every record still marked open, as `(user, path, record)`: transfers a crash cut short.
    fn open_records(&self) -> Result<Vec<(String, String, Record)>, StoreError> {
        self.records(None, &|r| r.open)
    }
    /// The records of `user` (every user's with `None`) that `keep` accepts, as
    /// `(user, path, record)` in key order, read in one snapshot (writers go on meanwhile).
    /// Undecodable values are logged and skipped. For recovery, the expiry and
    /// `ftpd uploads list`.
    fn records(
        &self,
        user: Option<&str>,
        keep: &dyn Fn(&Record) -> bool,
    ) -> Result<Vec<(String, String, Record)>, StoreError>;
    /// The files waiting for a resume (`metrics::unfinished`) and their bytes, for
    /// `ftpd_partial_files`: one pass over the records.
    fn unfinished(&self) -> Result<crate::metrics::Unfinished, StoreError>;
    /// The store's own metrics (commit durations), if it keeps any.
    fn metrics(&self) -> Option<std::sync::Arc<crate::metrics::StoreMetrics>> {
        None
    }

    // The journal (see `records/journal.rs`): each change below and its event are one
    // transaction, and the event's seq is allocated in it.

    /// Writes the final `record` of an upload that ended and appends its `upload` event.
    fn end_upload(&self, user: &str, path: &str, record: &Record) -> Result<Event, StoreError>;
    /// Forgets `path` and appends a `kind` event (`delete`, `expire`; `upload` for an upload
    /// whose file vanished) describing the record it had, as `seen` just before.
    fn remove_and_journal(
        &self,
        kind: Kind,
        user: &str,
        path: &str,
        seen: Seen,
    ) -> Result<Event, StoreError>;
    /// Forgets the record of `to`, moves those of `from` as [`RecordStore::rename`] does and
    /// appends a `rename` event describing what `from` held, as `seen` just before.
    fn rename_and_journal(
        &self,
        user: &str,
        from: &str,
        to: &str,
        seen: Seen,
    ) -> Result<Event, StoreError>;
    /// Events with seq > `after`, at most `limit`, with the oldest kept and last seq.
    fn journal_page(&self, after: u64, limit: usize) -> Result<JournalPage, StoreError>;
    /// Removes up to `max` of the oldest events committed before `before`; returns how many.
    fn journal_prune(&self, before: SystemTime, max: usize) -> Result<usize, StoreError>;
    /// The last committed seq, updated after every commit that appends an event.
    fn journal_watch(&self) -> watch::Receiver<u64>;

    // Claims across nodes. The embedded store serves one process, whose in-process writer
    // table (`writers.rs`) is the whole lock: its claims always succeed and fence nothing.

    /// Whether other nodes share this store (claims, fences and takeover requests matter).
    fn shared(&self) -> bool {
        false
    }
    /// Claims `path` for `node` for `ttl`, if no other node holds a live claim on it.
    fn claim(
        &self,
        _user: &str,
        _path: &str,
        node: &str,
        _ttl: Duration,
    ) -> Result<Claim, StoreError> {
        Ok(Claim::Acquired(Lease {
            node: node.to_owned(),
            fence: 0,
        }))
    }
    /// Extends `lease` by `ttl`; `Ok(false)` when it is no longer held (expired and taken).
    fn renew(
        &self,
        _user: &str,
        _path: &str,
        _lease: &Lease,
        _ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Gives `lease` up (a no-op when it is no longer held).
    fn release(&self, _user: &str, _path: &str, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }
    /// Asks the node holding `path` to stop its upload and let go (a box resumed elsewhere).
    fn request_takeover(&self, _user: &str, _path: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// The takeover requests other nodes send, as `(user, path)`; taken once, at start.
    fn takeover_requests(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(String, String)>> {
        None
    }
    /// [`RecordStore::put`], committed only while `lease` is the file's current claim
    /// ([`StoreError::Fenced`] otherwise).
    fn put_fenced(
        &self,
        user: &str,
        path: &str,
        record: &Record,
        _lease: &Lease,
    ) -> Result<(), StoreError> {
        self.put(user, path, record)
    }
    /// [`RecordStore::end_upload`], committed only while `lease` is the file's current claim.
    fn end_upload_fenced(
        &self,
        user: &str,
        path: &str,
        record: &Record,
        _lease: &Lease,
    ) -> Result<Event, StoreError> {
        self.end_upload(user, path, record)
    }
}

/// The database file with every sync skipped (durability "none"). redb's `Eventual` commits
/// still call fdatasync on Linux, and its `None` commits are lost when the process dies; this
/// keeps `Eventual` commits, which reach the page cache and survive a crash of the process.
#[derive(Debug)]
struct NoSync(FileBackend);

impl StorageBackend for NoSync {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.0.read(offset, len)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self, _eventual: bool) -> std::io::Result<()> {
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }
}

/// Key layout: `user NUL path`, so one user's records are one contiguous range.
fn key(user: &str, path: &str) -> String {
    format!("{user}\0{path}")
}

/// A stored value as a record; `None`, logged, when it cannot be decoded (written by a newer
/// version, or damaged): its file then counts as untracked instead of failing every command
/// that touches it, and the next upload of the file replaces it.
fn decoded(key: &str, bytes: &[u8]) -> Option<Record> {
    match Record::decode(bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            let (user, path) = key.split_once('\0').unwrap_or(("", key));
            tracing::warn!(%user, %path, error = %e, "ignoring a checksum record that cannot be decoded; the file counts as untracked");
            None
        }
    }
}

/// Appends `event` to the journal under the next seq, in `txn`; returns it with its seq.
fn append(txn: &redb::WriteTransaction, mut event: Event) -> Result<Event, StoreError> {
    let mut meta = txn.open_table(META)?;
    let seq = meta.get(JOURNAL_SEQ)?.map_or(0, |v| v.value()) + 1;
    meta.insert(JOURNAL_SEQ, seq)?;
    event.seq = seq;
    txn.open_table(JOURNAL)?
        .insert(seq, event.to_json().as_slice())?;
    Ok(event)
}

/// Removes the record of `path` in `txn`; returns it (`None` when there was none or it cannot
/// be decoded).
fn remove_in(
    txn: &redb::WriteTransaction,
    user: &str,
    path: &str,
) -> Result<Option<Record>, StoreError> {
    let k = key(user, path);
    let mut table = txn.open_table(RECORDS)?;
    let old = table.remove(k.as_str())?.map(|v| v.value().to_vec());
    Ok(old.and_then(|v| decoded(&k, &v)))
}

/// Moves the record of `from` (and everything below it) to `to` in `txn`; returns the record
/// `from` itself had.
fn rename_in(
    txn: &redb::WriteTransaction,
    user: &str,
    from: &str,
    to: &str,
) -> Result<Option<Record>, StoreError> {
    let mut table = txn.open_table(RECORDS)?;
    let mut moves: Vec<(String, Vec<u8>)> = Vec::new();
    let from_key = key(user, from);
    let mut moved = None;
    if let Some(v) = table.remove(from_key.as_str())? {
        let v = v.value().to_vec();
        moved = decoded(&from_key, &v);
        moves.push((key(user, to), v));
    }
    // Everything below `from/` when `from` is a directory: '/' + 1 == '0'.
    let lo = key(user, &format!("{from}/"));
    let hi = key(user, &format!("{from}0"));
    let below: Vec<(String, Vec<u8>)> = table
        .range(lo.as_str()..hi.as_str())?
        .map(|e| e.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
        .collect::<Result<_, _>>()?;
    let old_prefix = key(user, from);
    let new_prefix = key(user, to);
    for (k, v) in below {
        table.remove(k.as_str())?;
        moves.push((format!("{new_prefix}{}", &k[old_prefix.len()..]), v));
    }
    for (k, v) in moves {
        table.insert(k.as_str(), v.as_slice())?;
    }
    Ok(moved)
}

/// The commit time of a stored event; `None` when it cannot be read (damaged).
fn event_time(bytes: &[u8]) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Time<'a> {
        #[serde(borrow)]
        time: std::borrow::Cow<'a, str>,
    }
    let t: Time<'_> = serde_json::from_slice(bytes).ok()?;
    humantime::parse_rfc3339(&t.time).ok()
}

/// Opens (or creates) the database file at `path`.
type Opener = Box<dyn Fn(&Path) -> Result<Database, StoreError> + Send + Sync>;

/// Opens the database file with fsync (`durable`) or without ([`NoSync`]).
fn open_file(path: &Path, durable: bool) -> Result<Database, StoreError> {
    if durable {
        return Ok(Database::create(path)?);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::Db(Box::new(e.into())))?;
    Ok(Database::builder().create_with_backend(NoSync(FileBackend::new(file)?))?)
}

/// True for the errors after which redb refuses all further work on the database: it cannot
/// tell what reached the file, so only closing and reopening it (which recovers the last
/// commit) makes it usable again.
fn breaks_database(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::LockPoisoned(_)
    )
}

/// The wait before reopening after `failures` failures in a row without a successful write:
/// none after the first (the fault may be gone already), then doubling from 100 ms up to 5 s,
/// so a lasting fault (a full disk) costs one reopening every few seconds at most.
pub fn reopen_backoff(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
    match failures {
        0 | 1 => Duration::ZERO,
        n => FIRST.saturating_mul(1 << (n - 2).min(16)).min(MAX),
    }
}

/// The open database; `None` from a failure until it is reopened.
#[derive(Debug)]
struct Slot {
    db: Option<Database>,
    /// Counts openings, so a failure seen on an old database never closes a newer one.
    generation: u64,
}

/// What the store knows of its recent failures.
#[derive(Debug, Default)]
struct Health {
    /// Failures since the last successful write; sets the wait before the next reopening.
    failures: u32,
    /// When the database was last closed or failed to reopen.
    since: Option<Instant>,
    /// The kind of I/O error behind the last failure, so that replies keep saying "disk full"
    /// while the database stays closed.
    cause: Option<io::ErrorKind>,
}

/// The embedded store. redb refuses all further work after one failed read or write (a full
/// disk, EIO), so a failure closes the database and a later call reopens it, with backoff
/// while the fault lasts: once the fault clears, the same process works again.
pub struct RedbStore {
    path: PathBuf,
    durable: bool,
    opener: Opener,
    /// Calls hold it shared while they use the database; closing and reopening hold it
    /// exclusively, so the old database (and redb's lock on the file) is gone first.
    slot: RwLock<Slot>,
    health: Mutex<Health>,
    /// Commit durations, for `ftpd_store_commit_seconds`.
    metrics: std::sync::Arc<crate::metrics::StoreMetrics>,
    /// The last committed journal seq, for readers waiting for new events.
    journal_seq: watch::Sender<u64>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("durable", &self.durable)
            .field("slot", &self.slot)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) `state_dir/records.redb`. With `durable` false, commits skip fsync.
    pub fn open(state_dir: &Path, durable: bool) -> Result<Self, StoreError> {
        Self::open_with(
            state_dir.join("records.redb"),
            durable,
            Box::new(move |p| open_file(p, durable)),
        )
    }

    /// Opens the database with `opener`, now and after every failure.
    fn open_with(path: PathBuf, durable: bool, opener: Opener) -> Result<Self, StoreError> {
        let db = opener(&path)?;
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.open_table(JOURNAL)?;
        let last = txn
            .open_table(META)?
            .get(JOURNAL_SEQ)?
            .map_or(0, |v| v.value());
        txn.commit()?;
        Ok(RedbStore {
            path,
            durable,
            opener,
            slot: RwLock::new(Slot {
                db: Some(db),
                generation: 0,
            }),
            health: Mutex::new(Health::default()),
            metrics: Default::default(),
            journal_seq: watch::Sender::new(last),
        })
    }

    /// Runs `change` and appends the event it returns in one write transaction; readers hear
    /// of the new seq once it is committed.
    fn journaled(
        &self,
        change: impl Fn(&redb::WriteTransaction) -> Result<Event, StoreError>,
    ) -> Result<Event, StoreError> {
        let event = self.with_db(true, |db| {
            let txn = self.write_txn(db)?;
            let event = append(&txn, change(&txn)?)?;
            self.commit(txn)?;
            Ok(event)
        })?;
        // Commits are serial but these notifications may race: the value only grows.
        self.journal_seq.send_if_modified(|last| {
            let newer = event.seq > *last;
            if newer {
                *last = event.seq;
            }
            newer
        });
        Ok(event)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` on the database, reopening it first if a failure closed it. A failure that
    /// breaks the database closes it; one that an earlier failure caused (`PreviousIo`) is
    /// tried once more on the reopened database, since this call itself did nothing wrong.
    fn with_db<T>(
        &self,
        writes: bool,
        op: impl Fn(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut retried = false;
        for _ in 0..4 {
            let (generation, result) = {
                let slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
                match &slot.db {
                    Some(db) => (slot.generation, op(db)),
                    None => {
                        drop(slot);
                        self.reopen()?;
                        continue;
                    }
                }
            };
            match result {
                Ok(v) => {
                    if writes {
                        let mut h = self.health();
                        if h.failures > 0 {
                            *h = Health::default();
                        }
                    }
                    return Ok(v);
                }
                Err(StoreError::Db(e)) if breaks_database(&e) => {
                    let earlier = matches!(*e, redb::Error::PreviousIo);
                    self.close(generation, &e);
                    if earlier && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(self.explained(StoreError::Db(e)));
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.explained(StoreError::Db(Box::new(redb::Error::PreviousIo))))
    }

    /// `PreviousIo` says nothing of the cause; the cause that closed the database does.
    fn explained(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Db(ref db) if matches!(**db, redb::Error::PreviousIo) => {
                StoreError::Unavailable {
                    cause: self.health().cause.unwrap_or(io::ErrorKind::Other),
                    retry_in: Duration::ZERO,
                }
            }
            e => e,
        }
    }

    /// Closes the database of `generation` after `error` broke it (if no other call has).
    fn close(&self, generation: u64, error: &redb::Error) {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        if slot.generation != generation || slot.db.is_none() {
            return;
        }
        // redb's drop tries a last write, which a broken database refuses at once.
        slot.db = None;
        let mut h = self.health();
        h.failures = h.failures.saturating_add(1);
        h.since = Some(Instant::now());
        if let redb::Error::Io(io) = error {
            h.cause = Some(io.kind());
        }
        tracing::warn!(error = %error, failures = h.failures, "checksum store closed after an I/O error; it is reopened on the next use");
    }

    /// Reopens the closed database unless the backoff says to wait; redb recovers the last
    /// commit. Calls wait for it (they would fail anyway), so the database is opened once.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        if slot.db.is_some() {
            return Ok(());
        }
        let mut h = self.health();
        let cause = h.cause.unwrap_or(io::ErrorKind::Other);
        if let Some(since) = h.since {
            let ready = since + reopen_backoff(h.failures);
            let now = Instant::now();
            if now < ready {
                return Err(StoreError::Unavailable {
                    cause,
                    retry_in: ready - now,
                });
            }
        }
        match (self.opener)(&self.path) {
            Ok(db) => {
                slot.db = Some(db);
                slot.generation += 1;
                tracing::info!(failures = h.failures, "checksum store reopened");
                Ok(())
            }
            Err(e) => {
                h.failures = h.failures.saturating_add(1);
                h.since = Some(Instant::now());
                h.cause = e.io_kind().or(h.cause);
                tracing::warn!(error = %e, failures = h.failures, "checksum store cannot be reopened yet");
                Err(match e.io_kind() {
                    Some(_) => e,
                    None => StoreError::Unavailable {
                        cause,
                        retry_in: reopen_backoff(h.failures),
                    },
                })
            }
        }
    }

    /// Commits `txn`, timing it for `ftpd_store_commit_seconds`.
    fn commit(&self, txn: redb::WriteTransaction) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = txn.commit();
        self.metrics.commit_took(started.elapsed());
        Ok(result?)
    }

    fn write_txn(&self, db: &Database) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = db.begin_write()?;
        if !self.durable {
            txn.set_durability(redb::Durability::Eventual);
        }
        Ok(txn)
    }
}

#[cfg(test)]
impl RedbStore {
    /// Writes `record` and appends its event in one transaction, then fails before the commit
    /// (for the store contract's tests).
    pub(crate) fn fail_a_change(&self, user: &str, path: &str, record: &Record) -> StoreError {
        let (k, v) = (key(user, path), record.encode());
        let failed = self.journaled(|txn| {
            txn.open_table(RECORDS)?.insert(k.as_str(), v.as_slice())?;
            append(txn, Event::of_record(Kind::Upload, user, path, record))?;
            Err(StoreError::Unavailable {
                cause: io::ErrorKind::Other,
                retry_in: Duration::ZERO,
            })
        });
        failed.expect_err("the change was made to fail")
    }
}

impl RecordStore for RedbStore {
    fn get(&self, user: &str, path: &str) -> Result<Option<Record>, StoreError> {
        let k = key(user, path);
        let value = self.with_db(false, |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(RECORDS)?;
            let value = table.get(k.as_str())?;
            Ok(value.map(|v| v.value().to_vec()))
        })?;
        Ok(value.and_then(|v| decoded(&k, &v)))
    }

    fn put(&self, user: &str, path: &str, record: &Record) -> Result<(), StoreError> {
        let (k, v) = (key(user, path), record.encode());
        self.with_db(true, |db| {
            let txn = self.write_txn(db)?;
            {
                let mut table = txn.open_table(RECORDS)?;
                table.insert(k.as_str(), v.as_slice())?;
            }
            self.commit(txn)?;
            Ok(())
        })
    }

    fn remove(&self, user: &str, path: &str) -> Result<(), StoreError> {
        let k = key(user, path);
        self.with_db(true, |db| {
            let txn = self.write_txn(db)?;
            {
                let mut table = txn.open_table(RECORDS)?;
                table.remove(k.as_str())?;
            }
            self.commit(txn)?;
            Ok(())
        })
    }

    fn rename(&self, user: &str, from: &str, to: &str) -> Result<(), StoreError> {
        self.with_db(true, |db| {
            let txn = self.write_txn(db)?;
            rename_in(&txn, user, from, to)?;
            self.commit(txn)?;
            Ok(())
        })
    }

    fn unfinished(&self) -> Result<crate::metrics::Unfinished, StoreError> {
        // A read transaction: writers go on meanwhile. Undecodable values count as nothing
        // (they are logged when a command touches them).
        self.with_db(false, |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(RECORDS)?;
            let mut counted = crate::metrics::Unfinished::default();
            for entry in table.iter()? {
                if let Ok(r) = Record::decode(entry?.1.value()) {
                    counted.add(&r);
                }
            }
            Ok(counted)
        })
    }

    fn metrics(&self) -> Option<std::sync::Arc<crate::metrics::StoreMetrics>> {
        Some(self.metrics.clone())
    }

    fn records(
        &self,
        user: Option<&str>,
        keep: &dyn Fn(&Record) -> bool,
    ) -> Result<Vec<(String, String, Record)>, StoreError> {
        // One user's records are the keys from `user NUL` up to `user \x01`.
        let range = user.map(|u| (key(u, ""), format!("{u}\u{1}")));
        self.with_db(false, |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(RECORDS)?;
            let entries = match &range {
                Some((lo, hi)) => table.range(lo.as_str()..hi.as_str())?,
                None => table.range::<&str>(..)?,
            };
            let mut found = Vec::new();
            for entry in entries {
                let (k, v) = entry?;
                let Some(record) = decoded(k.value(), v.value()) else {
                    continue;
                };
                if !keep(&record) {
                    continue;
                }
                if let Some((u, p)) = k.value().split_once('\0') {
                    found.push((u.to_string(), p.to_string(), record));
                }
            }
            Ok(found)
        })
    }

    fn end_upload(&self, user: &str, path: &str, record: &Record) -> Result<Event, StoreError> {
        let (k, v) = (key(user, path), record.encode());
        self.journaled(|txn| {
            txn.open_table(RECORDS)?.insert(k.as_str(), v.as_slice())?;
            Ok(Event::of_record(Kind::Upload, user, path, record))
        })
    }

    fn remove_and_journal(
        &self,
        kind: Kind,
        user: &str,
        path: &str,
        seen: Seen,
    ) -> Result<Event, StoreError> {
        self.journaled(|txn| {
            let old = remove_in(txn, user, path)?;
            Ok(Event::of_change(kind, user, path, old.as_ref(), seen))
        })
    }

    fn rename_and_journal(
        &self,
        user: &str,
        from: &str,
        to: &str,
        seen: Seen,
    ) -> Result<Event, StoreError> {
        self.journaled(|txn| {
            remove_in(txn, user, to)?;
            let moved = rename_in(txn, user, from, to)?;
            Ok(Event::of_change(Kind::Rename, user, to, moved.as_ref(), seen).renamed_from(from))
        })
    }

    fn journal_page(&self, after: u64, limit: usize) -> Result<JournalPage, StoreError> {
        self.with_db(false, |db| {
            let txn = db.begin_read()?;
            let last = txn
                .open_table(META)?
                .get(JOURNAL_SEQ)?
                .map_or(0, |v| v.value());
            let table = txn.open_table(JOURNAL)?;
            let oldest = match table.first()? {
                Some((k, _)) => k.value(),
                None => last + 1,
            };
            let events = table
                .range(after.saturating_add(1)..)?
                .take(limit)
                .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<Result<_, _>>()?;
            Ok(JournalPage {
                oldest,
                last,
                events,
            })
        })
    }

    fn journal_prune(&self, before: SystemTime, max: usize) -> Result<usize, StoreError> {
        self.with_db(true, |db| {
            let txn = self.write_txn(db)?;
            let n = {
                let mut table = txn.open_table(JOURNAL)?;
                let mut old = Vec::new();
                for e in table.iter()?.take(max) {
                    let (k, v) = e?;
                    // A damaged event goes too: pruning only ever moves the oldest end.
                    match event_time(v.value()) {
                        Some(t) if t >= before => break,
                        _ => old.push(k.value()),
                    }
                }
                for k in &old {
                    table.remove(k)?;
                }
                old.len()
            };
            if n > 0 {
                self.commit(txn)?;
            } else {
                txn.abort()?;
            }
            Ok(n)
        })
    }

    fn journal_watch(&self) -> watch::Receiver<u64> {
        self.journal_seq.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::journal::{Kind, Seen};
    use crc_tools::State;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A value written by a newer version (or damaged) under `u /bad`, next to a good one.
    fn store_with_a_bad_record(dir: &Path) -> RedbStore {
        {
            let s = RedbStore::open(dir, false).unwrap();
            s.put("u", "/open", &Record::opened(None, 5, 5)).unwrap();
            s.put("u", "/bad", &Record::opened(None, 5, 5)).unwrap();
        }
        {
            let db = Database::create(dir.join("records.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(RECORDS).unwrap();
                table
                    .insert(key("u", "/bad").as_str(), [9u8, 1, 0, 0, 0].as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        RedbStore::open(dir, false).unwrap()
    }

    #[test]
    fn an_undecodable_record_is_skipped_and_its_file_counts_as_untracked() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_with_a_bad_record(dir.path());
        let open: Vec<String> = s.open_records().unwrap().into_iter().map(|r| r.1).collect();
        assert_eq!(open, ["/open"]);
        assert!(
            s.get("u", "/bad").unwrap().is_none(),
            "no record: untracked"
        );
        // The next upload of the file replaces it.
        s.put("u", "/bad", &Record::opened(Some(1), 2, 3)).unwrap();
        assert_eq!(s.get("u", "/bad").unwrap().unwrap().declared, Some(1));
    }

    /// A file backend that fails every write, as a full disk does, while `full` is set.
    #[derive(Debug)]
    struct Faulty {
        file: FileBackend,
        full: Arc<AtomicBool>,
    }

    impl Faulty {
        fn check(&self) -> io::Result<()> {
            if self.full.load(Ordering::SeqCst) {
                Err(io::Error::from(io::ErrorKind::StorageFull))
            } else {
                Ok(())
            }
        }
    }

    impl StorageBackend for Faulty {
        fn len(&self) -> io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            self.file.read(offset, len)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self, _eventual: bool) -> io::Result<()> {
            self.check()
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
    }

    fn faulty_store(dir: &Path) -> (RedbStore, Arc<AtomicBool>) {
        let full = Arc::new(AtomicBool::new(false));
        let flag = full.clone();
        let opener: Opener = Box::new(move |p| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(|e| StoreError::Db(Box::new(e.into())))?;
            let backend = Faulty {
                file: FileBackend::new(file)?,
                full: flag.clone(),
            };
            Ok(Database::builder().create_with_backend(backend)?)
        });
        let s = RedbStore::open_with(dir.join("records.redb"), false, opener).unwrap();
        (s, full)
    }

    #[test]
    fn a_full_disk_closes_the_database_and_it_reopens_once_space_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let (s, full) = faulty_store(dir.path());
        let before = Record::opened(Some(7), 10, 99);
        s.put("u", "/before", &before).unwrap();

        full.store(true, Ordering::SeqCst);
        let e = s.put("u", "/during", &before).unwrap_err();
        assert_eq!(e.io_kind(), Some(io::ErrorKind::StorageFull), "{e}");
        // While the fault lasts every call fails, and says why (a full disk, not "previous I/O").
        for _ in 0..3 {
            let e = s.put("u", "/during", &before).unwrap_err();
            assert_eq!(e.io_kind(), Some(io::ErrorKind::StorageFull), "{e}");
        }

        full.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            match s.get("u", "/before") {
                Ok(r) => break r,
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.io_kind(), Some(io::ErrorKind::StorageFull), "{e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("store did not come back: {e}"),
            }
        };
        let stored = got.map(|r| r.encode());
        assert_eq!(stored, Some(before.encode()), "the last commit survives");
        assert!(
            s.get("u", "/during").unwrap().is_none(),
            "failed writes left nothing"
        );
        s.put("u", "/after", &before).unwrap();
        assert!(s.get("u", "/after").unwrap().is_some());
        assert_eq!(
            s.health().failures,
            0,
            "a successful write clears the backoff"
        );
    }

    #[test]
    fn reopening_backs_off_up_to_a_ceiling() {
        assert_eq!(reopen_backoff(1), Duration::ZERO);
        assert_eq!(reopen_backoff(2), Duration::from_millis(100));
        assert_eq!(reopen_backoff(3), Duration::from_millis(200));
        let mut last = Duration::ZERO;
        for n in 0..100 {
            let d = reopen_backoff(n);
            assert!(d >= last && d <= Duration::from_secs(5), "{n}: {d:?}");
            last = d;
        }
        assert_eq!(last, Duration::from_secs(5));
    }

    fn ended(size: u64) -> Record {
        Record {
            state: State::Complete,
            open: false,
            ..Record::opened(None, size, 1)
        }
    }

    fn journal_seqs(s: &RedbStore) -> Vec<u64> {
        let page = s.journal_page(0, 100).unwrap();
        page.events.iter().map(|e| e.0).collect()
    }

    /// A commit that cannot reach the disk loses both the record and its event; once the disk
    /// is back, the next event takes the next seq.
    #[test]
    fn a_failed_commit_loses_the_record_and_its_event_together() {
        let dir = tempfile::tempdir().unwrap();
        let (s, full) = faulty_store(dir.path());
        s.end_upload("u", "/before", &ended(1)).unwrap();
        s.remove_and_journal(Kind::Delete, "u", "/before", Seen::Unknown)
            .unwrap();
        full.store(true, Ordering::SeqCst);
        assert!(s.end_upload("u", "/during", &ended(2)).is_err());
        assert!(s
            .rename_and_journal("u", "/x", "/y", Seen::Unknown)
            .is_err());
        full.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        let e = loop {
            match s.end_upload("u", "/after", &ended(3)) {
                Ok(e) => break e,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("store did not come back: {e}"),
            }
        };
        assert_eq!(e.seq, 3);
        assert!(s.get("u", "/during").unwrap().is_none());
        assert_eq!(journal_seqs(&s), [1, 2, 3]);
    }
}
