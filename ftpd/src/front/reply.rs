//! Watches server replies without changing them, to find the codes the front acts on.
//!
//! Only the first four bytes of each line are kept, so a long reply line costs no memory.

/// Finds the code of every complete (final) reply in the server's byte stream, including
/// multi-line replies (`213-...` ... `213 end`).
#[derive(Debug, Default)]
pub struct ReplyScanner {
    head: [u8; 4],
    head_len: usize,
    multiline: Option<[u8; 3]>,
    mid_line: bool,
}

impl ReplyScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds server bytes; `on_reply` gets each final reply code as its line completes. When it
    /// returns `false` scanning stops (the rest of the stream is no longer FTP text) and the
    /// number of bytes consumed is returned.
    pub fn feed(&mut self, data: &[u8], mut on_reply: impl FnMut(u16) -> bool) -> usize {
        for (i, &b) in data.iter().enumerate() {
            self.mid_line = b != b'\n';
            if b == b'\n' {
                let code = self.end_of_line();
                self.head_len = 0;
                if let Some(code) = code {
                    if !on_reply(code) {
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

    /// Whether the last byte seen ended a line, so text the front injects starts on its own line.
    pub fn at_line_start(&self) -> bool {
        !self.mid_line
    }

    fn end_of_line(&mut self) -> Option<u16> {
        let head = &self.head[..self.head_len];
        if head.len() < 3 || !head[..3].iter().all(u8::is_ascii_digit) {
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
}
