//! The storage back-end libunftp sees: unftp-sbe-fs for everything but uploads, which go
//! through [`upload::run`]; the checksum records follow deletes and renames; each session's
//! KEY state ([`KeySession`]) lives here because libunftp builds one back-end per control
//! connection and hands it to SITE handlers.

use crate::claims::{ClaimError, Held};
use crate::context::Services;
use crate::ftp_error::{not_entered, path_error, store_error};
use crate::handoff::UploadSource;
use crate::key_session::{Files, KeyError, KeyOutcome, KeySession};
use crate::paths;
use crate::records::journal::{Kind, Seen};
use crate::upload::{self, Request, UploadError};
use crate::users::FtpUser;
use crate::writers::WriteLock;
use async_trait::async_trait;
use cap_std::fs::Dir;
use crc_tools::KeyCommand;
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;
use unftp_core::storage::{Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend};
use unftp_sbe_fs::{Filesystem, Meta};

/// The session's storage: a confined filesystem plus KEY state.
#[derive(Debug)]
pub struct KeyStorage {
    services: Arc<Services>,
    fs: Option<Filesystem>,
    root: Option<Arc<Dir>>,
    key: KeySession,
    /// Counts this session in `ftpd_sessions` from its login until libunftp drops the session,
    /// however it ends (libunftp's `LoggedOut` event is skipped on a timeout or a broken
    /// connection, so its presence events would leave sessions counted forever).
    logged_in: Option<crate::metrics::SessionGuard>,
}

impl KeyStorage {
    /// A storage for a new control connection; it is usable once libunftp calls `enter`.
    pub fn new(services: Arc<Services>) -> Self {
        KeyStorage {
            services,
            fs: None,
            root: None,
            key: KeySession::default(),
            logged_in: None,
        }
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

    /// Runs one KEY command for `user` against this session's KEY state.
    pub async fn key_command(
        &self,
        user: &FtpUser,
        cmd: KeyCommand<'_>,
    ) -> std::result::Result<KeyOutcome, KeyError> {
        let files = Files {
            root: self.root.clone().ok_or(KeyError::NotLoggedIn)?,
            services: self.services.clone(),
            user: user.name.clone(),
        };
        self.key.command(files, cmd).await
    }

    /// The one-writer lock on `user`'s `path`, as an upload takes it: a delete waits for (or
    /// takes over from) a running upload of the same file.
    async fn lock_file(&self, user: &FtpUser, path: &str) -> Result<(WriteLock, Held)> {
        let lock = self
            .services
            .writers
            .acquire(
                (user.name.clone(), path.to_string()),
                self.services.upload.takeover_wait,
            )
            .await
            .map_err(UploadError::from)?;
        let claim = self.claim(user, path, &lock.stop).await?;
        Ok((lock, claim))
    }

    /// Claims `path` across the nodes sharing the store: another node writing it lets go
    /// first. `stop` fires if the claim is lost meanwhile.
    async fn claim(&self, user: &FtpUser, path: &str, stop: &CancellationToken) -> Result<Held> {
        let wait = self.services.upload.takeover_wait;
        self.services
            .claims
            .acquire(&user.name, path, wait, stop)
            .await
            .map_err(|e| match e {
                ClaimError::Busy(b) => UploadError::from(b).into(),
                ClaimError::Store(s) => store_error(s),
            })
    }

    /// What `path` is just before a delete or rename (not following a last symlink), for its
    /// journal event: the record describes it only if it is still the file it was written for.
    async fn seen(&self, path: &str) -> Result<Seen> {
        let root = self.root()?;
        let p = path.to_string();
        tokio::task::spawn_blocking(move || {
            root.symlink_metadata(paths::relative(&p))
                .map_or(Seen::Unknown, |m| Seen::of(&m))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::LocalError, e))
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
        if self.logged_in.is_none() {
            self.logged_in = Some(self.services.metrics.session());
        }
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
            self.key.touch(&p);
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
            let cwd = self.key.cwd();
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
        // Shutdown waits for this upload's final reply; libunftp names the upload in its data
        // event by the path it passed here.
        let reply = self
            .services
            .replies
            .begin(path.as_ref().to_string_lossy().into_owned());
        let path = self.file_path(path)?;
        let declared = self.key.take_declaration(&path);
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
        let input = UploadSource::new(input, self.services.handoff.clone());
        let task = tokio::spawn(upload::run(
            self.services.clone(),
            self.root()?,
            req,
            input,
            abort,
        ));
        match task.await {
            Ok(Ok(received)) => {
                reply.succeeded();
                Ok(received)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(Error::new(ErrorKind::LocalError, e)),
        }
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let p = self.file_path(path.as_ref())?;
        let _lock = self.lock_file(user, &p).await?;
        let seen = self.seen(&p).await?;
        self.fs()?.del(user, path).await?;
        let (store, name) = (self.services.store.clone(), user.name.clone());
        // The record goes with its `delete` event, in one transaction.
        tokio::task::spawn_blocking(move || store.remove_and_journal(Kind::Delete, &name, &p, seen))
            .await
            .map_err(|e| Error::new(ErrorKind::LocalError, e))?
            .map(drop)
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
            .services
            .writers
            .acquire_rename(&user.name, &f, &t, self.services.upload.takeover_wait)
            .await
            .map_err(|e| {
                // libunftp's reply says only "450 File not found": the log says why.
                tracing::info!(user = %user.name, from = %f, to = %t, error = %e, "rename refused");
                UploadError::from(e)
            })?;
        // The two files themselves, across nodes (uploads below a renamed directory on other
        // nodes are not covered: see docs/scale-out.md).
        // Taken in one order, so two nodes renaming a to b and b to a do not wait for each other.
        let stop = CancellationToken::new();
        let (first, second) = if f < t { (&f, &t) } else { (&t, &f) };
        let _claims = (
            self.claim(user, first, &stop).await?,
            self.claim(user, second, &stop).await?,
        );
        if self.same_file(&f, &t).await? {
            // Two names of one file (a hard link, a symlinked directory): rename(2) does
            // nothing, so the records stay as they are.
            return Ok(());
        }
        let seen = self.seen(&f).await?;
        self.fs()?.rename(user, from, to).await?;
        let (store, name) = (self.services.store.clone(), user.name.clone());
        // The records move with their `rename` event, in one transaction.
        tokio::task::spawn_blocking(move || store.rename_and_journal(&name, &f, &t, seen))
            .await
            .map_err(|e| Error::new(ErrorKind::LocalError, e))?
            .map(drop)
            .map_err(store_error)
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        self.fs()?.rmd(user, path).await
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let p = paths::resolve("/", path.as_ref()).map_err(path_error)?;
        self.fs()?.cwd(user, path).await?;
        self.key.set_cwd(p);
        Ok(())
    }
}
