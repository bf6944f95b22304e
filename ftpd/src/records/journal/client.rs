//! `ftpd events`: reads the journal through the running server's HTTP listener (the store is
//! locked by the server process), with the HTTP/1 client of the hyper axum already brings.

use super::{Event, LIMIT_DEFAULT, WAIT_MAX};
use http_body_util::BodyExt;
use hyper::body::Bytes;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// What `ftpd events` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// `http_listen` from the configuration (`None`: off).
    pub http_listen: Option<SocketAddr>,
    /// `http_token`, sent as a bearer token.
    pub token: Option<String>,
    /// Print the events after this seq.
    pub since: u64,
    /// Long-poll for new events forever.
    pub follow: bool,
    /// Print the server's JSON lines as they are.
    pub json: bool,
}

/// Why `ftpd events` stopped.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("the journal is read through the HTTP listener, and `http_listen` is off in the configuration")]
    Off,
    #[error("cannot reach ftpd's HTTP listener at {addr} (is `ftpd serve` running?): {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("the server refused the request: {0} (check `http_token`)")]
    Unauthorized(String),
    /// 410: what is asked for is no longer kept (or another journal).
    #[error("{0}")]
    Gone(String),
    #[error("the server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot read the server's answer: {0}")]
    Protocol(String),
}

impl EventsError {
    /// The exit code: 2 when the journal cannot be reached at all (off, not running, refused),
    /// 3 when the cursor is no longer served (410: resync), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            EventsError::Off | EventsError::Unreachable { .. } | EventsError::Unauthorized(_) => 2,
            EventsError::Gone(_) => 3,
            EventsError::Status { .. } | EventsError::Protocol(_) => 1,
        }
    }
}

/// The address to connect to for a listener on `addr`: a wildcard is reached on loopback.
pub(crate) fn connect_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// One `GET /events` on a connection of its own; the body's lines.
async fn get(
    addr: SocketAddr,
    token: Option<&str>,
    since: u64,
    wait: u64,
) -> Result<Vec<Bytes>, EventsError> {
    let target = format!("/events?since={since}&limit={LIMIT_DEFAULT}&wait={wait}");
    // The server answers within `wait` seconds; a margin for a slow store.
    let (status, body) = fetch(addr, token, &target, Duration::from_secs(wait + 30)).await?;
    match status {
        200 => Ok(lines(&body)),
        410 => Err(EventsError::Gone(error_text(&body))),
        _ => Err(status_error(status, &body)),
    }
}

/// The non-empty lines of a JSON-lines body.
pub(crate) fn lines(body: &Bytes) -> Vec<Bytes> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| body.slice_ref(l))
        .collect()
}

/// The message of an error answer: its JSON `error` (as every route's JSON errors carry it),
/// or else the body's text.
pub(crate) fn error_text(body: &[u8]) -> String {
    let t = String::from_utf8_lossy(body);
    serde_json::from_str::<serde_json::Value>(&t)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| t.trim().to_string())
}

/// The error for an answer other than `200`: the token refused, or any other status.
pub(crate) fn status_error(status: u16, body: &[u8]) -> EventsError {
    match status {
        401 | 403 => EventsError::Unauthorized(error_text(body)),
        s => EventsError::Status {
            status: s,
            body: error_text(body),
        },
    }
}

/// One `GET target` to the HTTP listener at `addr` (the address to connect to, see
/// [`connect_addr`]) on a connection of its own, with the bearer `token`: the status and the
/// whole body, within `timeout`. Shared by `ftpd events` and `ftpd uploads list`.
pub(crate) async fn fetch(
    addr: SocketAddr,
    token: Option<&str>,
    target: &str,
    timeout: Duration,
) -> Result<(u16, Bytes), EventsError> {
    let unreachable = |reason: String| EventsError::Unreachable { addr, reason };
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| unreachable("connection timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::get(target).header(hyper::header::HOST, addr.to_string());
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(http_body_util::Empty::new())
        .map_err(|e| EventsError::Protocol(e.to_string()))?;
    let answer = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| EventsError::Protocol(e.to_string()))?
            .to_bytes();
        Ok::<_, EventsError>((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| EventsError::Protocol("no answer in time".into()))??;
    driver.abort();
    Ok((status.as_u16(), body))
}

/// Prints the events after `opts.since` (and, with `follow`, every new one as it comes).
/// Returns at the end of the journal, or never with `follow` unless something fails.
pub fn run(opts: &Options) -> Result<(), EventsError> {
    let addr = connect_addr(opts.http_listen.ok_or(EventsError::Off)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EventsError::Protocol(format!("cannot start the runtime: {e}")))?;
    rt.block_on(follow(addr, opts))
}

async fn follow(addr: SocketAddr, opts: &Options) -> Result<(), EventsError> {
    let mut cursor = opts.since;
    let mut reached = false;
    let mut lost = false;
    let stdout = std::io::stdout();
    loop {
        let wait = if opts.follow { WAIT_MAX } else { 0 };
        let lines = match get(addr, opts.token.as_deref(), cursor, wait).await {
            Ok(lines) => lines,
            // Following, a server that restarts is waited for (it was reached once).
            Err(e @ EventsError::Unreachable { .. }) if opts.follow && reached => {
                if !lost {
                    eprintln!("ftpd events: {e}; retrying");
                    lost = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        reached = true;
        lost = false;
        let mut out = stdout.lock();
        for line in &lines {
            let event = Event::from_json(line)
                .map_err(|e| EventsError::Protocol(format!("bad event line: {e}")))?;
            let written = if opts.json {
                out.write_all(line).and_then(|()| out.write_all(b"\n"))
            } else {
                writeln!(out, "{}", event.display_line())
            };
            // A closed pipe (`| head`) ends the listing quietly.
            if written.is_err() {
                return Ok(());
            }
            cursor = event.seq;
        }
        if out.flush().is_err() {
            return Ok(());
        }
        if !opts.follow && lines.len() < LIMIT_DEFAULT {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_reached_on_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(connect_addr(a("0.0.0.0:9")), a("127.0.0.1:9"));
        assert_eq!(connect_addr(a("[::]:9")), a("[::1]:9"));
        assert_eq!(connect_addr(a("127.0.0.2:9")), a("127.0.0.2:9"));
    }

    #[test]
    fn off_and_unreachable_exit_2() {
        let opts = Options {
            http_listen: None,
            token: None,
            since: 0,
            follow: false,
            json: false,
        };
        let e = run(&opts).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("http_listen"), "{e}");
        // A port nobody listens on.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let e = run(&Options {
            http_listen: Some(addr),
            ..opts
        })
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("is `ftpd serve` running?"), "{e}");
    }

    use crate::records::journal::{Journal, Kind, Seen};
    use crate::records::{Record, RecordStore, RedbStore};
    use std::sync::Arc;

    /// `/events` on a real listener (with a token), read by this client.
    async fn serving(
        keep: Duration,
    ) -> (
        tempfile::TempDir,
        Arc<dyn RecordStore>,
        Journal,
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RecordStore> = Arc::new(RedbStore::open(dir.path(), false).unwrap());
        let journal = Journal::new(store.clone(), keep);
        let l = crate::http::bind("127.0.0.1:0".parse().unwrap(), Some("tok".into()))
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::http::serve(
            l,
            crate::records::journal::routes(journal.clone()),
            async move {
                let _ = rx.await;
            },
        ));
        (dir, store, journal, addr, tx)
    }

    fn upload(store: &Arc<dyn RecordStore>, path: &str) {
        let r = Record {
            open: false,
            state: crc_tools::State::Complete,
            ..Record::opened(None, 3, 0x0102_0304)
        };
        store.end_upload("u", path, &r).unwrap();
    }

    /// A raw request: status and body.
    async fn raw(addr: SocketAddr, target: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let code = resp[9..12].parse().unwrap();
        (code, resp)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_over_http() {
        let (_dir, store, journal, addr, _stop) = serving(Duration::from_secs(3600)).await;
        for p in ["/a", "/b", "/c"] {
            upload(&store, p);
        }
        let lines = get(addr, Some("tok"), 0, 0).await.unwrap();
        let seqs: Vec<u64> = lines
            .iter()
            .map(|l| Event::from_json(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(
            lines[0].as_ref(),
            journal.since(0, 1).unwrap()[0].to_json().as_slice()
        );

        let (code, resp) = raw(addr, "/events?since=1&limit=1").await;
        assert_eq!(code, 200);
        assert!(
            resp.contains("content-type: application/x-ndjson"),
            "{resp}"
        );
        assert!(resp.contains("x-journal-last-seq: 3"), "{resp}");
        assert_eq!(resp.matches("\"seq\":").count(), 1, "{resp}");
        assert!(resp.contains("\"seq\":2,"), "{resp}");

        for bad in [
            "/events",
            "/events?since=x",
            "/events?since=-1",
            "/events?since=1&since=2",
            "/events?since=0&limit=0",
            "/events?since=0&wait=1.5",
        ] {
            let (code, resp) = raw(addr, bad).await;
            assert_eq!(code, 400, "{bad}: {resp}");
        }
        // Ahead of the journal: another journal, resync.
        let (code, resp) = raw(addr, "/events?since=9").await;
        assert_eq!(code, 410, "{resp}");
        assert!(matches!(
            get(addr, Some("tok"), 9, 0).await,
            Err(EventsError::Gone(_))
        ));
        assert!(matches!(
            get(addr, Some("nope"), 0, 0).await,
            Err(EventsError::Unauthorized(_))
        ));

        // Pruned: 410 with the oldest kept.
        journal
            .prune_before(std::time::SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        upload(&store, "/d");
        let (code, resp) = raw(addr, "/events?since=2").await;
        assert_eq!(code, 410, "{resp}");
        assert!(resp.contains("\"oldest\":4"), "{resp}");
        let e = get(addr, Some("tok"), 0, 0).await.unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("no longer kept"), "{e}");
        assert_eq!(get(addr, Some("tok"), 3, 0).await.unwrap().len(), 1);

        // A long-poll answers as soon as an event is committed.
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                tokio::task::spawn_blocking(move || {
                    store
                        .remove_and_journal(Kind::Delete, "u", "/d", Seen::Unknown)
                        .unwrap()
                })
                .await
                .unwrap()
            })
        };
        let t0 = std::time::Instant::now();
        let lines = get(addr, Some("tok"), 4, 30).await.unwrap();
        let took = t0.elapsed();
        assert_eq!(lines.len(), 1);
        assert_eq!(Event::from_json(&lines[0]).unwrap().kind, Kind::Delete);
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(10),
            "{took:?}"
        );
        writer.await.unwrap();
        // With nothing coming, it answers empty after `wait`.
        let t0 = std::time::Instant::now();
        assert!(get(addr, Some("tok"), 5, 1).await.unwrap().is_empty());
        assert!(t0.elapsed() >= Duration::from_millis(900));
    }

    #[test]
    fn query_parameters() {
        use super::super::Query;
        let q = |s: &str| Query::parse(Some(s));
        assert_eq!(
            q("since=5").unwrap(),
            Query {
                since: 5,
                limit: 1000,
                wait: Duration::ZERO
            }
        );
        assert_eq!(
            q("since=0&limit=999999&wait=3600&token=x").unwrap(),
            Query {
                since: 0,
                limit: 10_000,
                wait: Duration::from_secs(60)
            }
        );
        assert!(Query::parse(None).is_err());
        assert!(q("since=").is_err());
        assert!(q("since=99999999999999999999999").is_err());
    }
}
