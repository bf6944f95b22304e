//! The server-wide context every session shares, built once by `server::serve`.

use crate::claims::Claims;
use crate::drain::OwedReplies;
use crate::handoff::Handoff;
use crate::records::RecordStore;
use crate::writers::Writers;
use std::sync::Arc;
use std::time::Duration;

/// Tunables of the write path.
#[derive(Clone, Debug)]
pub struct UploadConfig {
    /// Bytes read from the network per write at first (two such buffers per upload).
    pub buffer: usize,
    /// What the buffers may grow to for a fast sender (see `upload::pipeline`).
    pub buffer_max: usize,
    /// Bytes between checkpoints of the record while an upload runs.
    pub checkpoint: u64,
    /// fsync the data and the record before acknowledging (and at checkpoints).
    pub fsync: bool,
    /// How long a newcomer waits for a stalled writer of the same file to let go.
    pub takeover_wait: Duration,
    /// Write whole aligned blocks with `O_DIRECT`, past the page cache (Linux; falls back to
    /// ordinary writes where the filesystem refuses).
    pub direct_io: bool,
    /// How long a sender may stay silent before its upload stops and records what it stored:
    /// a box that lost power sends no FIN, and its upload would otherwise hold everything forever.
    pub data_idle_timeout: Duration,
}

/// What every session shares: the record store, the table of running uploads, the upload
/// tunables and the front's hand-over of client sockets. One per server.
#[derive(Debug)]
pub struct Services {
    pub store: Arc<dyn RecordStore>,
    pub writers: Arc<Writers>,
    pub upload: UploadConfig,
    /// Client sockets the front hands over for uploads (`None` without the front).
    pub handoff: Option<Arc<Handoff>>,
    /// Uploads whose final reply has not gone out; shutdown waits for them.
    pub replies: Arc<OwedReplies>,
    /// The Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Claims on files across the nodes sharing the store (always granted with redb).
    pub claims: Arc<Claims>,
}

impl Services {
    /// The context for a server with `store` and `upload` tunables; `handoff` when the front
    /// hands client sockets over.
    pub fn new(
        store: Arc<dyn RecordStore>,
        upload: UploadConfig,
        handoff: Option<Arc<Handoff>>,
    ) -> Self {
        let writers = Arc::new(Writers::default());
        let metrics = Arc::new(crate::metrics::Metrics::new(writers.clone(), store.clone()));
        let claims = Arc::new(Claims::new(store.clone(), "ftpd", Duration::from_secs(15)));
        Services {
            claims,
            store,
            writers,
            upload,
            handoff,
            replies: Arc::new(OwedReplies::default()),
            metrics,
        }
    }

    /// Claims made as `node`, lasting `lease` unless renewed (`node_name`, `lease_seconds`).
    pub fn with_claims(mut self, node: &str, lease: Duration) -> Self {
        self.claims = Arc::new(Claims::new(self.store.clone(), node, lease));
        self
    }
}
