//! Runs the [`Session`] over real transports: `embedded-io` byte streams for the control and
//! data connections, a [`ReadAt`] file, and retries with exponential back-off.
//!
//! Nothing here needs `std` or a heap: a box plugs in its TCP stack through [`Network`] and its
//! timer through [`Sleep`], and lends the three buffers in [`Buffers`].

use crate::decision::{Decision, LocalFile};
use crate::local::{clamp, digest, DigestError, ReadAt};
use crate::pasv::PasvAddr;
use crate::reply::LineReader;
use crate::session::{Command, Config, Outcome, Session, SessionError, Step};
use core::fmt;
use embedded_io::{Error as _, ErrorKind, ErrorType, Read, Write};

/// The network a box uploads through: one control connection per attempt, one data
/// connection per transfer.
pub trait Network {
    /// The one error type of the stack.
    type Error: embedded_io::Error;
    /// A connected control stream.
    type Control: Read + Write + ErrorType<Error = Self::Error>;
    /// A connected data stream.
    type Data: Write + ErrorType<Error = Self::Error>;

    /// Connects to the server's control port.
    fn connect_control(&mut self) -> Result<Self::Control, Self::Error>;

    /// Connects to the address of a `227` reply (the stack may substitute the control
    /// connection's peer address, as NAT-aware clients do).
    fn connect_data(&mut self, addr: PasvAddr) -> Result<Self::Data, Self::Error>;

    /// Ends an upload's data stream: everything written reaches the server, then end of stream.
    fn close_data(&mut self, data: Self::Data) -> Result<(), Self::Error>;

    /// Closes the control connection after the dialogue (or a failure).
    fn close_control(&mut self, control: Self::Control) {
        drop(control);
    }

    /// Sends up to `len` bytes of `file` from `offset` straight to the data connection
    /// (`sendfile(2)`), returning how many went; `None` if this network cannot, and then the
    /// driver reads the bytes through its buffer. Used only when the server verifies the
    /// upload, as the client then never sees the bytes.
    #[cfg(feature = "std")]
    fn send_file(
        &mut self,
        _data: &mut Self::Data,
        _file: &std::fs::File,
        _offset: u64,
        _len: u64,
    ) -> Option<Result<usize, Self::Error>> {
        None
    }
}

/// Waits between attempts.
pub trait Sleep {
    /// Blocks for `ms` milliseconds.
    fn sleep_ms(&mut self, ms: u32);
}

impl<F: FnMut(u32)> Sleep for F {
    fn sleep_ms(&mut self, ms: u32) {
        self(ms)
    }
}

/// Hears about the upload as it runs (progress display, logs); every method does nothing by
/// default.
pub trait Observer {
    /// A command line is about to be sent (`Pass` carries the password: do not print it).
    fn command(&mut self, _line: &[u8], _command: Command) {}
    /// A line arrived on the control connection.
    fn reply_line(&mut self, _line: &[u8]) {}
    /// A new attempt starts (1 for the first).
    fn attempt_started(&mut self, _attempt: u32) {}
    /// The local file is being digested: bytes read so far.
    fn hashing(&mut self, _done: u64) {}
    /// The decision of this attempt.
    fn decided(&mut self, _decision: Decision, _local: &LocalFile) {}
    /// File bytes up to `offset` of `len` are written to the data connection.
    fn progress(&mut self, _offset: u64, _len: u64) {}
    /// An attempt failed; another starts after `retry_in_ms`, or none if `None`.
    fn attempt_failed(
        &mut self,
        _attempt: u32,
        _error: &dyn fmt::Display,
        _retry_in_ms: Option<u32>,
    ) {
    }
}

impl Observer for () {}

/// How often and how patiently to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub initial_delay_ms: u32,
    /// Upper bound of the wait.
    pub max_delay_ms: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            initial_delay_ms: 1000,
            max_delay_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed attempt (1-based): exponential, capped.
    pub fn delay_ms(&self, failures: u32) -> u32 {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial_delay_ms
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay_ms)
    }
}

/// The caller's memory: control lines, command lines and file data.
#[derive(Debug)]
pub struct Buffers<'b> {
    /// Incoming control bytes; its length bounds the reply line kept whole (512 is plenty).
    pub control: &'b mut [u8],
    /// Outgoing command lines; must hold the longest one (`SITE KEY INFO` + the path).
    pub command: &'b mut [u8],
    /// File reads and data writes; 64 KiB to 256 KiB keeps a link full.
    pub data: &'b mut [u8],
}

/// Which connection a network error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Connecting the control connection.
    Connect,
    /// Reading or writing the control connection.
    Control,
    /// Connecting the data connection.
    DataConnect,
    /// Writing or closing the data connection.
    Data,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "cannot connect to the server",
            Stage::Control => "control connection failed",
            Stage::DataConnect => "cannot open the data connection",
            Stage::Data => "data connection failed",
        })
    }
}

/// Why one attempt failed.
#[derive(Debug)]
pub enum AttemptError<NE, FE> {
    /// The dialogue failed (a refusal, a bad reply, a failed verification...).
    Session(SessionError),
    /// The network failed.
    Network {
        /// Where.
        stage: Stage,
        /// The stack's error.
        error: NE,
    },
    /// The local file could not be read.
    File(FE),
    /// The local file is shorter than when it was digested.
    FileShrunk,
    /// A buffer in [`Buffers`] is empty.
    EmptyBuffer,
}

impl<NE, FE> AttemptError<NE, FE> {
    /// True when a new attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            AttemptError::Session(e) => e.is_retryable(),
            AttemptError::Network { .. } => true,
            AttemptError::File(_) | AttemptError::FileShrunk | AttemptError::EmptyBuffer => false,
        }
    }

    fn from_digest(e: DigestError<FE>) -> Self {
        match e {
            DigestError::Read(e) => AttemptError::File(e),
            DigestError::Shrunk => AttemptError::FileShrunk,
            DigestError::EmptyBuffer => AttemptError::EmptyBuffer,
        }
    }
}

impl<NE, FE> From<SessionError> for AttemptError<NE, FE> {
    fn from(e: SessionError) -> Self {
        AttemptError::Session(e)
    }
}

impl<NE: fmt::Display, FE: fmt::Display> fmt::Display for AttemptError<NE, FE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Session(e) => e.fmt(f),
            AttemptError::Network { stage, error } => write!(f, "{stage}: {error}"),
            AttemptError::File(e) => write!(f, "cannot read the local file: {e}"),
            AttemptError::FileShrunk => f.write_str("the local file became shorter"),
            AttemptError::EmptyBuffer => f.write_str("an I/O buffer is empty"),
        }
    }
}

#[cfg(feature = "std")]
impl<NE: fmt::Debug + fmt::Display, FE: fmt::Debug + fmt::Display> std::error::Error
    for AttemptError<NE, FE>
{
}

/// How an upload failed, in the terms a caller acts on (and the CLI's exit codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The server refused the login.
    LoginRefused,
    /// The server refused to complete the upload: CRC mismatch.
    VerificationFailed,
    /// Every attempt failed on the network or the server.
    RetriesExhausted,
    /// A failure that retrying cannot fix: the local file, the configuration, a malformed
    /// argument.
    Permanent,
}

/// The last attempt's error and how far the upload got.
#[derive(Debug)]
pub struct UploadError<NE, FE> {
    /// Attempts made.
    pub attempts: u32,
    /// Why the last one failed.
    pub last: AttemptError<NE, FE>,
    /// The last decision made, if any attempt got that far.
    pub decision: Option<Decision>,
    /// The local digest, if it was made.
    pub local: Option<LocalFile>,
    /// File bytes written in the last attempt.
    pub bytes_sent_last: u64,
    /// File bytes written over all attempts.
    pub bytes_sent_total: u64,
}

impl<NE, FE> UploadError<NE, FE> {
    /// The failure's category.
    pub fn kind(&self) -> FailureKind {
        match &self.last {
            AttemptError::Session(SessionError::LoginRefused { .. }) => FailureKind::LoginRefused,
            AttemptError::Session(SessionError::VerificationFailed { .. }) => {
                FailureKind::VerificationFailed
            }
            e if e.is_retryable() => FailureKind::RetriesExhausted,
            _ => FailureKind::Permanent,
        }
    }
}

impl<NE: fmt::Display, FE: fmt::Display> fmt::Display for UploadError<NE, FE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind() == FailureKind::RetriesExhausted {
            let s = if self.attempts == 1 { "" } else { "s" };
            write!(
                f,
                "gave up after {} attempt{s}: {}",
                self.attempts, self.last
            )
        } else {
            self.last.fmt(f)
        }
    }
}

#[cfg(feature = "std")]
impl<NE: fmt::Debug + fmt::Display, FE: fmt::Debug + fmt::Display> std::error::Error
    for UploadError<NE, FE>
{
}

/// A finished upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// The successful attempt's result.
    pub outcome: Outcome,
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// File bytes written over all attempts.
    pub bytes_sent_total: u64,
}

/// Uploads the file: attempts with back-off until one succeeds, a failure cannot be fixed by
/// retrying, or `policy.retries` retries are spent.
pub fn upload<N, F, S, O>(
    net: &mut N,
    file: &mut F,
    cfg: Config<'_>,
    policy: RetryPolicy,
    mut bufs: Buffers<'_>,
    sleep: &mut S,
    observer: &mut O,
) -> Result<Report, UploadError<N::Error, F::Error>>
where
    N: Network,
    F: ReadAt,
    F::Error: fmt::Display,
    S: Sleep,
    O: Observer,
{
    let mut known = None;
    let mut total = 0u64;
    let mut attempts = 0u32;
    let mut decision = None;
    loop {
        attempts += 1;
        observer.attempt_started(attempts);
        let mut session = match Session::new(cfg) {
            Ok(s) => s,
            Err(e) => {
                return Err(UploadError {
                    attempts,
                    last: AttemptError::Session(e.into()),
                    decision: None,
                    local: None,
                    bytes_sent_last: 0,
                    bytes_sent_total: total,
                })
            }
        };
        let result = attempt(net, file, &mut session, &mut bufs, &mut known, observer);
        total += session.bytes_sent();
        decision = session.decision().or(decision);
        match result {
            Ok(outcome) => {
                return Ok(Report {
                    outcome,
                    attempts,
                    bytes_sent_total: total,
                })
            }
            Err(e) if e.is_retryable() && attempts <= policy.retries => {
                let delay = policy.delay_ms(attempts);
                observer.attempt_failed(attempts, &e, Some(delay));
                sleep.sleep_ms(delay);
            }
            Err(e) => {
                observer.attempt_failed(attempts, &e, None);
                return Err(UploadError {
                    attempts,
                    last: e,
                    decision,
                    local: session.local().or(known.map(|(len, crc)| LocalFile {
                        len,
                        crc,
                        prefix: None,
                    })),
                    bytes_sent_last: session.bytes_sent(),
                    bytes_sent_total: total,
                });
            }
        }
    }
}

/// One attempt: one control connection, from the greeting to `QUIT`.
///
/// `known` carries the local `(len, crc)` between attempts so the file is digested once; only
/// the prefix the server's size calls for is read again.
pub fn attempt<N, F, O>(
    net: &mut N,
    file: &mut F,
    session: &mut Session<'_>,
    bufs: &mut Buffers<'_>,
    known: &mut Option<(u64, u32)>,
    observer: &mut O,
) -> Result<Outcome, AttemptError<N::Error, F::Error>>
where
    N: Network,
    F: ReadAt,
    O: Observer,
{
    let Buffers {
        control: control_buf,
        command: command_buf,
        data: data_buf,
    } = bufs;
    if control_buf.is_empty() || data_buf.is_empty() {
        return Err(AttemptError::EmptyBuffer);
    }
    let net_err = |stage| move |error| AttemptError::Network { stage, error };
    let mut control = net.connect_control().map_err(net_err(Stage::Connect))?;
    let mut lines = LineReader::new(control_buf);
    let mut data: Option<N::Data> = None;
    let result = (|| -> Result<Outcome, AttemptError<N::Error, F::Error>> {
        loop {
            match session.poll(command_buf)? {
                Step::Send { len, command } => {
                    let line = &command_buf[..len];
                    observer.command(line, command);
                    control
                        .write_all(line)
                        .and_then(|()| control.flush())
                        .map_err(net_err(Stage::Control))?;
                }
                Step::Receive => loop {
                    if let Some(line) = lines.next_line() {
                        observer.reply_line(line.bytes);
                        session.handle_line(line)?;
                        break;
                    }
                    match control.read(lines.spare()) {
                        Ok(0) => {
                            session.connection_closed()?;
                            break;
                        }
                        Ok(n) => lines.commit(n),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(net_err(Stage::Control)(e)),
                    }
                },
                Step::Digest { prefix_at } => {
                    let local = digest(file, data_buf, prefix_at, *known, |n| observer.hashing(n))
                        .map_err(AttemptError::from_digest)?;
                    *known = Some((local.len, local.crc));
                    session.set_local(local)?;
                }
                Step::Decided(decision) => {
                    if let Some(local) = session.local() {
                        observer.decided(decision, &local);
                    }
                }
                Step::Connect(addr) => {
                    data = Some(
                        net.connect_data(addr)
                            .map_err(net_err(Stage::DataConnect))?,
                    );
                    session.data_connected()?;
                }
                Step::Upload { offset, remaining } => {
                    let stream = data.as_mut().ok_or(SessionError::OutOfOrder)?;
                    // Straight from the file when the network can and the server checks.
                    #[cfg(feature = "std")]
                    let direct = session
                        .server_verifies()
                        .then(|| file.os_file())
                        .flatten()
                        .and_then(|f| net.send_file(stream, f, offset, remaining));
                    #[cfg(not(feature = "std"))]
                    let direct: Option<Result<usize, N::Error>> = None;
                    let sent = match direct {
                        Some(sent) => {
                            let n = sent.map_err(net_err(Stage::Data))? as u64;
                            session.file_sent(n)?;
                            n
                        }
                        None => {
                            let want = clamp(data_buf.len(), remaining);
                            let n = file
                                .read_at(offset, &mut data_buf[..want])
                                .map_err(AttemptError::File)?;
                            let out = session.file_data(&data_buf[..n.min(want)])?;
                            stream.write_all(out).map_err(net_err(Stage::Data))?;
                            out.len() as u64
                        }
                    };
                    let len = session.local().map_or(0, |l| l.len);
                    observer.progress(offset + sent, len);
                }
                Step::CloseData => {
                    if let Some(stream) = data.take() {
                        net.close_data(stream).map_err(net_err(Stage::Data))?;
                    }
                    session.data_closed()?;
                }
                Step::Done(outcome) => return Ok(outcome),
            }
        }
    })();
    drop(data);
    net.close_control(control);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::SliceFile;
    use crc_tools::crc32;
    use std::string::String;
    use std::vec::Vec;

    /// A control stream that plays back a server's bytes in small pieces and records what
    /// the client wrote: any `embedded-io` stack looks like this to the driver.
    struct Scripted {
        replies: Vec<u8>,
        pos: usize,
        written: Vec<u8>,
    }

    impl ErrorType for Scripted {
        type Error = ErrorKind;
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
            let n = buf.len().min(7).min(self.replies.len() - self.pos);
            buf[..n].copy_from_slice(&self.replies[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
    }

    struct Sink(Vec<u8>);

    impl ErrorType for Sink {
        type Error = ErrorKind;
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            let n = buf.len().min(1000);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct MockNet {
        refuse_first: u32,
        connects: u32,
        commands: String,
        uploaded: Vec<u8>,
        data_addr: Option<PasvAddr>,
    }

    impl Network for MockNet {
        type Error = ErrorKind;
        type Control = Scripted;
        type Data = Sink;

        fn connect_control(&mut self) -> Result<Scripted, ErrorKind> {
            self.connects += 1;
            if self.connects <= self.refuse_first {
                return Err(ErrorKind::ConnectionRefused);
            }
            let replies = [
                "220 ready",
                "331 password",
                "230 logged in",
                "200 binary",
                "550 absent",
                "230 KEY accepted",
                "227 Entering Passive Mode (10,0,0,7,19,137)",
                "150 go",
                "226 verified",
                "221 bye",
            ]
            .iter()
            .flat_map(|l| [l.as_bytes(), b"\r\n"].concat())
            .collect();
            Ok(Scripted {
                replies,
                pos: 0,
                written: Vec::new(),
            })
        }

        fn connect_data(&mut self, addr: PasvAddr) -> Result<Sink, ErrorKind> {
            self.data_addr = Some(addr);
            Ok(Sink(Vec::new()))
        }

        fn close_data(&mut self, data: Sink) -> Result<(), ErrorKind> {
            self.uploaded = data.0;
            Ok(())
        }

        fn close_control(&mut self, control: Scripted) {
            self.commands = String::from_utf8(control.written).unwrap();
        }
    }

    #[test]
    fn uploads_through_any_embedded_io_stack_after_retries() {
        let file: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut net = MockNet {
            refuse_first: 2,
            ..MockNet::default()
        };
        let mut waits = Vec::new();
        let report = upload(
            &mut net,
            &mut SliceFile(&file),
            Config::new("stb", "pw", "rec.ts"),
            RetryPolicy {
                retries: 5,
                initial_delay_ms: 100,
                max_delay_ms: 1000,
            },
            Buffers {
                control: &mut [0u8; 48],
                command: &mut [0u8; 64],
                data: &mut [0u8; 999],
            },
            &mut |ms| waits.push(ms),
            &mut (),
        )
        .unwrap();
        assert_eq!(waits, [100, 200]);
        assert_eq!(report.attempts, 3);
        assert_eq!(report.outcome.decision, Decision::Fresh);
        assert!(report.outcome.verified);
        assert_eq!(net.uploaded, file);
        assert_eq!(
            net.data_addr,
            Some(PasvAddr {
                ip: [10, 0, 0, 7],
                port: 5001
            })
        );
        let key = crc_tools::KeyValue(crc32(&file));
        assert_eq!(
            net.commands,
            std::format!(
                "USER stb\r\nPASS pw\r\nTYPE I\r\nSIZE rec.ts\r\nSITE KEY {key} rec.ts\r\n\
                 PASV\r\nSTOR rec.ts\r\nQUIT\r\n"
            )
        );
    }

    #[test]
    fn gives_up_after_the_retries() {
        let mut net = MockNet {
            refuse_first: 10,
            ..MockNet::default()
        };
        let e = upload(
            &mut net,
            &mut SliceFile(b"abc"),
            Config::new("stb", "pw", "rec.ts"),
            RetryPolicy {
                retries: 2,
                initial_delay_ms: 1,
                max_delay_ms: 1,
            },
            Buffers {
                control: &mut [0u8; 32],
                command: &mut [0u8; 64],
                data: &mut [0u8; 16],
            },
            &mut |_| {},
            &mut (),
        )
        .unwrap_err();
        assert_eq!(e.attempts, 3);
        assert_eq!(e.kind(), FailureKind::RetriesExhausted);
        assert!(matches!(
            e.last,
            AttemptError::Network {
                stage: Stage::Connect,
                error: ErrorKind::ConnectionRefused
            }
        ));
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            retries: 10,
            initial_delay_ms: 1000,
            max_delay_ms: 60_000,
        };
        let waits: Vec<u32> = (1..=8).map(|n| p.delay_ms(n)).collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
        assert_eq!(p.delay_ms(u32::MAX), 60_000);
    }

    #[test]
    fn empty_buffers_are_refused() {
        let e = upload(
            &mut MockNet::default(),
            &mut SliceFile(b"abc"),
            Config::new("stb", "pw", "rec.ts"),
            RetryPolicy::default(),
            Buffers {
                control: &mut [],
                command: &mut [0u8; 64],
                data: &mut [0u8; 16],
            },
            &mut |_| {},
            &mut (),
        )
        .unwrap_err();
        assert!(matches!(e.last, AttemptError::EmptyBuffer));
        assert_eq!(e.kind(), FailureKind::Permanent);
    }
}
