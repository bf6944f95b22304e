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
}

const VERSION: u8 = 1;
/// Encoded length: version, flags, state, declared, crc, size, updated (ms).
pub const ENCODED_LEN: usize = 1 + 1 + 1 + 4 + 4 + 8 + 8;

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
        }
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
        })
    }

    /// RFC 3339 time of the last change, as KEY INFO shows it.
    pub fn updated_rfc3339(&self) -> String {
        humantime::format_rfc3339_seconds(self.updated).to_string()
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
            };
            assert_eq!(Record::decode(&r.encode()), Ok(r));
        }
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
