//! The upload journal: one event per change the records go through at the end of something a
//! client (or the server) did: an upload's end, a DELE, a rename, an expiry.
//!
//! # Guarantees
//! - **Same transaction.** The record store appends each event in the write transaction (redb's,
//!   or PostgreSQL's with `store = "postgres"`) that changes the record it describes ([`RecordStore::end_upload`],
//!   [`RecordStore::remove_and_journal`], [`RecordStore::rename_and_journal`]): a crash loses
//!   both or neither.
//! - **Sequence numbers without gaps.** `seq` is allocated inside that transaction from a
//!   counter stored next to the events, so it is strictly increasing, starts at 1, survives
//!   restarts and crashes, and every number up to [`Journal::last_seq`] was given to exactly
//!   one event (a failed transaction allocates nothing). In PostgreSQL the counter is one row
//!   that every node's appending transaction locks until its commit: one sequence for all.
//! - **Retention.** Events older than `journal_keep_days` are pruned from the oldest end only
//!   ([`Journal::retain`]), so the events kept are always one contiguous run
//!   `oldest..=last_seq`. Asking for events after a `seq` that is no longer kept answers
//!   [`JournalError::Gone`] (HTTP `410`): the reader missed events and must resync.
//! - **Checkpoints are not events**: only the end of an upload is.
//! - An upload cut short by a crash is journaled when start-up reconciles its record
//!   ([`crate::records::recovery`]), so no upload's end is missing.
//!
//! # Reading it (for a webhook sender or any other consumer)
//! ```no_run
//! # async fn demo(journal: ftpd::records::journal::Journal) -> Result<(), ftpd::records::journal::JournalError> {
//! use std::time::Duration;
//! let mut cursor = 0; // the last seq this consumer has handled, kept durably by the consumer
//! loop {
//!     // Events with seq > cursor, at most 1000, waiting up to 30 s when there are none yet.
//!     let events = journal.wait_since(cursor, 1000, Duration::from_secs(30)).await?;
//!     for e in &events {
//!         // deliver e (e.to_json() is the line /events serves) ...
//!         cursor = e.seq;
//!     }
//! }
//! # }
//! ```
//! Or, for a custom loop, [`Journal::subscribe`] gives a `watch::Receiver<u64>` of the last
//! committed seq: subscribe, read with [`Journal::since`], and when nothing is new, wait with
//! `rx.wait_for(|&last| last > cursor)`. Subscribing before reading means no event can slip in
//! between unseen. `since` reads the store: call it from a blocking context or through
//! `spawn_blocking` (the `wait_since` helper does).
//!
//! On [`JournalError::Gone`] (the cursor is older than what is kept) or
//! [`JournalError::Ahead`] (the cursor is past the last event: the store was replaced), a
//! consumer resyncs from the files themselves and restarts from `oldest - 1`.
//!
//! # Writing it (for the expiry sweep, or any new change to the records)
//! Never append an event on its own: change the record through the store method that
//! journals it, so that both are one transaction. For an expiry, with the file's writer lock
//! held (`Writers::acquire`, as DELE does) so that no upload runs on it:
//! ```no_run
//! # fn demo(store: &dyn ftpd::records::RecordStore, root: &cap_std::fs::Dir) -> Result<(), Box<dyn std::error::Error>> {
//! use ftpd::records::journal::{Kind, Seen};
//! let (user, path) = ("alice", "/old.ts");
//! // What the file is just before it goes: the event trusts the record only if it still
//! // describes this file (else the event says `untracked`, with the file's size).
//! let seen = root.symlink_metadata("old.ts").map_or(Seen::Unknown, |m| Seen::of(&m));
//! root.remove_file("old.ts")?;
//! // Removes the record and appends {"kind":"expire",…} in one transaction; blocking.
//! let event = store.remove_and_journal(Kind::Expire, user, path, seen)?;
//! # let _ = event; Ok(()) }
//! ```
//! The returned [`Event`] carries its `seq`; waiting readers are woken after the commit.
//!
//! # The event (one JSON object, one line on `/events`)
//! `{"seq":7,"time":"2025-06-01T10:00:00.123Z","kind":"upload","user":"alice","path":"/a.ts",
//! "size":1048576,"crc":"0x1C291CA3","declared":"0x1C291CA3","state":"verified"}`
//! with `"from"` after `"path"` for a rename. See [`Event`] for each field.

pub mod client;

use crate::records::{FileId, Record, RecordStore, StoreError};
use crc_tools::{KeyValue, State};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An upload ended (verified, complete, mismatch or interrupted).
    Upload,
    /// A DELE removed the file.
    Delete,
    /// An RNFR/RNTO moved the file (or directory) from `from` to `path`.
    Rename,
    /// The server's expiry removed the file.
    Expire,
}

/// What the event's record says of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    /// The whole file's CRC equals the declared one.
    Verified,
    /// The upload ended without a declared CRC.
    Complete,
    /// The upload ended and the file's CRC differs from the declared one (bytes kept).
    Mismatch,
    /// The upload stopped before its end (connection lost, stalled, taken over, shutdown,
    /// crash): the record's `partial`. `size` and `crc` are those of the bytes stored.
    Interrupted,
    /// The server held no record that describes the file (not uploaded through FTP, or changed
    /// behind the server's back): `crc` and `declared` are null.
    Untracked,
    /// A directory (a rename of a directory moves the records below it): `size` 0, `crc` null.
    Directory,
}

impl EventState {
    /// The state of an event that describes `record`.
    pub fn of(record: &Record) -> Self {
        if record.open {
            return EventState::Interrupted;
        }
        match record.state {
            State::Verified => EventState::Verified,
            State::Complete => EventState::Complete,
            State::Mismatch => EventState::Mismatch,
            State::Partial => EventState::Interrupted,
            State::Untracked => EventState::Untracked,
        }
    }

    /// The word in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Verified => "verified",
            EventState::Complete => "complete",
            EventState::Mismatch => "mismatch",
            EventState::Interrupted => "interrupted",
            EventState::Untracked => "untracked",
            EventState::Directory => "directory",
        }
    }
}

impl Kind {
    /// The word in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Upload => "upload",
            Kind::Delete => "delete",
            Kind::Rename => "rename",
            Kind::Expire => "expire",
        }
    }
}

/// One journal event. Serialised (with [`Event::to_json`]) as one JSON object, fields in this
/// order; the store keeps exactly these bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the journal: 1, 2, 3, … without gaps.
    pub seq: u64,
    /// When the change was committed (RFC 3339, UTC, milliseconds).
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    pub kind: Kind,
    /// The account whose file it is.
    pub user: String,
    /// The file, absolute within the user's root (`/dir/a.ts`); for a rename, the new name.
    pub path: String,
    /// For a rename only: the old name (absent from the JSON otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Bytes of the file the record describes (for a delete or an expiry: before it).
    pub size: u64,
    /// CRC-32 of those bytes as KEY writes it (`0x1C291CA3`); null when untracked.
    #[serde(with = "key_value")]
    pub crc: Option<u32>,
    /// The CRC the client declared with KEY, same format; null when none was declared.
    #[serde(with = "key_value")]
    pub declared: Option<u32>,
    pub state: EventState,
}

impl Event {
    /// An event about `record` (its size, CRC, declaration and state), `seq` still unset: the
    /// store allocates it when it appends the event.
    pub fn of_record(kind: Kind, user: &str, path: &str, record: &Record) -> Self {
        Event {
            seq: 0,
            time: now(),
            kind,
            user: user.to_string(),
            path: path.to_string(),
            from: None,
            size: record.size,
            crc: Some(record.crc),
            declared: record.declared,
            state: EventState::of(record),
        }
    }

    /// An event about `path` as `seen` just before the change, with its `record` if any: the
    /// record when it describes the file (or nothing better is known), else an untracked file.
    pub fn of_change(
        kind: Kind,
        user: &str,
        path: &str,
        record: Option<&Record>,
        seen: Seen,
    ) -> Self {
        let trusted = record.filter(|r| match seen {
            Seen::File { len, id } => r.describes(len, id),
            Seen::Directory => false,
            Seen::Unknown => true,
        });
        match (trusted, seen) {
            (Some(r), _) => Event::of_record(kind, user, path, r),
            (None, seen) => Event {
                seq: 0,
                time: now(),
                kind,
                user: user.to_string(),
                path: path.to_string(),
                from: None,
                size: match seen {
                    Seen::File { len, .. } => len,
                    _ => 0,
                },
                crc: None,
                declared: None,
                state: match seen {
                    Seen::Directory => EventState::Directory,
                    _ => EventState::Untracked,
                },
            },
        }
    }

    /// The same event for a rename from `from`.
    pub fn renamed_from(self, from: &str) -> Self {
        Event {
            from: Some(from.to_string()),
            ..self
        }
    }

    /// The JSON object, as stored and served (no newline).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads what [`Event::to_json`] wrote.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// One readable line (`ftpd events` without `--json`).
    pub fn display_line(&self) -> String {
        let time = rfc3339::format(self.time);
        let what = match &self.from {
            Some(from) => format!("{} -> {}", from, self.path),
            None => self.path.clone(),
        };
        let opt = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| KeyValue(v).to_string());
        format!(
            "{:>8} {} {:<7} {:<11} {} {} size={} crc={} declared={}",
            self.seq,
            time,
            self.kind.as_str(),
            self.state.as_str(),
            self.user,
            what,
            self.size,
            opt(self.crc),
            opt(self.declared),
        )
    }
}

/// Now, to the millisecond the JSON keeps, so an event returned by the store equals the one
/// read back.
fn now() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// What the file system showed of the file a delete, rename or expiry is about, just before
/// the change; it decides whether the record still describes the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A regular file of `len` bytes with identity `id`.
    File { len: u64, id: FileId },
    /// A directory.
    Directory,
    /// Not looked at, or neither (a symlink, gone): the record is taken as it is.
    Unknown,
}

impl Seen {
    /// From a cap-std metadata (not following a last symlink is the caller's choice).
    pub fn of(meta: &cap_std::fs::Metadata) -> Self {
        use cap_std::fs::MetadataExt;
        if meta.is_file() {
            Seen::File {
                len: meta.len(),
                id: FileId::new(meta.ino(), meta.mtime(), meta.mtime_nsec()),
            }
        } else if meta.is_dir() {
            Seen::Directory
        } else {
            Seen::Unknown
        }
    }
}

/// Events as the store reads them, in one consistent snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JournalPage {
    /// The oldest seq still kept (`last + 1` when none is kept).
    pub oldest: u64,
    /// The last seq ever allocated (0 for a new journal).
    pub last: u64,
    /// `(seq, JSON)` of the events asked for, in order.
    pub events: Vec<(u64, Vec<u8>)>,
}

/// Why events cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Events after the asked seq were pruned: the reader missed some and must resync. The
    /// oldest event kept is `oldest` (ask again with `since = oldest - 1`).
    #[error("events after seq {since} are no longer kept (the oldest kept is {oldest}): resync")]
    Gone { since: u64, oldest: u64 },
    /// The asked seq is past the last event: this journal is not the one the reader followed
    /// (the state directory was replaced). Resync, then follow from `last`.
    #[error("seq {since} is past the last event {last}: the journal was replaced; resync")]
    Ahead { since: u64, last: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server is shutting down (a long-poll ended early; see [`Journal::close`]).
    #[error("the journal is closed")]
    Closed,
}

/// Most events one read returns.
pub const LIMIT_MAX: usize = 10_000;

/// The read side of the journal, cheap to clone. The store owns the events; this adds the
/// retention, the `Gone` rule and the waiting.
#[derive(Clone)]
pub struct Journal {
    store: Arc<dyn RecordStore>,
    keep: Duration,
    closed: CancellationToken,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("keep", &self.keep)
            .field("last_seq", &self.last_seq())
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// The journal of `store`, keeping events for `keep`.
    pub fn new(store: Arc<dyn RecordStore>, keep: Duration) -> Self {
        Journal {
            store,
            keep,
            closed: CancellationToken::new(),
        }
    }

    /// The last committed seq (0 when nothing was journaled yet). No store access.
    pub fn last_seq(&self) -> u64 {
        *self.store.journal_watch().borrow()
    }

    /// The last committed seq, as it changes: `changed()` / `wait_for(|&s| s > cursor)` wake
    /// once an event with a higher seq is committed (the value only grows).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.store.journal_watch()
    }

    /// Events with `seq > since`, oldest first, at most `limit` (1 to [`LIMIT_MAX`]; clamped).
    /// Empty when there are none yet. Blocking (reads the store).
    pub fn since(&self, since: u64, limit: usize) -> Result<Vec<Event>, JournalError> {
        Ok(self
            .since_json(since, limit)?
            .into_iter()
            .filter_map(|(seq, json)| match Event::from_json(&json) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(seq, error = %e, "skipping a journal event that cannot be decoded");
                    None
                }
            })
            .collect())
    }

    /// As [`Journal::since`], the events as their stored JSON (what `/events` serves).
    pub fn since_json(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, JournalError> {
        let page = self.store.journal_page(since, limit.clamp(1, LIMIT_MAX))?;
        check(since, &page)?;
        Ok(page.events)
    }

    /// Events with `seq > since` as [`Journal::since`] returns them; when there are none yet,
    /// waits up to `wait` for one and returns as soon as it is committed (empty after `wait`).
    /// Async: the store is read on the blocking pool.
    pub async fn wait_since(
        &self,
        since: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Event>, JournalError> {
        let json = self.wait_since_json(since, limit, wait).await?;
        Ok(json
            .into_iter()
            .filter_map(|(_, j)| Event::from_json(&j).ok())
            .collect())
    }

    /// As [`Journal::wait_since`], the events as their stored JSON.
    pub async fn wait_since_json(
        &self,
        since: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<(u64, Vec<u8>)>, JournalError> {
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed before reading: an event committed after the read wakes the wait.
        let mut rx = self.subscribe();
        loop {
            let this = self.clone();
            let events = tokio::task::spawn_blocking(move || this.since_json(since, limit))
                .await
                .map_err(|e| StoreError::from(redb::Error::Io(std::io::Error::other(e))))??;
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(events);
            }
            tokio::select! {
                r = rx.wait_for(|&last| last > since) => {
                    if r.is_err() {
                        return Err(JournalError::Closed);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                _ = self.closed.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Ends every running and future wait at once (with what is there, usually nothing), so
    /// that shutdown does not wait for long-polls.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// True once [`Journal::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// How long events are kept.
    pub fn keep(&self) -> Duration {
        self.keep
    }

    /// Prunes the events older than the retention, in batches so that uploads' commits are
    /// never held up for long; returns how many went. Blocking.
    pub fn prune(&self) -> Result<usize, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(self.keep)
            .unwrap_or(UNIX_EPOCH);
        self.prune_before(cutoff)
    }

    /// Prunes events older than `cutoff` (see [`Journal::prune`]).
    pub fn prune_before(&self, cutoff: SystemTime) -> Result<usize, StoreError> {
        const BATCH: usize = 1000;
        let mut total = 0;
        loop {
            let n = self.store.journal_prune(cutoff, BATCH)?;
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    /// Prunes now and then every `every` until [`Journal::close`]; spawn it once per server.
    pub async fn retain(self, every: Duration) {
        loop {
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.prune()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    tracing::info!(pruned = n, keep = ?self.keep, "journal: old events pruned")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "journal: cannot prune old events"),
                Err(e) => tracing::warn!(error = %e, "journal: pruning failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.closed.cancelled() => return,
            }
        }
    }
}

/// Most seconds `/events` long-polls (`wait` above it is taken as it).
pub const WAIT_MAX: u64 = 60;
/// Events `/events` returns when no `limit` is given.
pub const LIMIT_DEFAULT: usize = 1000;

/// `GET /events?since=N&limit=M&wait=S`, for the HTTP listener (`http.rs` adds the token):
/// the events with `seq > N` as JSON lines (`application/x-ndjson`), at most `M` (default
/// 1000, at most 10000). With none yet and `wait` > 0, the request waits up to `S` seconds
/// (at most 60) and answers as soon as one is committed; an empty body means none came.
/// `since` is required. The header `X-Journal-Last-Seq` gives the last committed seq.
/// `410` when events after `N` are no longer kept (or `N` is past the last
/// event: another journal), with a JSON body; `400` for a missing or bad parameter.
pub fn routes(journal: Journal) -> axum::Router {
    axum::Router::new()
        .route("/events", axum::routing::get(events))
        .with_state(journal)
}

/// The parameters of `/events`.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    since: u64,
    limit: usize,
    wait: Duration,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let (mut since, mut limit, mut wait) = (None, None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "since" => &mut since,
                "limit" => &mut limit,
                "wait" => &mut wait,
                _ => continue,
            };
            if slot.is_some() {
                return Err(format!("`{name}` is given twice"));
            }
            let n = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| format!("`{name}` must be a whole number, not '{value}'"))?;
            *slot = Some(n);
        }
        let since = since.ok_or("`since` is required: the last seq seen (0 for everything)")?;
        let limit = match limit {
            None => LIMIT_DEFAULT,
            Some(0) => return Err("`limit` must be at least 1".into()),
            Some(n) => usize::try_from(n).unwrap_or(LIMIT_MAX).min(LIMIT_MAX),
        };
        let wait = Duration::from_secs(wait.unwrap_or(0).min(WAIT_MAX));
        Ok(Query { since, limit, wait })
    }
}

async fn events(
    axum::extract::State(journal): axum::extract::State<Journal>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let json_error = |status: StatusCode, body: serde_json::Value| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{body}\n"),
        )
            .into_response()
    };
    let q = match Query::parse(query.as_deref()) {
        Ok(q) => q,
        Err(e) => {
            return json_error(StatusCode::BAD_REQUEST, serde_json::json!({"error": e}));
        }
    };
    match journal.wait_since_json(q.since, q.limit, q.wait).await {
        Ok(events) => {
            let mut body = Vec::with_capacity(events.iter().map(|e| e.1.len() + 1).sum());
            for (_, json) in &events {
                body.extend_from_slice(json);
                body.push(b'\n');
            }
            let last = journal.last_seq();
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                    (
                        header::HeaderName::from_static("x-journal-last-seq"),
                        last.to_string(),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Err(e @ JournalError::Gone { oldest, .. }) => json_error(
            StatusCode::GONE,
            serde_json::json!({"error": e.to_string(), "oldest": oldest}),
        ),
        Err(e @ JournalError::Ahead { last, .. }) => json_error(
            StatusCode::GONE,
            serde_json::json!({"error": e.to_string(), "last": last}),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "GET /events failed");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": e.to_string()}),
            )
        }
    }
}

/// The rule for reading after `since`: nothing may be missing in between.
fn check(since: u64, page: &JournalPage) -> Result<(), JournalError> {
    if since.saturating_add(1) < page.oldest {
        return Err(JournalError::Gone {
            since,
            oldest: page.oldest,
        });
    }
    if since > page.last {
        return Err(JournalError::Ahead {
            since,
            last: page.last,
        });
    }
    Ok(())
}

/// RFC 3339 times with milliseconds, in UTC.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn format(t: SystemTime) -> String {
        // humantime shows 1970 to 9999 only.
        const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
        let t = t.clamp(
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_secs(LAST_SECOND_OF_9999),
        );
        humantime::format_rfc3339_millis(t).to_string()
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// CRCs as KEY writes them (`0x` and 8 upper-case hex digits), or null.
mod key_value {
    use crc_tools::KeyValue;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(&KeyValue(*v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| {
            s.parse::<KeyValue>()
                .map(|k| k.0)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::RedbStore;

    fn open(dir: &std::path::Path) -> Arc<dyn RecordStore> {
        Arc::new(RedbStore::open(dir, false).expect("store"))
    }

    fn ended(declared: Option<u32>, size: u64, crc: u32, state: State) -> Record {
        Record {
            state,
            open: false,
            ..Record::opened(declared, size, crc)
        }
    }

    #[test]
    fn events_carry_the_fields_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let r = ended(Some(0x1C29_1CA3), 1_048_576, 0x1C29_1CA3, State::Verified);
        let e = s.end_upload("alice", "/dir/a.ts", &r).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        let time = v["time"].as_str().unwrap().to_string();
        assert!(humantime::parse_rfc3339(&time).is_ok(), "{time}");
        assert_eq!(
            v,
            serde_json::json!({"seq": 1, "time": time, "kind": "upload", "user": "alice",
                "path": "/dir/a.ts", "size": 1_048_576, "crc": "0x1C291CA3",
                "declared": "0x1C291CA3", "state": "verified"})
        );
        // Field order as documented.
        let text = String::from_utf8(e.to_json()).unwrap();
        assert!(text.starts_with(r#"{"seq":1,"time":""#), "{text}");
        assert!(text.ends_with(r#""declared":"0x1C291CA3","state":"verified"}"#));

        let partial = Record::opened(None, 5, 0xAB);
        let e = s.end_upload("alice", "/p.ts", &partial).unwrap();
        assert_eq!(
            (e.state, e.declared, e.crc),
            (EventState::Interrupted, None, Some(0xAB))
        );
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(
            (&v["crc"], &v["declared"]),
            (&serde_json::json!("0x000000AB"), &serde_json::Value::Null)
        );

        let e = s
            .rename_and_journal("alice", "/p.ts", "/q.ts", Seen::Unknown)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(
            (&v["from"], &v["path"]),
            (&serde_json::json!("/p.ts"), &serde_json::json!("/q.ts"))
        );
        assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
        assert!(
            e.display_line()
                .contains("rename  interrupted alice /p.ts -> /q.ts size=5"),
            "{}",
            e.display_line()
        );
    }
}
