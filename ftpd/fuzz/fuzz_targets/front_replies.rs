//! The front's server side: `ReplyScanner::filter` on arbitrary bytes, whole and cut at
//! arbitrary points, with an optional final reply to drop, an optional rewrite of `227`/`229`
//! lines and an optional reply code that stops scanning (as `234` does).
//!
//! Checks:
//! - however the bytes are cut, the output, the codes reported, `finals()`, the bytes used and
//!   `at_line_start()` are the same;
//! - with nothing dropped or rewritten the output is the input, up to where scanning stopped,
//!   except for the beginning of a last `2xx` line still held back (no `\n`, at most `HOLD_MAX`);
//! - `finals()` counts the final codes reported, plus the dropped one; dropping removes exactly
//!   the chosen final reply from the codes and only removes bytes from the output;
//! - `rewrite` sees only complete single `227 `/`229 ` lines of at most `HOLD_MAX` bytes.
#![no_main]

use ftpd::front::reply::{ReplyScanner, HOLD_MAX};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[derive(Clone, Debug)]
struct Params {
    drop: Option<u64>,
    replacement: Option<Vec<u8>>,
    stop: Option<u16>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Run {
    out: Vec<u8>,
    codes: Vec<u16>,
    finals: u64,
    used: usize,
    line_start: bool,
}

fuzz_target!(|data: &[u8]| {
    let _ = fuzz(Unstructured::new(data));
});

fn fuzz(mut u: Unstructured) -> Result<()> {
    let drop = match u.int_in_range(0u8..=3)? {
        0 => Some(u.int_in_range(0u64..=6)?),
        _ => None,
    };
    let replacement = match u.int_in_range(0u8..=3)? {
        0 => Some(b"227 Entering Passive Mode (10,0,0,1,4,1)\r\n".to_vec()),
        1 => Some(Vec::new()),
        _ => None,
    };
    let stop = match u.int_in_range(0u8..=3)? {
        0 => Some(234),
        1 => Some(u.int_in_range(100u16..=599)?),
        _ => None,
    };
    let cuts: Vec<u16> = (0..u.int_in_range(0usize..=12)?)
        .map(|_| u.arbitrary())
        .collect::<Result<_>>()?;
    let data = u.take_rest();

    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) % (data.len() + 1))
        .collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    let pieces: Vec<&[u8]> = points.windows(2).map(|w| &data[w[0]..w[1]]).collect();

    let p = Params {
        drop,
        replacement,
        stop,
    };
    let whole = scan(&[data], &p);
    let split = scan(&pieces, &p);
    assert_eq!(whole, split, "cutting the input changed the result");

    assert!(whole.used <= data.len());
    if whole.used < data.len() {
        // Stopped: right after the line that completed the stop code.
        assert_eq!(data[whole.used - 1], b'\n');
        assert_eq!(whole.codes.last().copied(), p.stop);
    }
    // RFC 959 codes only: a `6xx` counted as final but never dropped (found by this target).
    assert!(whole.codes.iter().all(|c| (100..=599).contains(c)));
    let reported = whole.codes.iter().filter(|&&c| c >= 200).count() as u64;
    let dropped = u64::from(p.drop.is_some_and(|k| whole.finals > k));
    assert_eq!(whole.finals, reported + dropped, "finals() miscounts");

    if p.drop.is_none() && p.replacement.is_none() {
        identity(data, &whole);
    }
    if let (Some(k), None, None) = (p.drop, &p.replacement, p.stop) {
        // The same input without dropping: one final reply fewer, bytes only removed.
        let kept = scan(
            &[data],
            &Params {
                drop: None,
                ..p.clone()
            },
        );
        assert_eq!(kept.finals, whole.finals);
        assert_eq!(kept.used, whole.used);
        let mut n = 0;
        let mut want = Vec::new();
        for &c in &kept.codes {
            if c >= 200 {
                n += 1;
                if n == k + 1 {
                    continue;
                }
            }
            want.push(c);
        }
        assert_eq!(whole.codes, want, "drop {k} removed the wrong replies");
        assert!(
            is_subsequence(&whole.out, &kept.out),
            "dropping added bytes"
        );
    }
    Ok(())
}

/// Nothing dropped or rewritten: the output is the input, but for a held last `2xx` line.
fn identity(data: &[u8], run: &Run) {
    let input = &data[..run.used];
    assert!(input.starts_with(&run.out), "output differs from input");
    let held = &input[run.out.len()..];
    if !held.is_empty() {
        assert!(!held.contains(&b'\n'), "a complete line was held back");
        assert!(held.len() <= HOLD_MAX);
        // Held until its first four bytes show whether it is a `227`/`229` reply.
        assert_eq!(held[0], b'2');
        assert!(held.len() < 4 || held.starts_with(b"227 ") || held.starts_with(b"229 "));
        assert!(run.out.is_empty() || run.out.ends_with(b"\n"));
        assert!(!run.line_start);
    }
}

fn scan(pieces: &[&[u8]], p: &Params) -> Run {
    let mut s = ReplyScanner::new();
    let mut r = Run::default();
    let mut finals = 0;
    let mut stopped = false;
    for piece in pieces {
        let used = s.filter(
            piece,
            p.drop,
            &mut r.out,
            |code| {
                r.codes.push(code);
                stopped = Some(code) == p.stop;
                !stopped
            },
            |line| {
                assert!(line.len() <= HOLD_MAX, "rewrite got an over-long line");
                assert!(line.starts_with(b"227 ") || line.starts_with(b"229 "));
                assert_eq!(line.last(), Some(&b'\n'));
                assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
                p.replacement.clone()
            },
        );
        assert!(used <= piece.len());
        assert!(s.finals() >= finals);
        finals = s.finals();
        r.used += used;
        if stopped {
            // The rest of the stream is no longer FTP text (TLS after `234`).
            break;
        }
        assert_eq!(used, piece.len());
    }
    r.finals = s.finals();
    r.line_start = s.at_line_start();
    r
}

fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut it = big.iter();
    small.iter().all(|b| it.any(|c| c == b))
}
