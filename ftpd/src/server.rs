//! Wires libunftp, the storage back-end, accounts and the KEY handlers together, and runs the
//! server until SIGTERM / Ctrl-C.

use crate::backend::KeyStorage;
use crate::config::{Settings, StoreChoice};
use crate::context::Services;
use crate::drain::ReplyWatcher;
use crate::handoff::Handoff;
use crate::records::postgres::ConnectError;
use crate::records::{PgStore, RecordStore, RedbStore, StoreError};
use crate::site_hash::SiteHash;
use crate::site_key::SiteKey;
use crate::users::{self, HomeProvider, UsersAuthenticator, UsersError, UsersFile};
use libunftp::options::{FailedLoginsBlock, FailedLoginsPolicy, Shutdown};
use libunftp::ServerBuilder;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create {what} directory {path}: {source}")]
    Dir {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("cannot open the checksum store in the state directory: {0}")]
    Store(#[from] StoreError),
    /// `store = "postgres"` and the database cannot be used: a bad setting (exit 2).
    #[error(transparent)]
    Postgres(#[from] ConnectError),
    #[error("server: {0}")]
    Server(#[from] libunftp::ServerError),
    #[error("cannot serve FTP on {addr}: {reason}")]
    Listen {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("front: {0}")]
    Front(#[from] crate::front::FrontError),
    #[error("cannot reserve the internal address {addr}: {source}")]
    Internal {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
}

impl ServeError {
    /// The process's exit code: 2 for a setting that cannot work (as `ftpd` answers a bad
    /// configuration), 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Postgres(_) => 2,
            _ => 1,
        }
    }
}

/// How long start-up waits for PostgreSQL to answer before it gives up.
const POSTGRES_WAIT: Duration = Duration::from_secs(10);

/// The record store that `store` chooses.
async fn open_store(s: &Settings) -> Result<Arc<dyn RecordStore>, ServeError> {
    match &s.store {
        StoreChoice::Redb => Ok(Arc::new(RedbStore::open(&s.state_dir, s.fsync)?)),
        StoreChoice::Postgres { url } => {
            let (url, node) = (url.clone(), s.node_name.clone());
            // Connecting blocks (with retries): off the async workers.
            let store =
                tokio::task::spawn_blocking(move || PgStore::connect(&url, &node, POSTGRES_WAIT))
                    .await
                    .map_err(|e| ConnectError::Runtime(std::io::Error::other(e)))??;
            Ok(Arc::new(store))
        }
    }
}

fn make_dir(what: &'static str, path: &Path) -> Result<(), ServeError> {
    std::fs::create_dir_all(path).map_err(|source| ServeError::Dir {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// On a first start with no accounts, creates one and prints its password once.
fn ensure_an_account(s: &Settings) -> Result<(), ServeError> {
    let mut file = UsersFile::load(&s.users_file)?;
    if !file.names().is_empty() || s.anonymous {
        return Ok(());
    }
    let password = users::generate_password()?;
    let iterations = NonZeroU32::new(users::DEFAULT_ITERATIONS).unwrap_or(NonZeroU32::MIN);
    file.add(&s.initial_user, &password, iterations)?;
    file.save()?;
    println!(
        "ftpd: no accounts yet; created user '{}' with password '{}' in {} (shown once)",
        s.initial_user,
        password,
        s.users_file.display()
    );
    Ok(())
}

/// Reconciles open records (uploads a crash cut short) with their files, claiming each first.
async fn reconcile(
    services: &Arc<Services>,
    root: &Path,
) -> Result<crate::records::recovery::Report, StoreError> {
    let (services, root) = (services.clone(), root.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let holder = services.claims.holder().to_string();
        let ttl = services.claims.ttl();
        crate::records::recovery::recover_as(services.store.as_ref(), &root, &holder, ttl)
    })
    .await
    .map_err(|e| StoreError::Shared(format!("reconciliation stopped: {e}")))?
}

/// Every `every`, reconciles the open records no live claim covers (shared store only).
async fn sweep_orphans(services: Arc<Services>, root: PathBuf, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match reconcile(&services, &root).await {
            Ok(r) if r.reconciled + r.removed > 0 => {
                tracing::info!(report = ?r, "reconciled uploads a stopped node left open")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not look for uploads a stopped node left open")
            }
        }
    }
}

/// Runs until a shutdown signal, then drains uploads for the grace period.
pub async fn serve(s: Settings) -> Result<(), ServeError> {
    make_dir("root", &s.root)?;
    make_dir("state", &s.state_dir)?;
    ensure_an_account(&s)?;

    let store = open_store(&s).await?;
    let services = Arc::new(
        Services::new(
            store.clone(),
            s.upload_config(),
            s.front.then(|| Arc::new(Handoff::default())),
        )
        .with_claims(&s.node_name, s.lease),
    );
    let report = reconcile(&services, &s.root).await?;
    if report.reconciled + report.removed > 0 {
        tracing::info!(
            ?report,
            "checksum store reconciled after an interrupted run"
        );
    }
    if services.claims.shared() {
        tracing::info!(holder = services.claims.holder(), lease = ?s.lease, "sharing the store with other nodes");
        // Other nodes ask this one to stop an upload a box resumed there.
        tokio::spawn(crate::claims::serve_takeover_requests(
            services.store.clone(),
            services.writers.clone(),
        ));
        // A node that died mid-upload leaves open records: whichever node sweeps first after
        // its claims ran out reconciles them with the shared files.
        tokio::spawn(sweep_orphans(services.clone(), s.root.clone(), s.lease));
    }

    // The upload journal lives in the store; this is its read side (`/events`) and retention.
    let journal = crate::records::journal::Journal::new(store.clone(), s.journal_keep);
    tokio::spawn(journal.clone().retain(JOURNAL_PRUNE_EVERY));
    // Webhooks (`webhook_url`): a task of their own that only reads the journal.
    let webhook_stop = tokio_util::sync::CancellationToken::new();
    let webhook_task = match &s.webhook_url {
        Some(url) => Some(crate::webhook::spawn(
            url.clone(),
            journal.clone(),
            &s.state_dir,
            s.fsync,
            webhook_stop.clone(),
        )?),
        None => None,
    };

    // Expiry (`partial_expiry_hours`): old partial and mismatched files go with their records,
    // each journaled as `expire`; it stops when the drain begins.
    let expiry_stop = tokio_util::sync::CancellationToken::new();
    if let Some(after) = s.partial_expiry {
        let expiry = crate::records::expiry::Expiry::new(
            services.store.clone(),
            services.writers.clone(),
            s.root.clone(),
            after,
        )
        .claiming_as(services.claims.holder(), s.lease);
        tokio::spawn(expiry.run(expiry_stop.clone()));
    }
    let authenticator = Arc::new(
        UsersAuthenticator::new(s.users_file.clone(), s.anonymous, s.password_threads)?
            .with_login_cache(s.login_cache_entries, s.login_cache_lifetime)
            .with_metrics(services.metrics.clone()),
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();

    // The HTTP listener (`http_listen`): the routes of every part, behind `http_token`; it
    // serves through the drain and stops once the FTP server has.
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let http_task = match s.http_listen {
        Some(addr) => {
            let listener = crate::http::bind(addr, s.http_token.clone().map(|t| t.0)).await?;
            let metrics = services.metrics.clone();
            let app = crate::metrics::routes(metrics.clone())
                .merge(crate::records::journal::routes(journal.clone()))
                .merge(crate::records::uploads::routes(services.store.clone()));
            tracing::info!(http_listen = %listener.local_addr().unwrap_or(addr), token = s.http_token.is_some(), "HTTP listener started");
            let stopped = async move {
                let _ = http_stop_rx.await;
            };
            Some(tokio::spawn(crate::http::serve(listener, app, stopped)))
        }
        None => None,
    };

    let generator_shared = services.clone();
    let mut builder = ServerBuilder::with_user_detail_provider(
        Box::new(move || KeyStorage::new(generator_shared.clone())),
        Arc::new(HomeProvider {
            root: s.root.clone(),
        }),
    )
    .authenticator(authenticator)
    .greeting("ftpd ready (KEY resumable uploads)")
    .passive_ports(s.passive_ports.clone())
    .idle_session_timeout(s.idle_timeout.as_secs())
    .logger(crate::logging::slog_logger())
    .site_command("KEY", SiteKey)
    .site_command("HASH", SiteHash::default())
    .notify_data(ReplyWatcher(services.replies.clone()))
    .shutdown_indicator(async move {
        let _ = stop_rx.await;
        Shutdown::new().grace_period(Duration::from_secs(2))
    });
    // With the front, libunftp listens on loopback in its ordinary mode, with passive ports the
    // kernel picks on loopback; the front owns the public port, the public passive ports (and
    // which session each belongs to) and per-address login throttling (libunftp would see every
    // client as the loopback address, so its own policy would let one attacker lock everyone out).
    let front = if s.front {
        let backend = reserve_loopback(s.internal_listen, s.listen)?;
        let mut cfg = s.front_config(backend);
        cfg.handoff = services.handoff.clone();
        if let Some((cert, key)) = &s.ftps {
            cfg.tls = Some(
                crate::front::tls::server_config(cert, key)
                    .map_err(crate::front::FrontError::from)?,
            );
        }
        let front = crate::front::Front::bind(cfg).await?;
        // Port 0: the kernel picks a free loopback port for each PASV.
        builder = builder.passive_ports(0..=0);
        Some((front, backend))
    } else {
        if s.failed_logins_max > 0 {
            builder = builder.failed_logins_policy(FailedLoginsPolicy::new(
                s.failed_logins_max,
                s.failed_logins_window,
                FailedLoginsBlock::UserAndIP,
            ));
        }
        if let Some(ip) = s.passive_host {
            builder = builder.passive_host(ip);
        }
        // Only here: behind the front libunftp sees plain loopback lines, and the front
        // enforces `ftps_required` itself.
        if s.ftps_required {
            builder = builder.ftps_required(true, true);
        }
        None
    };
    if let Some((cert, key)) = &s.ftps {
        builder = builder.ftps(cert.clone(), key.clone());
    }
    let server = builder.build()?;

    let (front_stop_tx, front_stop_rx) = oneshot::channel::<()>();
    let (listen_addr, front_task) = match front {
        Some((front, backend)) => {
            tracing::info!(listen = %front.local_addr(), internal = %backend, "front for bare KEY enabled");
            let task = tokio::spawn(front.run(async move {
                let _ = front_stop_rx.await;
            }));
            (backend, Some(task))
        }
        None => (s.listen, None),
    };
    tracing::info!(listen = %s.listen, passive_ports = ?s.passive_ports, root = %s.root.display(), "ftpd starting");
    let listen = tokio::spawn(server.listen(listen_addr.to_string()));
    tokio::pin!(listen);
    let front_failed = async {
        match front_task {
            Some(t) => match t.await {
                Ok(Ok(())) => std::future::pending().await,
                Ok(Err(e)) => e.into(),
                Err(e) => ServeError::Server(libunftp::ServerError::from(std::io::Error::other(e))),
            },
            None => std::future::pending().await,
        }
    };

    tokio::select! {
        r = &mut listen => {
            return match r {
                // libunftp's message is only "io error"; the cause (address in use, ...) is its source.
                Ok(r) => r.map_err(|e| ServeError::Listen {
                    addr: listen_addr,
                    reason: std::error::Error::source(&e)
                        .map_or_else(|| e.to_string(), |c| c.to_string()),
                }),
                Err(e) => Err(ServeError::Server(libunftp::ServerError::from(std::io::Error::other(e)))),
            };
        }
        e = front_failed => return Err(e),
        _ = shutdown_signal() => {}
    }
    let _ = front_stop_tx.send(());
    expiry_stop.cancel();

    // Drain: the front (when on) accepts no new connections from here; running uploads get
    // the grace period to finish, then the rest are asked to stop and record what they stored.
    // Sessions close only once the uploads' final replies went out.
    tracing::info!(uploads = services.writers.active(), grace = ?s.shutdown_grace, "shutting down");
    if tokio::time::timeout(s.shutdown_grace, services.writers.drained())
        .await
        .is_err()
    {
        services.writers.stop_all();
        let _ = tokio::time::timeout(STOP_WAIT, services.writers.drained()).await;
    }
    services
        .replies
        .settled(tokio::time::Instant::now() + STOP_WAIT)
        .await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), listen).await;
    // Webhooks stop after the uploads' last events: the POST in flight gets a moment, and what
    // is not acknowledged by then is sent after the next start.
    webhook_stop.cancel();
    if let Some(mut task) = webhook_task {
        if tokio::time::timeout(WEBHOOK_STOP_WAIT, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    if let Some(mut task) = http_task {
        // Long-polls of `/events` answer now instead of holding the shutdown.
        journal.close();
        let _ = http_stop_tx.send(());
        // Requests still running (a long poll) get a moment, then they are cut.
        match tokio::time::timeout(HTTP_STOP_WAIT, &mut task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP listener failed"),
            Ok(_) => {}
            Err(_) => task.abort(),
        }
    }
    tracing::info!(left = services.writers.active(), "ftpd stopped");
    Ok(())
}

/// How often journal events older than `journal_keep_days` are pruned.
const JOURNAL_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How long uploads told to stop get to record what they stored, and their replies to go out.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// How long the webhook POST in flight gets to finish at shutdown.
const WEBHOOK_STOP_WAIT: Duration = Duration::from_secs(2);

/// How long HTTP requests still running at the end of shutdown get to finish.
const HTTP_STOP_WAIT: Duration = Duration::from_secs(2);

/// A free port on the loopback address `addr` (port 0: any, never the public port), for
/// libunftp behind the front.
fn reserve_loopback(
    addr: std::net::SocketAddr,
    public: std::net::SocketAddr,
) -> Result<std::net::SocketAddr, ServeError> {
    let internal = |source| ServeError::Internal { addr, source };
    // The kernel may hand out the public port as the internal one when the public port is
    // still free (it is bound after this): draw again, holding the earlier draws meanwhile.
    let mut held = Vec::new();
    loop {
        let l = std::net::TcpListener::bind(addr).map_err(internal)?;
        let got = l.local_addr().map_err(internal)?;
        if addr.port() != 0 || got.port() != public.port() || held.len() >= 8 {
            return Ok(got);
        }
        held.push(l);
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
