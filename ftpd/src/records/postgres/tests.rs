//! What only the shared store does: claims and fences across nodes, takeover requests and one
//! journal for several nodes. Two `PgStore`s on one database stand for two nodes.

use super::testdb::TestDb;
use super::*;
use crc_tools::State;

fn ended(size: u64) -> Record {
    Record {
        state: State::Complete,
        open: false,
        ..Record::opened(None, size, 1)
    }
}

fn acquired(c: Claim) -> Lease {
    match c {
        Claim::Acquired(lease) => lease,
        held => panic!("expected the claim, got {held:?}"),
    }
}

const TTL: Duration = Duration::from_secs(30);

#[test]
fn one_writer_per_file_and_a_lost_claim_commits_nothing() {
    let Some(db) = TestDb::create("one_writer_per_file_and_a_lost_claim_commits_nothing") else {
        return;
    };
    let (a, b) = (db.connect("node-a"), db.connect("node-b"));
    assert!(a.shared());
    let short = Duration::from_millis(300);
    let la = acquired(a.claim("u", "/f.ts", "node-a", TTL).unwrap());
    assert_eq!(la.node, "node-a");
    match b.claim("u", "/f.ts", "node-b", TTL).unwrap() {
        Claim::Held { node, expires_in } => {
            assert_eq!(node, "node-a");
            assert!(expires_in <= TTL, "{expires_in:?}");
        }
        c => panic!("{c:?}"),
    }
    // The same holder name does not get a live claim twice.
    assert!(matches!(
        a.claim("u", "/f.ts", "node-a", TTL).unwrap(),
        Claim::Held { .. }
    ));
    // Other files and users are free.
    acquired(b.claim("u", "/g.ts", "node-b", TTL).unwrap());
    acquired(b.claim("v", "/f.ts", "node-b", TTL).unwrap());

    a.put_fenced("u", "/f.ts", &Record::opened(None, 1, 1), &la)
        .unwrap();
    // Renewed for a short while only, and then not again: the claim runs out.
    assert!(a.renew("u", "/f.ts", &la, short).unwrap());
    std::thread::sleep(short + Duration::from_millis(200));

    // Expired: B takes the file, with a larger fence.
    let lb = acquired(b.claim("u", "/f.ts", "node-b", TTL).unwrap());
    assert!(lb.fence > la.fence, "{lb:?} after {la:?}");
    assert!(!a.renew("u", "/f.ts", &la, TTL).unwrap(), "A lost it");

    // A's writes are refused and change nothing.
    let before = a.get("u", "/f.ts").unwrap();
    let last = a.journal_page(0, 1).unwrap().last;
    let e = a.put_fenced("u", "/f.ts", &ended(99), &la).unwrap_err();
    assert!(
        matches!(e, StoreError::Fenced { fence } if fence == la.fence),
        "{e}"
    );
    let e = a
        .end_upload_fenced("u", "/f.ts", &ended(99), &la)
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    assert_eq!(a.get("u", "/f.ts").unwrap(), before);
    assert_eq!(a.journal_page(0, 1).unwrap().last, last, "no event, no seq");

    // B's go through.
    b.put_fenced("u", "/f.ts", &Record::opened(None, 5, 5), &lb)
        .unwrap();
    let event = b.end_upload_fenced("u", "/f.ts", &ended(7), &lb).unwrap();
    assert_eq!(event.seq, last + 1);
    assert_eq!(a.get("u", "/f.ts").unwrap().unwrap().size, 7);

    // A's release of its old claim leaves B's alone; B's own release frees the file.
    a.release("u", "/f.ts", &la).unwrap();
    assert!(b.renew("u", "/f.ts", &lb, TTL).unwrap());
    b.release("u", "/f.ts", &lb).unwrap();
    assert!(!b.renew("u", "/f.ts", &lb, TTL).unwrap());
    assert!(matches!(
        b.put_fenced("u", "/f.ts", &ended(1), &lb),
        Err(StoreError::Fenced { .. })
    ));
    let again = acquired(a.claim("u", "/f.ts", "node-a", TTL).unwrap());
    assert!(again.fence > lb.fence, "fences never go back");
}

#[test]
fn a_takeover_request_reaches_the_other_node() {
    let Some(db) = TestDb::create("a_takeover_request_reaches_the_other_node") else {
        return;
    };
    let (a, b) = (db.connect("node-a"), db.connect("node-b"));
    let mut requests = a.takeover_requests().expect("the first subscriber");
    assert!(a.takeover_requests().is_none(), "taken once");
    b.request_takeover("u", "/dir/it's \"here\".ts").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), requests.recv()).await });
    assert_eq!(
        got.expect("in time"),
        Some(("u".to_string(), "/dir/it's \"here\".ts".to_string()))
    );
}

#[test]
fn two_nodes_share_one_gapless_journal() {
    let Some(db) = TestDb::create("two_nodes_share_one_gapless_journal") else {
        return;
    };
    let nodes = [
        Arc::new(db.connect("node-a")),
        Arc::new(db.connect("node-b")),
    ];
    let mut watch_a = nodes[0].journal_watch();
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let s = nodes[t % 2].clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| {
                        s.end_upload("u", &format!("/{t}/{i}"), &ended(i))
                            .unwrap()
                            .seq
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=150).collect::<Vec<u64>>(),
        "one seq each, no gap"
    );
    let page = nodes[1].journal_page(0, 1000).unwrap();
    let stored: Vec<u64> = page.events.iter().map(|e| e.0).collect();
    assert_eq!(stored, seqs);
    assert_eq!(page.last, 150);
    // Each node hears of the other's commits.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), watch_a.wait_for(|&s| s == 150))
            .await
            .expect("in time")
            .unwrap();
    });
    nodes[1].end_upload("u", "/last", &ended(1)).unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), watch_a.wait_for(|&s| s == 151))
            .await
            .expect("node A hears of node B's commit")
            .unwrap();
    });
}

#[test]
fn several_nodes_starting_at_once_migrate_once() {
    let Some(db) = TestDb::create("several_nodes_starting_at_once_migrate_once") else {
        return;
    };
    let url = db.url();
    let nodes: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                PgStore::connect(&url, &format!("n{i}"), Duration::from_secs(10)).map(|_| ())
            })
        })
        .collect();
    for n in nodes {
        n.join().unwrap().unwrap();
    }
    let s = db.connect("again");
    let pool = s.db.clone();
    let version = s.run(async move {
        let client = pool.client().await?;
        Ok(client
            .query_one("SELECT version FROM ftpd_schema", &[])
            .await?
            .try_get::<_, i32>(0)?)
    });
    assert_eq!(version.unwrap() as usize, schema::MIGRATIONS.len());
}

#[test]
fn the_listen_connection_comes_back_and_catches_up() {
    let Some(db) = TestDb::create("the_listen_connection_comes_back_and_catches_up") else {
        return;
    };
    let (a, b) = (db.connect("node-a"), db.connect("node-b"));
    let mut watch_a = a.journal_watch();
    // Cut node A's LISTEN connection from the server side, then commit on node B while it is
    // away: A reads the last seq again once it is back.
    let pool = b.db.clone();
    let cut = b.run(async move {
        let client = pool.client().await?;
        Ok(client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'ftpd node-a listen' AND datname = current_database()",
                &[],
            )
            .await?)
    });
    assert_eq!(cut.unwrap(), 1, "one LISTEN connection");
    b.end_upload("u", "/x", &ended(1)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), watch_a.wait_for(|&s| s == 1))
            .await
            .expect("node A catches up after reconnecting")
            .unwrap();
    });
}

#[test]
fn an_unreachable_server_is_named_without_its_password() {
    let url = "postgres://ftpd:s3cret@127.0.0.1:1/ftpd";
    let started = std::time::Instant::now();
    let e = PgStore::connect(url, "n", Duration::from_millis(500)).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ConnectError::Unreachable { .. }), "{text}");
    assert!(text.contains("postgres_url"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = PgStore::connect("host=db port=notaport", "n", Duration::ZERO).unwrap_err();
    assert!(matches!(e, ConnectError::Url(_)), "{e}");
    let e = PgStore::connect("host=db sslmode=require", "n", Duration::ZERO).unwrap_err();
    assert!(e.to_string().contains("sslmode"), "{e}");
}

#[test]
fn calls_work_from_any_thread() {
    let Some(db) = TestDb::create("calls_work_from_any_thread") else {
        return;
    };
    let s = Arc::new(db.connect("node-a"));
    s.put("u", "/plain", &ended(1)).unwrap();
    // From an async worker (it only blocks that worker) and from the blocking pool.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s2 = s.clone();
    rt.block_on(async move {
        assert!(s2.get("u", "/plain").unwrap().is_some());
        let s3 = s2.clone();
        tokio::task::spawn_blocking(move || s3.put("u", "/blocking", &ended(2)))
            .await
            .unwrap()
            .unwrap();
        // Dropped on a runtime thread: no panic.
        drop(s2);
    });
    assert!(s.get("u", "/blocking").unwrap().is_some());
}

#[test]
fn uploads_list_reads_the_database_when_no_server_answers() {
    use crate::records::uploads::{run, Filter, Options};
    let Some(db) = TestDb::create("uploads_list_reads_the_database_when_no_server_answers") else {
        return;
    };
    db.connect("node-a")
        .put("alice", "/a.ts", &ended(3))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        http_listen: None,
        token: None,
        state_dir: dir.path().to_path_buf(),
        store: crate::config::StoreChoice::Postgres { url: db.url() },
        filter: Filter::default(),
        json: true,
    };
    run(&opts).unwrap();
}
