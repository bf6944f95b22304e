//! May this upload start where it asks? The resume guards as a pure function of what the
//! server found, so that every branch can be tested from plain values; `open` does the I/O.
//!
//! The rules: an upload starts at or below the stored size; a resume keeps the stored bytes
//! only under the declaration they were stored with; a record counts only while it describes
//! the file exactly (a file changed behind the server's back has no record).

use super::UploadError;
use crate::records::{FileId, Record};
use crc_tools::{KeyValue, State};

/// What the open found at the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    /// A regular file (not a directory, device or FIFO).
    pub is_file: bool,
    pub len: u64,
    pub id: FileId,
    /// This upload's open created it.
    pub created: bool,
}

impl Disk {
    pub fn of(meta: &std::fs::Metadata, created: bool) -> Self {
        Disk {
            is_file: meta.is_file(),
            len: meta.len(),
            id: FileId::of(meta),
            created,
        }
    }
}

/// How the prefix CRC (of the bytes before `start_pos`) is had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// Without reading: 0 for an upload from 0, or the record's CRC for a resume at its size.
    Known(u32),
    /// By reading the first `len` bytes (REST below the stored size, or no record).
    Read { len: u64 },
}

/// How an accepted upload begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub prefix: Prefix,
    /// The declaration the upload is verified against (see [`carried_over`]).
    pub declared: Option<u32>,
    /// The file is longer than the start: cut it there.
    pub cut: bool,
    /// The open created the file: its directory entry must be made durable.
    pub new_file: bool,
}

/// The refusals that need no record: not a file, or REST beyond its end. Asked first, so that
/// these are refused without reading the store.
pub fn admit(start_pos: u64, disk: &Disk) -> Result<(), UploadError> {
    if !disk.is_file {
        return Err(UploadError::NotAFile);
    }
    if start_pos > disk.len {
        return Err(UploadError::RestBeyondEnd {
            rest: start_pos,
            size: disk.len,
        });
    }
    Ok(())
}

/// The guard: whether an upload from `start_pos` that declared `declared` may write over
/// `disk`, whose stored record is `record`, and how it begins.
pub fn guard(
    start_pos: u64,
    disk: &Disk,
    record: Option<&Record>,
    declared: Option<u32>,
) -> Result<Plan, UploadError> {
    admit(start_pos, disk)?;
    // A record of other bytes (changed behind the server's back) is no record at all.
    let record = record.filter(|r| r.describes(disk.len, disk.id));
    if start_pos > 0 {
        if let (Some(stored), Some(mine)) = (record.and_then(|r| r.declared), declared) {
            if stored != mine {
                return Err(UploadError::KeyConflict {
                    stored: KeyValue(stored),
                    declared: KeyValue(mine),
                });
            }
        }
    }
    let prefix = match record {
        _ if start_pos == 0 => Prefix::Known(0),
        Some(r) if r.size == start_pos => Prefix::Known(r.crc),
        _ => Prefix::Read { len: start_pos },
    };
    Ok(Plan {
        prefix,
        declared: declared.or_else(|| carried_over(record, start_pos)),
        cut: disk.len != start_pos,
        new_file: disk.created,
    })
}

/// The file's declared KEY for an upload that declares none: a declaration survives until a
/// different one is made. A resume (offset above 0) keeps it, and so does an upload from 0
/// onto an unfinished upload (`partial`, `mismatch`), whose stored size may well be 0: the
/// box is still sending the file it declared. A finished file stored again from 0 is a new,
/// undeclared file, as with any FTP server.
pub fn carried_over(record: Option<&Record>, start_pos: u64) -> Option<u32> {
    let record = record?;
    let unfinished = matches!(record.state, State::Partial | State::Mismatch);
    if start_pos > 0 || unfinished {
        record.declared
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    const A: u32 = 0x5F2D_3A26;
    const B: u32 = 0x1234_5678;
    const ID: FileId = FileId {
        ino: 7,
        mtime_ns: 1_790_000_000_000_000_000,
    };

    /// A regular file of `len` bytes that was there before the upload.
    fn file(len: u64) -> Disk {
        Disk {
            is_file: true,
            len,
            id: ID,
            created: false,
        }
    }

    fn record(state: State, size: u64) -> Record {
        Record {
            declared: Some(A),
            size,
            crc: 0,
            state,
            open: false,
            updated: SystemTime::UNIX_EPOCH,
            file: FileId::default(),
        }
    }

    /// A record of `file(size)`, declared `A`, with CRC `0xC`.
    fn stored(state: State, size: u64) -> Option<Record> {
        Some(Record {
            crc: 0xC,
            file: ID,
            ..record(state, size)
        })
    }

    /// One upload from `start_pos`, declaring `declared`, onto `disk` with `record`.
    struct Case {
        what: &'static str,
        start_pos: u64,
        disk: Disk,
        record: Option<Record>,
        declared: Option<u32>,
    }

    fn case(
        what: &'static str,
        start_pos: u64,
        disk: Disk,
        record: Option<Record>,
        declared: Option<u32>,
    ) -> Case {
        Case {
            what,
            start_pos,
            disk,
            record,
            declared,
        }
    }

    impl Case {
        fn guard(&self) -> Result<Plan, UploadError> {
            guard(
                self.start_pos,
                &self.disk,
                self.record.as_ref(),
                self.declared,
            )
        }
    }

    fn plan(prefix: Prefix, declared: Option<u32>, cut: bool) -> Plan {
        Plan {
            prefix,
            declared,
            cut,
            new_file: false,
        }
    }

    fn read(len: u64) -> Prefix {
        Prefix::Read { len }
    }

    #[test]
    fn rest_beyond_the_end_is_refused() {
        let partial = stored(State::Partial, 100);
        for c in [
            case("no record", 101, file(100), None, None),
            case("a record", 101, file(100), partial, Some(A)),
            case("an empty file", 1, file(0), None, None),
            case("far beyond", u64::MAX, file(100), partial, None),
        ] {
            match c.guard() {
                Err(UploadError::RestBeyondEnd { rest, size }) => {
                    assert_eq!((rest, size), (c.start_pos, c.disk.len), "{}", c.what)
                }
                other => panic!("{}: {other:?}", c.what),
            }
            assert!(admit(c.start_pos, &c.disk).is_err(), "{}", c.what);
        }
    }

    /// A resume under another declaration than the stored bytes': at or below the stored size.
    #[test]
    fn a_key_conflict_is_refused() {
        for c in [
            case(
                "at the stored size",
                100,
                file(100),
                stored(State::Partial, 100),
                Some(B),
            ),
            case(
                "below it",
                40,
                file(100),
                stored(State::Partial, 100),
                Some(B),
            ),
            case(
                "a finished file",
                100,
                file(100),
                stored(State::Verified, 100),
                Some(B),
            ),
            case(
                "a mismatch",
                1,
                file(100),
                stored(State::Mismatch, 100),
                Some(B),
            ),
        ] {
            match c.guard() {
                Err(UploadError::KeyConflict { stored, declared }) => {
                    assert_eq!((stored, declared), (KeyValue(A), KeyValue(B)), "{}", c.what)
                }
                other => panic!("{}: {other:?}", c.what),
            }
            assert!(admit(c.start_pos, &c.disk).is_ok(), "{}", c.what);
        }
    }

    #[test]
    fn what_is_not_a_file_is_refused() {
        let other = Disk {
            is_file: false,
            ..file(4096)
        };
        for c in [
            case("from 0", 0, other, None, None),
            case("with REST", 5, other, stored(State::Partial, 4096), Some(A)),
            case("REST beyond its size", 5000, other, None, None),
        ] {
            assert!(
                matches!(c.guard(), Err(UploadError::NotAFile)),
                "{}",
                c.what
            );
            assert!(matches!(
                admit(c.start_pos, &c.disk),
                Err(UploadError::NotAFile)
            ));
        }
    }

    #[test]
    fn accepted_uploads_and_how_they_begin() {
        let (partial, complete) = (stored(State::Partial, 100), stored(State::Complete, 100));
        let new = Disk {
            created: true,
            ..file(0)
        };
        let new_plan = |declared| Plan {
            new_file: true,
            ..plan(Prefix::Known(0), declared, false)
        };
        let known = Prefix::Known(0xC);
        let zero = Prefix::Known(0);
        for (c, want) in [
            (case("new file", 0, new, None, Some(A)), new_plan(Some(A))),
            (case("new file, no KEY", 0, new, None, None), new_plan(None)),
            (
                case(
                    "resume at the stored size, same KEY",
                    100,
                    file(100),
                    partial,
                    Some(A),
                ),
                plan(known, Some(A), false),
            ),
            (
                case(
                    "resume below the stored size, same KEY",
                    40,
                    file(100),
                    partial,
                    Some(A),
                ),
                plan(read(40), Some(A), true),
            ),
            (
                case(
                    "resume without KEY keeps the stored one",
                    100,
                    file(100),
                    partial,
                    None,
                ),
                plan(known, Some(A), false),
            ),
            (
                case(
                    "resume of a finished file without KEY",
                    100,
                    file(100),
                    complete,
                    None,
                ),
                plan(known, Some(A), false),
            ),
            (
                case(
                    "resume of a file with no record",
                    40,
                    file(100),
                    None,
                    Some(B),
                ),
                plan(read(40), Some(B), true),
            ),
            (
                case(
                    "REST 0 onto a finished file: a new file",
                    0,
                    file(100),
                    complete,
                    None,
                ),
                plan(zero, None, true),
            ),
            (
                case(
                    "REST 0 with another KEY: no conflict",
                    0,
                    file(100),
                    partial,
                    Some(B),
                ),
                plan(zero, Some(B), true),
            ),
            (
                case(
                    "REST 0 onto a partial keeps its KEY",
                    0,
                    file(100),
                    partial,
                    None,
                ),
                plan(zero, Some(A), true),
            ),
            (
                case(
                    "zero-byte partial keeps its KEY",
                    0,
                    file(0),
                    stored(State::Partial, 0),
                    None,
                ),
                plan(zero, Some(A), false),
            ),
            (
                case(
                    "zero-byte mismatch keeps its KEY",
                    0,
                    file(0),
                    stored(State::Mismatch, 0),
                    None,
                ),
                plan(zero, Some(A), false),
            ),
        ] {
            assert_eq!(c.guard().ok(), Some(want), "{}", c.what);
        }
    }

    /// A record that does not describe the file (other length or identity: changed behind the
    /// server's back) is no record: its KEY neither conflicts nor carries over, and its CRC is
    /// not used.
    #[test]
    fn a_record_of_other_bytes_is_no_record() {
        let records = [
            ("other length", stored(State::Partial, 90)),
            (
                "other inode",
                stored(State::Partial, 100).map(|r| Record {
                    file: FileId { ino: 8, ..ID },
                    ..r
                }),
            ),
            (
                "other mtime",
                stored(State::Partial, 100).map(|r| Record {
                    file: FileId { mtime_ns: 1, ..ID },
                    ..r
                }),
            ),
        ];
        for (what, rec) in records {
            for (start_pos, declared, want) in [
                (100, Some(B), plan(read(100), Some(B), false)),
                (100, None, plan(read(100), None, false)),
                (40, None, plan(read(40), None, true)),
                (0, None, plan(Prefix::Known(0), None, true)),
            ] {
                let c = case(what, start_pos, file(100), rec, declared);
                assert_eq!(c.guard().ok(), Some(want), "{what} from {start_pos}");
            }
        }
    }

    #[test]
    fn a_declaration_survives_until_another_one_is_made_also_at_size_zero() {
        let kept = Some(A);
        for state in [State::Partial, State::Mismatch] {
            for size in [0, 100] {
                let r = record(state, size);
                assert_eq!(carried_over(Some(&r), 0), kept, "{state} of {size} bytes");
                assert_eq!(carried_over(Some(&r), size.max(1)), kept);
            }
        }
        // A finished file stored again from 0 is a new file; a resume onto it keeps the KEY.
        for state in [State::Complete, State::Verified] {
            assert_eq!(carried_over(Some(&record(state, 100)), 0), None, "{state}");
            assert_eq!(carried_over(Some(&record(state, 100)), 100), kept);
        }
        assert_eq!(carried_over(None, 0), None);
        assert_eq!(carried_over(None, 7), None);
    }
}
