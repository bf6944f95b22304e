//! The upload write path: large buffers, the CRC of the bytes as they reach the file, periodic
//! checkpoints, fsync before success, verification against the declared CRC, and the resume
//! guards. It replaces unftp-sbe-fs's `put` (4 KiB buffers, no fsync, zero-filled holes) while
//! keeping its confinement: files are opened through the user's `cap_std` root handle.
//!
//! [`run`] is the protocol: acquire the file, open it under the resume guards (`guard`),
//! stream the bytes through the double buffer (`pipeline`), record the result, reply.

mod direct_io;
mod guard;
mod open;
mod pipeline;

pub use open::sync_parent;

use crate::claims::{ClaimError, Expired, Fence, Held};
use crate::context::Services;
use crate::records::recovery::ReconcileError;
use crate::records::{FileId, Record, StoreError};
use crate::writers::{Busy, WriteLock};
use cap_std::fs::Dir;
use crc_tools::{Crc32, KeyValue, State};
use direct_io::recycle_page_cache;
use open::{open_for_upload, Opened};
use pipeline::{Ending, Pipeline, Streamed};
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

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

impl From<ReconcileError> for UploadError {
    fn from(e: ReconcileError) -> Self {
        match e {
            ReconcileError::Io(e) => UploadError::Io(e),
            ReconcileError::Store(e) => UploadError::Store(e),
        }
    }
}

impl From<Expired> for UploadError {
    fn from(e: Expired) -> Self {
        UploadError::Store(StoreError::Fenced { fence: e.fence })
    }
}

/// Where an upload's bytes come from: a reader, plus what the pipeline asks of a socket to be
/// woken less often by a slow sender (the client's socket when the front hands it over).
pub trait Source: AsyncRead + Unpin + Send + 'static {
    /// Wake the reader only once `bytes` are waiting (`SO_RCVLOWAT`); ignored by other readers.
    fn low_water(&mut self, _bytes: usize) {}
    /// Reads what is waiting without waiting for readiness (bytes below the low-water mark);
    /// `Ok(0)` when nothing is.
    fn drain(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

/// Runs one upload to its end. Cancel-safe by construction: the caller spawns it as a task
/// and cancels `abort` instead of dropping it, so every exit path records what is stored.
pub async fn run<R>(
    services: Arc<Services>,
    root: Arc<Dir>,
    req: Request,
    mut reader: R,
    abort: CancellationToken,
) -> Result<u64, UploadError>
where
    R: Source,
{
    let lock = acquire(&services, &req, &abort).await?;
    let claim = claim(&services, &req, &lock, &abort).await?;
    let opened = open_guarded(&services, &root, &req, &claim.fence).await?;
    if req.start_pos > 0 {
        // Accepted where it asked to start: those bytes are not sent again.
        services.metrics.resumed(req.start_pos);
    }
    let streamed = Pipeline::new(&services, &req, opened, lock.progress.clone(), &claim.fence)
        .stream(&mut reader, &lock.stop, &abort)
        .await;
    let outcome = record(&services, &req, streamed, &claim.fence)
        .await
        .inspect_err(|e| {
            if let UploadError::Store(StoreError::Fenced { fence }) = e {
                let (user, path) = (&req.user, &req.path);
                tracing::warn!(%user, %path, fence, "upload's claim passed to another node meanwhile: nothing of it was recorded");
            }
        })?;
    drop(claim);
    drop(lock);
    reply(&req, outcome, services.upload.data_idle_timeout)
}

/// Takes the file's one-writer lock, stopping a writer it holds (takeover).
async fn acquire(
    services: &Services,
    req: &Request,
    abort: &CancellationToken,
) -> Result<WriteLock, UploadError> {
    let key = (req.user.clone(), req.path.clone());
    tokio::select! {
        l = services.writers.acquire(key, services.upload.takeover_wait) => Ok(l?),
        _ = abort.cancelled() => Err(UploadError::Interrupted { stored: req.start_pos }),
    }
}

/// Claims the file across the nodes sharing the store (at once with the embedded store).
async fn claim(
    services: &Services,
    req: &Request,
    lock: &WriteLock,
    abort: &CancellationToken,
) -> Result<Held, UploadError> {
    let wait = services.upload.takeover_wait;
    let claim = services
        .claims
        .acquire(&req.user, &req.path, wait, &lock.stop);
    tokio::select! {
        c = claim => c.map_err(|e| match e {
            ClaimError::Busy(b) => UploadError::Busy(b),
            ClaimError::Store(s) => UploadError::Store(s),
        }),
        _ = abort.cancelled() => Err(UploadError::Interrupted { stored: req.start_pos }),
    }
}

/// Opens the file where the resume guards allow this upload to start.
async fn open_guarded(
    services: &Arc<Services>,
    root: &Arc<Dir>,
    req: &Request,
    fence: &Fence,
) -> Result<Opened, UploadError> {
    let (services, root, fence) = (services.clone(), root.clone(), fence.clone());
    let (user, path, start_pos, declared) = (
        req.user.clone(),
        req.path.clone(),
        req.start_pos,
        req.declared,
    );
    blocking(move || open_for_upload(&services, &root, &fence, &user, &path, start_pos, declared))
        .await
}

/// How the upload ended and what the file holds.
struct Outcome {
    ending: Ending,
    declared: Option<u32>,
    size: u64,
    crc: u32,
    state: State,
    received: u64,
}

impl Outcome {
    fn of(ending: Ending, crc: &Crc32, declared: Option<u32>, received: u64) -> Self {
        let actual = crc.value();
        let state = match (&ending, declared) {
            (Ending::Eof, Some(d)) if d == actual => State::Verified,
            (Ending::Eof, Some(_)) => State::Mismatch,
            (Ending::Eof, None) => State::Complete,
            _ => State::Partial,
        };
        Outcome {
            ending,
            declared,
            size: crc.len(),
            crc: actual,
            state,
            received,
        }
    }
}

/// Writes the final record once the data is durable (with fsync); the upload then leaves
/// nothing in the page cache.
async fn record(
    services: &Services,
    req: &Request,
    streamed: Streamed,
    fence: &Fence,
) -> Result<Outcome, UploadError> {
    let Streamed {
        ending,
        file,
        crc,
        received,
        declared,
    } = streamed;
    let outcome = Outcome::of(ending, &crc, declared, received);
    services.metrics.upload_ended(outcome.state);
    let size = outcome.size;
    let record = Record {
        declared: outcome.declared,
        size,
        crc: outcome.crc,
        state: outcome.state,
        open: false,
        updated: SystemTime::now(),
        file: FileId::default(),
    };
    let (store, fence) = (services.store.clone(), fence.clone());
    let (user, path, fsync) = (req.user.clone(), req.path.clone(), services.upload.fsync);
    blocking(move || {
        if fsync {
            file.sync_data()?;
        }
        // Everything is written back now (with fsync): the upload leaves nothing cached.
        recycle_page_cache(&file, 0, size);
        let record = record.at(FileId::of(&file.metadata()?));
        // The upload's end and its journal event, in one transaction, only while the file is
        // still this node's.
        store.end_upload_fenced(&user, &path, &record, fence.lease())?;
        Ok(())
    })
    .await?;
    Ok(outcome)
}

/// The upload's result for the session, logged.
fn reply(req: &Request, outcome: Outcome, idle: Duration) -> Result<u64, UploadError> {
    let (user, path) = (&req.user, &req.path);
    let Outcome {
        ending,
        declared,
        size,
        crc: actual,
        state,
        received,
    } = outcome;
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
            tracing::info!(%user, %path, size, ?idle, "upload stalled: no data from the sender; stored bytes recorded");
            Err(UploadError::Stalled { stored: size, idle })
        }
        Ending::WriteError(e) => {
            tracing::warn!(%user, %path, size, error = %e, "upload failed writing; stored bytes recorded");
            Err(e)
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::UploadConfig;
    use std::time::Instant;

    impl Source for tokio::io::DuplexStream {}
    impl Source for io::Cursor<Vec<u8>> {}

    pub(super) fn pattern(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    pub(super) fn config(buffer: usize, buffer_max: usize) -> UploadConfig {
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
    fn setup(idle: Duration) -> (tempfile::TempDir, Arc<Services>, Arc<Dir>) {
        setup_with(UploadConfig {
            data_idle_timeout: idle,
            ..config(64 << 10, 64 << 10)
        })
    }

    /// [`setup`] with the tunables `upload`.
    fn setup_with(upload: UploadConfig) -> (tempfile::TempDir, Arc<Services>, Arc<Dir>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, state) = (dir.path().join("root"), dir.path().join("state"));
        for d in [&root, &state] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let store = crate::records::store::RedbStore::open(&state, false).expect("store");
        let services = Arc::new(Services::new(Arc::new(store), upload, None));
        let root = Dir::open_ambient_dir(&root, cap_std::ambient_authority()).expect("root");
        (dir, services, Arc::new(root))
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
        let (_dir, services, root) = setup(idle);
        let data = pattern(5000);
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tokio::io::AsyncWriteExt::write_all(&mut tx, &data)
            .await
            .expect("send");
        let t0 = Instant::now();
        let req = request("/stall.ts", 0, Some(0xABCD));
        let r = run(services.clone(), root, req, rx, CancellationToken::new()).await;
        let took = t0.elapsed();
        assert!(
            matches!(r, Err(UploadError::Stalled { stored: 5000, .. })),
            "{r:?}"
        );
        assert!(took >= idle && took < idle * 10, "stopped after {took:?}");
        let rec = services
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
        assert_eq!(services.writers.active(), 0, "the file was let go");
        drop(tx);
    }

    /// A socket whose bytes all wait below its low-water mark: reads never become ready, and
    /// only a drain gets them.
    struct BelowTheMark(io::Cursor<Vec<u8>>);

    impl tokio::io::AsyncRead for BelowTheMark {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            _buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Pending
        }
    }

    impl Source for BelowTheMark {
        fn drain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            io::Read::read(&mut self.0, buf)
        }
    }

    /// An upload stopped (taken over, aborted) stores what the sender delivered before the
    /// stop, also the bytes still below the low-water mark, across more than one buffer.
    #[tokio::test]
    async fn a_stopped_upload_stores_the_bytes_waiting_below_the_low_water_mark() {
        let (_dir, services, root) = setup(Duration::from_secs(60));
        let data = pattern(200 << 10);
        let abort = CancellationToken::new();
        let req = request("/held.ts", 0, None);
        let source = BelowTheMark(io::Cursor::new(data.clone()));
        let upload = tokio::spawn(run(services.clone(), root, req, source, abort.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        abort.cancel();
        let r = upload.await.expect("upload task");
        assert!(
            matches!(r, Err(UploadError::Interrupted { stored }) if stored == data.len() as u64),
            "{r:?}"
        );
        let rec = services
            .store
            .get("u", "/held.ts")
            .expect("get")
            .expect("record");
        assert_eq!(
            (rec.size, rec.crc, rec.state),
            (data.len() as u64, crc_tools::crc32(&data), State::Partial)
        );
    }

    /// The deadline is on silence, not on the whole transfer.
    #[tokio::test]
    async fn a_slow_sender_that_keeps_sending_is_not_stopped() {
        let idle = Duration::from_millis(300);
        let (_dir, services, root) = setup(idle);
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
        let r = run(services.clone(), root, req, rx, CancellationToken::new()).await;
        sender.await.expect("sender");
        assert_eq!(r.expect("upload"), data.len() as u64);
        let rec = services
            .store
            .get("u", "/slow.ts")
            .expect("get")
            .expect("record");
        assert_eq!(rec.state, State::Verified);
    }

    /// The seed's resume of a partial that holds no byte yet: `REST 0` + `STOR` without a KEY.
    #[tokio::test]
    async fn a_zero_byte_partial_resumes_to_verified() {
        let (_dir, services, root) = setup(Duration::from_secs(60));
        let data = pattern(3000);
        let declared = crc_tools::crc32(&data);
        let (empty, body) = (io::Cursor::new(Vec::new()), io::Cursor::new(data.clone()));
        let first = request("/zero.ts", 0, Some(declared));
        let r = run(
            services.clone(),
            root.clone(),
            first,
            empty,
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(r, Err(UploadError::Mismatch { .. })), "{r:?}");
        let again = request("/zero.ts", 0, None);
        let r = run(
            services.clone(),
            root,
            again,
            body,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(r.expect("resume"), data.len() as u64);
        let rec = services
            .store
            .get("u", "/zero.ts")
            .expect("get")
            .expect("record");
        assert_eq!((rec.declared, rec.state), (Some(declared), State::Verified));
    }

    /// Checkpoints are not journal events: an upload that checkpoints many times journals
    /// one event, at its end, with what its final record says.
    #[tokio::test]
    async fn an_upload_journals_one_event_at_its_end() {
        let (_dir, services, root) = setup_with(UploadConfig {
            checkpoint: 16 << 10,
            ..config(16 << 10, 16 << 10)
        });
        let data = pattern(1 << 20);
        let declared = crc_tools::crc32(&data);
        let req = request("/many.ts", 0, Some(declared));
        let body = io::Cursor::new(data.clone());
        let r = run(services.clone(), root, req, body, CancellationToken::new()).await;
        assert_eq!(r.expect("upload"), data.len() as u64);
        let page = services.store.journal_page(0, 100).expect("journal");
        assert_eq!(page.last, 1, "one event, not one per checkpoint");
        let e = crate::records::journal::Event::from_json(&page.events[0].1).expect("event");
        assert_eq!(
            (e.kind, e.path.as_str(), e.size, e.crc, e.declared, e.state),
            (
                crate::records::journal::Kind::Upload,
                "/many.ts",
                data.len() as u64,
                Some(declared),
                Some(declared),
                crate::records::journal::EventState::Verified
            )
        );
    }
}
