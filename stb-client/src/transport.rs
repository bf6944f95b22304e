//! Blocking `std` implementations of the driver's traits: TCP through `std::net`, the local
//! file through positioned reads, and back-off through `thread::sleep`.

use crate::driver::{Network, Sleep};
use crate::local::ReadAt;
use crate::pasv::PasvAddr;
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
}

/// A local file read with positioned reads (no shared cursor).
#[derive(Debug)]
pub struct StdFile(pub File);

impl ReadAt for StdFile {
    type Error = io::Error;

    #[cfg(unix)]
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        loop {
            match self.0.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    #[cfg(not(unix))]
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::{Read, Seek, SeekFrom};
        self.0.seek(SeekFrom::Start(offset))?;
        self.0.read(buf)
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
