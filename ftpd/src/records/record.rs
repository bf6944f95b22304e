//! What the server remembers of one uploaded file, and its fixed binary encoding.

use crc_tools::State;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The checksum record of one file of one user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The CRC the client declared for the whole file, if it declared one.
    pub declared: Option<u32>,
    /// Bytes of the file that the record describes (the stored size).
    pub size: u64,
    /// CRC of those `size` bytes.
    pub crc: u32,
    /// Where the upload stands.
    pub state: State,
    /// True while an upload is writing; a record still open at start-up belongs to a
    /// transfer that a crash interrupted and is reconciled with the file.
    pub open: bool,
    /// When the record last changed.
    pub updated: SystemTime,
    /// The file the record was written for; a file changed behind the server's back (same
    /// size, other bytes) no longer matches, so its record is not trusted.
    pub file: FileId,
}

/// Identity of a file's content as the filesystem tracks it: inode and modification time.
/// A rename keeps both; any write, truncation or replacement changes one of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileId {
    pub ino: u64,
    pub mtime_ns: i64,
}

impl FileId {
    /// From the three values Unix metadata carries.
    pub fn new(ino: u64, mtime: i64, mtime_nsec: i64) -> Self {
        FileId {
            ino,
            mtime_ns: mtime
                .saturating_mul(1_000_000_000)
                .saturating_add(mtime_nsec),
        }
    }

    /// Of an open file or a path's metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileId::new(meta.ino(), meta.mtime(), meta.mtime_nsec())
    }
}

const VERSION: u8 = 2;
/// Encoded length: version, flags, state, declared, crc, size, updated (ms), inode, mtime (ns).
pub const ENCODED_LEN: usize = 1 + 1 + 1 + 4 + 4 + 8 + 8 + 8 + 8;

/// A stored record that cannot be decoded (written by a newer server, or damaged).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("undecodable checksum record ({0})")]
pub struct DecodeError(&'static str);

impl Record {
    /// A fresh record for an upload that starts at `size` bytes with prefix CRC `crc`.
    pub fn opened(declared: Option<u32>, size: u64, crc: u32) -> Self {
        Record {
            declared,
            size,
            crc,
            state: State::Partial,
            open: true,
            updated: SystemTime::now(),
            file: FileId::default(),
        }
    }

    /// The same record, written for the file `file`.
    pub fn at(self, file: FileId) -> Self {
        Record { file, ..self }
    }

    /// True when the record describes exactly this file: same length, same identity.
    pub fn describes(&self, len: u64, file: FileId) -> bool {
        self.size == len && self.file == file
    }

    /// Fixed little-endian layout, so records stay small and need no schema crate.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0] = VERSION;
        out[1] = u8::from(self.declared.is_some()) | (u8::from(self.open) << 1);
        out[2] = state_code(self.state);
        out[3..7].copy_from_slice(&self.declared.unwrap_or(0).to_le_bytes());
        out[7..11].copy_from_slice(&self.crc.to_le_bytes());
        out[11..19].copy_from_slice(&self.size.to_le_bytes());
        let ms = self
            .updated
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        out[19..27].copy_from_slice(&ms.to_le_bytes());
        out[27..35].copy_from_slice(&self.file.ino.to_le_bytes());
        out[35..43].copy_from_slice(&self.file.mtime_ns.to_le_bytes());
        out
    }

    /// Reads what [`Record::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != ENCODED_LEN {
            return Err(DecodeError("wrong length"));
        }
        if bytes[0] != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let flags = bytes[1];
        Ok(Record {
            declared: (flags & 1 != 0).then(|| u32_at(3)),
            open: flags & 2 != 0,
            state: state_from_code(bytes[2]).ok_or(DecodeError("unknown state"))?,
            crc: u32_at(7),
            size: u64_at(11),
            updated: UNIX_EPOCH + Duration::from_millis(u64_at(19)),
            file: FileId {
                ino: u64_at(27),
                mtime_ns: u64_at(35) as i64,
            },
        })
    }

    /// RFC 3339 time of the last change, as KEY INFO shows it.
    pub fn updated_rfc3339(&self) -> String {
        // humantime shows 1970 to 9999 only (outside it `to_string` panics); a damaged record
        // can decode to any time up to `u64::MAX` ms, so the time is clamped to that range.
        const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
        let updated = self.updated.clamp(
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_secs(LAST_SECOND_OF_9999),
        );
        humantime::format_rfc3339_seconds(updated).to_string()
    }
}

fn state_code(s: State) -> u8 {
    match s {
        State::Partial => 0,
        State::Complete => 1,
        State::Verified => 2,
        State::Mismatch => 3,
        State::Untracked => 4,
    }
}

fn state_from_code(c: u8) -> Option<State> {
    Some(match c {
        0 => State::Partial,
        1 => State::Complete,
        2 => State::Verified,
        3 => State::Mismatch,
        4 => State::Untracked,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        for (declared, state, open) in [
            (None, State::Partial, true),
            (Some(0), State::Verified, false),
            (Some(0x5F2D3A26), State::Mismatch, false),
        ] {
            let r = Record {
                declared,
                size: 4 << 30,
                crc: 0xDEADBEEF,
                state,
                open,
                updated: t,
                file: FileId::new(77, 1_790_000_000, 123_456_789),
            };
            assert_eq!(Record::decode(&r.encode()), Ok(r));
        }
    }

    /// Found by fuzzing: a damaged `updated` field made KEY INFO panic.
    #[test]
    fn any_decoded_time_can_be_shown() {
        let mut bytes = Record::opened(None, 1, 2).encode();
        bytes[19..27].copy_from_slice(&u64::MAX.to_le_bytes());
        let r = Record::decode(&bytes).expect("decodes");
        assert_eq!(r.updated_rfc3339(), "9999-12-31T23:59:59Z");
        let before = Record {
            updated: UNIX_EPOCH - Duration::from_secs(1),
            ..r
        };
        assert_eq!(before.updated_rfc3339(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn rejects_damage() {
        let r = Record::opened(None, 1, 2).encode();
        assert!(Record::decode(&r[..5]).is_err());
        let mut bad = r;
        bad[0] = 9;
        assert!(Record::decode(&bad).is_err());
        let mut bad = r;
        bad[2] = 77;
        assert!(Record::decode(&bad).is_err());
    }
}
