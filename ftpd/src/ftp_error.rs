//! The one place where the server's errors become FTP replies: libunftp's storage error kinds
//! (which it turns into reply codes) for the back-end and uploads, and replies for KEY.

use crate::key_session::KeyError;
use crate::paths::PathError;
use crate::records::StoreError;
use crate::upload::UploadError;
use libunftp::options::{Reply, ReplyCode};
use std::io;
use unftp_core::storage::{Error, ErrorKind};

/// An I/O error as the reply class libunftp sends for it.
pub fn io_error(e: &io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::PermanentFileNotAvailable,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::StorageFull => ErrorKind::InsufficientStorageSpaceError,
        io::ErrorKind::QuotaExceeded => ErrorKind::ExceededStorageAllocationError,
        io::ErrorKind::IsADirectory
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::InvalidFilename => ErrorKind::FileNameNotAllowedError,
        _ => ErrorKind::LocalError,
    };
    Error::new(kind, io::Error::new(e.kind(), e.to_string()))
}

/// A path the client may not use (outside its root, not a file name).
pub fn path_error(e: PathError) -> Error {
    Error::new(ErrorKind::FileNameNotAllowedError, e)
}

/// A record-store failure.
pub fn store_error(e: StoreError) -> Error {
    Error::new(store_error_kind(&e), e)
}

/// The reply class for a store failure: a full disk or quota is said as such (452/552, as for
/// the file itself), anything else is a local error.
fn store_error_kind(e: &StoreError) -> ErrorKind {
    match e.io_kind() {
        Some(io::ErrorKind::StorageFull) => ErrorKind::InsufficientStorageSpaceError,
        Some(io::ErrorKind::QuotaExceeded) => ErrorKind::ExceededStorageAllocationError,
        _ => ErrorKind::LocalError,
    }
}

/// The back-end used before libunftp called `enter` (no user yet).
pub fn not_entered() -> Error {
    Error::new(
        ErrorKind::LocalError,
        io::Error::other("storage used before login"),
    )
}

impl From<UploadError> for Error {
    fn from(e: UploadError) -> Self {
        let kind = match &e {
            UploadError::Busy(_) => ErrorKind::TransientFileNotAvailable,
            UploadError::RestBeyondEnd { .. } | UploadError::KeyConflict { .. } => {
                ErrorKind::PermissionDenied
            }
            UploadError::Mismatch { .. } => ErrorKind::LocalError,
            UploadError::Store(s) => store_error_kind(s),
            UploadError::NotAFile => ErrorKind::FileNameNotAllowedError,
            UploadError::Interrupted { .. } | UploadError::Stalled { .. } => {
                ErrorKind::ConnectionClosed
            }
            UploadError::Io(io) => return io_error(io),
        };
        Error::new(kind, e)
    }
}

/// A KEY command that failed, as its reply: `501` for what the client said wrong, `550` for a
/// file that is not there, `530` before login, `451` for the server's own failures (logged).
pub fn key_error(e: KeyError) -> Reply {
    match e {
        KeyError::Path(_) | KeyError::NoCurrentFile | KeyError::TooManyDeclarations => {
            Reply::new_with_string(ReplyCode::ParameterSyntaxError, format!("KEY: {e}"))
        }
        KeyError::NotFound(_) | KeyError::NotAFile(_) => {
            Reply::new_with_string(ReplyCode::FileError, format!("KEY: {e}"))
        }
        KeyError::NotLoggedIn => Reply::new(
            ReplyCode::NotLoggedIn,
            "Please log in with USER and PASS first",
        ),
        KeyError::Store(_) | KeyError::Io(_) => {
            tracing::error!(error = %e, "KEY failed");
            Reply::new(ReplyCode::LocalError, "KEY: local error, try again later")
        }
    }
}

/// A KEY line that does not parse: `501` with what is wrong.
pub fn key_syntax_error(e: crc_tools::KeyCommandError) -> Reply {
    Reply::new_with_string(ReplyCode::ParameterSyntaxError, format!("KEY: {e}"))
}
