//! The KEY state of one control connection (what it declared, its working directory, the file
//! it named last) and the KEY commands run against it. The storage back-end owns one per
//! session, because libunftp gives SITE handlers nothing else that lives as long as a session.

use crate::context::Services;
use crate::paths::{self, PathError};
use crate::records::recovery::{self, ReconcileError};
use crate::records::{FileId, Record, StoreError};
use cap_std::fs::Dir;
use crc_tools::{KeyAnswer, KeyCommand, KeyValue, State};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Per-file declarations a session may hold before uploading (`KEY <crc> <path>`).
const MAX_DECLARATIONS: usize = 64;

/// What one control connection has said about KEY.
#[derive(Debug)]
struct Said {
    cwd: String,
    /// `KEY <crc>`: applies to the next STOR/APPE of this session.
    pending: Option<u32>,
    /// `KEY <crc> <path>`: applies to the next upload of that path.
    declared_for: Vec<(String, u32)>,
    /// The file most recently named by SIZE, MDTM, STOR, APPE or a KEY with a path.
    current: Option<String>,
}

/// One session's KEY state.
#[derive(Debug)]
pub struct KeySession {
    said: Mutex<Said>,
}

/// Where KEY looks a file up: the user's confined root, the records and the running uploads.
#[derive(Debug)]
pub struct Files {
    pub root: Arc<Dir>,
    pub services: Arc<Services>,
    pub user: String,
}

/// What a KEY command produced.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    Declared { crc: KeyValue, path: Option<String> },
    Answer(KeyAnswer),
    Info { path: String, lines: Vec<String> },
}

/// Why a KEY command failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Path(#[from] PathError),
    #[error("no current file: name one (KEY INFO <path>)")]
    NoCurrentFile,
    #[error("too many pending declarations in this session (at most {MAX_DECLARATIONS})")]
    TooManyDeclarations,
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("not a regular file: {0}")]
    NotAFile(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
    #[error("not logged in")]
    NotLoggedIn,
}

impl Default for KeySession {
    fn default() -> Self {
        KeySession {
            said: Mutex::new(Said {
                cwd: "/".into(),
                pending: None,
                declared_for: Vec::new(),
                current: None,
            }),
        }
    }
}

impl KeySession {
    fn said(&self) -> std::sync::MutexGuard<'_, Said> {
        self.said.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The working directory, for paths the client gives relative to it.
    pub fn cwd(&self) -> String {
        self.said().cwd.clone()
    }

    /// The client changed directory to `path` (normalised).
    pub fn set_cwd(&self, path: String) {
        self.said().cwd = path;
    }

    /// `path` becomes the current file (KEY without a path applies to it).
    pub fn touch(&self, path: &str) {
        self.said().current = Some(path.to_string());
    }

    /// Runs one KEY command, looking files up in `files`.
    pub async fn command(&self, files: Files, cmd: KeyCommand<'_>) -> Result<KeyOutcome, KeyError> {
        let resolve = |p: &str| -> Result<String, KeyError> {
            let cwd = self.said().cwd.clone();
            Ok(paths::resolve_file(&cwd, Path::new(p))?)
        };
        let target = |p: Option<&str>| -> Result<Option<String>, KeyError> {
            match p {
                Some(p) => {
                    let path = resolve(p)?;
                    self.touch(&path);
                    Ok(Some(path))
                }
                None => Ok(self.said().current.clone()),
            }
        };
        match cmd {
            KeyCommand::Declare { crc, path: None } => {
                self.said().pending = Some(crc.0);
                files.services.metrics.key_declared();
                Ok(KeyOutcome::Declared { crc, path: None })
            }
            KeyCommand::Declare { crc, path: Some(p) } => {
                let path = resolve(p)?;
                let mut s = self.said();
                s.declared_for.retain(|(q, _)| *q != path);
                if s.declared_for.len() >= MAX_DECLARATIONS {
                    return Err(KeyError::TooManyDeclarations);
                }
                s.declared_for.push((path.clone(), crc.0));
                s.current = Some(path.clone());
                drop(s);
                files.services.metrics.key_declared();
                Ok(KeyOutcome::Declared {
                    crc,
                    path: Some(path),
                })
            }
            KeyCommand::Query { path } => {
                let Some(path) = target(path)? else {
                    return Ok(KeyOutcome::Answer(KeyAnswer::Unknown));
                };
                let view = files.describe(&path).await;
                let declared = match view {
                    Ok(v) => v.declared,
                    Err(KeyError::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                Ok(KeyOutcome::Answer(KeyAnswer::from_declared(declared)))
            }
            KeyCommand::Info { path } => {
                let path = target(path)?.ok_or(KeyError::NoCurrentFile)?;
                let v = files.describe(&path).await?;
                use crc_tools::{InfoField, InfoLine};
                let fields = [
                    InfoField::Declared(KeyAnswer::from_declared(v.declared)),
                    InfoField::Size(v.size),
                    InfoField::ReceivedCrc(v.crc.map(KeyValue)),
                    InfoField::State(v.state),
                    InfoField::Updated(&v.updated),
                ];
                let lines = fields
                    .into_iter()
                    .map(|f| format!(" {}", InfoLine(f)))
                    .collect();
                Ok(KeyOutcome::Info { path, lines })
            }
        }
    }

    /// Takes the declaration that applies to an upload of `path` starting now.
    pub fn take_declaration(&self, path: &str) -> Option<u32> {
        let mut s = self.said();
        s.current = Some(path.to_string());
        let named = s
            .declared_for
            .iter()
            .position(|(p, _)| p == path)
            .map(|i| s.declared_for.remove(i).1);
        named.or_else(|| s.pending.take())
    }
}

impl Files {
    /// Everything known of a file, in O(1): the live upload, else the record, else the file.
    async fn describe(&self, path: &str) -> Result<FileView, KeyError> {
        let (root, services) = (self.root.clone(), self.services.clone());
        let (name, p) = (self.user.clone(), path.to_string());
        let live = services.writers.progress(&(name.clone(), p.clone()));
        tokio::task::spawn_blocking(move || {
            let meta = match root.metadata(paths::relative(&p)) {
                Ok(m) => m,
                // A path through a regular file, or a name too long to exist, names no file:
                // answer as SIZE does, not with a "try again later" local error.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound
                            | io::ErrorKind::NotADirectory
                            | io::ErrorKind::InvalidFilename
                    ) =>
                {
                    return Err(KeyError::NotFound(p))
                }
                Err(e) => return Err(e.into()),
            };
            if !meta.is_file() {
                return Err(KeyError::NotAFile(p));
            }
            let record = match services.store.get(&name, &p)? {
                Some(r) if r.open && live.is_none() && services.claims.shared() => {
                    Some(settle_orphan(&services, &root, &name, &p, r)?)
                }
                r => r,
            };
            let meta = if record.as_ref().is_some_and(|r| !r.open) {
                root.metadata(paths::relative(&p))?
            } else {
                meta
            };
            let id = {
                use cap_std::fs::MetadataExt;
                FileId::new(meta.ino(), meta.mtime(), meta.mtime_nsec())
            };
            Ok(FileView::of(
                meta.len(),
                id,
                meta.modified().ok().map(|t| t.into_std()),
                record,
                live,
            ))
        })
        .await
        .map_err(|e| KeyError::Io(io::Error::other(e)))?
    }
}

/// An open record with no writer on this node: unless another node's live claim covers the
/// file, its writer died, so it is reconciled with the shared file now and the answer
/// describes the bytes the file holds (a box resuming on this node needs exactly that).
fn settle_orphan(
    services: &Services,
    root: &Dir,
    user: &str,
    path: &str,
    open: Record,
) -> Result<Record, KeyError> {
    let Some(lease) = services.claims.try_claim(user, path)? else {
        return Ok(open); // running on another node
    };
    let settled = (|| {
        let Some(rec) = services.store.get(user, path)?.filter(|r| r.open) else {
            return Ok(services.store.get(user, path)?.unwrap_or(open));
        };
        let file = root.open(paths::relative(path))?.into_std();
        match recovery::reconcile_file(services.store.as_ref(), &file, user, path, rec, &lease) {
            Ok((r, _)) => Ok(r),
            Err(ReconcileError::Io(e)) => Err(KeyError::Io(e)),
            Err(ReconcileError::Store(e)) => Err(KeyError::Store(e)),
        }
    })();
    services.claims.release(user, path, &lease);
    settled
}

/// A file as KEY NULL and KEY INFO present it.
#[derive(Debug, PartialEq, Eq)]
struct FileView {
    declared: Option<u32>,
    size: u64,
    crc: Option<u32>,
    state: State,
    updated: String,
}

impl FileView {
    fn of(
        disk_len: u64,
        id: FileId,
        mtime: Option<SystemTime>,
        record: Option<Record>,
        live: Option<crate::writers::Progress>,
    ) -> Self {
        match (record, live) {
            (Some(r), Some(p)) => FileView {
                declared: r.declared,
                size: p.size,
                crc: Some(p.crc),
                state: State::Partial,
                updated: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            },
            // The record describes the file only while size and identity agree; a file changed
            // behind the server's back must never look resumable.
            (Some(r), None) if r.describes(disk_len, id) => FileView {
                declared: r.declared,
                size: r.size,
                crc: Some(r.crc),
                state: r.state,
                updated: r.updated_rfc3339(),
            },
            _ => FileView {
                declared: None,
                size: disk_len,
                crc: None,
                state: State::Untracked,
                updated: humantime::format_rfc3339_seconds(mtime.unwrap_or(SystemTime::UNIX_EPOCH))
                    .to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(size: u64, state: State) -> Record {
        Record {
            declared: Some(9),
            size,
            crc: 5,
            state,
            open: false,
            updated: SystemTime::UNIX_EPOCH,
            file: ID,
        }
    }

    const ID: FileId = FileId {
        ino: 3,
        mtime_ns: 1_000,
    };

    #[test]
    fn view_trusts_a_record_only_while_size_and_identity_agree() {
        let v = FileView::of(10, ID, None, Some(rec(10, State::Verified)), None);
        assert_eq!(
            (v.declared, v.crc, v.state),
            (Some(9), Some(5), State::Verified)
        );
        let v = FileView::of(11, ID, None, Some(rec(10, State::Verified)), None);
        assert_eq!(
            (v.declared, v.crc, v.state, v.size),
            (None, None, State::Untracked, 11)
        );
        let v = FileView::of(11, ID, None, None, None);
        assert_eq!(v.state, State::Untracked);
        // Same size, rewritten in place: the modification time moved on.
        let touched = FileId {
            mtime_ns: 2_000,
            ..ID
        };
        let v = FileView::of(10, touched, None, Some(rec(10, State::Verified)), None);
        assert_eq!((v.declared, v.crc, v.state), (None, None, State::Untracked));
    }

    #[test]
    fn view_prefers_the_live_upload() {
        let live = crate::writers::Progress { size: 20, crc: 7 };
        let v = FileView::of(25, ID, None, Some(rec(10, State::Partial)), Some(live));
        assert_eq!(
            (v.declared, v.size, v.crc, v.state),
            (Some(9), 20, Some(7), State::Partial)
        );
    }
}
