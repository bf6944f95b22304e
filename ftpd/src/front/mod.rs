//! The front: a TCP relay on ftpd's public port that lets existing set-top-box firmware send
//! `KEY …` as a top-level command, which libunftp cannot route.
//!
//! Each client line whose command word is `KEY` (any case) is rewritten to `SITE KEY <same
//! arguments>`; every other byte goes through unchanged in both directions, so ordinary clients
//! see libunftp exactly as it is. libunftp listens on loopback in PROXY protocol mode; the front
//! opens one back-end connection per client control or data connection and starts it with a
//! PROXY v1 header naming the real client address and the public address and port the client
//! reached. The front also listens on the passive ports and relays each data connection with
//! that passive port as the header's destination, which is how libunftp's switchboard finds the
//! session (by client IP and port).
//!
//! # Uploads skip the relay
//! A data connection whose client speaks first, with a byte that cannot open a TLS handshake,
//! is a plain upload (downloads and listings start with the server's bytes). The front then parks
//! the client's socket in the shared [`Handoff`] and sends a one-time ticket down the back-end
//! connection instead of relaying; the upload path finds the ticket in the first bytes libunftp
//! passes to `put` and reads the client's socket directly (see [`crate::handoff`]). The back-end
//! connection stays open, silent, until libunftp closes it. Everything else is relayed.
//!
//! # What libunftp must be told
//! * `proxy_protocol_mode(public_port)` (the port of [`Front::local_addr`]),
//!   `passive_ports(<the front's range>)`, and `listen(backend_addr)` on a loopback address.
//! * `passive_host` stays at its default (from the connection): in PROXY mode the `227` reply
//!   carries the destination address of the PROXY header, which the front fills with the address
//!   the client connected to, so no rewriting is needed. Behind NAT, set `passive_host` to the
//!   external address as usual. EPSV answers `502` in this mode; clients fall back to PASV.
//! * No `failed_logins_policy` blocking by IP (`IP` or `UserAndIP`): libunftp sees every client
//!   as the loopback address, so one attacker would lock everybody out. The front throttles per
//!   real IP instead. Authenticators likewise see `127.0.0.1` as the source IP, so per-user IP
//!   allow-lists cannot work behind the front.
//!
//! # Failed-login throttling
//! The front watches `PASS` lines and the `230`/`530` that settle them. After
//! [`FrontConfig::login_failures`] failures from one IP within [`FrontConfig::login_window`], the
//! IP is blocked for one window: the connection that hit the limit gets its `530` and then `421`
//! and is closed, and new connections and logins from that IP get `421`. A success clears the
//! count. Attempts still awaiting their result count against the limit and each connection has
//! one `PASS` in flight at a time, so neither pipelining nor parallel connections get more
//! guesses through.
//!
//! # Restart offsets
//! libunftp keeps a `REST` offset in the session until a transfer succeeds, so after a refused
//! resume the next `STOR` or `RETR` of the session would silently start at the old offset. The
//! front therefore sends `REST 0` ahead of every `STOR`, `RETR`, `STOU` and `APPE` that does not
//! follow a `REST` (data-connection set-up — `PASV`, `EPSV`, `PORT`, `EPRT`, `TYPE`, `MODE`,
//! `STRU` — may come in between, as many clients send it there), and leaves the reply to it out.
//! A `REST` with an offset libunftp refuses does not count, since libunftp then keeps the old one.
//! To know which reply to leave out, the front counts final replies against the lines it sent and
//! holds such a transfer command until every earlier command has been answered (libunftp answers
//! some commands, e.g. `DELE` or `SIZE`, from background tasks, so pipelined replies may arrive out
//! of order); clients that wait for each reply never wait longer. If earlier replies do not come
//! within 15 seconds the transfer goes through without `REST 0`. Inside TLS sessions (after
//! `AUTH TLS`) the front cannot see commands, so the stale offset stays possible there.
//!
//! # Limits
//! * Lines longer than [`FrontConfig::max_line`] get `500 Command line too long.` and the
//!   connection is closed; a line not finished within [`FrontConfig::line_timeout`] gets `421`
//!   and is closed. A control connection holds at most one unfinished line (`max_line`); an idle
//!   one holds no buffer at all (reads wait for readiness first and copy only what arrived).
//!   Data connections are relayed by `splice(2)` through a pipe per direction on Linux (the
//!   bytes are never copied into the front; at most 1 MiB per direction is in flight), through
//!   fixed 256 KiB buffers elsewhere.
//! * After `AUTH TLS`/`AUTH SSL` is answered `234` the control channel is TLS and the front relays
//!   it as raw bytes: bare `KEY` then no longer works (`SITE KEY` does), and login results inside
//!   TLS sessions are not seen, so they are not counted (a blocked address is still refused when
//!   it connects).
//! * Clients must use IPv4 (IPv4-mapped addresses on a dual-stack listener are fine): libunftp
//!   parses only `TCP4` PROXY headers and its `227` reply carries an IPv4 address. Plain IPv6
//!   clients get `421`.
//! * A PROXY header sent by a client is an ordinary command line to the front; only the front's
//!   own back-end connections carry headers.
//! * Logs (`tracing`) carry the real client address in the `client` field of each connection's
//!   span.

mod line;
mod proxy_header;
mod relay;
mod reply;
#[cfg(target_os = "linux")]
mod splice;
mod throttle;

use crate::handoff::Handoff;
use throttle::LoginThrottle;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Where the front listens, where libunftp is, and the front's limits.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// Client-facing control listener (ftpd's public FTP address).
    pub public_addr: SocketAddr,
    /// Passive ports, listened on at `public_addr.ip()`; libunftp gets the same range.
    pub passive_ports: RangeInclusive<u16>,
    /// libunftp's loopback listener in PROXY protocol mode.
    pub backend_addr: SocketAddr,
    /// Longest accepted command line in bytes, CRLF included.
    pub max_line: usize,
    /// Time allowed for a started command line to be finished.
    pub line_timeout: Duration,
    /// Failed logins from one IP within `login_window` before that IP is refused; 0 = off.
    pub login_failures: u32,
    /// Counting window, and how long a blocked IP stays blocked (at most 30 days).
    pub login_window: Duration,
    /// Where plain uploads are parked for the upload path to read directly; `None` relays them.
    pub handoff: Option<Arc<Handoff>>,
}

impl FrontConfig {
    /// Default command-line limit: room for a `PATH_MAX` path after the command word.
    pub const DEFAULT_MAX_LINE: usize = 4096;
    pub const DEFAULT_LINE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_LOGIN_FAILURES: u32 = 5;
    pub const DEFAULT_LOGIN_WINDOW: Duration = Duration::from_secs(300);

    /// A configuration with the default limits.
    pub fn new(
        public_addr: SocketAddr,
        passive_ports: RangeInclusive<u16>,
        backend_addr: SocketAddr,
    ) -> Self {
        FrontConfig {
            public_addr,
            passive_ports,
            backend_addr,
            max_line: Self::DEFAULT_MAX_LINE,
            line_timeout: Self::DEFAULT_LINE_TIMEOUT,
            login_failures: Self::DEFAULT_LOGIN_FAILURES,
            login_window: Self::DEFAULT_LOGIN_WINDOW,
            handoff: None,
        }
    }
}

/// Why the front cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// The public control address cannot be bound.
    #[error("cannot listen for FTP control connections on {addr}: {source}")]
    BindControl { addr: SocketAddr, source: io::Error },
    /// A passive port cannot be bound.
    #[error("cannot listen on passive port {addr}: {source}")]
    BindPassive { addr: SocketAddr, source: io::Error },
    /// The back-end must be reachable only from this host, or anyone could forge PROXY headers.
    #[error("back-end address {0} is not a loopback address")]
    BackendNotLoopback(SocketAddr),
    /// The passive range has fewer than two ports (libunftp's allocator divides by its width)
    /// or contains the control port.
    #[error("passive port range {start}-{end} needs at least two ports and must not contain the control port {control}")]
    BadPassiveRange { start: u16, end: u16, control: u16 },
    /// A zero line timeout would cut every command that arrives in more than one packet.
    #[error("line_timeout must be greater than zero")]
    ZeroLineTimeout,
    /// The line limit is too small for ordinary FTP commands.
    #[error("max_line {0} is too small (at least {min})", min = MIN_LINE)]
    LineLimitTooSmall(usize),
    /// An accept loop stopped for good.
    #[error("listener on {addr} failed: {source}")]
    Accept { addr: SocketAddr, source: io::Error },
}

/// Smallest sensible `max_line`: `SITE KEY INFO` plus a short path.
const MIN_LINE: usize = 64;

/// The bound front; [`run`](Front::run) serves it.
#[derive(Debug)]
pub struct Front {
    control: TcpListener,
    passive: Vec<TcpListener>,
    local_addr: SocketAddr,
    cfg: FrontConfig,
    throttle: Arc<LoginThrottle>,
}

impl Front {
    /// Checks the configuration and binds the control listener and every passive port.
    pub async fn bind(cfg: FrontConfig) -> Result<Front, FrontError> {
        if !cfg.backend_addr.ip().is_loopback() {
            return Err(FrontError::BackendNotLoopback(cfg.backend_addr));
        }
        if cfg.max_line < MIN_LINE {
            return Err(FrontError::LineLimitTooSmall(cfg.max_line));
        }
        if cfg.line_timeout.is_zero() {
            return Err(FrontError::ZeroLineTimeout);
        }
        let control =
            TcpListener::bind(cfg.public_addr)
                .await
                .map_err(|source| FrontError::BindControl {
                    addr: cfg.public_addr,
                    source,
                })?;
        let local_addr = control
            .local_addr()
            .map_err(|source| FrontError::BindControl {
                addr: cfg.public_addr,
                source,
            })?;
        let (start, end) = (*cfg.passive_ports.start(), *cfg.passive_ports.end());
        if start == 0 || end <= start || cfg.passive_ports.contains(&local_addr.port()) {
            return Err(FrontError::BadPassiveRange {
                start,
                end,
                control: local_addr.port(),
            });
        }
        let mut passive = Vec::with_capacity(cfg.passive_ports.len());
        for port in cfg.passive_ports.clone() {
            let addr = SocketAddr::new(local_addr.ip(), port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| FrontError::BindPassive { addr, source })?;
            passive.push(listener);
        }
        let throttle = Arc::new(LoginThrottle::new(cfg.login_failures, cfg.login_window));
        Ok(Front {
            control,
            passive,
            local_addr,
            cfg,
            throttle,
        })
    }

    /// The bound control address (useful when `public_addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until `shutdown` completes, then stops accepting; connections already
    /// open carry on until libunftp or the client closes them.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), FrontError> {
        let Front {
            control,
            passive,
            local_addr,
            cfg,
            throttle,
        } = self;
        tracing::info!(
            public = %local_addr,
            backend = %cfg.backend_addr,
            passive = ?cfg.passive_ports,
            "front listening"
        );
        let settings = relay::ControlSettings {
            backend_addr: cfg.backend_addr,
            max_line: cfg.max_line,
            line_timeout: cfg.line_timeout.min(throttle::MAX_WINDOW),
            throttle,
        };
        let mut acceptors = JoinSet::new();
        acceptors.spawn(accept_loop(control, move |stream, peer| {
            let span = tracing::info_span!("ftp", client = %peer);
            tokio::spawn(
                relay::control_connection(stream, peer, settings.clone()).instrument(span),
            );
        }));
        for listener in passive {
            let backend = cfg.backend_addr;
            let handoff = cfg.handoff.clone();
            acceptors.spawn(accept_loop(listener, move |stream, peer| {
                let span = tracing::info_span!("ftp-data", client = %peer);
                let handoff = handoff.clone();
                tokio::spawn(
                    relay::data_connection(stream, peer, backend, handoff).instrument(span),
                );
            }));
        }
        let result = tokio::select! {
            _ = shutdown => Ok(()),
            Some(done) = acceptors.join_next() => match done {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Ok(()),
                Err(join) => Err(FrontError::Accept {
                    addr: local_addr,
                    source: io::Error::other(join.to_string()),
                }),
            },
        };
        acceptors.shutdown().await;
        tracing::info!("front stopped accepting connections");
        result
    }
}

/// Accepts forever, handing each connection to `serve`; transient errors (out of file
/// descriptors, aborted handshakes) are logged and retried after a pause.
async fn accept_loop<F>(listener: TcpListener, serve: F) -> Result<(), FrontError>
where
    F: Fn(tokio::net::TcpStream, SocketAddr) + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => serve(stream, peer),
            Err(e) => {
                let addr = listener.local_addr().ok();
                tracing::warn!(listener = ?addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
