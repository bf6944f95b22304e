//! Control-connection replies: framing bytes into lines, and lines into FTP replies.
//!
//! [`LineReader`] turns whatever a transport read delivered (half a line, three lines and a
//! half) into complete lines, in a buffer the caller owns. A line longer than that buffer is
//! handed out cut short, marked `truncated`, and the rest of it is skipped, so memory stays
//! bounded whatever the server sends. [`ReplyParser`] then follows RFC 959 reply syntax,
//! including multi-line replies (`213-...` continued until `213 ...`).

use core::fmt;

/// One line from the control connection, without its `\r\n` (or bare `\n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line's bytes; not necessarily UTF-8.
    pub bytes: &'a [u8],
    /// True when the line did not fit the buffer: `bytes` is its beginning only.
    pub truncated: bool,
}

impl<'a> Line<'a> {
    /// A complete line.
    pub fn new(bytes: &'a [u8]) -> Self {
        Line {
            bytes,
            truncated: false,
        }
    }
}

/// Splits a byte stream into lines inside a caller-provided buffer.
#[derive(Debug)]
pub struct LineReader<'b> {
    buf: &'b mut [u8],
    /// First byte not yet handed out.
    start: usize,
    /// One past the last byte received.
    end: usize,
    /// Skipping the tail of an over-long line until its newline.
    discarding: bool,
}

impl<'b> LineReader<'b> {
    /// Uses `buf` for pending bytes; its length is the longest line kept whole.
    pub fn new(buf: &'b mut [u8]) -> Self {
        LineReader {
            buf,
            start: 0,
            end: 0,
            discarding: false,
        }
    }

    /// Forgets every pending byte (a new connection starts clean).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.discarding = false;
    }

    /// Free space to read into; pass the count read to [`LineReader::commit`].
    ///
    /// Moves pending bytes to the front first, so the space is as large as it can be. It is
    /// empty only when a whole buffer of bytes without a newline is pending, which
    /// [`LineReader::next_line`] resolves; call that until it returns `None` before reading.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into [`LineReader::spare`].
    pub fn commit(&mut self, n: usize) {
        self.end = self.end.saturating_add(n).min(self.buf.len());
    }

    /// Copies as much of `data` as fits; returns how many bytes were taken.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let spare = self.spare();
        let n = spare.len().min(data.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.commit(n);
        n
    }

    /// True when bytes of an unfinished line are waiting.
    pub fn has_pending(&self) -> bool {
        self.end > self.start
    }

    /// The next complete line, or the beginning of an over-long one; `None` when more bytes
    /// are needed.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line_start = self.start;
                let mut line_end = self.start + i;
                self.start = line_end + 1;
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                if line_end > line_start && self.buf[line_end - 1] == b'\r' {
                    line_end -= 1;
                }
                return Some(Line::new(&self.buf[line_start..line_end]));
            }
            if self.discarding {
                self.start = 0;
                self.end = 0;
                return None;
            }
            if self.start == 0 && self.end == self.buf.len() && self.end > 0 {
                self.discarding = true;
                self.start = self.end;
                return Some(Line {
                    bytes: &self.buf[..self.end],
                    truncated: true,
                });
            }
            return None;
        }
    }

    /// Checks the bookkeeping (used by tests).
    pub fn invariants_hold(&self) -> bool {
        self.start <= self.end && self.end <= self.buf.len()
    }
}

/// A reply code such as `227`.
pub type Code = u16;

/// What one line means in the reply being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyEvent<'a> {
    /// A complete one-line reply: `ddd text`.
    Single {
        /// The reply code.
        code: Code,
        /// The text after the code and its blank.
        text: &'a [u8],
    },
    /// The first line of a multi-line reply: `ddd-text`.
    Begin {
        /// The reply code.
        code: Code,
        /// The text after the hyphen.
        text: &'a [u8],
    },
    /// A line between the first and the last of a multi-line reply, as sent (leading blank
    /// included).
    Continuation {
        /// The line.
        text: &'a [u8],
        /// True when the line was cut short.
        truncated: bool,
    },
    /// The last line of a multi-line reply: `ddd text`; the reply is complete.
    End {
        /// The reply code (the same as the first line's).
        code: Code,
        /// The text after the code and its blank.
        text: &'a [u8],
    },
}

impl ReplyEvent<'_> {
    /// The code and final text when this line completes a reply.
    pub fn completed(&self) -> Option<(Code, &[u8])> {
        match *self {
            ReplyEvent::Single { code, text } | ReplyEvent::End { code, text } => {
                Some((code, text))
            }
            _ => None,
        }
    }
}

/// A line that is not a valid reply line where one was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// The line does not start with a reply code (`ddd` then a blank, a hyphen or nothing).
    Garbage,
    /// A line whose text matters was longer than the buffer.
    LineTooLong,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyError::Garbage => "the server sent a line that is not an FTP reply",
            ReplyError::LineTooLong => "the server sent a reply line too long to read",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ReplyError {}

/// Follows RFC 959 reply syntax across lines; holds only the code of an open multi-line reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyParser {
    open: Option<Code>,
}

impl ReplyParser {
    /// A parser between replies.
    pub const fn new() -> Self {
        ReplyParser { open: None }
    }

    /// True inside a multi-line reply.
    pub fn in_multiline(&self) -> bool {
        self.open.is_some()
    }

    /// The code of the open multi-line reply, if any.
    pub fn open_code(&self) -> Option<Code> {
        self.open
    }

    /// Classifies one line. After an error the parser is between replies again.
    pub fn feed<'a>(&mut self, line: Line<'a>) -> Result<ReplyEvent<'a>, ReplyError> {
        let bytes = line.bytes;
        if let Some(open) = self.open {
            return match split_code(bytes) {
                Some((code, Sep::Blank | Sep::None, text)) if code == open => {
                    self.open = None;
                    if line.truncated {
                        Err(ReplyError::LineTooLong)
                    } else {
                        Ok(ReplyEvent::End { code, text })
                    }
                }
                _ => Ok(ReplyEvent::Continuation {
                    text: bytes,
                    truncated: line.truncated,
                }),
            };
        }
        match split_code(bytes) {
            None => Err(ReplyError::Garbage),
            Some((code, Sep::Hyphen, text)) => {
                self.open = Some(code);
                Ok(ReplyEvent::Begin { code, text })
            }
            Some(_) if line.truncated => Err(ReplyError::LineTooLong),
            Some((code, _, text)) => Ok(ReplyEvent::Single { code, text }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sep {
    Blank,
    Hyphen,
    None,
}

/// Splits `ddd text` / `ddd-text` / `ddd`; the first digit must be 1 to 5.
fn split_code(bytes: &[u8]) -> Option<(Code, Sep, &[u8])> {
    let (digits, rest) = bytes.split_at_checked(3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'1'..=b'5').contains(&digits[0]) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    match rest.split_first() {
        None => Some((code, Sep::None, rest)),
        Some((b' ', text)) => Some((code, Sep::Blank, text)),
        Some((b'-', text)) => Some((code, Sep::Hyphen, text)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn lines_of(chunks: &[&[u8]], buf_len: usize) -> Vec<(Vec<u8>, bool)> {
        let mut storage = std::vec![0u8; buf_len];
        let mut reader = LineReader::new(&mut storage);
        let mut out = Vec::new();
        for chunk in chunks {
            let mut chunk = *chunk;
            while !chunk.is_empty() {
                let n = reader.feed(chunk);
                chunk = &chunk[n..];
                while let Some(line) = reader.next_line() {
                    out.push((line.bytes.to_vec(), line.truncated));
                }
                assert!(reader.invariants_hold());
            }
        }
        out
    }

    #[test]
    fn splits_lines_across_reads() {
        let got = lines_of(
            &[b"220 he", b"llo\r\n213", b"-a\r\n b\n213 end\r", b"\n"],
            64,
        );
        let want: Vec<(Vec<u8>, bool)> = [&b"220 hello"[..], b"213-a", b" b", b"213 end"]
            .iter()
            .map(|l| (l.to_vec(), false))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let text = b"220 a\r\n230-b\r\n c\r\n230 d\r\n";
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(lines_of(&bytes, 16), lines_of(&[text], 16));
    }

    #[test]
    fn over_long_line_is_cut_and_the_rest_skipped() {
        let got = lines_of(&[b"213 0123456789abcdef", b"ghij\r\n200 ok\r\n"], 8);
        assert_eq!(
            got,
            std::vec![(b"213 0123".to_vec(), true), (b"200 ok".to_vec(), false)]
        );
    }

    #[test]
    fn line_exactly_filling_the_buffer_is_whole() {
        let got = lines_of(&[b"200 ok\r\n"], 8);
        assert_eq!(got, std::vec![(b"200 ok".to_vec(), false)]);
    }

    #[test]
    fn single_line_replies() {
        let mut p = ReplyParser::new();
        assert_eq!(
            p.feed(Line::new(b"227 Entering Passive Mode (1,2,3,4,5,6)")),
            Ok(ReplyEvent::Single {
                code: 227,
                text: b"Entering Passive Mode (1,2,3,4,5,6)"
            })
        );
        assert_eq!(
            p.feed(Line::new(b"200")),
            Ok(ReplyEvent::Single {
                code: 200,
                text: b""
            })
        );
    }

    #[test]
    fn multi_line_reply_runs_until_the_same_code_and_a_blank() {
        let mut p = ReplyParser::new();
        assert_eq!(
            p.feed(Line::new(b"213-KEY INFO rec.ts")),
            Ok(ReplyEvent::Begin {
                code: 213,
                text: b"KEY INFO rec.ts"
            })
        );
        assert!(p.in_multiline());
        for l in [
            &b" size=5"[..],
            b"213-still inside",
            b"200 other code",
            b"",
            b"xyz",
        ] {
            assert_eq!(
                p.feed(Line::new(l)),
                Ok(ReplyEvent::Continuation {
                    text: l,
                    truncated: false
                })
            );
        }
        assert_eq!(
            p.feed(Line::new(b"213 End")),
            Ok(ReplyEvent::End {
                code: 213,
                text: b"End"
            })
        );
        assert!(!p.in_multiline());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut p = ReplyParser::new();
        for l in [
            &b""[..],
            b"hello",
            b"22",
            b"2200 x",
            b"620 x",
            b"099 x",
            b" 220 x",
            b"22a x",
            b"220x",
            b"\xff\xfe\xfd",
        ] {
            assert_eq!(p.feed(Line::new(l)), Err(ReplyError::Garbage), "{l:?}");
            assert!(!p.in_multiline());
        }
    }

    #[test]
    fn truncated_lines() {
        let mut p = ReplyParser::new();
        let cut = |bytes| Line {
            bytes,
            truncated: true,
        };
        assert_eq!(p.feed(cut(b"213 1234")), Err(ReplyError::LineTooLong));
        // A cut first line still opens the reply; its text is not needed.
        assert!(matches!(
            p.feed(cut(b"230-Welcome to a very long")),
            Ok(ReplyEvent::Begin { code: 230, .. })
        ));
        assert_eq!(
            p.feed(cut(b" banner")),
            Ok(ReplyEvent::Continuation {
                text: b" banner",
                truncated: true
            })
        );
        assert_eq!(p.feed(cut(b"230 En")), Err(ReplyError::LineTooLong));
        assert!(!p.in_multiline());
    }
}
