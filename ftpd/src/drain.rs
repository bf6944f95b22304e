//! The final replies of uploads, which shutdown waits for before it closes sessions.
//!
//! An upload lets go of its file before libunftp sends its `226`, so closing the sessions the
//! moment the last writer is gone could lose the reply of an upload that finished in time.
//! The back-end registers each upload when it starts. One that fails settles when it returns
//! (libunftp answers it at once). One that succeeds settles when libunftp dispatches its data
//! event, which it does just before it writes the `226` on the same task.

use async_trait::async_trait;
use libunftp::notification::{DataEvent, DataListener, EventMeta};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a successful upload's reply may be owed before it counts as never coming (its
/// session ended between the upload and the reply). libunftp takes microseconds.
const STALE: Duration = Duration::from_secs(2);

/// Uploads whose final reply has not gone out yet.
#[derive(Debug)]
pub struct OwedReplies {
    owed: Mutex<Owed>,
    settled: Notify,
    stale: Duration,
}

impl Default for OwedReplies {
    fn default() -> Self {
        OwedReplies::with_stale(STALE)
    }
}

#[derive(Debug, Default)]
struct Owed {
    next_id: u64,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    /// The path as libunftp passed it to `put`; its data event names the same string.
    path: String,
    /// When `put` returned success; `None` while the upload runs.
    succeeded: Option<Instant>,
}

impl Owed {
    /// Forgets successes whose reply never came; the oldest remaining success, if any.
    fn prune(&mut self, now: Instant, stale: Duration) -> Option<Instant> {
        self.entries
            .retain(|e| !matches!(e.succeeded, Some(t) if now.duration_since(t) >= stale));
        self.entries.iter().filter_map(|e| e.succeeded).min()
    }
}

impl OwedReplies {
    fn with_stale(stale: Duration) -> Self {
        OwedReplies {
            owed: Mutex::default(),
            settled: Notify::new(),
            stale,
        }
    }

    fn owed(&self) -> std::sync::MutexGuard<'_, Owed> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An upload of `path` starts; its reply is owed until the guard says otherwise.
    pub fn begin(self: &Arc<Self>, path: String) -> Upload {
        let mut owed = self.owed();
        owed.prune(Instant::now(), self.stale);
        owed.next_id += 1;
        let id = owed.next_id;
        owed.entries.push(Entry {
            id,
            path,
            succeeded: None,
        });
        Upload {
            replies: self.clone(),
            id,
            done: false,
        }
    }

    /// libunftp is about to send the `226` for an upload of `path`.
    fn replied(&self, path: &str) {
        let mut owed = self.owed();
        if let Some(i) = owed
            .entries
            .iter()
            .position(|e| e.path == path && e.succeeded.is_some())
        {
            owed.entries.swap_remove(i);
        }
        drop(owed);
        self.settled.notify_waiters();
    }

    /// How many replies are owed now (running uploads included).
    pub fn count(&self) -> usize {
        let mut owed = self.owed();
        owed.prune(Instant::now(), self.stale);
        owed.entries.len()
    }

    /// Returns once no reply is owed, or at `deadline`.
    pub async fn settled(&self, deadline: Instant) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake = {
                let mut owed = self.owed();
                let oldest = owed.prune(Instant::now(), self.stale);
                if owed.entries.is_empty() {
                    return;
                }
                // A success whose reply never comes stops counting at `STALE`.
                oldest.map_or(deadline, |t| (t + self.stale).min(deadline))
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        return;
                    }
                }
            }
        }
    }
}

/// One upload's place among the owed replies. Dropped without [`Upload::succeeded`] (a failed
/// or abandoned upload), it settles at once.
#[derive(Debug)]
pub struct Upload {
    replies: Arc<OwedReplies>,
    id: u64,
    done: bool,
}

impl Upload {
    /// The upload succeeded: its reply is owed until libunftp's data event for it.
    pub fn succeeded(mut self) {
        let now = Instant::now();
        if let Some(e) = self
            .replies
            .owed()
            .entries
            .iter_mut()
            .find(|e| e.id == self.id)
        {
            e.succeeded = Some(now);
        }
        self.done = true;
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut owed = self.replies.owed();
        owed.entries.retain(|e| e.id != self.id);
        drop(owed);
        self.replies.settled.notify_waiters();
    }
}

/// libunftp's data events, of which this needs only `Put`: the reply of a successful upload.
#[derive(Debug)]
pub struct ReplyWatcher(pub Arc<OwedReplies>);

#[async_trait]
impl DataListener for ReplyWatcher {
    async fn receive_data_event(&self, e: DataEvent, _: EventMeta) {
        if let DataEvent::Put { path, .. } = e {
            self.0.replied(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> EventMeta {
        EventMeta {
            username: "u".into(),
            trace_id: "t".into(),
            sequence_number: 1,
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test]
    async fn nothing_owed_settles_at_once() {
        let r = Arc::new(OwedReplies::default());
        tokio::time::timeout(Duration::from_secs(1), r.settled(soon()))
            .await
            .expect("settled");
    }

    #[tokio::test]
    async fn a_success_is_owed_until_its_data_event() {
        let r = Arc::new(OwedReplies::default());
        let up = r.begin("/a.ts".into());
        let other = r.begin("/b.ts".into());
        up.succeeded();
        drop(other); // failed: settles at once
        assert_eq!(r.count(), 1);
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.settled(soon()).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // An event for another path settles nothing.
        ReplyWatcher(r.clone())
            .receive_data_event(
                DataEvent::Put {
                    path: "/c.ts".into(),
                    bytes: 1,
                },
                meta(),
            )
            .await;
        assert_eq!(r.count(), 1);
        ReplyWatcher(r.clone())
            .receive_data_event(
                DataEvent::Put {
                    path: "/a.ts".into(),
                    bytes: 1,
                },
                meta(),
            )
            .await;
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("settled after the event")
            .expect("join");
        assert_eq!(r.count(), 0);
    }

    const SHORT: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn a_reply_that_never_comes_stops_counting() {
        let r = Arc::new(OwedReplies::with_stale(SHORT));
        r.begin("/a.ts".into()).succeeded();
        let started = Instant::now();
        r.settled(started + Duration::from_secs(60)).await;
        assert!(started.elapsed() >= SHORT && started.elapsed() < Duration::from_secs(30));
        assert_eq!(r.count(), 0);
    }

    #[tokio::test]
    async fn a_running_upload_holds_until_the_deadline() {
        let r = Arc::new(OwedReplies::with_stale(SHORT));
        let _running = r.begin("/a.ts".into());
        let started = Instant::now();
        r.settled(started + SHORT * 3).await;
        assert!(started.elapsed() >= SHORT * 3);
        assert_eq!(r.count(), 1, "a running upload never goes stale");
    }
}
