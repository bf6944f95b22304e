//! The front's view of one control session: a state machine fed with the client's lines and the
//! server's reply codes. No sockets inside; the async driver in `control.rs` does the waiting
//! and the I/O this decides on.
//!
//! What it tracks: the final replies the server owes (the greeting, then one per line sent), the
//! one reply to leave out (the answer to a `REST 0` the front inserted), the login in progress,
//! whether data connections are TLS (`PROT P`), and the transfer commands sent, which the
//! session's data connections wait for to know which way their bytes go. The front ends the
//! control channel's TLS itself, so it reads every line, inside TLS as outside.
//!
//! With TLS required (`ftps_required`), the front refuses a login on a plain control channel
//! ([`REPLY_LOGIN_NEEDS_TLS`]; the session may still send `AUTH TLS`) and a transfer whose data
//! connection would be plain ([`REPLY_DATA_NEEDS_TLS`]: no `PROT P`).

use super::line::{argument, classify, rewrite_key, without_telnet, Direction, LineKind};

/// Sent ahead of a transfer that does not follow a `REST`: libunftp keeps a `REST` offset until
/// a transfer succeeds, so a refused one would otherwise leave it for the next transfer.
pub const REST_ZERO: &[u8] = b"REST 0\r\n";

pub const REPLY_NOT_ASCII: &[u8] = b"500 Command word must be plain ASCII.\r\n";
pub const REPLY_BAD_REST: &[u8] = b"501 REST needs a decimal byte offset.\r\n";
pub const REPLY_TLS_READY: &[u8] = b"234 AUTH command OK. Expecting TLS Negotiation.\r\n";
pub const REPLY_NO_TLS: &[u8] = b"534 TLS is not configured on this server.\r\n";
pub const REPLY_TLS_ALREADY: &[u8] = b"503 The control channel is already TLS.\r\n";
pub const REPLY_NO_CCC: &[u8] = b"534 The control channel stays TLS.\r\n";
/// `USER`/`PASS` on a plain control channel while TLS is required. `530` is the reply RFC 959
/// gives both commands for a refused login; the text must not match lftp's `ftp:retry-530`
/// patterns, or lftp would retry the same plain login.
pub const REPLY_LOGIN_NEEDS_TLS: &[u8] =
    b"530 Login refused: this server requires TLS, send AUTH TLS first.\r\n";
/// A transfer without `PROT P` while TLS is required: RFC 4217's reply for a data connection
/// the server will not open with the current `PROT` setting.
pub const REPLY_DATA_NEEDS_TLS: &[u8] =
    b"521 Data connection cannot be opened with this PROT setting: this server requires PROT P.\r\n";

/// Longest user name kept for counting failed logins; longer names are cut.
const MAX_USER: usize = 256;

/// `AUTH` mechanisms that mean TLS (RFC 4217 names `TLS`; `SSL` and `TLS-C` are old synonyms).
fn is_tls_mechanism(arg: &[u8]) -> bool {
    [&b"TLS"[..], b"SSL", b"TLS-C", b"TLS-P"]
        .iter()
        .any(|m| arg.eq_ignore_ascii_case(m))
}

/// What to do with one complete client line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineAction {
    /// Send these bytes to the server.
    Send(Vec<u8>),
    /// Answer the client with this reply, after every earlier reply; nothing goes to the server.
    Answer(&'static [u8]),
    /// A login attempt: wait until no other is in flight and the throttle admits `user`, then
    /// call [`ControlSession::pass_sent`] and send the line.
    Login { user: String },
    /// `PASV`/`EPSV`: hold a passive port for the reply first (or answer `425`), then send it.
    Passive(Vec<u8>),
    /// `AUTH TLS` accepted: once every earlier reply has reached the client, answer
    /// [`REPLY_TLS_READY`] and start TLS on the control channel.
    StartTls,
    /// A transfer without a `REST` before it: once every earlier reply is in, call
    /// [`ControlSession::reset_offset`] and send what it returns ahead of the line.
    ResetThenSend,
}

/// What a final reply meant to the front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEvent {
    Nothing,
    /// The login in flight for `user` succeeded.
    LoggedIn {
        user: String,
    },
    /// The login in flight for `user` failed.
    LoginFailed {
        user: String,
    },
    /// The PASS was refused without trying a password (e.g. no USER before it).
    LoginVoid {
        user: String,
    },
}

/// One control session as the front sees it.
#[derive(Debug)]
pub struct ControlSession {
    /// Final replies the server owes: the greeting plus one per line sent to it.
    owed: u64,
    /// Final replies seen so far.
    replied: u64,
    /// Number (from 0, the greeting) of the final reply to leave out.
    swallow: Option<u64>,
    /// The user named by the last `USER` line.
    user: Option<String>,
    /// A `PASS` was sent for this user and its result has not been seen.
    pass_in_flight: Option<String>,
    logged_in: bool,
    /// TLS can be started on the control channel (a certificate is configured).
    tls_available: bool,
    /// No login without TLS on the control channel, no transfer without `PROT P`.
    tls_required: bool,
    /// The control channel is TLS.
    tls: bool,
    /// Data connections are TLS (`PROT P`): they must be relayed, never handed over.
    data_tls: bool,
    /// The previous command was a `REST` (possibly followed by data-connection set-up).
    rest_armed: bool,
    /// Transfer commands sent so far, and the direction of the last one.
    transfers: u64,
    direction: Option<Direction>,
    /// The last transfer command was answered by the front (no `PROT P` while TLS is
    /// required); it counts in `transfers`, so its data connection learns that nothing will
    /// use it.
    refused: bool,
}

impl ControlSession {
    /// `tls_available`: whether `AUTH TLS` can be accepted.
    pub fn new(tls_available: bool) -> Self {
        ControlSession {
            owed: 1,
            replied: 0,
            swallow: None,
            user: None,
            pass_in_flight: None,
            logged_in: false,
            tls_available,
            tls_required: false,
            tls: false,
            data_tls: false,
            rest_armed: false,
            transfers: 0,
            direction: None,
            refused: false,
        }
    }

    /// The same session with TLS required (`ftps_required`): logins only inside TLS, transfers
    /// only with `PROT P`. Meaningful only with `tls_available`.
    pub fn requiring_tls(mut self, required: bool) -> Self {
        self.tls_required = required;
        self
    }

    /// Decides on a complete line (terminator included). Lines the front sends on are counted
    /// as owing a reply here, except a login, which counts in [`pass_sent`](Self::pass_sent).
    pub fn on_line(&mut self, line: &[u8]) -> LineAction {
        let kind = classify(line);
        let armed = self.rest_armed;
        let setup = matches!(kind, LineKind::Setup | LineKind::Passive);
        self.rest_armed = kind == LineKind::Rest || (setup && armed);
        match kind {
            LineKind::NotAscii => return LineAction::Answer(REPLY_NOT_ASCII),
            LineKind::BadRest => return LineAction::Answer(REPLY_BAD_REST),
            LineKind::User | LineKind::Pass if self.tls_required && !self.tls => {
                // Nothing reaches libunftp, so the throttle counts no failure: no password
                // was checked.
                return LineAction::Answer(REPLY_LOGIN_NEEDS_TLS);
            }
            LineKind::Pass => {
                return LineAction::Login {
                    user: self.user.clone().unwrap_or_default(),
                }
            }
            LineKind::Ccc => return LineAction::Answer(REPLY_NO_CCC),
            LineKind::Auth if is_tls_mechanism(argument(line)) => {
                return match (self.tls, self.tls_available) {
                    (true, _) => LineAction::Answer(REPLY_TLS_ALREADY),
                    (false, false) => LineAction::Answer(REPLY_NO_TLS),
                    (false, true) => LineAction::StartTls,
                };
            }
            _ => {}
        }
        if let LineKind::Transfer(direction) = kind {
            self.transfers += 1;
            self.direction = Some(direction);
            self.refused = self.tls_required && !self.data_tls;
            if self.refused {
                // libunftp keeps any REST offset; the next transfer is not armed, so it gets
                // `REST 0` first.
                return LineAction::Answer(REPLY_DATA_NEEDS_TLS);
            }
            if direction != Direction::Listing && !armed {
                return LineAction::ResetThenSend;
            }
        }
        self.owed += 1;
        match kind {
            LineKind::Key => LineAction::Send(rewrite_key(line).unwrap_or_else(|| line.to_vec())),
            LineKind::User => {
                let name = argument(line);
                let name = &name[..name.len().min(MAX_USER)];
                self.user = Some(String::from_utf8_lossy(name).into_owned());
                LineAction::Send(without_telnet(line).to_vec())
            }
            LineKind::Prot => {
                // Only `PROT C` makes data plain again; anything else keeps them relayed.
                self.data_tls = !argument(line).eq_ignore_ascii_case(b"C");
                LineAction::Send(without_telnet(line).to_vec())
            }
            LineKind::Passive => LineAction::Passive(without_telnet(line).to_vec()),
            _ => LineAction::Send(without_telnet(line).to_vec()),
        }
    }

    /// The transfer line of a [`LineAction::ResetThenSend`] goes out now; `quiet` says whether
    /// every earlier reply came in (only then is the next final reply certainly the one to
    /// `REST 0`). Returns what to send ahead of the line.
    pub fn reset_offset(&mut self, quiet: bool) -> &'static [u8] {
        self.owed += 1;
        if !quiet {
            // A reply that never came (or one sent twice) would make the count wrong for good:
            // start counting afresh from what has been seen.
            self.owed = self.replied + 1;
            return b"";
        }
        self.swallow = Some(self.replied);
        self.owed += 1;
        REST_ZERO
    }

    /// The line of a [`LineAction::Passive`] is not sent after all (no port came free); the
    /// front answers it instead.
    pub fn unsent(&mut self) {
        self.owed = self.owed.saturating_sub(1);
    }

    /// The `PASS` of a [`LineAction::Login`] goes out now.
    pub fn pass_sent(&mut self, user: String) {
        self.owed += 1;
        self.pass_in_flight = Some(user);
    }

    /// The login in flight, if any; a connection that ends takes it back from the throttle.
    pub fn take_pass_in_flight(&mut self) -> Option<String> {
        self.pass_in_flight.take()
    }

    /// Whether a login is waiting for its result.
    pub fn pass_pending(&self) -> bool {
        self.pass_in_flight.is_some()
    }

    /// Every line sent so far has had its final reply.
    pub fn quiet(&self) -> bool {
        self.replied >= self.owed
    }

    /// Final replies seen so far.
    pub fn replied(&self) -> u64 {
        self.replied
    }

    /// Final reply to leave out, counting from 0 (the greeting).
    pub fn swallow(&self) -> Option<u64> {
        self.swallow
    }

    /// The server's final replies seen so far moved to `finals` (the scanner's count; the one
    /// left out included).
    pub fn replies_seen(&mut self, finals: u64) {
        self.replied = finals;
        if self.swallow.is_some_and(|n| n < finals) {
            self.swallow = None;
        }
    }

    /// Acts on one final reply code that reached the client.
    pub fn on_reply(&mut self, code: u16) -> ReplyEvent {
        match code {
            230 | 530 | 503 if self.pass_in_flight.is_some() => {
                let user = self.pass_in_flight.take().unwrap_or_default();
                match code {
                    230 => {
                        self.logged_in = true;
                        ReplyEvent::LoggedIn { user }
                    }
                    530 => ReplyEvent::LoginFailed { user },
                    _ => ReplyEvent::LoginVoid { user },
                }
            }
            _ => ReplyEvent::Nothing,
        }
    }

    pub fn logged_in(&self) -> bool {
        self.logged_in
    }

    /// The control channel is now TLS (the front answered `AUTH TLS`).
    pub fn tls_started(&mut self) {
        self.tls = true;
    }

    /// Data connections are TLS (`PROT P`), end to end between client and libunftp.
    pub fn data_tls(&self) -> bool {
        self.data_tls
    }

    /// Transfer commands sent so far.
    pub fn transfers(&self) -> u64 {
        self.transfers
    }

    /// Which way the last transfer command moves bytes.
    pub fn direction(&self) -> Option<Direction> {
        self.direction
    }

    /// Logins need TLS and transfers `PROT P` (`ftps_required`).
    pub fn tls_required(&self) -> bool {
        self.tls_required
    }

    /// The last transfer command was refused by the front itself and never reached libunftp.
    pub fn transfer_refused(&self) -> bool {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(s: &mut ControlSession, line: &[u8]) -> Vec<u8> {
        match s.on_line(line) {
            LineAction::Send(b) => b,
            other => panic!("{other:?}"),
        }
    }

    /// Feeds `n` final replies.
    fn answer(s: &mut ControlSession, n: u64, seen: &mut u64) {
        *seen += n;
        s.replies_seen(*seen);
    }

    #[test]
    fn counts_replies_owed_from_the_greeting_on() {
        let mut s = ControlSession::new(true);
        let mut seen = 0;
        assert!(!s.quiet());
        answer(&mut s, 1, &mut seen);
        assert!(s.quiet());
        send(&mut s, b"USER bob\r\n");
        send(&mut s, b"NOOP\r\n");
        assert!(!s.quiet());
        answer(&mut s, 2, &mut seen);
        assert!(s.quiet());
    }

    #[test]
    fn bare_key_is_rewritten_and_other_lines_pass_unchanged() {
        let mut s = ControlSession::new(true);
        assert_eq!(send(&mut s, b"key 0x1\r\n"), b"SITE KEY 0x1\r\n");
        assert_eq!(send(&mut s, b"SITE KEY NULL f\r\n"), b"SITE KEY NULL f\r\n");
        assert_eq!(send(&mut s, b"\xff\xf4ABOR\r\n"), b"ABOR\r\n");
    }

    #[test]
    fn unicode_words_and_bad_rest_are_answered_by_the_front() {
        let mut s = ControlSession::new(true);
        for line in ["PA\u{df} x\r\n", "PA\u{17f}S x\r\n", "RE\u{17f}T 5\r\n"] {
            assert_eq!(
                s.on_line(line.as_bytes()),
                LineAction::Answer(REPLY_NOT_ASCII)
            );
        }
        for line in [&b"REST abc\r\n"[..], b"REST -5\r\n", b"REST\r\n"] {
            assert_eq!(s.on_line(line), LineAction::Answer(REPLY_BAD_REST));
        }
        // None of them is owed a reply by the server.
        s.replies_seen(1);
        assert!(s.quiet());
        // A bad REST does not arm the offset: the next transfer still gets REST 0.
        assert_eq!(s.on_line(b"STOR f\r\n"), LineAction::ResetThenSend);
    }

    #[test]
    fn a_transfer_after_rest_keeps_its_offset_and_others_get_rest_zero() {
        let mut s = ControlSession::new(true);
        s.replies_seen(1);
        send(&mut s, b"REST 100\r\n");
        assert_eq!(
            s.on_line(b"PASV\r\n"),
            LineAction::Passive(b"PASV\r\n".to_vec())
        );
        send(&mut s, b"TYPE I\r\n");
        assert_eq!(send(&mut s, b"STOR f\r\n"), b"STOR f\r\n");
        assert_eq!(s.direction(), Some(Direction::Upload));
        // Something else between REST and the transfer disarms it.
        send(&mut s, b"REST 100\r\n");
        send(&mut s, b"SIZE f\r\n");
        assert_eq!(s.on_line(b"STOR f\r\n"), LineAction::ResetThenSend);
        // Listings do not use the offset.
        assert_eq!(send(&mut s, b"LIST\r\n"), b"LIST\r\n");
        assert_eq!(s.transfers(), 3);
    }

    #[test]
    fn the_reply_to_rest_zero_is_left_out() {
        let mut s = ControlSession::new(true);
        let mut seen = 0;
        answer(&mut s, 1, &mut seen);
        assert_eq!(s.on_line(b"RETR f\r\n"), LineAction::ResetThenSend);
        assert_eq!(s.reset_offset(true), REST_ZERO);
        // Greeting is reply 0; the REST 0's reply is number 1.
        assert_eq!(s.swallow(), Some(1));
        answer(&mut s, 1, &mut seen);
        assert_eq!(s.swallow(), None);
        assert!(!s.quiet());
        answer(&mut s, 1, &mut seen);
        assert!(s.quiet());
    }

    #[test]
    fn missing_replies_skip_the_reset_and_recount() {
        let mut s = ControlSession::new(true);
        s.replies_seen(1);
        send(&mut s, b"NOOP\r\n");
        assert_eq!(s.on_line(b"STOR f\r\n"), LineAction::ResetThenSend);
        assert_eq!(s.reset_offset(false), b"");
        assert_eq!(s.swallow(), None);
        s.replies_seen(2);
        assert!(s.quiet());
    }

    #[test]
    fn login_results_name_the_user_of_the_attempt() {
        let mut s = ControlSession::new(true);
        send(&mut s, b"USER bob\r\n");
        assert_eq!(
            s.on_line(b"PASS x\r\n"),
            LineAction::Login { user: "bob".into() }
        );
        s.pass_sent("bob".into());
        assert!(s.pass_pending());
        // A 530 for something else while no PASS is pending changes nothing...
        assert_eq!(s.on_reply(331), ReplyEvent::Nothing);
        assert_eq!(
            s.on_reply(530),
            ReplyEvent::LoginFailed { user: "bob".into() }
        );
        assert_eq!(s.on_reply(530), ReplyEvent::Nothing);
        s.pass_sent("bob".into());
        assert_eq!(s.on_reply(230), ReplyEvent::LoggedIn { user: "bob".into() });
        assert!(s.logged_in());
    }

    #[test]
    fn auth_tls_is_the_fronts_own_and_prot_decides_the_data() {
        let mut s = ControlSession::new(true);
        assert_eq!(s.on_line(b"AUTH TLS\r\n"), LineAction::StartTls);
        s.tls_started();
        assert_eq!(
            s.on_line(b"auth ssl\r\n"),
            LineAction::Answer(REPLY_TLS_ALREADY)
        );
        assert_eq!(s.on_line(b"CCC\r\n"), LineAction::Answer(REPLY_NO_CCC));
        // Not a TLS mechanism: libunftp answers it.
        assert_eq!(send(&mut s, b"AUTH GSSAPI\r\n"), b"AUTH GSSAPI\r\n");
        assert!(!s.data_tls());
        send(&mut s, b"PROT P\r\n");
        assert!(s.data_tls());
        send(&mut s, b"PROT C\r\n");
        assert!(!s.data_tls());
        // Without a certificate the front says so itself.
        let mut plain = ControlSession::new(false);
        assert_eq!(
            plain.on_line(b"AUTH TLS\r\n"),
            LineAction::Answer(REPLY_NO_TLS)
        );
    }

    #[test]
    fn with_tls_required_logins_wait_for_tls_and_transfers_for_prot_p() {
        let mut s = ControlSession::new(true).requiring_tls(true);
        s.replies_seen(1);
        for line in [&b"USER bob\r\n"[..], b"pass x\r\n", b"\xff\xf4User bob\r\n"] {
            assert_eq!(s.on_line(line), LineAction::Answer(REPLY_LOGIN_NEEDS_TLS));
        }
        // Answered by the front: libunftp owes nothing, and no login is in flight.
        assert!(s.quiet());
        assert!(!s.pass_pending());
        // Other commands still go through, and the session may still start TLS.
        assert_eq!(send(&mut s, b"FEAT\r\n"), b"FEAT\r\n");
        assert_eq!(s.on_line(b"AUTH TLS\r\n"), LineAction::StartTls);
        s.tls_started();
        send(&mut s, b"USER bob\r\n");
        assert_eq!(
            s.on_line(b"PASS x\r\n"),
            LineAction::Login { user: "bob".into() }
        );
        s.pass_sent("bob".into());
        assert_eq!(s.on_reply(230), ReplyEvent::LoggedIn { user: "bob".into() });
        // Inside TLS with plain data connections, every transfer is refused, and counted so
        // that its data connection learns it.
        send(&mut s, b"REST 100\r\n");
        for line in [
            &b"STOR f\r\n"[..],
            b"RETR f\r\n",
            b"LIST\r\n",
            b"appe f\r\n",
        ] {
            assert_eq!(s.on_line(line), LineAction::Answer(REPLY_DATA_NEEDS_TLS));
            assert!(s.transfer_refused());
        }
        assert_eq!(s.transfers(), 4);
        send(&mut s, b"PBSZ 0\r\n");
        send(&mut s, b"PROT P\r\n");
        // The REST before the refused STOR no longer applies: this one gets REST 0 first.
        assert_eq!(s.on_line(b"STOR f\r\n"), LineAction::ResetThenSend);
        assert!(!s.transfer_refused());
        assert_eq!(send(&mut s, b"LIST\r\n"), b"LIST\r\n");
        send(&mut s, b"PROT C\r\n");
        assert_eq!(
            s.on_line(b"NLST\r\n"),
            LineAction::Answer(REPLY_DATA_NEEDS_TLS)
        );
        // Not required: plain logins and plain transfers go through as before.
        let mut open = ControlSession::new(true).requiring_tls(false);
        send(&mut open, b"USER bob\r\n");
        assert_eq!(
            open.on_line(b"PASS x\r\n"),
            LineAction::Login { user: "bob".into() }
        );
        assert_eq!(send(&mut open, b"LIST\r\n"), b"LIST\r\n");
        assert!(!open.transfer_refused());
    }

    #[test]
    fn user_names_are_bounded() {
        let mut s = ControlSession::new(true);
        let mut line = b"USER ".to_vec();
        line.extend(std::iter::repeat_n(b'a', 5000));
        line.extend_from_slice(b"\r\n");
        send(&mut s, &line);
        match s.on_line(b"PASS x\r\n") {
            LineAction::Login { user } => assert_eq!(user.len(), MAX_USER),
            other => panic!("{other:?}"),
        }
    }
}
