//! CRC-32 for the KEY protocol: the checksum, its wire format and the KEY command grammar.
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
pub mod value;

pub use checksum::{combine, crc32, Crc32};
pub use command::{KeyCommand, KeyCommandError};
pub use info::{InfoField, InfoLine, InfoLineError, State};
pub use value::{KeyAnswer, KeyValue, ParseKeyError};
