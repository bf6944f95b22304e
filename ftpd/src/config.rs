//! Settings: the embedded `conf/ftpd.toml`, an optional file, then `FTPD_*` environment
//! variables, read through the `config` crate and checked before anything starts.

use serde::Deserialize;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The defaults, commented, exactly as shipped in `conf/ftpd.toml`.
pub const DEFAULTS: &str = include_str!("../../conf/ftpd.toml");

/// A setting that stops start-up; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("bad setting `{key}`: {reason}")]
    Bad { key: &'static str, reason: String },
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
}

fn bad(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Bad {
        key,
        reason: reason.into(),
    }
}

/// Raw values as read; [`Settings::load`] turns them into checked ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: String,
    passive_ports: String,
    passive_host: String,
    root: PathBuf,
    state_dir: PathBuf,
    users_file: PathBuf,
    initial_user: String,
    anonymous: bool,
    failed_logins_max: u32,
    failed_logins_window: u64,
    failed_logins_per_address: u32,
    max_connections: u32,
    max_connections_per_address: u32,
    login_timeout: u64,
    data_idle_timeout: u64,
    keepalive: u64,
    password_threads: u32,
    login_cache_entries: u64,
    login_cache_seconds: u64,
    log_level: String,
    log_format: String,
    http_listen: String,
    http_token: String,
    idle_timeout: u64,
    durability: String,
    upload_buffer_kib: u64,
    upload_buffer_max_kib: u64,
    direct_io: bool,
    checkpoint_mib: u64,
    takeover_wait: u64,
    shutdown_grace: u64,
    journal_keep_days: u64,
    partial_expiry_hours: f64,
    webhook_url: String,
    front: bool,
    internal_listen: String,
    ftps_cert: PathBuf,
    ftps_key: PathBuf,
    ftps_required: bool,
    store: String,
    postgres_url: String,
    node_name: String,
    lease_seconds: u64,
    proxy_from: String,
}

/// Where records, claims and the journal live.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// One redb file in the state directory: one node.
    Redb,
    /// A PostgreSQL database shared by every node; the URL may carry a password, so `Debug`
    /// does not show it.
    Postgres { url: String },
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Redb => f.write_str("Redb"),
            StoreChoice::Postgres { .. } => f.write_str("Postgres { url: .. }"),
        }
    }
}

/// `proxy_from`: comma-separated IPs or CIDR blocks.
fn parse_proxy_from(s: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<ipnet::IpNet>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    bad(
                        "proxy_from",
                        format!(
                            "'{v}' is neither an IP address nor a CIDR block such as 10.0.0.0/24"
                        ),
                    )
                })
        })
        .collect()
}

/// `node_name`, or the host name when it is empty.
fn node_name(v: &str) -> Result<String, ConfigError> {
    let name = match v.trim() {
        "" => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "ftpd".to_string()),
        v => v.to_string(),
    };
    if name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(bad(
            "node_name",
            format!("'{name}' must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(name)
}

/// The HTTP listener's bearer token; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpToken(pub String);

impl std::fmt::Debug for HttpToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpToken(..)")
    }
}

/// `http_listen` (empty: off) and `http_token` (empty: none). Anything but loopback needs the
/// token: the metrics (and the other routes) are for the operator, not for the boxes.
fn check_http(
    listen: &str,
    token: &str,
) -> Result<(Option<SocketAddr>, Option<HttpToken>), ConfigError> {
    let token = match token {
        "" => None,
        t if t.bytes().all(|b| b.is_ascii_graphic()) => Some(HttpToken(t.to_string())),
        _ => {
            return Err(bad(
                "http_token",
                "must be printable ASCII without spaces (it travels in an HTTP header)",
            ))
        }
    };
    let listen = match listen.trim() {
        "" => return Ok((None, token)),
        v => v.parse::<SocketAddr>().map_err(|_| {
            bad(
                "http_listen",
                format!("'{v}' is not an address:port such as 127.0.0.1:9121"),
            )
        })?,
    };
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(bad(
            "http_listen",
            format!("{listen} is not a loopback address: set `http_token` too, so that only requests carrying it are served"),
        ));
    }
    Ok((Some(listen), token))
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Checked settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub passive_ports: RangeInclusive<u16>,
    pub passive_host: Option<std::net::Ipv4Addr>,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub users_file: PathBuf,
    pub initial_user: String,
    pub anonymous: bool,
    pub failed_logins_max: u32,
    pub failed_logins_window: Duration,
    /// Failed logins from one address, over all users, before the address is refused; 0 = off.
    pub failed_logins_per_address: u32,
    /// Control connections open at once, in total and from one address.
    pub max_connections: u32,
    pub max_connections_per_address: u32,
    /// Time from connecting to a successful login.
    pub login_timeout: Duration,
    /// Time a data connection may stay silent before the transfer is stopped.
    pub data_idle_timeout: Duration,
    /// TCP keepalive idle time on client sockets; `None` = off.
    pub keepalive: Option<Duration>,
    /// Threads that check passwords (PBKDF2), off the async workers.
    pub password_threads: usize,
    /// Verified logins remembered (one per user), and for how long; either 0 = no cache.
    pub login_cache_entries: usize,
    pub login_cache_lifetime: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    /// The HTTP listener (`/metrics`, ...); `None` = off.
    pub http_listen: Option<SocketAddr>,
    /// The bearer token every HTTP request must carry; `None` = no token (loopback only).
    pub http_token: Option<HttpToken>,
    pub idle_timeout: Duration,
    pub fsync: bool,
    pub upload_buffer: usize,
    pub upload_buffer_max: usize,
    pub direct_io: bool,
    pub checkpoint: u64,
    pub takeover_wait: Duration,
    pub shutdown_grace: Duration,
    /// How long journal events are kept (`journal_keep_days`).
    pub journal_keep: Duration,
    /// Partial and mismatched files untouched this long are removed with their records
    /// (`partial_expiry_hours`); `None` = off.
    pub partial_expiry: Option<Duration>,
    /// Where every journal event is POSTed (`webhook_url`); `None` = off.
    pub webhook_url: Option<crate::webhook::Endpoint>,
    pub front: bool,
    pub internal_listen: SocketAddr,
    pub ftps: Option<(PathBuf, PathBuf)>,
    /// No login without TLS on the control channel, no transfer without `PROT P`.
    pub ftps_required: bool,
    pub store: StoreChoice,
    pub node_name: String,
    /// How long a claim on a file lasts unless renewed (shared store only).
    pub lease: Duration,
    /// Peers allowed to send a PROXY protocol header.
    pub proxy_from: Vec<ipnet::IpNet>,
}

impl Settings {
    /// The upload path's tunables.
    pub fn upload_config(&self) -> crate::context::UploadConfig {
        crate::context::UploadConfig {
            buffer: self.upload_buffer,
            buffer_max: self.upload_buffer_max,
            checkpoint: self.checkpoint,
            fsync: self.fsync,
            takeover_wait: self.takeover_wait,
            direct_io: self.direct_io,
            data_idle_timeout: self.data_idle_timeout,
        }
    }

    /// The front's settings, for libunftp listening on `backend`.
    pub fn front_config(&self, backend: SocketAddr) -> crate::front::FrontConfig {
        let mut cfg =
            crate::front::FrontConfig::new(self.listen, self.passive_ports.clone(), backend);
        cfg.passive_host = self.passive_host;
        cfg.login_failures = self.failed_logins_max;
        cfg.login_failures_per_address = self.failed_logins_per_address;
        cfg.login_window = self.failed_logins_window;
        cfg.max_connections = self.max_connections;
        cfg.max_connections_per_address = self.max_connections_per_address;
        cfg.login_timeout = self.login_timeout;
        cfg.data_idle = self.data_idle_timeout;
        cfg.keepalive = self.keepalive;
        cfg.tls_required = self.ftps_required;
        cfg.proxy_from = self.proxy_from.clone();
        cfg
    }

    /// The FTPS certificate and key loaded as `serve` loads them (`None` without FTPS); an
    /// unusable file is a bad setting that names it.
    pub fn ftps_config(
        &self,
    ) -> Result<Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>, ConfigError> {
        use crate::front::tls::{server_config, TlsError};
        let Some((cert, key)) = &self.ftps else {
            return Ok(None);
        };
        server_config(cert, key).map(Some).map_err(|e| match e {
            TlsError::Certs { .. } => bad("ftps_cert", e.to_string()),
            TlsError::Key { .. } | TlsError::Config(_) => bad("ftps_key", e.to_string()),
        })
    }

    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment passed in (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(f) = file {
            if !f.is_file() {
                return Err(bad(
                    "--config",
                    format!("{} is not a readable file", f.display()),
                ));
            }
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        // FTPD_CONFIG names the file (the `--config` option), it is not a setting.
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("FTPD_") && k != "FTPD_CONFIG")
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("FTPD")
                .try_parsing(true)
                .source(Some(env)),
        );
        let raw: Raw = b.build()?.try_deserialize()?;
        Self::check(raw)
    }

    fn check(r: Raw) -> Result<Self, ConfigError> {
        let addr = |key: &'static str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse().map_err(|_| {
                bad(
                    key,
                    format!("'{v}' is not an address:port such as 127.0.0.1:2121"),
                )
            })
        };
        let listen = addr("listen", &r.listen)?;
        let internal_listen = addr("internal_listen", &r.internal_listen)?;
        if !internal_listen.ip().is_loopback() {
            return Err(bad(
                "internal_listen",
                "must be a loopback address (nothing outside may reach it)",
            ));
        }
        let (http_listen, http_token) = check_http(&r.http_listen, &r.http_token)?;
        let passive_ports =
            parse_ports(&r.passive_ports).map_err(|reason| bad("passive_ports", reason))?;
        if passive_ports.contains(&listen.port()) {
            return Err(bad(
                "passive_ports",
                format!("range includes the control port {}", listen.port()),
            ));
        }
        let passive_host = match r.passive_host.trim() {
            "" => None,
            h => Some(h.parse().map_err(|_| {
                bad(
                    "passive_host",
                    format!("'{h}' is not an IPv4 address (PASV carries IPv4 only)"),
                )
            })?),
        };
        let log_format = match r.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            o => {
                return Err(bad(
                    "log_format",
                    format!("'{o}' is neither \"text\" nor \"json\""),
                ))
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&r.log_level).is_err()
            || r.log_level.trim().is_empty()
        {
            return Err(bad(
                "log_level",
                format!("'{}' is not a level or tracing filter", r.log_level),
            ));
        }
        let fsync = match r.durability.as_str() {
            "fsync" => true,
            "none" => false,
            o => {
                return Err(bad(
                    "durability",
                    format!("'{o}' is neither \"fsync\" nor \"none\""),
                ))
            }
        };
        if !(4..=65536).contains(&r.upload_buffer_kib) {
            return Err(bad("upload_buffer_kib", "must be between 4 and 65536"));
        }
        if !(4..=65536).contains(&r.upload_buffer_max_kib) {
            return Err(bad("upload_buffer_max_kib", "must be between 4 and 65536"));
        }
        if r.checkpoint_mib == 0 {
            return Err(bad("checkpoint_mib", "must be at least 1"));
        }
        if !(1..=36_500).contains(&r.journal_keep_days) {
            return Err(bad("journal_keep_days", "must be between 1 and 36500"));
        }
        // Fractions are allowed (0.5 = 30 minutes); 0 turns the expiry off.
        let h = r.partial_expiry_hours;
        if !(h.is_finite() && (h == 0.0 || (1.0 / 3600.0..=876_000.0).contains(&h))) {
            return Err(bad(
                "partial_expiry_hours",
                "must be 0 (off) or between 1/3600 (one second) and 876000 hours",
            ));
        }
        let partial_expiry = (h > 0.0).then(|| Duration::from_secs_f64(h * 3600.0));
        let webhook_url = match r.webhook_url.trim() {
            "" => None,
            url => Some(crate::webhook::Endpoint::parse(url).map_err(|e| bad("webhook_url", e))?),
        };
        for (key, v) in [
            ("idle_timeout", r.idle_timeout),
            ("login_timeout", r.login_timeout),
            ("data_idle_timeout", r.data_idle_timeout),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1 second"));
            }
        }
        for (key, v) in [
            ("max_connections", r.max_connections),
            ("max_connections_per_address", r.max_connections_per_address),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        if r.password_threads > 256 {
            return Err(bad(
                "password_threads",
                "must be between 0 (one per core) and 256",
            ));
        }
        if r.login_cache_entries > 1_000_000 {
            return Err(bad(
                "login_cache_entries",
                "must be between 0 (no cache) and 1000000",
            ));
        }
        if r.login_cache_seconds > 86_400 {
            return Err(bad(
                "login_cache_seconds",
                "must be between 0 (no cache) and 86400 (one day)",
            ));
        }
        crate::users::validate_name(&r.initial_user)
            .map_err(|e| bad("initial_user", e.to_string()))?;
        for (key, p) in [
            ("root", &r.root),
            ("state_dir", &r.state_dir),
            ("users_file", &r.users_file),
        ] {
            if p.as_os_str().is_empty() {
                return Err(bad(key, "must not be empty"));
            }
        }
        let ftps = match (
            r.ftps_cert.as_os_str().is_empty(),
            r.ftps_key.as_os_str().is_empty(),
        ) {
            (true, true) => None,
            (false, false) => {
                for (key, p) in [("ftps_cert", &r.ftps_cert), ("ftps_key", &r.ftps_key)] {
                    if !p.is_file() {
                        return Err(bad(key, format!("{} is not a readable file", p.display())));
                    }
                }
                Some((r.ftps_cert, r.ftps_key))
            }
            _ => {
                return Err(bad(
                    "ftps_cert",
                    "ftps_cert and ftps_key must be set together",
                ))
            }
        };
        if r.ftps_required && ftps.is_none() {
            return Err(bad(
                "ftps_required",
                "needs ftps_cert and ftps_key (TLS cannot be required without a certificate)",
            ));
        }
        let store = match (r.store.as_str(), r.postgres_url.trim()) {
            ("redb", "") => StoreChoice::Redb,
            ("redb", _) => {
                return Err(bad(
                    "postgres_url",
                    "is set but store = \"redb\"; set store = \"postgres\" to use it",
                ))
            }
            ("postgres", "") => {
                return Err(bad(
                    "postgres_url",
                    "store = \"postgres\" needs a postgres_url",
                ))
            }
            ("postgres", url) => StoreChoice::Postgres {
                url: url.to_string(),
            },
            (o, _) => {
                return Err(bad(
                    "store",
                    format!("'{o}' is neither \"redb\" nor \"postgres\""),
                ))
            }
        };
        if !(3..=3600).contains(&r.lease_seconds) {
            return Err(bad("lease_seconds", "must be between 3 and 3600"));
        }
        let proxy_from = parse_proxy_from(&r.proxy_from)?;
        if !proxy_from.is_empty() && !r.front {
            // libunftp alone would read the header as a command line.
            return Err(bad(
                "proxy_from",
                "needs front = true (the front reads the PROXY headers)",
            ));
        }
        let node_name = node_name(&r.node_name)?;
        Ok(Settings {
            listen,
            passive_ports,
            passive_host,
            root: r.root,
            state_dir: r.state_dir,
            users_file: r.users_file,
            initial_user: r.initial_user,
            anonymous: r.anonymous,
            failed_logins_max: r.failed_logins_max,
            failed_logins_window: Duration::from_secs(r.failed_logins_window),
            failed_logins_per_address: r.failed_logins_per_address,
            max_connections: r.max_connections,
            max_connections_per_address: r.max_connections_per_address,
            login_timeout: Duration::from_secs(r.login_timeout),
            data_idle_timeout: Duration::from_secs(r.data_idle_timeout),
            keepalive: (r.keepalive > 0).then(|| Duration::from_secs(r.keepalive)),
            password_threads: match r.password_threads {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n as usize,
            },
            login_cache_entries: r.login_cache_entries as usize,
            login_cache_lifetime: Duration::from_secs(r.login_cache_seconds),
            log_level: r.log_level,
            log_format,
            http_listen,
            http_token,
            idle_timeout: Duration::from_secs(r.idle_timeout),
            fsync,
            upload_buffer: (r.upload_buffer_kib * 1024) as usize,
            upload_buffer_max: (r.upload_buffer_max_kib * 1024) as usize,
            direct_io: r.direct_io,
            checkpoint: r.checkpoint_mib << 20,
            takeover_wait: Duration::from_secs(r.takeover_wait),
            shutdown_grace: Duration::from_secs(r.shutdown_grace),
            journal_keep: Duration::from_secs(r.journal_keep_days * 86_400),
            partial_expiry,
            webhook_url,
            front: r.front,
            internal_listen,
            ftps,
            ftps_required: r.ftps_required,
            store,
            node_name,
            lease: Duration::from_secs(r.lease_seconds),
            proxy_from,
        })
    }
}

fn parse_ports(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("'{s}' is not FIRST-LAST, e.g. 50000-50100"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("'{v}' is not a port number 1-65535"))
    };
    let (a, b) = (p(a)?, p(b)?);
    if a > b {
        return Err(format!("first port {a} is above last port {b}"));
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_safe() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert!(s.listen.ip().is_loopback());
        assert_eq!(s.listen.port(), 2121);
        assert_eq!(s.passive_ports, 50000..=50100);
        assert!(s.fsync);
        assert!(!s.anonymous);
        assert_eq!(s.journal_keep, Duration::from_secs(30 * 86_400));
        assert_eq!(s.partial_expiry, Some(Duration::from_secs(168 * 3600)));
        assert_eq!(
            s.login_cache_entries,
            crate::users::DEFAULT_LOGIN_CACHE_ENTRIES
        );
        assert_eq!(
            s.login_cache_lifetime,
            crate::users::DEFAULT_LOGIN_CACHE_LIFETIME
        );
    }

    #[test]
    fn environment_overrides() {
        let s = Settings::load_from(
            None,
            env(&[
                ("FTPD_LISTEN", "127.0.0.1:2999"),
                ("FTPD_PASSIVE_PORTS", "40000-40010"),
                ("FTPD_DURABILITY", "none"),
                ("FTPD_IDLE_TIMEOUT", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(s.listen.port(), 2999);
        assert_eq!(s.passive_ports, 40000..=40010);
        assert!(!s.fsync);
        assert_eq!(s.idle_timeout, Duration::from_secs(7));
    }

    #[test]
    fn bad_settings_name_themselves() {
        for (k, v, key) in [
            ("FTPD_LISTEN", "nowhere", "listen"),
            ("FTPD_PASSIVE_PORTS", "60000-50000", "passive_ports"),
            ("FTPD_PASSIVE_PORTS", "50000", "passive_ports"),
            ("FTPD_LOG_FORMAT", "xml", "log_format"),
            ("FTPD_DURABILITY", "maybe", "durability"),
            ("FTPD_INTERNAL_LISTEN", "0.0.0.0:1", "internal_listen"),
            ("FTPD_IDLE_TIMEOUT", "soon", "idle_timeout"),
            ("FTPD_LOGIN_TIMEOUT", "0", "login_timeout"),
            ("FTPD_DATA_IDLE_TIMEOUT", "0", "data_idle_timeout"),
            ("FTPD_MAX_CONNECTIONS", "0", "max_connections"),
            (
                "FTPD_MAX_CONNECTIONS_PER_ADDRESS",
                "0",
                "max_connections_per_address",
            ),
            ("FTPD_PASSWORD_THREADS", "1000", "password_threads"),
            ("FTPD_LOGIN_CACHE_ENTRIES", "2000000", "login_cache_entries"),
            ("FTPD_LOGIN_CACHE_ENTRIES", "-1", "login_cache_entries"),
            ("FTPD_LOGIN_CACHE_SECONDS", "100000", "login_cache_seconds"),
            ("FTPD_JOURNAL_KEEP_DAYS", "0", "journal_keep_days"),
            ("FTPD_PARTIAL_EXPIRY_HOURS", "-1", "partial_expiry_hours"),
            (
                "FTPD_PARTIAL_EXPIRY_HOURS",
                "0.0001",
                "partial_expiry_hours",
            ),
            ("FTPD_PARTIAL_EXPIRY_HOURS", "NaN", "partial_expiry_hours"),
            ("FTPD_PARTIAL_EXPIRY_HOURS", "soon", "partial_expiry_hours"),
            ("FTPD_WEBHOOK_URL", "ftp://example.com/", "webhook_url"),
            ("FTPD_WEBHOOK_URL", "example.com/hook", "webhook_url"),
        ] {
            let e = Settings::load_from(None, env(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{k}={v}: {e}");
        }
    }

    #[test]
    fn partial_expiry_takes_fractions_of_an_hour_and_0_is_off() {
        let expiry = |v: &str| {
            Settings::load_from(None, env(&[("FTPD_PARTIAL_EXPIRY_HOURS", v)]))
                .unwrap()
                .partial_expiry
        };
        assert_eq!(expiry("0"), None);
        assert_eq!(expiry("0.5"), Some(Duration::from_secs(1800)));
        assert_eq!(expiry("24"), Some(Duration::from_secs(86_400)));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f.toml");
        std::fs::write(&f, "partial_expiry_hours = 2\n").unwrap();
        let s = Settings::load_from(Some(&f), env(&[])).unwrap();
        assert_eq!(s.partial_expiry, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn the_http_listener_is_off_by_default_and_needs_a_token_off_loopback() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!((s.http_listen, s.http_token), (None, None));
        let s = Settings::load_from(None, env(&[("FTPD_HTTP_LISTEN", "127.0.0.1:9121")])).unwrap();
        assert_eq!(s.http_listen, Some("127.0.0.1:9121".parse().unwrap()));
        let s = Settings::load_from(None, env(&[("FTPD_HTTP_LISTEN", "[::1]:9121")])).unwrap();
        assert!(s.http_listen.is_some());
        for v in ["0.0.0.0:9121", "192.0.2.7:9121", "[::]:9121"] {
            let e = Settings::load_from(None, env(&[("FTPD_HTTP_LISTEN", v)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("`http_listen`") && e.contains("http_token"),
                "{v}: {e}"
            );
        }
        let s = Settings::load_from(
            None,
            env(&[
                ("FTPD_HTTP_LISTEN", "0.0.0.0:9121"),
                ("FTPD_HTTP_TOKEN", "Zm9vYmFy-0123"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http_token, Some(HttpToken("Zm9vYmFy-0123".into())));
        assert!(
            !format!("{s:?}").contains("Zm9vYmFy"),
            "the token stays out of logs"
        );
        for (k, v, key) in [
            ("FTPD_HTTP_LISTEN", "localhost", "http_listen"),
            ("FTPD_HTTP_TOKEN", "two words", "http_token"),
        ] {
            let e = Settings::load_from(None, env(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{k}={v}: {e}");
        }
    }

    #[test]
    fn a_config_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:2200\"\nanonymous = true\n").unwrap();
        let s = Settings::load_from(Some(&f), env(&[])).unwrap();
        assert_eq!(s.listen.port(), 2200);
        assert!(s.anonymous);
        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        let e = Settings::load_from(Some(&f), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        // the variable that names the file is not taken for a setting
        std::fs::write(&f, "anonymous = true\n").unwrap();
        let s = Settings::load_from(Some(&f), env(&[("FTPD_CONFIG", "f.toml")])).unwrap();
        assert!(s.anonymous);
    }

    #[test]
    fn ftps_required_needs_a_certificate_and_unusable_files_name_their_setting() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert!(!s.ftps_required);
        assert!(s.ftps_config().unwrap().is_none());
        let e = Settings::load_from(None, env(&[("FTPD_FTPS_REQUIRED", "true")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`ftps_required`"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "not a certificate\n").unwrap();
        std::fs::write(&key, "not a key\n").unwrap();
        let files = [
            ("FTPD_FTPS_CERT", cert.to_str().unwrap()),
            ("FTPD_FTPS_KEY", key.to_str().unwrap()),
            ("FTPD_FTPS_REQUIRED", "true"),
        ];
        let s = Settings::load_from(None, env(&files)).unwrap();
        assert!(s.ftps_required);
        assert!(s.front_config(s.internal_listen).tls_required);
        let e = s.ftps_config().unwrap_err().to_string();
        assert!(e.contains("`ftps_cert`"), "{e}");
    }

    #[test]
    fn proxy_from_reaches_the_front_and_needs_it() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert!(s.front_config(s.internal_listen).proxy_from.is_empty());
        let balancers = [("FTPD_PROXY_FROM", "127.0.0.1, 10.0.0.0/24")];
        let s = Settings::load_from(None, env(&balancers)).unwrap();
        let nets = s.front_config(s.internal_listen).proxy_from;
        assert_eq!(nets.len(), 2);
        assert!(nets[1].contains(&"10.0.0.9".parse::<std::net::IpAddr>().unwrap()));
        let e = Settings::load_from(None, env(&[balancers[0], ("FTPD_FRONT", "false")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`proxy_from`"), "{e}");
        let e = Settings::load_from(None, env(&[("FTPD_PROXY_FROM", "balancer")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`proxy_from`"), "{e}");
    }
}
