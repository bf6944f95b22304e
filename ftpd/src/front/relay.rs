//! The per-connection work: control connections (line processing) and data connections (splice).

use super::line::{classify, rewrite_key, LineKind, LineSplitter};
use super::proxy_header::{canonical, encode_v1};
use super::reply::ReplyScanner;
use super::throttle::{Admission, LoginThrottle, Outcome};
use crate::handoff::Handoff;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long the front waits for libunftp to accept a back-end connection.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read size on the control channel; with `max_line` it bounds a connection's buffer.
const CONTROL_READ: usize = 4096;
/// How long a `PASS` waits for the result of the previous one on the same connection.
const PASS_WAIT: Duration = Duration::from_secs(15);
/// How long a transfer command waits for the replies to the commands before it, so that the
/// reply to the `REST 0` sent ahead of it is known to be the next one.
const REPLY_WAIT: Duration = Duration::from_secs(15);
/// Sent ahead of a transfer that does not follow a `REST`: libunftp keeps a `REST` offset until
/// a transfer succeeds, so a refused one would otherwise leave it for the next transfer.
const REST_ZERO: &[u8] = b"REST 0\r\n";
/// Time allowed for the front's own last words to a client that is being disconnected.
const FAREWELL: Duration = Duration::from_secs(2);

const REPLY_THROTTLED: &[u8] =
    b"421 Too many failed logins from your address, try again later.\r\n";
const REPLY_LINE_TOO_LONG: &[u8] = b"500 Command line too long.\r\n";
const REPLY_LINE_TIMEOUT: &[u8] = b"421 Timed out waiting for the end of the command line.\r\n";
const REPLY_UNAVAILABLE: &[u8] = b"421 Service not available, try again later.\r\n";
const REPLY_NO_IPV6: &[u8] = b"421 IPv6 clients are not supported, connect over IPv4.\r\n";

/// Settings one control connection needs.
#[derive(Debug, Clone)]
pub(super) struct ControlSettings {
    pub backend_addr: SocketAddr,
    pub max_line: usize,
    pub line_timeout: Duration,
    pub throttle: Arc<LoginThrottle>,
}

/// Why a control connection ended; logged, never shown to the client as such.
#[derive(Debug)]
enum Ending {
    /// The server closed, or the client closed and the server then finished.
    Closed,
    LineTooLong,
    LineTimeout,
    Throttled,
    /// A login attempt could not go ahead in time: an earlier PASS result never came.
    PassStalled,
    Io(io::Error),
}

/// State the two directions of one control connection share.
#[derive(Debug, Default)]
struct Shared {
    /// PASS lines forwarded whose 230/530 has not been seen yet. Only those two codes settle a
    /// PASS: a stray reply can then never let a second guess overtake the first one's result.
    pending_pass: AtomicU32,
    /// An AUTH line was forwarded and its reply has not been seen yet.
    pending_auth: AtomicBool,
    /// The server accepted AUTH: from now on the channel is TLS and is relayed as raw bytes.
    raw: AtomicBool,
    /// This connection's address reached the failed-login limit: close after this reply.
    blocked: AtomicBool,
    /// Signalled whenever a PASS result has been seen.
    pass_done: Notify,
    /// Final replies the server owes: the greeting plus one per line sent to it.
    expected: AtomicU64,
    /// Final replies seen so far.
    replied: AtomicU64,
    /// 1 + the number of the final reply to leave out (the answer to an injected `REST 0`);
    /// 0 when there is none.
    swallow: AtomicU64,
    /// Signalled whenever final replies have been seen.
    reply_seen: Notify,
}

impl Shared {
    fn new() -> Self {
        Shared {
            expected: AtomicU64::new(1),
            ..Shared::default()
        }
    }
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
/// than `readable()`, whose waiter node would make every idle connection's future 160 bytes
/// larger; each socket has one reading task, which is what that slot requires.
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

/// Opens the back-end connection and announces the real client with a PROXY header.
async fn connect_backend(
    backend: SocketAddr,
    client: SocketAddr,
    public: SocketAddr,
) -> io::Result<TcpStream> {
    let header =
        encode_v1(client, public).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut stream = tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "back-end connect timed out"))??;
    stream.set_nodelay(true)?;
    stream.write_all(header.as_bytes()).await?;
    Ok(stream)
}

/// Serves one client control connection until either side closes.
pub(super) async fn control_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    settings: ControlSettings,
) {
    let peer = canonical(peer);
    let local = match client.local_addr() {
        Ok(a) => canonical(a),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read local address of control connection");
            return;
        }
    };
    if peer.is_ipv6() || local.is_ipv6() {
        // libunftp parses only TCP4 PROXY headers and PASV carries only IPv4.
        tracing::info!("refusing IPv6 control connection");
        Box::pin(farewell(&mut client, REPLY_NO_IPV6)).await;
        return;
    }
    if settings.throttle.is_blocked(peer.ip()) {
        tracing::info!("refusing connection: too many failed logins");
        Box::pin(farewell(&mut client, REPLY_THROTTLED)).await;
        return;
    }
    let _ = client.set_nodelay(true);
    oob_inline(&client);
    let mut server = match Box::pin(connect_backend(settings.backend_addr, peer, local)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(backend = %settings.backend_addr, error = %e, "cannot reach the FTP back-end");
            Box::pin(farewell(&mut client, REPLY_UNAVAILABLE)).await;
            return;
        }
    };
    tracing::info!("control connection opened");

    let shared = Shared::new();
    let mut scanner = ReplyScanner::new();
    let (mut cr, mut cw) = client.split();
    let (sr, mut sw) = server.split();
    let ending = {
        let up = client_to_server(&mut cr, &mut sw, &shared, &settings, peer);
        let down = server_to_client(sr.as_ref(), &mut cw, &mut scanner, &shared, &settings, peer);
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
                            _ = wait_for_replies(&shared) => {}
                        }
                    }))
                    .await;
                    Ending::Throttled
                }
                Some(ending) => ending,
            },
            d = &mut down => d,
        }
    };
    let message = match &ending {
        Ending::LineTooLong => Some(REPLY_LINE_TOO_LONG),
        Ending::LineTimeout => Some(REPLY_LINE_TIMEOUT),
        Ending::Throttled => Some(REPLY_THROTTLED),
        Ending::PassStalled => Some(REPLY_UNAVAILABLE),
        Ending::Closed | Ending::Io(_) => None,
    };
    match &ending {
        Ending::Closed => tracing::info!("control connection closed"),
        Ending::Io(e) => tracing::info!(error = %e, "control connection ended"),
        other => tracing::warn!(reason = ?other, "closing control connection"),
    }
    drop(server);
    // Attempts whose result never came free their place in the throttle.
    for _ in 0..shared.pending_pass.swap(0, Ordering::SeqCst) {
        settings.throttle.settle(peer.ip(), Outcome::Unknown);
    }
    match message {
        Some(message) if !shared.raw.load(Ordering::SeqCst) => {
            let mut words = Vec::with_capacity(message.len() + 2);
            if !scanner.at_line_start() {
                words.extend_from_slice(b"\r\n");
            }
            words.extend_from_slice(message);
            Box::pin(farewell(&mut client, &words)).await;
        }
        _ => {
            let _ = client.shutdown().await;
        }
    }
}

/// Sends the front's last reply and closes gently: unread client input would make the close a
/// reset, which can destroy the reply before the client reads it. Bounded in time and memory.
async fn farewell(client: &mut TcpStream, message: &[u8]) {
    let _ = tokio::time::timeout(FAREWELL, async {
        client.write_all(message).await?;
        client.shutdown().await?;
        let mut sink = [0u8; 4096];
        while client.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    })
    .await;
}

/// Client to server: splits lines, rewrites `KEY`, watches `PASS` and `AUTH`. Returns `None`
/// when the client closed its side normally.
async fn client_to_server<W>(
    client: &mut ReadHalf<'_>,
    server: &mut W,
    shared: &Shared,
    settings: &ControlSettings,
    peer: SocketAddr,
) -> Option<Ending>
where
    W: AsyncWrite + Unpin,
{
    let mut splitter = LineSplitter::new(settings.max_line);
    // When the current unfinished line began: the whole line must arrive within `line_timeout`.
    let mut partial_since: Option<Instant> = None;
    let mut queued: Option<Vec<u8>> = None;
    // The previous command was a `REST` (possibly followed by data-connection set-up).
    let mut rest_armed = false;
    loop {
        let read = match (queued.take(), partial_since) {
            (Some(data), _) => Ok(data),
            (None, Some(since)) => {
                // Boxed: the timer exists only while a line is unfinished.
                let deadline = since + settings.line_timeout;
                match Box::pin(tokio::time::timeout_at(
                    deadline,
                    read_some(client.as_ref()),
                ))
                .await
                {
                    Ok(r) => r,
                    Err(_) => return Some(Ending::LineTimeout),
                }
            }
            (None, None) => read_some(client.as_ref()).await,
        };
        let chunk = match read {
            Ok(chunk) if chunk.is_empty() => {
                let _ = server.shutdown().await;
                return None;
            }
            Ok(chunk) => chunk,
            Err(e) => return Some(Ending::Io(e)),
        };
        let data = &chunk[..];
        // `raw` is set before the 234 reaches the client, so TLS bytes are never split as lines.
        if shared.raw.load(Ordering::SeqCst) {
            let mut out = splitter.take_rest();
            out.extend_from_slice(data);
            if let Err(e) = server.write_all(&out).await {
                return Some(Ending::Io(e));
            }
            partial_since = None;
            continue;
        }
        splitter.push(data);
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
            let kind = classify(&line);
            let armed = rest_armed;
            rest_armed = kind == LineKind::Rest || (kind == LineKind::Setup && armed);
            if kind == LineKind::Transfer && !armed {
                if let Err(e) = server.write_all(&out).await {
                    return Some(Ending::Io(e));
                }
                out.clear();
                reset_rest_offset(shared, &mut out).await;
            }
            shared.expected.fetch_add(1, Ordering::SeqCst);
            match kind {
                LineKind::Key => {
                    if let Some(rewritten) = rewrite_key(&line) {
                        tracing::debug!("bare KEY rewritten to SITE KEY");
                        out.extend_from_slice(&rewritten);
                    }
                }
                LineKind::Pass => {
                    if shared.pending_pass.load(Ordering::SeqCst) > 0 {
                        // One login attempt at a time, so pipelined guesses are all counted
                        // before the next one is let through.
                        if let Err(e) = server.write_all(&out).await {
                            return Some(Ending::Io(e));
                        }
                        out.clear();
                        if !Box::pin(wait_for_pass_result(shared)).await {
                            return Some(Ending::PassStalled);
                        }
                    }
                    if let Err(e) = server.write_all(&out).await {
                        return Some(Ending::Io(e));
                    }
                    out.clear();
                    if let Some(ending) = Box::pin(admit_login(&settings.throttle, peer)).await {
                        // This PASS is never sent, so no reply to it is awaited.
                        shared.expected.fetch_sub(1, Ordering::SeqCst);
                        return Some(ending);
                    }
                    shared.pending_pass.fetch_add(1, Ordering::SeqCst);
                    out.extend_from_slice(&line);
                    // Nothing behind a PASS goes through before its result: libunftp answers
                    // commands pipelined after a PASS (530, not logged in yet) before the PASS
                    // itself, and that 530 must not count as a failed login.
                    if let Err(e) = server.write_all(&out).await {
                        return Some(Ending::Io(e));
                    }
                    out.clear();
                    if !Box::pin(wait_for_pass_result(shared)).await {
                        return Some(Ending::PassStalled);
                    }
                }
                LineKind::Auth => {
                    shared.pending_auth.store(true, Ordering::SeqCst);
                    out.extend_from_slice(&line);
                }
                LineKind::Rest | LineKind::Transfer | LineKind::Setup | LineKind::Other => {
                    out.extend_from_slice(&line)
                }
            }
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
            queued = read_past_urgent_mark(client.as_ref());
        }
    }
}

/// Queues `REST 0` in `out` (which must be empty) and marks its reply to be left out, once every
/// earlier command has been answered: the server may answer some commands out of order, so only
/// then is the next final reply certainly the one to `REST 0`. If earlier replies do not come in
/// time, or the channel has turned to TLS, nothing is injected.
async fn reset_rest_offset(shared: &Shared, out: &mut Vec<u8>) {
    let quiet = Box::pin(wait_for_replies(shared)).await;
    if shared.raw.load(Ordering::SeqCst) {
        return;
    }
    let replied = shared.replied.load(Ordering::SeqCst);
    if !quiet {
        // A reply that never came (or a server that answered a command twice) would make the
        // count wrong for good: start counting afresh from what has been seen.
        tracing::warn!("earlier replies missing; transfer sent without resetting the offset");
        shared.expected.store(replied, Ordering::SeqCst);
        return;
    }
    shared.swallow.store(replied + 1, Ordering::SeqCst);
    shared.expected.fetch_add(1, Ordering::SeqCst);
    out.extend_from_slice(REST_ZERO);
}

/// Waits until every command sent so far has had its final reply; `false` after [`REPLY_WAIT`].
async fn wait_for_replies(shared: &Shared) -> bool {
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        let notified = shared.reply_seen.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.replied.load(Ordering::SeqCst) >= shared.expected.load(Ordering::SeqCst) {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return false;
        }
    }
}

/// Asks the throttle to let a login attempt through, waiting while too many from the same
/// address are undecided. `None` means go ahead.
async fn admit_login(throttle: &LoginThrottle, peer: SocketAddr) -> Option<Ending> {
    let deadline = Instant::now() + PASS_WAIT;
    loop {
        match throttle.admit(peer.ip()) {
            Admission::Go => return None,
            Admission::Blocked => return Some(Ending::Throttled),
            Admission::Wait if Instant::now() >= deadline => return Some(Ending::PassStalled),
            Admission::Wait => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until no PASS result is outstanding; `false` if that takes longer than [`PASS_WAIT`].
async fn wait_for_pass_result(shared: &Shared) -> bool {
    let deadline = Instant::now() + PASS_WAIT;
    loop {
        let notified = shared.pass_done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.pending_pass.load(Ordering::SeqCst) == 0 {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return false;
        }
    }
}

/// Server to client: forwards replies unchanged, noting login results and a TLS upgrade.
async fn server_to_client<W>(
    server: &TcpStream,
    client: &mut W,
    scanner: &mut ReplyScanner,
    shared: &Shared,
    settings: &ControlSettings,
    peer: SocketAddr,
) -> Ending
where
    W: AsyncWrite + Unpin,
{
    loop {
        let chunk = match read_some(server).await {
            Ok(chunk) if chunk.is_empty() => return Ending::Closed,
            Ok(chunk) => chunk,
            Err(e) => return Ending::Io(e),
        };
        ack_now(server);
        let data = &chunk[..];
        let mut out = Vec::new();
        let data = if shared.raw.load(Ordering::SeqCst) {
            data
        } else {
            out.reserve_exact(data.len());
            let drop = shared.swallow.load(Ordering::SeqCst).checked_sub(1);
            let used = scanner.filter(data, drop, &mut out, |code| {
                on_reply(code, shared, settings, peer)
            });
            out.extend_from_slice(&data[used..]);
            if scanner.finals() != shared.replied.swap(scanner.finals(), Ordering::SeqCst) {
                shared.reply_seen.notify_waiters();
            }
            &out[..]
        };
        if let Err(e) = client.write_all(data).await {
            return Ending::Io(e);
        }
        if shared.blocked.load(Ordering::SeqCst) {
            return Ending::Throttled;
        }
    }
}

/// Acts on one final reply code; returns `false` once the channel turns into TLS.
fn on_reply(code: u16, shared: &Shared, settings: &ControlSettings, peer: SocketAddr) -> bool {
    let take_pass = || {
        shared
            .pending_pass
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    };
    match code {
        230 if take_pass() => {
            tracing::info!("login succeeded");
            settings.throttle.settle(peer.ip(), Outcome::Success);
            shared.pass_done.notify_waiters();
        }
        530 if take_pass() => {
            if settings.throttle.settle(peer.ip(), Outcome::Failure) {
                tracing::warn!("login failed; too many failures, address blocked");
                shared.blocked.store(true, Ordering::SeqCst);
            } else {
                tracing::info!("login failed");
            }
            shared.pass_done.notify_waiters();
        }
        // PASS before USER: refused, but no password was tried.
        503 if take_pass() => {
            settings.throttle.settle(peer.ip(), Outcome::Unknown);
            shared.pass_done.notify_waiters();
        }
        234 if shared.pending_auth.swap(false, Ordering::SeqCst) => {
            tracing::info!("control channel upgraded to TLS; relaying raw bytes from now on");
            shared.raw.store(true, Ordering::SeqCst);
            return false;
        }
        _ => {}
    }
    true
}

/// Serves one passive data connection: connects to the back-end, announcing the passive port so
/// that libunftp's switchboard finds the session that asked for it, then hands a plain upload
/// to the upload path or splices anything else.
pub(super) async fn data_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    backend: SocketAddr,
    handoff: Option<Arc<Handoff>>,
) {
    let peer = canonical(peer);
    let local = match client.local_addr() {
        Ok(a) => canonical(a),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read local address of data connection");
            return;
        }
    };
    if peer.is_ipv6() || local.is_ipv6() {
        tracing::info!("refusing IPv6 data connection");
        return;
    }
    let mut server = match connect_backend(backend, peer, local).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(backend = %backend, error = %e, "cannot reach the FTP back-end for data");
            return;
        }
    };
    let connected = Instant::now();
    if let Some(handoff) = handoff {
        if opening(&client, &server).await == Opening::PlainUpload {
            match hand_off(client, &mut server, &handoff).await {
                Ok(()) => return,
                Err(returned) => client = returned,
            }
        }
    }
    match relay_data(&mut client, &mut server).await {
        Ok((up, down)) => tracing::debug!(bytes_in = up, bytes_out = down, "data connection done"),
        Err(e) => {
            // A connection that broke must not look finished to the other side: a reset link
            // would otherwise reach libunftp as a clean end of the upload. Reset both.
            tracing::debug!(error = %e, "data connection broke; resetting both sides");
            // libunftp reads the accepted socket's peer address before anything else and, if
            // that fails (a reset socket has none), drops the transfer without any reply, which
            // leaves the client waiting. A reset that comes very early waits a little first.
            tokio::time::sleep_until(connected + EARLY_RESET_DELAY).await;
            #[allow(deprecated)]
            for s in [&client, &server] {
                let _ = s.set_linger(Some(std::time::Duration::ZERO));
            }
        }
    }
}

/// The first byte of every TLS handshake record: such a connection must reach libunftp as it is.
const TLS_HANDSHAKE: u8 = 0x16;

/// What a fresh data connection turned out to be, judged by who speaks first.
#[derive(Debug, PartialEq, Eq)]
enum Opening {
    /// The client sent bytes first, and they cannot start a TLS handshake.
    PlainUpload,
    /// The server spoke or closed first, the client closed, or it started TLS.
    Other,
}

/// Waits until either side of a fresh data connection has something to say. Nothing is read.
async fn opening(client: &TcpStream, server: &TcpStream) -> Opening {
    let mut first = [0u8; 1];
    tokio::select! {
        r = client.peek(&mut first) => match r {
            Ok(1) if first[0] != TLS_HANDSHAKE => Opening::PlainUpload,
            _ => Opening::Other,
        },
        _ = server.readable() => Opening::Other,
    }
}

/// Parks an upload's client socket for the upload path and sends the ticket in its place, then
/// waits until libunftp closes the back-end connection. A socket nobody claimed is closed
/// then. If the ticket cannot be sent, the socket comes back for an ordinary relay.
async fn hand_off(
    client: TcpStream,
    server: &mut TcpStream,
    handoff: &Handoff,
) -> Result<(), TcpStream> {
    let ticket = match handoff.park(client) {
        Ok(t) => t,
        Err((e, client)) => {
            tracing::warn!(error = %e, "cannot hand the upload over; relaying it");
            return Err(client);
        }
    };
    if let Err(e) = server.write_all(ticket.as_bytes()).await {
        // Back to the relay, which then fails and resets both sides like any broken one.
        tracing::debug!(error = %e, "cannot send the upload's ticket");
        return match handoff.claim(&ticket) {
            Some(client) => Err(client),
            None => Ok(()),
        };
    }
    tracing::debug!("upload data connection handed over");
    // libunftp writes nothing on an upload's connection; it only closes it when done.
    let mut sink = [0u8; 64];
    while let Ok(n) = server.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
    if handoff.claim(&ticket).is_some() {
        tracing::debug!("back-end closed before the upload was read; client connection closed");
    }
    Ok(())
}

/// How long after its back-end connection was made a data connection may be reset.
const EARLY_RESET_DELAY: Duration = Duration::from_millis(500);

/// Relays a data connection both ways; half-closes are forwarded, so a clean end stays a
/// clean end.
#[cfg(target_os = "linux")]
async fn relay_data(client: &mut TcpStream, server: &mut TcpStream) -> io::Result<(u64, u64)> {
    super::splice::relay(client, server).await
}

/// Relays a data connection both ways through one fixed buffer per direction.
#[cfg(not(target_os = "linux"))]
async fn relay_data(client: &mut TcpStream, server: &mut TcpStream) -> io::Result<(u64, u64)> {
    const DATA_BUFFER: usize = 256 * 1024;
    tokio::io::copy_bidirectional_with_sizes(client, server, DATA_BUFFER, DATA_BUFFER).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
            throttle: Arc::new(LoginThrottle::new(5, Duration::from_secs(300))),
        };
        let fut = control_connection(stream, peer, settings);
        let size = std::mem::size_of_val(&fut);
        println!("control connection future: {size} bytes");
        // 1,296 bytes with rustc 1.95; a wait added unboxed to the control loop once made it
        // 1,656 (0.4 KiB more for every idle session).
        assert!(size <= 1400, "control connection future is {size} bytes");
    }
}
