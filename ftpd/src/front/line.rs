//! Client command lines: a bounded line splitter and the bare `KEY` rewrite.
//!
//! Lines are kept byte for byte, terminator included, so everything that is not `KEY` reaches the
//! server exactly as the client sent it.

/// A command line grew past the configured limit before its newline arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("command line longer than {limit} bytes")]
pub struct LineTooLong {
    /// The configured limit, terminator included.
    pub limit: usize,
}

/// Splits a byte stream into lines ending in `\n` (CRLF or bare LF), holding at most one
/// partial line of `max_line` bytes so a client that never sends a newline costs bounded memory.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    start: usize,
    max_line: usize,
}

impl LineSplitter {
    /// `max_line` counts the whole line, terminator included.
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            start: 0,
            max_line: max_line.max(1),
        }
    }

    /// Appends received bytes; call [`next_line`](Self::next_line) until it returns `None`
    /// before pushing again, which keeps the buffer within `max_line` plus one read.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete line, terminator included.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineTooLong> {
        let rest = &self.buf[self.start..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let len = pos + 1;
                if len > self.max_line {
                    return Err(LineTooLong {
                        limit: self.max_line,
                    });
                }
                let line = rest[..len].to_vec();
                self.start += len;
                Ok(Some(line))
            }
            None => {
                if rest.len() > self.max_line {
                    return Err(LineTooLong {
                        limit: self.max_line,
                    });
                }
                if rest.is_empty() {
                    // Nothing pending: an idle connection keeps no buffer.
                    self.buf = Vec::new();
                    self.start = 0;
                }
                Ok(None)
            }
        }
    }

    /// Whether bytes of an unfinished line are waiting for their newline.
    pub fn has_partial(&self) -> bool {
        self.buf.len() > self.start
    }

    /// Removes and returns the unprocessed bytes (used when the connection turns to raw bytes).
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        rest
    }
}

/// What the front needs to know about a client line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Bare `KEY`: rewritten to `SITE KEY`.
    Key,
    /// `USER`: names the account the next `PASS` is counted against.
    User,
    /// `PASS`: its reply feeds the failed-login throttle.
    Pass,
    /// `AUTH`: with `TLS`/`SSL`, the front starts TLS on the control channel itself.
    Auth,
    /// `CCC`: back to a clear control channel, which the front does not allow.
    Ccc,
    /// `PROT`: whether data connections are TLS.
    Prot,
    /// `REST` with an offset libunftp accepts: sets the offset of the next transfer.
    Rest,
    /// `REST` with a missing or malformed offset: libunftp would answer `501` and close the
    /// session, so the front answers it and keeps the session.
    BadRest,
    /// A command that uses a data connection; `rest` says whether it uses libunftp's restart
    /// offset (`STOR`, `RETR`, `STOU`, `APPE`).
    Transfer(Direction),
    /// `PASV` or `EPSV`: the front holds one of its passive ports for the reply.
    Passive,
    /// Other data-connection set-up (`PORT`, `EPRT`, `TYPE`, `MODE`, `STRU`). Clients may send
    /// it, and `PASV`/`EPSV`, between `REST` and the transfer; it leaves the offset alone.
    Setup,
    /// A command word that is not plain printable ASCII. libunftp upper-cases the full Unicode
    /// range (`PAſS` is `PASS` to it), so such a word could mean anything: the front refuses it.
    NotAscii,
    /// Anything else: passed through untouched.
    Other,
}

/// Which way a data transfer moves bytes, and whether libunftp's restart offset applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `STOR`, `APPE`, `STOU`: the client sends; these may skip the relay (the hand-off).
    Upload,
    /// `RETR`: the server sends a file from the restart offset.
    Download,
    /// `LIST`, `NLST`, `MLSD`: the server sends a listing; no restart offset.
    Listing,
}

/// Telnet commands (`IAC x`, e.g. the interrupt some clients send before `ABOR`) in front of
/// the command word: not part of the command, and not text. `IAC` before the newline is not a
/// command: taking the newline with it would forward nothing, and the server would owe no reply
/// for a line the session counts as sent.
fn telnet_prefix(line: &[u8]) -> usize {
    let mut i = 0;
    while line.len() >= i + 2 && line[i] == 0xFF && line[i + 1] != b'\n' {
        i += 2;
    }
    i
}

/// The line without telnet commands in front of it, as it is forwarded.
pub fn without_telnet(line: &[u8]) -> &[u8] {
    &line[telnet_prefix(line)..]
}

/// The command word: the bytes before the first space, CR or LF, as libunftp's parser splits it
/// (after any telnet commands).
pub fn command_word(line: &[u8]) -> &[u8] {
    let line = without_telnet(line);
    let end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(line.len());
    &line[..end]
}

/// The argument of a line: what follows the command word and one space, without the line end.
pub fn argument(line: &[u8]) -> &[u8] {
    let line = without_telnet(line);
    let word = command_word(line).len();
    let rest = line[word..].strip_prefix(b" ").unwrap_or(&[]);
    let end = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Classifies a line by its command word, case-insensitively; a word that is not plain
/// printable ASCII is [`LineKind::NotAscii`], so the front and libunftp never disagree.
pub fn classify(line: &[u8]) -> LineKind {
    let word = command_word(line);
    if !word.iter().all(|b| b.is_ascii_graphic()) {
        return LineKind::NotAscii;
    }
    let is = |w: &[u8]| word.eq_ignore_ascii_case(w);
    let any = |ws: &[&[u8]]| ws.iter().any(|w| is(w));
    if is(b"KEY") {
        LineKind::Key
    } else if is(b"USER") {
        LineKind::User
    } else if is(b"PASS") {
        LineKind::Pass
    } else if is(b"AUTH") {
        LineKind::Auth
    } else if is(b"CCC") {
        LineKind::Ccc
    } else if is(b"PROT") {
        LineKind::Prot
    } else if is(b"REST") {
        match rest_offset(line) {
            Some(_) => LineKind::Rest,
            None => LineKind::BadRest,
        }
    } else if any(&[b"STOR", b"STOU", b"APPE"]) {
        LineKind::Transfer(Direction::Upload)
    } else if is(b"RETR") {
        LineKind::Transfer(Direction::Download)
    } else if any(&[b"LIST", b"NLST", b"MLSD"]) {
        LineKind::Transfer(Direction::Listing)
    } else if any(&[b"PASV", b"EPSV"]) {
        LineKind::Passive
    } else if any(&[b"PORT", b"EPRT", b"TYPE", b"MODE", b"STRU"]) {
        LineKind::Setup
    } else {
        LineKind::Other
    }
}

/// The offset of a `REST` line as libunftp reads it (decimal `u64` up to the line end), or
/// `None` when libunftp would refuse it.
fn rest_offset(line: &[u8]) -> Option<u64> {
    let arg = argument(line);
    // `u64::from_str` takes a leading `+`; libunftp's parser does too, so the two agree.
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// Turns `KEY <args>` into `SITE KEY <args>`, keeping the arguments and terminator byte for byte.
/// Returns `None` for any other line.
pub fn rewrite_key(line: &[u8]) -> Option<Vec<u8>> {
    if classify(line) != LineKind::Key {
        return None;
    }
    let line = without_telnet(line);
    let rest = &line[command_word(line).len()..];
    let mut out = Vec::with_capacity(rest.len() + 8);
    out.extend_from_slice(b"SITE KEY");
    out.extend_from_slice(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut LineSplitter) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(l) = s.next_line().expect("within limit") {
            out.push(l);
        }
        out
    }

    #[test]
    fn splits_across_reads() {
        let mut s = LineSplitter::new(64);
        s.push(b"US");
        assert!(drain(&mut s).is_empty());
        assert!(s.has_partial());
        s.push(b"ER bob\r");
        assert!(drain(&mut s).is_empty());
        s.push(b"\nPASS x\r\nNO");
        assert_eq!(
            drain(&mut s),
            vec![b"USER bob\r\n".to_vec(), b"PASS x\r\n".to_vec()]
        );
        assert!(s.has_partial());
        s.push(b"OP\r\n");
        assert_eq!(drain(&mut s), vec![b"NOOP\r\n".to_vec()]);
        assert!(!s.has_partial());
        assert_eq!(s.buf.capacity(), 0, "no buffer kept between lines");
    }

    #[test]
    fn bare_lf_and_crlf_both_end_a_line() {
        let mut s = LineSplitter::new(64);
        s.push(b"PWD\nSYST\r\n\n");
        assert_eq!(
            drain(&mut s),
            vec![b"PWD\n".to_vec(), b"SYST\r\n".to_vec(), b"\n".to_vec()]
        );
    }

    #[test]
    fn over_long_partial_line_is_an_error() {
        let mut s = LineSplitter::new(16);
        s.push(&[b'A'; 16]);
        assert_eq!(s.next_line(), Ok(None));
        s.push(b"A");
        assert_eq!(s.next_line(), Err(LineTooLong { limit: 16 }));
    }

    #[test]
    fn over_long_complete_line_is_an_error() {
        let mut s = LineSplitter::new(8);
        s.push(b"NOOP\r\nSTOR abcdef\r\n");
        assert_eq!(s.next_line(), Ok(Some(b"NOOP\r\n".to_vec())));
        assert_eq!(s.next_line(), Err(LineTooLong { limit: 8 }));
    }

    #[test]
    fn line_of_exactly_the_limit_passes() {
        let mut s = LineSplitter::new(6);
        s.push(b"NOOP\r\n");
        assert_eq!(s.next_line(), Ok(Some(b"NOOP\r\n".to_vec())));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood() {
        let mut s = LineSplitter::new(4096);
        let chunk = [b'x'; 1024];
        let mut failed = false;
        for _ in 0..1024 {
            s.push(&chunk);
            if s.next_line().is_err() {
                failed = true;
                break;
            }
            assert!(s.buf.len() <= 4096 + chunk.len());
        }
        assert!(failed);
    }

    #[test]
    fn take_rest_returns_unprocessed_bytes() {
        let mut s = LineSplitter::new(64);
        s.push(b"AUTH TLS\r\n\x16\x03\x01");
        assert_eq!(s.next_line(), Ok(Some(b"AUTH TLS\r\n".to_vec())));
        assert_eq!(s.take_rest(), b"\x16\x03\x01".to_vec());
        assert!(!s.has_partial());
    }

    /// Random input, random read sizes: lines come out in order, byte for byte, never too long.
    #[test]
    fn random_streams_round_trip() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let max = 8 + (next() % 64) as usize;
            let input: Vec<u8> = (0..(next() % 2000))
                .map(|_| match next() % 10 {
                    0 => b'\n',
                    1 => b'\r',
                    _ => next() as u8,
                })
                .collect();
            let mut s = LineSplitter::new(max);
            let mut out = Vec::new();
            let mut rest = &input[..];
            let mut failed = false;
            'feed: while !rest.is_empty() {
                let take = 1 + (next() as usize % rest.len().min(100));
                s.push(&rest[..take]);
                rest = &rest[take..];
                loop {
                    match s.next_line() {
                        Ok(Some(line)) => {
                            assert!(line.len() <= max && line.ends_with(b"\n"));
                            out.extend_from_slice(&line);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            failed = true;
                            break 'feed;
                        }
                    }
                }
                assert!(s.buf.len() - s.start <= max);
            }
            if !failed {
                out.extend_from_slice(&s.take_rest());
                assert_eq!(out, input);
            } else {
                assert!(input.starts_with(&out));
            }
            let _ = rewrite_key(&input);
            let _ = classify(&input);
        }
    }

    #[test]
    fn key_rewrite_is_case_insensitive() {
        assert_eq!(
            rewrite_key(b"KEY 0x5F2D3A26\r\n").as_deref(),
            Some(&b"SITE KEY 0x5F2D3A26\r\n"[..])
        );
        assert_eq!(
            rewrite_key(b"key NULL\r\n").as_deref(),
            Some(&b"SITE KEY NULL\r\n"[..])
        );
        assert_eq!(
            rewrite_key(b"kEy INFO a b.ts\n").as_deref(),
            Some(&b"SITE KEY INFO a b.ts\n"[..])
        );
        assert_eq!(
            rewrite_key(b"KEY\r\n").as_deref(),
            Some(&b"SITE KEY\r\n"[..])
        );
        assert_eq!(
            rewrite_key(b"KEY  two  spaces\r\n").as_deref(),
            Some(&b"SITE KEY  two  spaces\r\n"[..])
        );
    }

    #[test]
    fn other_words_are_not_rewritten() {
        for line in [
            &b"KEYS 1\r\n"[..],
            b"KEYX\r\n",
            b"SITE KEY 0x1\r\n",
            b" KEY 0x1\r\n",
            b"MKEY\r\n",
            b"KE\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(
                rewrite_key(line),
                None,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn classify_finds_pass_and_auth() {
        assert_eq!(classify(b"pass secret\r\n"), LineKind::Pass);
        assert_eq!(classify(b"PASS\r\n"), LineKind::Pass);
        assert_eq!(classify(b"AUTH TLS\r\n"), LineKind::Auth);
        assert_eq!(classify(b"auth ssl\n"), LineKind::Auth);
        assert_eq!(classify(b"PASSWD\r\n"), LineKind::Other);
        assert_eq!(classify(b"user bob\r\n"), LineKind::User);
    }

    #[test]
    fn telnet_commands_before_the_word_are_not_part_of_it() {
        assert_eq!(classify(b"\xff\xf4\xff\xf2ABOR\r\n"), LineKind::Other);
        assert_eq!(without_telnet(b"\xff\xf4ABOR\r\n"), b"ABOR\r\n");
        assert_eq!(command_word(b"\xff\xf4ABOR\r\n"), b"ABOR");
        // Found by fuzzing: `IAC LF` left an empty line to send, which the server never answers.
        assert_eq!(without_telnet(b"\xff\n"), b"\xff\n");
        assert_eq!(classify(b"\xff\n"), LineKind::NotAscii);
        assert_eq!(classify(b"\xff\xf4\xff\n"), LineKind::NotAscii);
        assert_eq!(without_telnet(b"\xff\xf4\r\n"), b"\r\n");
    }

    /// Unicode upper-cases `ß` to `SS` and `ſ` to `S`: libunftp would read these as PASS,
    /// REST and STOR. The front refuses every word that is not plain ASCII.
    #[test]
    fn words_that_are_not_plain_ascii_are_refused() {
        for word in [
            "PA\u{df}",
            "PA\u{17f}S",
            "RE\u{17f}T",
            "\u{17f}TOR",
            "\u{fb06}OR",
            "P\u{130}SS",
        ] {
            let line = format!("{word} x\r\n");
            assert_eq!(classify(line.as_bytes()), LineKind::NotAscii, "{word}");
        }
        assert_eq!(classify(b"PA\x00SS x\r\n"), LineKind::NotAscii);
        assert_eq!(classify(b"\xfePASS\r\n"), LineKind::NotAscii);
        assert_eq!(classify(b"\r\n"), LineKind::Other);
    }

    #[test]
    fn classify_finds_rest_transfers_and_setup() {
        assert_eq!(classify(b"REST 1000\r\n"), LineKind::Rest);
        assert_eq!(classify(b"rest 0\n"), LineKind::Rest);
        assert_eq!(classify(b"REST abc\r\n"), LineKind::BadRest);
        assert_eq!(classify(b"REST -1\r\n"), LineKind::BadRest);
        assert_eq!(classify(b"REST\r\n"), LineKind::BadRest);
        assert_eq!(classify(b"REST \r\n"), LineKind::BadRest);
        assert_eq!(
            classify(b"REST 18446744073709551616\r\n"),
            LineKind::BadRest
        );
        for l in [&b"STOR a\r\n"[..], b"STOU\r\n", b"APPE x\n"] {
            assert_eq!(classify(l), LineKind::Transfer(Direction::Upload));
        }
        assert_eq!(
            classify(b"retr a\r\n"),
            LineKind::Transfer(Direction::Download)
        );
        for l in [&b"LIST\r\n"[..], b"nlst x\r\n", b"MLSD\r\n"] {
            assert_eq!(classify(l), LineKind::Transfer(Direction::Listing));
        }
        assert_eq!(classify(b"PASV\r\n"), LineKind::Passive);
        assert_eq!(classify(b"epsv\r\n"), LineKind::Passive);
        for l in [&b"PORT 1,2,3,4,5,6\r\n"[..], b"TYPE I\r\n"] {
            assert_eq!(classify(l), LineKind::Setup);
        }
        assert_eq!(classify(b"STORE a\r\n"), LineKind::Other);
        assert_eq!(classify(b"SIZE a\r\n"), LineKind::Other);
    }
}
