//! The records and the journal in SQL: each call of the store as one statement, or as one
//! transaction when a change and its event go together.

use super::claims::holds;
use super::columns::{self, Values};
use super::listen;
use crate::metrics::{StoreMetrics, Unfinished};
use crate::records::journal::{Event, JournalPage, Kind, Seen};
use crate::records::store::{Lease, StoreError};
use crate::records::Record;
use deadpool_postgres::{GenericClient, Pool, Transaction};
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_postgres::IsolationLevel;

/// The latest time a journal cutoff is taken as (9999-12-31T23:59:59Z), in microseconds.
const CUTOFF_MAX_US: u128 = 253_402_300_799_000_000;

/// The async side: the pool and what the calls share.
#[derive(Clone)]
pub(super) struct Db {
    pub(super) pool: Pool,
    /// Commit durations, for `ftpd_store_commit_seconds`.
    pub(super) metrics: Arc<StoreMetrics>,
    /// The last committed journal seq: raised by local commits and by the LISTEN connection.
    pub(super) journal_seq: Arc<watch::Sender<u64>>,
}

static UPSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO ftpd_records (username, path, {}) VALUES ($1, $2, {}) \
         ON CONFLICT (username, path) DO UPDATE SET {}",
        columns::NAMES,
        columns::placeholders(3),
        columns::UPDATE_ALL
    )
});
static GET: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM ftpd_records WHERE username = $1 AND path = $2",
        columns::SELECT
    )
});
static REMOVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM ftpd_records WHERE username = $1 AND path = $2 RETURNING {}",
        columns::SELECT
    )
});
/// `path` is `$2` or below it (`$2/…`: '/' + 1 == '0', in byte order).
const IN_FROM: &str = "(path = $2 OR (path >= $2 || '/' AND path < $2 || '0'))";
/// Removes the records that a move from `$2` to `$3` replaces (those not moving themselves).
static RENAME_CLEAR: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM ftpd_records WHERE username = $1 AND NOT {IN_FROM} AND path IN \
         (SELECT $3 || substr(path, length($2) + 1) FROM ftpd_records \
          WHERE username = $1 AND {IN_FROM})"
    )
});
/// Moves `$2` and everything below it to `$3`; returns what `$2` itself held.
static RENAME_MOVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE ftpd_records SET path = $3 || substr(path, length($2) + 1) \
         WHERE username = $1 AND {IN_FROM} RETURNING path = $3, {}",
        columns::SELECT
    )
});
static RECORDS_ALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT username, path, {} FROM ftpd_records ORDER BY username, path",
        columns::SELECT
    )
});
static RECORDS_OF: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT username, path, {} FROM ftpd_records WHERE username = $1 ORDER BY path",
        columns::SELECT
    )
});
static RECORDS_OPEN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT username, path, {} FROM ftpd_records WHERE open ORDER BY username, path",
        columns::SELECT
    )
});
/// `metrics::unfinished` in SQL: closed records that are partial or mismatched.
const UNFINISHED: &str = "SELECT count(*)::int8, COALESCE(sum(size), 0)::int8 FROM ftpd_records \
     WHERE NOT open AND state IN ('partial', 'mismatch')";
const NEXT_SEQ: &str =
    "UPDATE ftpd_counters SET value = value + 1 WHERE name = 'journal.seq' RETURNING value";
const LAST_SEQ: &str = "SELECT value FROM ftpd_counters WHERE name = 'journal.seq'";
/// Stores the event and notifies the LISTEN connections ([`listen::JOURNAL_CHANNEL`]),
/// delivered at commit.
const APPEND: &str = "WITH e AS (INSERT INTO ftpd_journal (seq, time, event) \
     VALUES ($1, timestamptz 'epoch' + $2::int8 * interval '1 millisecond', $3::text::json) \
     RETURNING seq) SELECT pg_notify('ftpd_journal', seq::text) FROM e";

/// A row's record, or `None` (logged) when it cannot be read: the file counts as untracked.
fn decoded(user: &str, path: &str, row: &tokio_postgres::Row, first: usize) -> Option<Record> {
    match columns::record(row, first) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(%user, %path, error = %e, "ignoring a checksum record that cannot be read; the file counts as untracked");
            None
        }
    }
}

impl Db {
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Commits `txn`, timing it for `ftpd_store_commit_seconds`.
    pub(super) async fn commit(&self, txn: Transaction<'_>) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = txn.commit().await;
        self.metrics.commit_took(started.elapsed());
        Ok(result?)
    }

    pub(super) async fn get(&self, user: &str, path: &str) -> Result<Option<Record>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&GET).await?;
        let row = client.query_opt(&stmt, &[&user, &path]).await?;
        Ok(row.and_then(|row| decoded(user, path, &row, 0)))
    }

    /// One statement, committed on its own (one round trip: checkpoints call it often).
    pub(super) async fn put(
        &self,
        user: &str,
        path: &str,
        values: &Values,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let started = Instant::now();
        upsert(&client, user, path, values).await?;
        self.metrics.commit_took(started.elapsed());
        Ok(())
    }

    pub(super) async fn remove(&self, user: &str, path: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        remove_in(&client, user, path).await?;
        Ok(())
    }

    pub(super) async fn rename(&self, user: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        rename_in(&txn, user, from, to).await?;
        self.commit(txn).await
    }

    pub(super) async fn records(
        &self,
        user: Option<&str>,
        open_only: bool,
    ) -> Result<Vec<(String, String, Record)>, StoreError> {
        let client = self.client().await?;
        let rows = match (user, open_only) {
            (Some(u), _) => {
                let stmt = client.prepare_cached(&RECORDS_OF).await?;
                client.query(&stmt, &[&u]).await?
            }
            (None, true) => {
                let stmt = client.prepare_cached(&RECORDS_OPEN).await?;
                client.query(&stmt, &[]).await?
            }
            (None, false) => {
                let stmt = client.prepare_cached(&RECORDS_ALL).await?;
                client.query(&stmt, &[]).await?
            }
        };
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            let (u, p): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            if let Some(r) = decoded(&u, &p, &row, 2) {
                found.push((u, p, r));
            }
        }
        Ok(found)
    }

    pub(super) async fn unfinished(&self) -> Result<Unfinished, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(UNFINISHED).await?;
        let row = client.query_one(&stmt, &[]).await?;
        let (files, bytes): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok(Unfinished {
            files: u64::try_from(files).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
        })
    }

    /// Appends `event` in `txn` under the next seq; returns it with its seq. The counter
    /// row stays locked until the commit, so seqs are given out in commit order, without gaps
    /// across every node.
    pub(super) async fn append(
        &self,
        txn: &Transaction<'_>,
        mut event: Event,
    ) -> Result<Event, StoreError> {
        let stmt = txn.prepare_cached(NEXT_SEQ).await?;
        let seq: i64 = txn.query_one(&stmt, &[]).await?.try_get(0)?;
        event.seq = u64::try_from(seq)
            .map_err(|_| StoreError::Shared(format!("the journal counter is {seq}")))?;
        let json = String::from_utf8_lossy(&event.to_json()).into_owned();
        let stmt = txn.prepare_cached(APPEND).await?;
        txn.query(&stmt, &[&seq, &columns::millis(event.time), &json])
            .await?;
        Ok(event)
    }

    /// Commits `txn` holding an appended event, then tells this node's readers.
    pub(super) async fn commit_event(
        &self,
        txn: Transaction<'_>,
        event: Event,
    ) -> Result<Event, StoreError> {
        self.commit(txn).await?;
        listen::raise(&self.journal_seq, event.seq);
        Ok(event)
    }

    pub(super) async fn end_upload(
        &self,
        user: &str,
        path: &str,
        record: &Record,
        lease: Option<&Lease>,
    ) -> Result<Event, StoreError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        if let Some(lease) = lease {
            holds(&txn, user, path, lease).await?;
        }
        upsert(&txn, user, path, &Values::of(record)).await?;
        let event = self
            .append(&txn, Event::of_record(Kind::Upload, user, path, record))
            .await?;
        self.commit_event(txn, event).await
    }

    pub(super) async fn put_fenced(
        &self,
        user: &str,
        path: &str,
        values: &Values,
        lease: &Lease,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        holds(&txn, user, path, lease).await?;
        upsert(&txn, user, path, values).await?;
        self.commit(txn).await
    }

    pub(super) async fn remove_and_journal(
        &self,
        kind: Kind,
        user: &str,
        path: &str,
        seen: Seen,
    ) -> Result<Event, StoreError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        let old = remove_in(&txn, user, path).await?;
        let event = Event::of_change(kind, user, path, old.as_ref(), seen);
        let event = self.append(&txn, event).await?;
        self.commit_event(txn, event).await
    }

    pub(super) async fn rename_and_journal(
        &self,
        user: &str,
        from: &str,
        to: &str,
        seen: Seen,
    ) -> Result<Event, StoreError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await?;
        remove_in(&txn, user, to).await?;
        let moved = rename_in(&txn, user, from, to).await?;
        let event =
            Event::of_change(Kind::Rename, user, to, moved.as_ref(), seen).renamed_from(from);
        let event = self.append(&txn, event).await?;
        self.commit_event(txn, event).await
    }

    pub(super) async fn journal_page(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<JournalPage, StoreError> {
        let mut client = self.client().await?;
        // One snapshot: the counter, the oldest kept and the events agree.
        let txn = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let stmt = txn.prepare_cached(LAST_SEQ).await?;
        let last: i64 = txn.query_one(&stmt, &[]).await?.try_get(0)?;
        let last = u64::try_from(last).unwrap_or(0);
        let stmt = txn
            .prepare_cached("SELECT min(seq) FROM ftpd_journal")
            .await?;
        let oldest: Option<i64> = txn.query_one(&stmt, &[]).await?.try_get(0)?;
        let oldest = oldest.map_or(last + 1, |s| u64::try_from(s).unwrap_or(0));
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let stmt = txn
            .prepare_cached(
                "SELECT seq, event::text FROM ftpd_journal WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .await?;
        let mut events = Vec::new();
        for row in txn.query(&stmt, &[&after, &limit]).await? {
            let (seq, json): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
            events.push((u64::try_from(seq).unwrap_or(0), json.into_bytes()));
        }
        txn.commit().await?;
        Ok(JournalPage {
            oldest,
            last,
            events,
        })
    }

    pub(super) async fn journal_prune(
        &self,
        before: SystemTime,
        max: usize,
    ) -> Result<usize, StoreError> {
        // `time < before` exactly: times are whole microseconds, so compare with `before`
        // rounded up to one.
        let before_us = before
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().div_ceil(1000))
            .min(CUTOFF_MAX_US) as i64;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT seq, time < timestamptz 'epoch' + $1::int8 * interval '1 microsecond' \
                 FROM ftpd_journal ORDER BY seq LIMIT $2",
            )
            .await?;
        let rows = client.query(&stmt, &[&before_us, &max]).await?;
        // Only ever from the oldest end: up to the first event that is not old enough.
        let mut last_old = None;
        for row in &rows {
            let (seq, old): (i64, bool) = (row.try_get(0)?, row.try_get(1)?);
            if !old {
                break;
            }
            last_old = Some(seq);
        }
        let Some(last_old) = last_old else {
            return Ok(0);
        };
        let started = Instant::now();
        let stmt = client
            .prepare_cached("DELETE FROM ftpd_journal WHERE seq <= $1")
            .await?;
        let n = client.execute(&stmt, &[&last_old]).await?;
        self.metrics.commit_took(started.elapsed());
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Writes the record of `path` in `txn`.
pub(super) async fn upsert(
    txn: &impl GenericClient,
    user: &str,
    path: &str,
    values: &Values,
) -> Result<(), StoreError> {
    let stmt = txn.prepare_cached(&UPSERT).await?;
    let v = values.params();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] =
        [&user, &path, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]];
    txn.execute(&stmt, &params).await?;
    Ok(())
}

/// Removes the record of `path` in `txn`; returns it (`None` when there was none or it cannot
/// be read).
pub(super) async fn remove_in(
    txn: &impl GenericClient,
    user: &str,
    path: &str,
) -> Result<Option<Record>, StoreError> {
    let stmt = txn.prepare_cached(&REMOVE).await?;
    let row = txn.query_opt(&stmt, &[&user, &path]).await?;
    Ok(row.and_then(|row| decoded(user, path, &row, 0)))
}

/// Moves the record of `from` (and everything below it) to `to` in `txn`, replacing those
/// there; returns the record `from` itself had.
pub(super) async fn rename_in(
    txn: &Transaction<'_>,
    user: &str,
    from: &str,
    to: &str,
) -> Result<Option<Record>, StoreError> {
    let clear = txn.prepare_cached(&RENAME_CLEAR).await?;
    txn.execute(&clear, &[&user, &from, &to]).await?;
    let moving = txn.prepare_cached(&RENAME_MOVE).await?;
    let mut moved = None;
    for row in txn.query(&moving, &[&user, &from, &to]).await? {
        if row.try_get::<_, bool>(0)? {
            moved = decoded(user, to, &row, 1);
        }
    }
    Ok(moved)
}
