//! Completion webhooks (`webhook_url`): every journal event is POSTed to one receiver as JSON,
//! **in `seq` order, at least once**.
//!
//! # How
//! One task of its own ([`spawn`]) follows the journal ([`Journal::wait_since_json`]) from the
//! last acknowledged seq and POSTs one event at a time: the event's stored JSON (exactly the
//! line `/events` serves, without the newline), `Content-Type: application/json`, and the header
//! `X-Ftpd-Seq`. A `2xx` answer acknowledges the event; anything else (another status, a refused
//! or reset connection, no answer within [`REQUEST_TIMEOUT`]) is retried after an exponential
//! back-off with jitter ([`Backoff`]: 0.5 s doubling to 60 s) until it is acknowledged, so a
//! later event is never sent before an earlier one is acknowledged.
//!
//! The sender only reads the journal, with its own HTTP/1 client (hyper, one kept-alive
//! connection; tokio-rustls with ring for `https://`) and its own timeouts: uploads never wait
//! for it. A slow or dead receiver only delays webhooks.
//!
//! # Resuming
//! The last acknowledged seq (the cursor) is kept in `<state_dir>/webhook.seq` (one decimal
//! number), written atomically (temporary file, fsync, rename, fsync of the directory; no fsync
//! with `durability = "none"`). It is a file of its own rather than a redb table so that the
//! sender never takes the store's single write transaction that uploads commit through. The
//! writes are coalesced by a small task of their own: delivery never waits for the disk, and
//! the file lags the acknowledgements by at most one write. After a restart (or a crash)
//! delivery resumes after the seq in the file; a crash between an acknowledgement and the write
//! that records it sends those events again. **The receiver dedupes by `seq`.**
//!
//! # When the journal moved on
//! - Events the sender has not delivered were pruned by retention (`journal_keep_days`,
//!   [`JournalError::Gone`]): an error is logged naming the seqs lost and delivery continues
//!   from the oldest event kept.
//! - The cursor is past the journal's last event ([`JournalError::Ahead`]: the store was
//!   replaced, or lost its last commits with `durability = "none"`): an error is logged and
//!   delivery starts again from the first event kept, so the receiver sees `seq` go back.

use crate::records::journal::{Journal, JournalError};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

/// The longest a TCP connection (and the TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one POST may take, from sending to the end of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry's delay; each next one doubles, up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// The longest delay between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The file that keeps the last acknowledged seq, in `state_dir`.
pub const CURSOR_FILE: &str = "webhook.seq";

/// Events read from the journal at once (then sent one by one).
const READ_BATCH: usize = 100;
/// How long one journal read waits for a new event.
const READ_WAIT: Duration = Duration::from_secs(30);
/// The most of an answer's body that is read (and ignored).
const BODY_MAX: usize = 64 << 10;

/// A checked `webhook_url`: `http://` or `https://`, a host, an optional port and path.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    https: bool,
    /// The host to connect to (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// The `Host` header: the URL's authority.
    authority: String,
    /// The request target: path and query.
    target: String,
}

impl Endpoint {
    /// Checks a URL; the error says what is wrong with it (the caller names the setting).
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(s) => return Err(format!("'{s}://' is not http:// or https://")),
            None => return Err(format!("'{url}' does not start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("'{url}' has no host"))?;
        if authority.as_str().contains('@') {
            return Err(
                "credentials in the URL are not supported (put a secret in the path or query)"
                    .into(),
            );
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("'{url}' has no host"));
        }
        let port = match authority.port_u16() {
            Some(0) => return Err("port 0 is not a port to send to".into()),
            Some(p) => p,
            None if https => 443,
            None => 80,
        };
        let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Endpoint {
            https,
            host: host.to_string(),
            port,
            authority: authority.as_str().to_string(),
            target: if target.is_empty() {
                "/".into()
            } else {
                target
            },
        })
    }

    /// True for `https://`.
    pub fn is_https(&self) -> bool {
        self.https
    }
}

/// The URL without its query (which may hold a secret), for logs.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let (path, query) = match self.target.split_once('?') {
            Some((p, _)) => (p, "?…"),
            None => (self.target.as_str(), ""),
        };
        write!(f, "{scheme}://{}{path}{query}", self.authority)
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// Why the webhooks cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("bad setting `webhook_url`: {0}")]
    Tls(String),
}

/// The retry schedule: `first`, doubling, at most `max`; each delay is then shortened by a
/// random part of up to half of it, so that many servers do not retry in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: BACKOFF_FIRST,
            max: BACKOFF_MAX,
        }
    }
}

impl Backoff {
    /// The delay after the failed attempt number `attempt` (0 for the first), with `unit` in
    /// `[0, 1)` as the random part: in `[d/2, d]` where `d = min(first * 2^attempt, max)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let d = self
            .first
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        d.mul_f64(1.0 - 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// A random number in `[0, 1)` (for the jitter; 0.5 if the system has none to give).
fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// The last acknowledged seq, kept in a file of its own.
#[derive(Clone, Debug)]
pub struct Cursor {
    path: PathBuf,
    fsync: bool,
}

impl Cursor {
    /// `<state_dir>/webhook.seq`; with `fsync` false, written without syncing.
    pub fn new(state_dir: &Path, fsync: bool) -> Self {
        Cursor {
            path: state_dir.join(CURSOR_FILE),
            fsync,
        }
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The seq kept, `None` when nothing was ever acknowledged here. Blocking.
    pub fn load(&self) -> std::io::Result<Option<u64>> {
        match std::fs::read_to_string(&self.path) {
            Ok(s) => s.trim().parse::<u64>().map(Some).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("'{}' is not a seq", s.trim()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the seq kept, atomically: a crash leaves the old one or the new one. Blocking.
    pub fn store(&self, seq: u64) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("seq.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{seq}")?;
            if self.fsync {
                f.sync_all()?;
            }
        }
        std::fs::rename(&tmp, &self.path)?;
        if self.fsync {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// An open connection to the receiver; its driver task ends with it.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The HTTP/1 client of the webhooks: one connection, kept while the receiver keeps it.
struct Client {
    endpoint: Endpoint,
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<Conn>,
    user_agent: String,
}

impl Client {
    fn new(endpoint: Endpoint, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Client {
            endpoint,
            tls: tls.map(tokio_rustls::TlsConnector::from),
            conn: None,
            user_agent: format!("ftpd/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        use hyper::client::conn::http1::handshake;
        use hyper_util::rt::TokioIo;
        let ep = &self.endpoint;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
        )
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, driver) = match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
                    .map_err(|e| format!("bad host name for TLS: {e}"))?;
                let tls = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                    .await
                    .map_err(|_| "TLS handshake timed out".to_string())?
                    .map_err(|e| format!("TLS: {e}"))?;
                let (sender, conn) = handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| e.to_string())?;
                (
                    sender,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
            None => {
                let (sender, conn) = handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
                (
                    sender,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
        };
        Ok(Conn { sender, driver })
    }

    /// POSTs one event; the status of the answer. On any error the connection is dropped.
    async fn post(&mut self, seq: u64, json: Bytes) -> Result<u16, String> {
        let mut conn = match self.conn.take() {
            Some(c) if !c.sender.is_closed() => c,
            _ => self.connect().await?,
        };
        let req = hyper::Request::post(self.endpoint.target.as_str())
            .header(hyper::header::HOST, self.endpoint.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, self.user_agent.as_str())
            .header("x-ftpd-seq", seq)
            .body(Full::new(json))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            conn.sender.ready().await.map_err(|e| e.to_string())?;
            let resp = conn
                .sender
                .send_request(req)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            // Read the answer to its end so that the connection can carry the next event.
            Limited::new(resp.into_body(), BODY_MAX)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            Ok::<_, String>(status)
        };
        let status = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))??;
        self.conn = Some(conn);
        Ok(status)
    }
}

/// The client TLS configuration: the system's CA certificates, ring, HTTP/1.1.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, WebhookError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "webhooks: cannot load some CA certificates");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(WebhookError::Tls(
            "https:// needs CA certificates and none were found on this system (install \
             ca-certificates, or name a PEM file with SSL_CERT_FILE)"
                .into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The sender: follows the journal and POSTs each event until it is acknowledged.
pub struct Sender {
    journal: Journal,
    client: Client,
    cursor: Cursor,
    backoff: Backoff,
    stop: CancellationToken,
}

impl Sender {
    /// A sender to `endpoint` of the events of `journal`, resuming from `cursor`, until `stop`.
    pub fn new(
        endpoint: Endpoint,
        journal: Journal,
        cursor: Cursor,
        stop: CancellationToken,
    ) -> Result<Self, WebhookError> {
        let tls = if endpoint.is_https() {
            Some(tls_config()?)
        } else {
            None
        };
        Ok(Sender {
            journal,
            client: Client::new(endpoint, tls),
            cursor,
            backoff: Backoff::default(),
            stop,
        })
    }

    /// The same sender with another retry schedule (tests).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Starts the sender (and the task that writes its cursor); the handle ends once `stop`
    /// was cancelled, the POST in flight has ended and the last acknowledged seq is written.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let loaded = {
            let c = self.cursor.clone();
            tokio::task::spawn_blocking(move || c.load()).await
        };
        let start = match loaded {
            Ok(Ok(Some(seq))) => seq,
            Ok(Ok(None)) => 0,
            Ok(Err(e)) => {
                tracing::error!(file = %self.cursor.path().display(), error = %e,
                    "webhooks: cannot read the last acknowledged seq; sending every event kept");
                0
            }
            Err(e) => {
                tracing::error!(error = %e, "webhooks: cannot read the last acknowledged seq");
                0
            }
        };
        tracing::info!(url = %self.client.endpoint, after_seq = start, last_seq = self.journal.last_seq(),
            "webhooks: delivering journal events");
        let (acked, rx) = watch::channel(start);
        let writer = tokio::spawn(write_cursor(self.cursor.clone(), rx));
        self.deliver_all(start, &acked).await;
        drop(acked);
        let _ = writer.await;
        tracing::info!("webhooks stopped");
    }

    /// Follows the journal from `cursor` until stopped, publishing each acknowledged seq.
    async fn deliver_all(&mut self, mut cursor: u64, acked: &watch::Sender<u64>) {
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let read = tokio::select! {
                r = self.journal.wait_since_json(cursor, READ_BATCH, READ_WAIT) => r,
                _ = self.stop.cancelled() => return,
            };
            match read {
                Ok(events) if events.is_empty() => {
                    // A closed journal answers at once: wait for the stop instead of spinning.
                    if self.journal.is_closed() {
                        self.stop.cancelled().await;
                        return;
                    }
                }
                Ok(events) => {
                    for (seq, json) in events {
                        if !self.deliver(seq, Bytes::from(json)).await {
                            return;
                        }
                        cursor = seq;
                        acked.send_replace(seq);
                        if self.stop.is_cancelled() {
                            return;
                        }
                    }
                }
                Err(JournalError::Gone { since, oldest }) => {
                    tracing::error!(
                        lost_from = since + 1,
                        lost_to = oldest - 1,
                        "webhooks: events that were never delivered were pruned from the journal \
                         (journal_keep_days); continuing from the oldest event kept"
                    );
                    cursor = oldest - 1;
                    acked.send_replace(cursor);
                }
                Err(JournalError::Ahead { since, last }) => {
                    tracing::error!(
                        acknowledged = since,
                        last_seq = last,
                        "webhooks: the last acknowledged seq is past the journal's last event (the \
                         store was replaced); sending every event kept again"
                    );
                    cursor = 0;
                    acked.send_replace(cursor);
                }
                Err(JournalError::Closed) => {
                    self.stop.cancelled().await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot read the journal; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// POSTs one event until it is acknowledged (true), or until stopped (false). A POST
    /// already sent is not cut short by the stop.
    async fn deliver(&mut self, seq: u64, json: Bytes) -> bool {
        let mut attempt = 0u32;
        loop {
            let why = match self.client.post(seq, json.clone()).await {
                Ok(status) if (200..300).contains(&status) => {
                    if attempt > 0 {
                        tracing::info!(
                            seq,
                            attempts = attempt + 1,
                            "webhooks: the receiver accepts events again"
                        );
                    }
                    return true;
                }
                Ok(status) => format!("the receiver answered {status}"),
                Err(e) => e,
            };
            let delay = self.backoff.delay(attempt, jitter());
            tracing::warn!(seq, attempt = attempt + 1, retry_in = ?delay, reason = %why,
                url = %self.client.endpoint, "webhooks: delivery failed; retrying");
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => return false,
            }
        }
    }
}

/// Writes each acknowledged seq to the cursor file, coalescing: delivery never waits for the
/// disk, and the file lags by at most the write in progress. Writes the last value and ends
/// once the sender is gone.
async fn write_cursor(cursor: Cursor, mut rx: watch::Receiver<u64>) {
    let mut saved = *rx.borrow_and_update();
    loop {
        let gone = rx.changed().await.is_err();
        let seq = *rx.borrow_and_update();
        if seq != saved {
            let c = cursor.clone();
            match tokio::task::spawn_blocking(move || c.store(seq)).await {
                Ok(Ok(())) => saved = seq,
                Ok(Err(e)) => {
                    tracing::warn!(file = %cursor.path().display(), seq, error = %e,
                        "webhooks: cannot record the last acknowledged seq (a restart sends again)")
                }
                Err(e) => tracing::warn!(error = %e, "webhooks: cannot record the last seq"),
            }
        }
        if gone {
            return;
        }
    }
}

/// Starts the webhooks of `journal` to `endpoint`, with the cursor in `state_dir`.
pub fn spawn(
    endpoint: Endpoint,
    journal: Journal,
    state_dir: &Path,
    fsync: bool,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, WebhookError> {
    Ok(Sender::new(endpoint, journal, Cursor::new(state_dir, fsync), stop)?.spawn())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Record, RecordStore, RedbStore};
    use crc_tools::State;
    use std::sync::Mutex;

    #[test]
    fn backoff_doubles_from_half_a_second_to_a_minute_with_jitter() {
        let b = Backoff::default();
        let no_jitter: Vec<f64> = (0..10).map(|a| b.delay(a, 0.0).as_secs_f64()).collect();
        assert_eq!(
            no_jitter,
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
        );
        // Jitter shortens by up to half, never lengthens.
        for a in [0, 3, 7, 40, u32::MAX] {
            let full = b.delay(a, 0.0);
            let least = b.delay(a, 0.999_999);
            assert!(least >= full / 2 && least < full, "{a}: {least:?} {full:?}");
            assert!(full <= BACKOFF_MAX);
        }
        assert_eq!(b.delay(u32::MAX, 0.0), BACKOFF_MAX);
        for _ in 0..100 {
            let u = jitter();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn urls_are_checked() {
        let e = Endpoint::parse("http://127.0.0.1:8080/hook?token=s3cret").unwrap();
        assert_eq!(
            (e.https, e.host.as_str(), e.port, e.target.as_str()),
            (false, "127.0.0.1", 8080, "/hook?token=s3cret")
        );
        assert_eq!(e.to_string(), "http://127.0.0.1:8080/hook?…");
        assert!(!format!("{e:?}").contains("s3cret"));
        let e = Endpoint::parse("https://hooks.example.com").unwrap();
        assert_eq!(
            (e.https, e.port, e.target.as_str(), e.authority.as_str()),
            (true, 443, "/", "hooks.example.com")
        );
        let e = Endpoint::parse("http://[::1]/x").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 80));
        for bad in [
            "ftp://x/",
            "127.0.0.1:80",
            "/path",
            "http://",
            "http://user:pw@host/",
            "http://host:0/",
            "not a url",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cursor_is_kept_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cursor::new(dir.path(), true);
        assert_eq!(c.load().unwrap(), None);
        c.store(41).unwrap();
        c.store(42).unwrap();
        assert_eq!(c.load().unwrap(), Some(42));
        assert_eq!(std::fs::read_to_string(c.path()).unwrap(), "42\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CURSOR_FILE], "no temporary file is left");
        std::fs::write(c.path(), "garbage").unwrap();
        assert!(c.load().is_err());
    }

    /// A receiver on loopback that refuses the first `refuse` requests with 503 and records
    /// the `(X-Ftpd-Seq, seq in the body)` of the ones it accepts.
    #[derive(Clone, Default)]
    struct Receiver {
        refuse: Arc<Mutex<usize>>,
        got: Arc<Mutex<Vec<(u64, u64)>>>,
        requests: Arc<Mutex<usize>>,
    }

    impl Receiver {
        async fn start(refuse: usize) -> (Self, Endpoint) {
            let r = Receiver {
                refuse: Arc::new(Mutex::new(refuse)),
                ..Default::default()
            };
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(Self::hook))
                .with_state(r.clone());
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hook", l.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(l, app).await });
            (r, Endpoint::parse(&url).unwrap())
        }

        async fn hook(
            axum::extract::State(r): axum::extract::State<Receiver>,
            headers: axum::http::HeaderMap,
            body: Bytes,
        ) -> axum::http::StatusCode {
            *r.requests.lock().unwrap() += 1;
            {
                let mut refuse = r.refuse.lock().unwrap();
                if *refuse > 0 {
                    *refuse -= 1;
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
            }
            assert_eq!(headers["content-type"], "application/json");
            let header: u64 = headers["x-ftpd-seq"].to_str().unwrap().parse().unwrap();
            let e = crate::records::journal::Event::from_json(&body).unwrap();
            r.got.lock().unwrap().push((header, e.seq));
            axum::http::StatusCode::NO_CONTENT
        }

        fn seqs(&self) -> Vec<u64> {
            let got = self.got.lock().unwrap();
            assert!(got.iter().all(|(h, b)| h == b), "header = body seq");
            got.iter().map(|(h, _)| *h).collect()
        }

        async fn wait_for(&self, n: usize) {
            for _ in 0..500 {
                if self.got.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("got only {:?}", self.seqs());
        }
    }

    fn upload(store: &Arc<dyn RecordStore>, path: &str) {
        let r = Record {
            state: State::Complete,
            open: false,
            ..Record::opened(None, 1, 1)
        };
        store.end_upload("u", path, &r).unwrap();
    }

    fn fast() -> Backoff {
        Backoff {
            first: Duration::from_millis(5),
            max: Duration::from_millis(40),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_event_in_order_through_refusals_and_resume_after_the_last_ack() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RecordStore> = Arc::new(RedbStore::open(dir.path(), false).unwrap());
        let journal = Journal::new(store.clone(), Duration::from_secs(86_400));
        for i in 0..5 {
            upload(&store, &format!("/a{i}"));
        }
        let (rx, ep) = Receiver::start(3).await;
        let stop = CancellationToken::new();
        let cursor = Cursor::new(dir.path(), false);
        let task = Sender::new(ep.clone(), journal.clone(), cursor.clone(), stop.clone())
            .unwrap()
            .with_backoff(fast())
            .spawn();
        rx.wait_for(5).await;
        // Events committed while it runs follow, in order.
        for i in 5..8 {
            upload(&store, &format!("/b{i}"));
        }
        rx.wait_for(8).await;
        assert_eq!(rx.seqs(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(*rx.requests.lock().unwrap(), 8 + 3, "3 refusals retried");
        stop.cancel();
        task.await.unwrap();
        assert_eq!(cursor.load().unwrap(), Some(8), "the last ack is kept");

        // A restart resumes after the last acknowledged seq.
        upload(&store, "/c");
        let stop = CancellationToken::new();
        let task = Sender::new(ep, journal, cursor.clone(), stop.clone())
            .unwrap()
            .with_backoff(fast())
            .spawn();
        rx.wait_for(9).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rx.seqs(), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        stop.cancel();
        task.await.unwrap();
        assert_eq!(cursor.load().unwrap(), Some(9));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruned_events_are_skipped_and_a_replaced_journal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RecordStore> = Arc::new(RedbStore::open(dir.path(), false).unwrap());
        let journal = Journal::new(store.clone(), Duration::from_secs(86_400));
        for i in 0..3 {
            upload(&store, &format!("/a{i}"));
        }
        // Events 1-3 are pruned before they could be delivered; 4 is kept.
        journal
            .prune_before(std::time::SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        upload(&store, "/d");
        let (rx, ep) = Receiver::start(0).await;
        let cursor = Cursor::new(dir.path(), false);
        let stop = CancellationToken::new();
        let task = Sender::new(ep.clone(), journal.clone(), cursor.clone(), stop.clone())
            .unwrap()
            .with_backoff(fast())
            .spawn();
        rx.wait_for(1).await;
        assert_eq!(rx.seqs(), [4]);
        stop.cancel();
        task.await.unwrap();

        // A cursor past the last event (another journal): everything kept is sent again.
        cursor.store(100).unwrap();
        let stop = CancellationToken::new();
        let task = Sender::new(ep, journal, cursor.clone(), stop.clone())
            .unwrap()
            .with_backoff(fast())
            .spawn();
        rx.wait_for(2).await;
        assert_eq!(rx.seqs(), [4, 4]);
        stop.cancel();
        task.await.unwrap();
        assert_eq!(cursor.load().unwrap(), Some(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_that_never_answers_times_out_and_stop_is_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RecordStore> = Arc::new(RedbStore::open(dir.path(), false).unwrap());
        let journal = Journal::new(store.clone(), Duration::from_secs(86_400));
        upload(&store, "/a");
        // Accepts connections and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        let held = Arc::new(Mutex::new(Vec::new()));
        {
            let held = held.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    held.lock().unwrap().push(s);
                }
            });
        }
        let stop = CancellationToken::new();
        let task = Sender::new(
            Endpoint::parse(&url).unwrap(),
            journal,
            Cursor::new(dir.path(), false),
            stop.clone(),
        )
        .unwrap()
        .spawn();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(held.lock().unwrap().len(), 1, "the POST is in flight");
        // Committing more events is not held up by the hanging receiver.
        let t0 = std::time::Instant::now();
        for i in 0..20 {
            upload(&store, &format!("/b{i}"));
        }
        assert!(t0.elapsed() < Duration::from_secs(2));
        stop.cancel();
        // The POST in flight may run to its timeout, no longer.
        tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(2), task)
            .await
            .expect("stops")
            .unwrap();
        assert_eq!(Cursor::new(dir.path(), false).load().unwrap(), None);
    }
}
