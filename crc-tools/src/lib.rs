//! CRC-32 for the KEY protocol: the checksum, its wire format, the KEY command grammar and the
//! one loop that reads a range of a file for its CRC ([`range`]).
//!
//! This crate is the one place where the KEY wire format is written down in code; the server
//! (`ftpd`) and the set-top-box client (`stb-client`) both parse and format through it. It is
//! `no_std` and allocation-free so that the client core can use it on a box.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod checksum;
pub mod command;
pub mod info;
pub mod range;
pub mod value;

pub use checksum::{combine, crc32, Crc32};
pub use command::{KeyCommand, KeyCommandError};
pub use info::{InfoField, InfoLine, InfoLineError, State};
#[cfg(feature = "std")]
pub use range::crc_of_file_range;
pub use range::{crc_span, Span};
pub use value::{KeyAnswer, KeyValue, ParseKeyError};
