//! The storage back-end libunftp sees: unftp-sbe-fs for everything but uploads, plus the
//! per-session KEY state and the checksum records that follow deletes and renames.
//!
//! libunftp builds one instance per control connection, so the session's pending KEY, its
//! current file and its working directory live here, and the SITE KEY handler reaches them
//! through `SiteCommandContext::storage`.

use crate::handoff::UploadSource;
use crate::paths::{self, PathError};
use crate::record::{FileId, Record};
use crate::store::StoreError;
use crate::upload::{self, Request, Shared, UploadError};
use crate::users::FtpUser;
use async_trait::async_trait;
use cap_std::fs::Dir;
use crc_tools::{KeyAnswer, KeyCommand, KeyValue, State};
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::io::AsyncRead;
use unftp_core::storage::{Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend};
use unftp_sbe_fs::{Filesystem, Meta};

/// Per-file declarations a session may hold before uploading (`KEY <crc> <path>`).
const MAX_DECLARATIONS: usize = 64;

/// What one control connection has said about KEY.
#[derive(Debug)]
struct Session {
    cwd: String,
    /// `KEY <crc>`: applies to the next STOR/APPE of this session.
    pending: Option<u32>,
    /// `KEY <crc> <path>`: applies to the next upload of that path.
    declared_for: Vec<(String, u32)>,
    /// The file most recently named by SIZE, MDTM, STOR, APPE or a KEY with a path.
    current: Option<String>,
}

/// The session's storage: a confined filesystem plus KEY state.
#[derive(Debug)]
pub struct KeyStorage {
    shared: Arc<Shared>,
    fs: Option<Filesystem>,
    root: Option<Arc<Dir>>,
    session: Mutex<Session>,
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

/// Maps an I/O error to the FTP reply class libunftp sends for it.
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

fn path_error(e: PathError) -> Error {
    Error::new(ErrorKind::FileNameNotAllowedError, e)
}

fn store_error(e: StoreError) -> Error {
    Error::new(store_error_kind(&e), e)
}

/// The reply class for a store failure: a full disk or quota is said as such (452/552, as for
/// the file itself), anything else is a local error.
pub fn store_error_kind(e: &StoreError) -> ErrorKind {
    match e.io_kind() {
        Some(io::ErrorKind::StorageFull) => ErrorKind::InsufficientStorageSpaceError,
        Some(io::ErrorKind::QuotaExceeded) => ErrorKind::ExceededStorageAllocationError,
        _ => ErrorKind::LocalError,
    }
}

fn not_entered() -> Error {
    Error::new(
        ErrorKind::LocalError,
        io::Error::other("storage used before login"),
    )
}

impl KeyStorage {
    /// A storage for a new control connection; it is usable once libunftp calls `enter`.
    pub fn new(shared: Arc<Shared>) -> Self {
        KeyStorage {
            shared,
            fs: None,
            root: None,
            session: Mutex::new(Session {
                cwd: "/".into(),
                pending: None,
                declared_for: Vec::new(),
                current: None,
            }),
        }
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fs(&self) -> Result<&Filesystem> {
        self.fs.as_ref().ok_or_else(not_entered)
    }

    fn root(&self) -> Result<Arc<Dir>> {
        self.root.clone().ok_or_else(not_entered)
    }

    /// Normalises a path libunftp hands over (already joined with the working directory).
    fn file_path<P: AsRef<Path>>(&self, path: P) -> Result<String> {
        paths::resolve_file("/", path.as_ref()).map_err(path_error)
    }

    fn remember_current(&self, path: &str) {
        self.session().current = Some(path.to_string());
    }

    /// Runs one KEY command for `user`.
    pub async fn key_command(
        &self,
        user: &FtpUser,
        cmd: KeyCommand<'_>,
    ) -> std::result::Result<KeyOutcome, KeyError> {
        let resolve = |p: &str| -> std::result::Result<String, KeyError> {
            let cwd = self.session().cwd.clone();
            Ok(paths::resolve_file(&cwd, Path::new(p))?)
        };
        let target = |p: Option<&str>| -> std::result::Result<Option<String>, KeyError> {
            match p {
                Some(p) => {
                    let path = resolve(p)?;
                    self.remember_current(&path);
                    Ok(Some(path))
                }
                None => Ok(self.session().current.clone()),
            }
        };
        match cmd {
            KeyCommand::Declare { crc, path: None } => {
                self.session().pending = Some(crc.0);
                Ok(KeyOutcome::Declared { crc, path: None })
            }
            KeyCommand::Declare { crc, path: Some(p) } => {
                let path = resolve(p)?;
                let mut s = self.session();
                s.declared_for.retain(|(q, _)| *q != path);
                if s.declared_for.len() >= MAX_DECLARATIONS {
                    return Err(KeyError::TooManyDeclarations);
                }
                s.declared_for.push((path.clone(), crc.0));
                s.current = Some(path.clone());
                Ok(KeyOutcome::Declared {
                    crc,
                    path: Some(path),
                })
            }
            KeyCommand::Query { path } => {
                let Some(path) = target(path)? else {
                    return Ok(KeyOutcome::Answer(KeyAnswer::Unknown));
                };
                let view = self.describe(user, &path).await;
                let declared = match view {
                    Ok(v) => v.declared,
                    Err(KeyError::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                Ok(KeyOutcome::Answer(KeyAnswer::from_declared(declared)))
            }
            KeyCommand::Info { path } => {
                let path = target(path)?.ok_or(KeyError::NoCurrentFile)?;
                let v = self.describe(user, &path).await?;
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

    /// Everything known of a file, in O(1): the live upload, else the record, else the file.
    async fn describe(
        &self,
        user: &FtpUser,
        path: &str,
    ) -> std::result::Result<FileView, KeyError> {
        let root = self.root.clone().ok_or(KeyError::NotLoggedIn)?;
        let shared = self.shared.clone();
        let (name, p) = (user.name.clone(), path.to_string());
        let live = shared.writers.progress(&(name.clone(), p.clone()));
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
            let record = shared.store.get(&name, &p)?;
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

    /// Whether `a` and `b` both exist and are one file (not following a last symlink, as
    /// rename(2) does not).
    async fn same_file(&self, a: &str, b: &str) -> Result<bool> {
        use cap_std::fs::MetadataExt;
        let root = self.root()?;
        let (a, b) = (a.to_string(), b.to_string());
        tokio::task::spawn_blocking(move || {
            let id = |p: &str| {
                root.symlink_metadata(paths::relative(p))
                    .ok()
                    .map(|m| (m.dev(), m.ino()))
            };
            matches!((id(&a), id(&b)), (Some(x), Some(y)) if x == y)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::LocalError, e))
    }

    /// Takes the declaration that applies to an upload of `path` starting now.
    fn take_declaration(&self, path: &str) -> Option<u32> {
        let mut s = self.session();
        s.current = Some(path.to_string());
        let named = s
            .declared_for
            .iter()
            .position(|(p, _)| p == path)
            .map(|i| s.declared_for.remove(i).1);
        named.or_else(|| s.pending.take())
    }
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

#[async_trait]
impl StorageBackend<FtpUser> for KeyStorage {
    type Metadata = Meta;

    fn enter(&mut self, user: &FtpUser) -> io::Result<()> {
        self.fs = Some(Filesystem::new(&user.home)?);
        self.root = Some(Arc::new(Dir::open_ambient_dir(
            &user.home,
            cap_std::ambient_authority(),
        )?));
        Ok(())
    }

    fn supported_features(&self) -> u32 {
        unftp_core::storage::FEATURE_RESTART | unftp_core::storage::FEATURE_SITEMD5
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<Self::Metadata> {
        if let Ok(p) = self.file_path(path.as_ref()) {
            self.remember_current(&p);
        }
        self.fs()?.metadata(user, path).await
    }

    async fn list<P>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, Self::Metadata>>>
    where
        P: AsRef<Path> + Send + Debug,
        <Self as StorageBackend<FtpUser>>::Metadata: Metadata,
    {
        self.fs()?.list(user, path).await
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
        start_pos: u64,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>> {
        // libunftp hands over paths joined with the working directory; SITE handlers (SITE
        // HASH) pass the client's words as they are, so a relative one is taken from the
        // session's working directory, as SITE KEY does.
        if path.as_ref().is_relative() {
            let cwd = self.session().cwd.clone();
            let p = paths::resolve(&cwd, path.as_ref()).map_err(path_error)?;
            return self.fs()?.get(user, p, start_pos).await;
        }
        self.fs()?.get(user, path, start_pos).await
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        user: &FtpUser,
        input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64> {
        let path = self.file_path(path)?;
        let declared = self.take_declaration(&path);
        let req = Request {
            user: user.name.clone(),
            path,
            start_pos,
            declared,
        };
        let abort = tokio_util::sync::CancellationToken::new();
        // Dropping this future (ABOR, session end) must not drop the upload mid-write: the
        // task runs on and records what it stored once told to stop.
        let _stop_on_drop = abort.clone().drop_guard();
        let input = UploadSource::new(input, self.shared.handoff.clone());
        let task = tokio::spawn(upload::run(
            self.shared.clone(),
            self.root()?,
            req,
            input,
            abort,
        ));
        match task.await {
            Ok(r) => r.map_err(Error::from),
            Err(e) => Err(Error::new(ErrorKind::LocalError, e)),
        }
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let p = self.file_path(path.as_ref())?;
        let _lock = self
            .shared
            .writers
            .acquire(
                (user.name.clone(), p.clone()),
                self.shared.upload.takeover_wait,
            )
            .await
            .map_err(UploadError::from)?;
        self.fs()?.del(user, path).await?;
        let (store, name) = (self.shared.store.clone(), user.name.clone());
        tokio::task::spawn_blocking(move || store.remove(&name, &p))
            .await
            .map_err(|e| Error::new(ErrorKind::LocalError, e))?
            .map_err(store_error)
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        self.fs()?.mkd(user, path).await
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        from: P,
        to: P,
    ) -> Result<()> {
        let f = self.file_path(from.as_ref())?;
        let t = self.file_path(to.as_ref())?;
        if f == t {
            // rename(2) onto itself changes nothing; moving the record would delete it.
            self.fs()?.metadata(user, from).await?;
            return Ok(());
        }
        let _lock = self
            .shared
            .writers
            .acquire_rename(&user.name, &f, &t, self.shared.upload.takeover_wait)
            .await
            .map_err(|e| {
                // libunftp's reply says only "450 File not found": the log says why.
                tracing::info!(user = %user.name, from = %f, to = %t, error = %e, "rename refused");
                UploadError::from(e)
            })?;
        if self.same_file(&f, &t).await? {
            // Two names of one file (a hard link, a symlinked directory): rename(2) does
            // nothing, so the records stay as they are.
            return Ok(());
        }
        self.fs()?.rename(user, from, to).await?;
        let (store, name) = (self.shared.store.clone(), user.name.clone());
        tokio::task::spawn_blocking(move || {
            store.remove(&name, &t)?;
            store.rename(&name, &f, &t)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::LocalError, e))?
        .map_err(store_error)
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        self.fs()?.rmd(user, path).await
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let p = paths::resolve("/", path.as_ref()).map_err(path_error)?;
        self.fs()?.cwd(user, path).await?;
        self.session().cwd = p;
        Ok(())
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
