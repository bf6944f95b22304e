//! Resume or upload again: the decision table of the KEY protocol, as a pure function.
//!
//! Kept apart from the dialogue so that every branch can be tested from plain values. The
//! rule it implements: resume only when the server proves that its bytes are the beginning of
//! this very file (declared CRC equal to the local one, a partial no longer than the file and,
//! when `KEY INFO` is available, the CRC of the stored bytes equal to the local prefix's);
//! otherwise delete and upload from zero.

use core::fmt;
use crc_tools::{KeyAnswer, KeyValue, State};

/// The CRC of the first `len` bytes of the local file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// How many bytes the CRC covers.
    pub len: u64,
    /// Their CRC.
    pub crc: u32,
}

/// What is known of the local file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalFile {
    /// Length L.
    pub len: u64,
    /// CRC F of the whole file.
    pub crc: u32,
    /// CRC of the prefix as long as the server's partial, when one was asked for and fits.
    pub prefix: Option<Prefix>,
}

/// The answer to `SIZE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteSize {
    /// `550`: no such file.
    Absent,
    /// `213 N`: a file of N bytes.
    Present(u64),
    /// The server does not implement SIZE.
    Unknown,
}

/// The answer to `KEY NULL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySupport {
    /// The server answered with a value (`0x00` is [`KeyAnswer::Unknown`]).
    Answer(KeyAnswer),
    /// The server does not know the KEY command (`500` / `502`).
    Unsupported,
    /// Not asked (the file is absent).
    NotAsked,
}

/// The fields of a `KEY INFO` reply that matter to the decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InfoFacts {
    /// `size=`
    pub size: Option<u64>,
    /// `received-crc=`: `Some(None)` is the word `unknown`.
    pub received_crc: Option<Option<KeyValue>>,
    /// `state=`
    pub state: Option<State>,
}

/// The answer to `KEY INFO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Info {
    /// Not asked: nothing to check it against.
    NotAsked,
    /// The server has KEY but not KEY INFO.
    Unsupported,
    /// The server's record.
    Facts(InfoFacts),
}

/// Everything the server said about the remote file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The answer to `SIZE`.
    pub size: RemoteSize,
    /// The answer to `KEY NULL`.
    pub key: KeySupport,
    /// The answer to `KEY INFO`.
    pub info: Info,
}

/// Why a present file is deleted and uploaded again rather than resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The server's declared CRC is another file's.
    KeyDiffers,
    /// The server knows no CRC for the file (`0x00`).
    KeyUnknown,
    /// The local file's CRC is 0, which the wire cannot tell from "unknown".
    LocalCrcZero,
    /// The server holds more bytes than the local file has.
    PartialLonger,
    /// The server's stored bytes are not the local file's beginning (KEY INFO).
    PrefixMismatch,
    /// KEY INFO could not vouch for the stored bytes (no CRC, or a size that differs).
    PrefixUnknown,
    /// The server has no KEY command and resuming blindly was not allowed.
    NoKeySupport,
    /// The server does not say how large the file is.
    SizeUnknown,
}

impl Reason {
    /// A short machine-friendly name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::KeyDiffers => "key-differs",
            Reason::KeyUnknown => "key-unknown",
            Reason::LocalCrcZero => "local-crc-zero",
            Reason::PartialLonger => "partial-longer",
            Reason::PrefixMismatch => "prefix-mismatch",
            Reason::PrefixUnknown => "prefix-unknown",
            Reason::NoKeySupport => "no-key-support",
            Reason::SizeUnknown => "size-unknown",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with the upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No remote file: declare the KEY, STOR from 0.
    Fresh,
    /// The remote file is this file's beginning: `REST from`, STOR the rest.
    Resume {
        /// The REST offset S.
        from: u64,
    },
    /// The remote file is this whole file: nothing to send.
    Complete,
    /// The remote file cannot be trusted: DELE, declare the KEY, STOR from 0.
    Reupload(Reason),
}

impl Decision {
    /// `fresh`, `resume`, `complete` or `reupload`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Fresh => "fresh",
            Decision::Resume { .. } => "resume",
            Decision::Complete => "complete",
            Decision::Reupload(_) => "reupload",
        }
    }

    /// The offset the upload starts from.
    pub fn start(&self, local_len: u64) -> u64 {
        match *self {
            Decision::Resume { from } => from,
            Decision::Complete => local_len,
            Decision::Fresh | Decision::Reupload(_) => 0,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Resume { from } => write!(f, "resume from {from}"),
            Decision::Reupload(r) => write!(f, "reupload ({r})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// True when `KEY INFO` could still change the decision: everything else says resume.
pub fn wants_info(local: &LocalFile, remote: &Remote) -> bool {
    matches!(remote.info, Info::NotAsked)
        && matches!(remote.key, KeySupport::Answer(_))
        && matches!(
            decide(local, remote, false),
            Decision::Resume { .. } | Decision::Complete
        )
}

/// The decision table.
///
/// `trust_rest` allows resuming by size alone on a server without KEY; it has no effect on a
/// server that answers KEY, whose answer always wins.
pub fn decide(local: &LocalFile, remote: &Remote, trust_rest: bool) -> Decision {
    let s = match remote.size {
        RemoteSize::Absent => return Decision::Fresh,
        RemoteSize::Unknown => return Decision::Reupload(Reason::SizeUnknown),
        RemoteSize::Present(s) => s,
    };
    let answer = match remote.key {
        KeySupport::Answer(a) => a,
        KeySupport::Unsupported | KeySupport::NotAsked => {
            return if !trust_rest {
                Decision::Reupload(Reason::NoKeySupport)
            } else if s > local.len {
                Decision::Reupload(Reason::PartialLonger)
            } else {
                resume_or_complete(s, local.len)
            };
        }
    };
    if local.crc == 0 {
        return Decision::Reupload(Reason::LocalCrcZero);
    }
    match answer {
        KeyAnswer::Unknown => return Decision::Reupload(Reason::KeyUnknown),
        KeyAnswer::Known(_) if !answer.matches(local.crc) => {
            return Decision::Reupload(Reason::KeyDiffers)
        }
        KeyAnswer::Known(_) => {}
    }
    if s > local.len {
        return Decision::Reupload(Reason::PartialLonger);
    }
    if let Info::Facts(info) = remote.info {
        match (info.received_crc, info.size) {
            (Some(Some(received)), Some(size)) if size == s => {
                if local.prefix
                    != Some(Prefix {
                        len: s,
                        crc: received.0,
                    })
                {
                    return Decision::Reupload(Reason::PrefixMismatch);
                }
            }
            _ => return Decision::Reupload(Reason::PrefixUnknown),
        }
    }
    resume_or_complete(s, local.len)
}

fn resume_or_complete(s: u64, len: u64) -> Decision {
    if s == len {
        Decision::Complete
    } else {
        Decision::Resume { from: s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u32 = 0x5F2D_3A26;
    const L: u64 = 1000;

    fn local(prefix: Option<(u64, u32)>) -> LocalFile {
        LocalFile {
            len: L,
            crc: F,
            prefix: prefix.map(|(len, crc)| Prefix { len, crc }),
        }
    }

    fn present(s: u64, key: KeySupport) -> Remote {
        Remote {
            size: RemoteSize::Present(s),
            key,
            info: Info::NotAsked,
        }
    }

    fn known(v: u32) -> KeySupport {
        KeySupport::Answer(KeyAnswer::Known(KeyValue(v)))
    }

    fn facts(size: u64, crc: Option<u32>) -> Info {
        Info::Facts(InfoFacts {
            size: Some(size),
            received_crc: Some(crc.map(KeyValue)),
            state: Some(State::Partial),
        })
    }

    #[test]
    fn absent_file_is_fresh() {
        let r = Remote {
            size: RemoteSize::Absent,
            key: KeySupport::NotAsked,
            info: Info::NotAsked,
        };
        assert_eq!(decide(&local(None), &r, false), Decision::Fresh);
        assert!(!wants_info(&local(None), &r));
    }

    #[test]
    fn same_crc_and_shorter_partial_resumes() {
        let r = present(400, known(F));
        assert_eq!(
            decide(&local(None), &r, false),
            Decision::Resume { from: 400 }
        );
        assert!(wants_info(&local(None), &r));
    }

    /// A partial of 0 bytes is resumed like any other: its declared KEY stands until another
    /// one is declared, so there is nothing to delete.
    #[test]
    fn same_crc_and_an_empty_partial_resumes_from_zero() {
        let mut r = present(0, known(F));
        assert_eq!(
            decide(&local(None), &r, false),
            Decision::Resume { from: 0 }
        );
        assert!(wants_info(&local(None), &r));
        r.info = facts(0, Some(0));
        assert_eq!(
            decide(&local(Some((0, 0))), &r, false),
            Decision::Resume { from: 0 }
        );
    }

    #[test]
    fn same_crc_and_equal_size_is_complete() {
        let r = present(L, known(F));
        assert_eq!(decide(&local(None), &r, false), Decision::Complete);
        assert!(wants_info(&local(None), &r));
    }

    #[test]
    fn different_crc_reuploads() {
        let r = present(400, known(F ^ 1));
        assert_eq!(
            decide(&local(None), &r, false),
            Decision::Reupload(Reason::KeyDiffers)
        );
        assert!(!wants_info(&local(None), &r));
    }

    #[test]
    fn zero_answer_reuploads() {
        let r = present(400, KeySupport::Answer(KeyAnswer::Unknown));
        assert_eq!(
            decide(&local(None), &r, false),
            Decision::Reupload(Reason::KeyUnknown)
        );
    }

    #[test]
    fn local_crc_zero_always_reuploads() {
        let zero = LocalFile {
            len: L,
            crc: 0,
            prefix: None,
        };
        for key in [known(0), KeySupport::Answer(KeyAnswer::Unknown), known(F)] {
            assert_eq!(
                decide(&zero, &present(400, key), false),
                Decision::Reupload(Reason::LocalCrcZero)
            );
        }
    }

    #[test]
    fn longer_partial_reuploads() {
        let r = present(L + 1, known(F));
        assert_eq!(
            decide(&local(None), &r, false),
            Decision::Reupload(Reason::PartialLonger)
        );
        assert!(!wants_info(&local(None), &r));
    }

    #[test]
    fn prefix_crc_must_equal_received_crc() {
        let mut r = present(400, known(F));
        r.info = facts(400, Some(0xAAAA));
        assert_eq!(
            decide(&local(Some((400, 0xAAAA))), &r, false),
            Decision::Resume { from: 400 }
        );
        assert_eq!(
            decide(&local(Some((400, 0xBBBB))), &r, false),
            Decision::Reupload(Reason::PrefixMismatch)
        );
        assert_eq!(
            decide(&local(None), &r, false),
            Decision::Reupload(Reason::PrefixMismatch)
        );
        // A prefix of another length proves nothing.
        assert_eq!(
            decide(&local(Some((399, 0xAAAA))), &r, false),
            Decision::Reupload(Reason::PrefixMismatch)
        );
        assert!(!wants_info(&local(Some((400, 0xAAAA))), &r));
    }

    #[test]
    fn complete_needs_the_prefix_proof_too() {
        let mut r = present(L, known(F));
        r.info = facts(L, Some(F));
        assert_eq!(decide(&local(Some((L, F))), &r, false), Decision::Complete);
        r.info = facts(L, Some(F ^ 2));
        assert_eq!(
            decide(&local(Some((L, F))), &r, false),
            Decision::Reupload(Reason::PrefixMismatch)
        );
    }

    #[test]
    fn info_without_a_usable_crc_reuploads() {
        let mut r = present(400, known(F));
        r.info = facts(400, None);
        assert_eq!(
            decide(&local(Some((400, 1))), &r, false),
            Decision::Reupload(Reason::PrefixUnknown)
        );
        r.info = facts(401, Some(1));
        assert_eq!(
            decide(&local(Some((400, 1))), &r, false),
            Decision::Reupload(Reason::PrefixUnknown)
        );
        r.info = Info::Facts(InfoFacts::default());
        assert_eq!(
            decide(&local(Some((400, 1))), &r, false),
            Decision::Reupload(Reason::PrefixUnknown)
        );
    }

    #[test]
    fn server_without_info_resumes_on_key_alone() {
        let mut r = present(400, known(F));
        r.info = Info::Unsupported;
        assert_eq!(
            decide(&local(None), &r, false),
            Decision::Resume { from: 400 }
        );
        assert!(!wants_info(&local(None), &r));
    }

    #[test]
    fn server_without_key_uploads_from_zero_unless_rest_is_trusted() {
        let r = present(400, KeySupport::Unsupported);
        assert_eq!(
            decide(&local(None), &r, false),
            Decision::Reupload(Reason::NoKeySupport)
        );
        assert_eq!(
            decide(&local(None), &r, true),
            Decision::Resume { from: 400 }
        );
        assert_eq!(
            decide(&local(None), &present(L, KeySupport::Unsupported), true),
            Decision::Complete
        );
        assert_eq!(
            decide(&local(None), &present(L + 5, KeySupport::Unsupported), true),
            Decision::Reupload(Reason::PartialLonger)
        );
        assert!(!wants_info(&local(None), &r));
    }

    #[test]
    fn trust_rest_does_not_override_a_key_answer() {
        let r = present(400, known(F ^ 1));
        assert_eq!(
            decide(&local(None), &r, true),
            Decision::Reupload(Reason::KeyDiffers)
        );
    }

    #[test]
    fn unknown_size_reuploads() {
        let r = Remote {
            size: RemoteSize::Unknown,
            key: KeySupport::NotAsked,
            info: Info::NotAsked,
        };
        assert_eq!(
            decide(&local(None), &r, true),
            Decision::Reupload(Reason::SizeUnknown)
        );
    }

    #[test]
    fn start_offsets() {
        assert_eq!(Decision::Fresh.start(L), 0);
        assert_eq!(Decision::Resume { from: 7 }.start(L), 7);
        assert_eq!(Decision::Complete.start(L), L);
        assert_eq!(Decision::Reupload(Reason::KeyDiffers).start(L), 0);
    }
}
