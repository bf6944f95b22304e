//! The KEY value on the wire: `0x` and exactly 8 upper-case hex digits when written, lenient
//! when read (1 to 8 hex digits, either case, `0x` optional).

use core::fmt;
use core::str::FromStr;

/// A CRC-32 as carried by the KEY command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyValue(pub u32);

/// Why a KEY value could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseKeyError {
    /// Nothing where a value was expected.
    Empty,
    /// More than 8 hex digits.
    TooLong,
    /// A character that is not a hex digit.
    NotHex,
}

impl fmt::Display for ParseKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseKeyError::Empty => "missing CRC value (expected 0x followed by 1 to 8 hex digits)",
            ParseKeyError::TooLong => "CRC value has more than 8 hex digits",
            ParseKeyError::NotHex => {
                "CRC value is not hexadecimal (expected 0x followed by 1 to 8 hex digits)"
            }
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ParseKeyError {}

impl FromStr for KeyValue {
    type Err = ParseKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if digits.is_empty() {
            return Err(ParseKeyError::Empty);
        }
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseKeyError::NotHex);
        }
        if digits.len() > 8 {
            return Err(ParseKeyError::TooLong);
        }
        u32::from_str_radix(digits, 16)
            .map(KeyValue)
            .map_err(|_| ParseKeyError::NotHex)
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08X}", self.0)
    }
}

/// The answer to `KEY NULL`: a declared value, or `0x00` for "no checksum known".
///
/// A declared CRC of 0 is written `0x00000000`, which reads back as [`KeyAnswer::Unknown`]:
/// the wire cannot tell the two apart, so a client whose file has CRC 0 must upload again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAnswer {
    /// The server holds this declared CRC.
    Known(KeyValue),
    /// The server knows no CRC for the file (`0x00`).
    Unknown,
}

impl KeyAnswer {
    /// The answer for an optional declaration, as the server sends it.
    pub fn from_declared(declared: Option<u32>) -> Self {
        declared.map_or(KeyAnswer::Unknown, |v| KeyAnswer::Known(KeyValue(v)))
    }

    /// True when the answer proves the server holds exactly `local` for the file.
    ///
    /// A zero value never proves anything, because `0x00` also means "unknown".
    pub fn matches(&self, local: u32) -> bool {
        matches!(self, KeyAnswer::Known(KeyValue(v)) if *v == local && local != 0)
    }
}

impl FromStr for KeyAnswer {
    type Err = ParseKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v: KeyValue = s.parse()?;
        Ok(if v.0 == 0 {
            KeyAnswer::Unknown
        } else {
            KeyAnswer::Known(v)
        })
    }
}

impl fmt::Display for KeyAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAnswer::Known(v) => v.fmt(f),
            KeyAnswer::Unknown => f.write_str("0x00"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn formats_eight_upper_case_digits() {
        assert_eq!(KeyValue(0x5F2D3A26).to_string(), "0x5F2D3A26");
        assert_eq!(KeyValue(0xAB).to_string(), "0x000000AB");
        assert_eq!(KeyAnswer::Unknown.to_string(), "0x00");
        assert_eq!(KeyAnswer::from_declared(Some(0)).to_string(), "0x00000000");
    }

    #[test]
    fn parses_leniently() {
        for s in ["0x5F2D3A26", "0X5f2d3a26", "5F2D3A26", "5f2d3a26"] {
            assert_eq!(s.parse::<KeyValue>(), Ok(KeyValue(0x5F2D3A26)), "{s}");
        }
        assert_eq!("0x1".parse::<KeyValue>(), Ok(KeyValue(1)));
        assert_eq!("0".parse::<KeyValue>(), Ok(KeyValue(0)));
    }

    #[test]
    fn rejects_bad_values_precisely() {
        assert_eq!("".parse::<KeyValue>(), Err(ParseKeyError::Empty));
        assert_eq!("0x".parse::<KeyValue>(), Err(ParseKeyError::Empty));
        assert_eq!(
            "0x123456789".parse::<KeyValue>(),
            Err(ParseKeyError::TooLong)
        );
        assert_eq!("0xZZ".parse::<KeyValue>(), Err(ParseKeyError::NotHex));
        assert_eq!("+1".parse::<KeyValue>(), Err(ParseKeyError::NotHex));
        assert_eq!("0x-1".parse::<KeyValue>(), Err(ParseKeyError::NotHex));
    }

    #[test]
    fn zero_answer_is_unknown_and_never_matches() {
        assert_eq!("0x00".parse::<KeyAnswer>(), Ok(KeyAnswer::Unknown));
        assert_eq!("0x00000000".parse::<KeyAnswer>(), Ok(KeyAnswer::Unknown));
        assert!(!KeyAnswer::from_declared(Some(0)).matches(0));
        assert!(KeyAnswer::from_declared(Some(7)).matches(7));
        assert!(!KeyAnswer::from_declared(Some(7)).matches(8));
        assert!(!KeyAnswer::Unknown.matches(0));
    }
}
