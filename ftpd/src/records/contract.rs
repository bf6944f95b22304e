//! What every [`RecordStore`] promises, as one suite run against each store: the embedded
//! [`RedbStore`] (`contract::redb::…`) and [`PgStore`] (`contract::postgres::…`, skipped
//! without PostgreSQL, see `postgres/testdb.rs`).

use crate::records::journal::{Event, EventState, Journal, JournalError, Kind, Seen};
use crate::records::postgres::testdb::TestDb;
use crate::records::{FileId, PgStore, Record, RecordStore, RedbStore, StoreError};
use crc_tools::State;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A store under test, opened on the same data at every call.
trait Backend {
    type Store: RecordStore + 'static;
    /// Opens the store (again, after the previous one was dropped: a restart).
    fn open(&self) -> Arc<Self::Store>;
    /// Writes `record` and appends its event in one transaction, then fails before the commit.
    fn fail_a_change(store: &Self::Store, user: &str, path: &str, record: &Record) -> StoreError;
}

struct Redb(tempfile::TempDir);

impl Redb {
    fn new() -> Self {
        Redb(tempfile::tempdir().unwrap())
    }
}

impl Backend for Redb {
    type Store = RedbStore;
    fn open(&self) -> Arc<RedbStore> {
        Arc::new(RedbStore::open(self.0.path(), false).unwrap())
    }
    fn fail_a_change(store: &RedbStore, user: &str, path: &str, record: &Record) -> StoreError {
        store.fail_a_change(user, path, record)
    }
}

struct Pg(TestDb);

impl Pg {
    fn new(test: &str) -> Option<Self> {
        TestDb::create(test).map(Pg)
    }
}

impl Backend for Pg {
    type Store = PgStore;
    fn open(&self) -> Arc<PgStore> {
        Arc::new(self.0.connect("node-a"))
    }
    fn fail_a_change(store: &PgStore, user: &str, path: &str, record: &Record) -> StoreError {
        store.fail_a_change(user, path, record)
    }
}

/// Each test once per store.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod redb {
            $(#[test]
            fn $test() {
                super::$test(&super::Redb::new());
            })*
        }
        mod postgres {
            $(#[test]
            fn $test() {
                if let Some(b) = super::Pg::new(stringify!($test)) {
                    super::$test(&b);
                }
            })*
        }
    };
}

contract!(
    put_get_remove,
    rename_moves_files_and_directories_only,
    records_are_listed_per_user_in_key_order,
    open_records_list_interrupted_uploads_across_a_restart,
    unfinished_counts_closed_partial_and_mismatched_files,
    rename_and_journal_replaces_the_target_record,
    deletes_describe_the_record_only_if_it_still_describes_the_file,
    seq_has_no_gaps_across_a_reopen,
    a_failed_change_leaves_neither_record_nor_event_nor_seq,
    events_are_kept_as_their_json,
    since_honours_limit_and_answers_ahead,
    pruning_keeps_a_contiguous_tail_and_older_cursors_are_gone,
    a_wait_returns_as_soon_as_an_event_is_committed,
);

fn ended(size: u64) -> Record {
    Record {
        state: State::Complete,
        open: false,
        ..Record::opened(None, size, 1)
    }
}

fn journal(store: Arc<dyn RecordStore>) -> Journal {
    Journal::new(store, Duration::from_secs(86_400))
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn journal_seqs(s: &dyn RecordStore) -> Vec<u64> {
    let page = s.journal_page(0, 100).unwrap();
    page.events.iter().map(|e| e.0).collect()
}

fn put_get_remove(b: &impl Backend) {
    let s = b.open();
    let r = Record::opened(Some(7), 10, 99).at(FileId::new(u64::MAX, -5, 7));
    s.put("alice", "/a.ts", &r).unwrap();
    let got = s.get("alice", "/a.ts").unwrap().unwrap();
    assert_eq!(got.encode(), r.encode(), "every field, to the millisecond");
    assert!(
        s.get("bob", "/a.ts").unwrap().is_none(),
        "users are isolated"
    );
    let mut closed = r;
    closed.open = false;
    closed.state = State::Verified;
    s.put("alice", "/a.ts", &closed).unwrap();
    assert_eq!(
        s.get("alice", "/a.ts").unwrap().unwrap().state,
        State::Verified,
        "a put replaces"
    );
    s.remove("alice", "/a.ts").unwrap();
    assert!(s.get("alice", "/a.ts").unwrap().is_none());
    s.remove("alice", "/never").unwrap();
}

fn rename_moves_files_and_directories_only(b: &impl Backend) {
    let s = b.open();
    let r = Record::opened(None, 1, 1);
    for p in ["/d/x", "/d/sub/y", "/d0", "/dx/z", "/d", "/e/x"] {
        s.put("u", p, &r).unwrap();
    }
    s.put("v", "/d/x", &r).unwrap();
    s.put("u", "/d/x", &Record::opened(None, 2, 2)).unwrap();
    s.rename("u", "/d", "/e").unwrap();
    for p in ["/e/x", "/e/sub/y", "/e", "/d0", "/dx/z"] {
        assert!(s.get("u", p).unwrap().is_some(), "{p} should exist");
    }
    for p in ["/d/x", "/d/sub/y", "/d"] {
        assert!(s.get("u", p).unwrap().is_none(), "{p} should be gone");
    }
    assert_eq!(s.get("u", "/e/x").unwrap().unwrap().size, 2, "moved over");
    assert!(s.get("v", "/d/x").unwrap().is_some(), "other users stay");
    s.rename("u", "/e/x", "/f").unwrap();
    assert!(s.get("u", "/f").unwrap().is_some());
    assert!(s.get("u", "/e/x").unwrap().is_none());
}

fn records_are_listed_per_user_in_key_order(b: &impl Backend) {
    let s = b.open();
    for (u, p, size) in [
        ("bob", "/b", 1),
        ("alice", "/z", 2),
        ("alice", "/a", 3),
        ("alice", "/a/b", 4),
        ("alice", "/a0", 5),
    ] {
        s.put(u, p, &ended(size)).unwrap();
    }
    let all: Vec<(String, String)> = s
        .records(None, &|_| true)
        .unwrap()
        .into_iter()
        .map(|(u, p, _)| (u, p))
        .collect();
    let expected = [
        ("alice", "/a"),
        ("alice", "/a/b"),
        ("alice", "/a0"),
        ("alice", "/z"),
        ("bob", "/b"),
    ];
    assert_eq!(all, expected.map(|(u, p)| (u.to_string(), p.to_string())));
    let big: Vec<String> = s
        .records(Some("alice"), &|r| r.size >= 3)
        .unwrap()
        .into_iter()
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(big, ["/a", "/a/b", "/a0"]);
    assert!(s.records(Some("carol"), &|_| true).unwrap().is_empty());
}

fn open_records_list_interrupted_uploads_across_a_restart(b: &impl Backend) {
    {
        let s = b.open();
        s.put("u", "/open", &Record::opened(None, 5, 5)).unwrap();
        let mut closed = Record::opened(None, 5, 5);
        closed.open = false;
        closed.state = State::Complete;
        s.put("u", "/closed", &closed).unwrap();
    }
    let s = b.open();
    let open = s.open_records().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].0.as_str(), open[0].1.as_str()), ("u", "/open"));
}

fn unfinished_counts_closed_partial_and_mismatched_files(b: &impl Backend) {
    let s = b.open();
    let closed = |state, size| Record {
        state,
        open: false,
        ..Record::opened(None, size, 0)
    };
    s.put("u", "/p", &closed(State::Partial, 100)).unwrap();
    s.put("u", "/m", &closed(State::Mismatch, 20)).unwrap();
    s.put("u", "/running", &Record::opened(None, 7, 0)).unwrap();
    s.put("u", "/v", &closed(State::Verified, 1000)).unwrap();
    s.put("w", "/c", &closed(State::Complete, 1000)).unwrap();
    let u = s.unfinished().unwrap();
    assert_eq!((u.files, u.bytes), (2, 120));
}

fn rename_and_journal_replaces_the_target_record(b: &impl Backend) {
    let s = b.open();
    s.put("u", "/a", &ended(1)).unwrap();
    s.put("u", "/b", &ended(2)).unwrap();
    let e = s
        .rename_and_journal("u", "/a", "/b", Seen::Unknown)
        .unwrap();
    assert_eq!(
        (e.from.as_deref(), e.path.as_str(), e.size),
        (Some("/a"), "/b", 1)
    );
    assert_eq!(s.get("u", "/b").unwrap().unwrap().size, 1);
    assert!(s.get("u", "/a").unwrap().is_none());
    // A file without a record, renamed onto a recorded one: the stale record goes.
    s.put("u", "/c", &ended(3)).unwrap();
    s.rename_and_journal("u", "/none", "/c", Seen::Unknown)
        .unwrap();
    assert!(s.get("u", "/c").unwrap().is_none());
}

fn deletes_describe_the_record_only_if_it_still_describes_the_file(b: &impl Backend) {
    let s = b.open();
    let id = FileId::new(5, 6, 7);
    let r = Record {
        state: State::Verified,
        open: false,
        ..Record::opened(Some(9), 10, 9)
    }
    .at(id);
    s.put("u", "/kept.ts", &r).unwrap();
    s.put("u", "/changed.ts", &r).unwrap();
    let same = Seen::File { len: 10, id };
    let e = s
        .remove_and_journal(Kind::Delete, "u", "/kept.ts", same)
        .unwrap();
    assert_eq!(
        (e.state, e.size, e.crc, e.declared),
        (EventState::Verified, 10, Some(9), Some(9))
    );
    let other = Seen::File {
        len: 12,
        id: FileId::new(5, 6, 8),
    };
    let e = s
        .remove_and_journal(Kind::Expire, "u", "/changed.ts", other)
        .unwrap();
    assert_eq!(
        (e.kind, e.state, e.size, e.crc, e.declared),
        (Kind::Expire, EventState::Untracked, 12, None, None)
    );
    assert!(
        s.get("u", "/changed.ts").unwrap().is_none(),
        "the record went with its event"
    );
    let e = s
        .rename_and_journal("u", "/dir", "/dir2", Seen::Directory)
        .unwrap();
    assert_eq!((e.state, e.size, e.crc), (EventState::Directory, 0, None));
}

fn seq_has_no_gaps_across_a_reopen(b: &impl Backend) {
    {
        let s = b.open();
        for p in ["/a", "/b", "/c"] {
            s.end_upload("u", p, &ended(3)).unwrap();
        }
        s.remove_and_journal(Kind::Delete, "u", "/a", Seen::Unknown)
            .unwrap();
        assert_eq!(journal(s).last_seq(), 4);
    }
    let s = b.open();
    let j = journal(s.clone());
    assert_eq!(j.last_seq(), 4, "the counter survives a reopen");
    let e = s
        .rename_and_journal("u", "/b", "/d", Seen::Unknown)
        .unwrap();
    assert_eq!(e.seq, 5);
    let all = j.since(0, 100).unwrap();
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5]);
    let kinds: Vec<Kind> = all.iter().map(|e| e.kind).collect();
    use Kind::*;
    assert_eq!(kinds, [Upload, Upload, Upload, Delete, Rename]);
}

/// The event is written in the transaction of the record change: a failure between the two
/// leaves neither, and allocates no seq.
fn a_failed_change_leaves_neither_record_nor_event_nor_seq<B: Backend>(b: &B) {
    let s = b.open();
    s.end_upload("u", "/a", &ended(1)).unwrap();
    B::fail_a_change(&s, "u", "/b", &ended(2));
    assert!(
        s.get("u", "/b").unwrap().is_none(),
        "the record was rolled back"
    );
    assert_eq!(journal_seqs(s.as_ref()), [1]);
    assert_eq!(*s.journal_watch().borrow(), 1);
    assert_eq!(s.end_upload("u", "/c", &ended(3)).unwrap().seq, 2, "no gap");
    drop(s);
    let s = b.open();
    assert_eq!(s.journal_page(0, 10).unwrap().last, 2);
}

fn events_are_kept_as_their_json(b: &impl Backend) {
    let s = b.open();
    let r = Record {
        state: State::Verified,
        open: false,
        ..Record::opened(Some(0x1C29_1CA3), 1_048_576, 0x1C29_1CA3)
    };
    let mut returned = vec![s.end_upload("alice", "/dir/a.ts", &r).unwrap()];
    returned.push(
        s.rename_and_journal("alice", "/dir/a.ts", "/b.ts", Seen::Unknown)
            .unwrap(),
    );
    let page = s.journal_page(0, 10).unwrap();
    let stored: Vec<Vec<u8>> = page.events.into_iter().map(|(_, json)| json).collect();
    let expected: Vec<Vec<u8>> = returned.iter().map(Event::to_json).collect();
    assert_eq!(stored, expected, "the exact bytes of each returned event");
}

fn since_honours_limit_and_answers_ahead(b: &impl Backend) {
    let s = b.open();
    let j = journal(s.clone());
    assert!(j.since(0, 10).unwrap().is_empty(), "a new journal is empty");
    let page = s.journal_page(0, 10).unwrap();
    assert_eq!((page.oldest, page.last), (1, 0));
    for i in 0..5 {
        s.end_upload("u", &format!("/{i}"), &ended(i)).unwrap();
    }
    assert_eq!(seqs(&j.since(2, 2).unwrap()), [3, 4]);
    assert_eq!(seqs(&j.since(0, 0).unwrap()), [1], "limit 0 is taken as 1");
    assert_eq!(j.since(0, 100).unwrap().len(), 5);
    assert!(j.since(5, 100).unwrap().is_empty());
    assert!(matches!(
        j.since(6, 1),
        Err(JournalError::Ahead { since: 6, last: 5 })
    ));
    assert!(s
        .journal_page(u64::MAX, usize::MAX)
        .unwrap()
        .events
        .is_empty());
}

fn pruning_keeps_a_contiguous_tail_and_older_cursors_are_gone(b: &impl Backend) {
    let s = b.open();
    let j = journal(s.clone());
    let r = ended(1);
    for p in ["/1", "/2"] {
        s.end_upload("u", p, &r).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let third = s.end_upload("u", "/3", &r).unwrap();
    s.end_upload("u", "/4", &r).unwrap();
    // Stored with millisecond precision: the cutoff is the third event's time as kept.
    let cutoff = j.since(2, 1).unwrap()[0].time;
    assert_eq!(j.since(2, 1).unwrap()[0].seq, third.seq);
    assert_eq!(j.prune_before(cutoff).unwrap(), 2);
    assert_eq!(
        j.prune_before(cutoff).unwrap(),
        0,
        "nothing more is that old"
    );
    assert!(matches!(
        j.since(0, 10),
        Err(JournalError::Gone {
            since: 0,
            oldest: 3
        })
    ));
    assert!(matches!(
        j.since(1, 10),
        Err(JournalError::Gone { oldest: 3, .. })
    ));
    assert_eq!(
        seqs(&j.since(2, 10).unwrap()),
        [3, 4],
        "since = oldest - 1 reads all kept"
    );

    // Everything old: none kept, the counter goes on.
    let far = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(j.prune_before(far).unwrap(), 2);
    assert!(matches!(
        j.since(3, 10),
        Err(JournalError::Gone { oldest: 5, .. })
    ));
    assert!(j.since(4, 10).unwrap().is_empty());
    assert_eq!(s.end_upload("u", "/5", &r).unwrap().seq, 5);
    assert_eq!(seqs(&j.since(4, 10).unwrap()), [5]);
    // The retention itself keeps recent events; cutoffs out of range are taken as they are.
    assert_eq!(j.prune().unwrap(), 0);
    assert_eq!(s.journal_prune(UNIX_EPOCH, 10).unwrap(), 0);
    // Batches: more than one batch of old events all go.
    for i in 0..2500 {
        s.end_upload("u", &format!("/b{i}"), &r).unwrap();
    }
    assert_eq!(
        j.prune_before(SystemTime::now() + Duration::from_secs(1))
            .unwrap(),
        2501
    );
    assert_eq!(j.last_seq(), 2505);
    let far_future = UNIX_EPOCH + Duration::from_secs(1 << 40);
    assert_eq!(s.journal_prune(far_future, 10).unwrap(), 0);
}

fn a_wait_returns_as_soon_as_an_event_is_committed(b: &impl Backend) {
    let s: Arc<dyn RecordStore> = b.open();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let j = journal(s.clone());
        let mut rx = j.subscribe();
        assert_eq!(*rx.borrow(), 0);

        // Nothing comes: empty after the wait.
        let t0 = std::time::Instant::now();
        assert!(j
            .wait_since(0, 10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty());
        assert!(t0.elapsed() >= Duration::from_millis(200));

        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                tokio::task::spawn_blocking(move || s.end_upload("u", "/x", &ended(1)))
                    .await
                    .unwrap()
                    .unwrap()
            })
        };
        let t0 = std::time::Instant::now();
        let got = j.wait_since(0, 10, Duration::from_secs(30)).await.unwrap();
        let took = t0.elapsed();
        assert_eq!(seqs(&got), [1]);
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(5),
            "{took:?}"
        );
        writer.await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 1);

        // Closing ends a wait at once.
        let waiting = {
            let j = j.clone();
            tokio::spawn(async move { j.wait_since(1, 10, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = std::time::Instant::now();
        j.close();
        assert!(waiting.await.unwrap().unwrap().is_empty());
        assert!(t0.elapsed() < Duration::from_secs(5));
    });
}
