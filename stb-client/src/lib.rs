//! The set-top-box side of FTP upload with the KEY (CRC-32) command.
//!
//! A recording is uploaded over FTP; when a link drop leaves a partial file on the server,
//! the KEY command lets the box prove that the partial is the beginning of *this* recording
//! before it resumes, and upload from zero otherwise.
//!
//! - [`session`]: the whole dialogue as a sans-IO state machine (no sockets, no heap).
//! - [`decision`]: the resume-or-reupload table as a pure function.
//! - [`reply`], [`pasv`]: parsers for control-connection lines and the `227` reply.
//! - [`local`]: the read-at-offset file trait and the one-pass digest.
//! - [`driver`]: ties the session to `embedded-io` transports, with retries and back-off;
//!   usable on a box without `std`.
//! - `transport` (feature `std`): blocking `std::net` and `std::fs` implementations.
//!
//! Without the `std` feature the crate is `no_std` and uses no allocator.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(test)]
extern crate std;

pub mod decision;
pub mod driver;
pub mod local;
pub mod pasv;
pub mod reply;
pub mod session;
#[cfg(feature = "std")]
pub mod transport;

#[cfg(test)]
mod proptests;

pub use decision::{Decision, LocalFile, Prefix, Reason};
pub use driver::{
    upload, AttemptError, Buffers, Network, Observer, RetryPolicy, Sleep, UploadError,
};
pub use local::{crc_span_sequential, digest, ReadAt, SliceFile, Span};
pub use pasv::PasvAddr;
pub use reply::{Line, LineReader, ReplyParser};
pub use session::{Command, Config, KeyForm, Outcome, Session, SessionError, Step};
