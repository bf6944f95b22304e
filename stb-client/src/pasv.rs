//! The `227` reply to `PASV`: where the server listens for the data connection.
//!
//! RFC 959 gives the form `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)`, but servers vary
//! the words and some drop the parentheses, so the parser looks for the first run of six
//! comma-separated numbers after the code, as curl and most clients do.

use core::fmt;

/// The address in a `227` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PasvAddr {
    /// IPv4 address as announced by the server.
    pub ip: [u8; 4],
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for PasvAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.ip;
        write!(f, "{a}.{b}.{c}.{d}:{}", self.port)
    }
}

/// Why a `227` reply could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasvError {
    /// No number in the text.
    NoAddress,
    /// Fewer than six numbers, or something other than a comma between them.
    Malformed,
    /// A number above 255.
    OutOfRange,
}

impl fmt::Display for PasvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PasvError::NoAddress => "227 reply carries no address",
            PasvError::Malformed => "227 reply address is not six comma-separated numbers",
            PasvError::OutOfRange => "227 reply address has a number above 255",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PasvError {}

/// Reads the address from the text of a `227` reply (everything after `227 `).
pub fn parse_227(text: &[u8]) -> Result<PasvAddr, PasvError> {
    let start = match text.iter().position(|&b| b == b'(') {
        Some(open) => open + 1,
        None => text
            .iter()
            .position(u8::is_ascii_digit)
            .ok_or(PasvError::NoAddress)?,
    };
    let mut rest = &text[start..];
    let mut fields = [0u8; 6];
    for (i, field) in fields.iter_mut().enumerate() {
        rest = trim_blanks(rest);
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(if i == 0 {
                PasvError::NoAddress
            } else {
                PasvError::Malformed
            });
        }
        let value = rest[..digits]
            .iter()
            .try_fold(0u16, |acc, d| {
                let v = acc * 10 + u16::from(d - b'0');
                (v <= 255).then_some(v)
            })
            .ok_or(PasvError::OutOfRange)?;
        *field = u8::try_from(value).map_err(|_| PasvError::OutOfRange)?;
        rest = trim_blanks(&rest[digits..]);
        if i < 5 {
            rest = rest.strip_prefix(b",").ok_or(PasvError::Malformed)?;
        }
    }
    let [a, b, c, d, p1, p2] = fields;
    Ok(PasvAddr {
        ip: [a, b, c, d],
        port: u16::from_be_bytes([p1, p2]),
    })
}

fn trim_blanks(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|&&b| b == b' ').count();
    &bytes[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn reads_the_usual_forms() {
        let want = PasvAddr {
            ip: [192, 168, 1, 20],
            port: 0xC350,
        };
        for text in [
            &b"Entering Passive Mode (192,168,1,20,195,80)"[..],
            b"Entering Passive Mode (192,168,1,20,195,80).",
            b"Entering Passive Mode 192,168,1,20,195,80",
            b"=192,168,1,20,195,80",
            b"ok ( 192, 168, 1, 20, 195, 80 )",
        ] {
            assert_eq!(parse_227(text), Ok(want), "{text:?}");
        }
        assert_eq!(want.to_string(), "192.168.1.20:50000");
    }

    #[test]
    fn rejects_bad_addresses() {
        assert_eq!(
            parse_227(b"Entering Passive Mode"),
            Err(PasvError::NoAddress)
        );
        assert_eq!(parse_227(b"()"), Err(PasvError::NoAddress));
        assert_eq!(parse_227(b"(1,2,3,4,5)"), Err(PasvError::Malformed));
        assert_eq!(parse_227(b"(1,2,3,4,5;6)"), Err(PasvError::Malformed));
        assert_eq!(parse_227(b"(1,2,3,4,5,)"), Err(PasvError::Malformed));
        assert_eq!(parse_227(b"(1,2,3,256,5,6)"), Err(PasvError::OutOfRange));
        assert_eq!(
            parse_227(b"(1,2,3,4,5,99999999999999999999)"),
            Err(PasvError::OutOfRange)
        );
        assert_eq!(parse_227(b""), Err(PasvError::NoAddress));
    }
}
