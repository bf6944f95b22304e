//! Property tests: whatever the server sends, the parsers and the session return values or
//! errors, never panic, and keep their invariants.

use crate::decision::{
    decide, Decision, Info, InfoFacts, KeySupport, LocalFile, Prefix, Remote, RemoteSize,
};
use crate::local::{digest, SliceFile};
use crate::pasv::{parse_227, PasvAddr};
use crate::reply::{Line, LineReader, ReplyEvent, ReplyParser};
use crate::session::{Command, Config, KeyForm, Session, SessionError, Step};
use crc_tools::{crc32, KeyAnswer, KeyValue, State};
use proptest::prelude::*;
use std::format;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

/// Plausible reply lines, so that runs get deep into the dialogue, mixed with noise.
fn reply_line() -> impl Strategy<Value = Vec<u8>> {
    let known = prop::sample::select(vec![
        "220 ready",
        "220-hello",
        "120 wait",
        "331 password",
        "230 logged in",
        "230-banner",
        "230 0x5F2D3A26",
        "230 0x00",
        "230 KEY accepted",
        "200 ok",
        "213 0",
        "213 7",
        "213 99999999999999999999999",
        "213-KEY INFO x",
        " declared=0x5F2D3A26",
        " size=7",
        " received-crc=0x00000000",
        " received-crc=unknown",
        " state=verified",
        " state=partial",
        "213 End",
        "350 ok",
        "227 Entering Passive Mode (127,0,0,1,4,1)",
        "227 nothing",
        "150 go",
        "226 done",
        "250 deleted",
        "451 mismatch",
        "500 what",
        "501 bad",
        "502 no",
        "530 no",
        "550 absent",
        "221 bye",
        "",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    prop_oneof![
        8 => known,
        1 => prop::collection::vec(any::<u8>(), 0..40),
        1 => (100u16..700, any::<bool>(), "[ -~]{0,20}")
            .prop_map(|(c, dash, t)| format!("{c}{}{t}", if dash { '-' } else { ' ' }).into_bytes()),
    ]
}

/// What the caller does at a step that needs its action.
#[derive(Clone, Debug)]
enum Act {
    Local { len: u64, crc: u32, prefix: bool },
    Chunk(usize),
    Misuse(u8),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => (0u64..20, prop_oneof![Just(0u32), Just(0x5F2D_3A26), any::<u32>()], any::<bool>())
            .prop_map(|(len, crc, prefix)| Act::Local { len, crc, prefix }),
        4 => (0usize..10).prop_map(Act::Chunk),
        1 => any::<u8>().prop_map(Act::Misuse),
    ]
}

fn check_command(bytes: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(bytes.ends_with(b"\r\n"));
    let body = &bytes[..bytes.len() - 2];
    prop_assert!(!body.contains(&b'\r') && !body.contains(&b'\n'));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn line_reader_never_loses_track(
        chunks in prop::collection::vec(prop::collection::vec(
            prop_oneof![4 => any::<u8>(), 1 => Just(b'\n'), 1 => Just(b'\r')], 0..50), 0..20),
        buf_len in 1usize..40,
    ) {
        let mut storage = vec![0u8; buf_len];
        let mut reader = LineReader::new(&mut storage);
        let all: Vec<u8> = chunks.concat();
        let mut whole = Vec::new();
        for chunk in &chunks {
            let mut rest = &chunk[..];
            loop {
                while let Some(line) = reader.next_line() {
                    prop_assert!(line.bytes.len() <= buf_len);
                    if !line.truncated {
                        prop_assert!(!line.bytes.contains(&b'\n'));
                        whole.push(line.bytes.to_vec());
                    }
                }
                prop_assert!(reader.invariants_hold());
                if rest.is_empty() {
                    break;
                }
                let n = reader.feed(rest);
                prop_assert!(n > 0, "a drained reader always has room");
                rest = &rest[n..];
            }
        }
        // When no line is too long, every complete line comes out exactly.
        let expected: Vec<Vec<u8>> = all
            .split(|&b| b == b'\n')
            .take(all.iter().filter(|&&b| b == b'\n').count())
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            .collect();
        if all.split(|&b| b == b'\n').all(|l| l.len() < buf_len) {
            prop_assert_eq!(whole, expected);
        }
    }

    #[test]
    fn reply_parser_tracks_multi_line_replies(
        lines in prop::collection::vec((reply_line(), any::<bool>()), 0..40),
    ) {
        let mut p = ReplyParser::new();
        for (bytes, truncated) in &lines {
            let before = p.open_code();
            match p.feed(Line { bytes, truncated: *truncated }) {
                Ok(ReplyEvent::Single { code, .. }) => {
                    prop_assert!(before.is_none());
                    prop_assert!((100..600).contains(&code));
                    prop_assert!(!p.in_multiline());
                }
                Ok(ReplyEvent::Begin { code, .. }) => {
                    prop_assert!(before.is_none());
                    prop_assert_eq!(p.open_code(), Some(code));
                }
                Ok(ReplyEvent::Continuation { .. }) => {
                    prop_assert!(before.is_some());
                    prop_assert_eq!(p.open_code(), before);
                }
                Ok(ReplyEvent::End { code, .. }) => {
                    prop_assert_eq!(before, Some(code));
                    prop_assert!(!p.in_multiline());
                }
                Err(_) => prop_assert!(!p.in_multiline()),
            }
        }
    }

    #[test]
    fn pasv_parser_never_panics(text in prop::collection::vec(any::<u8>(), 0..60)) {
        let _ = parse_227(&text);
    }

    #[test]
    fn pasv_round_trips(ip in any::<[u8; 4]>(), port in any::<u16>()) {
        let [a, b, c, d] = ip;
        let text = format!("Entering Passive Mode ({a},{b},{c},{d},{},{})", port >> 8, port & 0xFF);
        prop_assert_eq!(parse_227(text.as_bytes()), Ok(PasvAddr { ip, port }));
    }

    #[test]
    fn decisions_never_resume_without_proof(
        len in 0u64..100, crc in prop_oneof![Just(0u32), Just(7), any::<u32>()],
        size in prop_oneof![Just(RemoteSize::Absent), Just(RemoteSize::Unknown),
                            (0u64..120).prop_map(RemoteSize::Present)],
        key in prop_oneof![Just(KeySupport::NotAsked), Just(KeySupport::Unsupported),
                           Just(KeySupport::Answer(KeyAnswer::Unknown)),
                           prop_oneof![Just(7u32), any::<u32>()]
                               .prop_map(|v| KeySupport::Answer(KeyAnswer::Known(KeyValue(v))))],
        info in prop_oneof![Just(Info::NotAsked), Just(Info::Unsupported),
                            (prop::option::of(0u64..120), prop::option::of(prop::option::of(0u32..3)))
                                .prop_map(|(size, rc)| Info::Facts(InfoFacts {
                                    size,
                                    received_crc: rc.map(|o| o.map(KeyValue)),
                                    state: Some(State::Partial),
                                }))],
        prefix in prop::option::of((0u64..120, 0u32..3)),
        trust_rest in any::<bool>(),
    ) {
        let local = LocalFile { len, crc, prefix: prefix.map(|(len, crc)| Prefix { len, crc }) };
        let remote = Remote { size, key, info };
        let d = decide(&local, &remote, trust_rest);
        if let Decision::Resume { .. } | Decision::Complete = d {
            let RemoteSize::Present(s) = size else { return Err(TestCaseError::fail("no size")) };
            prop_assert!(s <= len);
            prop_assert_eq!(d.start(len), s);
            match key {
                KeySupport::Answer(a) => prop_assert!(a.matches(crc)),
                _ => prop_assert!(trust_rest),
            }
            // KEY INFO is asked, and counts, only where KEY answered.
            if let (Info::Facts(f), KeySupport::Answer(_)) = (info, key) {
                prop_assert_eq!(f.size, Some(s));
                prop_assert_eq!(
                    f.received_crc.flatten().map(|v| v.0),
                    local.prefix.filter(|p| p.len == s).map(|p| p.crc)
                );
            }
        }
        if size == RemoteSize::Absent {
            prop_assert_eq!(d, Decision::Fresh);
        }
    }

    #[test]
    fn session_survives_any_server(
        script in prop::collection::vec((reply_line(), act()), 0..60),
        bare in any::<bool>(),
        trust_rest in any::<bool>(),
        split in 1usize..16,
    ) {
        let cfg = Config {
            key_form: if bare { KeyForm::Bare } else { KeyForm::Site },
            trust_rest,
            ..Config::new("stb", "pw", "rec.ts")
        };
        let mut s = Session::new(cfg).unwrap();
        let mut storage = [0u8; 48];
        let mut reader = LineReader::new(&mut storage);
        let mut cmd = [0u8; 64];
        let file = [0xA5u8; 20];
        let mut failed: Option<SessionError> = None;
        let mut stream: Vec<u8> = Vec::new();
        for (line, _) in &script {
            stream.extend_from_slice(line);
            stream.extend_from_slice(b"\r\n");
        }
        let mut input = stream.chunks(split);
        let mut acts = script.iter().map(|(_, a)| a.clone()).cycle();
        let mut done = false;
        for _ in 0..400 {
            let step = s.poll(&mut cmd);
            if let Some(e) = failed {
                prop_assert_eq!(step, Err(e), "errors stick");
                break;
            }
            let result: Result<(), SessionError> = match step {
                Err(e) => Err(e),
                Ok(Step::Send { len, .. }) => check_command(&cmd[..len]).map(|()| Ok(()))?,
                Ok(Step::Receive) => match reader.next_line() {
                    Some(line) => s.handle_line(line),
                    None => match input.next() {
                        Some(chunk) => { reader.feed(chunk); Ok(()) }
                        None => s.connection_closed(),
                    },
                },
                Ok(Step::Done(o)) => {
                    prop_assert!(o.bytes_sent <= o.local.len);
                    done = true;
                    Ok(())
                }
                Ok(Step::Decided(_)) => Ok(()),
                Ok(other) => match (other, acts.next()) {
                    (_, None) => Ok(()),
                    (Step::Digest { .. }, Some(Act::Local { len, crc, prefix })) => {
                        s.set_local(LocalFile {
                            len,
                            crc,
                            prefix: prefix.then_some(Prefix { len: len / 2, crc }),
                        })
                    }
                    (Step::Connect(_), Some(Act::Local { .. } | Act::Chunk(_))) => s.data_connected(),
                    (Step::Upload { offset, remaining }, Some(Act::Chunk(n))) => {
                        let start = (offset as usize).min(file.len());
                        let end = (start + n).min(file.len());
                        match s.file_data(&file[start..end]) {
                            Ok(out) => {
                                prop_assert!(out.len() as u64 <= remaining);
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    (Step::CloseData, Some(_)) => s.data_closed(),
                    (_, Some(Act::Misuse(m))) => match m % 5 {
                        0 => s.data_connected(),
                        1 => s.data_closed(),
                        2 => s.file_data(b"xx").map(|_| ()),
                        3 => s.connection_closed(),
                        _ => s.set_local(LocalFile { len: 1, crc: 1, prefix: None }),
                    },
                    _ => Ok(()),
                },
            };
            if let Err(e) = result {
                prop_assert_eq!(s.error(), Some(e));
                failed = Some(e);
            }
            if done {
                break;
            }
        }
        prop_assert!(core::mem::size_of_val(&s) <= 512);
    }
}

/// Replies a server might give to each command, good ones first. `whole` is the CRC the
/// server holds for the file, `part` the CRC of its first 10 bytes.
fn candidates(command: Option<Command>, whole: &str, part: &str) -> Vec<String> {
    let list: &[&str] = match command {
        None => &["226 done", "451 CRC mismatch", "150 again\r\n226 done", "552 full"],
        Some(Command::Greeting) => &["220 ready", "220-a\r\n b\r\n220 ready", "120 wait\r\n220 ok", "421 busy"],
        Some(Command::User) => &["331 password", "230 no password needed", "530 no"],
        Some(Command::Pass) => &["230 logged in", "202 fine", "530 no", "421 bye"],
        Some(Command::Type) => &["200 ok", "504 no"],
        Some(Command::Size) => &["213 10", "550 absent", "213 20", "213 0", "502 no SIZE", "213 x"],
        Some(Command::KeyQuery) => &["230 WHOLE", "230 0x00", "500 no", "501 bad", "230 0x1"],
        Some(Command::KeyInfo) => &[
            "213-KEY INFO x\r\n declared=WHOLE\r\n size=10\r\n received-crc=PART\r\n state=partial\r\n updated=2026-01-01T00:00:00Z\r\n213 End",
            "213-KEY INFO x\r\n size=20\r\n received-crc=WHOLE\r\n state=verified\r\n213 End",
            "213-KEY INFO x\r\n size=10\r\n received-crc=unknown\r\n state=untracked\r\n213 End",
            "501 INFO?",
            "213 nothing",
        ],
        Some(Command::Dele) => &["250 deleted", "550 absent", "450 busy"],
        Some(Command::KeyDeclare) => &["230 KEY accepted", "500 no", "501 bad"],
        Some(Command::Pasv) => &["227 Entering Passive Mode (127,0,0,1,4,1)", "227 nowhere", "425 no"],
        Some(Command::Rest) => &["350 ok", "554 beyond the end"],
        Some(Command::Stor) => &["150 go", "125 go", "553 no", "226 early"],
        Some(Command::Quit) => &["221 bye", ""],
    };
    list.iter()
        .map(|l| l.replace("WHOLE", whole).replace("PART", part))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// A server that mostly answers sensibly, sometimes not, with the bytes split anywhere:
    /// the session reaches every phase and still never panics, and a success is consistent.
    #[test]
    fn session_follows_any_dialogue(
        choices in prop::collection::vec(any::<u8>(), 1..40),
        noise in prop::collection::vec(any::<u8>(), 0..30),
        len in prop::sample::select(vec![20usize, 10, 5]),
        bare in any::<bool>(),
        trust_rest in any::<bool>(),
        split in 1usize..64,
    ) {
        let cfg = Config {
            key_form: if bare { KeyForm::Bare } else { KeyForm::Site },
            trust_rest,
            ..Config::new("stb", "pw", "rec.ts")
        };
        let file: Vec<u8> = (0..len as u8).collect();
        let whole = KeyValue(crc32(&file)).to_string();
        let part = KeyValue(crc32(&file[..10.min(len)])).to_string();
        let mut s = Session::new(cfg).unwrap();
        let mut storage = [0u8; 64];
        let mut reader = LineReader::new(&mut storage);
        let mut cmd = [0u8; 64];
        let mut pending: Vec<u8> = Vec::new();
        let mut choice = choices.iter().cycle();
        let mut answer = |command: Option<Command>, pending: &mut Vec<u8>| {
            let c = *choice.next().unwrap_or(&0);
            if c >= 250 {
                pending.extend_from_slice(&noise);
            } else {
                let list = candidates(command, &whole, &part);
                // Mostly the first (good) reply.
                let i = if c < 150 { 0 } else { usize::from(c) % list.len() };
                pending.extend_from_slice(list[i].as_bytes());
            }
            pending.extend_from_slice(b"\r\n");
        };
        answer(Some(Command::Greeting), &mut pending);
        for _ in 0..500 {
            let result = match s.poll(&mut cmd) {
                Err(e) => {
                    prop_assert_eq!(s.error(), Some(e));
                    break;
                }
                Ok(Step::Send { len, command }) => {
                    check_command(&cmd[..len])?;
                    answer(Some(command), &mut pending);
                    Ok(())
                }
                Ok(Step::Receive) => match reader.next_line() {
                    Some(line) => s.handle_line(line),
                    None if pending.is_empty() => s.connection_closed(),
                    None => {
                        let n = split.min(pending.len());
                        let taken = reader.feed(&pending[..n]);
                        pending.drain(..taken);
                        Ok(())
                    }
                },
                Ok(Step::Digest { prefix_at }) => {
                    s.set_local(digest(&mut SliceFile(&file), &mut [0u8; 4], prefix_at, None, |_| {}).unwrap())
                }
                Ok(Step::Decided(d)) => {
                    prop_assert!(d.start(len as u64) <= len as u64);
                    Ok(())
                }
                Ok(Step::Connect(_)) => s.data_connected(),
                Ok(Step::Upload { offset, remaining }) => {
                    prop_assert!(offset + remaining == len as u64);
                    let start = offset as usize;
                    let end = (start + 3).min(len);
                    s.file_data(&file[start..end]).map(|_| ())
                }
                Ok(Step::CloseData) => {
                    answer(None, &mut pending);
                    s.data_closed()
                }
                Ok(Step::Done(o)) => {
                    prop_assert!(o.bytes_sent + o.resumed_from <= len as u64);
                    prop_assert_eq!(o.local.crc, crc32(&file));
                    break;
                }
            };
            if let Err(e) = result {
                prop_assert_eq!(s.error(), Some(e));
                prop_assert_eq!(s.poll(&mut cmd), Err(e));
                break;
            }
        }
    }
}
