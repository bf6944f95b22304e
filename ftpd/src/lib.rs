//! ftpd: an FTP upload server for set-top boxes, with the KEY command for safe resumes.
//!
//! libunftp serves FTP; [`backend::KeyStorage`] wraps unftp-sbe-fs and owns the upload write
//! path ([`upload`]); [`records`] keeps one checksum record per file, and [`claims`] keeps one
//! writer per file across nodes; [`site_key`] answers `SITE KEY`. See `docs/` for the protocol as built, configuration and operations.

pub mod backend;
pub mod claims;
pub mod config;
pub mod context;
pub mod drain;
pub mod front;
pub mod ftp_error;
pub mod handoff;
pub mod http;
pub mod key_session;
pub mod logging;
pub mod metrics;
pub mod paths;
pub mod records;
pub mod server;
pub mod site_hash;
pub mod site_key;
pub mod upload;
pub mod users;
pub mod webhook;
pub mod writers;
