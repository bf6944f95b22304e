//! Data connections relayed by the kernel: `splice(2)` moves socket pages through a pipe to the
//! other socket, so the front neither copies the bytes nor holds them (a pipe per direction
//! caps what is in flight at [`PIPE_SIZE`]).

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes one direction may have in flight (the unprivileged pipe maximum on Linux).
const PIPE_SIZE: usize = 1 << 20;

/// Relays both directions until each has ended; returns the bytes moved each way. When no byte
/// moves either way for `idle`, the relay ends with a `TimedOut` error.
pub(super) async fn relay(a: &TcpStream, b: &TcpStream, idle: Duration) -> io::Result<(u64, u64)> {
    let activity = Activity::new();
    tokio::try_join!(pump(a, b, &activity, idle), pump(b, a, &activity, idle))
}

/// When bytes last moved in either direction.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let since = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(since)
    }

    /// Awaits `ready`, failing once neither direction has moved a byte for `idle` (a direction
    /// that waits while the other streams is not idle).
    async fn wait(
        &self,
        ready: impl std::future::Future<Output = io::Result<()>>,
        idle: Duration,
    ) -> io::Result<()> {
        tokio::pin!(ready);
        loop {
            let left = idle.saturating_sub(self.quiet_for());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "data connection idle",
                ));
            }
            if let Ok(r) = tokio::time::timeout(left, &mut ready).await {
                return r;
            }
        }
    }
}

/// Moves bytes from `from` to `to` until `from` ends, then half-closes `to`, so a clean end
/// stays a clean end.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    idle: Duration,
) -> io::Result<u64> {
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // A smaller pipe (the default is 64 KiB) only means more system calls.
    let capacity = fcntl_setpipe_size(&pipe_in, PIPE_SIZE).unwrap_or(64 * 1024);
    let mut moved = 0u64;
    loop {
        // The pipe is empty here, so EAGAIN can only mean that the socket has nothing to read
        // and clearing its readiness is right.
        let n = loop {
            activity.wait(from.readable(), idle).await?;
            match from.try_io(Interest::READABLE, || move_bytes(from, &pipe_in, capacity)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => break r?,
            }
        };
        if n == 0 {
            socket2::SockRef::from(to).shutdown(Shutdown::Write)?;
            return Ok(moved);
        }
        let mut left = n;
        while left > 0 {
            activity.wait(to.writable(), idle).await?;
            match to.try_io(Interest::WRITABLE, || move_bytes(&pipe_out, to, left)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    activity.touch();
                    left -= m;
                    moved += m as u64;
                }
            }
        }
    }
}

fn move_bytes(
    from: impl std::os::fd::AsFd,
    to: impl std::os::fd::AsFd,
    len: usize,
) -> io::Result<usize> {
    loop {
        match splice(
            from.as_fd(),
            None,
            to.as_fd(),
            None,
            len,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}
