//! The upload write path: large buffers, the CRC of the bytes as they reach the file, periodic
//! checkpoints, fsync before success, verification against the declared CRC, and the resume
//! guards. It replaces unftp-sbe-fs's `put` (4 KiB buffers, no fsync, zero-filled holes) while
//! keeping its confinement: files are opened through the user's `cap_std` root handle.

use crate::paths;
use crate::record::{FileId, Record};
use crate::store::{RecordStore, StoreError};
use crate::writers::{Busy, Progress, Writers};
use cap_std::fs::{Dir, OpenOptions};
use crc_tools::{Crc32, KeyValue, State};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Tunables of the write path.
#[derive(Clone, Debug)]
pub struct UploadConfig {
    /// Bytes read from the network per write at first (two such buffers per upload).
    pub buffer: usize,
    /// What the buffers may grow to for a fast sender ([`next_len`]).
    pub buffer_max: usize,
    /// Bytes between checkpoints of the record while an upload runs.
    pub checkpoint: u64,
    /// fsync the data and the record before acknowledging (and at checkpoints).
    pub fsync: bool,
    /// How long a newcomer waits for a stalled writer of the same file to let go.
    pub takeover_wait: Duration,
    /// Write whole aligned blocks with `O_DIRECT`, past the page cache (Linux; falls back to
    /// ordinary writes where the filesystem refuses).
    pub direct_io: bool,
    /// How long a sender may stay silent before its upload stops and records what it stored:
    /// a box that lost power sends no FIN, and its upload would otherwise hold everything forever.
    pub data_idle_timeout: Duration,
}

/// What the upload path shares across sessions.
#[derive(Debug)]
pub struct Shared {
    pub store: Arc<dyn RecordStore>,
    pub writers: Arc<Writers>,
    pub upload: UploadConfig,
    /// Client sockets the front hands over for uploads (`None` without the front).
    pub handoff: Option<Arc<crate::handoff::Handoff>>,
}

/// One upload as the session asks for it.
#[derive(Debug)]
pub struct Request {
    pub user: String,
    /// Normalised path within the user's root.
    pub path: String,
    /// REST offset (APPE: the current size).
    pub start_pos: u64,
    /// The CRC this session declared for the file, if any.
    pub declared: Option<u32>,
}

/// Why an upload was refused or did not complete.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error("REST {rest} is beyond the stored size {size}")]
    RestBeyondEnd { rest: u64, size: u64 },
    #[error("resume refused: the file was declared {stored}, this session declared {declared}")]
    KeyConflict {
        stored: KeyValue,
        declared: KeyValue,
    },
    #[error("verification failed: declared {declared}, the stored file has {actual}")]
    Mismatch {
        declared: KeyValue,
        actual: KeyValue,
    },
    #[error("not a regular file")]
    NotAFile,
    #[error("transfer interrupted after {stored} bytes were stored")]
    Interrupted { stored: u64 },
    #[error("no data for {idle:?}: transfer stopped after {stored} bytes were stored")]
    Stalled { stored: u64, idle: Duration },
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<UploadError> for unftp_core::storage::Error {
    fn from(e: UploadError) -> Self {
        use unftp_core::storage::ErrorKind as K;
        let kind = match &e {
            UploadError::Busy(_) => K::TransientFileNotAvailable,
            UploadError::RestBeyondEnd { .. } | UploadError::KeyConflict { .. } => {
                K::PermissionDenied
            }
            UploadError::Mismatch { .. } => K::LocalError,
            UploadError::Store(s) => crate::storage::store_error_kind(s),
            UploadError::NotAFile => K::FileNameNotAllowedError,
            UploadError::Interrupted { .. } | UploadError::Stalled { .. } => K::ConnectionClosed,
            UploadError::Io(io) => return crate::storage::io_error(io),
        };
        unftp_core::storage::Error::new(kind, e)
    }
}

/// Runs `f` on the blocking pool (file and store I/O must not stall the async workers).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UploadError> + Send + 'static,
) -> Result<T, UploadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UploadError::Io(io::Error::other(e)))?
}

/// CRC of the first `len` bytes of `file`.
pub fn crc_of_prefix(file: &std::fs::File, len: u64) -> io::Result<u32> {
    crc_of_range(file, 0, len)
}

/// CRC of `file` bytes `[from, to)`, read through one 1 MiB buffer.
pub fn crc_of_range(file: &std::fs::File, from: u64, to: u64) -> io::Result<u32> {
    let mut crc = Crc32::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < to {
        let want = buf.len().min((to - pos) as usize);
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than its record",
            ));
        }
        crc.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(crc.value())
}

/// Where the file stands when an upload may begin.
struct Opened {
    file: std::fs::File,
    /// The same file opened for direct I/O, when that is on and possible.
    direct: Option<Arc<std::fs::File>>,
    prefix_crc: u32,
    declared: Option<u32>,
}

/// Runs one upload to its end. Cancel-safe by construction: the caller spawns it as a task
/// and cancels `abort` instead of dropping it, so every exit path records what is stored.
pub async fn run<R>(
    shared: Arc<Shared>,
    root: Arc<Dir>,
    req: Request,
    mut reader: R,
    abort: CancellationToken,
) -> Result<u64, UploadError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let key = (req.user.clone(), req.path.clone());
    let lock = tokio::select! {
        l = shared.writers.acquire(key, shared.upload.takeover_wait) => l?,
        _ = abort.cancelled() => return Err(UploadError::Interrupted { stored: req.start_pos }),
    };
    let opened = {
        let (shared, root) = (shared.clone(), root.clone());
        let (user, path, start_pos, declared) = (
            req.user.clone(),
            req.path.clone(),
            req.start_pos,
            req.declared,
        );
        blocking(move || open_for_upload(&shared, &root, &user, &path, start_pos, declared)).await?
    };
    let Opened {
        mut file,
        mut direct,
        prefix_crc,
        declared,
    } = opened;

    let store = shared.store.clone();
    let cfg = shared.upload.clone();
    let mut crc = Crc32::resume(prefix_crc, req.start_pos);
    lock.set_progress(Progress {
        size: crc.len(),
        crc: crc.value(),
    });
    // Room to place each chunk where memory and file offset agree modulo `BLOCK`.
    let mut chunk_len = cfg.buffer;
    let mut next = vec![0u8; chunk_len + BLOCK];
    let mut spare = vec![0u8; chunk_len + BLOCK];
    let mut since_checkpoint = 0u64;
    let mut received = 0u64;
    let mut in_flight: Option<tokio::task::JoinHandle<WriteDone>> = None;
    // When the sender last delivered a byte (or the upload began): the idle deadline counts
    // from here, across buffers. Reads come before the deadline in the `select!`, so bytes
    // that are waiting in the socket always win over it, however long a disk write took.
    let mut last_byte = tokio::time::Instant::now();

    let ending = loop {
        // Fill `next` from the network while the previous buffer is being written. A full
        // chunk ends on a block boundary of the file, so the next one starts on one. A buffer
        // of another size than the chunk (grown, or back from a pause) is resized, and
        // shrinking gives the memory back.
        let at = req.start_pos + received;
        if next.len() != chunk_len + BLOCK {
            next.resize(chunk_len + BLOCK, 0);
            next.shrink_to_fit();
        }
        let lead = block_lead(&next, at);
        let want = chunk_len - (at % BLOCK as u64) as usize;
        let mut filled = 0;
        let mut end = None;
        let fill_started = Instant::now();
        // A sender that pauses gets what it sent so far written and counted, whatever the
        // buffer's size: the timer is armed from the last read and re-armed lazily.
        let mut last_data = fill_started;
        let pause = tokio::time::sleep(PAUSE);
        tokio::pin!(pause);
        // Re-armed lazily like `pause`: a read does not touch the timer.
        let idle = tokio::time::sleep_until(last_byte + cfg.data_idle_timeout);
        tokio::pin!(idle);
        let mut paused = false;
        while filled < want {
            tokio::select! {
                biased;
                _ = lock.stop.cancelled() => { end = Some(Ending::Stopped); break; }
                _ = abort.cancelled() => { end = Some(Ending::Stopped); break; }
                r = reader.read(&mut next[lead + filled..lead + want]) => match r {
                    Ok(0) => { end = Some(Ending::Eof); break; }
                    Ok(n) => {
                        filled += n;
                        last_data = Instant::now();
                        last_byte = tokio::time::Instant::now();
                    }
                    Err(e) => { end = Some(Ending::ReadError(e)); break; }
                },
                _ = &mut pause, if filled > 0 => {
                    if last_data.elapsed() >= PAUSE {
                        paused = true;
                        break;
                    }
                    pause.as_mut().reset((last_data + PAUSE).into());
                }
                _ = &mut idle => {
                    if last_byte.elapsed() >= cfg.data_idle_timeout {
                        end = Some(Ending::Idle);
                        break;
                    }
                    idle.as_mut().reset(last_byte + cfg.data_idle_timeout);
                }
            }
        }
        let took = fill_started.elapsed();
        if let Some(h) = in_flight.take() {
            let done = collect(h).await;
            (file, spare, crc) = (done.file, done.buf, done.crc);
            direct = direct.filter(|_| done.direct_ok);
            lock.set_progress(Progress {
                size: crc.len(),
                crc: crc.value(),
            });
            if let Err(e) = done.result {
                break Ending::WriteError(e);
            }
        }
        if end.is_none() {
            chunk_len = next_len(chunk_len, &cfg, took, paused);
        }
        if filled > 0 {
            received += filled as u64;
            since_checkpoint += filled as u64;
            let checkpoint = (since_checkpoint >= cfg.checkpoint).then(|| {
                since_checkpoint = 0;
                (
                    store.clone(),
                    req.user.clone(),
                    req.path.clone(),
                    declared,
                    cfg.fsync,
                )
            });
            let buf = std::mem::replace(&mut next, std::mem::take(&mut spare));
            let f = file.try_clone()?;
            let handle = tokio::task::spawn_blocking({
                let (c, progress, d) = (crc.clone(), lock.progress.clone(), direct.clone());
                let chunk = lead..lead + filled;
                move || write_chunk(f, d.as_deref(), buf, chunk, c, checkpoint, &progress)
            });
            if end.is_none() {
                in_flight = Some(handle);
                continue;
            }
            let done = collect(handle).await;
            (file, crc) = (done.file, done.crc);
            if let Err(e) = done.result {
                break Ending::WriteError(e);
            }
        }
        break end.unwrap_or(Ending::Eof);
    };

    let size = crc.len();
    let actual = crc.value();
    let state = match (&ending, declared) {
        (Ending::Eof, Some(d)) if d == actual => State::Verified,
        (Ending::Eof, Some(_)) => State::Mismatch,
        (Ending::Eof, None) => State::Complete,
        _ => State::Partial,
    };
    let record = Record {
        declared,
        size,
        crc: actual,
        state,
        open: false,
        updated: SystemTime::now(),
        file: FileId::default(),
    };
    let (user, path, fsync) = (req.user.clone(), req.path.clone(), cfg.fsync);
    blocking(move || {
        if fsync {
            file.sync_data()?;
        }
        // Everything is written back now (with fsync): the upload leaves nothing cached.
        recycle_page_cache(&file, 0, size);
        let record = record.at(FileId::of(&file.metadata()?));
        store.put(&user, &path, &record)?;
        Ok(())
    })
    .await?;
    drop(lock);

    let (user, path) = (&req.user, &req.path);
    match ending {
        Ending::Eof => match declared {
            Some(d) if state == State::Mismatch => {
                tracing::warn!(%user, %path, declared = %KeyValue(d), actual = %KeyValue(actual), size, "upload failed verification; bytes kept for resuming");
                Err(UploadError::Mismatch {
                    declared: KeyValue(d),
                    actual: KeyValue(actual),
                })
            }
            _ => {
                tracing::info!(%user, %path, size, received, %state, "upload complete");
                Ok(received)
            }
        },
        Ending::Stopped => {
            tracing::info!(%user, %path, size, "upload stopped (taken over, aborted or shutting down); stored bytes recorded");
            Err(UploadError::Interrupted { stored: size })
        }
        Ending::ReadError(e) => {
            tracing::info!(%user, %path, size, error = %e, "upload interrupted; stored bytes recorded");
            Err(UploadError::Interrupted { stored: size })
        }
        Ending::Idle => {
            let idle = cfg.data_idle_timeout;
            tracing::info!(%user, %path, size, ?idle, "upload stalled: no data from the sender; stored bytes recorded");
            Err(UploadError::Stalled { stored: size, idle })
        }
        Ending::WriteError(e) => {
            tracing::warn!(%user, %path, size, error = %e, "upload failed writing; stored bytes recorded");
            Err(e)
        }
    }
}

/// A sender that fills a buffer within this time runs at about 100 MiB/s or more per MiB of
/// buffer: the disk, not the link, sets its pace.
const GROW_WITHIN: Duration = Duration::from_millis(10);

/// A sender silent this long with bytes in the buffer has paused (a stalled link, or the last
/// bytes before it goes quiet): they are written and counted without waiting for more, so
/// `SIZE` and `KEY INFO` show them to a box that reconnects.
const PAUSE: Duration = Duration::from_millis(100);

/// The buffer length for the next chunk, after one was filled in `took`: doubled, up to
/// `buffer_max`, for a fast sender; back to the first size after a pause. Fewer, larger writes
/// cost less per byte (each direct write that extends a file is a journal transaction of its
/// own) and let the disk go faster (on the test VM, 1 MiB direct writes reached 1,640 MiB/s
/// and 4 MiB ones 2,040). Slow links, a box's usual case, keep the first size, so the memory
/// of many uploads at once does not grow with them.
fn next_len(len: usize, cfg: &UploadConfig, took: Duration, paused: bool) -> usize {
    if paused {
        cfg.buffer
    } else if took < GROW_WITHIN {
        len.saturating_mul(2).min(cfg.buffer_max).max(len)
    } else {
        len
    }
}

enum Ending {
    Eof,
    Stopped,
    /// The sender sent nothing for `data_idle_timeout`.
    Idle,
    ReadError(io::Error),
    WriteError(UploadError),
}

type Checkpoint = (Arc<dyn RecordStore>, String, String, Option<u32>, bool);

struct WriteDone {
    file: std::fs::File,
    buf: Vec<u8>,
    crc: Crc32,
    /// `false` once the filesystem refused a direct write: later chunks go the ordinary way.
    direct_ok: bool,
    result: Result<(), UploadError>,
}

async fn collect(h: tokio::task::JoinHandle<WriteDone>) -> WriteDone {
    match h.await {
        Ok(done) => done,
        // A panicking write task is a bug; surface it as an I/O error with no file left.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Writes one buffer, then counts it and publishes the count (a sender that goes quiet after
/// this buffer must not leave queries one buffer behind the file); on a failed write the file
/// is cut back to the counted length, so the record never claims bytes that are not in the file.
fn write_chunk(
    file: std::fs::File,
    direct: Option<&std::fs::File>,
    buf: Vec<u8>,
    chunk: std::ops::Range<usize>,
    mut crc: Crc32,
    checkpoint: Option<Checkpoint>,
    progress: &Mutex<Progress>,
) -> WriteDone {
    let mut direct_ok = direct.is_some();
    let result = (|| {
        let start = crc.len();
        let data = &buf[chunk];
        if let Err(e) = write_at(&file, direct, data, start, &mut direct_ok) {
            let _ = file.set_len(start);
            return Err(UploadError::Io(e));
        }
        crc.update(data);
        // Direct writes leave at most a partial block cached, which the final call drops.
        if !direct_ok {
            let end = start + data.len() as u64;
            recycle_page_cache(&file, end.saturating_sub(RECYCLE_LAG), end);
        }
        *progress.lock().unwrap_or_else(|p| p.into_inner()) = Progress {
            size: crc.len(),
            crc: crc.value(),
        };
        if let Some((store, user, path, declared, fsync)) = checkpoint {
            if fsync {
                file.sync_data()?;
            }
            let id = FileId::of(&file.metadata()?);
            store.put(
                &user,
                &path,
                &Record::opened(declared, crc.len(), crc.value()).at(id),
            )?;
        }
        Ok(())
    })();
    WriteDone {
        file,
        buf,
        crc,
        direct_ok,
        result,
    }
}

/// Block size for direct I/O: offsets, lengths and memory addresses must be multiples of the
/// device's logical block size, and 4 KiB is one for every disk in use.
const BLOCK: usize = 4096;

/// Where in `buf` a chunk for file offset `at` must begin so that memory addresses and file
/// offsets agree modulo [`BLOCK`]; then its whole blocks can be written directly.
fn block_lead(buf: &[u8], at: u64) -> usize {
    (buf.as_ptr().align_offset(BLOCK) + (at % BLOCK as u64) as usize) % BLOCK
}

/// Writes `data` at `offset`: the whole blocks through `direct` when given (`data` must then
/// sit at an address that agrees with `offset` modulo [`BLOCK`]), the partial blocks at either
/// end through `file`. A direct write that fails is done the ordinary way, and `direct_ok`
/// turns `false`.
fn write_at(
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
fn open_direct(file: &std::fs::File) -> Option<Arc<std::fs::File>> {
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
fn open_direct(_file: &std::fs::File) -> Option<Arc<std::fs::File>> {
    None
}

/// How far behind the end of the file written pages are dropped from the page cache: far
/// enough back that their writeback has normally finished (pages still being written are
/// skipped and tried again on the next call).
const RECYCLE_LAG: u64 = 16 << 20;

/// Starts writeback of the pages of `[from, to)` that are dirty and drops those already
/// written back. Called after each buffer over the last [`RECYCLE_LAG`] bytes, so an upload
/// cycles through a few megabytes of page cache instead of filling it, and once over the whole
/// file at the end. Fresh page-cache pages are the expensive part of a write on a virtual
/// machine whose free memory is handed back to the host: with recycling, a 1 GiB upload with
/// fsync cost ftpd 0.73-0.83 CPU-s instead of 1.85-2.2, and its final fsync finds little left
/// to write. Linux's `POSIX_FADV_DONTNEED` does both; the uploaded bytes are not read back
/// soon, so losing them from the cache costs nothing. Advice only: a failure changes nothing.
#[cfg(target_os = "linux")]
fn recycle_page_cache(file: &std::fs::File, from: u64, to: u64) {
    use rustix::fs::{fadvise, Advice};
    if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        let _ = fadvise(file, from, Some(len), Advice::DontNeed);
    }
}

#[cfg(not(target_os = "linux"))]
fn recycle_page_cache(_file: &std::fs::File, _from: u64, _to: u64) {}

/// Opens the file and applies the resume guards; on success the file is `start_pos` bytes
/// long and an open record describes them.
fn open_for_upload(
    shared: &Shared,
    root: &Dir,
    user: &str,
    path: &str,
    start_pos: u64,
    session_declared: Option<u32>,
) -> Result<Opened, UploadError> {
    let rel = paths::relative(path);
    let mut oo = OpenOptions::new();
    // REST n onto a missing file is refused below; it must not leave an empty file behind.
    oo.read(true).write(true).create(start_pos == 0);
    let existed = root.symlink_metadata(rel).is_ok();
    let file = match root.open_with(rel, &oo) {
        Ok(f) => f.into_std(),
        Err(e) if start_pos > 0 && e.kind() == io::ErrorKind::NotFound => {
            return Err(UploadError::RestBeyondEnd {
                rest: start_pos,
                size: 0,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(UploadError::NotAFile);
    }
    let disk_len = meta.len();
    if start_pos > disk_len {
        return Err(UploadError::RestBeyondEnd {
            rest: start_pos,
            size: disk_len,
        });
    }
    // A record of other bytes (changed behind the server's back) is no record at all.
    let record = shared
        .store
        .get(user, path)?
        .filter(|r| r.describes(disk_len, FileId::of(&meta)));
    let stored_declared = record.and_then(|r| r.declared);
    if start_pos > 0 {
        if let (Some(stored), Some(mine)) = (stored_declared, session_declared) {
            if stored != mine {
                return Err(UploadError::KeyConflict {
                    stored: KeyValue(stored),
                    declared: KeyValue(mine),
                });
            }
        }
    }
    let prefix_crc = match record {
        _ if start_pos == 0 => 0,
        Some(r) if r.size == start_pos => r.crc,
        // REST below the stored size, or a file with no record: read the prefix once.
        _ => crc_of_prefix(&file, start_pos)?,
    };
    let declared = session_declared.or_else(|| carried_over(record.as_ref(), start_pos));
    if disk_len != start_pos {
        file.set_len(start_pos)?;
    }
    let direct = shared
        .upload
        .direct_io
        .then(|| open_direct(&file))
        .flatten();
    if !existed && shared.upload.fsync {
        sync_parent(root, rel)?;
    }
    let id = FileId::of(&file.metadata()?);
    shared.store.put(
        user,
        path,
        &Record::opened(declared, start_pos, prefix_crc).at(id),
    )?;
    Ok(Opened {
        file,
        direct,
        prefix_crc,
        declared,
    })
}

/// The file's declared KEY for an upload that declares none: a declaration survives until a
/// different one is made. A resume (offset above 0) keeps it, and so does an upload from 0
/// onto an unfinished upload (`partial`, `mismatch`), whose stored size may well be 0: the
/// box is still sending the file it declared. A finished file stored again from 0 is a new,
/// undeclared file, as with any FTP server.
fn carried_over(record: Option<&Record>, start_pos: u64) -> Option<u32> {
    let record = record?;
    let unfinished = matches!(record.state, State::Partial | State::Mismatch);
    if start_pos > 0 || unfinished {
        record.declared
    } else {
        None
    }
}

/// Makes a new directory entry durable.
pub fn sync_parent(root: &Dir, rel: &str) -> io::Result<()> {
    let parent = std::path::Path::new(rel)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    // `open_dir` gives an O_PATH handle, which cannot be fsynced; a read-only open can.
    root.open_with(parent, OpenOptions::new().read(true))?
        .sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn config(buffer: usize, buffer_max: usize) -> UploadConfig {
        UploadConfig {
            buffer,
            buffer_max,
            checkpoint: 64 << 20,
            fsync: false,
            takeover_wait: Duration::from_secs(1),
            direct_io: false,
            data_idle_timeout: Duration::from_secs(60),
        }
    }

    /// A store, a root and the upload path around them, in a temporary directory.
    fn setup(idle: Duration) -> (tempfile::TempDir, Arc<Shared>, Arc<Dir>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, state) = (dir.path().join("root"), dir.path().join("state"));
        for d in [&root, &state] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let store = crate::store::RedbStore::open(&state, false).expect("store");
        let shared = Arc::new(Shared {
            store: Arc::new(store),
            writers: Arc::new(Writers::default()),
            upload: UploadConfig {
                data_idle_timeout: idle,
                ..config(64 << 10, 64 << 10)
            },
            handoff: None,
        });
        let root = Dir::open_ambient_dir(&root, cap_std::ambient_authority()).expect("root");
        (dir, shared, Arc::new(root))
    }

    fn request(path: &str, start_pos: u64, declared: Option<u32>) -> Request {
        Request {
            user: "u".into(),
            path: path.into(),
            start_pos,
            declared,
        }
    }

    /// A sender that goes silent with its connection open (a box that lost power) is stopped
    /// after the idle timeout, and what it sent is stored and recorded like any interrupted
    /// upload's.
    #[tokio::test]
    async fn a_silent_sender_is_stopped_and_its_bytes_recorded() {
        let idle = Duration::from_millis(300);
        let (_dir, shared, root) = setup(idle);
        let data = pattern(5000);
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tokio::io::AsyncWriteExt::write_all(&mut tx, &data)
            .await
            .expect("send");
        let t0 = Instant::now();
        let req = request("/stall.ts", 0, Some(0xABCD));
        let r = run(shared.clone(), root, req, rx, CancellationToken::new()).await;
        let took = t0.elapsed();
        assert!(
            matches!(r, Err(UploadError::Stalled { stored: 5000, .. })),
            "{r:?}"
        );
        assert!(took >= idle && took < idle * 10, "stopped after {took:?}");
        let rec = shared
            .store
            .get("u", "/stall.ts")
            .expect("get")
            .expect("record");
        assert_eq!(
            (rec.size, rec.crc, rec.declared, rec.state, rec.open),
            (
                5000,
                crc_tools::crc32(&data),
                Some(0xABCD),
                State::Partial,
                false
            )
        );
        assert_eq!(shared.writers.active(), 0, "the file was let go");
        drop(tx);
    }

    /// The deadline is on silence, not on the whole transfer.
    #[tokio::test]
    async fn a_slow_sender_that_keeps_sending_is_not_stopped() {
        let idle = Duration::from_millis(300);
        let (_dir, shared, root) = setup(idle);
        let data = pattern(8 * 100);
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let sender = {
            let data = data.clone();
            tokio::spawn(async move {
                for piece in data.chunks(100) {
                    tokio::io::AsyncWriteExt::write_all(&mut tx, piece)
                        .await
                        .expect("send");
                    tokio::time::sleep(idle / 2).await;
                }
            })
        };
        let req = request("/slow.ts", 0, Some(crc_tools::crc32(&data)));
        let r = run(shared.clone(), root, req, rx, CancellationToken::new()).await;
        sender.await.expect("sender");
        assert_eq!(r.expect("upload"), data.len() as u64);
        let rec = shared
            .store
            .get("u", "/slow.ts")
            .expect("get")
            .expect("record");
        assert_eq!(rec.state, State::Verified);
    }

    fn record(state: State, size: u64) -> Record {
        Record {
            declared: Some(0x5F2D_3A26),
            size,
            crc: 0,
            state,
            open: false,
            updated: SystemTime::UNIX_EPOCH,
            file: FileId::default(),
        }
    }

    #[test]
    fn a_declaration_survives_until_another_one_is_made_also_at_size_zero() {
        let kept = Some(0x5F2D_3A26);
        for state in [State::Partial, State::Mismatch] {
            for size in [0, 100] {
                let r = record(state, size);
                assert_eq!(carried_over(Some(&r), 0), kept, "{state} of {size} bytes");
                assert_eq!(carried_over(Some(&r), size.max(1)), kept);
            }
        }
        // A finished file stored again from 0 is a new file; a resume onto it keeps the KEY.
        for state in [State::Complete, State::Verified] {
            assert_eq!(carried_over(Some(&record(state, 100)), 0), None, "{state}");
            assert_eq!(carried_over(Some(&record(state, 100)), 100), kept);
        }
        assert_eq!(carried_over(None, 0), None);
        assert_eq!(carried_over(None, 7), None);
    }

    /// The seed's resume of a partial that holds no byte yet: `REST 0` + `STOR` without a KEY.
    #[tokio::test]
    async fn a_zero_byte_partial_resumes_to_verified() {
        let (_dir, shared, root) = setup(Duration::from_secs(60));
        let data = pattern(3000);
        let declared = crc_tools::crc32(&data);
        let (empty, body) = (io::Cursor::new(Vec::new()), io::Cursor::new(data.clone()));
        let first = request("/zero.ts", 0, Some(declared));
        let r = run(
            shared.clone(),
            root.clone(),
            first,
            empty,
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(r, Err(UploadError::Mismatch { .. })), "{r:?}");
        let again = request("/zero.ts", 0, None);
        let r = run(shared.clone(), root, again, body, CancellationToken::new()).await;
        assert_eq!(r.expect("resume"), data.len() as u64);
        let rec = shared
            .store
            .get("u", "/zero.ts")
            .expect("get")
            .expect("record");
        assert_eq!((rec.declared, rec.state), (Some(declared), State::Verified));
    }

    #[test]
    fn buffers_grow_for_fast_senders_only_and_never_past_the_ceiling() {
        let cfg = config(1 << 20, 4 << 20);
        let (fast, slow) = (GROW_WITHIN / 2, GROW_WITHIN * 3);
        assert_eq!(next_len(1 << 20, &cfg, fast, false), 2 << 20);
        assert_eq!(next_len(2 << 20, &cfg, fast, false), 4 << 20);
        assert_eq!(next_len(4 << 20, &cfg, fast, false), 4 << 20);
        assert_eq!(next_len(3 << 20, &cfg, fast, false), 4 << 20);
        assert_eq!(next_len(1 << 20, &cfg, slow, false), 1 << 20);
        assert_eq!(next_len(2 << 20, &cfg, slow, false), 2 << 20);
        assert_eq!(next_len(1 << 20, &cfg, GROW_WITHIN, false), 1 << 20);
        // A pause sends the size back to the first one.
        assert_eq!(next_len(4 << 20, &cfg, fast, true), 1 << 20);
        // A ceiling at or below the first size keeps the size fixed.
        for max in [1 << 20, 1 << 10] {
            assert_eq!(
                next_len(1 << 20, &config(1 << 20, max), fast, false),
                1 << 20
            );
        }
    }

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
