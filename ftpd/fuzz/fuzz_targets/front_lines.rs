//! The front's client side: arbitrary bytes, cut into arbitrary reads, go through
//! `LineSplitter`; every line is classified and handed to `ControlSession::on_line`, with the
//! server side (`replies_seen`, `on_reply`) and the driver's follow-up calls (`reset_offset`,
//! `pass_sent`, `unsent`, `tls_started`, `take_pass_in_flight`) in between as the input decides.
//!
//! Checks:
//! - lines end in their only `\n` and never exceed `max_line`; the lines plus the unfinished
//!   rest give back the input byte for byte; `LineTooLong` comes exactly when a line (or an
//!   unfinished one) is longer than `max_line`, and the partial line kept stays within it;
//! - a `NotAscii` word, a bad `REST`, `CCC` and `AUTH TLS` are answered by the front and never
//!   sent; what is sent is one complete line: the line without its leading telnet commands, or
//!   for `KEY` the `SITE KEY` rewrite with the arguments byte for byte;
//! - `PASS` becomes a login for the last `USER` name; an upload or download not after `REST`
//!   (and set-up commands) gets `ResetThenSend`, whose `REST 0` reply is the one swallowed;
//! - `AUTH TLS` starts TLS only when it is available and not started yet; `PROT` sets whether
//!   data connections are TLS; login results, the transfer count and direction follow.
#![no_main]

use ftpd::front::line::{
    argument, classify, command_word, without_telnet, Direction, LineKind, LineSplitter,
};
use ftpd::front::session::{
    ControlSession, LineAction, ReplyEvent, REPLY_BAD_REST, REPLY_NOT_ASCII, REPLY_NO_CCC,
    REPLY_NO_TLS, REPLY_TLS_ALREADY, REST_ZERO,
};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// What the harness expects of the session, kept from the calls it made.
#[derive(Default)]
struct Model {
    /// Final replies the scanner has counted (only grows).
    finals: u64,
    /// The previous command was `REST` (possibly followed by set-up commands).
    armed: bool,
    user: Option<String>,
    pass_in_flight: Option<String>,
    tls_available: bool,
    tls: bool,
    data_tls: bool,
    logged_in: bool,
    transfers: u64,
    direction: Option<Direction>,
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured) -> Result<()> {
    let max_line: usize = u.int_in_range(1..=256)?;
    let mut splitter = LineSplitter::new(max_line);
    let mut m = Model {
        tls_available: u.arbitrary()?,
        ..Model::default()
    };
    let mut session = ControlSession::new(m.tls_available);
    // Every byte pushed, and the bytes of the lines handed out so far.
    let mut input: Vec<u8> = Vec::new();
    let mut taken = 0usize;

    while !u.is_empty() {
        match u.int_in_range(0u8..=9)? {
            // A read from the client (the most common event).
            0..=4 => {
                let len = u.int_in_range(0usize..=300)?;
                let chunk = u.bytes(len.min(u.len()))?;
                splitter.push(chunk);
                input.extend_from_slice(chunk);
                loop {
                    match splitter.next_line() {
                        Ok(Some(line)) => {
                            assert!(line.len() <= max_line, "line over max_line");
                            assert_eq!(line.last(), Some(&b'\n'));
                            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
                            assert_eq!(&input[taken..taken + line.len()], &line[..]);
                            taken += line.len();
                            let more = input.len() > taken;
                            if !on_line(u, &mut session, &mut m, &line, more)? {
                                return Ok(());
                            }
                        }
                        Ok(None) => {
                            let pending = &input[taken..];
                            assert!(!pending.contains(&b'\n'));
                            assert!(pending.len() <= max_line);
                            assert_eq!(splitter.has_partial(), !pending.is_empty());
                            break;
                        }
                        Err(e) => {
                            assert_eq!(e.limit, max_line);
                            let pending = &input[taken..];
                            let first = pending
                                .iter()
                                .position(|&b| b == b'\n')
                                .map_or(pending.len(), |p| p + 1);
                            assert!(first > max_line, "LineTooLong for a line that fits");
                            // The driver answers 500 and closes the connection.
                            return Ok(());
                        }
                    }
                }
            }
            // The scanner counted more final replies.
            5 => {
                m.finals += u.int_in_range(0u64..=3)?;
                session.replies_seen(m.finals);
                assert_eq!(session.replied(), m.finals);
                if let Some(n) = session.swallow() {
                    assert!(
                        n >= m.finals,
                        "a swallowed reply that already passed is kept"
                    );
                }
            }
            // A final reply reached the client.
            6 => {
                let code = *u.choose(&[230u16, 530, 503, 234, 200, 226, 331, 421, 500])?;
                on_reply(&mut session, &mut m, code);
            }
            7 => {
                let code = u.int_in_range(100u16..=599)?;
                on_reply(&mut session, &mut m, code);
            }
            // The connection ends with a login in flight: the driver takes it back.
            8 => assert_eq!(session.take_pass_in_flight(), m.pass_in_flight.take()),
            _ => {
                assert_eq!(session.pass_pending(), m.pass_in_flight.is_some());
                assert_eq!(session.transfers(), m.transfers);
                assert_eq!(session.direction(), m.direction);
            }
        }
        assert_eq!(session.data_tls(), m.data_tls);
        assert_eq!(session.logged_in(), m.logged_in);
    }
    // Whatever was not handed out as a line is still there, unchanged.
    assert_eq!(splitter.take_rest(), input[taken..].to_vec());
    assert!(!splitter.has_partial());
    Ok(())
}

fn on_reply(session: &mut ControlSession, m: &mut Model, code: u16) {
    let event = session.on_reply(code);
    let expected = match code {
        230 | 530 | 503 if m.pass_in_flight.is_some() => {
            let user = m.pass_in_flight.take().unwrap_or_default();
            match code {
                230 => {
                    m.logged_in = true;
                    ReplyEvent::LoggedIn { user }
                }
                530 => ReplyEvent::LoginFailed { user },
                _ => ReplyEvent::LoginVoid { user },
            }
        }
        _ => ReplyEvent::Nothing,
    };
    assert_eq!(event, expected, "reply {code}");
}

/// `AUTH` arguments that ask for TLS.
fn is_tls(arg: &[u8]) -> bool {
    [&b"TLS"[..], b"SSL", b"TLS-C", b"TLS-P"]
        .iter()
        .any(|m| arg.eq_ignore_ascii_case(m))
}

/// Acts on one line as the driver would; `false` when the connection ends here. `more`: the
/// client sent bytes after this line.
fn on_line(
    u: &mut Unstructured,
    session: &mut ControlSession,
    m: &mut Model,
    line: &[u8],
    more: bool,
) -> Result<bool> {
    let kind = classify(line);
    let action = session.on_line(line);
    let armed = m.armed;
    m.armed =
        kind == LineKind::Rest || (armed && matches!(kind, LineKind::Setup | LineKind::Passive));
    let forwarded = without_telnet(line).to_vec();

    if let LineAction::Send(bytes) | LineAction::Passive(bytes) = &action {
        // One owed reply per line sent: the server must receive exactly one complete line.
        assert!(
            !matches!(
                kind,
                LineKind::NotAscii | LineKind::BadRest | LineKind::Pass | LineKind::Ccc
            ),
            "{kind:?} sent"
        );
        assert_eq!(
            bytes.last(),
            Some(&b'\n'),
            "sent bytes are not a complete line"
        );
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(bytes.len() <= line.len() + 5);
    }

    match kind {
        LineKind::NotAscii => {
            assert!(!command_word(line).iter().all(u8::is_ascii_graphic));
            assert_eq!(action, LineAction::Answer(REPLY_NOT_ASCII));
        }
        LineKind::BadRest => assert_eq!(action, LineAction::Answer(REPLY_BAD_REST)),
        LineKind::Ccc => assert_eq!(action, LineAction::Answer(REPLY_NO_CCC)),
        LineKind::Pass => {
            let user = m.user.clone().unwrap_or_default();
            assert_eq!(action, LineAction::Login { user: user.clone() });
            // The driver sends it once no other login is in flight.
            if !session.pass_pending() && u.arbitrary::<bool>()? {
                session.pass_sent(user.clone());
                m.pass_in_flight = Some(user);
            }
        }
        LineKind::Auth if is_tls(argument(line)) => {
            let want = match (m.tls, m.tls_available) {
                (true, _) => LineAction::Answer(REPLY_TLS_ALREADY),
                (false, false) => LineAction::Answer(REPLY_NO_TLS),
                (false, true) => LineAction::StartTls,
            };
            assert_eq!(action, want);
            if action == LineAction::StartTls {
                // Bytes after `AUTH TLS` before the handshake, or a failed handshake: the
                // driver closes.
                if more || u.int_in_range(0u8..=7)? == 0 {
                    return Ok(false);
                }
                session.tls_started();
                m.tls = true;
            }
        }
        LineKind::Key => {
            let mut want = b"SITE KEY".to_vec();
            want.extend_from_slice(&forwarded[3..]);
            assert_eq!(action, LineAction::Send(want));
        }
        LineKind::Transfer(direction) => {
            m.transfers += 1;
            m.direction = Some(direction);
            if direction != Direction::Listing && !armed {
                assert_eq!(action, LineAction::ResetThenSend);
                // The driver waits for earlier replies; it may give up waiting.
                let quiet = session.quiet() && u.int_in_range(0u8..=7)? != 0;
                let ahead = session.reset_offset(quiet);
                if quiet {
                    assert_eq!(ahead, REST_ZERO);
                    // The next final reply is the answer to REST 0, and it is left out.
                    assert_eq!(session.swallow(), Some(m.finals));
                } else {
                    assert_eq!(ahead, b"");
                    // Counting starts afresh from the replies seen: the transfer's is owed.
                    assert!(!session.quiet(), "a transfer was sent but nothing is owed");
                }
            } else {
                assert_eq!(action, LineAction::Send(forwarded));
            }
        }
        LineKind::Passive => {
            assert_eq!(action, LineAction::Passive(forwarded));
            // No passive port came free: the front answers instead.
            if u.int_in_range(0u8..=7)? == 0 {
                session.unsent();
            }
        }
        LineKind::User => {
            let name = argument(line);
            let name = &name[..name.len().min(256)];
            m.user = Some(String::from_utf8_lossy(name).into_owned());
            assert_eq!(action, LineAction::Send(forwarded));
        }
        LineKind::Prot => {
            // Only `PROT C` makes data connections plain again.
            m.data_tls = !argument(line).eq_ignore_ascii_case(b"C");
            assert_eq!(action, LineAction::Send(forwarded));
        }
        LineKind::Auth | LineKind::Rest | LineKind::Setup | LineKind::Other => {
            assert_eq!(action, LineAction::Send(forwarded));
        }
    }
    Ok(true)
}
