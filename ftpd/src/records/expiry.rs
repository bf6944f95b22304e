//! Expiry: partial and mismatched files that nobody touched for `partial_expiry_hours` are
//! removed, with their records, by a background sweep.
//!
//! A box that gave up on an upload (or whose file never matched its declared CRC) leaves bytes
//! that no resume will ever finish. The sweep removes such a file when all of this holds:
//! - its record is `partial` (not open: no upload runs) or `mismatch`; `verified` and
//!   `complete` files are never touched, nor files without a record (untracked);
//! - the record's `updated` time **and** the file's mtime are older than the cutoff
//!   (now − `partial_expiry_hours`);
//! - nobody holds the file: the sweep takes the one-writer lock ([`Writers::try_acquire`]),
//!   and skips the file when an upload, a DELE or a rename holds it (it never stops one);
//! - the record still describes the file (same size and identity, [`Record::describes`]): a
//!   file changed behind the server's back is left alone, with its record.
//!
//! The file is removed through the user's confined root (`<root>/<user>`, as the back-end
//! opens it), then the record goes with its `expire` journal event in one transaction
//! ([`RecordStore::remove_and_journal`]). A file already gone just loses its record (with its
//! event). Should the store fail after the file went, the next sweep finds the file gone and
//! removes the record then.
//!
//! The sweep runs once shortly after start-up and then every [`Expiry::every`]: a tenth of the
//! expiry time, at least a second and at most an hour (so with the default 168 hours, hourly).

use crate::paths;
use crate::records::journal::{Kind, Seen};
use crate::records::store::while_claimed;
use crate::records::{Record, RecordStore, StoreError};
use crate::writers::Writers;
use cap_std::fs::Dir;
use crc_tools::State;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// What one sweep did, for the log and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Files removed with their records.
    pub expired: usize,
    /// Records removed whose file was already gone.
    pub forgotten: usize,
    /// Candidates left for the next sweep because an upload, DELE or rename held them.
    pub busy: usize,
    /// Candidates whose file no longer matches its record (changed behind the server's back,
    /// or not a regular file), or that changed since the scan: left alone.
    pub skipped: usize,
    /// Candidates that could not be handled (I/O errors, logged).
    pub failed: usize,
}

/// The expiry of one server: its store, its writers' table and its root.
#[derive(Clone)]
pub struct Expiry {
    store: Arc<dyn RecordStore>,
    writers: Arc<Writers>,
    root: PathBuf,
    after: Duration,
    /// Who claims each file before removing it, and for how long (matters with a shared store,
    /// where another node may be about to resume the file).
    holder: String,
    claim_ttl: Duration,
}

impl std::fmt::Debug for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expiry")
            .field("root", &self.root)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// True for the records the expiry may remove: ended partial uploads and mismatches.
fn expirable(r: &Record) -> bool {
    matches!(r.state, State::Partial | State::Mismatch) && !r.open
}

/// Whether `r` was last changed before `cutoff`.
fn untouched_since(r: &Record, cutoff: SystemTime) -> bool {
    expirable(r) && r.updated < cutoff
}

/// The file's mtime (from its identity) as a time.
fn mtime(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// What became of one candidate.
enum Outcome {
    Expired,
    Forgotten,
    Busy,
    Skipped(&'static str),
}

impl Expiry {
    /// Files untouched for `after` go, under `root/<user>/`.
    pub fn new(
        store: Arc<dyn RecordStore>,
        writers: Arc<Writers>,
        root: PathBuf,
        after: Duration,
    ) -> Self {
        Expiry {
            store,
            writers,
            root,
            after,
            holder: "expiry".to_string(),
            claim_ttl: Duration::from_secs(15),
        }
    }

    /// Claims files as `holder` (this process's claim holder name) for `ttl` before removing them.
    pub fn claiming_as(mut self, holder: &str, ttl: Duration) -> Self {
        self.holder = holder.to_string();
        self.claim_ttl = ttl;
        self
    }

    /// How long a file must be untouched.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Time between sweeps: a tenth of the expiry time, from 1 second to 1 hour.
    pub fn every(&self) -> Duration {
        (self.after / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }

    /// The first sweep's delay after start-up: [`Expiry::every`], at most a minute.
    pub fn first(&self) -> Duration {
        self.every().min(Duration::from_secs(60))
    }

    /// One sweep with the cutoff `now − after`. Blocking (reads the store and the disk).
    pub fn sweep(&self) -> Result<Report, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(self.after)
            .unwrap_or(UNIX_EPOCH);
        self.sweep_before(cutoff, &CancellationToken::new())
    }

    /// One sweep: removes the candidates untouched since before `cutoff`, stopping early once
    /// `stop` is cancelled. Fails only when the store cannot be read at all; a candidate that
    /// fails is logged and counted, and the others go on.
    pub fn sweep_before(
        &self,
        cutoff: SystemTime,
        stop: &CancellationToken,
    ) -> Result<Report, StoreError> {
        let candidates = self
            .store
            .records(None, &|r: &Record| untouched_since(r, cutoff))?;
        let mut report = Report::default();
        for (user, path, record) in candidates {
            if stop.is_cancelled() {
                break;
            }
            match self.expire(&user, &path, cutoff) {
                Ok(Outcome::Expired) => {
                    report.expired += 1;
                    tracing::info!(%user, %path, state = %record.state, size = record.size, updated = %record.updated_rfc3339(), "expiry: removed an unfinished file untouched since before the cutoff");
                }
                Ok(Outcome::Forgotten) => {
                    report.forgotten += 1;
                    tracing::info!(%user, %path, state = %record.state, "expiry: the file was already gone; its record is removed");
                }
                Ok(Outcome::Busy) => {
                    report.busy += 1;
                    tracing::debug!(%user, %path, "expiry: the file is busy; left for the next sweep");
                }
                Ok(Outcome::Skipped(why)) => {
                    report.skipped += 1;
                    tracing::debug!(%user, %path, why, "expiry: left alone");
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(%user, %path, error = %e, "expiry: cannot remove the file");
                }
            }
        }
        Ok(report)
    }

    /// Removes one candidate if it still qualifies, holding its one-writer lock throughout.
    fn expire(&self, user: &str, path: &str, cutoff: SystemTime) -> Result<Outcome, ExpireError> {
        // Records are written only for valid names and normalised paths; anything else is not
        // looked for on disk.
        if crate::users::validate_name(user).is_err()
            || paths::resolve_file("/", path.as_ref()).as_deref() != Ok(path)
        {
            return Ok(Outcome::Skipped("not a user name or a normalised path"));
        }
        let Some(_lock) = self
            .writers
            .try_acquire((user.to_string(), path.to_string()))
        else {
            return Ok(Outcome::Busy);
        };
        let (store, holder) = (self.store.as_ref(), &self.holder);
        while_claimed(store, (user, path), holder, self.claim_ttl, |_| {
            self.expire_claimed(user, path, cutoff)
        })
        .map(|done| done.unwrap_or(Outcome::Busy))
    }

    /// [`Expiry::expire`] once the file is held here and across nodes.
    fn expire_claimed(
        &self,
        user: &str,
        path: &str,
        cutoff: SystemTime,
    ) -> Result<Outcome, ExpireError> {
        // Under the lock nothing else changes this record: read it again.
        let record = match self.store.get(user, path)? {
            Some(r) if untouched_since(&r, cutoff) => r,
            _ => return Ok(Outcome::Skipped("the record changed since the scan")),
        };
        let home = match Dir::open_ambient_dir(self.root.join(user), cap_std::ambient_authority()) {
            Ok(home) => home,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.forget(user, path),
            Err(e) => return Err(e.into()),
        };
        let rel = paths::relative(path);
        let seen = match home.symlink_metadata(rel) {
            Ok(meta) => Seen::of(&meta),
            Err(e) if gone(&e) => return self.forget(user, path),
            Err(e) => return Err(e.into()),
        };
        let Seen::File { len, id } = seen else {
            return Ok(Outcome::Skipped("not a regular file"));
        };
        if !record.describes(len, id) {
            return Ok(Outcome::Skipped(
                "the file was changed behind the server's back",
            ));
        }
        if mtime(id.mtime_ns) >= cutoff {
            return Ok(Outcome::Skipped("the file was modified since the cutoff"));
        }
        match home.remove_file(rel) {
            Ok(()) => {}
            Err(e) if gone(&e) => return self.forget(user, path),
            Err(e) => return Err(e.into()),
        }
        // The record goes with its `expire` event, in one transaction.
        self.store
            .remove_and_journal(Kind::Expire, user, path, seen)?;
        Ok(Outcome::Expired)
    }

    /// The file is gone: the record goes with its `expire` event.
    fn forget(&self, user: &str, path: &str) -> Result<Outcome, ExpireError> {
        self.store
            .remove_and_journal(Kind::Expire, user, path, Seen::Unknown)?;
        Ok(Outcome::Forgotten)
    }

    /// Sweeps after [`Expiry::first`], then every [`Expiry::every`], until `stop`; spawn it
    /// once per server.
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(after = ?self.after, every = ?self.every(), "expiry of partial and mismatched files on");
        let mut wait = self.first();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            wait = self.every();
            let (this, token) = (self.clone(), stop.clone());
            let cutoff = SystemTime::now()
                .checked_sub(self.after)
                .unwrap_or(UNIX_EPOCH);
            match tokio::task::spawn_blocking(move || this.sweep_before(cutoff, &token)).await {
                // Files left alone are left alone every time: only changes are news.
                Ok(Ok(r)) if r.expired + r.forgotten + r.failed == 0 => {
                    tracing::debug!(report = ?r, "expiry: sweep done")
                }
                Ok(Ok(r)) => tracing::info!(report = ?r, "expiry: sweep done"),
                Ok(Err(e)) => tracing::warn!(error = %e, "expiry: cannot read the checksum store"),
                Err(e) => tracing::warn!(error = %e, "expiry: sweep failed"),
            }
        }
    }
}

/// A path that does not exist (or whose directory was replaced by a file: `ENOTDIR`, 20 on
/// Linux, macOS and the BSDs; `ErrorKind::NotADirectory` is newer than the crate's MSRV).
fn gone(e: &io::Error) -> bool {
    const ENOTDIR: i32 = 20;
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ENOTDIR)
}

/// Why one candidate could not be handled.
#[derive(Debug, thiserror::Error)]
enum ExpireError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::journal::{EventState, Journal};
    use crate::records::{FileId, RedbStore};

    struct Setup {
        _dir: tempfile::TempDir,
        root: PathBuf,
        store: Arc<dyn RecordStore>,
        writers: Arc<Writers>,
        expiry: Expiry,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("u/sub")).unwrap();
        let store: Arc<dyn RecordStore> = Arc::new(RedbStore::open(dir.path(), false).unwrap());
        let writers = Arc::new(Writers::default());
        let expiry = Expiry::new(
            store.clone(),
            writers.clone(),
            root.clone(),
            Duration::from_secs(3600),
        );
        Setup {
            _dir: dir,
            root,
            store,
            writers,
            expiry,
        }
    }

    impl Setup {
        /// Writes `user`'s file `path` and its record in `state`, as an upload leaves it.
        fn file(&self, user: &str, path: &str, bytes: &[u8], state: State) -> Record {
            let on_disk = self.root.join(user).join(path.trim_start_matches('/'));
            std::fs::write(&on_disk, bytes).unwrap();
            let meta = std::fs::metadata(&on_disk).unwrap();
            let r = Record {
                state,
                open: false,
                ..Record::opened(Some(1), bytes.len() as u64, crc_tools::crc32(bytes))
            }
            .at(FileId::of(&meta));
            self.store.put(user, path, &r).unwrap();
            r
        }

        fn exists(&self, user: &str, path: &str) -> bool {
            self.root
                .join(user)
                .join(path.trim_start_matches('/'))
                .exists()
        }

        /// A sweep that takes everything written so far as old.
        fn sweep_all(&self) -> Report {
            let cutoff = SystemTime::now() + Duration::from_secs(5);
            self.expiry
                .sweep_before(cutoff, &CancellationToken::new())
                .unwrap()
        }
    }

    #[test]
    fn partial_and_mismatched_files_go_with_their_records_and_an_event() {
        let s = setup();
        let partial = s.file("u", "/p.ts", b"partial bytes", State::Partial);
        s.file("u", "/sub/m.ts", b"mismatched", State::Mismatch);
        s.file("u", "/v.ts", b"verified", State::Verified);
        s.file("u", "/c.ts", b"complete", State::Complete);
        std::fs::write(s.root.join("u/untracked.ts"), b"no record").unwrap();

        let r = s.sweep_all();
        assert_eq!(
            r,
            Report {
                expired: 2,
                ..Report::default()
            }
        );
        for p in ["/p.ts", "/sub/m.ts"] {
            assert!(!s.exists("u", p), "{p} removed");
            assert!(
                s.store.get("u", p).unwrap().is_none(),
                "{p}'s record removed"
            );
        }
        for p in ["/v.ts", "/c.ts", "/untracked.ts"] {
            assert!(s.exists("u", p), "{p} kept");
        }
        assert!(s.store.get("u", "/v.ts").unwrap().is_some());
        assert!(s.store.get("u", "/c.ts").unwrap().is_some());

        let journal = Journal::new(s.store.clone(), Duration::from_secs(86_400));
        let events = journal.since(0, 10).unwrap();
        assert_eq!(events.len(), 2);
        let e = &events[0];
        assert_eq!(
            (e.kind, e.path.as_str(), e.state, e.size, e.crc),
            (
                Kind::Expire,
                "/p.ts",
                EventState::Interrupted,
                partial.size,
                Some(partial.crc)
            )
        );
        assert_eq!(
            (events[1].kind, events[1].state),
            (Kind::Expire, EventState::Mismatch)
        );
        assert_eq!(s.sweep_all(), Report::default(), "nothing left to do");
    }

    #[test]
    fn recent_files_stay() {
        let s = setup();
        s.file("u", "/p.ts", b"partial", State::Partial);
        assert_eq!(s.expiry.sweep().unwrap(), Report::default());
        let past = SystemTime::now() - Duration::from_secs(60);
        let r = s
            .expiry
            .sweep_before(past, &CancellationToken::new())
            .unwrap();
        assert_eq!(r, Report::default());
        assert!(s.exists("u", "/p.ts"));
    }

    #[test]
    fn a_file_with_a_newer_mtime_than_the_cutoff_stays() {
        let s = setup();
        let r = s.file("u", "/p.ts", b"partial", State::Partial);
        // The record is old, the file (as the record knows it) is not.
        let old = Record {
            updated: SystemTime::now() - Duration::from_secs(7200),
            ..r
        };
        s.store.put("u", "/p.ts", &old).unwrap();
        let cutoff = SystemTime::now() - Duration::from_secs(3600);
        let got = s
            .expiry
            .sweep_before(cutoff, &CancellationToken::new())
            .unwrap();
        assert_eq!(got.skipped, 1, "{got:?}");
        assert!(s.exists("u", "/p.ts"));
    }

    #[test]
    fn busy_changed_and_open_files_are_left_alone() {
        let s = setup();
        s.file("u", "/busy.ts", b"busy", State::Partial);
        s.file("u", "/changed.ts", b"changed", State::Mismatch);
        let open = Record::opened(None, 4, 1);
        std::fs::write(s.root.join("u/open.ts"), b"open").unwrap();
        s.store.put("u", "/open.ts", &open).unwrap();
        // Changed behind the server's back: other length.
        std::fs::write(s.root.join("u/changed.ts"), b"changed and longer").unwrap();

        let upload = s
            .writers
            .try_acquire(("u".into(), "/busy.ts".into()))
            .unwrap();
        let r = s.sweep_all();
        assert_eq!(
            (r.expired, r.busy, r.skipped),
            (0, 1, 1),
            "the open record is no candidate: {r:?}"
        );
        assert!(!upload.stop.is_cancelled(), "the upload was not disturbed");
        for p in ["/busy.ts", "/changed.ts", "/open.ts"] {
            assert!(s.exists("u", p), "{p}");
            assert!(s.store.get("u", p).unwrap().is_some(), "{p}'s record");
        }
        drop(upload);
        assert_eq!(s.sweep_all().expired, 1, "free now");
        assert!(!s.exists("u", "/busy.ts"));
    }

    #[test]
    fn a_file_already_gone_loses_its_record() {
        let s = setup();
        s.file("u", "/p.ts", b"partial", State::Partial);
        std::fs::remove_file(s.root.join("u/p.ts")).unwrap();
        // A user whose home is gone altogether.
        std::fs::create_dir_all(s.root.join("w")).unwrap();
        s.file("w", "/m.ts", b"x", State::Mismatch);
        std::fs::remove_dir_all(s.root.join("w")).unwrap();
        let r = s.sweep_all();
        assert_eq!(r.forgotten, 2, "{r:?}");
        assert!(s.store.get("u", "/p.ts").unwrap().is_none());
        assert!(s.store.get("w", "/m.ts").unwrap().is_none());
        let journal = Journal::new(s.store.clone(), Duration::from_secs(86_400));
        let events = journal.since(0, 10).unwrap();
        assert!(events.iter().all(|e| e.kind == Kind::Expire), "{events:?}");
        assert_eq!(events[0].state, EventState::Interrupted);
    }

    #[test]
    fn symlinks_and_directories_are_not_removed() {
        let s = setup();
        let r = s.file("u", "/target.ts", b"target", State::Complete);
        std::os::unix::fs::symlink("target.ts", s.root.join("u/link.ts")).unwrap();
        s.store
            .put(
                "u",
                "/link.ts",
                &Record {
                    state: State::Partial,
                    ..r
                },
            )
            .unwrap();
        let rep = s.sweep_all();
        assert_eq!(rep.skipped, 1, "{rep:?}");
        assert!(s.exists("u", "/target.ts"));
        assert!(s.root.join("u/link.ts").symlink_metadata().is_ok());
    }

    #[test]
    fn the_sweep_interval_follows_the_expiry() {
        let e = |secs: f64| {
            let s = setup();
            Expiry::new(s.store, s.writers, s.root, Duration::from_secs_f64(secs))
        };
        assert_eq!(e(168.0 * 3600.0).every(), Duration::from_secs(3600));
        assert_eq!(e(168.0 * 3600.0).first(), Duration::from_secs(60));
        assert_eq!(e(600.0).every(), Duration::from_secs(60));
        assert_eq!(e(3.6).every(), Duration::from_secs(1));
        assert_eq!(e(3.6).first(), Duration::from_secs(1));
    }

    #[test]
    fn records_can_be_listed_by_user() {
        let s = setup();
        std::fs::create_dir_all(s.root.join("u2")).unwrap();
        std::fs::create_dir_all(s.root.join("v")).unwrap();
        s.file("u", "/a", b"a", State::Partial);
        s.file("u2", "/b", b"b", State::Verified);
        s.file("v", "/c", b"c", State::Partial);
        let all = s.store.records(None, &|_| true).unwrap();
        let names: Vec<(&str, &str)> = all
            .iter()
            .map(|(u, p, _)| (u.as_str(), p.as_str()))
            .collect();
        assert_eq!(names, [("u", "/a"), ("u2", "/b"), ("v", "/c")]);
        let u = s.store.records(Some("u"), &|_| true).unwrap();
        assert_eq!(u.len(), 1, "not u2's: {u:?}");
        let partial = s
            .store
            .records(None, &|r| r.state == State::Partial)
            .unwrap();
        assert_eq!(partial.len(), 2);
    }
}
