//! The store as an operator sees it: one line per recorded file, for `ftpd uploads list` and
//! `GET /uploads` on the HTTP listener.
//!
//! redb lets one process open the database. While the server runs, the CLI therefore reads
//! through the server's HTTP listener (`http_listen`, with `http_token`; the HTTP client of
//! `ftpd events`, [`crate::records::journal::client`]); when no listener answers (the server is
//! stopped, or `http_listen` is off) it opens the store itself, which fails cleanly when
//! another process holds it. With `store = "postgres"` it reads the database directly then.
//!
//! One file, as a JSON line (fields in this order):
//! `{"user":"alice","path":"/a.ts","state":"verified","size":1048576,"declared":"0x1C291CA3",
//! "crc":"0x1C291CA3","updated":"2025-06-01T10:00:00Z"}` — `declared` is null when no CRC was
//! declared; `state` is the record's (`partial` also for an upload running now).

use crate::config::StoreChoice;
use crate::records::journal::client::{self, EventsError};
use crate::records::postgres::ConnectError;
use crate::records::{PgStore, Record, RecordStore, RedbStore, StoreError};
use crc_tools::{KeyValue, State};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The states a record can be listed by.
pub const STATES: [&str; 4] = ["partial", "complete", "verified", "mismatch"];

/// Which records to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only records in this state.
    pub state: Option<State>,
    /// Only this user's records.
    pub user: Option<String>,
}

impl Filter {
    /// From the words of the CLI or the query: a state of [`STATES`] and a user name.
    pub fn new(state: Option<&str>, user: Option<&str>) -> Result<Self, String> {
        let state = match state.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) if STATES.contains(&s) => s.parse().ok(),
            Some(s) => {
                return Err(format!(
                    "unknown state '{s}': use one of {}",
                    STATES.join(", ")
                ))
            }
        };
        let user = match user.filter(|u| !u.is_empty()) {
            None => None,
            Some(u) => {
                crate::users::validate_name(u).map_err(|e| e.to_string())?;
                Some(u.to_string())
            }
        };
        Ok(Filter { state, user })
    }

    /// `GET /uploads?state=S&user=U` (every parameter optional; others ignored).
    fn parse_query(query: Option<&str>) -> Result<Self, String> {
        let (mut state, mut user) = (None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "state" => &mut state,
                "user" => &mut user,
                _ => continue,
            };
            if slot.is_some() {
                return Err(format!("`{name}` is given twice"));
            }
            *slot = Some(value);
        }
        Filter::new(state, user)
    }

    /// The query string for `GET /uploads` (names and states need no escaping).
    fn query(&self) -> String {
        let mut q = Vec::new();
        if let Some(s) = self.state {
            q.push(format!("state={s}"));
        }
        if let Some(u) = &self.user {
            q.push(format!("user={u}"));
        }
        q.join("&")
    }

    fn accepts(&self, r: &Record) -> bool {
        match self.state {
            Some(s) => s == r.state,
            None => true,
        }
    }
}

/// One listed file, as it goes over HTTP and out of `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub user: String,
    /// Absolute within the user's root.
    pub path: String,
    /// `partial`, `complete`, `verified` or `mismatch`.
    pub state: String,
    /// Bytes the record describes.
    pub size: u64,
    /// The CRC declared with KEY (`0x` and 8 hex digits), null when none was.
    pub declared: Option<String>,
    /// CRC-32 of the `size` bytes.
    pub crc: String,
    /// When the record last changed (RFC 3339, UTC).
    pub updated: String,
}

impl Listed {
    pub fn of(user: &str, path: &str, r: &Record) -> Self {
        Listed {
            user: user.to_string(),
            path: path.to_string(),
            state: r.state.to_string(),
            size: r.size,
            declared: r.declared.map(|d| KeyValue(d).to_string()),
            crc: KeyValue(r.crc).to_string(),
            updated: r.updated_rfc3339(),
        }
    }

    /// The JSON line (no newline).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// One readable line: user, path, state, size, declared, crc, updated.
    pub fn display_line(&self) -> String {
        format!(
            "{} {} {:<8} size={} declared={} crc={} updated={}",
            self.user,
            self.path,
            self.state,
            self.size,
            self.declared.as_deref().unwrap_or("-"),
            self.crc,
            self.updated
        )
    }
}

/// The records `filter` selects, in (user, path) order. Blocking.
pub fn list(store: &dyn RecordStore, filter: &Filter) -> Result<Vec<Listed>, StoreError> {
    Ok(store
        .records(filter.user.as_deref(), &|r: &Record| filter.accepts(r))?
        .iter()
        .map(|(u, p, r)| Listed::of(u, p, r))
        .collect())
}

/// `GET /uploads?state=S&user=U`, for the HTTP listener (`http.rs` adds the token): the
/// records as JSON lines (`application/x-ndjson`), in (user, path) order. `400` (JSON
/// `{"error": …}`) for an unknown state, a bad user name or a parameter given twice.
pub fn routes(store: Arc<dyn RecordStore>) -> axum::Router {
    axum::Router::new()
        .route("/uploads", axum::routing::get(uploads))
        .with_state(store)
}

async fn uploads(
    axum::extract::State(store): axum::extract::State<Arc<dyn RecordStore>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let json_error = |status: StatusCode, error: String| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{}\n", serde_json::json!({ "error": error })),
        )
            .into_response()
    };
    let filter = match Filter::parse_query(query.as_deref()) {
        Ok(f) => f,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let listed = tokio::task::spawn_blocking(move || list(store.as_ref(), &filter)).await;
    match listed {
        Ok(Ok(listed)) => {
            let mut body = Vec::new();
            for l in &listed {
                body.extend_from_slice(&l.to_json());
                body.push(b'\n');
            }
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/x-ndjson"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                body,
            )
                .into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "GET /uploads failed");
            json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// What `ftpd uploads list` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// `http_listen` from the configuration (`None`: off).
    pub http_listen: Option<SocketAddr>,
    /// `http_token`, sent as a bearer token.
    pub token: Option<String>,
    /// `state_dir`, where the store is when no server answers.
    pub state_dir: PathBuf,
    /// `store` (with `postgres_url`): the store read when no server answers.
    pub store: StoreChoice,
    pub filter: Filter,
    /// Print JSON lines instead of readable lines.
    pub json: bool,
}

/// Why `ftpd uploads list` could not list (exit 2, one line).
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Http(#[from] EventsError),
    #[error("no checksum store at {0} (check `state_dir`; has `ftpd serve` run with this configuration?)")]
    NoStore(PathBuf),
    #[error(
        "the checksum store {path} is in use by another process (a running `ftpd serve`?); {hint}"
    )]
    Locked { path: PathBuf, hint: String },
    #[error("cannot read the checksum store {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot read the records in PostgreSQL: {0}")]
    Shared(StoreError),
    #[error("{0}")]
    Other(String),
}

/// Lists through the running server when its listener answers, else from the store itself.
pub fn run(opts: &Options) -> Result<(), ListError> {
    let hint = match opts.http_listen {
        Some(listen) => {
            let addr = client::connect_addr(listen);
            match through_server(addr, opts) {
                Err(ListError::Http(EventsError::Unreachable { reason, .. })) => {
                    format!("its HTTP listener at {addr} does not answer ({reason})")
                }
                done => return done,
            }
        }
        None => "set `http_listen` so that the listing goes through the server".to_string(),
    };
    from_store(opts, hint)
}

/// `GET /uploads` on the server's listener, printed.
fn through_server(addr: SocketAddr, opts: &Options) -> Result<(), ListError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ListError::Other(format!("cannot start the runtime: {e}")))?;
    let target = format!("/uploads?{}", opts.filter.query());
    let (status, body) = rt.block_on(client::fetch(
        addr,
        opts.token.as_deref(),
        &target,
        Duration::from_secs(120),
    ))?;
    if status != 200 {
        return Err(client::status_error(status, &body).into());
    }
    let mut rows = Vec::new();
    for line in client::lines(&body) {
        let listed: Listed = serde_json::from_slice(&line)
            .map_err(|e| EventsError::Protocol(format!("bad line in the server's listing: {e}")))?;
        rows.push((listed, line.to_vec()));
    }
    print(rows, opts.json);
    Ok(())
}

/// How long the listing waits for PostgreSQL to answer.
const POSTGRES_WAIT: Duration = Duration::from_secs(10);

/// Opens the store (the server is not running, or not listening) and prints from it.
fn from_store(opts: &Options, hint: String) -> Result<(), ListError> {
    let StoreChoice::Postgres { url } = &opts.store else {
        return from_redb(opts, hint);
    };
    // The database serves every node at once: no lock to run into, no hint needed.
    let store = PgStore::connect(url, "uploads-list", POSTGRES_WAIT)?;
    let listed = list(&store, &opts.filter).map_err(ListError::Shared)?;
    print_listed(listed, opts.json);
    Ok(())
}

/// Opens the redb file in `state_dir` and prints from it.
fn from_redb(opts: &Options, hint: String) -> Result<(), ListError> {
    let path = opts.state_dir.join("records.redb");
    if !path.is_file() {
        return Err(ListError::NoStore(path));
    }
    let store = RedbStore::open(&opts.state_dir, false).map_err(|source| {
        let locked =
            matches!(&source, StoreError::Db(e) if matches!(**e, redb::Error::DatabaseAlreadyOpen));
        if locked {
            ListError::Locked {
                path: path.clone(),
                hint: hint.clone(),
            }
        } else {
            ListError::Store {
                path: path.clone(),
                source,
            }
        }
    })?;
    let listed = list(&store, &opts.filter).map_err(|source| ListError::Store {
        path: path.clone(),
        source,
    })?;
    print_listed(listed, opts.json);
    Ok(())
}

/// Prints listed files with their JSON.
fn print_listed(listed: Vec<Listed>, json: bool) {
    print(
        listed
            .into_iter()
            .map(|l| {
                let json = l.to_json();
                (l, json)
            })
            .collect(),
        json,
    );
}

/// Prints the rows; a closed pipe (`| head`) ends the listing quietly.
fn print(rows: Vec<(Listed, Vec<u8>)>, json: bool) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (listed, line) in rows {
        let written = if json {
            out.write_all(&line).and_then(|()| out.write_all(b"\n"))
        } else {
            writeln!(out, "{}", listed.display_line())
        };
        if written.is_err() {
            return;
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::FileId;
    use std::time::UNIX_EPOCH;

    fn record(state: State, declared: Option<u32>) -> Record {
        Record {
            state,
            open: false,
            updated: UNIX_EPOCH + Duration::from_secs(1_750_000_000),
            ..Record::opened(declared, 10, 0x1C29_1CA3)
        }
        .at(FileId::new(1, 2, 3))
    }

    fn filled(dir: &std::path::Path) -> Arc<dyn RecordStore> {
        let store: Arc<dyn RecordStore> = Arc::new(RedbStore::open(dir, false).unwrap());
        store
            .put(
                "alice",
                "/v.ts",
                &record(State::Verified, Some(0x1C29_1CA3)),
            )
            .unwrap();
        store
            .put("alice", "/p.ts", &record(State::Partial, Some(7)))
            .unwrap();
        store
            .put("bob", "/c.ts", &record(State::Complete, None))
            .unwrap();
        store
            .put("bob", "/m.ts", &record(State::Mismatch, Some(7)))
            .unwrap();
        store
    }

    fn paths(listed: &[Listed]) -> Vec<String> {
        listed
            .iter()
            .map(|l| format!("{}{}", l.user, l.path))
            .collect()
    }

    #[test]
    fn filters_select_by_state_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path());
        let all = list(store.as_ref(), &Filter::default()).unwrap();
        assert_eq!(
            paths(&all),
            ["alice/p.ts", "alice/v.ts", "bob/c.ts", "bob/m.ts"]
        );
        let f = Filter::new(Some("partial"), None).unwrap();
        assert_eq!(paths(&list(store.as_ref(), &f).unwrap()), ["alice/p.ts"]);
        let f = Filter::new(None, Some("bob")).unwrap();
        assert_eq!(
            paths(&list(store.as_ref(), &f).unwrap()),
            ["bob/c.ts", "bob/m.ts"]
        );
        let f = Filter::new(Some("mismatch"), Some("alice")).unwrap();
        assert!(list(store.as_ref(), &f).unwrap().is_empty());
        assert!(Filter::new(Some("untracked"), None).is_err());
        assert!(Filter::new(Some("bogus"), None).is_err());
        assert!(Filter::new(None, Some("../x")).is_err());
        assert_eq!(Filter::new(Some(""), Some("")).unwrap(), Filter::default());
    }

    #[test]
    fn a_listed_file_as_json_and_as_a_line() {
        let l = Listed::of(
            "alice",
            "/v.ts",
            &record(State::Verified, Some(0x1C29_1CA3)),
        );
        let text = String::from_utf8(l.to_json()).unwrap();
        assert_eq!(
            text,
            r#"{"user":"alice","path":"/v.ts","state":"verified","size":10,"declared":"0x1C291CA3","crc":"0x1C291CA3","updated":"2025-06-15T15:06:40Z"}"#
        );
        assert_eq!(serde_json::from_str::<Listed>(&text).unwrap(), l);
        let c = Listed::of("bob", "/c.ts", &record(State::Complete, None));
        assert_eq!(
            c.display_line(),
            "bob /c.ts complete size=10 declared=- crc=0x1C291CA3 updated=2025-06-15T15:06:40Z"
        );
        assert!(String::from_utf8(c.to_json())
            .unwrap()
            .contains(r#""declared":null"#));
    }

    #[test]
    fn query_parameters() {
        let q = |s: &str| Filter::parse_query(Some(s));
        assert_eq!(Filter::parse_query(None).unwrap(), Filter::default());
        assert_eq!(
            q("state=verified&user=alice&x=1").unwrap(),
            Filter {
                state: Some(State::Verified),
                user: Some("alice".into())
            }
        );
        assert!(q("state=partial&state=verified").is_err());
        assert!(q("state=nope").is_err());
        let f = Filter::new(Some("mismatch"), Some("bob")).unwrap();
        assert_eq!(Filter::parse_query(Some(&f.query())).unwrap(), f);
    }

    /// A port nobody listens on.
    fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn without_a_server_the_store_is_read_directly_and_a_held_store_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |http_listen| Options {
            http_listen,
            token: None,
            state_dir: dir.path().to_path_buf(),
            store: StoreChoice::Redb,
            filter: Filter::default(),
            json: true,
        };
        let e = run(&opts(None)).unwrap_err();
        assert!(matches!(e, ListError::NoStore(_)), "{e}");
        let held = filled(dir.path());
        for listen in [None, Some(free_addr())] {
            let e = run(&opts(listen)).unwrap_err();
            assert!(matches!(e, ListError::Locked { .. }), "{e}");
            assert!(e.to_string().contains("in use"), "{e}");
        }
        drop(held);
        run(&opts(Some(free_addr()))).unwrap();
        run(&opts(None)).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_over_http() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path());
        let l = crate::http::bind("127.0.0.1:0".parse().unwrap(), Some("tok".into()))
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::http::serve(l, routes(store.clone()), async move {
            let _ = rx.await;
        }));
        let get = |target: &'static str, token: Option<&'static str>| {
            client::fetch(addr, token, target, Duration::from_secs(10))
        };
        let (status, body) = get("/uploads", Some("tok")).await.unwrap();
        assert_eq!(status, 200);
        let got: Vec<Listed> = client::lines(&body)
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(got, list(store.as_ref(), &Filter::default()).unwrap());
        let (status, body) = get("/uploads?state=complete&user=bob", Some("tok"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(client::lines(&body).len(), 1);
        let (status, body) = get("/uploads?state=bogus", Some("tok")).await.unwrap();
        assert_eq!(status, 400);
        assert!(client::error_text(&body).contains("unknown state"));
        assert_eq!(get("/uploads", None).await.unwrap().0, 401);
        assert_eq!(get("/uploads", Some("nope")).await.unwrap().0, 401);
        let _ = tx.send(());
    }
}
