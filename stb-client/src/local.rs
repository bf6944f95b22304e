//! The local file: a read-at-offset trait and the one-pass digest (length, CRC, prefix CRC).
//!
//! The prefix CRC the KEY INFO check needs (bytes `[0, S)`, S being the server's size) is
//! taken on the way through the file: the pass that computes the whole CRC notes the running
//! value when it crosses S, so a box reads its recording once before it uploads.

use crate::decision::{LocalFile, Prefix};
use core::convert::Infallible;
use core::fmt;
use crc_tools::Crc32;

/// A file that can be read at any offset (`pread`), so retries need no seeking state.
pub trait ReadAt {
    /// The error a read can fail with.
    type Error;

    /// Reads up to `buf.len()` bytes at `offset`; `Ok(0)` means end of file.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error>;
}

impl<T: ReadAt + ?Sized> ReadAt for &mut T {
    type Error = T::Error;

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error> {
        (**self).read_at(offset, buf)
    }
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
/// `known` is a `(len, crc)` pair from an earlier pass: then only the prefix is read, and
/// not even that when it is empty or the whole file. The prefix is `None` when `prefix_at`
/// is beyond the end of the file. `progress` gets the number of bytes read so far.
pub fn digest<R: ReadAt>(
    file: &mut R,
    buf: &mut [u8],
    prefix_at: Option<u64>,
    known: Option<(u64, u32)>,
    mut progress: impl FnMut(u64),
) -> Result<LocalFile, DigestError<R::Error>> {
    if let Some((len, crc)) = known {
        let prefix = match prefix_at {
            None => None,
            Some(s) if s > len => None,
            Some(s) if s == len => Some(Prefix { len, crc }),
            Some(s) => Some(Prefix {
                len: s,
                crc: crc_of_prefix(file, buf, s, &mut progress)?,
            }),
        };
        return Ok(LocalFile { len, crc, prefix });
    }
    if buf.is_empty() {
        return Err(DigestError::EmptyBuffer);
    }
    let mut crc = Crc32::new();
    let mut prefix = None;
    loop {
        let pos = crc.len();
        if prefix_at == Some(pos) {
            prefix = Some(Prefix {
                len: pos,
                crc: crc.value(),
            });
        }
        // Stop a read at the prefix boundary, so the running value is noted exactly there.
        let want = match prefix_at {
            Some(s) if s > pos => clamp(buf.len(), s - pos),
            _ => buf.len(),
        };
        let n = file
            .read_at(pos, &mut buf[..want])
            .map_err(DigestError::Read)?;
        if n == 0 {
            return Ok(LocalFile {
                len: pos,
                crc: crc.value(),
                prefix,
            });
        }
        crc.update(&buf[..n.min(want)]);
        progress(crc.len());
    }
}

fn crc_of_prefix<R: ReadAt>(
    file: &mut R,
    buf: &mut [u8],
    s: u64,
    progress: &mut impl FnMut(u64),
) -> Result<u32, DigestError<R::Error>> {
    if s == 0 {
        return Ok(0);
    }
    if buf.is_empty() {
        return Err(DigestError::EmptyBuffer);
    }
    let mut crc = Crc32::new();
    while crc.len() < s {
        let want = clamp(buf.len(), s - crc.len());
        let n = file
            .read_at(crc.len(), &mut buf[..want])
            .map_err(DigestError::Read)?;
        if n == 0 {
            return Err(DigestError::Shrunk);
        }
        crc.update(&buf[..n.min(want)]);
        progress(crc.len());
    }
    Ok(crc.value())
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
