//! The KEY command grammar, shared by the server's parser and the client's formatter.
//!
//! ```text
//! KEY <crc> [<path>]    declare the CRC of the next upload (or of <path>)
//! KEY NULL [<path>]     ask for the declared CRC
//! KEY INFO [<path>]     ask for everything the server knows of the file
//! ```
//! The same arguments follow `SITE KEY`; this module sees only the text after the word `KEY`.

use crate::value::{KeyValue, ParseKeyError};
use core::fmt;

/// A parsed KEY command; paths borrow from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCommand<'a> {
    /// `KEY <crc> [<path>]`
    Declare {
        /// The declared CRC of the whole file.
        crc: KeyValue,
        /// The file it is declared for; `None` means the session's next upload.
        path: Option<&'a str>,
    },
    /// `KEY NULL [<path>]`
    Query {
        /// The file asked about; `None` means the session's current file.
        path: Option<&'a str>,
    },
    /// `KEY INFO [<path>]`
    Info {
        /// The file asked about; `None` means the session's current file.
        path: Option<&'a str>,
    },
}

/// Why a KEY command line could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCommandError {
    /// `KEY` with nothing after it.
    MissingArgument,
    /// The first argument is neither `NULL`, `INFO` nor a valid CRC.
    BadValue(ParseKeyError),
}

impl fmt::Display for KeyCommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyCommandError::MissingArgument => {
                f.write_str("missing argument: expected <crc> [path], NULL [path] or INFO [path]")
            }
            KeyCommandError::BadValue(e) => e.fmt(f),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for KeyCommandError {}

impl<'a> KeyCommand<'a> {
    /// Parses the arguments of `KEY` / `SITE KEY` (the text after the command word).
    ///
    /// The path is everything after the first word, with surrounding blanks removed, so names
    /// with inner spaces work; an absent or blank path is `None`.
    pub fn parse(arguments: &'a str) -> Result<Self, KeyCommandError> {
        let arguments =
            arguments.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n');
        let (word, rest) = match arguments.find([' ', '\t']) {
            Some(i) => (&arguments[..i], arguments[i..].trim_matches([' ', '\t'])),
            None => (arguments, ""),
        };
        if word.is_empty() {
            return Err(KeyCommandError::MissingArgument);
        }
        let path = if rest.is_empty() { None } else { Some(rest) };
        if word.eq_ignore_ascii_case("NULL") {
            Ok(KeyCommand::Query { path })
        } else if word.eq_ignore_ascii_case("INFO") {
            Ok(KeyCommand::Info { path })
        } else {
            let crc = word
                .parse::<KeyValue>()
                .map_err(KeyCommandError::BadValue)?;
            Ok(KeyCommand::Declare { crc, path })
        }
    }

    /// The path the command names, if any.
    pub fn path(&self) -> Option<&'a str> {
        match *self {
            KeyCommand::Declare { path, .. }
            | KeyCommand::Query { path }
            | KeyCommand::Info { path } => path,
        }
    }
}

/// Writes the arguments as they follow `KEY` on the wire (`0x5F2D3A26 rec.ts`, `NULL`, ...).
impl fmt::Display for KeyCommand<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyCommand::Declare { crc, .. } => write!(f, "{crc}")?,
            KeyCommand::Query { .. } => f.write_str("NULL")?,
            KeyCommand::Info { .. } => f.write_str("INFO")?,
        }
        if let Some(p) = self.path() {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            KeyCommand::parse("0x5F2D3A26"),
            Ok(KeyCommand::Declare {
                crc: KeyValue(0x5F2D3A26),
                path: None
            })
        );
        assert_eq!(
            KeyCommand::parse("5f2d3a26  my rec.ts \r\n"),
            Ok(KeyCommand::Declare {
                crc: KeyValue(0x5F2D3A26),
                path: Some("my rec.ts")
            })
        );
        assert_eq!(
            KeyCommand::parse("null"),
            Ok(KeyCommand::Query { path: None })
        );
        assert_eq!(
            KeyCommand::parse("NULL /a/b"),
            Ok(KeyCommand::Query { path: Some("/a/b") })
        );
        assert_eq!(
            KeyCommand::parse("Info"),
            Ok(KeyCommand::Info { path: None })
        );
        assert_eq!(
            KeyCommand::parse("INFO x"),
            Ok(KeyCommand::Info { path: Some("x") })
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        assert_eq!(KeyCommand::parse(""), Err(KeyCommandError::MissingArgument));
        assert_eq!(
            KeyCommand::parse("   "),
            Err(KeyCommandError::MissingArgument)
        );
        assert_eq!(
            KeyCommand::parse("0x123456789"),
            Err(KeyCommandError::BadValue(ParseKeyError::TooLong))
        );
        assert_eq!(
            KeyCommand::parse("hello x"),
            Err(KeyCommandError::BadValue(ParseKeyError::NotHex))
        );
    }

    #[test]
    fn formats_round_trip() {
        for line in [
            "0x5F2D3A26",
            "0x00000001 rec.ts",
            "NULL",
            "NULL a b",
            "INFO",
            "INFO /x",
        ] {
            let cmd = KeyCommand::parse(line).unwrap();
            assert_eq!(cmd.to_string(), line);
        }
    }
}
