//! Direct I/O and the page cache: chunks are written past the page cache where the filesystem
//! allows it, and what does go through the cache is dropped from it soon after.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Block size for direct I/O: offsets, lengths and memory addresses must be multiples of the
/// device's logical block size, and 4 KiB is one for every disk in use.
pub(super) const BLOCK: usize = 4096;

/// Where in `buf` a chunk for file offset `at` must begin so that memory addresses and file
/// offsets agree modulo [`BLOCK`]; then its whole blocks can be written directly.
pub(super) fn block_lead(buf: &[u8], at: u64) -> usize {
    (buf.as_ptr().align_offset(BLOCK) + (at % BLOCK as u64) as usize) % BLOCK
}

/// Writes `data` at `offset`: the whole blocks through `direct` when given (`data` must then
/// sit at an address that agrees with `offset` modulo [`BLOCK`]), the partial blocks at either
/// end through `file`. A direct write that fails is done the ordinary way, and `direct_ok`
/// turns `false`.
pub(super) fn write_at(
    file: &std::fs::File,
    direct: Option<&std::fs::File>,
    data: &[u8],
    offset: u64,
    direct_ok: &mut bool,
) -> io::Result<()> {
    let head = ((BLOCK as u64 - offset % BLOCK as u64) % BLOCK as u64) as usize;
    let head = head.min(data.len());
    let body = (data.len() - head) / BLOCK * BLOCK;
    let (Some(direct), true) = (direct, body > 0) else {
        return file.write_all_at(data, offset);
    };
    let (first, rest) = data.split_at(head);
    let (middle, last) = rest.split_at(body);
    file.write_all_at(first, offset)?;
    let at = offset + head as u64;
    if let Err(e) = direct.write_all_at(middle, at) {
        // Refused (alignment rules, filesystem support) or failed: the ordinary write either
        // does it or reports the real error.
        tracing::info!(error = %e, "direct write failed; writing through the page cache");
        *direct_ok = false;
        file.write_all_at(middle, at)?;
    }
    file.write_all_at(last, at + body as u64)
}

/// The file opened a second time for direct I/O, through its descriptor so that it is surely
/// the same file; `None` where the filesystem or platform does not offer it.
#[cfg(target_os = "linux")]
pub(super) fn open_direct(file: &std::fs::File) -> Option<Arc<std::fs::File>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(&path)
    {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            tracing::debug!(error = %e, "no direct I/O for this file");
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn open_direct(_file: &std::fs::File) -> Option<Arc<std::fs::File>> {
    None
}

/// How far behind the end of the file written pages are dropped from the page cache: far
/// enough back that their writeback has normally finished (pages still being written are
/// skipped and tried again on the next call).
pub(super) const RECYCLE_LAG: u64 = 16 << 20;

/// Starts writeback of the pages of `[from, to)` that are dirty and drops those already
/// written back. Called after each buffer over the last [`RECYCLE_LAG`] bytes, so an upload
/// cycles through a few megabytes of page cache instead of filling it, and once over the whole
/// file at the end. Fresh page-cache pages are the expensive part of a write on a virtual
/// machine whose free memory is handed back to the host: with recycling, a 1 GiB upload with
/// fsync cost ftpd 0.73-0.83 CPU-s instead of 1.85-2.2, and its final fsync finds little left
/// to write. Linux's `POSIX_FADV_DONTNEED` does both; the uploaded bytes are not read back
/// soon, so losing them from the cache costs nothing. Advice only: a failure changes nothing.
#[cfg(target_os = "linux")]
pub(super) fn recycle_page_cache(file: &std::fs::File, from: u64, to: u64) {
    use rustix::fs::{fadvise, Advice};
    if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        let _ = fadvise(file, from, Some(len), Advice::DontNeed);
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn recycle_page_cache(_file: &std::fs::File, _from: u64, _to: u64) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::tests::pattern;

    #[test]
    fn block_lead_lines_memory_up_with_the_file() {
        let buf = vec![0u8; 3 * BLOCK];
        for at in [0u64, 1, 511, 4095, 4096, 4097, 123_456_789] {
            let lead = block_lead(&buf, at);
            assert!(lead < BLOCK);
            let addr = buf[lead..].as_ptr().align_offset(BLOCK);
            assert_eq!(
                (BLOCK - addr) % BLOCK,
                (at % BLOCK as u64) as usize,
                "at {at}"
            );
        }
    }

    /// Chunks at every kind of offset, written with and without a direct handle, read back
    /// exactly; a direct handle that cannot write leaves the data right and turns itself off.
    #[test]
    fn write_at_stores_every_byte_where_it_belongs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = pattern(3 * BLOCK * 10 + 777);
        for (i, start) in [0u64, 1, 4095, 4096, 5000].into_iter().enumerate() {
            for mode in ["direct", "plain", "refusing"] {
                let path = dir.path().join(format!("f{i}-{mode}"));
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .expect("open");
                file.write_all_at(&vec![b'p'; start as usize], 0)
                    .expect("prefix");
                let direct = match mode {
                    "direct" => open_direct(&file),
                    // Opened read-only: every write through it fails.
                    "refusing" => Some(Arc::new(std::fs::File::open(&path).expect("reopen"))),
                    _ => None,
                };
                let mut buf = vec![0u8; data.len() + BLOCK];
                let (mut at, mut ok) = (start, direct.is_some());
                for piece in data.chunks(3 * BLOCK + 5) {
                    let lead = block_lead(&buf, at);
                    buf[lead..lead + piece.len()].copy_from_slice(piece);
                    let d = direct.as_deref().filter(|_| ok);
                    write_at(&file, d, &buf[lead..lead + piece.len()], at, &mut ok).expect("write");
                    at += piece.len() as u64;
                }
                let got = std::fs::read(&path).expect("read back");
                assert_eq!(got.len(), start as usize + data.len(), "{mode} at {start}");
                assert!(got[..start as usize].iter().all(|&b| b == b'p'));
                assert!(got[start as usize..] == data[..], "{mode} at {start}");
                assert_eq!(ok, mode == "direct" && direct.is_some(), "{mode}");
            }
        }
    }
}
