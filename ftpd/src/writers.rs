//! One writer per file, with takeover.
//!
//! A box whose link died often reconnects before the server notices the old connection is
//! dead. The new session asks the old writer to stop; the old writer saves and records what it
//! has and releases the file; the new one proceeds. Two live sessions never write one file.

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
#[derive(Default)]
pub struct Writers {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    files: HashMap<FileKey, Entry>,
}

/// The old writer did not let go in time.
#[derive(Debug, thiserror::Error)]
#[error("file is busy: another upload still holds it")]
pub struct Busy;

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
    /// Takes `key`, stopping a current holder and waiting up to `wait` for it to let go.
    pub async fn acquire(
        self: &Arc<Self>,
        key: FileKey,
        wait: Duration,
    ) -> Result<WriteLock, Busy> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut released = {
                let mut inner = self.lock();
                match inner.files.get(&key) {
                    Some(entry) => {
                        entry.stop.cancel();
                        entry.released.clone()
                    }
                    None => {
                        inner.next_id += 1;
                        let id = inner.next_id;
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
                        return Ok(WriteLock {
                            writers: self.clone(),
                            key,
                            id,
                            stop,
                            progress,
                            _released: tx,
                        });
                    }
                }
            };
            // `changed` fails once the holder's sender is dropped, i.e. it has let go.
            match tokio::time::timeout_at(deadline, released.changed()).await {
                Ok(_) => continue,
                Err(_) => return Err(Busy),
            }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
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
}
