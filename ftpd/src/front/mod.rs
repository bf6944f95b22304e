//! The front: a TCP relay on ftpd's public port that lets existing set-top-box firmware send
//! `KEY …` as a top-level command, which libunftp cannot route, and that bounds what clients can
//! hold.
//!
//! Each client line whose command word is `KEY` (any case) is rewritten to `SITE KEY <same
//! arguments>`; other lines go through unchanged, so ordinary clients see libunftp as it is.
//! libunftp runs in its ordinary mode on a loopback address; the front opens one back-end
//! connection per client control connection. What the front knows of a session is one state
//! machine, [`session::ControlSession`]; `control.rs` is the I/O around it.
//!
//! # Passive data connections
//! The front owns the public passive ports. libunftp answers each `PASV`/`EPSV` with a port of
//! its own on loopback; the front promises one of its public ports to that session for the
//! client's address, and announces that port instead (`passive.rs`). A connection to a public
//! passive port is matched to its promise (by port and client address, used once, never shared
//! by two sessions of one address) and connected to that session's libunftp port; anything else
//! is closed at once. `EPSV` works too.
//!
//! A plain upload skips the relay: once the session's transfer command is an upload, the front
//! parks the client's socket in the shared [`Handoff`] and sends a one-time ticket down the
//! back-end connection instead; the upload path finds the ticket and reads the client's socket
//! directly (see [`crate::handoff`]). Downloads and listings are relayed by `splice(2)`.
//!
//! # Refused by the front itself
//! * A command word that is not plain printable ASCII gets `500`: libunftp upper-cases the full
//!   Unicode range (`PAſS` is `PASS` to it), and the front must never disagree with it about
//!   what a line is.
//! * `REST` with a missing or malformed offset gets `501` and the session goes on (libunftp
//!   would close it).
//!
//! # Failed-login throttling
//! The front watches `USER`/`PASS` and the `230`/`530` that settle them, and counts failures per
//! (address, user) and per address ([`throttle`]). A connection that reaches a limit gets its
//! `530` and then `421`; a blocked address is refused on connect. One `PASS` is in flight per
//! connection, and attempts awaiting their result count against the limits, so neither
//! pipelining nor parallel connections get more guesses through.
//!
//! # Restart offsets
//! libunftp keeps a `REST` offset in the session until a transfer succeeds, so after a refused
//! resume the next `STOR` or `RETR` of the session would silently start at the old offset. The
//! front therefore sends `REST 0` ahead of every `STOR`, `RETR`, `STOU` and `APPE` that does not
//! follow a `REST` (data-connection set-up may come in between), and leaves the reply to it out,
//! once every earlier command has been answered (within 15 s; otherwise the transfer goes
//! through without it). This holds inside TLS too: the front reads every line there as well.
//!
//! # FTPS
//! The front ends the control channel's TLS itself (`AUTH TLS`, [`tls`]), with the certificate
//! libunftp also uses for `PROT P` data connections, so everything here (bare `KEY` included)
//! works inside TLS as outside; `CCC` is refused. With `tls_required` (`ftps_required`) a
//! `USER`/`PASS` on a plain control channel gets `530` from the front and never reaches
//! libunftp (the session may still send `AUTH TLS`), and a transfer command while data
//! connections are not `PROT P` gets `521` and its data connection is closed.
//!
//! # Limits
//! * Connections: `max_connections` in total and `max_connections_per_address`; past either a
//!   new control connection gets `421`. A connection not logged in within `login_timeout` gets
//!   `421`. Client sockets get TCP keepalive.
//! * Lines longer than `max_line` get `500` and the connection is closed; a line not finished
//!   within `line_timeout` gets `421`, inside TLS as outside (the front reads lines there too),
//!   so libunftp's line buffer stays bounded.
//! * A relayed data connection with no byte either way for `data_idle` is closed; an upload that
//!   was handed over is timed by the upload path with the same setting.
//! * Clients must use IPv4 (IPv4-mapped addresses on a dual-stack listener are fine): `227`
//!   carries only IPv4.
//! * Log events of the front name the real client address (`client`); "control connection
//!   opened" also names the back-end connection (`via`) under which libunftp logs the session.
//!
//! # Behind a balancer
//! A connection, control or passive, from an address in `proxy_from` starts with a PROXY
//! protocol header (v1 or v2, [`proxy_header`]) naming the client. That client address then
//! stands for the peer everywhere above: connection limits, the failed-login throttle, passive
//! promises (the balancer's data connection carries a header too) and the `client` of log
//! events. A missing, malformed or oversized header closes the connection without a word
//! (logged with the balancer as `proxy`), and nothing reaches libunftp; a v2 `LOCAL` header (a
//! health check) keeps the balancer's own address. From anywhere else a PROXY line is an
//! ordinary command line, and libunftp answers it as an unknown command.

mod control;
mod data;
pub mod limits;
pub mod line;
pub mod passive;
pub mod proxy_header;
pub mod reply;
pub mod session;
#[cfg(target_os = "linux")]
mod splice;
pub mod throttle;
pub mod tls;

use crate::handoff::Handoff;
use control::ControlSettings;
use data::DataSettings;
use limits::{Connections, Refusal};
use passive::PassiveTable;
use proxy_header::{Ends, ProxyFrom, HEADER_TIMEOUT};
use throttle::LoginThrottle;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::field::Empty;
use tracing::Instrument;

/// Where the front listens, where libunftp is, and the front's limits.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// Client-facing control listener (ftpd's public FTP address).
    pub public_addr: SocketAddr,
    /// Passive ports, listened on at `public_addr.ip()`; a port that cannot be bound is left out.
    pub passive_ports: RangeInclusive<u16>,
    /// Address announced in passive replies; `None`: the address the client connected to.
    pub passive_host: Option<std::net::Ipv4Addr>,
    /// libunftp's loopback listener (ordinary mode, passive ports of its own on loopback).
    pub backend_addr: SocketAddr,
    /// Longest accepted command line in bytes, CRLF included.
    pub max_line: usize,
    /// Time allowed for a started command line to be finished.
    pub line_timeout: Duration,
    /// Failed logins for one user from one address within `login_window` before that user is
    /// refused from there; 0 turns throttling off.
    pub login_failures: u32,
    /// Failed logins from one address over all users before the address is refused; 0 = no
    /// address-wide limit.
    pub login_failures_per_address: u32,
    /// Control connections open at once, in total and from one address.
    pub max_connections: u32,
    pub max_connections_per_address: u32,
    /// Time from connecting to a successful login.
    pub login_timeout: Duration,
    /// A relayed data connection silent this long either way is closed.
    pub data_idle: Duration,
    /// TCP keepalive idle time on client sockets; `None` = off.
    pub keepalive: Option<Duration>,
    /// Counting window, and how long a blocked IP stays blocked (at most 30 days).
    pub login_window: Duration,
    /// TLS for the control channel (`AUTH TLS`), ended by the front; `None`: no FTPS.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// FTPS required: no login on a plain control channel, no transfer without `PROT P`.
    /// Needs `tls`.
    pub tls_required: bool,
    /// Where plain uploads are parked for the upload path to read directly; `None` relays them.
    pub handoff: Option<Arc<Handoff>>,
    /// Balancers whose connections start with a PROXY protocol header naming the client
    /// (`proxy_from`); empty: none.
    pub proxy_from: Vec<ipnet::IpNet>,
}

impl FrontConfig {
    /// Default command-line limit: room for a `PATH_MAX` path after the command word.
    pub const DEFAULT_MAX_LINE: usize = 4096;
    pub const DEFAULT_LINE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_LOGIN_FAILURES: u32 = 5;
    pub const DEFAULT_LOGIN_WINDOW: Duration = Duration::from_secs(300);
    pub const DEFAULT_LOGIN_FAILURES_PER_ADDRESS: u32 = 50;
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
    pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: u32 = 1024;
    pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_DATA_IDLE: Duration = Duration::from_secs(60);
    pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);

    /// A configuration with the default limits.
    pub fn new(
        public_addr: SocketAddr,
        passive_ports: RangeInclusive<u16>,
        backend_addr: SocketAddr,
    ) -> Self {
        FrontConfig {
            public_addr,
            passive_ports,
            passive_host: None,
            backend_addr,
            max_line: Self::DEFAULT_MAX_LINE,
            line_timeout: Self::DEFAULT_LINE_TIMEOUT,
            login_failures: Self::DEFAULT_LOGIN_FAILURES,
            login_failures_per_address: Self::DEFAULT_LOGIN_FAILURES_PER_ADDRESS,
            login_window: Self::DEFAULT_LOGIN_WINDOW,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: Self::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            login_timeout: Self::DEFAULT_LOGIN_TIMEOUT,
            data_idle: Self::DEFAULT_DATA_IDLE,
            keepalive: Some(Self::DEFAULT_KEEPALIVE),
            tls: None,
            tls_required: false,
            handoff: None,
            proxy_from: Vec::new(),
        }
    }
}

/// Why the front cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// The public control address cannot be bound.
    #[error("cannot listen for FTP control connections on {addr}: {source}")]
    BindControl { addr: SocketAddr, source: io::Error },
    /// Not one port of the passive range can be bound.
    #[error("cannot listen on any passive port {start}-{end} at {ip}: {source}")]
    NoPassivePort {
        ip: std::net::IpAddr,
        start: u16,
        end: u16,
        source: io::Error,
    },
    /// The back-end must be reachable only from this host: it trusts the front's connections.
    #[error("back-end address {0} is not a loopback address")]
    BackendNotLoopback(SocketAddr),
    /// The passive range is empty or contains the control port.
    #[error(
        "passive port range {start}-{end} must not be empty or contain the control port {control}"
    )]
    BadPassiveRange { start: u16, end: u16, control: u16 },
    /// A zero timeout would cut every connection at once.
    #[error("{0} must be greater than zero")]
    ZeroTimeout(&'static str),
    /// A zero connection limit would refuse everybody.
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    /// The line limit is too small for ordinary FTP commands.
    #[error("max_line {0} is too small (at least {min})", min = MIN_LINE)]
    LineLimitTooSmall(usize),
    /// The FTPS certificate or key cannot be used.
    #[error("FTPS: {0}")]
    Tls(#[from] tls::TlsError),
    /// TLS cannot be required without a certificate.
    #[error("FTPS is required but no certificate is configured")]
    TlsRequiredWithoutTls,
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
    passive: Vec<(u16, TcpListener)>,
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
        if cfg.tls_required && cfg.tls.is_none() {
            return Err(FrontError::TlsRequiredWithoutTls);
        }
        for (name, t) in [
            ("line_timeout", cfg.line_timeout),
            ("login_timeout", cfg.login_timeout),
            ("data_idle", cfg.data_idle),
        ] {
            if t.is_zero() {
                return Err(FrontError::ZeroTimeout(name));
            }
        }
        for (name, n) in [
            ("max_connections", cfg.max_connections),
            (
                "max_connections_per_address",
                cfg.max_connections_per_address,
            ),
        ] {
            if n == 0 {
                return Err(FrontError::ZeroLimit(name));
            }
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
        if start == 0 || end < start || cfg.passive_ports.contains(&local_addr.port()) {
            return Err(FrontError::BadPassiveRange {
                start,
                end,
                control: local_addr.port(),
            });
        }
        // A port that is busy (another program, or an outgoing connection that the kernel gave
        // a port in this range) is left out: one busy port must not stop the server.
        let mut passive = Vec::with_capacity(cfg.passive_ports.len());
        let mut busy = Vec::new();
        let mut last_error = None;
        for port in cfg.passive_ports.clone() {
            match TcpListener::bind(SocketAddr::new(local_addr.ip(), port)).await {
                Ok(listener) => passive.push((port, listener)),
                Err(e) => {
                    busy.push(port);
                    last_error = Some(e);
                }
            }
        }
        if let Some(source) = last_error {
            if passive.is_empty() {
                return Err(FrontError::NoPassivePort {
                    ip: local_addr.ip(),
                    start,
                    end,
                    source,
                });
            }
            tracing::warn!(
                ports = ?busy,
                error = %source,
                usable = passive.len(),
                "passive ports in use elsewhere are left out"
            );
        }
        let throttle = Arc::new(LoginThrottle::new(
            cfg.login_failures,
            cfg.login_failures_per_address,
            cfg.login_window,
        ));
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

    /// The passive ports actually listened on.
    pub fn passive_ports(&self) -> Vec<u16> {
        self.passive.iter().map(|(p, _)| *p).collect()
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
        let table = PassiveTable::new(passive.iter().map(|(p, _)| *p).collect());
        let settings = ControlSettings {
            backend_addr: cfg.backend_addr,
            max_line: cfg.max_line,
            line_timeout: cfg.line_timeout.min(throttle::MAX_WINDOW),
            login_timeout: cfg.login_timeout.min(throttle::MAX_WINDOW),
            keepalive: cfg.keepalive,
            passive_host: cfg.passive_host,
            throttle,
            passive: table.clone(),
            tls: cfg.tls.clone(),
            tls_required: cfg.tls_required,
        };
        let connections = Connections::new(cfg.max_connections, cfg.max_connections_per_address);
        let proxy = ProxyFrom::new(&cfg.proxy_from);
        let control_proxy = proxy.clone();
        let mut acceptors = JoinSet::new();
        acceptors.spawn(accept_loop(control, move |stream, peer| {
            let proxied = control_proxy.trusts(peer.ip());
            let span = match proxied {
                false => tracing::info_span!("ftp", client = %peer, proxy = Empty),
                true => tracing::info_span!("ftp", client = Empty, proxy = %peer),
            };
            let serve = serve_control(stream, peer, proxied, settings.clone(), connections.clone());
            tokio::spawn(serve.instrument(span));
        }));
        let data = DataSettings {
            passive: table,
            handoff: cfg.handoff.clone(),
            idle: cfg.data_idle,
            keepalive: cfg.keepalive,
        };
        for (port, listener) in passive {
            let data = data.clone();
            let proxy = proxy.clone();
            acceptors.spawn(accept_loop(listener, move |stream, peer| {
                let proxied = proxy.trusts(peer.ip());
                let span = match proxied {
                    false => tracing::info_span!("ftp-data", client = %peer, proxy = Empty),
                    true => tracing::info_span!("ftp-data", client = Empty, proxy = %peer),
                };
                let serve = serve_data(stream, peer, proxied, port, data.clone());
                tokio::spawn(serve.instrument(span));
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

/// Who a new connection is between: for one from a balancer (`proxied`), the ends its PROXY
/// header names, recorded as the span's `client`. `None` when it cannot be served (logged).
async fn arrival(stream: &mut TcpStream, peer: SocketAddr, proxied: bool) -> Option<Ends> {
    let tcp = match Ends::of(stream, peer) {
        Ok(ends) => ends,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the local address of a connection");
            return None;
        }
    };
    if !proxied {
        return Some(tcp);
    }
    match proxy_header::read_header(stream, tcp, HEADER_TIMEOUT).await {
        Ok(ends) => {
            tracing::Span::current().record("client", tracing::field::display(ends.peer));
            tracing::debug!(client = %ends.peer, proxy = %peer, "PROXY header read");
            Some(ends)
        }
        Err(e) => {
            tracing::warn!(proxy = %peer, error = %e, "no usable PROXY header; connection closed");
            None
        }
    }
}

/// Serves a new control connection: admitted by its client's address, or refused with `421`.
async fn serve_control(
    mut stream: TcpStream,
    peer: SocketAddr,
    proxied: bool,
    settings: ControlSettings,
    connections: Arc<Connections>,
) {
    let Some(ends) = arrival(&mut stream, peer, proxied).await else {
        return;
    };
    match connections.admit(ends.peer.ip()) {
        Ok(place) => {
            control::control_connection(stream, ends, settings).await;
            drop(place);
        }
        Err(refusal) => {
            tracing::warn!(client = %ends.peer, ?refusal, "connection limit reached; refused");
            let reply: &[u8] = match refusal {
                Refusal::Total => b"421 Too many connections, try again later.\r\n",
                Refusal::Address => {
                    b"421 Too many connections from your address, try again later.\r\n"
                }
            };
            control::farewell(&mut stream, reply).await;
        }
    }
}

/// Serves a new connection to passive port `port`.
async fn serve_data(
    mut stream: TcpStream,
    peer: SocketAddr,
    proxied: bool,
    port: u16,
    settings: DataSettings,
) {
    if let Some(ends) = arrival(&mut stream, peer, proxied).await {
        data::data_connection(stream, ends.peer, port, settings).await;
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
