//! The driver over real TCP sockets against the scripted server: fresh upload, resume after
//! a cut, upload again after a CRC mismatch.
#![allow(clippy::unwrap_used)]

mod support;

use crc_tools::crc32;
use stb_client::decision::Reason;
use stb_client::driver::{upload, FailureKind, Report, RetryPolicy, UploadError};
use stb_client::session::Config;
use stb_client::transport::{StdFile, TcpNetwork};
use stb_client::{Buffers, Decision};
use std::io::{self, Write};
use std::time::Duration;
use support::{content, FakeServer, State, PASSWORD, USER};

const PATH: &str = "rec.ts";

fn temp_file(bytes: &[u8]) -> (tempdir::Dir, std::fs::File) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("local.ts");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    let f = std::fs::File::open(&path).unwrap();
    (dir, f)
}

/// A directory removed when dropped (no extra dependency needed for this).
mod tempdir {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "stb-client-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn run(
    server: &FakeServer,
    local: &[u8],
    retries: u32,
) -> Result<Report, UploadError<io::Error, io::Error>> {
    let (_dir, file) = temp_file(local);
    let mut net = TcpNetwork::new(
        "127.0.0.1",
        server.addr.port(),
        Some(Duration::from_secs(10)),
    );
    let mut control = [0u8; 512];
    let mut command = [0u8; 256];
    let mut data = vec![0u8; 64 * 1024];
    let policy = RetryPolicy {
        retries,
        initial_delay_ms: 10,
        max_delay_ms: 50,
    };
    let mut slept = Vec::new();
    let result = upload(
        &mut net,
        &mut StdFile::new(file),
        Config::new(USER, PASSWORD, PATH),
        policy,
        Buffers {
            control: &mut control,
            command: &mut command,
            data: &mut data,
        },
        &mut |ms| slept.push(ms),
        &mut (),
    );
    if let Ok(r) = &result {
        assert_eq!(slept.len() as u32, r.attempts - 1);
    }
    result
}

#[test]
fn fresh_upload() {
    let local = content(300_000, 1);
    let server = FakeServer::start(State::default());
    let report = run(&server, &local, 0).unwrap();
    let o = report.outcome;
    assert_eq!(o.decision, Decision::Fresh);
    assert_eq!(
        (o.resumed_from, o.bytes_sent, o.verified),
        (0, 300_000, true)
    );
    assert_eq!(report.attempts, 1);
    let s = server.state();
    assert_eq!(s.files[PATH], local);
    assert_eq!(s.declared[PATH], crc32(&local));
}

#[test]
fn resume_after_a_cut() {
    let local = content(3_000_000, 2);
    let server = FakeServer::start(State {
        cuts: vec![1_000_000],
        ..State::default()
    });
    let report = run(&server, &local, 2).unwrap();
    let o = report.outcome;
    assert_eq!(report.attempts, 2);
    assert_eq!(o.decision, Decision::Resume { from: 1_000_000 });
    assert_eq!((o.resumed_from, o.bytes_sent), (1_000_000, 2_000_000));
    assert!(o.verified);
    assert!(report.bytes_sent_total >= 3_000_000);
    assert_eq!(server.state().files[PATH], local);
    let verbs = server.verbs();
    let second = verbs.iter().rposition(|v| v == "USER").unwrap();
    assert_eq!(
        verbs[second..],
        ["USER", "PASS", "TYPE", "SIZE", "SITE", "SITE", "PASV", "REST", "STOR", "QUIT"]
    );
    assert!(server
        .state()
        .commands
        .contains(&"REST 1000000".to_string()));
}

#[test]
fn reupload_on_crc_mismatch() {
    let local = content(200_000, 3);
    let other = content(500_000, 4);
    let mut state = State::default();
    state.files.insert(PATH.into(), other[..100_000].to_vec());
    state.declared.insert(PATH.into(), crc32(&other));
    let server = FakeServer::start(state);
    let report = run(&server, &local, 0).unwrap();
    let o = report.outcome;
    assert_eq!(o.decision, Decision::Reupload(Reason::KeyDiffers));
    assert_eq!(
        (o.resumed_from, o.bytes_sent, o.verified),
        (0, 200_000, true)
    );
    assert_eq!(server.state().files[PATH], local);
    let verbs = server.verbs();
    assert_eq!(verbs[4..], ["SITE", "DELE", "SITE", "PASV", "STOR", "QUIT"]);
}

#[test]
fn damaged_partial_is_caught_by_key_info() {
    let local = content(200_000, 5);
    let mut partial = local[..80_000].to_vec();
    partial[1234] ^= 0xFF;
    let mut state = State::default();
    state.files.insert(PATH.into(), partial);
    state.declared.insert(PATH.into(), crc32(&local));
    let server = FakeServer::start(state);
    let report = run(&server, &local, 0).unwrap();
    assert_eq!(
        report.outcome.decision,
        Decision::Reupload(Reason::PrefixMismatch)
    );
    assert_eq!(server.state().files[PATH], local);
}

#[test]
fn complete_file_needs_no_data() {
    let local = content(50_000, 6);
    let mut state = State::default();
    state.files.insert(PATH.into(), local.clone());
    state.declared.insert(PATH.into(), crc32(&local));
    let server = FakeServer::start(state);
    let report = run(&server, &local, 0).unwrap();
    let o = report.outcome;
    assert_eq!(o.decision, Decision::Complete);
    assert_eq!((o.bytes_sent, o.verified), (0, true));
}

#[test]
fn refused_completion_is_a_verification_failure_after_the_retries() {
    let local = content(10_000, 7);
    let server = FakeServer::start(State {
        refuse_completion: true,
        ..State::default()
    });
    let e = run(&server, &local, 1).unwrap_err();
    assert_eq!(e.kind(), FailureKind::VerificationFailed);
    assert_eq!(e.attempts, 2);
    assert_eq!(server.state().connections, 2);
}

#[test]
fn wrong_password_is_not_retried() {
    let local = content(10, 8);
    let server = FakeServer::start(State::default());
    let (_dir, file) = temp_file(&local);
    let mut net = TcpNetwork::new(
        "127.0.0.1",
        server.addr.port(),
        Some(Duration::from_secs(5)),
    );
    let e = upload(
        &mut net,
        &mut StdFile::new(file),
        Config::new(USER, "wrong", PATH),
        RetryPolicy::default(),
        Buffers {
            control: &mut [0u8; 512],
            command: &mut [0u8; 256],
            data: &mut [0u8; 4096],
        },
        &mut |_| panic!("no retry expected"),
        &mut (),
    )
    .unwrap_err();
    assert_eq!(e.kind(), FailureKind::LoginRefused);
    assert_eq!(e.attempts, 1);
}

#[test]
fn nothing_listening_exhausts_the_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_dir, file) = temp_file(b"abc");
    let mut net = TcpNetwork::new("127.0.0.1", port, Some(Duration::from_secs(2)));
    let mut waits = Vec::new();
    let e = upload(
        &mut net,
        &mut StdFile::new(file),
        Config::new(USER, PASSWORD, PATH),
        RetryPolicy {
            retries: 3,
            initial_delay_ms: 1,
            max_delay_ms: 3,
        },
        Buffers {
            control: &mut [0u8; 512],
            command: &mut [0u8; 256],
            data: &mut [0u8; 4096],
        },
        &mut |ms| waits.push(ms),
        &mut (),
    )
    .unwrap_err();
    assert_eq!(e.kind(), FailureKind::RetriesExhausted);
    assert_eq!(e.attempts, 4);
    assert_eq!(waits, [1, 2, 3]);
}
