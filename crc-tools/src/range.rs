//! The CRC of a range of a file: the one read loop the server, the client and the CLI share.
//!
//! The core, [`crc_span`], is `no_std` and allocation-free: it reads through a buffer the
//! caller owns, from a "read at offset" callback, so a box's flash file, a `pread`able
//! `std::fs::File` and a stream without offsets (standard input) all go through the same loop.
//! With the `std` feature, [`crc_of_file_range`] and [`crc_of_reader`] wrap it for files and
//! readers.

use crate::checksum::{combine, Crc32};

/// Length and CRC of a run of bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Bytes covered.
    pub len: u64,
    /// Their CRC-32.
    pub crc: u32,
}

impl Span {
    /// This run followed by `next`: CRCs join without reading either run again, which is how
    /// parts read on several threads become the whole.
    pub fn then(self, next: Span) -> Span {
        Span {
            len: self.len + next.len,
            crc: combine(self.crc, next.crc, next.len),
        }
    }
}

/// The CRC of the bytes from `start` up to `start + max` or the end of the source, whichever
/// comes first.
///
/// `read_at(offset, chunk)` reads up to `chunk.len()` bytes at `offset`, `Ok(0)` meaning the
/// end; a source without offsets may ignore `offset`, as the loop asks for consecutive ones.
/// Each read gets the whole of `buf` (or what is left of `max`), so the caller's buffer size
/// is the read size; an empty `buf` reads nothing. `progress` gets the bytes done so far after
/// each read. A short result is not an error here: callers that need every byte compare
/// [`Span::len`] with what they asked for.
pub fn crc_span<E>(
    mut read_at: impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
    start: u64,
    max: Option<u64>,
    buf: &mut [u8],
    mut progress: impl FnMut(u64),
) -> Result<Span, E> {
    let mut crc = Crc32::new();
    loop {
        let want = match max {
            // `max - done` may not fit a usize on a 32-bit box; the buffer always does.
            Some(m) => usize::try_from(m - crc.len()).map_or(buf.len(), |r| r.min(buf.len())),
            None => buf.len(),
        };
        if want == 0 {
            break;
        }
        let n = read_at(start + crc.len(), &mut buf[..want])?;
        if n == 0 {
            break;
        }
        // A source that claims more than it was given must not push the CRC past `max`.
        crc.update(&buf[..n.min(want)]);
        progress(crc.len());
    }
    Ok(Span {
        len: crc.len(),
        crc: crc.value(),
    })
}

#[cfg(feature = "std")]
pub use self::file::{crc_of_file_range, crc_of_reader, read_file_at};

#[cfg(feature = "std")]
mod file {
    use super::{crc_span, Span};
    use std::fs::File;
    use std::io::{self, ErrorKind, Read};
    use std::ops::Range;

    /// Runs `op` again while it fails with `Interrupted`: a signal is no reason to give up.
    fn retrying<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        loop {
            match op() {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Reads up to `buf.len()` bytes of `file` at `offset`, retrying on `Interrupted`.
    ///
    /// On unix this is `pread`, which leaves the file's cursor alone, so threads can share one
    /// handle; elsewhere it seeks and reads, moving the cursor.
    pub fn read_file_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            retrying(|| file.read_at(buf, offset))
        }
        #[cfg(not(unix))]
        {
            use std::io::{Seek, SeekFrom};
            let mut f = file;
            f.seek(SeekFrom::Start(offset))?;
            retrying(|| f.read(buf))
        }
    }

    /// CRC-32 of bytes `range` of `file`, read at offsets through `buf`; `UnexpectedEof` if the file ends first.
    ///
    /// An empty (or reversed) range is the CRC of nothing, 0, and reads nothing. A non-empty
    /// range with an empty `buf` is `InvalidInput` rather than a misleading end of file.
    pub fn crc_of_file_range(file: &File, range: Range<u64>, buf: &mut [u8]) -> io::Result<u32> {
        let want = range.end.saturating_sub(range.start);
        if want > 0 && buf.is_empty() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "no buffer to read the file into",
            ));
        }
        let span = crc_span(
            |at, chunk| read_file_at(file, at, chunk),
            range.start,
            Some(want),
            buf,
            |_| {},
        )?;
        if span.len < want {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "the file ends before the range does",
            ));
        }
        Ok(span.crc)
    }

    /// The CRC of the first `max` bytes of `reader`, or all of it if it ends first (or `max`
    /// is `None`), through `buf`: for streams without offsets, such as standard input.
    pub fn crc_of_reader(
        mut reader: impl Read,
        max: Option<u64>,
        buf: &mut [u8],
    ) -> io::Result<Span> {
        // The loop asks for consecutive offsets, which is what reading in order gives.
        crc_span(
            |_, chunk| retrying(|| reader.read(chunk)),
            0,
            max,
            buf,
            |_| {},
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::checksum::crc32;
    use core::convert::Infallible;
    use std::vec::Vec;

    fn data() -> [u8; 1000] {
        core::array::from_fn(|i| (i * 31 + 7) as u8)
    }

    /// Bytes in memory read at offsets, at most `step` bytes per call like a short-reading
    /// device; counts the calls.
    fn reader<'a>(
        d: &'a [u8],
        step: usize,
        calls: &'a mut usize,
    ) -> impl FnMut(u64, &mut [u8]) -> Result<usize, Infallible> + 'a {
        move |at, chunk| {
            *calls += 1;
            let from = (at as usize).min(d.len());
            let n = chunk.len().min(step).min(d.len() - from);
            chunk[..n].copy_from_slice(&d[from..from + n]);
            Ok(n)
        }
    }

    fn span_of(bytes: &[u8]) -> Span {
        Span {
            len: bytes.len() as u64,
            crc: crc32(bytes),
        }
    }

    #[test]
    fn ranges_at_start_middle_and_end() {
        let d = data();
        let cases: [(u64, Option<u64>, &[u8]); 9] = [
            (0, Some(100), &d[..100]),
            (0, None, &d[..]),
            (0, Some(1000), &d[..]),
            (0, Some(5000), &d[..]),
            (123, Some(456), &d[123..579]),
            (123, None, &d[123..]),
            (900, Some(100), &d[900..]),
            (900, Some(101), &d[900..]),
            (999, Some(u64::MAX - 999), &d[999..]),
        ];
        for (start, max, want) in cases {
            for step in [1, 7, 64, 4096] {
                let mut calls = 0;
                let mut buf = [0u8; 64];
                let got = crc_span(reader(&d, step, &mut calls), start, max, &mut buf, |_| {});
                assert_eq!(
                    got,
                    Ok(span_of(want)),
                    "start={start} max={max:?} step={step}"
                );
            }
        }
    }

    #[test]
    fn empty_ranges_read_nothing_or_find_the_end() {
        let d = data();
        let mut buf = [0u8; 64];
        let mut calls = 0;
        let got = crc_span(reader(&d, 64, &mut calls), 10, Some(0), &mut buf, |_| {});
        assert_eq!((got, calls), (Ok(Span::default()), 0));
        // At or past the end: one read that finds it.
        for start in [1000, 2000] {
            let mut calls = 0;
            let got = crc_span(reader(&d, 64, &mut calls), start, None, &mut buf, |_| {});
            assert_eq!((got, calls), (Ok(Span::default()), 1));
        }
        // No buffer: nothing is read.
        let mut calls = 0;
        let got = crc_span(reader(&d, 64, &mut calls), 0, None, &mut [], |_| {});
        assert_eq!((got, calls), (Ok(Span::default()), 0));
    }

    #[test]
    fn buffer_smaller_than_the_range_reads_it_whole_in_steps() {
        let d = data();
        let mut buf = [0u8; 100];
        let mut calls = 0;
        let got = crc_span(
            reader(&d, usize::MAX, &mut calls),
            50,
            Some(950),
            &mut buf,
            |_| {},
        );
        assert_eq!(got, Ok(span_of(&d[50..])));
        // 950 bytes in 100-byte reads: ten reads, the last a short one; `max` is reached
        // exactly, so no read is spent to find the end.
        assert_eq!(calls, 10);
    }

    #[test]
    fn progress_counts_the_bytes_done_after_each_read() {
        let d = data();
        let mut buf = [0u8; 300];
        let mut calls = 0;
        let mut seen = Vec::new();
        let got = crc_span(reader(&d, 250, &mut calls), 100, None, &mut buf, |n| {
            seen.push(n)
        });
        assert_eq!(got, Ok(span_of(&d[100..])));
        assert_eq!(seen, [250, 500, 750, 900]);
        let mut seen = Vec::new();
        let mut calls = 0;
        let _ = crc_span(reader(&d, 1000, &mut calls), 0, Some(700), &mut buf, |n| {
            seen.push(n)
        });
        assert_eq!(seen, [300, 600, 700]);
    }

    #[test]
    fn a_source_that_overclaims_stops_at_max() {
        let mut buf = [0u8; 64];
        let got = crc_span(
            |_, chunk: &mut [u8]| {
                chunk.fill(7);
                Ok::<_, Infallible>(usize::MAX)
            },
            0,
            Some(10),
            &mut buf,
            |_| {},
        );
        assert_eq!(got, Ok(span_of(&[7; 10])));
    }

    #[test]
    fn read_errors_are_returned() {
        let mut buf = [0u8; 8];
        let got = crc_span(|_, _: &mut [u8]| Err("gone"), 0, None, &mut buf, |_| {});
        assert_eq!(got, Err("gone"));
    }

    #[test]
    fn spans_join_like_their_bytes() {
        let d = data();
        for split in [0, 1, 500, 999, 1000] {
            let (a, b) = d.split_at(split);
            assert_eq!(span_of(a).then(span_of(b)), span_of(&d));
        }
    }

    #[cfg(feature = "std")]
    mod std_wrappers {
        use super::*;
        use std::io::{self, ErrorKind, Read, Write};

        fn temp_file(bytes: &[u8]) -> std::fs::File {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(bytes).unwrap();
            f
        }

        #[test]
        fn file_ranges_at_start_middle_and_end() {
            let d = data();
            let f = temp_file(&d);
            for buf_len in [1, 64, 1000, 4096] {
                let mut buf = std::vec![0u8; buf_len];
                for (range, want) in [
                    (0..1000, &d[..]),
                    (0..10, &d[..10]),
                    (250..750, &d[250..750]),
                    (999..1000, &d[999..]),
                    (1000..1000, &d[..0]),
                    (5000..5000, &d[..0]),
                    // A reversed range is empty, as in the server's `while pos < to`.
                    (core::ops::Range { start: 7, end: 3 }, &d[..0]),
                ] {
                    let got = crc_of_file_range(&f, range.clone(), &mut buf).unwrap();
                    assert_eq!(got, crc32(want), "range={range:?} buf={buf_len}");
                }
            }
        }

        #[test]
        fn a_short_file_is_unexpected_eof() {
            let d = data();
            let f = temp_file(&d);
            let mut buf = [0u8; 64];
            for range in [0..1001, 999..1001, 1000..1001, 2000..3000] {
                let err = crc_of_file_range(&f, range.clone(), &mut buf).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "range={range:?}");
            }
            let err = crc_of_file_range(&f, 0..1, &mut []).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert_eq!(crc_of_file_range(&f, 0..0, &mut []).unwrap(), 0);
        }

        #[test]
        fn read_file_at_leaves_other_offsets_alone() {
            let d = data();
            let f = temp_file(&d);
            let mut buf = [0u8; 10];
            assert_eq!(read_file_at(&f, 995, &mut buf).unwrap(), 5);
            assert_eq!(buf[..5], d[995..]);
            assert_eq!(read_file_at(&f, 1000, &mut buf).unwrap(), 0);
            assert_eq!(read_file_at(&f, 3, &mut buf).unwrap(), 10);
            assert_eq!(buf, d[3..13]);
        }

        /// Fails with `Interrupted` before every read that returns bytes.
        struct Jumpy<'a>(&'a [u8], bool);

        impl Read for Jumpy<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1 = !self.1;
                if self.1 {
                    return Err(ErrorKind::Interrupted.into());
                }
                self.0.read(buf)
            }
        }

        #[test]
        fn readers_are_read_in_order_through_interruptions() {
            let d = data();
            let mut buf = [0u8; 64];
            let got = crc_of_reader(Jumpy(&d, false), None, &mut buf).unwrap();
            assert_eq!(got, span_of(&d));
            let got = crc_of_reader(Jumpy(&d, false), Some(333), &mut buf).unwrap();
            assert_eq!(got, span_of(&d[..333]));
            let got = crc_of_reader(Jumpy(&d, false), Some(5000), &mut buf).unwrap();
            assert_eq!(got, span_of(&d));
        }
    }
}
