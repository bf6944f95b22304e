//! The lines of the `KEY INFO` reply: one `name=value` per line.
//!
//! ```text
//! 213-KEY INFO rec.ts
//!  declared=0x5F2D3A26
//!  size=524288
//!  received-crc=0x1A2B3C4D
//!  state=partial
//!  updated=2026-11-22T03:04:05Z
//! 213 End
//! ```

use crate::value::{KeyAnswer, KeyValue};
use core::fmt;
use core::str::FromStr;

/// What the server knows of a file's upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Bytes are stored but the upload has not ended successfully (or is running now).
    Partial,
    /// The upload ended and no CRC was declared, so nothing could be checked.
    Complete,
    /// The upload ended and the whole file's CRC equals the declared one.
    Verified,
    /// The upload ended but the whole file's CRC differs from the declared one.
    Mismatch,
    /// The file exists but the server holds no record of it (it was not uploaded through FTP,
    /// or was changed behind the server's back).
    Untracked,
}

impl State {
    /// The word used on the wire and in the store.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Partial => "partial",
            State::Complete => "complete",
            State::Verified => "verified",
            State::Mismatch => "mismatch",
            State::Untracked => "untracked",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownState;

impl FromStr for State {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "partial" => State::Partial,
            "complete" => State::Complete,
            "verified" => State::Verified,
            "mismatch" => State::Mismatch,
            "untracked" => State::Untracked,
            _ => return Err(UnknownState),
        })
    }
}

/// One field of a KEY INFO reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoField<'a> {
    /// `declared=`: the declared CRC, `0x00` when none.
    Declared(KeyAnswer),
    /// `size=`: bytes on disk.
    Size(u64),
    /// `received-crc=`: CRC of those bytes; `None` (`unknown`) when the server holds no record.
    ReceivedCrc(Option<KeyValue>),
    /// `state=`
    State(State),
    /// `updated=`: RFC 3339 time of the last change to the record.
    Updated(&'a str),
}

/// Why an INFO line could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoLineError {
    /// The line has no `=`.
    NoEquals,
    /// The name is known but its value is malformed.
    BadValue,
    /// The name is not one of the fields above (a client should skip such lines).
    UnknownName,
}

/// A parsed or to-be-written INFO line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoLine<'a>(pub InfoField<'a>);

impl<'a> InfoLine<'a> {
    /// Reads `name=value` (blanks around the line are ignored).
    pub fn parse(line: &'a str) -> Result<Self, InfoLineError> {
        let line = line.trim();
        let (name, value) = line.split_once('=').ok_or(InfoLineError::NoEquals)?;
        let bad = |_| InfoLineError::BadValue;
        let field = match name {
            "declared" => InfoField::Declared(value.parse().map_err(bad)?),
            "size" => InfoField::Size(value.parse().map_err(|_| InfoLineError::BadValue)?),
            "received-crc" if value == "unknown" => InfoField::ReceivedCrc(None),
            "received-crc" => InfoField::ReceivedCrc(Some(value.parse().map_err(bad)?)),
            "state" => InfoField::State(value.parse().map_err(|_| InfoLineError::BadValue)?),
            "updated" => InfoField::Updated(value),
            _ => return Err(InfoLineError::UnknownName),
        };
        Ok(InfoLine(field))
    }
}

impl fmt::Display for InfoLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            InfoField::Declared(v) => write!(f, "declared={v}"),
            InfoField::Size(n) => write!(f, "size={n}"),
            InfoField::ReceivedCrc(Some(v)) => write!(f, "received-crc={v}"),
            InfoField::ReceivedCrc(None) => f.write_str("received-crc=unknown"),
            InfoField::State(s) => write!(f, "state={s}"),
            InfoField::Updated(t) => write!(f, "updated={t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn round_trips() {
        let fields = [
            InfoField::Declared(KeyAnswer::Known(KeyValue(0x5F2D3A26))),
            InfoField::Declared(KeyAnswer::Unknown),
            InfoField::Size(524288),
            InfoField::ReceivedCrc(Some(KeyValue(1))),
            InfoField::ReceivedCrc(None),
            InfoField::State(State::Verified),
            InfoField::Updated("2026-11-22T03:04:05Z"),
        ];
        for f in fields {
            let text = InfoLine(f).to_string();
            assert_eq!(InfoLine::parse(&text), Ok(InfoLine(f)), "{text}");
        }
        assert_eq!(InfoLine(InfoField::Size(5)).to_string(), "size=5");
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(InfoLine::parse("size"), Err(InfoLineError::NoEquals));
        assert_eq!(InfoLine::parse("size=-1"), Err(InfoLineError::BadValue));
        assert_eq!(InfoLine::parse("state=odd"), Err(InfoLineError::BadValue));
        assert_eq!(
            InfoLine::parse("colour=red"),
            Err(InfoLineError::UnknownName)
        );
    }
}
