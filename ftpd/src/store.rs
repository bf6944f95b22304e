//! The checksum store: one [`Record`] per (user, path), durable across crashes.
//!
//! Behind the [`RecordStore`] trait so that a shared store can later serve several nodes; the
//! embedded default is [`RedbStore`], a single file in the state directory (redb commits are
//! crash-safe and fsynced). Records live outside every user's root, so FTP cannot see them.

use crate::record::Record;
use redb::backends::FileBackend;
use redb::{Database, ReadableTable, StorageBackend, TableDefinition};
use std::path::Path;

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// A store failure (I/O, corruption); the FTP reply to it is a local error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Boxed: redb's error is large, and this travels through every storage call.
    #[error("checksum store: {0}")]
    Db(Box<redb::Error>),
    #[error(transparent)]
    Decode(#[from] crate::record::DecodeError),
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

/// Where records are kept. Paths are normalised, absolute within the user's root (`/a/b.ts`).
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
    fn open_records(&self) -> Result<Vec<(String, String, Record)>, StoreError>;
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

/// The embedded store.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    durable: bool,
}

impl RedbStore {
    /// Opens (or creates) `state_dir/records.redb`. With `durable` false, commits skip fsync.
    pub fn open(state_dir: &Path, durable: bool) -> Result<Self, StoreError> {
        let path = state_dir.join("records.redb");
        let db = if durable {
            Database::create(path)?
        } else {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| StoreError::Db(Box::new(e.into())))?;
            Database::builder().create_with_backend(NoSync(FileBackend::new(file)?))?
        };
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.commit()?;
        Ok(RedbStore { db, durable })
    }

    fn write_txn(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        if !self.durable {
            txn.set_durability(redb::Durability::Eventual);
        }
        Ok(txn)
    }
}

impl RecordStore for RedbStore {
    fn get(&self, user: &str, path: &str) -> Result<Option<Record>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let value = table.get(key(user, path).as_str())?;
        Ok(match value {
            Some(v) => Some(Record::decode(v.value())?),
            None => None,
        })
    }

    fn put(&self, user: &str, path: &str, record: &Record) -> Result<(), StoreError> {
        let txn = self.write_txn()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            table.insert(key(user, path).as_str(), record.encode().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn remove(&self, user: &str, path: &str) -> Result<(), StoreError> {
        let txn = self.write_txn()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            table.remove(key(user, path).as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn rename(&self, user: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let txn = self.write_txn()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            let mut moves: Vec<(String, Vec<u8>)> = Vec::new();
            if let Some(v) = table.remove(key(user, from).as_str())? {
                moves.push((key(user, to), v.value().to_vec()));
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
        }
        txn.commit()?;
        Ok(())
    }

    fn open_records(&self) -> Result<Vec<(String, String, Record)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let record = Record::decode(v.value())?;
            if record.open {
                if let Some((user, path)) = k.value().split_once('\0') {
                    out.push((user.to_string(), path.to_string(), record));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crc_tools::State;

    fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path(), false).unwrap();
        (dir, s)
    }

    #[test]
    fn put_get_remove() {
        let (_d, s) = store();
        let r = Record::opened(Some(7), 10, 99);
        s.put("alice", "/a.ts", &r).unwrap();
        assert_eq!(s.get("alice", "/a.ts").unwrap().unwrap().crc, 99);
        assert!(
            s.get("bob", "/a.ts").unwrap().is_none(),
            "users are isolated"
        );
        s.remove("alice", "/a.ts").unwrap();
        assert!(s.get("alice", "/a.ts").unwrap().is_none());
    }

    #[test]
    fn rename_moves_files_and_directories_only() {
        let (_d, s) = store();
        let r = Record::opened(None, 1, 1);
        for p in ["/d/x", "/d/sub/y", "/d0", "/dx/z", "/d"] {
            s.put("u", p, &r).unwrap();
        }
        s.rename("u", "/d", "/e").unwrap();
        for p in ["/e/x", "/e/sub/y", "/e", "/d0", "/dx/z"] {
            assert!(s.get("u", p).unwrap().is_some(), "{p} should exist");
        }
        for p in ["/d/x", "/d/sub/y", "/d"] {
            assert!(s.get("u", p).unwrap().is_none(), "{p} should be gone");
        }
    }

    #[test]
    fn open_records_lists_interrupted_uploads() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path(), true).unwrap();
            s.put("u", "/open", &Record::opened(None, 5, 5)).unwrap();
            let mut closed = Record::opened(None, 5, 5);
            closed.open = false;
            closed.state = State::Complete;
            s.put("u", "/closed", &closed).unwrap();
        }
        let s = RedbStore::open(dir.path(), true).unwrap();
        let open = s.open_records().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].1, "/open");
    }
}
