//! Watches server replies, to find the codes the front acts on, and leaves out the replies to
//! commands the front injected itself.
//!
//! Only the first four bytes of each line are kept, so a long reply line costs no memory; the
//! exceptions are `227` and `229` lines (at most [`HOLD_MAX`] bytes), which the front rewrites to
//! announce its own passive ports.

/// Longest `227`/`229` line held for rewriting; a longer one passes unchanged.
pub const HOLD_MAX: usize = 256;

/// Finds the code of every complete reply in the server's byte stream, including multi-line
/// replies (`213-...` ... `213 end`), counts the final (non-`1xx`) ones, and can drop one of them.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    head: [u8; 4],
    head_len: usize,
    multiline: Option<[u8; 3]>,
    mid_line: bool,
    /// Final replies completed so far; the greeting is number 0.
    finals: u64,
    /// The reply being read is left out.
    dropping: bool,
    /// Bytes of a line that may be a `227`/`229` reply, held until it is known and complete.
    held: Vec<u8>,
    holding: bool,
}

impl ReplyScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds server bytes; `on_reply` gets each reply code as its reply completes. When it
    /// returns `false` scanning stops (the rest of the stream is no longer FTP text) and the
    /// number of bytes consumed is returned.
    #[cfg(test)]
    pub fn feed(&mut self, data: &[u8], on_reply: impl FnMut(u16) -> bool) -> usize {
        self.scan(data, None, None, on_reply, |_| None)
    }

    /// Like [`feed`](Self::feed), but appends to `out` every byte except those of final reply
    /// number `drop` (counting from 0, the greeting), which is also not reported to `on_reply`.
    /// A complete single-line `227` or `229` reply is passed to `rewrite` first, and what it
    /// returns replaces the line (`None` keeps it). Bytes after the point where scanning stopped
    /// are not copied.
    pub fn filter(
        &mut self,
        data: &[u8],
        drop: Option<u64>,
        out: &mut Vec<u8>,
        on_reply: impl FnMut(u16) -> bool,
        rewrite: impl FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> usize {
        self.scan(data, drop, Some(out), on_reply, rewrite)
    }

    /// Final replies completed so far, the greeting included.
    pub fn finals(&self) -> u64 {
        self.finals
    }

    fn scan(
        &mut self,
        data: &[u8],
        drop: Option<u64>,
        mut out: Option<&mut Vec<u8>>,
        mut on_reply: impl FnMut(u16) -> bool,
        mut rewrite: impl FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> usize {
        for (i, &b) in data.iter().enumerate() {
            if !self.mid_line && self.multiline.is_none() {
                // A reply starts here: a final one is recognised by its first digit, so whether
                // to drop it is known before any of its bytes would have been passed on.
                self.dropping = drop == Some(self.finals) && (b'2'..=b'5').contains(&b);
                self.holding = !self.dropping && b == b'2' && out.is_some();
            }
            if self.holding {
                self.held.push(b);
                let known = self.held.len() >= 4 || b == b'\n';
                let wanted = self.held.starts_with(b"227 ") || self.held.starts_with(b"229 ");
                if (known && !wanted) || self.held.len() > HOLD_MAX {
                    self.release(out.as_deref_mut(), None);
                }
            } else if !self.dropping {
                if let Some(out) = out.as_deref_mut() {
                    out.push(b);
                }
            }
            self.mid_line = b != b'\n';
            if b == b'\n' {
                if self.holding {
                    let replacement = rewrite(&self.held);
                    self.release(out.as_deref_mut(), replacement);
                }
                let code = self.end_of_line();
                self.head_len = 0;
                let dropped = std::mem::take(&mut self.dropping);
                if self.multiline.is_some() {
                    self.dropping = dropped;
                }
                if let Some(code) = code {
                    if code >= 200 {
                        self.finals += 1;
                    }
                    if !dropped && !on_reply(code) {
                        return i + 1;
                    }
                }
            } else if self.head_len < self.head.len() {
                self.head[self.head_len] = b;
                self.head_len += 1;
            }
        }
        data.len()
    }

    /// Stops holding: the held bytes (or their replacement) go out.
    fn release(&mut self, out: Option<&mut Vec<u8>>, replacement: Option<Vec<u8>>) {
        let held = std::mem::take(&mut self.held);
        if let Some(out) = out {
            out.extend_from_slice(replacement.as_deref().unwrap_or(&held));
        }
        self.holding = false;
    }

    /// Whether the client has seen a complete line last, so text the front injects starts on its
    /// own line.
    pub fn at_line_start(&self) -> bool {
        !self.mid_line || self.dropping || (self.holding && self.held.is_empty())
    }

    fn end_of_line(&mut self) -> Option<u16> {
        let head = &self.head[..self.head_len];
        // RFC 959 codes start with 1 to 5; only those can be the reply that `drop` leaves out,
        // so only those are counted.
        if head.len() < 3
            || !head[..3].iter().all(u8::is_ascii_digit)
            || !(b'1'..=b'5').contains(&head[0])
        {
            return None;
        }
        let digits = [head[0], head[1], head[2]];
        let sep = head.get(3).copied().unwrap_or(b'\r');
        let code = digits
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
        match self.multiline {
            Some(open) => {
                if open == digits && sep != b'-' {
                    self.multiline = None;
                    Some(code)
                } else {
                    None
                }
            }
            None if sep == b'-' => {
                self.multiline = Some(digits);
                None
            }
            None if sep == b' ' || sep == b'\r' => Some(code),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(s: &mut ReplyScanner, data: &[u8]) -> Vec<u16> {
        let mut out = Vec::new();
        s.feed(data, |c| {
            out.push(c);
            true
        });
        out
    }

    #[test]
    fn single_line_replies() {
        let mut s = ReplyScanner::new();
        assert_eq!(
            codes(&mut s, b"220 Welcome\r\n331 Password\r\n230\r\n"),
            vec![220, 331, 230]
        );
        assert!(s.at_line_start());
    }

    #[test]
    fn replies_split_across_reads() {
        let mut s = ReplyScanner::new();
        assert_eq!(codes(&mut s, b"5"), Vec::<u16>::new());
        assert!(!s.at_line_start());
        assert_eq!(codes(&mut s, b"30 Authentication f"), Vec::<u16>::new());
        assert_eq!(codes(&mut s, b"ailed\r\n"), vec![530]);
        assert!(s.at_line_start());
    }

    #[test]
    fn multi_line_reply_counts_once() {
        let mut s = ReplyScanner::new();
        let data = b"213-declared=0x1\r\n 230 indented\r\nsize=5\r\n213 end\r\n226 ok\r\n";
        assert_eq!(codes(&mut s, data), vec![213, 226]);
    }

    #[test]
    fn other_code_inside_multi_line_is_ignored() {
        let mut s = ReplyScanner::new();
        assert_eq!(
            codes(&mut s, b"211-Features\r\n530 not a reply\r\n211 End\r\n"),
            vec![211]
        );
    }

    #[test]
    fn stops_when_told() {
        let mut s = ReplyScanner::new();
        let data = b"234 Upgrading\r\n\x16\x03\x03garbage\n";
        let used = s.feed(data, |c| c != 234);
        assert_eq!(used, b"234 Upgrading\r\n".len());
    }

    #[test]
    fn random_bytes_never_panic_and_split_reads_agree() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let data: Vec<u8> = (0..(next() % 3000))
                .map(|_| match next() % 8 {
                    0 => b'\n',
                    1 => b'0' + (next() % 10) as u8,
                    2 => b'-',
                    3 => b' ',
                    _ => next() as u8,
                })
                .collect();
            let whole = codes(&mut ReplyScanner::new(), &data);
            let mut s = ReplyScanner::new();
            let mut pieces = Vec::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let take = 1 + (next() as usize % rest.len().min(50));
                pieces.extend(codes(&mut s, &rest[..take]));
                rest = &rest[take..];
            }
            assert_eq!(whole, pieces);
        }
    }

    #[test]
    fn garbage_is_not_a_reply() {
        let mut s = ReplyScanner::new();
        assert_eq!(
            codes(&mut s, b"hello\r\n12\r\n1234\r\n\n"),
            Vec::<u16>::new()
        );
    }

    /// Found by fuzzing: a `6xx` line counted as a final reply but could not be dropped, so the
    /// reply to leave out was missed and the count and the drop disagreed.
    #[test]
    fn codes_outside_1_to_5_are_not_replies() {
        let mut s = ReplyScanner::new();
        assert_eq!(
            codes(&mut s, b"603 x\r\n099 y\r\n999\r\n200 ok\r\n"),
            vec![200]
        );
        assert_eq!(s.finals(), 1);
        let (out, seen) = filtered(
            &mut ReplyScanner::new(),
            b"220 hi\r\n603 x\r\n350 z\r\n",
            Some(1),
        );
        assert_eq!(out, b"220 hi\r\n603 x\r\n".to_vec());
        assert_eq!(seen, vec![220]);
    }

    fn filtered(s: &mut ReplyScanner, data: &[u8], drop: Option<u64>) -> (Vec<u8>, Vec<u16>) {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        s.filter(
            data,
            drop,
            &mut out,
            |c| {
                seen.push(c);
                true
            },
            |_| None,
        );
        (out, seen)
    }

    /// Passive replies are rewritten whole, wherever the reads split them; other lines that
    /// start with 2 pass through unchanged.
    #[test]
    fn passive_replies_are_rewritten_across_split_reads() {
        let data: &[u8] = b"220 hi\r\n227 Entering Passive Mode (127,0,0,1,4,1)\r\n200 ok\r\n229 Entering Extended Passive Mode (|||1025|)\r\n22\r\n";
        for split in 1..data.len() {
            let mut s = ReplyScanner::new();
            let mut out = Vec::new();
            let mut seen = Vec::new();
            for part in [&data[..split], &data[split..]] {
                s.filter(
                    part,
                    None,
                    &mut out,
                    |c| {
                        seen.push(c);
                        true
                    },
                    |line| {
                        Some(
                            format!(
                                "{} rewritten\r\n",
                                std::str::from_utf8(&line[..3]).unwrap_or("?")
                            )
                            .into_bytes(),
                        )
                    },
                );
            }
            assert_eq!(
                out,
                b"220 hi\r\n227 rewritten\r\n200 ok\r\n229 rewritten\r\n22\r\n".to_vec(),
                "split at {split}"
            );
            assert_eq!(seen, vec![220, 227, 200, 229]);
        }
    }

    #[test]
    fn an_over_long_passive_line_passes_unchanged() {
        let mut line = b"227 ".to_vec();
        line.extend(std::iter::repeat_n(b'x', HOLD_MAX * 2));
        line.extend_from_slice(b"\r\n");
        let mut s = ReplyScanner::new();
        let mut out = Vec::new();
        s.filter(
            &line,
            None,
            &mut out,
            |_| true,
            |_| Some(b"no\r\n".to_vec()),
        );
        assert_eq!(out, line);
    }

    #[test]
    fn filter_drops_exactly_one_final_reply() {
        let mut s = ReplyScanner::new();
        let data = b"220 hi\r\n200 ok\r\n350 Restarting at 0.\r\n150 go\r\n226 done\r\n";
        let (out, seen) = filtered(&mut s, data, Some(2));
        assert_eq!(out, b"220 hi\r\n200 ok\r\n150 go\r\n226 done\r\n".to_vec());
        assert_eq!(seen, vec![220, 200, 150, 226]);
        assert_eq!(s.finals(), 4);
        assert!(s.at_line_start());
    }

    #[test]
    fn filter_drops_multi_line_reply_split_across_reads() {
        // Reply 1 is the 350; " 550 inside" is not a reply of its own.
        let plain = b"220 hi\r\n350 zero\r\n 550 inside\r\n150 go\r\n226 ok\r\n";
        let data2 = b"220 hi\r\n350-one\r\n 550 inside\r\n350 two\r\n150 go\r\n226 ok\r\n";
        for data in [&plain[..], &data2[..]] {
            let (whole, _) = filtered(&mut ReplyScanner::new(), data, Some(1));
            for cut in 0..data.len() {
                let mut s = ReplyScanner::new();
                let (mut a, _) = filtered(&mut s, &data[..cut], Some(1));
                let (b, _) = filtered(&mut s, &data[cut..], Some(1));
                a.extend(b);
                assert_eq!(a, whole, "cut at {cut}");
            }
        }
        let (out, seen) = filtered(&mut ReplyScanner::new(), data2, Some(1));
        assert_eq!(out, b"220 hi\r\n150 go\r\n226 ok\r\n".to_vec());
        assert_eq!(seen, vec![220, 150, 226]);
    }

    #[test]
    fn filter_counts_finals_only_and_keeps_preliminary_replies() {
        let mut s = ReplyScanner::new();
        // 150 is preliminary: the final reply number 1 is the 226, number 2 the 550.
        let (out, _) = filtered(&mut s, b"220 hi\r\n150 go\r\n226 ok\r\n550 no\r\n", Some(2));
        assert_eq!(out, b"220 hi\r\n150 go\r\n226 ok\r\n".to_vec());
        let (out, _) = filtered(&mut s, b"200 later\r\n", Some(2));
        assert_eq!(out, b"200 later\r\n".to_vec());
    }

    #[test]
    fn filter_without_drop_is_identity() {
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        for _ in 0..100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let data: Vec<u8> = (0..(x % 500))
                .map(|i| b"3 5-\r\n0xy"[((i * 7) ^ x) as usize % 9])
                .collect();
            let (out, _) = filtered(&mut ReplyScanner::new(), &data, None);
            assert_eq!(out, data);
        }
    }
}
