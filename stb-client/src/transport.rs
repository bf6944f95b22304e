//! Blocking `std` implementations of the driver's traits: TCP through `std::net`, the local
//! file through positioned reads, and back-off through `thread::sleep`.

use crate::driver::{Network, Sleep};
use crate::local::{crc_span_sequential, ReadAt, Span};
use crate::pasv::PasvAddr;
use crc_tools::range::read_file_at;
use embedded_io_adapters::std::FromStd;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Which address the data connection goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PasvTarget {
    /// The control connection's peer, with the port from `227` (curl's default): works
    /// behind NAT, where the announced address is often a private one.
    #[default]
    ControlPeer,
    /// The address announced in `227`.
    Announced,
}

/// Blocking TCP to one FTP server.
#[derive(Debug)]
pub struct TcpNetwork {
    host: String,
    port: u16,
    timeout: Option<Duration>,
    pasv_target: PasvTarget,
    peer: Option<IpAddr>,
}

impl TcpNetwork {
    /// A server at `host:port`; `timeout` bounds connecting and every read and write, so a
    /// dead link ends the attempt instead of hanging.
    pub fn new(host: impl Into<String>, port: u16, timeout: Option<Duration>) -> Self {
        TcpNetwork {
            host: host.into(),
            port,
            timeout,
            pasv_target: PasvTarget::default(),
            peer: None,
        }
    }

    /// Chooses where data connections go.
    pub fn with_pasv_target(mut self, target: PasvTarget) -> Self {
        self.pasv_target = target;
        self
    }

    fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = match self.timeout {
            Some(t) => TcpStream::connect_timeout(&addr, t)?,
            None => TcpStream::connect(addr)?,
        };
        stream.set_read_timeout(self.timeout)?;
        stream.set_write_timeout(self.timeout)?;
        Ok(stream)
    }
}

impl Network for TcpNetwork {
    type Error = io::Error;
    type Control = FromStd<TcpStream>;
    type Data = FromStd<TcpStream>;

    fn connect_control(&mut self) -> io::Result<Self::Control> {
        let mut last = None;
        for addr in (self.host.as_str(), self.port).to_socket_addrs()? {
            match self.connect(addr) {
                Ok(stream) => {
                    // Commands are small and each waits for its reply: do not delay them.
                    stream.set_nodelay(true)?;
                    self.peer = Some(stream.peer_addr()?.ip());
                    return Ok(FromStd::new(stream));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host name has no address")))
    }

    fn connect_data(&mut self, addr: PasvAddr) -> io::Result<Self::Data> {
        let announced = IpAddr::V4(Ipv4Addr::from(addr.ip));
        let ip = match self.pasv_target {
            PasvTarget::ControlPeer => self.peer.unwrap_or(announced),
            PasvTarget::Announced => announced,
        };
        self.connect(SocketAddr::new(ip, addr.port))
            .map(FromStd::new)
    }

    fn close_data(&mut self, data: Self::Data) -> io::Result<()> {
        // The FIN after the last byte is what tells the server the file is complete.
        data.into_inner().shutdown(Shutdown::Write)
    }

    /// `sendfile(2)`: the page cache goes to the socket without a copy through the buffer,
    /// which on loopback measured about 1.4x the throughput of reading and writing.
    #[cfg(target_os = "linux")]
    fn send_file(
        &mut self,
        data: &mut Self::Data,
        file: &File,
        offset: u64,
        len: u64,
    ) -> Option<io::Result<usize>> {
        let mut at = offset;
        let count = usize::try_from(len).map_or(SENDFILE_MAX, |l| l.min(SENDFILE_MAX));
        Some(loop {
            match rustix::fs::sendfile(data.inner(), file, Some(&mut at), count) {
                Err(rustix::io::Errno::INTR) => continue,
                r => break r.map_err(io::Error::from),
            }
        })
    }
}

/// Bytes per `sendfile(2)` call: progress is reported, and a cut counted, in steps this size.
#[cfg(target_os = "linux")]
const SENDFILE_MAX: usize = 4 << 20;

/// A local file read with positioned reads (no shared cursor).
///
/// Its digest may read several parts of the file at once, on threads, each through its own
/// slice of the caller's buffer: on Linux the copy out of the page cache, not the CRC, is what
/// a digest pass costs, and it scales with cores while memory use stays the buffer's.
#[derive(Debug)]
pub struct StdFile {
    file: File,
    digest_threads: usize,
    /// The whole-file digest started by [`StdFile::digest_ahead`], until it is collected.
    ahead: Option<std::thread::JoinHandle<io::Result<Span>>>,
}

/// Spans shorter than this are digested on the calling thread alone.
const PARALLEL_DIGEST_MIN: u64 = 8 << 20;

impl StdFile {
    /// A file digested on the calling thread only.
    pub fn new(file: File) -> Self {
        StdFile {
            file,
            digest_threads: 1,
            ahead: None,
        }
    }

    /// Digests with up to `threads` threads (the calling one included; 0 counts as 1).
    pub fn with_digest_threads(mut self, threads: usize) -> Self {
        self.digest_threads = threads.max(1);
        self
    }

    /// Starts digesting the whole file now, on a thread with its own `buf_len`-byte buffer, so
    /// that the CRC the `KEY` declaration needs is ready, or nearly, when the dialogue gets
    /// there: connecting and logging in take tens of milliseconds of waiting on the server.
    /// [`ReadAt::precomputed`] collects the result.
    pub fn digest_ahead(mut self, buf_len: usize) -> io::Result<Self> {
        let mut ahead =
            StdFile::new(self.file.try_clone()?).with_digest_threads(self.digest_threads);
        let buf_len = buf_len.max(1);
        self.ahead = Some(std::thread::spawn(move || {
            let mut buf = vec![0u8; buf_len];
            ahead.crc_span(0, None, &mut buf, &mut |_| {})
        }));
        Ok(self)
    }
}

/// Reads exactly `[start, end)` through `buf`, adding each read's length to `done`.
#[cfg(unix)]
fn crc_part(
    file: &File,
    start: u64,
    end: u64,
    buf: &mut [u8],
    done: &std::sync::atomic::AtomicU64,
    mut progress: Option<&mut dyn FnMut(u64)>,
) -> io::Result<Span> {
    use std::sync::atomic::Ordering;
    let mut counted = 0;
    let span = crc_tools::range::crc_span(
        |at, chunk| read_file_at(file, at, chunk),
        start,
        Some(end - start),
        buf,
        |n| {
            let total = done.fetch_add(n - counted, Ordering::Relaxed) + (n - counted);
            counted = n;
            if let Some(p) = progress.as_mut() {
                p(total);
            }
        },
    )?;
    if span.len < end - start {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the local file became shorter while being read",
        ));
    }
    Ok(span)
}

impl ReadAt for StdFile {
    type Error = io::Error;

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        read_file_at(&self.file, offset, buf)
    }

    #[cfg(unix)]
    fn crc_span(
        &mut self,
        start: u64,
        max: Option<u64>,
        buf: &mut [u8],
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<Span> {
        use std::sync::atomic::AtomicU64;
        let file_len = self.file.metadata()?.len();
        let end = match max {
            Some(m) => file_len.min(start.saturating_add(m)),
            None => file_len,
        };
        let len = end.saturating_sub(start);
        let threads = self.digest_threads;
        let chunk = buf.len() / threads;
        if threads == 1 || len < PARALLEL_DIGEST_MIN || chunk < 4096 {
            return crc_span_sequential(self, start, max, buf, progress);
        }
        let part = len.div_ceil(threads as u64);
        let done = AtomicU64::new(0);
        let file = &self.file;
        let mut whole = std::thread::scope(|scope| -> io::Result<Span> {
            let mut bufs = buf.chunks_exact_mut(chunk);
            let mut handles = Vec::with_capacity(threads - 1);
            let mut mine = None;
            for i in 0..threads as u64 {
                let (s, e) = (
                    (start + i * part).min(end),
                    (start + (i + 1) * part).min(end),
                );
                let Some(b) = bufs.next() else { break };
                if i == 0 {
                    mine = Some((s, e, b));
                } else {
                    let done = &done;
                    handles.push(scope.spawn(move || crc_part(file, s, e, b, done, None)));
                }
            }
            let mut whole = match mine {
                Some((s, e, b)) => crc_part(file, s, e, b, &done, Some(&mut *progress))?,
                None => Span::default(),
            };
            for h in handles {
                let span = h
                    .join()
                    .map_err(|_| io::Error::other("a digest thread panicked"))??;
                whole = whole.then(span);
            }
            Ok(whole)
        })?;
        // The file may have grown since its length was taken: read on, as a sequential pass would.
        let rest = crc_span_sequential(
            self,
            start + whole.len,
            max.map(|m| m - whole.len),
            buf,
            &mut |n| progress(whole.len + n),
        )?;
        whole = whole.then(rest);
        Ok(whole)
    }

    fn os_file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn precomputed(&mut self) -> io::Result<Option<Span>> {
        match self.ahead.take() {
            None => Ok(None),
            Some(h) => h
                .join()
                .map_err(|_| io::Error::other("the digest thread panicked"))?
                .map(Some),
        }
    }
}

/// Back-off with `std::thread::sleep`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadSleep;

impl Sleep for ThreadSleep {
    fn sleep_ms(&mut self, ms: u32) {
        std::thread::sleep(Duration::from_millis(u64::from(ms)));
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crc_tools::crc32;
    use std::io::Write;

    /// A file of `len` varied bytes in the temp directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(tag: &str, data: &[u8]) -> io::Result<Self> {
            let path = std::env::temp_dir().join(format!("stb-{tag}-{}", std::process::id()));
            File::create(&path)?.write_all(data)?;
            Ok(TempFile(path))
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn parallel_digest_equals_the_one_pass_crc() -> io::Result<()> {
        let d = data((PARALLEL_DIGEST_MIN as usize) * 2 + 12_345);
        let tmp = TempFile::new("par", &d)?;
        let len = d.len() as u64;
        let cases = [
            (0, None),
            (0, Some(len)),
            (0, Some(len + 1)),
            (1, None),
            (3_000_001, Some(PARALLEL_DIGEST_MIN + 17)),
            (len - 5, None),
            (len, None),
            (len + 10, None),
        ];
        for threads in [1, 2, 3, 4, 7] {
            let mut file = StdFile::new(File::open(&tmp.0)?).with_digest_threads(threads);
            let mut buf = vec![0u8; 128 << 10];
            for (start, max) in cases {
                let mut last = 0;
                let got = file.crc_span(start, max, &mut buf, &mut |n| last = n)?;
                let from = (start as usize).min(d.len());
                let to = max.map_or(d.len(), |m| (from + m as usize).min(d.len()));
                let want = &d[from..to];
                assert_eq!(
                    got,
                    Span {
                        len: want.len() as u64,
                        crc: crc32(want)
                    },
                    "threads={threads} start={start} max={max:?}"
                );
                assert!(last <= got.len);
            }
        }
        Ok(())
    }

    #[test]
    fn digest_ahead_gives_the_same_whole_and_prefix() -> io::Result<()> {
        let d = data((PARALLEL_DIGEST_MIN as usize) * 2 + 4_321);
        let tmp = TempFile::new("ahead", &d)?;
        for threads in [1, 3] {
            let mut file = StdFile::new(File::open(&tmp.0)?)
                .with_digest_threads(threads)
                .digest_ahead(32 << 10)?;
            let mut buf = vec![0u8; 64 << 10];
            let s = 5_000_011u64;
            let got = crate::digest(&mut file, &mut buf, Some(s), None, |_| {})
                .map_err(|e| io::Error::other(e.to_string()))?;
            assert_eq!((got.len, got.crc), (d.len() as u64, crc32(&d)));
            assert_eq!(got.prefix.map(|p| p.crc), Some(crc32(&d[..s as usize])));
            // Collected once: a later attempt's digest reads the file itself.
            assert_eq!(file.precomputed()?, None);
        }
        Ok(())
    }

    #[test]
    fn digest_through_threads_gives_whole_and_prefix() -> io::Result<()> {
        let d = data((PARALLEL_DIGEST_MIN as usize) * 3);
        let tmp = TempFile::new("digest", &d)?;
        let mut file = StdFile::new(File::open(&tmp.0)?).with_digest_threads(4);
        let mut buf = vec![0u8; 64 << 10];
        let s = 10_000_019u64;
        let got = crate::digest(&mut file, &mut buf, Some(s), None, |_| {})
            .map_err(|e| io::Error::other(e.to_string()))?;
        assert_eq!(got.len, d.len() as u64);
        assert_eq!(got.crc, crc32(&d));
        assert_eq!(
            got.prefix,
            Some(crate::Prefix {
                len: s,
                crc: crc32(&d[..s as usize])
            })
        );
        Ok(())
    }
}
