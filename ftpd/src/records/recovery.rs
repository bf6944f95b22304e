//! Start-up reconciliation of uploads a crash cut short.
//!
//! A record still marked open belongs to a transfer that never reached its end. Its size and
//! CRC are those of the last checkpoint; the file may hold more bytes written since (a killed
//! process leaves them in the page cache). Those extra bytes are read once and counted, so the
//! record again describes exactly the bytes in the file.
//!
//! Each reconciled record is written with the `upload` event of the upload's end (state
//! `interrupted`, or `verified` when the bytes stored match the declared CRC), in one
//! transaction, so that no upload's end is missing from the journal.

use crate::paths;
use crate::records::journal::{Kind, Seen};
use crate::records::store::while_claimed;
use crate::records::{FileId, Lease, Record, RecordStore, StoreError};
use crc_tools::{combine, crc_of_file_range, State};
use std::io;
use std::path::Path;
use std::time::SystemTime;

/// What reconciliation did, for the start-up log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub reconciled: usize,
    pub removed: usize,
    pub bytes_read: u64,
    /// Open records another node's live claim covers: uploads running there.
    pub held_elsewhere: usize,
}

/// Why one record could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Brings every open record in line with its file under `root/<user>/` (one node, at start).
pub fn recover(store: &dyn RecordStore, root: &Path) -> Result<Report, StoreError> {
    recover_as(store, root, "recovery", std::time::Duration::from_secs(15))
}

/// As [`recover`], claiming each file as `holder` for `ttl` first: with a shared store, open
/// records whose writer is alive on another node are left to it, and those of a dead writer
/// are reconciled by whichever node gets to them first.
pub fn recover_as(
    store: &dyn RecordStore,
    root: &Path,
    holder: &str,
    ttl: std::time::Duration,
) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for (user, path, _) in store.open_records()? {
        let done = while_claimed(store, (&user, &path), holder, ttl, |lease| {
            recover_one(store, root, &user, &path, lease, &mut report)
        })?;
        if done.is_none() {
            report.held_elsewhere += 1;
        }
    }
    Ok(report)
}

/// Reconciles the record of `path` if it is still open, under `lease`.
fn recover_one(
    store: &dyn RecordStore,
    root: &Path,
    user: &str,
    path: &str,
    lease: &Lease,
    report: &mut Report,
) -> Result<(), StoreError> {
    // Read again under the claim: the writer may have closed it meanwhile.
    let Some(rec) = store.get(user, path)?.filter(|r| r.open) else {
        return Ok(());
    };
    let file = cap_std::fs::Dir::open_ambient_dir(root.join(user), cap_std::ambient_authority())
        .and_then(|home| home.open(paths::relative(path)))
        .map(|f| f.into_std());
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The upload ends here too: its event says what its last checkpoint held.
            store.remove_and_journal(Kind::Upload, user, path, Seen::Unknown)?;
            report.removed += 1;
            return Ok(());
        }
        Err(e) => {
            tracing::error!(%user, %path, error = %e, "cannot reconcile interrupted upload");
            return Ok(());
        }
    };
    match reconcile_file(store, &file, user, path, rec, lease) {
        Ok((_, read)) => {
            report.reconciled += 1;
            report.bytes_read += read;
        }
        Err(ReconcileError::Store(e)) => return Err(e),
        Err(ReconcileError::Io(e)) => {
            tracing::error!(%user, %path, error = %e, "cannot reconcile interrupted upload")
        }
    }
    Ok(())
}

/// Brings `rec`, the open record of `file`, in line with the bytes the file holds: those past
/// the last checkpoint are read once and counted. The result is written with the upload's
/// `upload` event while `lease` is the file's claim; returns it and the bytes read.
pub fn reconcile_file(
    store: &dyn RecordStore,
    file: &std::fs::File,
    user: &str,
    path: &str,
    rec: Record,
    lease: &Lease,
) -> Result<(Record, u64), ReconcileError> {
    let mut buf = vec![0u8; 1 << 20];
    let meta = file.metadata()?;
    let len = meta.len();
    let id = FileId::of(&meta);
    let (size, crc, read) = if len >= rec.size {
        let tail = crc_of_file_range(file, rec.size..len, &mut buf)?;
        (len, combine(rec.crc, tail, len - rec.size), len - rec.size)
    } else {
        // Only possible when data was not fsynced before a power cut: recount it all.
        (len, crc_of_file_range(file, 0..len, &mut buf)?, len)
    };
    let state = if rec.declared == Some(crc) {
        State::Verified
    } else {
        State::Partial
    };
    let fixed = Record {
        size,
        crc,
        state,
        open: false,
        updated: SystemTime::now(),
        file: id,
        ..rec
    };
    store.end_upload_fenced(user, path, &fixed, lease)?;
    tracing::info!(%user, %path, size, recorded = rec.size, %state, "reconciled interrupted upload");
    Ok((fixed, read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::store::RedbStore;
    use crc_tools::crc32;

    #[test]
    fn counts_bytes_written_after_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("u")).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31) as u8).collect();
        std::fs::write(root.join("u/a.ts"), &data).unwrap();
        std::fs::write(root.join("u/short.ts"), &data[..100]).unwrap();
        let store = RedbStore::open(dir.path(), false).unwrap();
        store
            .put(
                "u",
                "/a.ts",
                &Record::opened(Some(crc32(&data)), 4096, crc32(&data[..4096])),
            )
            .unwrap();
        store
            .put("u", "/short.ts", &Record::opened(None, 5000, 1))
            .unwrap();
        store
            .put("u", "/gone.ts", &Record::opened(None, 1, 1))
            .unwrap();

        let report = recover(&store, &root).unwrap();
        assert_eq!(report.reconciled, 2);
        assert_eq!(report.removed, 1);
        let a = store.get("u", "/a.ts").unwrap().unwrap();
        assert_eq!(
            (a.size, a.crc, a.open, a.state),
            (10_000, crc32(&data), false, State::Verified)
        );
        let s = store.get("u", "/short.ts").unwrap().unwrap();
        assert_eq!(
            (s.size, s.crc, s.state),
            (100, crc32(&data[..100]), State::Partial)
        );
        assert!(store.open_records().unwrap().is_empty());

        // Each upload's end is journaled, with the record it left.
        let page = store.journal_page(0, 10).unwrap();
        let events: Vec<_> = page
            .events
            .iter()
            .map(|(_, j)| crate::records::journal::Event::from_json(j).unwrap())
            .map(|e| (e.seq, e.kind, e.path, e.size, e.crc, e.state))
            .collect();
        use crate::records::journal::EventState::{Interrupted, Verified};
        assert_eq!(
            events,
            [
                (
                    1,
                    Kind::Upload,
                    "/a.ts".into(),
                    10_000,
                    Some(crc32(&data)),
                    Verified
                ),
                (2, Kind::Upload, "/gone.ts".into(), 1, Some(1), Interrupted),
                (
                    3,
                    Kind::Upload,
                    "/short.ts".into(),
                    100,
                    Some(crc32(&data[..100])),
                    Interrupted
                ),
            ]
        );
        assert_eq!(
            recover(&store, &root).unwrap(),
            Report::default(),
            "nothing left to do"
        );
        assert_eq!(store.journal_page(0, 10).unwrap().last, 3, "journaled once");
    }

    #[test]
    fn an_undecodable_record_does_not_stop_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("u")).unwrap();
        std::fs::write(root.join("u/a.ts"), b"0123456789").unwrap();
        {
            let store = RedbStore::open(dir.path(), false).unwrap();
            store
                .put("u", "/a.ts", &Record::opened(None, 4, crc32(b"0123")))
                .unwrap();
        }
        {
            // A record of a newer version, as a rollback leaves it, for a file that exists.
            std::fs::write(root.join("u/new.ts"), b"x").unwrap();
            let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("records");
            let db = redb::Database::create(dir.path().join("records.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(table)
                .unwrap()
                .insert("u\0/new.ts", [3u8, 2, 0, 0, 0].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = RedbStore::open(dir.path(), false).unwrap();
        let report = recover(&store, &root).unwrap();
        assert_eq!(report.reconciled, 1);
        let a = store.get("u", "/a.ts").unwrap().unwrap();
        assert_eq!((a.size, a.crc), (10, crc32(b"0123456789")));
        assert!(store.get("u", "/new.ts").unwrap().is_none(), "untracked");
    }
}
