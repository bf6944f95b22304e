//! The dialogue driven against a scripted model of the server, one test per branch.

use super::*;
use crate::decision::{Prefix, Reason};
use crate::local::{digest, ReadAt, SliceFile};
use crc_tools::{crc32, KeyAnswer};
use std::collections::VecDeque;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

/// A server as the KEY protocol describes it, with switches for the odd ones.
#[derive(Default)]
struct Model {
    file: Option<Vec<u8>>,
    declared: Option<u32>,
    no_key: bool,
    no_info: bool,
    state: Option<&'static str>,
    /// Replaces the `received-crc=` value in KEY INFO.
    received_crc: Option<&'static str>,
    /// Reply to the USER command instead of 331.
    user_reply: Option<&'static str>,
    /// Reply after the data instead of the computed one.
    final_reply: Option<&'static str>,
    rest: Option<u64>,
    commands: Vec<String>,
    data: Vec<u8>,
}

impl Model {
    fn greeting(&mut self) -> Vec<String> {
        lines(&["220-Welcome", " to the model", "220 ready"])
    }

    fn on_command(&mut self, line: &str) -> Vec<String> {
        self.commands.push(line.to_string());
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        match verb {
            "USER" => lines(&[self.user_reply.unwrap_or("331 password please")]),
            "PASS" if arg == "secret" => lines(&["230 logged in"]),
            "PASS" => lines(&["530 wrong password"]),
            "TYPE" => lines(&["200 binary"]),
            "SIZE" => match &self.file {
                Some(f) => lines(&[&format!("213 {}", f.len())]),
                None => lines(&["550 no such file"]),
            },
            "SITE" => match arg.strip_prefix("KEY ") {
                Some(rest) => self.key(rest),
                None => lines(&["500 unknown SITE command"]),
            },
            "KEY" => self.key(arg),
            "DELE" => {
                self.file = None;
                self.declared = None;
                lines(&["250 deleted"])
            }
            "PASV" => lines(&["227 Entering Passive Mode (127,0,0,1,195,80)"]),
            "REST" => {
                self.rest = arg.parse().ok();
                lines(&["350 restarting"])
            }
            "STOR" => {
                let keep = self.rest.take().unwrap_or(0) as usize;
                let file = self.file.get_or_insert_with(Vec::new);
                file.truncate(keep);
                lines(&["150 send it"])
            }
            "QUIT" => lines(&["221 bye"]),
            _ => lines(&["502 not implemented"]),
        }
    }

    fn key(&mut self, arg: &str) -> Vec<String> {
        if self.no_key {
            return lines(&["500 Command not implemented"]);
        }
        match KeyCommand::parse(arg) {
            Err(e) => lines(&[&format!("501 {e}")]),
            Ok(KeyCommand::Declare { crc, .. }) => {
                self.declared = Some(crc.0);
                lines(&["230 KEY accepted"])
            }
            Ok(KeyCommand::Query { .. }) => {
                lines(&[&format!("230 {}", KeyAnswer::from_declared(self.declared))])
            }
            Ok(KeyCommand::Info { path }) if !self.no_info => {
                let file = self.file.clone().unwrap_or_default();
                let received = match self.received_crc {
                    Some(v) => v.to_string(),
                    None => KeyValue(crc32(&file)).to_string(),
                };
                lines(&[
                    &format!("213-KEY INFO {}", path.unwrap_or("")),
                    &format!(" declared={}", KeyAnswer::from_declared(self.declared)),
                    &format!(" size={}", file.len()),
                    &format!(" received-crc={received}"),
                    &format!(" state={}", self.state.unwrap_or("partial")),
                    " updated=2026-11-22T03:04:05Z",
                    " colour=ignored",
                    "213 End",
                ])
            }
            Ok(KeyCommand::Info { .. }) => lines(&["501 CRC value is not hexadecimal"]),
        }
    }

    fn on_data(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        self.file
            .get_or_insert_with(Vec::new)
            .extend_from_slice(bytes);
    }

    fn on_close(&mut self) -> Vec<String> {
        if let Some(r) = self.final_reply {
            return lines(&[r]);
        }
        let crc = crc32(self.file.as_deref().unwrap_or_default());
        match self.declared {
            Some(d) if d != crc => lines(&["451 CRC mismatch: upload kept as partial"]),
            _ => lines(&["226 transfer complete"]),
        }
    }
}

fn lines(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

/// A file that returns other bytes than those digested, from `from` on.
struct Changing<'a> {
    bytes: &'a [u8],
    digested: bool,
    /// Sends file bytes past the session ([`Session::file_sent`]) whenever it allows.
    zero_copy: bool,
}

impl ReadAt for Changing<'_> {
    type Error = core::convert::Infallible;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = SliceFile(self.bytes).read_at(offset, buf)?;
        if self.digested {
            buf[..n].iter_mut().for_each(|b| *b ^= 0x55);
        }
        Ok(n)
    }
}

struct Run {
    result: Result<Outcome, SessionError>,
    decided: Option<Decision>,
    model: Model,
}

impl Run {
    fn commands(&self) -> Vec<&str> {
        self.model
            .commands
            .iter()
            .map(|c| c.split(' ').next().unwrap_or(""))
            .collect()
    }

    fn outcome(&self) -> Outcome {
        self.result.unwrap()
    }
}

const PATH: &str = "rec.ts";

fn cfg() -> Config<'static> {
    Config::new("stb", "secret", PATH)
}

fn local_bytes() -> Vec<u8> {
    (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect()
}

fn run(cfg: Config<'_>, file: &[u8], model: Model) -> Run {
    run_with(
        cfg,
        &mut Changing {
            bytes: file,
            digested: false,
            zero_copy: false,
        },
        model,
        false,
    )
}

/// Drives a session to its end against `model`, reading the file in odd-sized chunks.
fn run_with(cfg: Config<'_>, file: &mut Changing<'_>, mut model: Model, change: bool) -> Run {
    let mut s = Session::new(cfg).unwrap();
    let mut cmd = [0u8; 128];
    let mut pending: VecDeque<String> = model.greeting().into();
    let mut decided = None;
    let mut steps = 0;
    let result = loop {
        steps += 1;
        assert!(steps < 10_000, "the session does not end");
        let step = match s.poll(&mut cmd) {
            Ok(step) => step,
            Err(e) => break Err(e),
        };
        let r = match step {
            Step::Send { len, command } => {
                let line = core::str::from_utf8(&cmd[..len]).unwrap();
                let line = line.strip_suffix("\r\n").expect("CRLF");
                assert!(!line.contains(['\r', '\n']));
                assert_eq!(
                    line.split(' ').next(),
                    command.as_str().split(' ').next().map(|w| {
                        if w == "KEY" && cfg.key_form == KeyForm::Site {
                            "SITE"
                        } else {
                            w
                        }
                    })
                );
                pending.extend(model.on_command(line));
                Ok(())
            }
            Step::Receive => match pending.pop_front() {
                Some(l) => s.handle_line(Line::new(l.as_bytes())),
                None => s.connection_closed(),
            },
            Step::Digest { prefix_at } => {
                let local = digest(file, &mut [0u8; 7], prefix_at, None, |_| {}).unwrap();
                file.digested = change;
                s.set_local(local)
            }
            Step::Decided(d) => {
                assert!(decided.is_none(), "decided twice");
                decided = Some(d);
                Ok(())
            }
            Step::Connect(addr) => {
                assert_eq!(addr.to_string(), "127.0.0.1:50000");
                s.data_connected()
            }
            Step::Upload { offset, remaining } => {
                assert!(remaining > 0);
                let mut buf = [0u8; 97];
                let n = file.read_at(offset, &mut buf).unwrap();
                if file.zero_copy && s.server_verifies() {
                    // What sendfile(2) would put on the wire, unseen by the session.
                    let n = n.min(remaining as usize);
                    model.on_data(&buf[..n]);
                    s.file_sent(n as u64)
                } else {
                    match s.file_data(&buf[..n]) {
                        Ok(out) => {
                            assert!(out.len() as u64 <= remaining);
                            model.on_data(out);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            }
            Step::CloseData => {
                pending.extend(model.on_close());
                s.data_closed()
            }
            Step::Done(o) => break Ok(o),
        };
        if let Err(e) = r {
            assert_eq!(s.poll(&mut cmd), Err(e), "errors stick");
            break Err(e);
        }
    };
    Run {
        result,
        decided,
        model,
    }
}

fn partial_of(file: &[u8], n: usize) -> Model {
    Model {
        file: Some(file[..n].to_vec()),
        declared: Some(crc32(file)),
        ..Model::default()
    }
}

#[test]
fn the_core_state_is_a_few_hundred_bytes() {
    let size = core::mem::size_of::<Session<'static>>();
    std::println!("size_of::<Session>() = {size}");
    assert!(size <= 512, "Session is {size} bytes");
}

#[test]
fn absent_file_uploads_fresh_with_key() {
    let file = local_bytes();
    let r = run(cfg(), &file, Model::default());
    assert_eq!(
        r.commands(),
        ["USER", "PASS", "TYPE", "SIZE", "SITE", "PASV", "STOR", "QUIT"]
    );
    assert_eq!(
        r.model.commands[4],
        format!("SITE KEY {} {PATH}", KeyValue(crc32(&file)))
    );
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Fresh);
    assert_eq!((o.resumed_from, o.bytes_sent, o.verified), (0, 1000, true));
    assert_eq!(r.model.file.unwrap(), file);
}

#[test]
fn same_crc_and_shorter_partial_resumes() {
    let file = local_bytes();
    let r = run(cfg(), &file, partial_of(&file, 400));
    assert_eq!(
        r.model.commands[4..],
        [
            format!("SITE KEY NULL {PATH}"),
            format!("SITE KEY INFO {PATH}"),
            "PASV".to_string(),
            "REST 400".to_string(),
            format!("STOR {PATH}"),
            "QUIT".to_string(),
        ]
    );
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Resume { from: 400 });
    assert_eq!((o.resumed_from, o.bytes_sent, o.verified), (400, 600, true));
    assert_eq!(r.model.data, file[400..]);
    assert_eq!(r.model.file.unwrap(), file);
    assert_eq!(
        o.local.prefix,
        Some(Prefix {
            len: 400,
            crc: crc32(&file[..400])
        })
    );
}

/// S = 0 is a resume like any other: the partial's declared KEY still stands on the server,
/// so `REST 0` and the whole file, with no new declaration and no DELE.
#[test]
fn an_empty_partial_with_the_same_crc_resumes_from_zero() {
    let file = local_bytes();
    let r = run(cfg(), &file, partial_of(&file, 0));
    assert_eq!(
        r.model.commands[4..],
        [
            format!("SITE KEY NULL {PATH}"),
            format!("SITE KEY INFO {PATH}"),
            "PASV".to_string(),
            "REST 0".to_string(),
            format!("STOR {PATH}"),
            "QUIT".to_string(),
        ]
    );
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Resume { from: 0 });
    assert_eq!((o.resumed_from, o.bytes_sent, o.verified), (0, 1000, true));
    assert_eq!(r.model.file.unwrap(), file);
}

#[test]
fn equal_partial_verified_by_info_sends_nothing() {
    let file = local_bytes();
    let mut model = partial_of(&file, 1000);
    model.state = Some("verified");
    let r = run(cfg(), &file, model);
    assert_eq!(r.commands()[4..], ["SITE", "SITE", "QUIT"]);
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Complete);
    assert_eq!((o.resumed_from, o.bytes_sent, o.verified), (1000, 0, true));
}

#[test]
fn equal_partial_not_yet_verified_is_confirmed_by_an_empty_stor() {
    let file = local_bytes();
    let r = run(cfg(), &file, partial_of(&file, 1000));
    assert_eq!(
        r.commands()[4..],
        ["SITE", "SITE", "PASV", "REST", "STOR", "QUIT"]
    );
    assert_eq!(r.model.commands[7], "REST 1000");
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Complete);
    assert_eq!((o.bytes_sent, o.verified), (0, true));
}

#[test]
fn different_crc_deletes_declares_and_uploads_from_zero() {
    let file = local_bytes();
    let mut model = partial_of(&file, 400);
    model.declared = Some(0x1234_5678);
    let r = run(cfg(), &file, model);
    assert_eq!(
        r.model.commands[4..],
        [
            format!("SITE KEY NULL {PATH}"),
            format!("DELE {PATH}"),
            format!("SITE KEY {} {PATH}", KeyValue(crc32(&file))),
            "PASV".to_string(),
            format!("STOR {PATH}"),
            "QUIT".to_string(),
        ]
    );
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Reupload(Reason::KeyDiffers));
    assert_eq!((o.resumed_from, o.bytes_sent, o.verified), (0, 1000, true));
    assert_eq!(r.model.file.unwrap(), file);
}

#[test]
fn zero_answer_reuploads() {
    let file = local_bytes();
    let mut model = partial_of(&file, 400);
    model.declared = None;
    let r = run(cfg(), &file, model);
    assert_eq!(r.outcome().decision, Decision::Reupload(Reason::KeyUnknown));
    assert!(r.commands().contains(&"DELE"));
}

/// Appends four bytes that bring the CRC to 0 (CRC-32 is affine in its input bits).
fn with_zero_crc(mut data: Vec<u8>) -> Vec<u8> {
    let base = {
        let mut d = data.clone();
        d.extend_from_slice(&[0; 4]);
        crc32(&d)
    };
    // Column i: how flipping bit i of the appended word changes the CRC.
    let mut rows: Vec<(u32, u32)> = (0..32)
        .map(|i| {
            let mut d = data.clone();
            d.extend_from_slice(&(1u32 << i).to_le_bytes());
            (crc32(&d) ^ base, 1u32 << i)
        })
        .collect();
    // Gaussian elimination over GF(2): find bits whose effects XOR to `base`.
    let mut target = base;
    let mut choice = 0u32;
    for bit in (0..32).rev() {
        let Some(p) = rows.iter().position(|(e, _)| e >> bit & 1 == 1) else {
            continue;
        };
        let pivot = rows.swap_remove(p);
        for r in rows.iter_mut() {
            if r.0 >> bit & 1 == 1 {
                r.0 ^= pivot.0;
                r.1 ^= pivot.1;
            }
        }
        if target >> bit & 1 == 1 {
            target ^= pivot.0;
            choice ^= pivot.1;
        }
    }
    assert_eq!(target, 0);
    data.extend_from_slice(&choice.to_le_bytes());
    assert_eq!(crc32(&data), 0);
    data
}

#[test]
fn local_crc_zero_always_reuploads() {
    let file = with_zero_crc(local_bytes());
    for declared in [Some(0), None] {
        let mut model = partial_of(&file, 400);
        model.declared = declared;
        let r = run(cfg(), &file, model);
        let o = r.outcome();
        assert_eq!(o.decision, Decision::Reupload(Reason::LocalCrcZero));
        assert_eq!(o.bytes_sent, file.len() as u64);
        assert!(r
            .model
            .commands
            .contains(&format!("SITE KEY 0x00000000 {PATH}")));
    }
}

#[test]
fn longer_partial_reuploads() {
    let file = local_bytes();
    let mut longer = file.clone();
    longer.extend_from_slice(b"tail");
    let mut model = partial_of(&longer, longer.len());
    model.declared = Some(crc32(&file));
    let r = run(cfg(), &file, model);
    assert_eq!(
        r.outcome().decision,
        Decision::Reupload(Reason::PartialLonger)
    );
    assert_eq!(r.model.file.unwrap(), file);
}

#[test]
fn prefix_differing_from_received_crc_reuploads() {
    let file = local_bytes();
    let mut model = partial_of(&file, 400);
    // Same declared KEY, but the stored bytes are damaged.
    model.file.as_mut().unwrap()[10] ^= 1;
    let r = run(cfg(), &file, model);
    assert_eq!(
        r.outcome().decision,
        Decision::Reupload(Reason::PrefixMismatch)
    );
    assert_eq!(
        r.commands()[4..],
        ["SITE", "SITE", "DELE", "SITE", "PASV", "STOR", "QUIT"]
    );
    assert_eq!(r.model.file.unwrap(), file);
}

#[test]
fn unknown_received_crc_reuploads() {
    let file = local_bytes();
    let mut model = partial_of(&file, 400);
    model.received_crc = Some("unknown");
    model.state = Some("untracked");
    let r = run(cfg(), &file, model);
    assert_eq!(
        r.outcome().decision,
        Decision::Reupload(Reason::PrefixUnknown)
    );
}

#[test]
fn server_without_info_resumes_on_key_alone() {
    let file = local_bytes();
    let mut model = partial_of(&file, 400);
    model.no_info = true;
    let r = run(cfg(), &file, model);
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Resume { from: 400 });
    assert!(o.verified);
}

#[test]
fn server_without_key_uploads_from_zero() {
    let file = local_bytes();
    let mut model = partial_of(&file, 400);
    model.no_key = true;
    let r = run(cfg(), &file, model);
    assert_eq!(r.commands()[4..], ["SITE", "DELE", "PASV", "STOR", "QUIT"]);
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Reupload(Reason::NoKeySupport));
    assert_eq!((o.bytes_sent, o.verified), (1000, false));
}

#[test]
fn server_without_key_resumes_when_rest_is_trusted() {
    let file = local_bytes();
    let mut model = partial_of(&file, 400);
    model.no_key = true;
    let mut c = cfg();
    c.trust_rest = true;
    let r = run(c, &file, model);
    assert_eq!(r.commands()[4..], ["SITE", "PASV", "REST", "STOR", "QUIT"]);
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Resume { from: 400 });
    assert_eq!((o.bytes_sent, o.verified), (600, false));
    assert_eq!(r.model.file.unwrap(), file);
}

#[test]
fn server_without_key_and_a_complete_file_with_trusted_rest_sends_nothing() {
    let file = local_bytes();
    let mut model = partial_of(&file, 1000);
    model.no_key = true;
    let mut c = cfg();
    c.trust_rest = true;
    let r = run(c, &file, model);
    assert_eq!(r.commands()[4..], ["SITE", "QUIT"]);
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Complete);
    assert!(!o.verified);
}

#[test]
fn fresh_upload_to_a_server_without_key_is_unverified() {
    let file = local_bytes();
    let model = Model {
        no_key: true,
        ..Model::default()
    };
    let r = run(cfg(), &file, model);
    assert_eq!(r.commands()[4..], ["SITE", "PASV", "STOR", "QUIT"]);
    let o = r.outcome();
    assert_eq!(o.decision, Decision::Fresh);
    assert!(!o.verified);
}

#[test]
fn bare_key_form() {
    let file = local_bytes();
    let mut c = cfg();
    c.key_form = KeyForm::Bare;
    let r = run(c, &file, partial_of(&file, 400));
    assert_eq!(r.model.commands[4], format!("KEY NULL {PATH}"));
    assert_eq!(r.model.commands[5], format!("KEY INFO {PATH}"));
    assert!(r.outcome().verified);
}

#[test]
fn refused_completion_after_the_data_is_a_verification_failure() {
    let file = local_bytes();
    let model = Model {
        final_reply: Some("451 CRC mismatch: upload kept as partial"),
        ..Model::default()
    };
    let r = run(cfg(), &file, model);
    assert_eq!(
        r.result,
        Err(SessionError::VerificationFailed { code: 451 })
    );
    assert!(r.result.unwrap_err().is_retryable());
    // Without a KEY in force it is a plain transfer failure.
    let model = Model {
        no_key: true,
        final_reply: Some("552 quota exceeded"),
        ..Model::default()
    };
    let r = run(cfg(), &file, model);
    assert_eq!(r.result, Err(SessionError::TransferFailed { code: 552 }));
}

#[test]
fn the_model_refuses_a_damaged_upload() {
    // The model compares the stored CRC with the declared one, as the server does.
    let file = local_bytes();
    let mut model = partial_of(&file, 400);
    model.no_info = true;
    model.file.as_mut().unwrap()[3] ^= 0x80;
    let r = run(cfg(), &file, model);
    assert_eq!(
        r.result,
        Err(SessionError::VerificationFailed { code: 451 })
    );
    assert_eq!(r.decided, Some(Decision::Resume { from: 400 }));
}

#[test]
fn local_file_changed_after_digest() {
    let file = local_bytes();
    let mut f = Changing {
        bytes: &file,
        digested: false,
        zero_copy: false,
    };
    let r = run_with(cfg(), &mut f, Model::default(), true);
    assert_eq!(r.result, Err(SessionError::LocalFileChanged));
    assert!(!SessionError::LocalFileChanged.is_retryable());
}

fn run_zero_copy(cfg: Config<'_>, file: &[u8], model: Model, change: bool) -> Run {
    let mut f = Changing {
        bytes: file,
        digested: false,
        zero_copy: true,
    };
    run_with(cfg, &mut f, model, change)
}

#[test]
fn bytes_sent_past_the_session_when_the_server_verifies() {
    let file = local_bytes();
    // Fresh, and resumed after a partial: the server gets the file and confirms it.
    for model in [Model::default(), partial_of(&file, 400)] {
        let r = run_zero_copy(cfg(), &file, model, false);
        let o = r.outcome();
        assert!(o.verified);
        assert_eq!(o.bytes_sent, 1000 - o.resumed_from);
        assert_eq!(r.model.file.unwrap(), file);
    }
    // A file changed after its digest: the client cannot see it, the server's check does.
    let r = run_zero_copy(cfg(), &file, Model::default(), true);
    assert!(matches!(
        r.result,
        Err(SessionError::VerificationFailed { .. })
    ));
}

#[test]
fn bytes_pass_through_the_session_when_the_server_cannot_verify() {
    let file = local_bytes();
    let model = Model {
        no_key: true,
        ..Model::default()
    };
    // No KEY: the session sees every byte and notices a change itself.
    let r = run_zero_copy(cfg(), &file, model, true);
    assert_eq!(r.result, Err(SessionError::LocalFileChanged));
}

#[test]
fn file_sent_out_of_place_is_refused() {
    let mut s = Session::new(cfg()).unwrap();
    assert!(!s.server_verifies());
    assert_eq!(s.file_sent(10), Err(SessionError::OutOfOrder));
    assert_eq!(
        s.file_data(b"x"),
        Err(SessionError::OutOfOrder),
        "errors stick"
    );
}

#[test]
fn login_refused() {
    let file = local_bytes();
    let r = run(Config::new("stb", "wrong", PATH), &file, Model::default());
    assert_eq!(r.result, Err(SessionError::LoginRefused { code: 530 }));
    assert!(!r.result.unwrap_err().is_retryable());
    let model = Model {
        user_reply: Some("530 not allowed"),
        ..Model::default()
    };
    let r = run(cfg(), &file, model);
    assert_eq!(r.result, Err(SessionError::LoginRefused { code: 530 }));
    // A user needing no password goes straight on.
    let model = Model {
        user_reply: Some("230 welcome"),
        ..Model::default()
    };
    let r = run(cfg(), &file, model);
    assert_eq!(r.commands()[..3], ["USER", "TYPE", "SIZE"]);
    assert!(r.result.is_ok());
}

/// Steps a fresh session through the login with the given replies, then returns it.
fn logged_in(replies: &[&str]) -> Session<'static> {
    let mut s = Session::new(cfg()).unwrap();
    let mut cmd = [0u8; 64];
    for r in replies {
        while matches!(s.poll(&mut cmd), Ok(Step::Send { .. })) {}
        s.handle_line(Line::new(r.as_bytes())).unwrap();
    }
    s
}

#[test]
fn login_and_size_replies() {
    let mut cmd = [0u8; 64];
    // 1xx before the greeting and a multi-line 230 are fine.
    let mut s = logged_in(&[
        "120 soon",
        "220 hi",
        "331 pw",
        "230-line one",
        "230 ok",
        "200 ok",
    ]);
    assert!(matches!(
        s.poll(&mut cmd),
        Ok(Step::Send {
            command: Command::Size,
            ..
        })
    ));
    assert_eq!(
        s.handle_line(Line::new(b"213 not-a-number")),
        Err(SessionError::BadReply {
            command: Command::Size
        })
    );
    // A server without SIZE: upload again from zero.
    let mut s = logged_in(&["220 hi", "331 pw", "230 ok", "200 ok", "502 no SIZE"]);
    assert!(matches!(
        s.poll(&mut cmd),
        Ok(Step::Digest { prefix_at: None })
    ));
    s.set_local(LocalFile {
        len: 5,
        crc: 1,
        prefix: None,
    })
    .unwrap();
    assert_eq!(
        s.poll(&mut cmd),
        Ok(Step::Decided(Decision::Reupload(Reason::SizeUnknown)))
    );
    // A refusing greeting.
    let mut s = Session::new(cfg()).unwrap();
    assert_eq!(
        s.handle_line(Line::new(b"421 too many users")),
        Err(SessionError::Refused {
            command: Command::Greeting,
            code: 421
        })
    );
}

#[test]
fn key_query_replies() {
    let mut cmd = [0u8; 64];
    let base = ["220 hi", "331 pw", "230 ok", "200 ok", "213 10"];
    let mut s = logged_in(&base);
    assert!(s.poll(&mut cmd).is_ok());
    assert_eq!(
        s.handle_line(Line::new(b"230 KEY accepted")),
        Err(SessionError::BadReply {
            command: Command::KeyQuery
        })
    );
    let mut s = logged_in(&base);
    assert!(s.poll(&mut cmd).is_ok());
    let e = s
        .handle_line(Line::new(b"501 path escapes the root"))
        .unwrap_err();
    assert_eq!(
        e,
        SessionError::Refused {
            command: Command::KeyQuery,
            code: 501
        }
    );
    assert!(!e.is_retryable());
    let mut s = logged_in(&base);
    assert!(s.poll(&mut cmd).is_ok());
    s.handle_line(Line::new(b"230 0x5f2d3a26")).unwrap();
    assert_eq!(
        s.remote().key,
        KeySupport::Answer(KeyAnswer::Known(KeyValue(0x5F2D3A26)))
    );
    assert_eq!(
        s.poll(&mut cmd),
        Ok(Step::Digest {
            prefix_at: Some(10)
        })
    );
}

#[test]
fn bad_pasv_reply() {
    let file = local_bytes();
    let mut s = logged_in(&["220 hi", "331 pw", "230 ok", "200 ok", "550 none"]);
    let mut cmd = [0u8; 64];
    s.poll(&mut cmd).unwrap();
    s.set_local(digest(&mut SliceFile(&file), &mut [0; 64], None, None, |_| {}).unwrap())
        .unwrap();
    assert_eq!(s.poll(&mut cmd), Ok(Step::Decided(Decision::Fresh)));
    assert!(s.poll(&mut cmd).is_ok());
    s.handle_line(Line::new(b"230 KEY accepted")).unwrap();
    assert!(matches!(
        s.poll(&mut cmd),
        Ok(Step::Send {
            command: Command::Pasv,
            ..
        })
    ));
    assert_eq!(
        s.handle_line(Line::new(b"227 Entering Passive Mode (1,2,3)")),
        Err(SessionError::Pasv(PasvError::Malformed))
    );
}

#[test]
fn garbage_and_over_long_lines_end_the_session_with_an_error() {
    let mut s = Session::new(cfg()).unwrap();
    assert_eq!(
        s.handle_line(Line::new(b"SSH-2.0-OpenSSH_9.6")),
        Err(SessionError::Reply(ReplyError::Garbage))
    );
    assert_eq!(
        s.poll(&mut [0; 64]),
        Err(SessionError::Reply(ReplyError::Garbage))
    );
    let mut s = Session::new(cfg()).unwrap();
    assert_eq!(
        s.handle_line(Line {
            bytes: b"220 very",
            truncated: true
        }),
        Err(SessionError::Reply(ReplyError::LineTooLong))
    );
}

#[test]
fn replies_out_of_turn_are_errors() {
    let mut s = logged_in(&["220 hi"]);
    // USER is ready to be sent but was not: a reply now answers nothing.
    assert_eq!(
        s.handle_line(Line::new(b"331 pw")),
        Err(SessionError::UnexpectedReply { code: 331 })
    );
    let mut s = Session::new(cfg()).unwrap();
    assert_eq!(s.data_connected(), Err(SessionError::OutOfOrder));
    let mut s = Session::new(cfg()).unwrap();
    assert_eq!(s.file_data(b"x"), Err(SessionError::OutOfOrder));
    let mut s = Session::new(cfg()).unwrap();
    assert_eq!(s.data_closed(), Err(SessionError::OutOfOrder));
    let mut s = Session::new(cfg()).unwrap();
    assert_eq!(
        s.set_local(LocalFile {
            len: 0,
            crc: 0,
            prefix: None
        }),
        Err(SessionError::OutOfOrder)
    );
}

#[test]
fn connection_closed() {
    let mut s = Session::new(cfg()).unwrap();
    assert_eq!(s.connection_closed(), Err(SessionError::ConnectionClosed));
    assert!(SessionError::ConnectionClosed.is_retryable());
}

#[test]
fn command_buffer_too_small() {
    let mut s = logged_in(&["220 hi"]);
    assert_eq!(s.poll(&mut [0; 5]), Err(SessionError::CommandTooLong));
}

#[test]
fn configuration_is_checked() {
    let bad = [
        (
            Config::new("a\r\nDELE x", "p", "f"),
            ConfigError::ControlCharacter(Field::User),
        ),
        (
            Config::new("a", "p\n", "f"),
            ConfigError::ControlCharacter(Field::Password),
        ),
        (
            Config::new("a", "p", "f\0"),
            ConfigError::ControlCharacter(Field::Path),
        ),
        (Config::new("", "p", "f"), ConfigError::Empty(Field::User)),
        (Config::new("a", "p", " "), ConfigError::Empty(Field::Path)),
        (Config::new("a", "p", " f"), ConfigError::BlankAroundPath),
    ];
    for (c, e) in bad {
        assert_eq!(Session::new(c).unwrap_err(), e);
        assert!(!SessionError::Config(e).is_retryable());
    }
    assert!(Session::new(Config::new("a", "", "dir/my rec.ts")).is_ok());
}
