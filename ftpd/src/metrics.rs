//! Prometheus metrics, served as `GET /metrics` on the HTTP listener (`http_listen`).
//!
//! Every hook is an atomic add on a `prometheus-client` metric (a counter or gauge shares one
//! atomic between its clones), so counting costs the upload path nothing it would notice.
//! A few values are read when Prometheus scrapes instead: the running uploads (the writers'
//! table) and the unfinished files (one pass over the record store, on the blocking pool, shared
//! by the scrapes of one second). The record store times its own commits ([`StoreMetrics`]).

use crate::records::{Record, RecordStore};
use crate::writers::Writers;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use crc_tools::State as RecordState;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What the record store reports: how long its write transactions take to commit. The store
/// owns one and observes every commit; see `RecordStore::metrics`.
#[derive(Debug)]
pub struct StoreMetrics {
    commit_seconds: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            // 100 µs .. about 3.3 s: a commit without fsync takes microseconds, an fsynced one
            // milliseconds, and a sick disk seconds.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

impl StoreMetrics {
    /// One write transaction's commit took `took` (failed commits included).
    pub fn commit_took(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }
}

/// True when `record` makes its file count in `ftpd_partial_files`: a closed `partial` or
/// `mismatch` record, a file waiting for a resume. An open record belongs to an upload running
/// now (counted by `ftpd_uploads_running`) or cut short by a crash (closed by recovery at the
/// next start).
pub fn unfinished(record: &Record) -> bool {
    !record.open && matches!(record.state, RecordState::Partial | RecordState::Mismatch)
}

/// Files counted by [`unfinished`] and their stored bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unfinished {
    pub files: u64,
    pub bytes: u64,
}

impl Unfinished {
    /// Counts `record` if it is [`unfinished`].
    pub fn add(&mut self, record: &Record) {
        if unfinished(record) {
            self.files += 1;
            self.bytes = self.bytes.saturating_add(record.size);
        }
    }
}

/// How long a count of the unfinished files serves later scrapes: the count is one pass over
/// the records (about 10 ms per 100,000), so scrapes in a burst share one.
const UNFINISHED_REUSE: Duration = Duration::from_secs(1);

/// The `state` label of `ftpd_uploads_total`, in the order of [`Metrics::uploads`].
const UPLOAD_STATES: [&str; 4] = ["verified", "complete", "mismatch", "interrupted"];

/// The server's metrics. One per server, in `Services`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions: Gauge,
    uploads_running: Gauge,
    upload_bytes: Counter,
    /// One counter per [`UPLOAD_STATES`] entry (clones of the family's members).
    uploads: [Counter; 4],
    key_declarations: Counter,
    resume_bytes_skipped: Counter,
    partial_files: Gauge,
    partial_bytes: Gauge,
    login_failures: Counter,
    writers: Arc<Writers>,
    store: Arc<dyn RecordStore>,
    /// The last count of the unfinished files, and when it was taken.
    counted: Mutex<Option<Instant>>,
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The metrics of a server whose running uploads are `writers` and whose records are in
    /// `store` (its commit times too, if it keeps them).
    pub fn new(writers: Arc<Writers>, store: Arc<dyn RecordStore>) -> Self {
        let mut registry = Registry::default();
        let sessions = Gauge::default();
        registry.register("ftpd_sessions", "Logged-in FTP sessions", sessions.clone());
        let uploads_running = Gauge::default();
        registry.register(
            "ftpd_uploads_running",
            "Uploads running now (files held by a writer)",
            uploads_running.clone(),
        );
        // Counters get their `_total` suffix from the encoder.
        let upload_bytes = Counter::default();
        registry.register(
            "ftpd_upload_bytes",
            "Bytes received by uploads",
            upload_bytes.clone(),
        );
        let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let uploads = UPLOAD_STATES.map(|s| family.get_or_create(&[("state", s)]).clone());
        registry.register(
            "ftpd_uploads",
            "Uploads that ended, by the state they left the file in (interrupted: partial)",
            family,
        );
        let key_declarations = Counter::default();
        registry.register(
            "ftpd_key_declarations",
            "KEY declarations accepted",
            key_declarations.clone(),
        );
        let resume_bytes_skipped = Counter::default();
        registry.register(
            "ftpd_resume_bytes_skipped",
            "Bytes that resumed uploads did not send again (their start offsets)",
            resume_bytes_skipped.clone(),
        );
        let partial_files = Gauge::default();
        registry.register(
            "ftpd_partial_files",
            "Files whose record is partial or mismatch (not being written), waiting for a resume",
            partial_files.clone(),
        );
        let partial_bytes = Gauge::default();
        registry.register(
            "ftpd_partial_bytes",
            "Bytes stored in the files counted by ftpd_partial_files",
            partial_bytes.clone(),
        );
        let login_failures = Counter::default();
        registry.register(
            "ftpd_login_failures",
            "Failed logins (each PASS the authenticator refused)",
            login_failures.clone(),
        );
        let commits = store.metrics().unwrap_or_default();
        registry.register(
            "ftpd_store_commit_seconds",
            "Commit durations of the record store's write transactions",
            commits.commit_seconds.clone(),
        );
        Metrics {
            registry,
            sessions,
            uploads_running,
            upload_bytes,
            uploads,
            key_declarations,
            resume_bytes_skipped,
            partial_files,
            partial_bytes,
            login_failures,
            writers,
            store,
            counted: Mutex::new(None),
        }
    }

    /// A session logged in; it counts in `ftpd_sessions` until the guard is dropped.
    pub fn session(&self) -> SessionGuard {
        self.sessions.inc();
        SessionGuard(self.sessions.clone())
    }

    /// The counter of bytes received by uploads, for the upload path to add to as it writes.
    pub fn upload_bytes(&self) -> Counter {
        self.upload_bytes.clone()
    }

    /// An upload ended, leaving its file in `state` (`Partial`: interrupted).
    pub fn upload_ended(&self, state: RecordState) {
        let i = match state {
            RecordState::Verified => 0,
            RecordState::Complete => 1,
            RecordState::Mismatch => 2,
            RecordState::Partial => 3,
            RecordState::Untracked => return,
        };
        self.uploads[i].inc();
    }

    /// A KEY declaration was accepted.
    pub fn key_declared(&self) {
        self.key_declarations.inc();
    }

    /// An upload was accepted at offset `start_pos` > 0: those bytes are not sent again.
    pub fn resumed(&self, start_pos: u64) {
        self.resume_bytes_skipped.inc_by(start_pos);
    }

    /// A login failed.
    pub fn login_failed(&self) {
        self.login_failures.inc();
    }

    /// Counts the unfinished files afresh unless a count younger than [`UNFINISHED_REUSE`]
    /// exists. Blocking (a pass over the record store). A store that cannot be read now leaves
    /// the last count.
    fn count_unfinished(&self) {
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        if counted.is_some_and(|t| t.elapsed() < UNFINISHED_REUSE) {
            return;
        }
        match self.store.unfinished() {
            Ok(u) => {
                self.partial_files.set(gauge_value(u.files));
                self.partial_bytes.set(gauge_value(u.bytes));
                *counted = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot count the unfinished files now");
            }
        }
    }

    /// All metrics in the Prometheus text format (0.0.4). Blocking: it may read the record
    /// store (see [`Metrics::count_unfinished`]).
    pub fn render(&self) -> String {
        self.uploads_running
            .set(gauge_value(self.writers.active() as u64));
        self.count_unfinished();
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Held by a logged-in session (its storage back-end); dropping it ends the session's count.
#[derive(Debug)]
pub struct SessionGuard(Gauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The routes of this part: `GET /metrics`.
pub fn routes(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> axum::response::Response {
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(text) => ([(CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::RedbStore;
    use std::time::SystemTime;

    /// The value of the sample `name` (with its labels, as written) in `text`.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    fn metrics() -> (tempfile::TempDir, Arc<Writers>, Arc<RedbStore>, Metrics) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path(), false).unwrap());
        let writers = Arc::new(Writers::default());
        let m = Metrics::new(writers.clone(), store.clone());
        (dir, writers, store, m)
    }

    fn record(state: RecordState, open: bool, size: u64) -> Record {
        Record {
            declared: None,
            size,
            crc: 0,
            state,
            open,
            updated: SystemTime::now(),
            file: Default::default(),
        }
    }

    #[test]
    fn every_metric_is_there_from_the_start() {
        let (_d, _, _, m) = metrics();
        let text = m.render();
        for name in [
            "ftpd_sessions",
            "ftpd_uploads_running",
            "ftpd_upload_bytes_total",
            "ftpd_uploads_total{state=\"verified\"}",
            "ftpd_uploads_total{state=\"complete\"}",
            "ftpd_uploads_total{state=\"mismatch\"}",
            "ftpd_uploads_total{state=\"interrupted\"}",
            "ftpd_key_declarations_total",
            "ftpd_resume_bytes_skipped_total",
            "ftpd_partial_files",
            "ftpd_partial_bytes",
            "ftpd_login_failures_total",
            "ftpd_store_commit_seconds_count",
        ] {
            assert_eq!(sample(&text, name), Some(0.0), "{name} in\n{text}");
        }
        assert!(text.contains("# TYPE ftpd_store_commit_seconds histogram"));
        assert!(text.contains("# TYPE ftpd_sessions gauge"));
        assert!(text.contains("# TYPE ftpd_upload_bytes_total counter"));
    }

    #[test]
    fn hooks_count() {
        let (_d, writers, _, m) = metrics();
        let a = m.session();
        let b = m.session();
        drop(a);
        m.upload_bytes().inc_by(1000);
        m.upload_bytes().inc_by(24);
        for s in [
            RecordState::Verified,
            RecordState::Verified,
            RecordState::Complete,
            RecordState::Mismatch,
            RecordState::Partial,
            RecordState::Untracked,
        ] {
            m.upload_ended(s);
        }
        m.key_declared();
        m.resumed(4096);
        m.login_failed();
        m.login_failed();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _lock = rt
            .block_on(writers.acquire(("u".into(), "/f".into()), Duration::from_secs(1)))
            .unwrap();
        let text = m.render();
        for (name, v) in [
            ("ftpd_sessions", 1.0),
            ("ftpd_uploads_running", 1.0),
            ("ftpd_upload_bytes_total", 1024.0),
            ("ftpd_uploads_total{state=\"verified\"}", 2.0),
            ("ftpd_uploads_total{state=\"complete\"}", 1.0),
            ("ftpd_uploads_total{state=\"mismatch\"}", 1.0),
            ("ftpd_uploads_total{state=\"interrupted\"}", 1.0),
            ("ftpd_key_declarations_total", 1.0),
            ("ftpd_resume_bytes_skipped_total", 4096.0),
            ("ftpd_login_failures_total", 2.0),
        ] {
            assert_eq!(sample(&text, name), Some(v), "{name} in\n{text}");
        }
        drop(b);
        assert_eq!(sample(&m.render(), "ftpd_sessions"), Some(0.0));
    }

    #[test]
    fn unfinished_files_are_counted_from_the_store() {
        let (_d, _, store, m) = metrics();
        let commits = |m: &Metrics| sample(&m.render(), "ftpd_store_commit_seconds_count");
        let before = commits(&m).unwrap();
        use RecordState::*;
        for (p, r) in [
            ("/p", record(Partial, false, 100)),
            ("/m", record(Mismatch, false, 20)),
            ("/running", record(Partial, true, 7)),
            ("/v", record(Verified, false, 1000)),
            ("/c", record(Complete, false, 1000)),
        ] {
            store.put("u", p, &r).unwrap();
        }
        store.put("w", "/p", &record(Partial, false, 3)).unwrap();
        *m.counted.lock().unwrap() = None;
        let text = m.render();
        assert_eq!(sample(&text, "ftpd_partial_files"), Some(3.0), "{text}");
        assert_eq!(sample(&text, "ftpd_partial_bytes"), Some(123.0), "{text}");
        assert_eq!(commits(&m), Some(before + 6.0), "one commit per put");
        // A resumed file that completes leaves the count (once the last count is old enough).
        store.put("u", "/p", &record(Verified, false, 150)).unwrap();
        *m.counted.lock().unwrap() = None;
        let text = m.render();
        assert_eq!(sample(&text, "ftpd_partial_files"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "ftpd_partial_bytes"), Some(23.0), "{text}");
    }

    #[test]
    fn only_closed_partial_and_mismatch_records_are_unfinished() {
        use RecordState::*;
        assert!(unfinished(&record(Partial, false, 7)));
        assert!(unfinished(&record(Mismatch, false, 9)));
        assert!(!unfinished(&record(Partial, true, 7)));
        for s in [Verified, Complete, Untracked] {
            assert!(!unfinished(&record(s, false, 7)));
        }
    }
}
