//! The `stb-upload` binary: exit codes, the JSON line and one-line errors.
#![allow(clippy::unwrap_used)]

mod support;

use crc_tools::crc32;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::{content, FakeServer, State, PASSWORD};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stb-upload"));
    c.env_remove("STB_PASSWORD");
    c
}

struct Local(PathBuf);

impl Local {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let dir = std::env::temp_dir().join(format!("stb-upload-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        Local(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout:?}");
    serde_json::from_str(stdout.trim()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn fresh_upload_prints_one_json_line() {
    let bytes = content(100_000, 9);
    let local = Local::new("fresh.ts", &bytes);
    let server = FakeServer::start(State::default());
    let out = bin()
        .env("STB_PASSWORD", PASSWORD)
        .args(["--json", &server.url("rec.ts")])
        .arg(local.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j = json(&out);
    assert_eq!(j["ok"], true);
    assert_eq!(j["decision"], "fresh");
    assert_eq!(j["resumed_from"], 0);
    assert_eq!(j["bytes_sent"], 100_000);
    assert_eq!(j["attempts"], 1);
    assert_eq!(j["verified"], true);
    assert_eq!(j["size"], 100_000);
    assert_eq!(j["crc"], format!("0x{:08X}", crc32(&bytes)));
    assert_eq!(j["remote_path"], "rec.ts");
    assert_eq!(j["exit_code"], 0);
    assert_eq!(server.state().files["rec.ts"], bytes);
    // Not a terminal and no --json output on stderr: quiet.
    assert_eq!(stderr(&out), "");
}

#[test]
fn password_from_stdin_and_resume_with_bare_key() {
    let bytes = content(100_000, 10);
    let local = Local::new("resume.ts", &bytes);
    let mut state = State::default();
    state
        .files
        .insert("dir/resume.ts".into(), bytes[..40_000].to_vec());
    state.declared.insert("dir/resume.ts".into(), crc32(&bytes));
    let server = FakeServer::start(state);
    let mut child = bin()
        .args([
            "--json",
            "--bare-key",
            "--password-stdin",
            &server.url("dir/"),
        ])
        .arg(local.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j = json(&out);
    assert_eq!(j["decision"], "resume");
    assert_eq!(j["resumed_from"], 40_000);
    assert_eq!(j["bytes_sent"], 60_000);
    assert_eq!(j["remote_path"], "dir/resume.ts");
    assert!(server
        .state()
        .commands
        .contains(&"KEY NULL dir/resume.ts".to_string()));
    assert_eq!(server.state().files["dir/resume.ts"], bytes);
}

#[test]
fn cut_then_resume_counts_attempts() {
    let bytes = content(2_000_000, 11);
    let local = Local::new("cut.ts", &bytes);
    let server = FakeServer::start(State {
        cuts: vec![500_000],
        ..State::default()
    });
    let out = bin()
        .env("STB_PASSWORD", PASSWORD)
        .args(["--json", "--retry-delay-ms", "10", &server.url("cut.ts")])
        .arg(local.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j = json(&out);
    assert_eq!(j["decision"], "resume");
    assert_eq!(j["resumed_from"], 500_000);
    assert_eq!(j["bytes_sent"], 1_500_000);
    assert_eq!(j["attempts"], 2);
    assert_eq!(j["verified"], true);
    assert!(
        stderr(&out).contains("attempt 1 failed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.state().files["cut.ts"], bytes);
}

#[test]
fn login_refused_exits_3() {
    let local = Local::new("login.ts", b"abc");
    let server = FakeServer::start(State::default());
    let out = bin()
        .env("STB_PASSWORD", "wrong")
        .args(["--json", &server.url("x.ts")])
        .arg(local.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["ok"], false);
    assert_eq!(stderr(&out).lines().count(), 1);
    assert!(stderr(&out).starts_with("stb-upload: login refused"));
}

#[test]
fn verification_failure_exits_5() {
    let local = Local::new("verify.ts", &content(5000, 12));
    let server = FakeServer::start(State {
        refuse_completion: true,
        ..State::default()
    });
    let out = bin()
        .env("STB_PASSWORD", PASSWORD)
        .args(["--json", "--retries", "1", "--retry-delay-ms", "1"])
        .arg(server.url("v.ts"))
        .arg(local.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let j = json(&out);
    assert_eq!(j["attempts"], 2);
    assert_eq!(j["verified"], false);
    assert_eq!(j["exit_code"], 5);
}

#[test]
fn retries_exhausted_exits_4() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let local = Local::new("none.ts", b"abc");
    let out = bin()
        .env("STB_PASSWORD", PASSWORD)
        .args(["--retries", "2", "--retry-delay-ms", "1"])
        .arg(format!("ftp://stb@127.0.0.1:{port}/x.ts"))
        .arg(local.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("gave up after 3 attempts"));
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let local = Local::new("usage.ts", b"abc");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![], "required arguments"),
        (vec!["--bogus".into(), "a".into(), "b".into()], "--bogus"),
        (
            vec!["http://x/y".into(), local.path().display().to_string()],
            "invalid URL",
        ),
        (
            vec!["ftp://u:p@h/y".into(), local.path().display().to_string()],
            "password",
        ),
        (
            vec!["ftp://u@h/y".into(), "/nonexistent/file".into()],
            "cannot open",
        ),
        (
            vec!["ftp://u@h/y".into(), local.path().display().to_string()],
            "STB_PASSWORD",
        ),
        (
            vec!["--retries".into(), "x".into(), "a".into(), "b".into()],
            "--retries",
        ),
    ];
    for (args, needle) in cases {
        let out = bin().args(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("stb-upload: "), "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn help_lists_the_exit_codes() {
    let out = bin().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "Exit codes:",
        "login refused",
        "retries exhausted",
        "verification failed",
    ] {
        assert!(help.contains(needle), "{needle}");
    }
}
