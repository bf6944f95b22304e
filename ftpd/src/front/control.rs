//! Client control connections: the I/O around [`ControlSession`]. One task per connection runs
//! both directions; what they share is a [`Link`], which the session's data connections see too.
//! After `AUTH TLS` the front ends the control channel's TLS itself (the same certificate as
//! libunftp's) and goes on reading lines, so every rule here holds inside TLS as outside.

use super::limits::keepalive;
use super::line::{Direction, LineSplitter};
use super::passive::{PassiveTable, SessionId};
use super::proxy_header::Ends;
use super::reply::ReplyScanner;
use super::session::{ControlSession, LineAction, ReplyEvent, REPLY_TLS_READY};
use super::throttle::{Admission, LoginThrottle, Outcome, Verdict};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long the front waits for libunftp to accept a back-end connection.
pub(super) const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read size on the control channel; with `max_line` it bounds a connection's buffer.
const CONTROL_READ: usize = 4096;
/// How long a `PASV` waits for a public passive port to come free for its address.
const PORT_WAIT: Duration = Duration::from_secs(10);
/// How long a `PASS` waits for the result of the previous one on the same connection.
const PASS_WAIT: Duration = Duration::from_secs(15);
/// How long the front waits for the verdict on a `PASS` it passed on. Password checks queue in
/// a bounded pool: after a reconnect storm of first logins the wait can pass 15 s, and a box
/// turned away then (`421`) only comes back to the end of the queue. `login_timeout` still
/// ends a connection that never logs in.
const VERDICT_WAIT: Duration = Duration::from_secs(60);
/// How long a line the front must order against earlier replies (a transfer that gets `REST 0`,
/// a reply of the front's own) waits for them.
const REPLY_WAIT: Duration = Duration::from_secs(15);
/// Time allowed for the front's own last words to a client that is being disconnected.
pub(super) const FAREWELL: Duration = Duration::from_secs(2);

pub(super) const REPLY_THROTTLED: &[u8] =
    b"421 Too many failed logins from your address, try again later.\r\n";
const REPLY_LINE_TOO_LONG: &[u8] = b"500 Command line too long.\r\n";
const REPLY_LINE_TIMEOUT: &[u8] = b"421 Timed out waiting for the end of the command line.\r\n";
pub(super) const REPLY_UNAVAILABLE: &[u8] = b"421 Service not available, try again later.\r\n";
const REPLY_LOGIN_TIMEOUT: &[u8] = b"421 Login timed out.\r\n";
const REPLY_NO_IPV6: &[u8] = b"421 IPv6 clients are not supported, connect over IPv4.\r\n";
const REPLY_NO_PASSIVE_PORT: &[u8] = b"425 No passive port free for your address, try again.\r\n";

/// Settings one control connection needs.
#[derive(Debug, Clone)]
pub(super) struct ControlSettings {
    pub backend_addr: SocketAddr,
    pub max_line: usize,
    pub line_timeout: Duration,
    pub login_timeout: Duration,
    pub keepalive: Option<Duration>,
    pub passive_host: Option<Ipv4Addr>,
    pub throttle: Arc<LoginThrottle>,
    pub passive: Arc<PassiveTable<DataRoute>>,
    /// The control channel's TLS, when a certificate is configured.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// No login without TLS, no transfer without `PROT P` (`ftps_required`).
    pub tls_required: bool,
}

/// What a data connection is for, as its session's next transfer command says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DataUse {
    /// The command went to libunftp: which way the bytes go, and whether the connection is TLS.
    Transfer(Direction, bool),
    /// The front answered the command itself (`521`: TLS is required and data connections are
    /// not `PROT P`), so nothing will ever use the connection.
    Refused,
}

/// What a data connection needs of the session that asked for it.
#[derive(Debug, Clone)]
pub(super) struct DataRoute {
    pub link: Arc<Link>,
    /// Transfer commands the session had sent when the port was promised: the connection's
    /// transfer is the next one.
    pub after: u64,
}

/// What the two directions of a control connection and its data connections share.
#[derive(Debug)]
pub(super) struct Link {
    session: Mutex<ControlSession>,
    /// Signalled on every change of the session: replies seen, a transfer sent, the end.
    changed: Notify,
    /// The front's own replies, written to the client in order with the server's, and how
    /// many have been queued in all.
    outbox: Mutex<(Vec<u8>, u64)>,
    outbox_ready: Notify,
    /// The address reached a failed-login limit: close after this reply.
    blocked: AtomicBool,
    closed: AtomicBool,
    /// Final replies, and the front's own replies, written to the client so far.
    written: AtomicU64,
    answers_written: AtomicU64,
    /// The public passive port held for the `PASV`/`EPSV` on its way to libunftp.
    reserved: Mutex<Option<u16>>,
}

impl Link {
    fn new(tls_available: bool, tls_required: bool) -> Self {
        Link {
            session: Mutex::new(ControlSession::new(tls_available).requiring_tls(tls_required)),
            changed: Notify::new(),
            outbox: Mutex::new((Vec::new(), 0)),
            outbox_ready: Notify::new(),
            blocked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            written: AtomicU64::new(0),
            answers_written: AtomicU64::new(0),
            reserved: Mutex::new(None),
        }
    }

    fn session(&self) -> MutexGuard<'_, ControlSession> {
        // The session is plain data changed in short steps; a panic elsewhere cannot leave
        // it half-updated in a way that matters more than the connection it belongs to.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done` holds for the session, or `deadline` passes (`false`).
    async fn wait_until(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&ControlSession) -> bool,
    ) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.session()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// What the transfer after the first `after` ones uses its data connection for (which way
    /// it moves bytes and whether the connection is TLS, or nothing at all when the front refused
    /// it), once the client has sent its command; `None` if the control connection ends or
    /// nothing comes by `deadline`.
    pub(super) async fn transfer_after(&self, after: u64, deadline: Instant) -> Option<DataUse> {
        let closed = || self.closed.load(Ordering::SeqCst);
        let sent = self
            .wait_until(deadline, |s| s.transfers() > after || closed())
            .await;
        let s = self.session();
        if !sent || closed() {
            return None;
        }
        if s.transfer_refused() {
            return Some(DataUse::Refused);
        }
        s.direction().map(|d| DataUse::Transfer(d, s.data_tls()))
    }

    /// Whether TLS is required (`ftps_required`): transfers without `PROT P` are refused.
    pub(super) fn tls_required(&self) -> bool {
        self.session().tls_required()
    }

    /// Whether data connections are TLS right now (`PROT P`).
    pub(super) fn data_tls(&self) -> bool {
        self.session().data_tls()
    }

    /// Every reply so far, the server's and the front's own, has been written to the client.
    fn all_written(&self, s: &ControlSession) -> bool {
        s.quiet()
            && self.written.load(Ordering::SeqCst) >= s.replied()
            && self.answers_written.load(Ordering::SeqCst) >= self.outbox().1
    }

    fn end(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Queues one of the front's own replies behind every reply already seen.
    fn outbox(&self) -> MutexGuard<'_, (Vec<u8>, u64)> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn answer(&self, reply: &[u8]) {
        let mut outbox = self.outbox();
        outbox.0.extend_from_slice(reply);
        outbox.1 += 1;
        drop(outbox);
        self.outbox_ready.notify_one();
    }

    /// The queued replies, and how many have been queued in all.
    fn take_outbox(&self) -> (Vec<u8>, u64) {
        let mut outbox = self.outbox();
        (std::mem::take(&mut outbox.0), outbox.1)
    }
}

/// Why a control connection ended; logged, never shown to the client as such.
#[derive(Debug)]
enum Ending {
    /// The server closed, or the client closed and the server then finished.
    Closed,
    LineTooLong,
    LineTimeout,
    LoginTimeout,
    /// The client asked for TLS and every earlier reply has been written: start it.
    StartTls,
    Throttled,
    /// A login attempt could not go ahead in time: an earlier PASS result never came.
    PassStalled,
    Io(io::Error),
}

/// Makes urgent (OOB) bytes part of the normal stream, as RFC 6093 recommends: Python's ftplib
/// sends the newline of `ABOR` as urgent data, which would otherwise be dropped from the line.
fn oob_inline(stream: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_out_of_band_inline(true) {
        tracing::debug!(error = %e, "could not set SO_OOBINLINE");
    }
}

/// Acknowledges the back-end's bytes at once instead of after the delayed-ACK timer. libunftp
/// leaves Nagle's algorithm on for its control sockets, so a reply that follows one the front
/// has not acknowledged yet (`150` right after the `350` of the `REST 0` the front inserts, or
/// `226` soon after `150`) waited up to 40 ms for that ACK. The switch is not permanent, hence
/// once per read; it is advice, and a failure changes nothing.
fn ack_now(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

/// Reads bytes that are already queued but that tokio will not report: with `SO_OOBINLINE` a
/// read stops at the urgent mark and no new readiness event follows for the urgent byte itself.
/// An empty buffer is end of stream; `None` means nothing is queued.
fn read_past_urgent_mark(stream: &TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let sock = socket2::SockRef::from(stream);
    let mut buf = [0u8; CONTROL_READ];
    // The socket is non-blocking (tokio set it up), so this returns at once.
    let mut reader: &socket2::Socket = &sock;
    let n = reader.read(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// Waits for bytes and returns them (empty at end of stream). No buffer exists while waiting,
/// which is nearly all of an idle connection's life: the read goes to the stack and only the
/// bytes received are copied to the heap. The wait uses the socket's own reader slot rather
/// than `readable()`, whose waiter node would make every idle connection's future larger; each
/// socket has one reading task, which is what that slot requires.
async fn read_some(stream: &TcpStream) -> io::Result<Vec<u8>> {
    loop {
        std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        let mut buf = [0u8; CONTROL_READ];
        match stream.try_read(&mut buf) {
            Ok(n) => return Ok(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Opens a back-end connection to libunftp (control, or a session's passive listener).
pub(super) async fn connect_backend(backend: SocketAddr) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "back-end connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends the front's last reply and closes gently: unread client input would make the close a
/// reset, which can destroy the reply before the client reads it. Bounded in time and memory.
pub(super) async fn farewell(client: &mut TcpStream, message: &[u8]) {
    let _ = tokio::time::timeout(FAREWELL, async {
        client.write_all(message).await?;
        client.shutdown().await?;
        let mut sink = [0u8; 4096];
        while client.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    })
    .await;
}

/// A client connection's reading side: plain TCP, or TLS after `AUTH TLS`.
trait ClientRead {
    /// Waits for bytes and returns them; empty at end of stream.
    async fn read_chunk(&mut self) -> io::Result<Vec<u8>>;

    /// Bytes queued behind an urgent mark that no readiness event will report (plain TCP).
    fn past_urgent_mark(&self) -> Option<Vec<u8>> {
        None
    }
}

impl ClientRead for ReadHalf<'_> {
    async fn read_chunk(&mut self) -> io::Result<Vec<u8>> {
        read_some(self.as_ref()).await
    }

    fn past_urgent_mark(&self) -> Option<Vec<u8>> {
        read_past_urgent_mark(self.as_ref())
    }
}

/// The reading half of a TLS control channel.
struct TlsRead<R>(R);

impl<R: tokio::io::AsyncRead + Unpin> ClientRead for TlsRead<R> {
    async fn read_chunk(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = [0u8; CONTROL_READ];
        let n = self.0.read(&mut buf).await?;
        Ok(buf[..n].to_vec())
    }
}

/// Who the connection is, for the parts that need it.
#[derive(Debug, Clone, Copy)]
struct Ids {
    peer: SocketAddr,
    public_ip: Ipv4Addr,
    id: SessionId,
}

/// Serves one client control connection until either side closes; `ends` are the client's
/// address and the one it connected to (from the PROXY header behind a balancer).
pub(super) async fn control_connection(
    mut client: TcpStream,
    ends: Ends,
    settings: ControlSettings,
) {
    let public_ip = match (settings.passive_host, ends.local.ip()) {
        (Some(ip), _) => ip,
        (None, IpAddr::V4(ip)) if ends.peer.is_ipv4() => ip,
        _ => {
            // PASV carries only IPv4.
            tracing::info!("refusing IPv6 control connection");
            Box::pin(farewell(&mut client, REPLY_NO_IPV6)).await;
            return;
        }
    };
    if settings.throttle.is_blocked(ends.peer.ip()) {
        tracing::info!(client = %ends.peer, "refusing connection: too many failed logins");
        Box::pin(farewell(&mut client, REPLY_THROTTLED)).await;
        return;
    }
    let _ = client.set_nodelay(true);
    keepalive(&client, settings.keepalive);
    oob_inline(&client);
    let mut server = match Box::pin(connect_backend(settings.backend_addr)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(backend = %settings.backend_addr, error = %e, "cannot reach the FTP back-end");
            Box::pin(farewell(&mut client, REPLY_UNAVAILABLE)).await;
            return;
        }
    };
    // libunftp logs this session under the back-end connection's local address: name both.
    let via = server.local_addr().ok();
    tracing::info!(client = %ends.peer, ?via, "control connection opened");

    let link = Arc::new(Link::new(settings.tls.is_some(), settings.tls_required));
    let ids = Ids {
        peer: ends.peer,
        public_ip,
        id: settings.passive.session_id(),
    };
    let mut scanner = ReplyScanner::new();
    // Boxed: its timer is not part of every idle connection's future.
    let mut login = Box::pin(login_deadline(&link, settings.login_timeout));
    let ending = {
        let (mut cr, mut cw) = client.split();
        let (sr, mut sw) = server.split();
        let loops = serve_lines(
            &mut cr,
            &mut cw,
            &sr,
            &mut sw,
            &mut scanner,
            &link,
            &settings,
            ids,
        );
        tokio::select! {
            e = loops => e,
            l = &mut login => l,
        }
    };
    match ending {
        Ending::StartTls => {
            // Boxed: a TLS session's state is no part of a plain connection's future.
            Box::pin(serve_tls(
                client,
                &mut server,
                &mut scanner,
                &link,
                &settings,
                ids,
                login,
            ))
            .await;
            release(&link, &settings, ids);
        }
        ending => {
            release(&link, &settings, ids);
            drop(server);
            match last_words(&ending, &scanner) {
                Some(words) => Box::pin(farewell(&mut client, &words)).await,
                None => {
                    let _ = client.shutdown().await;
                }
            }
        }
    }
}

/// What an ended session still holds: its passive port and its place in the throttle (an
/// attempt whose result never came).
fn release(link: &Link, settings: &ControlSettings, ids: Ids) {
    link.end();
    settings.passive.withdraw(ids.id);
    let in_flight = link.session().take_pass_in_flight();
    if let Some(user) = in_flight {
        settings
            .throttle
            .settle(ids.peer.ip(), &user, Outcome::Unknown);
    }
}

/// Logs why a connection ends and returns the front's last reply for it, if any.
fn last_words(ending: &Ending, scanner: &ReplyScanner) -> Option<Vec<u8>> {
    let message = match ending {
        Ending::LineTooLong => Some(REPLY_LINE_TOO_LONG),
        Ending::LineTimeout => Some(REPLY_LINE_TIMEOUT),
        Ending::LoginTimeout => Some(REPLY_LOGIN_TIMEOUT),
        Ending::Throttled => Some(REPLY_THROTTLED),
        Ending::PassStalled => Some(REPLY_UNAVAILABLE),
        Ending::Closed | Ending::Io(_) | Ending::StartTls => None,
    };
    match ending {
        Ending::Closed => tracing::info!("control connection closed"),
        Ending::Io(e) => tracing::info!(error = %e, "control connection ended"),
        other => tracing::warn!(reason = ?other, "closing control connection"),
    }
    let message = message?;
    let mut words = Vec::with_capacity(message.len() + 2);
    if !scanner.at_line_start() {
        words.extend_from_slice(b"\r\n");
    }
    words.extend_from_slice(message);
    Some(words)
}

/// Answers `AUTH TLS`, performs the handshake and serves the rest of the session inside TLS.
async fn serve_tls(
    mut client: TcpStream,
    server: &mut TcpStream,
    scanner: &mut ReplyScanner,
    link: &Arc<Link>,
    settings: &ControlSettings,
    ids: Ids,
    mut login: std::pin::Pin<Box<impl std::future::Future<Output = Ending>>>,
) {
    let Some(acceptor) = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from) else {
        return;
    };
    if client.write_all(REPLY_TLS_READY).await.is_err() {
        return;
    }
    let handshake = tokio::time::timeout(settings.line_timeout, acceptor.accept(client)).await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "TLS handshake on the control channel failed");
            return;
        }
        Err(_) => {
            tracing::info!("TLS handshake on the control channel timed out");
            return;
        }
    };
    link.session().tls_started();
    tracing::info!("control channel is TLS");
    let (cr, mut cw) = tokio::io::split(tls);
    let mut cr = TlsRead(cr);
    let ending = {
        let (sr, mut sw) = server.split();
        let loops = serve_lines(&mut cr, &mut cw, &sr, &mut sw, scanner, link, settings, ids);
        tokio::select! {
            e = loops => e,
            l = &mut login => l,
        }
    };
    let words = last_words(&ending, scanner);
    let _ = tokio::time::timeout(FAREWELL, async {
        if let Some(words) = words {
            cw.write_all(&words).await?;
        }
        cw.shutdown().await
    })
    .await;
}

/// Runs both directions of a control connection until one of them ends it.
#[allow(clippy::too_many_arguments)]
async fn serve_lines<R, W>(
    cr: &mut R,
    cw: &mut W,
    sr: &ReadHalf<'_>,
    sw: &mut tokio::net::tcp::WriteHalf<'_>,
    scanner: &mut ReplyScanner,
    link: &Arc<Link>,
    settings: &ControlSettings,
    ids: Ids,
) -> Ending
where
    R: ClientRead,
    W: AsyncWrite + Unpin,
{
    let up = client_to_server(cr, sw, link, settings, ids);
    let down = server_to_client(sr.as_ref(), cw, scanner, link, settings, ids);
    tokio::pin!(up, down);
    tokio::select! {
        u = &mut up => match u {
            // The client finished sending: let the server answer (e.g. QUIT) and close.
            None => down.await,
            // Refused by the throttle: the replies to commands already sent (the USER
            // pipelined before the PASS) reach the client before the front's 421.
            // Boxed: a rare wait must not make every idle connection's future larger.
            Some(Ending::Throttled) => {
                let _ = Box::pin(tokio::time::timeout(FAREWELL, async {
                    tokio::select! {
                        _ = &mut down => {}
                        _ = link.wait_until(Instant::now() + FAREWELL, ControlSession::quiet) => {}
                    }
                }))
                .await;
                Ending::Throttled
            }
            Some(ending) => ending,
        },
        d = &mut down => d,
    }
}

/// Ends a connection that has not logged in within `limit`.
async fn login_deadline(link: &Link, limit: Duration) -> Ending {
    tokio::time::sleep(limit).await;
    if link.session().logged_in() {
        std::future::pending::<()>().await;
    }
    Ending::LoginTimeout
}

/// Client to server: splits lines and lets the session decide on each. Returns `None` when the
/// client closed its side normally.
async fn client_to_server<R, W>(
    client: &mut R,
    server: &mut W,
    link: &Link,
    settings: &ControlSettings,
    Ids { peer, id, .. }: Ids,
) -> Option<Ending>
where
    R: ClientRead,
    W: AsyncWrite + Unpin,
{
    let mut splitter = LineSplitter::new(settings.max_line);
    // When the current unfinished line began: the whole line must arrive within `line_timeout`.
    let mut partial_since: Option<Instant> = None;
    let mut queued: Option<Vec<u8>> = None;
    loop {
        let read = match (queued.take(), partial_since) {
            (Some(data), _) => Ok(data),
            (None, Some(since)) => {
                // Boxed: the timer exists only while a line is unfinished.
                let deadline = since + settings.line_timeout;
                match Box::pin(tokio::time::timeout_at(deadline, client.read_chunk())).await {
                    Ok(r) => r,
                    Err(_) => return Some(Ending::LineTimeout),
                }
            }
            (None, None) => client.read_chunk().await,
        };
        let chunk = match read {
            Ok(chunk) if chunk.is_empty() => {
                let _ = server.shutdown().await;
                return None;
            }
            Ok(chunk) => chunk,
            Err(e) => return Some(Ending::Io(e)),
        };
        splitter.push(&chunk);
        let mut out: Vec<u8> = Vec::new();
        loop {
            let line = match splitter.next_line() {
                Ok(Some(line)) => {
                    partial_since = None;
                    line
                }
                Ok(None) => break,
                Err(_) => {
                    // Whole lines before the long one still go through, in order.
                    let _ = server.write_all(&out).await;
                    return Some(Ending::LineTooLong);
                }
            };
            let action = link.session().on_line(&line);
            if !matches!(action, LineAction::Send(_)) {
                // Whatever comes next waits for something: what came before goes first.
                if let Err(e) = server.write_all(&out).await {
                    return Some(Ending::Io(e));
                }
                out.clear();
            }
            match action {
                LineAction::Send(bytes) => out.extend_from_slice(&bytes),
                LineAction::Answer(reply) => {
                    let deadline = Instant::now() + REPLY_WAIT;
                    let _ = Box::pin(link.wait_until(deadline, ControlSession::quiet)).await;
                    link.answer(reply);
                }
                LineAction::StartTls => {
                    // TLS starts right after the 234: every reply before it must be out, and
                    // nothing the client sent after AUTH may be read as plain text.
                    let deadline = Instant::now() + REPLY_WAIT;
                    let written = |s: &ControlSession| link.all_written(s);
                    if !Box::pin(link.wait_until(deadline, written)).await {
                        return Some(Ending::PassStalled);
                    }
                    if splitter.has_partial() || splitter.next_line() != Ok(None) {
                        tracing::warn!("bytes after AUTH TLS before the handshake; closing");
                        return Some(Ending::Closed);
                    }
                    return Some(Ending::StartTls);
                }
                LineAction::Passive(bytes) => {
                    let deadline = Instant::now() + PORT_WAIT;
                    match Box::pin(settings.passive.reserve(id, peer.ip(), deadline)).await {
                        Some(port) => {
                            *link.reserved.lock().unwrap_or_else(|p| p.into_inner()) = Some(port);
                            out.extend_from_slice(&bytes);
                        }
                        None => {
                            tracing::warn!("no passive port came free for this address");
                            link.session().unsent();
                            let deadline = Instant::now() + REPLY_WAIT;
                            let _ =
                                Box::pin(link.wait_until(deadline, ControlSession::quiet)).await;
                            link.answer(REPLY_NO_PASSIVE_PORT);
                        }
                    }
                }
                LineAction::ResetThenSend => {
                    let deadline = Instant::now() + REPLY_WAIT;
                    let quiet = Box::pin(link.wait_until(deadline, ControlSession::quiet)).await;
                    if !quiet {
                        tracing::warn!(
                            "earlier replies missing; transfer sent without resetting the offset"
                        );
                    }
                    out.extend_from_slice(link.session().reset_offset(quiet));
                    out.extend_from_slice(super::line::without_telnet(&line));
                }
                LineAction::Login { user } => {
                    if let Some(ending) =
                        Box::pin(login(server, link, settings, peer, user, &line)).await
                    {
                        return Some(ending);
                    }
                }
            }
            link.changed.notify_waiters();
        }
        if !out.is_empty() {
            if let Err(e) = server.write_all(&out).await {
                return Some(Ending::Io(e));
            }
        }
        partial_since = match splitter.has_partial() {
            true => Some(partial_since.unwrap_or_else(Instant::now)),
            false => None,
        };
        if splitter.has_partial() {
            queued = client.past_urgent_mark();
        }
    }
}

/// One login attempt: one at a time per connection, admitted by the throttle, and nothing
/// behind it goes through before its result (libunftp answers commands pipelined after a PASS
/// before the PASS itself, and such a 530 must not count as a failed login).
async fn login<W>(
    server: &mut W,
    link: &Link,
    settings: &ControlSettings,
    peer: SocketAddr,
    user: String,
    line: &[u8],
) -> Option<Ending>
where
    W: AsyncWrite + Unpin,
{
    let no_pass = |s: &ControlSession| !s.pass_pending();
    if !link.wait_until(Instant::now() + PASS_WAIT, no_pass).await {
        return Some(Ending::PassStalled);
    }
    let deadline = Instant::now() + PASS_WAIT;
    loop {
        let changed = settings.throttle.changed().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match settings.throttle.admit(peer.ip(), &user) {
            Admission::Go => break,
            Admission::Blocked => return Some(Ending::Throttled),
            Admission::Wait => {
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return Some(Ending::PassStalled);
                }
            }
        }
    }
    link.session().pass_sent(user);
    if let Err(e) = server.write_all(super::line::without_telnet(line)).await {
        return Some(Ending::Io(e));
    }
    if !link
        .wait_until(Instant::now() + VERDICT_WAIT, no_pass)
        .await
    {
        return Some(Ending::PassStalled);
    }
    None
}

/// Server to client: forwards replies, the front's own ones in order among them, acting on
/// login results and passive replies (which get the front's own port).
async fn server_to_client<W>(
    server: &TcpStream,
    client: &mut W,
    scanner: &mut ReplyScanner,
    link: &Arc<Link>,
    settings: &ControlSettings,
    Ids {
        peer,
        public_ip,
        id,
    }: Ids,
) -> Ending
where
    W: AsyncWrite + Unpin,
{
    loop {
        let chunk = tokio::select! {
            biased;
            _ = link.outbox_ready.notified() => {
                let (words, queued) = link.take_outbox();
                if let Err(e) = client.write_all(&words).await {
                    return Ending::Io(e);
                }
                let _ = client.flush().await;
                link.answers_written.store(queued, Ordering::SeqCst);
                link.changed.notify_waiters();
                continue;
            }
            r = read_some(server) => match r {
                Ok(chunk) if chunk.is_empty() => return Ending::Closed,
                Ok(chunk) => chunk,
                Err(e) => return Ending::Io(e),
            },
        };
        ack_now(server);
        let mut out = Vec::with_capacity(chunk.len());
        let drop = link.session().swallow();
        scanner.filter(
            &chunk,
            drop,
            &mut out,
            |code| on_reply(code, link, settings, peer),
            |line| Some(passive_reply(line, link, settings, peer, public_ip, id)),
        );
        link.session().replies_seen(scanner.finals());
        link.changed.notify_waiters();
        if let Err(e) = client.write_all(&out).await {
            return Ending::Io(e);
        }
        // TLS buffers what it writes; a reply must leave now.
        if let Err(e) = client.flush().await {
            return Ending::Io(e);
        }
        link.written.store(scanner.finals(), Ordering::SeqCst);
        link.changed.notify_waiters();
        if link.blocked.load(Ordering::SeqCst) {
            return Ending::Throttled;
        }
    }
}

/// Acts on one final reply code; always goes on scanning.
fn on_reply(code: u16, link: &Link, settings: &ControlSettings, peer: SocketAddr) -> bool {
    let event = link.session().on_reply(code);
    let verdict = match event {
        ReplyEvent::Nothing => return true,
        ReplyEvent::LoggedIn { user } => {
            tracing::info!(client = %peer, %user, "login succeeded");
            settings.throttle.settle(peer.ip(), &user, Outcome::Success)
        }
        ReplyEvent::LoginVoid { user } => {
            settings.throttle.settle(peer.ip(), &user, Outcome::Unknown)
        }
        ReplyEvent::LoginFailed { user } => {
            let verdict = settings.throttle.settle(peer.ip(), &user, Outcome::Failure);
            tracing::info!(client = %peer, %user, ?verdict, "login failed");
            verdict
        }
    };
    if verdict != Verdict::Open {
        tracing::warn!(
            client = %peer,
            ?verdict,
            "too many failed logins; refusing further attempts"
        );
        link.blocked.store(true, Ordering::SeqCst);
    }
    true
}

/// The reply the client gets for libunftp's `227`/`229`: the same reply naming one of the
/// front's public passive ports, promised to this session, or `425` when none is free.
fn passive_reply(
    line: &[u8],
    link: &Arc<Link>,
    settings: &ControlSettings,
    peer: SocketAddr,
    public_ip: Ipv4Addr,
    id: SessionId,
) -> Vec<u8> {
    let Some(backend_port) = passive_port(line) else {
        tracing::warn!("unreadable passive reply from the back-end");
        return REPLY_NO_PASSIVE_PORT.to_vec();
    };
    let route = DataRoute {
        link: link.clone(),
        after: link.session().transfers(),
    };
    let backend = SocketAddr::new(settings.backend_addr.ip(), backend_port);
    let reserved = link
        .reserved
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let promised = reserved.filter(|port| {
        settings
            .passive
            .promise(id, peer.ip(), *port, backend, route)
    });
    let Some(port) = promised else {
        tracing::warn!("passive reply without a port held for it");
        return REPLY_NO_PASSIVE_PORT.to_vec();
    };
    if line.starts_with(b"229") {
        format!("229 Entering Extended Passive Mode (|||{port}|)\r\n").into_bytes()
    } else {
        let [a, b, c, d] = public_ip.octets();
        let (p1, p2) = (port >> 8, port & 0xFF);
        format!("227 Entering Passive Mode ({a},{b},{c},{d},{p1},{p2})\r\n").into_bytes()
    }
}

/// The port in a `227 ... (h1,h2,h3,h4,p1,p2)` or `229 ... (|||port|)` reply.
fn passive_port(line: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(line).ok()?;
    let inner = text.split_once('(')?.1.split_once(')')?.0;
    if text.starts_with("229") {
        return inner.trim_matches('|').parse().ok();
    }
    let fields: Vec<u16> = inner
        .split(',')
        .map(|f| f.trim().parse::<u16>().ok().filter(|v| *v < 256))
        .collect::<Option<_>>()?;
    match fields[..] {
        [_, _, _, _, p1, p2] => Some(p1 << 8 | p2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_ports_are_read_from_both_reply_forms() {
        assert_eq!(
            passive_port(b"227 Entering Passive Mode (127,0,0,1,195,80)\r\n"),
            Some(195 * 256 + 80)
        );
        assert_eq!(
            passive_port(b"229 Entering Extended Passive Mode (|||40000|)\r\n"),
            Some(40000)
        );
        for bad in [
            &b"227 Entering Passive Mode\r\n"[..],
            b"227 (1,2,3,4,5)\r\n",
            b"227 (1,2,3,4,5,256)\r\n",
            b"229 (|||x|)\r\n",
            b"227 (\xff)\r\n",
        ] {
            assert_eq!(passive_port(bad), None);
        }
    }

    /// What an idle control connection costs besides its sockets is mostly the size of this
    /// future: buffers, timers and rarely used waits are not part of it.
    #[tokio::test]
    async fn control_connection_future_is_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let settings = ControlSettings {
            backend_addr: addr,
            max_line: 4096,
            line_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(60),
            keepalive: None,
            passive_host: None,
            throttle: Arc::new(LoginThrottle::new(5, 50, Duration::from_secs(300))),
            passive: PassiveTable::new(vec![]),
            tls: None,
            tls_required: false,
        };
        let ends = Ends::of(&stream, peer).expect("ends");
        let fut = control_connection(stream, ends, settings);
        let size = std::mem::size_of_val(&fut);
        println!("control connection future: {size} bytes");
        // 1,880 bytes with rustc 1.95: 1,296 for the relay before the front read lines inside
        // TLS, gave its own replies and had a login deadline, 1,848 before the connection's ends
        // could come from a PROXY header. An unboxed timer or TLS state would add hundreds more.
        assert!(size <= 1900, "control connection future is {size} bytes");
    }
}
