//! A [`Record`] as the columns of `ftpd_records`, so that operators can read them with psql.

use crate::records::{FileId, Record};
use crc_tools::State;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// The record's columns as a select list, `updated` as milliseconds since the epoch (what the
/// embedded store keeps too).
pub const SELECT: &str = "declared, size, crc, state, open, \
     floor(extract(epoch FROM updated) * 1000)::int8, file_ino, file_mtime_ns";

/// The column names, in the order of [`Values::params`].
pub const NAMES: &str = "declared, size, crc, state, open, updated, file_ino, file_mtime_ns";

/// The SQL expressions for [`NAMES`] with the values in parameters `$first..`.
pub fn placeholders(first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    format!(
        "{}, {}, {}, {}, {}, timestamptz 'epoch' + {}::int8 * interval '1 millisecond', {}, {}",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7)
    )
}

/// `SET` clause of an upsert: every column from the proposed row.
pub const UPDATE_ALL: &str = "declared = EXCLUDED.declared, size = EXCLUDED.size, \
     crc = EXCLUDED.crc, state = EXCLUDED.state, open = EXCLUDED.open, \
     updated = EXCLUDED.updated, file_ino = EXCLUDED.file_ino, \
     file_mtime_ns = EXCLUDED.file_mtime_ns";

/// A record's column values, owned so that they can travel to the store's runtime.
#[derive(Clone, Debug)]
pub struct Values {
    declared: Option<i64>,
    size: i64,
    crc: i64,
    state: &'static str,
    open: bool,
    updated_ms: i64,
    ino: i64,
    mtime_ns: i64,
}

impl Values {
    pub fn of(r: &Record) -> Self {
        Values {
            declared: r.declared.map(i64::from),
            // Two's complement: every u64 round-trips through a bigint.
            size: r.size as i64,
            crc: i64::from(r.crc),
            state: r.state.as_str(),
            open: r.open,
            updated_ms: millis(r.updated),
            ino: r.file.ino as i64,
            mtime_ns: r.file.mtime_ns,
        }
    }

    /// The values in the order of [`NAMES`].
    pub fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.declared,
            &self.size,
            &self.crc,
            &self.state,
            &self.open,
            &self.updated_ms,
            &self.ino,
            &self.mtime_ns,
        ]
    }
}

/// Milliseconds since the epoch (0 before it), as [`Record::encode`] keeps the time.
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The record in the [`SELECT`] columns of `row` from column `first` on; `Err` says why it
/// cannot be read (the caller logs it and takes the file as untracked, as for a damaged
/// record of the embedded store).
pub fn record(row: &Row, first: usize) -> Result<Record, String> {
    let get_i64 = |i: usize| -> Result<i64, String> {
        row.try_get::<_, i64>(first + i)
            .map_err(|e| format!("column {}: {e}", first + i))
    };
    let declared = row
        .try_get::<_, Option<i64>>(first)
        .map_err(|e| format!("declared: {e}"))?
        .map(|d| u32::try_from(d).map_err(|_| format!("declared {d} is not a CRC-32")))
        .transpose()?;
    let crc = get_i64(2)?;
    let state: String = row.try_get(first + 3).map_err(|e| format!("state: {e}"))?;
    let updated_ms = get_i64(5)?;
    Ok(Record {
        declared,
        size: get_i64(1)? as u64,
        crc: u32::try_from(crc).map_err(|_| format!("crc {crc} is not a CRC-32"))?,
        state: state
            .parse::<State>()
            .map_err(|_| format!("unknown state '{state}'"))?,
        open: row.try_get(first + 4).map_err(|e| format!("open: {e}"))?,
        updated: match u64::try_from(updated_ms) {
            Ok(ms) => UNIX_EPOCH
                .checked_add(Duration::from_millis(ms))
                .ok_or("updated is out of range")?,
            Err(_) => UNIX_EPOCH,
        },
        file: FileId {
            ino: get_i64(6)? as u64,
            mtime_ns: get_i64(7)?,
        },
    })
}
