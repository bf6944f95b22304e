//! One writer per file, with takeover.
//!
//! A box whose link died often reconnects before the server notices the old connection is
//! dead. The new session asks the old writer to stop; the old writer saves and records what it
//! has and releases the file; the new one proceeds. Two live sessions never write one file.
//!
//! A rename holds its two paths as *trees*: each path and everything below it. A path cannot
//! change its inode under a running upload, and no upload can start under a directory while it
//! moves, so an open record can never end up under a name another writer then opens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// `(user, normalised path)`.
pub type FileKey = (String, String);

/// What a running upload has stored so far, for queries answered while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub size: u64,
    pub crc: u32,
}

struct Entry {
    id: u64,
    stop: CancellationToken,
    released: watch::Receiver<()>,
    progress: Arc<Mutex<Progress>>,
}

/// The registry of files being written.
pub struct Writers {
    inner: Mutex<Inner>,
    /// How many files are being written, published so shutdown can wait for none.
    count: watch::Sender<usize>,
}

impl Default for Writers {
    fn default() -> Self {
        Writers {
            inner: Mutex::default(),
            count: watch::Sender::new(0),
        }
    }
}

/// A path held by a rename, with everything below it.
struct TreeEntry {
    id: u64,
    released: watch::Receiver<()>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    files: HashMap<FileKey, Entry>,
    trees: HashMap<FileKey, TreeEntry>,
}

impl Inner {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A rename holding `key` or a directory above it.
    fn tree_over(&self, key: &FileKey) -> Option<watch::Receiver<()>> {
        self.trees
            .iter()
            .find(|(t, _)| t.0 == key.0 && covers(&t.1, &key.1))
            .map(|(_, e)| e.released.clone())
    }

    /// A rename holding `key`, a directory above it, or a path below it.
    fn tree_overlapping(&self, key: &FileKey) -> Option<watch::Receiver<()>> {
        self.trees
            .iter()
            .find(|(t, _)| t.0 == key.0 && (covers(&t.1, &key.1) || covers(&key.1, &t.1)))
            .map(|(_, e)| e.released.clone())
    }
}

/// Whether `path` is `dir` or lies below it (`/d` covers `/d` and `/d/x`, not `/dx`).
fn covers(dir: &str, path: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Why a file or a path could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum Busy {
    /// The old writer, or a rename of the path, did not let go in time.
    #[error("file is busy: another upload or a rename still holds it")]
    Held,
    /// A directory cannot move while files below it are written: their uploads would go on
    /// under the old names while new ones could open the same files under the new names.
    #[error("{path} is busy: {count} upload(s) below it are running")]
    UploadsBelow { path: String, count: usize },
}

/// Held while a session writes (or deletes, or renames) a file.
pub struct WriteLock {
    writers: Arc<Writers>,
    key: FileKey,
    id: u64,
    /// Fires when another session takes the file over (or the server shuts down).
    pub stop: CancellationToken,
    pub progress: Arc<Mutex<Progress>>,
    _released: watch::Sender<()>,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers").finish_non_exhaustive()
    }
}

impl Writers {
    /// Takes `key`, stopping a current holder and waiting up to `wait` for it to let go (and
    /// for a rename of the file or a directory above it to end).
    pub async fn acquire(
        self: &Arc<Self>,
        key: FileKey,
        wait: Duration,
    ) -> Result<WriteLock, Busy> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut released = {
                let mut inner = self.lock();
                if let Some(rename) = inner.tree_over(&key) {
                    rename
                } else if let Some(entry) = inner.files.get(&key) {
                    entry.stop.cancel();
                    entry.released.clone()
                } else {
                    return Ok(self.hold(&mut inner, key));
                }
            };
            wait_for_release(&mut released, deadline).await?;
        }
    }

    /// Takes `key` only if nobody holds it: no writer (or DELE) of the file and no rename of it
    /// or a directory above it. Unlike [`Writers::acquire`] it never stops a holder and never
    /// waits; `None` means busy. For the server's own work (expiry), which must not disturb an
    /// upload. Synchronous: usable from a blocking thread.
    pub fn try_acquire(self: &Arc<Self>, key: FileKey) -> Option<WriteLock> {
        let mut inner = self.lock();
        if inner.tree_over(&key).is_some() || inner.files.contains_key(&key) {
            return None;
        }
        Some(self.hold(&mut inner, key))
    }

    /// Registers `key`, free in `inner`, as held by a new writer and publishes the count.
    fn hold(self: &Arc<Self>, inner: &mut Inner, key: FileKey) -> WriteLock {
        let id = inner.next_id();
        let (tx, rx) = watch::channel(());
        let stop = CancellationToken::new();
        let progress = Arc::new(Mutex::new(Progress::default()));
        inner.files.insert(
            key.clone(),
            Entry {
                id,
                stop: stop.clone(),
                released: rx,
                progress: progress.clone(),
            },
        );
        self.count.send_replace(inner.files.len());
        WriteLock {
            writers: self.clone(),
            key,
            id,
            stop,
            progress,
            _released: tx,
        }
    }

    /// Takes the two paths of a rename, each with everything below it. A writer of either
    /// path itself is stopped and waited for, as for any newcomer (the rename target too:
    /// an upload must not go on into a file that was replaced under it). Uploads below either
    /// path refuse the rename at once: stopping recordings because a folder is being renamed
    /// would surprise more than a `450` does. Paths are taken in one order, component by
    /// component, so that two renames never wait for each other.
    pub async fn acquire_rename(
        self: &Arc<Self>,
        user: &str,
        from: &str,
        to: &str,
        wait: Duration,
    ) -> Result<RenameLock, Busy> {
        let deadline = tokio::time::Instant::now() + wait;
        let paths = rename_paths(from, to);
        let mut held = Vec::with_capacity(paths.len());
        for p in paths {
            held.push(
                self.acquire_tree((user.to_string(), p.to_string()), deadline)
                    .await?,
            );
        }
        Ok(RenameLock { _trees: held })
    }

    async fn acquire_tree(
        self: &Arc<Self>,
        key: FileKey,
        deadline: tokio::time::Instant,
    ) -> Result<TreeLock, Busy> {
        loop {
            let mut released = {
                let mut inner = self.lock();
                if let Some(rename) = inner.tree_overlapping(&key) {
                    rename
                } else if let Some(entry) = inner.files.get(&key) {
                    entry.stop.cancel();
                    entry.released.clone()
                } else {
                    let count = inner
                        .files
                        .keys()
                        .filter(|k| k.0 == key.0 && covers(&key.1, &k.1))
                        .count();
                    if count > 0 {
                        return Err(Busy::UploadsBelow { path: key.1, count });
                    }
                    let id = inner.next_id();
                    let (tx, rx) = watch::channel(());
                    inner
                        .trees
                        .insert(key.clone(), TreeEntry { id, released: rx });
                    return Ok(TreeLock {
                        writers: self.clone(),
                        key,
                        id,
                        _released: tx,
                    });
                }
            };
            wait_for_release(&mut released, deadline).await?;
        }
    }

    /// Progress of a running upload of `key`, if one runs.
    pub fn progress(&self, key: &FileKey) -> Option<Progress> {
        let inner = self.lock();
        inner
            .files
            .get(key)
            .map(|e| *e.progress.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Asks the writer of `key`, if one runs, to stop and save (another node resumes it);
    /// whether one did.
    pub fn stop(&self, key: &FileKey) -> bool {
        self.lock()
            .files
            .get(key)
            .map(|e| e.stop.cancel())
            .is_some()
    }

    /// Asks every writer to stop and save (server shutdown).
    pub fn stop_all(&self) {
        for e in self.lock().files.values() {
            e.stop.cancel();
        }
    }

    /// How many files are being written now.
    pub fn active(&self) -> usize {
        self.lock().files.len()
    }

    /// Returns once no file is being written.
    pub async fn drained(&self) {
        let mut count = self.count.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = count.wait_for(|n| *n == 0).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The trees a rename takes, in the order every rename takes them: component by component,
/// so that a directory's subtree is one run of the order and no two renames wait for each
/// other. A path below the other one is covered by it.
fn rename_paths<'a>(from: &'a str, to: &'a str) -> Vec<&'a str> {
    let mut paths = if covers(from, to) {
        vec![from]
    } else if covers(to, from) {
        vec![to]
    } else {
        vec![from, to]
    };
    paths.sort_unstable_by(|a, b| a.split('/').cmp(b.split('/')));
    paths
}

/// Waits until the holder behind `released` lets go, or `deadline` passes.
async fn wait_for_release(
    released: &mut watch::Receiver<()>,
    deadline: tokio::time::Instant,
) -> Result<(), Busy> {
    // `changed` fails once the holder's sender is dropped, i.e. it has let go.
    match tokio::time::timeout_at(deadline, released.changed()).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Busy::Held),
    }
}

/// Held while a rename moves a path and everything below it.
struct TreeLock {
    writers: Arc<Writers>,
    key: FileKey,
    id: u64,
    _released: watch::Sender<()>,
}

impl Drop for TreeLock {
    fn drop(&mut self) {
        let mut inner = self.writers.lock();
        if inner.trees.get(&self.key).is_some_and(|e| e.id == self.id) {
            inner.trees.remove(&self.key);
        }
    }
}

/// Held while a rename runs: both of its paths, with everything below them.
pub struct RenameLock {
    _trees: Vec<TreeLock>,
}

impl WriteLock {
    /// Publishes what has been stored so far.
    pub fn set_progress(&self, p: Progress) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let mut inner = self.writers.lock();
        if inner.files.get(&self.key).is_some_and(|e| e.id == self.id) {
            inner.files.remove(&self.key);
            self.writers.count.send_replace(inner.files.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> FileKey {
        ("u".into(), p.into())
    }

    #[tokio::test]
    async fn second_writer_takes_over_after_first_lets_go() {
        let w = Arc::new(Writers::default());
        let first = w.acquire(key("/a"), Duration::from_secs(1)).await.unwrap();
        let stop = first.stop.clone();
        let w2 = w.clone();
        let second =
            tokio::spawn(async move { w2.acquire(key("/a"), Duration::from_secs(5)).await });
        stop.cancelled().await; // the first holder is told to stop
        first.set_progress(Progress { size: 3, crc: 4 });
        assert_eq!(w.progress(&key("/a")), Some(Progress { size: 3, crc: 4 }));
        drop(first);
        let second = second.await.unwrap().unwrap();
        assert!(!second.stop.is_cancelled());
        assert_eq!(w.active(), 1);
        drop(second);
        assert_eq!(w.active(), 0);
    }

    const LONG: Duration = Duration::from_secs(5);
    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn drained_returns_once_the_last_writer_lets_go() {
        let w = Arc::new(Writers::default());
        w.drained().await;
        let a = w.acquire(key("/a"), SHORT).await.expect("a");
        let b = w.acquire(key("/b"), SHORT).await.expect("b");
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.drained().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one writer is still running");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("drained after the last writer")
            .expect("join");
    }

    #[test]
    fn covers_means_the_path_or_below_it() {
        assert!(covers("/d", "/d"));
        assert!(covers("/d", "/d/x"));
        assert!(covers("/d", "/d/x/y"));
        assert!(!covers("/d", "/dx"));
        assert!(!covers("/d", "/d x/y"));
        assert!(!covers("/d/x", "/d"));
    }

    #[tokio::test]
    async fn a_rename_takes_over_a_writer_of_its_target() {
        let w = Arc::new(Writers::default());
        let target = w.acquire(key("/t"), LONG).await.unwrap();
        let stop = target.stop.clone();
        let w2 = w.clone();
        let rename = tokio::spawn(async move { w2.acquire_rename("u", "/s", "/t", LONG).await });
        stop.cancelled().await;
        assert!(
            !rename.is_finished(),
            "the rename went ahead while the target was written"
        );
        drop(target);
        let held = rename.await.unwrap().unwrap();
        // While it runs, neither name can be written.
        for p in ["/s", "/t"] {
            assert!(matches!(w.acquire(key(p), SHORT).await, Err(Busy::Held)));
        }
        drop(held);
        assert!(w.acquire(key("/t"), SHORT).await.is_ok());
    }

    #[tokio::test]
    async fn a_directory_with_an_upload_below_it_is_not_renamed() {
        let w = Arc::new(Writers::default());
        let below = w.acquire(key("/d/sub/x"), LONG).await.unwrap();
        for (from, to) in [("/d", "/e"), ("/e", "/d"), ("/d/sub", "/f")] {
            match w.acquire_rename("u", from, to, LONG).await {
                Err(Busy::UploadsBelow { count: 1, .. }) => {}
                other => panic!("{from} -> {to}: {:?}", other.map(|_| ())),
            }
        }
        assert!(!below.stop.is_cancelled(), "the upload was disturbed");
        // Other directories, another user, and a name that only shares a prefix are free.
        assert!(w.acquire_rename("u", "/dx", "/e", SHORT).await.is_ok());
        assert!(w.acquire_rename("v", "/d", "/e", SHORT).await.is_ok());
        drop(below);
        assert!(w.acquire_rename("u", "/d", "/e", SHORT).await.is_ok());
    }

    #[tokio::test]
    async fn no_upload_starts_under_a_directory_while_it_is_renamed() {
        let w = Arc::new(Writers::default());
        let rename = w.acquire_rename("u", "/d", "/e", LONG).await.unwrap();
        for p in ["/d/x", "/e/x", "/d/sub/y"] {
            assert!(
                matches!(w.acquire(key(p), SHORT).await, Err(Busy::Held)),
                "{p}"
            );
        }
        assert!(w.acquire(key("/dx"), SHORT).await.is_ok());
        let w2 = w.clone();
        let upload = tokio::spawn(async move { w2.acquire(key("/e/x"), LONG).await });
        tokio::time::sleep(SHORT).await;
        assert!(!upload.is_finished());
        drop(rename);
        assert!(upload.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_rename_within_its_own_directory_takes_one_tree() {
        let w = Arc::new(Writers::default());
        let held = w.acquire_rename("u", "/d", "/d/sub", SHORT).await.unwrap();
        assert_eq!(held._trees.len(), 1);
        let held = w.acquire_rename("u", "/d/sub/x", "/d", SHORT).await;
        assert!(
            matches!(held, Err(Busy::Held)),
            "the first rename still holds /d"
        );
    }

    /// Renames of overlapping paths in every order: with one lock order no two of them wait
    /// for each other, so none runs into its deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn overlapping_renames_never_wait_for_each_other() {
        let w = Arc::new(Writers::default());
        const PATHS: [&str; 6] = ["/a", "/a b", "/a/x", "/a b/y", "/a/x/z", "/b"];
        let mut tasks = Vec::new();
        for round in 0..50 {
            for (i, from) in PATHS.iter().enumerate() {
                let to = PATHS[(i + 1 + round) % PATHS.len()];
                let w = w.clone();
                tasks.push(tokio::spawn(async move {
                    let held = w.acquire_rename("u", from, to, LONG).await;
                    tokio::task::yield_now().await;
                    held.map(drop)
                }));
            }
        }
        for t in tasks {
            t.await.unwrap().expect("a rename waited into its deadline");
        }
    }

    #[test]
    fn rename_paths_are_ordered_by_components() {
        // Byte order would put "/a b" between "/a" and "/a/x" (' ' < '/').
        assert_eq!(rename_paths("/a b", "/a/x"), ["/a/x", "/a b"]);
        assert_eq!(rename_paths("/a/x", "/a b"), ["/a/x", "/a b"]);
        assert_eq!(rename_paths("/d/sub", "/d"), ["/d"]);
        assert_eq!(rename_paths("/d", "/d/sub"), ["/d"]);
    }

    #[tokio::test]
    async fn a_holder_that_never_lets_go_makes_the_newcomer_busy() {
        let w = Arc::new(Writers::default());
        let _stuck = w.acquire(key("/a"), Duration::from_secs(1)).await.unwrap();
        let r = w.acquire(key("/a"), Duration::from_millis(50)).await;
        assert!(r.is_err());
        assert!(w
            .acquire(key("/b"), Duration::from_millis(50))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn try_acquire_never_disturbs_a_holder() {
        let w = Arc::new(Writers::default());
        let upload = w.acquire(key("/a"), SHORT).await.unwrap();
        assert!(w.try_acquire(key("/a")).is_none(), "busy");
        assert!(
            !upload.stop.is_cancelled(),
            "the upload was not asked to stop"
        );
        drop(upload);
        let held = w.try_acquire(key("/a")).expect("free now");
        assert!(w.try_acquire(key("/a")).is_none());
        // An upload arriving meanwhile asks the holder to stop and gets the file once it lets go.
        let newcomer = tokio::spawn({
            let w = w.clone();
            async move { w.acquire(key("/a"), LONG).await }
        });
        held.stop.cancelled().await;
        drop(held);
        assert!(newcomer.await.unwrap().is_ok());
        // A rename of a directory above holds the file too.
        let _rename = w.acquire_rename("u", "/d", "/e", SHORT).await.unwrap();
        assert!(w.try_acquire(key("/d/x")).is_none());
        assert!(w.try_acquire(key("/dx")).is_some());
        assert_eq!(w.active(), 0);
    }
}
