//! One writer per file across the nodes that share a store.
//!
//! Within one process `writers.rs` is the lock. Nodes sharing PostgreSQL also hold a *claim*
//! (a lease row with a fencing counter) for each file they write: renewed while the upload
//! runs, carried by every record commit, and checked before every write to the file. A node
//! that was paused or cut off past its claim's end stops before its next write, and the store
//! refuses its commits, so a newer writer's file and record never see its late bytes.
//!
//! With the embedded store claims always succeed and never expire.

use crate::records::{Claim, Lease, RecordStore, StoreError};
use crate::writers::{Busy, Writers};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a held claim is renewed, as a fraction of its lifetime.
const RENEW_DIVISOR: u32 = 3;
/// How long a node waits between two attempts on a file another node holds.
const RETRY: Duration = Duration::from_millis(200);

/// The claims of this process: its holder name, and how long a claim lasts.
#[derive(Debug)]
pub struct Claims {
    store: Arc<dyn RecordStore>,
    /// `node/pid.nonce`: unique to this process, so a restarted node never mistakes a claim its
    /// previous life held (and may still be writing under, if it only seemed dead) for its own.
    holder: String,
    ttl: Duration,
    /// Start of the monotonic clock the validity deadlines count from.
    epoch: Instant,
}

/// Why a write or commit may not go ahead.
#[derive(Debug, thiserror::Error)]
#[error("the claim on the file (fence {fence}) ran out before it was renewed")]
pub struct Expired {
    pub fence: u64,
}

/// The part of a held claim that writes consult: the lease, and until when this node may
/// still trust it by its own monotonic clock.
#[derive(Clone, Debug)]
pub struct Fence {
    lease: Lease,
    /// Milliseconds after `epoch`; `u64::MAX` for a claim that never expires.
    valid_until: Arc<AtomicU64>,
    epoch: Instant,
}

impl Fence {
    /// A fence that never expires (the embedded store, and tests).
    pub fn unbounded(node: &str) -> Self {
        Fence {
            lease: Lease {
                node: node.to_string(),
                fence: 0,
            },
            valid_until: Arc::new(AtomicU64::new(u64::MAX)),
            epoch: Instant::now(),
        }
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// `Ok` while the claim is certainly still this node's: checked right before each write.
    pub fn check(&self) -> Result<(), Expired> {
        let now = self.epoch.elapsed().as_millis() as u64;
        if now < self.valid_until.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Expired {
                fence: self.lease.fence,
            })
        }
    }

    fn extend_from(&self, asked: Instant, ttl: Duration) {
        // The store counts the claim's end from its own clock at commit, after `asked`; a tenth
        // is kept back for clocks that run at slightly different rates.
        let until = asked.saturating_duration_since(self.epoch) + ttl - ttl / 10;
        self.valid_until
            .store(until.as_millis() as u64, Ordering::Release);
    }

    fn revoke(&self) {
        self.valid_until.store(0, Ordering::Release);
    }
}

/// A claim held for one upload: renewed until dropped, then released.
#[derive(Debug)]
pub struct Held {
    pub fence: Fence,
    renewal: CancellationToken,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewal.cancel();
    }
}

impl Claims {
    pub fn new(store: Arc<dyn RecordStore>, node: &str, ttl: Duration) -> Self {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Claims {
            store,
            holder: format!("{node}/{}.{nonce:08x}", std::process::id()),
            ttl,
            epoch: Instant::now(),
        }
    }

    /// This process's name in claims.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How long a claim lasts unless renewed.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn shared(&self) -> bool {
        self.store.shared()
    }

    /// Claims the file for an upload, asking the node that holds it to let go and waiting up
    /// to `wait` (a dead node's claim runs out on its own). The claim is renewed until the
    /// returned [`Held`] is dropped; if a renewal fails for good, `stop` fires so the upload
    /// records what it has and ends.
    pub async fn acquire(
        self: &Arc<Self>,
        user: &str,
        path: &str,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Held, ClaimError> {
        if !self.shared() {
            return Ok(Held {
                fence: Fence::unbounded(&self.holder),
                renewal: CancellationToken::new(),
            });
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut asked_to_let_go = false;
        loop {
            let asked = Instant::now();
            let (store, u, p, h, t) = (
                self.store.clone(),
                user.to_string(),
                path.to_string(),
                self.holder.clone(),
                self.ttl,
            );
            match spawn_store(move || store.claim(&u, &p, &h, t)).await? {
                Claim::Acquired(lease) => {
                    let fence = Fence {
                        lease,
                        valid_until: Arc::new(AtomicU64::new(0)),
                        epoch: self.epoch,
                    };
                    fence.extend_from(asked, self.ttl);
                    let renewal = CancellationToken::new();
                    tokio::spawn(self.clone().renew(
                        user.to_string(),
                        path.to_string(),
                        fence.clone(),
                        renewal.clone(),
                        stop.clone(),
                    ));
                    return Ok(Held { fence, renewal });
                }
                Claim::Held { node, expires_in } => {
                    // This process's own claims (a reconciliation of the file) end by
                    // themselves; a request would only stop this process's writers.
                    if !asked_to_let_go && node != self.holder {
                        asked_to_let_go = true;
                        tracing::info!(%user, %path, holder = %node, ?expires_in, "file held by another node; asking it to let go");
                        let (store, u, p) =
                            (self.store.clone(), user.to_string(), path.to_string());
                        spawn_store(move || store.request_takeover(&u, &p)).await?;
                    }
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(ClaimError::Busy(Busy::Held));
                    }
                    tokio::time::sleep(RETRY.min(deadline - now)).await;
                }
            }
        }
    }

    /// Keeps `fence` alive until `done` fires; stops the upload once it can no longer be.
    async fn renew(
        self: Arc<Self>,
        user: String,
        path: String,
        fence: Fence,
        done: CancellationToken,
        stop: CancellationToken,
    ) {
        let every = self.ttl / RENEW_DIVISOR;
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let asked = Instant::now();
            let (store, u, p, lease, ttl) = (
                self.store.clone(),
                user.clone(),
                path.clone(),
                fence.lease.clone(),
                self.ttl,
            );
            match spawn_store(move || store.renew(&u, &p, &lease, ttl)).await {
                Ok(true) => fence.extend_from(asked, self.ttl),
                Ok(false) => {
                    tracing::warn!(%user, %path, fence = fence.lease.fence, "claim on the file was taken by another node; stopping the upload");
                    fence.revoke();
                    stop.cancel();
                    break;
                }
                Err(e) => {
                    // The claim may still be ours: keep writing while it certainly is.
                    if fence.check().is_err() {
                        tracing::warn!(%user, %path, error = %e, "claim could not be renewed before it ran out; stopping the upload");
                        stop.cancel();
                        break;
                    }
                    tracing::warn!(%user, %path, error = %e, "claim renewal failed; retrying");
                }
            }
        }
        let (store, lease) = (self.store.clone(), fence.lease.clone());
        // Given up whatever happened: a claim no longer held is left alone by the store.
        if let Err(e) = spawn_store(move || store.release(&user, &path, &lease)).await {
            tracing::warn!(error = %e, "claim could not be released; it runs out on its own");
        }
    }

    /// Claims the file once, without waiting or renewal, for short work done on a blocking
    /// thread (reconciling a dead writer's record). `None`: another node holds it.
    pub fn try_claim(&self, user: &str, path: &str) -> Result<Option<Lease>, StoreError> {
        if !self.shared() {
            return Ok(Some(Fence::unbounded(&self.holder).lease));
        }
        match self.store.claim(user, path, &self.holder, self.ttl)? {
            Claim::Acquired(lease) => Ok(Some(lease)),
            Claim::Held { .. } => Ok(None),
        }
    }

    /// Gives up a claim taken with [`Claims::try_claim`].
    pub fn release(&self, user: &str, path: &str, lease: &Lease) {
        if self.shared() {
            if let Err(e) = self.store.release(user, path, lease) {
                tracing::warn!(%user, %path, error = %e, "claim could not be released; it runs out on its own");
            }
        }
    }
}

/// Why an upload could not claim its file.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn spawn_store<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Shared(format!("store call failed: {e}")))?
}

/// Stops this node's upload of each file another node asks for (a box resumed there), so that
/// it records what it has and gives its claim up.
pub async fn serve_takeover_requests(store: Arc<dyn RecordStore>, writers: Arc<Writers>) {
    let Some(mut requests) = store.takeover_requests() else {
        return;
    };
    while let Some(key) = requests.recv().await {
        if writers.stop(&key) {
            tracing::info!(user = %key.0, path = %key.1, "another node resumes this upload; stopping it here");
        }
    }
}
