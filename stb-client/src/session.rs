//! The upload dialogue as a sans-IO state machine.
//!
//! [`Session`] never touches a socket or a file. The caller asks it what to do next with
//! [`Session::poll`] and reports back: reply lines ([`Session::handle_line`]), the local digest
//! ([`Session::set_local`]), the data connection ([`Session::data_connected`],
//! [`Session::data_closed`]) and file bytes on their way out ([`Session::file_data`]). Command
//! lines are written into a buffer the caller passes in; the session itself holds no buffer,
//! only a few hundred bytes of state, so it runs on a box without a heap.
//!
//! One session is one attempt over one control connection:
//! greeting, `USER`/`PASS`, `TYPE I`, `SIZE`, `KEY NULL`, (local digest), `KEY INFO`,
//! then per decision `DELE` + `KEY F`, `PASV`, `REST`, `STOR`, the data, the final reply, `QUIT`.

use crate::decision::{
    decide, wants_info, Decision, Info, InfoFacts, KeySupport, LocalFile, Remote, RemoteSize,
};
use crate::pasv::{parse_227, PasvAddr, PasvError};
use crate::reply::{Code, Line, ReplyError, ReplyEvent, ReplyParser};
use core::fmt::{self, Write as _};
use crc_tools::{Crc32, InfoField, InfoLine, KeyAnswer, KeyCommand, KeyValue, State};

/// How KEY commands are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyForm {
    /// `SITE KEY ...`: the standard FTP extension point, reachable through any server front.
    #[default]
    Site,
    /// `KEY ...`: the form existing firmware sends.
    Bare,
}

/// What the session is told before it starts; strings borrow from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config<'a> {
    /// Login name.
    pub user: &'a str,
    /// Password (sent as typed: FTP has no other way).
    pub password: &'a str,
    /// Remote path, as given to SIZE, STOR, DELE and KEY.
    pub path: &'a str,
    /// `SITE KEY` or bare `KEY`.
    pub key_form: KeyForm,
    /// On a server without KEY, resume by size alone instead of uploading from zero.
    pub trust_rest: bool,
}

impl<'a> Config<'a> {
    /// A configuration with `SITE KEY` and no blind resume.
    pub fn new(user: &'a str, password: &'a str, path: &'a str) -> Self {
        Config {
            user,
            password,
            path,
            key_form: KeyForm::Site,
            trust_rest: false,
        }
    }

    /// Rejects values that would break or inject into the command lines.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
        if bad(self.user) {
            return Err(ConfigError::ControlCharacter(Field::User));
        }
        if bad(self.password) {
            return Err(ConfigError::ControlCharacter(Field::Password));
        }
        if bad(self.path) {
            return Err(ConfigError::ControlCharacter(Field::Path));
        }
        if self.user.is_empty() {
            return Err(ConfigError::Empty(Field::User));
        }
        if self.path.trim_matches([' ', '\t']).is_empty() {
            return Err(ConfigError::Empty(Field::Path));
        }
        if self.path.trim_matches([' ', '\t']) != self.path {
            return Err(ConfigError::BlankAroundPath);
        }
        Ok(())
    }
}

/// A configuration field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The login name.
    User,
    /// The password.
    Password,
    /// The remote path.
    Path,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::User => "user name",
            Field::Password => "password",
            Field::Path => "remote path",
        })
    }
}

/// A configuration that cannot be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A CR, LF or NUL, which would end or split a command line.
    ControlCharacter(Field),
    /// Nothing given.
    Empty(Field),
    /// Blanks at either end of the path, which KEY would trim and STOR would not.
    BlankAroundPath,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ControlCharacter(field) => {
                write!(f, "the {field} contains a line break or NUL")
            }
            ConfigError::Empty(field) => write!(f, "the {field} is empty"),
            ConfigError::BlankAroundPath => {
                f.write_str("the remote path starts or ends with a blank")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}

/// A command the session sends (and `Greeting` for the server's first reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The server's greeting, before any command.
    Greeting,
    /// `USER`
    User,
    /// `PASS`
    Pass,
    /// `TYPE I`
    Type,
    /// `SIZE`
    Size,
    /// `KEY NULL`
    KeyQuery,
    /// `KEY INFO`
    KeyInfo,
    /// `DELE`
    Dele,
    /// `KEY <crc>`
    KeyDeclare,
    /// `PASV`
    Pasv,
    /// `REST`
    Rest,
    /// `STOR`
    Stor,
    /// `QUIT`
    Quit,
}

impl Command {
    /// The command word(s) as on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Command::Greeting => "greeting",
            Command::User => "USER",
            Command::Pass => "PASS",
            Command::Type => "TYPE",
            Command::Size => "SIZE",
            Command::KeyQuery => "KEY NULL",
            Command::KeyInfo => "KEY INFO",
            Command::Dele => "DELE",
            Command::KeyDeclare => "KEY",
            Command::Pasv => "PASV",
            Command::Rest => "REST",
            Command::Stor => "STOR",
            Command::Quit => "QUIT",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// The configuration cannot be sent.
    Config(ConfigError),
    /// A line that is not a readable reply.
    Reply(ReplyError),
    /// The server refused the user name or password.
    LoginRefused {
        /// The reply code (`530` usually).
        code: Code,
    },
    /// The server answered a command with a failure code.
    Refused {
        /// The command.
        command: Command,
        /// The reply code.
        code: Code,
    },
    /// A reply whose value could not be read (SIZE's number, KEY NULL's CRC).
    BadReply {
        /// The command answered.
        command: Command,
    },
    /// The `227` reply could not be read.
    Pasv(PasvError),
    /// A reply where none was expected.
    UnexpectedReply {
        /// Its code.
        code: Code,
    },
    /// After the data, the server refused to complete an upload that carried a declared KEY:
    /// the stored file's CRC is not the declared one.
    VerificationFailed {
        /// The reply code.
        code: Code,
    },
    /// After the data, the server refused to complete an upload without KEY.
    TransferFailed {
        /// The reply code.
        code: Code,
    },
    /// The control connection closed before the dialogue ended.
    ConnectionClosed,
    /// The local file's bytes are not those digested before the upload.
    LocalFileChanged,
    /// A command line does not fit the command buffer.
    CommandTooLong,
    /// A session method was called in a state where it makes no sense.
    OutOfOrder,
}

impl SessionError {
    /// True when a new attempt may succeed where this one failed.
    ///
    /// Not retried: refused logins, bad configuration, a local file that changed, a KEY
    /// argument the server calls malformed, and misuse of the API.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            SessionError::LoginRefused { .. }
                | SessionError::Config(_)
                | SessionError::LocalFileChanged
                | SessionError::CommandTooLong
                | SessionError::OutOfOrder
                | SessionError::Refused {
                    command: Command::KeyQuery | Command::KeyDeclare,
                    code: 501,
                }
        )
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Config(e) => e.fmt(f),
            SessionError::Reply(e) => e.fmt(f),
            SessionError::LoginRefused { code } => write!(f, "login refused ({code})"),
            SessionError::Refused { command, code } => {
                write!(f, "the server refused {command} ({code})")
            }
            SessionError::BadReply { command } => {
                write!(f, "unreadable reply to {command}")
            }
            SessionError::Pasv(e) => e.fmt(f),
            SessionError::UnexpectedReply { code } => write!(f, "unexpected reply {code}"),
            SessionError::VerificationFailed { code } => write!(
                f,
                "the server refused to complete the upload ({code}): \
                 the stored file's CRC differs from the declared one"
            ),
            SessionError::TransferFailed { code } => {
                write!(f, "the server refused to complete the upload ({code})")
            }
            SessionError::ConnectionClosed => f.write_str("the server closed the connection"),
            SessionError::LocalFileChanged => {
                f.write_str("the local file changed during the upload")
            }
            SessionError::CommandTooLong => f.write_str("a command does not fit its buffer"),
            SessionError::OutOfOrder => f.write_str("session call out of order"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SessionError {}

impl From<ConfigError> for SessionError {
    fn from(e: ConfigError) -> Self {
        SessionError::Config(e)
    }
}

/// What the caller must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write the first `len` bytes of the command buffer to the control connection.
    Send {
        /// Bytes written into the buffer, `\r\n` included.
        len: usize,
        /// What they are (a `Pass` line is a secret: do not log it).
        command: Command,
    },
    /// Read from the control connection and pass complete lines to [`Session::handle_line`].
    Receive,
    /// Digest the local file and pass the result to [`Session::set_local`]; include the CRC of
    /// the first `prefix_at` bytes when asked (see [`crate::local::digest`]).
    Digest {
        /// The server's size S, when it has a partial file.
        prefix_at: Option<u64>,
    },
    /// The decision was just made (reported once, for progress and logs).
    Decided(Decision),
    /// Open the data connection to this address, then call [`Session::data_connected`].
    Connect(PasvAddr),
    /// Read local bytes from `offset` (at most `remaining`), pass them through
    /// [`Session::file_data`] and write what it returns to the data connection.
    Upload {
        /// The file offset of the next byte to send.
        offset: u64,
        /// Bytes still to send.
        remaining: u64,
    },
    /// All data is sent: close the data connection, then call [`Session::data_closed`].
    CloseData,
    /// The dialogue is over; close the control connection.
    Done(Outcome),
}

/// The result of a successful attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// What was decided.
    pub decision: Decision,
    /// The offset the data started from (the REST offset; 0 for a full upload).
    pub resumed_from: u64,
    /// File bytes written to the data connection in this attempt.
    pub bytes_sent: u64,
    /// True when the server confirmed the whole file against the declared CRC.
    pub verified: bool,
    /// The local file as digested.
    pub local: LocalFile,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Greeting,
    User,
    Pass,
    Type,
    Size,
    KeyQuery,
    Digest,
    KeyInfo,
    Announce,
    Dele,
    KeyDeclare,
    Pasv,
    Connect(PasvAddr),
    Rest,
    Stor,
    Transfer,
    Close,
    Final,
    Quit,
    Done,
}

impl Phase {
    fn command(self) -> Option<Command> {
        Some(match self {
            Phase::Greeting => Command::Greeting,
            Phase::User => Command::User,
            Phase::Pass => Command::Pass,
            Phase::Type => Command::Type,
            Phase::Size => Command::Size,
            Phase::KeyQuery => Command::KeyQuery,
            Phase::KeyInfo => Command::KeyInfo,
            Phase::Dele => Command::Dele,
            Phase::KeyDeclare => Command::KeyDeclare,
            Phase::Pasv => Command::Pasv,
            Phase::Rest => Command::Rest,
            Phase::Stor | Phase::Transfer | Phase::Close | Phase::Final => Command::Stor,
            Phase::Quit => Command::Quit,
            Phase::Digest | Phase::Announce | Phase::Connect(_) | Phase::Done => return None,
        })
    }
}

/// Server replies that mean "no such command".
fn not_implemented(code: Code) -> bool {
    matches!(code, 500 | 502 | 504)
}

/// The upload dialogue for one attempt.
#[derive(Clone, Debug)]
pub struct Session<'a> {
    cfg: Config<'a>,
    parser: ReplyParser,
    phase: Phase,
    /// The current phase's command was sent and its reply is awaited.
    awaiting: bool,
    size: RemoteSize,
    key: KeySupport,
    info: Info,
    info_fields: InfoFacts,
    local: Option<LocalFile>,
    decision: Option<Decision>,
    /// The server holds a KEY for this upload, so it verifies on completion.
    key_in_force: bool,
    offset: u64,
    end: u64,
    /// Running CRC of the whole file through the bytes sent, when the prefix is known.
    running: Option<Crc32>,
    bytes_sent: u64,
    verified: bool,
    failed: Option<SessionError>,
}

impl<'a> Session<'a> {
    /// A session waiting for the server's greeting.
    pub fn new(cfg: Config<'a>) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Session {
            cfg,
            parser: ReplyParser::new(),
            phase: Phase::Greeting,
            awaiting: true,
            size: RemoteSize::Unknown,
            key: KeySupport::NotAsked,
            info: Info::NotAsked,
            info_fields: InfoFacts::default(),
            local: None,
            decision: None,
            key_in_force: false,
            offset: 0,
            end: 0,
            running: None,
            bytes_sent: 0,
            verified: false,
            failed: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config<'a> {
        &self.cfg
    }

    /// The decision, once made.
    pub fn decision(&self) -> Option<Decision> {
        self.decision
    }

    /// The local digest, once given.
    pub fn local(&self) -> Option<LocalFile> {
        self.local
    }

    /// What the server said about the remote file so far.
    pub fn remote(&self) -> Remote {
        Remote {
            size: self.size,
            key: self.key,
            info: self.info,
        }
    }

    /// File bytes handed out for sending in this attempt.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// The error that ended the session, if any.
    pub fn error(&self) -> Option<SessionError> {
        self.failed
    }

    /// What to do next. `command_buf` receives command lines (see [`Step::Send`]).
    pub fn poll(&mut self, command_buf: &mut [u8]) -> Result<Step, SessionError> {
        self.check()?;
        self.next_step(command_buf).map_err(|e| self.fail(e))
    }

    fn next_step(&mut self, command_buf: &mut [u8]) -> Result<Step, SessionError> {
        match self.phase {
            Phase::Digest => {
                let prefix_at = match self.size {
                    RemoteSize::Present(s) => Some(s),
                    _ => None,
                };
                return Ok(Step::Digest { prefix_at });
            }
            Phase::Announce => {
                let d = self.decision.ok_or(SessionError::OutOfOrder)?;
                self.after_announce(d);
                return Ok(Step::Decided(d));
            }
            Phase::Connect(addr) => return Ok(Step::Connect(addr)),
            Phase::Transfer if self.offset < self.end => {
                return Ok(Step::Upload {
                    offset: self.offset,
                    remaining: self.end - self.offset,
                })
            }
            Phase::Transfer => {
                self.phase = Phase::Close;
                return Ok(Step::CloseData);
            }
            Phase::Close => return Ok(Step::CloseData),
            Phase::Done => return Ok(Step::Done(self.outcome()?)),
            _ if self.awaiting => return Ok(Step::Receive),
            _ => {}
        }
        let command = self.phase.command().ok_or(SessionError::OutOfOrder)?;
        let len = self.write_command(command_buf)?;
        self.awaiting = true;
        Ok(Step::Send { len, command })
    }

    /// Feeds one line from the control connection.
    pub fn handle_line(&mut self, line: Line<'_>) -> Result<(), SessionError> {
        self.check()?;
        let event = self
            .parser
            .feed(line)
            .map_err(|e| self.fail(SessionError::Reply(e)))?;
        match event {
            ReplyEvent::Begin { .. } => Ok(()),
            ReplyEvent::Continuation { text, truncated } => {
                if self.phase == Phase::KeyInfo && self.awaiting && !truncated {
                    self.note_info_line(text);
                }
                Ok(())
            }
            ReplyEvent::Single { code, text } | ReplyEvent::End { code, text } => {
                self.on_reply(code, text).map_err(|e| self.fail(e))
            }
        }
    }

    /// The control connection reached end of stream.
    pub fn connection_closed(&mut self) -> Result<(), SessionError> {
        self.check()?;
        if self.phase == Phase::Quit {
            self.phase = Phase::Done;
            return Ok(());
        }
        Err(self.fail(SessionError::ConnectionClosed))
    }

    /// The local digest asked for by [`Step::Digest`].
    pub fn set_local(&mut self, local: LocalFile) -> Result<(), SessionError> {
        self.check()?;
        if self.phase != Phase::Digest {
            return Err(self.fail(SessionError::OutOfOrder));
        }
        self.local = Some(local);
        if wants_info(&local, &self.remote()) {
            self.enter(Phase::KeyInfo);
        } else {
            self.make_decision(local);
        }
        Ok(())
    }

    /// The data connection asked for by [`Step::Connect`] is open.
    pub fn data_connected(&mut self) -> Result<(), SessionError> {
        self.check()?;
        if !matches!(self.phase, Phase::Connect(_)) {
            return Err(self.fail(SessionError::OutOfOrder));
        }
        match self.decision {
            Some(Decision::Resume { .. } | Decision::Complete) => self.enter(Phase::Rest),
            _ => self.enter(Phase::Stor),
        }
        Ok(())
    }

    /// Passes file bytes read at the offset given by [`Step::Upload`]; returns the part to
    /// write to the data connection (never more than remains). An empty `data` means the file
    /// ended early.
    pub fn file_data<'d>(&mut self, data: &'d [u8]) -> Result<&'d [u8], SessionError> {
        self.check()?;
        self.pass_data(data).map_err(|e| self.fail(e))
    }

    fn pass_data<'d>(&mut self, data: &'d [u8]) -> Result<&'d [u8], SessionError> {
        // Outside a transfer `count_sent` refuses whatever the length.
        let out = &data[..crate::local::clamp(data.len(), self.end.saturating_sub(self.offset))];
        self.count_sent(out.len() as u64)?;
        if let Some(running) = &mut self.running {
            running.update(out);
        }
        if self.offset == self.end {
            let local = self.local.ok_or(SessionError::OutOfOrder)?;
            if let Some(running) = &self.running {
                if running.value() != local.crc || running.len() != local.len {
                    return Err(SessionError::LocalFileChanged);
                }
            }
        }
        Ok(out)
    }

    /// Whether the server checks this upload against the declared CRC (`KEY` is in force), so
    /// file bytes may go out without passing through the session: see [`Session::file_sent`].
    pub fn server_verifies(&self) -> bool {
        self.key_in_force
    }

    /// Counts `n` file bytes that went to the data connection straight from the file (e.g.
    /// `sendfile(2)`), from the offset given by [`Step::Upload`]. Allowed only while the
    /// [server verifies](Session::server_verifies) the upload, since the session cannot compare
    /// bytes it never saw with the digest: a file changed since then ends in the server's
    /// verification failure instead. `n == 0` means the file ended early.
    pub fn file_sent(&mut self, n: u64) -> Result<(), SessionError> {
        self.check()?;
        self.pass_sent(n).map_err(|e| self.fail(e))
    }

    fn pass_sent(&mut self, n: u64) -> Result<(), SessionError> {
        if !self.key_in_force {
            return Err(SessionError::OutOfOrder);
        }
        self.count_sent(n)?;
        self.running = None;
        Ok(())
    }

    /// Counts `n` file bytes going out, however they are sent: only during a transfer, never
    /// past the end, and none while some remain means the file ended early.
    fn count_sent(&mut self, n: u64) -> Result<(), SessionError> {
        if self.phase != Phase::Transfer {
            return Err(SessionError::OutOfOrder);
        }
        let remaining = self.end - self.offset;
        if n == 0 && remaining > 0 {
            return Err(SessionError::LocalFileChanged);
        }
        if n > remaining {
            return Err(SessionError::OutOfOrder);
        }
        self.offset += n;
        self.bytes_sent += n;
        Ok(())
    }

    /// The data connection was closed after [`Step::CloseData`].
    pub fn data_closed(&mut self) -> Result<(), SessionError> {
        self.check()?;
        if self.phase != Phase::Close {
            return Err(self.fail(SessionError::OutOfOrder));
        }
        self.phase = Phase::Final;
        self.awaiting = true;
        Ok(())
    }

    /// The stored error, if the session already failed: errors stick.
    fn check(&self) -> Result<(), SessionError> {
        self.failed.map_or(Ok(()), Err)
    }

    fn fail(&mut self, e: SessionError) -> SessionError {
        self.failed = Some(e);
        e
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.awaiting = false;
    }

    fn outcome(&self) -> Result<Outcome, SessionError> {
        let (decision, local) = self
            .decision
            .zip(self.local)
            .ok_or(SessionError::OutOfOrder)?;
        Ok(Outcome {
            decision,
            resumed_from: decision.start(local.len),
            bytes_sent: self.bytes_sent,
            verified: self.verified,
            local,
        })
    }

    fn write_command(&self, buf: &mut [u8]) -> Result<usize, SessionError> {
        let mut w = Cursor { buf, len: 0 };
        let path = Some(self.cfg.path);
        let key = match self.cfg.key_form {
            KeyForm::Site => "SITE KEY",
            KeyForm::Bare => "KEY",
        };
        let crc = self.local.map_or(KeyValue(0), |l| KeyValue(l.crc));
        let r = match self.phase {
            Phase::User => write!(w, "USER {}", self.cfg.user),
            Phase::Pass => write!(w, "PASS {}", self.cfg.password),
            Phase::Type => w.write_str("TYPE I"),
            Phase::Size => write!(w, "SIZE {}", self.cfg.path),
            Phase::KeyQuery => write!(w, "{key} {}", KeyCommand::Query { path }),
            Phase::KeyInfo => write!(w, "{key} {}", KeyCommand::Info { path }),
            Phase::KeyDeclare => write!(w, "{key} {}", KeyCommand::Declare { crc, path }),
            Phase::Dele => write!(w, "DELE {}", self.cfg.path),
            Phase::Pasv => w.write_str("PASV"),
            Phase::Rest => write!(w, "REST {}", self.offset),
            Phase::Stor => write!(w, "STOR {}", self.cfg.path),
            Phase::Quit => w.write_str("QUIT"),
            _ => return Err(SessionError::OutOfOrder),
        };
        r.and_then(|()| w.write_str("\r\n"))
            .map_err(|_| SessionError::CommandTooLong)?;
        Ok(w.len)
    }

    fn note_info_line(&mut self, text: &[u8]) {
        let Ok(text) = core::str::from_utf8(text) else {
            return;
        };
        // Unknown or malformed fields are skipped: the decision treats a missing field as
        // "cannot vouch", which is the safe side.
        if let Ok(InfoLine(field)) = InfoLine::parse(text) {
            match field {
                InfoField::Size(n) => self.info_fields.size = Some(n),
                InfoField::ReceivedCrc(v) => self.info_fields.received_crc = Some(v),
                InfoField::State(s) => self.info_fields.state = Some(s),
                InfoField::Declared(_) | InfoField::Updated(_) => {}
            }
        }
    }

    fn on_reply(&mut self, code: Code, text: &[u8]) -> Result<(), SessionError> {
        let Some(command) = self.phase.command() else {
            return Err(SessionError::UnexpectedReply { code });
        };
        if !self.awaiting && !matches!(self.phase, Phase::Transfer | Phase::Close) {
            return Err(SessionError::UnexpectedReply { code });
        }
        let class = code / 100;
        // A preliminary reply announces another one; only STOR's starts something.
        if class == 1 && self.phase != Phase::Stor {
            return Ok(());
        }
        let refused = SessionError::Refused { command, code };
        match self.phase {
            Phase::Greeting => match code {
                220 => self.enter(Phase::User),
                _ => return Err(refused),
            },
            Phase::User => match code {
                331 => self.enter(Phase::Pass),
                230 | 232 => self.enter(Phase::Type),
                332 | 500..=599 => return Err(SessionError::LoginRefused { code }),
                _ => return Err(refused),
            },
            Phase::Pass => match class {
                2 => self.enter(Phase::Type),
                3 | 5 => return Err(SessionError::LoginRefused { code }),
                _ => return Err(refused),
            },
            Phase::Type => match class {
                2 => self.enter(Phase::Size),
                _ => return Err(refused),
            },
            Phase::Size => {
                self.size = match code {
                    213 => RemoteSize::Present(
                        first_word(text)
                            .and_then(|w| w.parse().ok())
                            .ok_or(SessionError::BadReply { command })?,
                    ),
                    550 => RemoteSize::Absent,
                    c if not_implemented(c) => RemoteSize::Unknown,
                    _ => return Err(refused),
                };
                if matches!(self.size, RemoteSize::Present(_)) {
                    self.enter(Phase::KeyQuery);
                } else {
                    self.enter(Phase::Digest);
                }
            }
            Phase::KeyQuery => {
                self.key = match class {
                    2 => KeySupport::Answer(
                        first_word(text)
                            .and_then(|w| w.parse::<KeyAnswer>().ok())
                            .ok_or(SessionError::BadReply { command })?,
                    ),
                    _ if not_implemented(code) => KeySupport::Unsupported,
                    _ => return Err(refused),
                };
                self.enter(Phase::Digest);
            }
            Phase::KeyInfo => {
                self.info = match class {
                    2 => Info::Facts(self.info_fields),
                    // 501 too: a server that knows KEY but not INFO reads INFO as a bad CRC.
                    _ if not_implemented(code) || code == 501 => Info::Unsupported,
                    _ => return Err(refused),
                };
                let local = self.local.ok_or(SessionError::OutOfOrder)?;
                self.make_decision(local);
            }
            Phase::Dele => match code {
                200..=299 | 550 => self.after_dele(),
                _ => return Err(refused),
            },
            Phase::KeyDeclare => {
                match class {
                    2 => self.key_in_force = true,
                    _ if not_implemented(code) => {
                        self.key = KeySupport::Unsupported;
                        self.key_in_force = false;
                    }
                    _ => return Err(refused),
                }
                self.enter(Phase::Pasv);
            }
            Phase::Pasv => match code {
                227 => {
                    let addr = parse_227(text).map_err(SessionError::Pasv)?;
                    self.enter(Phase::Connect(addr));
                }
                _ => return Err(refused),
            },
            Phase::Rest => match code {
                350 => self.enter(Phase::Stor),
                _ => return Err(refused),
            },
            Phase::Stor => match class {
                1 => self.start_transfer()?,
                2 => return Err(SessionError::UnexpectedReply { code }),
                _ => return Err(refused),
            },
            Phase::Transfer | Phase::Close | Phase::Final => match class {
                2 if self.phase == Phase::Final => {
                    self.verified = self.key_in_force;
                    self.enter(Phase::Quit);
                }
                4 | 5 if self.key_in_force => {
                    return Err(SessionError::VerificationFailed { code })
                }
                4 | 5 => return Err(SessionError::TransferFailed { code }),
                _ => return Err(SessionError::UnexpectedReply { code }),
            },
            Phase::Quit => self.phase = Phase::Done,
            Phase::Digest | Phase::Announce | Phase::Connect(_) | Phase::Done => {
                return Err(SessionError::UnexpectedReply { code })
            }
        }
        Ok(())
    }

    fn make_decision(&mut self, local: LocalFile) {
        self.decision = Some(decide(&local, &self.remote(), self.cfg.trust_rest));
        self.phase = Phase::Announce;
        self.awaiting = false;
    }

    fn after_announce(&mut self, d: Decision) {
        match d {
            Decision::Fresh => self.enter(Phase::KeyDeclare),
            Decision::Reupload(_) => self.enter(Phase::Dele),
            Decision::Resume { .. } => {
                self.key_in_force = matches!(self.key, KeySupport::Answer(_));
                self.enter(Phase::Pasv);
            }
            Decision::Complete => {
                let verified = matches!(
                    self.info,
                    Info::Facts(InfoFacts {
                        state: Some(State::Verified),
                        ..
                    })
                );
                if verified {
                    self.verified = true;
                    self.enter(Phase::Quit);
                } else if matches!(self.key, KeySupport::Answer(_)) {
                    // Have the server check the whole file: an empty STOR at the end makes it
                    // compare the stored CRC with the declared one, as after any upload.
                    self.key_in_force = true;
                    self.enter(Phase::Pasv);
                } else {
                    self.enter(Phase::Quit);
                }
            }
        }
        if let Some(local) = self.local {
            self.offset = d.start(local.len);
            self.end = local.len;
        }
    }

    fn after_dele(&mut self) {
        if self.key == KeySupport::Unsupported {
            self.enter(Phase::Pasv);
        } else {
            self.enter(Phase::KeyDeclare);
        }
    }

    fn start_transfer(&mut self) -> Result<(), SessionError> {
        let local = self.local.ok_or(SessionError::OutOfOrder)?;
        self.running = match local.prefix {
            _ if self.offset == 0 => Some(Crc32::new()),
            Some(p) if p.len == self.offset => Some(Crc32::resume(p.crc, p.len)),
            _ => None,
        };
        self.enter(Phase::Transfer);
        Ok(())
    }
}

/// The first blank-separated word of a reply text, as UTF-8.
fn first_word(text: &[u8]) -> Option<&str> {
    let text = core::str::from_utf8(text).ok()?;
    text.split_ascii_whitespace().next()
}

/// `fmt::Write` into a byte slice; fails instead of growing.
struct Cursor<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
