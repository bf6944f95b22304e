//! The local file: a read-at-offset trait and the one-pass digest (length, CRC, prefix CRC).
//!
//! The prefix CRC the KEY INFO check needs (bytes `[0, S)`, S being the server's size) is
//! taken on the way through the file: the pass that computes the whole CRC notes the running
//! value when it crosses S, so a box reads its recording once before it uploads.

use crate::decision::{LocalFile, Prefix};
use core::convert::Infallible;
use core::fmt;

/// A file that can be read at any offset (`pread`), so retries need no seeking state.
pub trait ReadAt {
    /// The error a read can fail with.
    type Error;

    /// Reads up to `buf.len()` bytes at `offset`; `Ok(0)` means end of file.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error>;

    /// The CRC of the bytes from `start` up to `start + max` or the end of the file, whichever
    /// comes first, read through `buf`; `progress` gets the bytes done so far.
    ///
    /// The default reads in order ([`crc_span_sequential`]); a file on a system with threads
    /// may read several parts at once and join their CRCs.
    fn crc_span(
        &mut self,
        start: u64,
        max: Option<u64>,
        buf: &mut [u8],
        progress: &mut dyn FnMut(u64),
    ) -> Result<Span, Self::Error> {
        crc_span_sequential(self, start, max, buf, progress)
    }

    /// The whole file's length and CRC when they were computed ahead, e.g. by a thread that
    /// started reading the file while the dialogue connected and logged in. The default has
    /// none, and [`digest`] reads the file itself.
    fn precomputed(&mut self) -> Result<Option<Span>, Self::Error> {
        Ok(None)
    }

    /// The operating system's file behind this reader, if there is one: a network that can
    /// send a file without copying it through memory ([`Network::send_file`]) needs it.
    ///
    /// [`Network::send_file`]: crate::driver::Network::send_file
    #[cfg(feature = "std")]
    fn os_file(&self) -> Option<&std::fs::File> {
        None
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &mut T {
    type Error = T::Error;

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error> {
        (**self).read_at(offset, buf)
    }

    fn crc_span(
        &mut self,
        start: u64,
        max: Option<u64>,
        buf: &mut [u8],
        progress: &mut dyn FnMut(u64),
    ) -> Result<Span, Self::Error> {
        (**self).crc_span(start, max, buf, progress)
    }

    fn precomputed(&mut self) -> Result<Option<Span>, Self::Error> {
        (**self).precomputed()
    }

    #[cfg(feature = "std")]
    fn os_file(&self) -> Option<&std::fs::File> {
        (**self).os_file()
    }
}

// crc-tools owns the span so that every reader of file ranges (server, CLI, box) shares it.
pub use crc_tools::range::Span;

/// [`ReadAt::crc_span`] in one pass, in order: the whole of `buf` per read, nothing else.
/// An empty `buf` reads nothing. The loop is crc-tools' [`crc_span`](crc_tools::range::crc_span),
/// shared with the server and the `crc-tools` CLI.
pub fn crc_span_sequential<R: ReadAt + ?Sized>(
    file: &mut R,
    start: u64,
    max: Option<u64>,
    buf: &mut [u8],
    progress: &mut dyn FnMut(u64),
) -> Result<Span, R::Error> {
    crc_tools::range::crc_span(
        |at, chunk| file.read_at(at, chunk),
        start,
        max,
        buf,
        progress,
    )
}

/// Bytes in memory seen as a file.
#[derive(Clone, Copy, Debug)]
pub struct SliceFile<'a>(pub &'a [u8]);

impl ReadAt for SliceFile<'_> {
    type Error = Infallible;

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

/// Why the local file could not be digested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestError<E> {
    /// The file could not be read.
    Read(E),
    /// The file ended before bytes it was known to have.
    Shrunk,
    /// No buffer to read into.
    EmptyBuffer,
}

impl<E: fmt::Display> fmt::Display for DigestError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestError::Read(e) => write!(f, "cannot read the local file: {e}"),
            DigestError::Shrunk => f.write_str("the local file became shorter while being read"),
            DigestError::EmptyBuffer => f.write_str("no buffer to read the local file into"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: fmt::Debug + fmt::Display> std::error::Error for DigestError<E> {}

/// Length and CRC of the local file, plus the CRC of its first `prefix_at` bytes.
///
/// The file is read once: up to `prefix_at`, then on to the end, the two CRCs joined.
/// `known` is a `(len, crc)` pair from an earlier pass: then only the prefix is read, and
/// not even that when it is empty or the whole file. The prefix is `None` when `prefix_at`
/// is beyond the end of the file. `progress` gets the number of bytes read so far. A digest
/// the file [precomputed](ReadAt::precomputed) counts as `known`.
pub fn digest<R: ReadAt>(
    file: &mut R,
    buf: &mut [u8],
    prefix_at: Option<u64>,
    known: Option<(u64, u32)>,
    mut progress: impl FnMut(u64),
) -> Result<LocalFile, DigestError<R::Error>> {
    let known = match known {
        Some(k) => Some(k),
        None => file
            .precomputed()
            .map_err(DigestError::Read)?
            .map(|s| (s.len, s.crc)),
    };
    if let Some((len, crc)) = known {
        let prefix = match prefix_at {
            None => None,
            Some(s) if s > len => None,
            Some(s) if s == len => Some(Prefix { len, crc }),
            Some(0) => Some(Prefix { len: 0, crc: 0 }),
            Some(s) => {
                if buf.is_empty() {
                    return Err(DigestError::EmptyBuffer);
                }
                let head = file
                    .crc_span(0, Some(s), buf, &mut progress)
                    .map_err(DigestError::Read)?;
                if head.len < s {
                    return Err(DigestError::Shrunk);
                }
                Some(Prefix {
                    len: s,
                    crc: head.crc,
                })
            }
        };
        return Ok(LocalFile { len, crc, prefix });
    }
    if buf.is_empty() {
        return Err(DigestError::EmptyBuffer);
    }
    let s = prefix_at.unwrap_or(0);
    let head = file
        .crc_span(0, Some(s), buf, &mut progress)
        .map_err(DigestError::Read)?;
    if head.len < s {
        // The file ends before the prefix: `head` is all of it.
        return Ok(LocalFile {
            len: head.len,
            crc: head.crc,
            prefix: None,
        });
    }
    let tail = file
        .crc_span(s, None, buf, &mut |n| progress(s + n))
        .map_err(DigestError::Read)?;
    let whole = head.then(tail);
    Ok(LocalFile {
        len: whole.len,
        crc: whole.crc,
        prefix: prefix_at.map(|len| Prefix { len, crc: head.crc }),
    })
}

/// `min(len, remaining)` as a buffer length.
pub(crate) fn clamp(len: usize, remaining: u64) -> usize {
    usize::try_from(remaining).map_or(len, |r| r.min(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crc_tools::crc32;

    fn data() -> [u8; 1000] {
        core::array::from_fn(|i| (i * 31 + 7) as u8)
    }

    /// Reads at most `step` bytes per call, like a short-reading device.
    struct Dribble<'a>(&'a [u8], usize);

    impl ReadAt for Dribble<'_> {
        type Error = Infallible;
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Infallible> {
            let n = buf.len().min(self.1);
            SliceFile(self.0).read_at(offset, &mut buf[..n])
        }
    }

    #[test]
    fn whole_file_and_prefix_in_one_pass() {
        let d = data();
        for s in [0u64, 1, 63, 64, 65, 500, 999, 1000] {
            for step in [1usize, 7, 64, 4096] {
                let mut buf = [0u8; 64];
                let mut reads = 0u64;
                let got = digest(&mut Dribble(&d, step), &mut buf, Some(s), None, |_| {
                    reads += 1
                })
                .unwrap();
                assert_eq!(got.len, 1000);
                assert_eq!(got.crc, crc32(&d));
                assert_eq!(
                    got.prefix,
                    Some(Prefix {
                        len: s,
                        crc: crc32(&d[..s as usize])
                    }),
                    "s={s} step={step}"
                );
                assert!(reads >= 1000 / 64);
            }
        }
    }

    #[test]
    fn prefix_beyond_the_end_is_none() {
        let d = data();
        let mut buf = [0u8; 100];
        let got = digest(&mut SliceFile(&d), &mut buf, Some(1001), None, |_| {}).unwrap();
        assert_eq!(got.prefix, None);
        assert_eq!(got.crc, crc32(&d));
        let got = digest(&mut SliceFile(&d), &mut buf, None, None, |_| {}).unwrap();
        assert_eq!(got.prefix, None);
    }

    #[test]
    fn known_digest_reads_only_the_prefix() {
        let d = data();
        let known = Some((1000, crc32(&d)));
        let mut buf = [0u8; 100];
        let mut read = 0;
        let got = digest(&mut SliceFile(&d), &mut buf, Some(250), known, |n| read = n).unwrap();
        assert_eq!(
            got.prefix,
            Some(Prefix {
                len: 250,
                crc: crc32(&d[..250])
            })
        );
        assert_eq!(read, 250);
        // Empty and whole prefixes need no reading at all.
        let mut nothing = SliceFile(&[]);
        for (s, crc) in [(0u64, 0u32), (1000, crc32(&d))] {
            let got = digest(&mut nothing, &mut buf, Some(s), known, |_| {}).unwrap();
            assert_eq!(got.prefix, Some(Prefix { len: s, crc }));
        }
        let got = digest(&mut nothing, &mut buf, Some(1001), known, |_| {}).unwrap();
        assert_eq!(got.prefix, None);
        // The file shrank since it was digested.
        assert_eq!(
            digest(
                &mut SliceFile(&d[..100]),
                &mut buf,
                Some(250),
                known,
                |_| {}
            ),
            Err(DigestError::Shrunk)
        );
    }

    /// A file whose whole digest was computed ahead: only the prefix is read, and a failure
    /// of the computation ahead is the digest's failure.
    struct Ahead<'a>(SliceFile<'a>, Result<Option<Span>, Infallible>);

    impl ReadAt for Ahead<'_> {
        type Error = Infallible;

        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Infallible> {
            self.0.read_at(offset, buf)
        }

        fn precomputed(&mut self) -> Result<Option<Span>, Infallible> {
            self.1
        }
    }

    #[test]
    fn precomputed_digest_counts_as_known() {
        let d = data();
        let whole = Span {
            len: 1000,
            crc: crc32(&d),
        };
        let mut buf = [0u8; 100];
        let mut read = 0;
        let mut file = Ahead(SliceFile(&d), Ok(Some(whole)));
        let got = digest(&mut file, &mut buf, Some(250), None, |n| read = n).unwrap();
        assert_eq!((got.len, got.crc), (whole.len, whole.crc));
        assert_eq!(got.prefix.map(|p| p.crc), Some(crc32(&d[..250])));
        assert_eq!(read, 250);
        // A fresh upload (no prefix asked for) reads nothing at all.
        let mut file = Ahead(SliceFile(&[]), Ok(Some(whole)));
        let got = digest(&mut file, &mut buf, None, None, |_| {}).unwrap();
        assert_eq!((got.len, got.crc, got.prefix), (1000, crc32(&d), None));
        // An earlier attempt's digest wins over the precomputed one.
        let mut file = Ahead(SliceFile(&[]), Ok(Some(Span { len: 1, crc: 1 })));
        let got = digest(&mut file, &mut buf, None, Some((1000, 7)), |_| {}).unwrap();
        assert_eq!((got.len, got.crc), (1000, 7));
        // Nothing precomputed: the one pass as usual.
        let mut file = Ahead(SliceFile(&d), Ok(None));
        let got = digest(&mut file, &mut buf, None, None, |_| {}).unwrap();
        assert_eq!((got.len, got.crc), (1000, crc32(&d)));
    }

    #[test]
    fn empty_file_and_empty_buffer() {
        let mut buf = [0u8; 8];
        let got = digest(&mut SliceFile(&[]), &mut buf, Some(0), None, |_| {}).unwrap();
        assert_eq!(
            got,
            LocalFile {
                len: 0,
                crc: 0,
                prefix: Some(Prefix { len: 0, crc: 0 })
            }
        );
        assert_eq!(
            digest(&mut SliceFile(&[1]), &mut [], None, None, |_| {}),
            Err(DigestError::EmptyBuffer)
        );
    }
}
