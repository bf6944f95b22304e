//! The upload's buffers: a slow sender's one buffer fills from the network and is then written
//! on the blocking pool; a fast sender's two overlap (one fills while the other is written),
//! and grow. The record is checkpointed as bytes reach the file.

use super::direct_io::{block_lead, recycle_page_cache, write_at, BLOCK, RECYCLE_LAG};
use super::open::Opened;
use super::{Request, Source, UploadError};
use crate::claims::Fence;
use crate::context::{Services, UploadConfig};
use crate::records::{FileId, Record, RecordStore};
use crate::writers::Progress;
use crc_tools::Crc32;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// How the stream of bytes ended.
pub(super) enum Ending {
    Eof,
    /// Taken over, aborted or shut down.
    Stopped,
    /// The sender sent nothing for `data_idle_timeout`.
    Idle,
    ReadError(io::Error),
    WriteError(UploadError),
}

/// Where the stream left the file.
pub(super) struct Streamed {
    pub ending: Ending,
    pub file: Arc<std::fs::File>,
    /// Of every byte the file holds (the prefix included).
    pub crc: Crc32,
    /// Bytes received from the sender (all of them written, unless a write failed).
    pub received: u64,
    /// The declaration the bytes are verified against.
    pub declared: Option<u32>,
}

/// The most a socket makes the reader wait for before waking it: a slow sender's chunk, not a
/// fast sender's (whose reads find plenty anyway).
const LOW_WATER_MAX: usize = 128 << 10;

/// How long each chunk is, and whether two buffers overlap ([`ChunkPolicy::next_len`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct ChunkPolicy {
    first: usize,
    max: usize,
    /// Whether a second buffer fills while one is written: only for a fast sender. A slow
    /// sender's socket holds what arrives during a write, and one buffer written half as often
    /// costs half the hand-offs to the blocking pool at the same memory.
    overlap: bool,
    /// Whether the last chunk filled fast too. A slow sender's chunk can fill at once from
    /// bytes left over in the socket by earlier wake-ups (each low-water wake-up leaves a little
    /// more than a chunk waiting); only fast chunks in a row show a fast sender.
    fast_before: bool,
}

impl ChunkPolicy {
    /// A sender that fills a buffer within this time runs at about 100 MiB/s or more per MiB
    /// of buffer: the disk, not the link, sets its pace.
    pub const GROW_WITHIN: Duration = Duration::from_millis(10);

    /// A sender silent this long with bytes in the buffer (or waiting below the socket's
    /// low-water mark) has paused (a stalled link, or the last bytes before it goes quiet):
    /// they are written and counted without waiting for more, so `SIZE` and `KEY INFO` show
    /// them to a box that reconnects, which takes seconds. Longer than a box's link takes to
    /// fill the low-water mark ([`LOW_WATER_MAX`] at 128 KiB/s), so a steady sender is woken
    /// once per chunk, not once more per pause; a slower one is woken by this, once a second.
    pub const PAUSE: Duration = Duration::from_millis(1000);

    pub fn new(cfg: &UploadConfig) -> Self {
        ChunkPolicy {
            first: cfg.buffer,
            max: cfg.buffer_max,
            overlap: false,
            fast_before: false,
        }
    }

    /// Whether the next chunk fills while the last one is written (two buffers).
    pub fn overlap(&self) -> bool {
        self.overlap
    }

    /// The buffer length for the next chunk, after one of `len` was filled in `took`. A fast
    /// sender (two fast chunks in a row) first gets a second buffer, then each fast chunk
    /// doubles both, up to `buffer_max`; a pause sends it back to one buffer of the first
    /// size. Fewer, larger writes cost less per byte (each direct write that extends a file is
    /// a journal transaction of its own) and let the disk go faster (on the test VM, 1 MiB
    /// direct writes reached 1,640 MiB/s and 4 MiB ones 2,040). Slow links, a box's usual
    /// case, keep one buffer of the first size, so the memory of many uploads at once does not
    /// grow with them.
    pub fn next_len(&mut self, len: usize, took: Duration, paused: bool) -> usize {
        let fast = !paused && took < Self::GROW_WITHIN;
        let grow = fast && std::mem::replace(&mut self.fast_before, fast);
        self.fast_before = fast;
        if paused {
            self.overlap = false;
            self.first
        } else if grow && !self.overlap {
            self.overlap = true;
            len
        } else if grow {
            len.saturating_mul(2).min(self.max).max(len)
        } else {
            len
        }
    }

    /// How many buffers an upload holds while it fills the next chunk.
    #[cfg(test)]
    pub fn buffers(&self) -> usize {
        if self.overlap {
            2
        } else {
            1
        }
    }
}

/// Where a checkpoint records the bytes written so far.
pub(super) struct Checkpoint {
    store: Arc<dyn RecordStore>,
    user: String,
    path: String,
    declared: Option<u32>,
    fsync: bool,
    /// The file's claim: checked before every write, carried by every commit.
    fence: Fence,
}

impl Checkpoint {
    /// Records `crc` as an open record of `file` (after an fsync, when on).
    fn write(&self, file: &std::fs::File, crc: &Crc32) -> Result<(), UploadError> {
        if self.fsync {
            file.sync_data()?;
        }
        let id = FileId::of(&file.metadata()?);
        let record = Record::opened(self.declared, crc.len(), crc.value()).at(id);
        self.store
            .put_fenced(&self.user, &self.path, &record, self.fence.lease())?;
        Ok(())
    }
}

/// One buffer filled from the network.
struct Fill {
    /// Where the bytes begin in the buffer (see [`block_lead`]).
    lead: usize,
    filled: usize,
    /// Why the stream ends, if it does.
    end: Option<Ending>,
    took: Duration,
    paused: bool,
}

/// What a fill waits for besides the sender's bytes, made once per upload: a fill of a slow
/// sender's chunk is a few reads, and making these futures anew for each one (or, worse, for
/// each read) costs locks on the tokens and registrations with the timer wheel every time.
struct Waits<'a, 't> {
    stopped: Pin<&'a mut WaitForCancellationFuture<'t>>,
    aborted: Pin<&'a mut WaitForCancellationFuture<'t>>,
    /// Due [`ChunkPolicy::PAUSE`] after the last read; each read moves it later, which for a
    /// timer still pending is one atomic store, and the task is woken only when the sender
    /// really paused (re-arming it lazily instead woke a sender writing every 62 ms once per
    /// read).
    pause: Pin<&'a mut Sleep>,
    /// The idle deadline; re-armed lazily when it fires, since it is long and rarely reached.
    idle: Pin<&'a mut Sleep>,
}

/// The upload's file, its CRC and its buffers.
pub(super) struct Pipeline {
    /// Shared with the write in flight (no descriptor duplicated per chunk).
    file: Arc<std::fs::File>,
    /// The same file opened for direct I/O, while that works.
    direct: Option<Arc<std::fs::File>>,
    /// Of the bytes written so far; a write in flight has the up-to-date one.
    crc: Crc32,
    /// Fills from the network.
    next: Vec<u8>,
    /// Back from the last write: filled after `next` when buffers overlap, else becomes `next`.
    spare: Vec<u8>,
    in_flight: Option<JoinHandle<WriteDone>>,
    policy: ChunkPolicy,
    chunk_len: usize,
    start_pos: u64,
    received: u64,
    since_checkpoint: u64,
    checkpoint_every: u64,
    /// Shared with each write: what a write checks and commits, without a copy per chunk.
    checkpoint: Arc<Checkpoint>,
    /// When the sender last delivered a byte (or the upload began): the idle deadline counts
    /// from here, across buffers.
    last_byte: tokio::time::Instant,
    idle_timeout: Duration,
    progress: Arc<Mutex<Progress>>,
    /// `ftpd_upload_bytes_total`: one atomic add per chunk.
    bytes: prometheus_client::metrics::counter::Counter,
}

/// The bytes one buffer of a `chunk_len` chunk holds: the chunk itself, so the memory an upload
/// holds is exactly its buffers, and at least two blocks (one block of data, one to align).
fn buffer_len(chunk_len: usize) -> usize {
    chunk_len.max(2 * BLOCK)
}

impl Pipeline {
    /// A pipeline writing from `req.start_pos` on; publishes the prefix as progress.
    pub fn new(
        services: &Services,
        req: &Request,
        opened: Opened,
        progress: Arc<Mutex<Progress>>,
        fence: &Fence,
    ) -> Self {
        let cfg = &services.upload;
        let crc = Crc32::resume(opened.prefix_crc, req.start_pos);
        let pipeline = Pipeline {
            file: Arc::new(opened.file),
            direct: opened.direct,
            crc,
            next: vec![0u8; buffer_len(cfg.buffer)],
            spare: Vec::new(),
            in_flight: None,
            policy: ChunkPolicy::new(cfg),
            chunk_len: cfg.buffer,
            start_pos: req.start_pos,
            received: 0,
            since_checkpoint: 0,
            checkpoint_every: cfg.checkpoint,
            checkpoint: Arc::new(Checkpoint {
                store: services.store.clone(),
                user: req.user.clone(),
                path: req.path.clone(),
                declared: opened.declared,
                fsync: cfg.fsync,
                fence: fence.clone(),
            }),
            last_byte: tokio::time::Instant::now(),
            idle_timeout: cfg.data_idle_timeout,
            progress,
            bytes: services.metrics.upload_bytes(),
        };
        pipeline.publish();
        pipeline
    }

    /// Fills and writes buffers until the stream ends; every byte received is written (and
    /// counted) before this returns, unless a write fails.
    pub async fn stream<R: Source>(
        mut self,
        reader: &mut R,
        stop: &CancellationToken,
        abort: &CancellationToken,
    ) -> Streamed {
        let stopped = stop.cancelled();
        let aborted = abort.cancelled();
        let pause = tokio::time::sleep(ChunkPolicy::PAUSE);
        let idle = tokio::time::sleep_until(self.last_byte + self.idle_timeout);
        tokio::pin!(stopped, aborted, pause, idle);
        let mut waits = Waits {
            stopped,
            aborted,
            pause,
            idle,
        };
        let ending = loop {
            // Fill one buffer (while the previous one is being written, when they overlap).
            let fill = self.fill(reader, &mut waits).await;
            if let Err(e) = self.collect().await {
                break Ending::WriteError(e);
            }
            if fill.end.is_none() {
                self.chunk_len = self.policy.next_len(self.chunk_len, fill.took, fill.paused);
            }
            if fill.filled > 0 {
                self.submit(fill.lead..fill.lead + fill.filled);
                if fill.end.is_none() && self.policy.overlap() {
                    // The next fill overlaps this write.
                    continue;
                }
                if let Err(e) = self.collect().await {
                    break Ending::WriteError(e);
                }
                if fill.end.is_none() {
                    // The one buffer back; one held before a pause is dropped.
                    self.next = std::mem::take(&mut self.spare);
                    continue;
                }
            }
            break fill.end.unwrap_or(Ending::Eof);
        };
        Streamed {
            ending,
            file: self.file,
            crc: self.crc,
            received: self.received,
            declared: self.checkpoint.declared,
        }
    }

    /// Reads into `next` until the chunk is full, the sender pauses, or the stream ends. A full
    /// chunk ends on a block boundary of the file, so the next one starts on one. A buffer of
    /// another size than the chunk (grown, or back from a pause) is resized, and shrinking
    /// gives the memory back.
    async fn fill<R: Source>(&mut self, reader: &mut R, waits: &mut Waits<'_, '_>) -> Fill {
        const PAUSE: Duration = ChunkPolicy::PAUSE;
        let at = self.start_pos + self.received;
        let len = buffer_len(self.chunk_len);
        if self.next.len() != len {
            self.next.resize(len, 0);
            self.next.shrink_to_fit();
        }
        let lead = block_lead(&self.next, at);
        // One block of the buffer is kept free to place the chunk where memory and file offset
        // agree modulo `BLOCK` (`lead` < `BLOCK`); the chunk ends on a block boundary of the file.
        let want = len - BLOCK - (at % BLOCK as u64) as usize;
        let idle_timeout = self.idle_timeout;
        let mut filled = 0;
        let mut end = None;
        let started = Instant::now();
        // A sender that pauses gets what it sent so far written and counted, whatever the
        // buffer's size: each read moves the pause deadline to `PAUSE` after it (the timer is
        // only polled once this buffer holds bytes).
        let Waits {
            stopped,
            aborted,
            pause,
            idle,
        } = waits;
        let mut paused = false;
        // A slow sender's socket wakes this task once per chunk rather than once per packet.
        reader.low_water(want.min(LOW_WATER_MAX));
        // Whether the bytes waiting below the low-water mark were taken since the last read.
        let mut drained = false;
        while filled < want {
            tokio::select! {
                biased;
                _ = stopped.as_mut() => { end = Some(Ending::Stopped); break; }
                _ = aborted.as_mut() => { end = Some(Ending::Stopped); break; }
                // Reads come before the deadlines, so bytes waiting in the socket always win
                // over them, however long a disk write took.
                r = reader.read(&mut self.next[lead + filled..lead + want]) => match r {
                    Ok(0) => { end = Some(Ending::Eof); break; }
                    Ok(n) => {
                        filled += n;
                        drained = false;
                        self.last_byte = tokio::time::Instant::now();
                        pause.as_mut().reset(self.last_byte + PAUSE);
                    }
                    Err(e) => { end = Some(Ending::ReadError(e)); break; }
                },
                _ = pause.as_mut(), if filled > 0 || !drained => {
                    if self.last_byte.elapsed() < PAUSE {
                        pause.as_mut().reset(self.last_byte + PAUSE);
                        continue;
                    }
                    // What waits below the low-water mark counts as sent before the pause.
                    drained = true;
                    match reader.drain(&mut self.next[lead + filled..lead + want]) {
                        Ok(0) => {}
                        Ok(n) => {
                            filled += n;
                            self.last_byte = tokio::time::Instant::now();
                        }
                        Err(e) => { end = Some(Ending::ReadError(e)); break; }
                    }
                    if filled > 0 {
                        paused = true;
                        break;
                    }
                }
                _ = idle.as_mut() => {
                    if self.last_byte.elapsed() >= idle_timeout {
                        // Silent, unless bytes wait below the low-water mark.
                        match reader.drain(&mut self.next[lead + filled..lead + want]) {
                            Ok(0) => { end = Some(Ending::Idle); break; }
                            Ok(n) => {
                                filled += n;
                                paused = true;
                                self.last_byte = tokio::time::Instant::now();
                                break;
                            }
                            Err(e) => { end = Some(Ending::ReadError(e)); break; }
                        }
                    }
                    idle.as_mut().reset(self.last_byte + idle_timeout);
                }
            }
        }
        if matches!(end, Some(Ending::Stopped)) {
            // What the sender delivered before the stop, waiting below the low-water mark, is
            // stored too: a box that resumes (on this node or another) need not send it again.
            // A buffer it fills is written, and the next fill, stopped at once, drains on.
            if let Ok(n) = reader.drain(&mut self.next[lead + filled..lead + want]) {
                filled += n;
                if filled == want {
                    end = None;
                }
            }
        }
        Fill {
            lead,
            filled,
            end,
            took: started.elapsed(),
            paused,
        }
    }

    /// Counts the `chunk` of `next` as received and starts writing it on the blocking pool,
    /// with a checkpoint when one is due; `spare` becomes `next`.
    fn submit(&mut self, chunk: Range<usize>) {
        self.received += chunk.len() as u64;
        self.bytes.inc_by(chunk.len() as u64);
        self.since_checkpoint += chunk.len() as u64;
        let due = self.since_checkpoint >= self.checkpoint_every;
        if due {
            self.since_checkpoint = 0;
        }
        let checkpoint = self.checkpoint.clone();
        let buf = std::mem::replace(&mut self.next, std::mem::take(&mut self.spare));
        let f = self.file.clone();
        let (c, progress, d) = (self.crc.clone(), self.progress.clone(), self.direct.clone());
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            write_chunk(
                &f,
                d.as_deref(),
                (buf, chunk),
                c,
                (&checkpoint, due),
                &progress,
            )
        }));
    }

    /// Waits for the write in flight, if any: takes back the buffer (as `spare`) and the CRC,
    /// and publishes the progress.
    async fn collect(&mut self) -> Result<(), UploadError> {
        let Some(h) = self.in_flight.take() else {
            return Ok(());
        };
        let done = match h.await {
            Ok(done) => done,
            // A panicking write task is a bug; surface it as an I/O error with no file left.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        (self.spare, self.crc) = (done.buf, done.crc);
        self.direct = self.direct.take().filter(|_| done.direct_ok);
        self.publish();
        done.result
    }

    fn publish(&self) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = Progress {
            size: self.crc.len(),
            crc: self.crc.value(),
        };
    }
}

/// What a write hands back.
struct WriteDone {
    buf: Vec<u8>,
    crc: Crc32,
    /// `false` once the filesystem refused a direct write: later chunks go the ordinary way.
    direct_ok: bool,
    result: Result<(), UploadError>,
}

/// Writes one buffer, then counts it and publishes the count (a sender that goes quiet after
/// this buffer must not leave queries one buffer behind the file); on a failed write the file
/// is cut back to the counted length, so the record never claims bytes that are not in the file.
fn write_chunk(
    file: &std::fs::File,
    direct: Option<&std::fs::File>,
    (buf, chunk): (Vec<u8>, Range<usize>),
    mut crc: Crc32,
    (checkpoint, checkpoint_due): (&Checkpoint, bool),
    progress: &Mutex<Progress>,
) -> WriteDone {
    let mut direct_ok = direct.is_some();
    let result = (|| {
        let start = crc.len();
        let data = &buf[chunk];
        // Not one byte once the claim may have passed to another node: its writer owns the
        // file now (and this one must not cut it back either).
        checkpoint.fence.check()?;
        if let Err(e) = write_at(file, direct, data, start, &mut direct_ok) {
            let _ = file.set_len(start);
            return Err(UploadError::Io(e));
        }
        crc.update(data);
        // Direct writes leave at most a partial block cached, which the final call drops.
        if !direct_ok {
            let end = start + data.len() as u64;
            recycle_page_cache(file, end.saturating_sub(RECYCLE_LAG), end);
        }
        *progress.lock().unwrap_or_else(|p| p.into_inner()) = Progress {
            size: crc.len(),
            crc: crc.value(),
        };
        if checkpoint_due {
            checkpoint.write(file, &crc)?;
        }
        Ok(())
    })();
    WriteDone {
        buf,
        crc,
        direct_ok,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::tests::config;

    #[test]
    fn buffers_grow_for_fast_senders_only_and_never_past_the_ceiling() {
        let policy = |first, max| ChunkPolicy::new(&config(first, max));
        let grow_within = ChunkPolicy::GROW_WITHIN;
        let (fast, slow) = (grow_within / 2, grow_within * 3);
        let mut p = policy(1 << 20, 4 << 20);
        assert!(!p.overlap(), "one buffer at first");
        // Two fast chunks in a row show a fast sender: a second buffer, then every fast chunk
        // doubles both.
        assert_eq!(p.next_len(1 << 20, fast, false), 1 << 20);
        assert!(!p.overlap());
        assert_eq!(p.next_len(1 << 20, fast, false), 1 << 20);
        assert!(p.overlap());
        assert_eq!(p.next_len(1 << 20, fast, false), 2 << 20);
        assert_eq!(p.next_len(2 << 20, fast, false), 4 << 20);
        assert_eq!(p.next_len(4 << 20, fast, false), 4 << 20);
        assert_eq!(p.next_len(3 << 20, fast, false), 4 << 20);
        assert_eq!(p.next_len(1 << 20, slow, false), 1 << 20);
        assert_eq!(p.next_len(2 << 20, slow, false), 2 << 20);
        assert_eq!(p.next_len(1 << 20, grow_within, false), 1 << 20);
        // A pause sends the size back to the first one, in one buffer.
        let mut p = policy(1 << 20, 4 << 20);
        p.next_len(1 << 20, fast, false);
        p.next_len(1 << 20, fast, false);
        assert!(p.overlap());
        assert_eq!(p.next_len(4 << 20, fast, true), 1 << 20);
        assert!(!p.overlap());
        assert_eq!(
            p.next_len(1 << 20, fast, false),
            1 << 20,
            "a pause ends the streak"
        );
        // A ceiling at or below the first size keeps the size fixed.
        for max in [1 << 20, 1 << 10] {
            let mut p = policy(1 << 20, max);
            for _ in 0..4 {
                assert_eq!(p.next_len(1 << 20, fast, false), 1 << 20);
            }
        }
    }

    #[test]
    fn a_slow_senders_chunk_filled_from_leftover_bytes_does_not_grow_it() {
        // Seen with a 256 KiB/s sender in 16 KiB pieces: each low-water wake-up leaves 4 KiB
        // more in the socket, until one chunk fills at once from what was left.
        let mut p = ChunkPolicy::new(&config(64 << 10, 4 << 20));
        let mut len = 64 << 10;
        for round in 0..10 {
            for _ in 0..14 {
                len = p.next_len(len, Duration::from_millis(249), false);
            }
            len = p.next_len(len, Duration::from_micros(305), false);
            assert_eq!(len, 64 << 10, "round {round}");
            assert!(!p.overlap(), "round {round}");
        }
    }

    #[test]
    fn a_box_at_256_kib_per_second_holds_at_most_128_kib_of_buffers() {
        let settings =
            crate::config::Settings::load_from(None, std::iter::empty::<(String, String)>())
                .expect("defaults");
        let cfg = settings.upload_config();
        let mut policy = ChunkPolicy::new(&cfg);
        // The data one default buffer takes, arriving at 256 KiB/s.
        let data = buffer_len(cfg.buffer) - BLOCK;
        let took = Duration::from_secs_f64(data as f64 / (256.0 * 1024.0));
        let mut len = cfg.buffer;
        for _ in 0..100 {
            len = policy.next_len(len, took, false);
        }
        assert_eq!(policy.buffers() * buffer_len(len), 128 << 10);
    }

    #[test]
    fn a_buffer_is_its_chunk_with_room_for_one_block_of_data_at_least() {
        assert_eq!(buffer_len(64 << 10), 64 << 10);
        assert_eq!(buffer_len(4 << 10), 2 * BLOCK);
    }
}
