//! ftpd: an FTP upload server for set-top boxes, with the KEY command for safe resumes.
//!
//! libunftp serves FTP; [`storage::KeyStorage`] wraps unftp-sbe-fs and owns the upload write
//! path ([`upload`]); [`store`] keeps one checksum [`record`] per file; [`site_key`] answers
//! `SITE KEY`. See `docs/` for the protocol as built, configuration and operations.

pub mod config;
pub mod front;
pub mod handoff;
pub mod logging;
pub mod paths;
pub mod record;
pub mod recovery;
pub mod server;
pub mod site_hash;
pub mod site_key;
pub mod storage;
pub mod store;
pub mod upload;
pub mod users;
pub mod writers;
