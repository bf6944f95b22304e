//! stb-client's reply reading: arbitrary server bytes, in arbitrary reads (through `feed` or
//! `spare`/`commit`, as the transports do), go through `LineReader` with a buffer of 1 to 128
//! bytes; every line goes to `ReplyParser`, and the text of a `227` to `parse_227`.
//!
//! Checks:
//! - `LineReader::invariants_hold()` after every call, and a drained reader always has room;
//! - the lines handed out are exactly those of the input: a line that fits (its `\n` included)
//!   comes out whole without its `\r\n` or `\n`, a longer one as its first `buf_len` bytes marked
//!   `truncated`, and its rest is skipped;
//! - `ReplyParser` follows RFC 959: single replies and the first line of a multi-line reply only
//!   between replies, continuation lines only inside one, the end only with the opening code;
//!   codes 100 to 599; after an error it is between replies;
//! - a `227` address that parses is read back the same from its canonical form.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use stb_client::pasv::{parse_227, PasvAddr};
use stb_client::reply::{Line, LineReader, ReplyEvent, ReplyParser};

fuzz_target!(|data: &[u8]| {
    let _ = fuzz(&mut Unstructured::new(data));
});

fn fuzz(u: &mut Unstructured) -> Result<()> {
    let buf_len = u.int_in_range(1usize..=128)?;
    let mut storage = vec![0u8; buf_len];
    let mut reader = LineReader::new(&mut storage);
    let mut parser = ReplyParser::new();
    let mut input = Vec::new();
    let mut got: Vec<(Vec<u8>, bool)> = Vec::new();

    while !u.is_empty() {
        let through_spare = u.arbitrary::<bool>()?;
        let len = u.int_in_range(0usize..=200)?;
        let mut chunk = u.bytes(len.min(u.len()))?;
        input.extend_from_slice(chunk);
        loop {
            while let Some(line) = reader.next_line() {
                check_line(&mut parser, line, buf_len);
                got.push((line.bytes.to_vec(), line.truncated));
            }
            assert!(reader.invariants_hold());
            if chunk.is_empty() {
                break;
            }
            let n = if through_spare {
                let spare = reader.spare();
                let n = spare.len().min(chunk.len());
                spare[..n].copy_from_slice(&chunk[..n]);
                reader.commit(n);
                n
            } else {
                reader.feed(chunk)
            };
            assert!(reader.invariants_hold());
            assert!(n > 0, "a drained reader always has room");
            chunk = &chunk[n..];
        }
    }
    assert_eq!(got, expected_lines(&input, buf_len));
    Ok(())
}

/// The lines a reader with a `buf_len` buffer must hand out for `input`.
fn expected_lines(input: &[u8], buf_len: usize) -> Vec<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
        let seg = &rest[..pos];
        if pos < buf_len {
            out.push((seg.strip_suffix(b"\r").unwrap_or(seg).to_vec(), false));
        } else {
            out.push((seg[..buf_len].to_vec(), true));
        }
        rest = &rest[pos + 1..];
    }
    if rest.len() >= buf_len {
        out.push((rest[..buf_len].to_vec(), true));
    }
    out
}

fn check_line(parser: &mut ReplyParser, line: Line<'_>, buf_len: usize) {
    assert!(line.bytes.len() <= buf_len);
    assert!(!line.bytes.contains(&b'\n'));
    if line.truncated {
        assert_eq!(line.bytes.len(), buf_len);
    }
    let _ = parse_227(line.bytes);

    let before = parser.open_code();
    let event = parser.feed(line);
    let code_text = |code: u16, text: &[u8]| {
        assert!((100..600).contains(&code));
        assert_eq!(&line.bytes[..3], code.to_string().as_bytes());
        assert!(line.bytes.ends_with(text));
        assert_eq!(text.len(), line.bytes.len().saturating_sub(4));
    };
    match event {
        Ok(ReplyEvent::Single { code, text }) => {
            assert!(before.is_none());
            assert!(!line.truncated);
            assert!(!parser.in_multiline());
            code_text(code, text);
            if code == 227 {
                if let Ok(addr) = parse_227(text) {
                    let [a, b, c, d] = addr.ip;
                    let canonical =
                        format!("({a},{b},{c},{d},{},{})", addr.port >> 8, addr.port & 0xFF);
                    assert_eq!(parse_227(canonical.as_bytes()), Ok(addr));
                    assert_eq!(
                        addr.to_string(),
                        format!("{a}.{b}.{c}.{d}:{}", addr.port),
                        "{addr:?}"
                    );
                    let _: PasvAddr = addr;
                }
            }
        }
        Ok(ReplyEvent::Begin { code, text }) => {
            assert!(before.is_none());
            assert_eq!(parser.open_code(), Some(code));
            assert_eq!(line.bytes[3], b'-');
            code_text(code, text);
        }
        Ok(ReplyEvent::Continuation { text, truncated }) => {
            assert!(before.is_some());
            assert_eq!(parser.open_code(), before);
            assert_eq!(text, line.bytes);
            assert_eq!(truncated, line.truncated);
        }
        Ok(ReplyEvent::End { code, text }) => {
            assert_eq!(before, Some(code));
            assert!(!line.truncated);
            assert!(!parser.in_multiline());
            code_text(code, text);
        }
        Err(_) => assert!(!parser.in_multiline()),
    }
    if let Ok(e) = event {
        if let Some((code, _)) = e.completed() {
            assert!(!parser.in_multiline());
            assert!((100..600).contains(&code));
        }
    }
}
