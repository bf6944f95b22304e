//! Accounts: the users file (unftp-auth-jsonfile's format, PBKDF2-hashed passwords), the
//! authenticator that reloads it when it changes (with its login cache), and the user type with
//! its home directory.

mod login_cache;

use async_trait::async_trait;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;
use unftp_auth_jsonfile::JsonFileAuthenticator;
use unftp_core::auth::{
    AuthenticationError, Authenticator, Credentials, Principal, UserDetail, UserDetailError,
    UserDetailProvider,
};

/// PBKDF2-HMAC-SHA256 rounds for new passwords: a login costs a few tens of milliseconds.
pub const DEFAULT_ITERATIONS: u32 = 100_000;

/// Verified logins kept by default: one per user, a few hundred bytes each.
pub const DEFAULT_LOGIN_CACHE_ENTRIES: usize = 10_000;

/// How long a verified login is kept by default.
pub const DEFAULT_LOGIN_CACHE_LIFETIME: Duration = Duration::from_secs(3600);

/// A logged-in account, confined to `home` (`<root>/<name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FtpUser {
    pub name: String,
    pub home: PathBuf,
}

impl fmt::Display for FtpUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl UserDetail for FtpUser {
    fn home(&self) -> Option<&Path> {
        Some(&self.home)
    }
}

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("invalid user name '{0}': use 1 to 64 of A-Z a-z 0-9 . _ - and do not start with '.' or '-'")]
    BadName(String),
    #[error("user '{0}' already exists")]
    Exists(String),
    #[error("no user '{0}'")]
    NoSuchUser(String),
    #[error("empty password")]
    EmptyPassword,
    #[error("users file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users file {path} is not a JSON array of users: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("users file {path} cannot be used: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("no secure random numbers available")]
    Random,
}

/// Checks a user name: it becomes a directory name under the root.
pub fn validate_name(name: &str) -> Result<(), UsersError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(UsersError::BadName(name.to_string()))
    }
}

/// The users file as a list of JSON objects; fields other than ours are kept as they are.
pub struct UsersFile {
    path: PathBuf,
    entries: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl UsersFile {
    /// Reads the file; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        };
        let entries = match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Vec::new(),
            Ok(text) => serde_json::from_str(&text).map_err(|source| UsersError::Json {
                path: path.to_path_buf(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        Ok(UsersFile {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// User names in file order.
    pub fn names(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|e| {
                e.get("username")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
            .collect()
    }

    /// Adds a user with a PBKDF2-hashed password.
    pub fn add(
        &mut self,
        name: &str,
        password: &str,
        iterations: NonZeroU32,
    ) -> Result<(), UsersError> {
        validate_name(name)?;
        if password.is_empty() {
            return Err(UsersError::EmptyPassword);
        }
        if self.names().iter().any(|n| n == name) {
            return Err(UsersError::Exists(name.to_string()));
        }
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| UsersError::Random)?;
        let mut key = [0u8; ring::digest::SHA256_OUTPUT_LEN];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &mut key,
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let entry = serde_json::json!({
            "username": name,
            "pbkdf2_salt": b64.encode(salt),
            "pbkdf2_key": b64.encode(key),
            "pbkdf2_iter": iterations.get(),
        });
        if let serde_json::Value::Object(map) = entry {
            self.entries.push(map);
        }
        Ok(())
    }

    /// Removes a user (its files stay on disk).
    pub fn remove(&mut self, name: &str) -> Result<(), UsersError> {
        let before = self.entries.len();
        self.entries
            .retain(|e| e.get("username").and_then(|v| v.as_str()) != Some(name));
        if self.entries.len() == before {
            return Err(UsersError::NoSuchUser(name.to_string()));
        }
        Ok(())
    }

    /// Writes the file atomically (temporary file, fsync, rename), readable by the owner only.
    pub fn save(&self) -> Result<(), UsersError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| UsersError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let text =
            serde_json::to_string_pretty(&self.entries).map_err(|source| UsersError::Json {
                path: self.path.clone(),
                source,
            })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// A random password of 20 characters from an unambiguous alphabet.
pub fn generate_password() -> Result<String, UsersError> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 20];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| UsersError::Random)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

/// Why a job on the [`PasswordPool`] did not give its result.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the password pool is closed")]
    Closed,
    #[error("password check failed: {0}")]
    Failed(#[from] tokio::task::JoinError),
}

/// Runs password checks on tokio's blocking threads, at most `size` at a time. PBKDF2 costs
/// tens of milliseconds of CPU per check by design: on the async workers a login storm would
/// stall every session and upload, and unbounded it would take every core.
#[derive(Clone, Debug)]
pub struct PasswordPool {
    permits: Arc<Semaphore>,
}

impl PasswordPool {
    /// A pool of `size` threads' worth of checks (at least one).
    pub fn new(size: usize) -> Self {
        PasswordPool {
            permits: Arc::new(Semaphore::new(size.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }

    /// Runs `job` once a slot is free; waiting callers are served in order.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Closed)?;
        Ok(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await?)
    }
}

/// One account's PBKDF2-HMAC-SHA256 password hash, as the users file stores it.
struct Hash {
    salt: Vec<u8>,
    key: Vec<u8>,
    iterations: NonZeroU32,
}

impl Hash {
    /// From a users-file entry with the three `pbkdf2_*` fields, as unftp-auth-jsonfile reads them.
    fn of(entry: &serde_json::Map<String, serde_json::Value>) -> Option<Self> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let text = |k: &str| entry.get(k).and_then(|v| v.as_str());
        let iterations = entry.get("pbkdf2_iter").and_then(|v| v.as_u64())?;
        Some(Hash {
            salt: b64.decode(text("pbkdf2_salt")?).ok()?,
            key: b64.decode(text("pbkdf2_key")?).ok()?,
            iterations: NonZeroU32::new(u32::try_from(iterations).ok()?)?,
        })
    }

    /// What the login cache keeps for `user` and `password` checked against this hash.
    fn presented(&self, user: &str, password: &str) -> login_cache::Presented {
        login_cache::Presented::new(user, password, &self.salt, &self.key, self.iterations.get())
    }

    /// True when `password` is the one hashed: tens of milliseconds of CPU, by design.
    fn verify(&self, password: &str) -> bool {
        ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.key,
        )
        .is_ok()
    }
}

/// The accounts of one version of the users file.
struct Accounts {
    /// unftp-auth-jsonfile over the file as it is; it never hashes for the requests it gets
    /// (unknown users, plain passwords, a client certificate alone).
    file: JsonFileAuthenticator,
    /// PBKDF2 hashes by user name, checked on the [`PasswordPool`].
    hashes: HashMap<String, Arc<Hash>>,
    /// The same file with each PBKDF2 hash replaced by the plain password `token`: once the
    /// pool has checked a password, it applies the rest of the entry (address ranges, client
    /// certificate) and the delay after a failure exactly as the file would, without hashing.
    checked: JsonFileAuthenticator,
    /// Random per load, never sent anywhere.
    token: String,
    /// Which load of the file this is; the login cache serves only the current one.
    generation: u64,
}

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accounts")
            .field("hashed", &self.hashes.len())
            .finish_non_exhaustive()
    }
}

impl Accounts {
    fn parse(text: &str, generation: u64) -> Result<Self, String> {
        let file = JsonFileAuthenticator::from_json(text).map_err(|e| e.to_string())?;
        let mut entries: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut token = [0u8; 32];
        SystemRandom::new()
            .fill(&mut token)
            .map_err(|_| UsersError::Random.to_string())?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let mut hashes = HashMap::new();
        for entry in &mut entries {
            let Some(name) = entry.get("username").and_then(|v| v.as_str()) else {
                continue;
            };
            let name = name.to_string();
            // A later entry of the same name wins, as in unftp-auth-jsonfile.
            let Some(hash) = Hash::of(entry) else {
                hashes.remove(&name);
                continue;
            };
            hashes.insert(name, Arc::new(hash));
            for k in ["pbkdf2_salt", "pbkdf2_key", "pbkdf2_iter"] {
                entry.remove(k);
            }
            entry.insert("password".into(), token.clone().into());
        }
        let twin = serde_json::to_string(&entries).map_err(|e| e.to_string())?;
        let checked = JsonFileAuthenticator::from_json(twin).map_err(|e| e.to_string())?;
        Ok(Accounts {
            file,
            hashes,
            checked,
            token,
            generation,
        })
    }
}

/// When the users file last changed: a reload is due when any of these differ. `ftpd user`
/// replaces the file (a new inode) even when the change falls within one timestamp tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    changed: (i64, i64),
    len: u64,
    inode: (u64, u64),
}

impl FileStamp {
    /// None when the file cannot be read (a missing file is no users).
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: m.modified().ok(),
            changed: (m.ctime(), m.ctime_nsec()),
            len: m.len(),
            inode: (m.dev(), m.ino()),
        })
    }
}

/// Authenticates against the users file, reloading it when it changes (modification or change
/// time, size or inode), so `ftpd user add` takes effect without a restart. Password hashes are
/// checked on a [`PasswordPool`], never on the async workers; a login that was verified lately
/// is recognised by the login cache instead (see `docs/operations.md`, Logins).
#[derive(Debug)]
pub struct UsersAuthenticator {
    path: PathBuf,
    anonymous: bool,
    current: RwLock<(Option<FileStamp>, Arc<Accounts>)>,
    /// The next [`Accounts::generation`].
    loads: AtomicU64,
    pool: PasswordPool,
    cache: login_cache::LoginCache,
    /// PBKDF2 checks run so far.
    pbkdf2_checks: Arc<AtomicU64>,
    /// Counts failed logins (`ftpd_login_failures_total`), when set.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl UsersAuthenticator {
    /// Loads the users file now, so a broken file stops start-up. Passwords are checked on
    /// `password_threads` threads at most. The login cache has its default bounds
    /// ([`DEFAULT_LOGIN_CACHE_ENTRIES`], [`DEFAULT_LOGIN_CACHE_LIFETIME`]); see
    /// [`UsersAuthenticator::with_login_cache`].
    pub fn new(
        path: PathBuf,
        anonymous: bool,
        password_threads: usize,
    ) -> Result<Self, UsersError> {
        let (stamp, accounts) = Self::load(&path, 0)?;
        let cache = login_cache::LoginCache::new(
            DEFAULT_LOGIN_CACHE_ENTRIES,
            DEFAULT_LOGIN_CACHE_LIFETIME,
            accounts.generation,
        )
        .map_err(|_| UsersError::Random)?;
        Ok(UsersAuthenticator {
            path,
            anonymous,
            current: RwLock::new((stamp, Arc::new(accounts))),
            loads: AtomicU64::new(1),
            pool: PasswordPool::new(password_threads),
            cache,
            pbkdf2_checks: Arc::new(AtomicU64::new(0)),
            metrics: None,
        })
    }

    /// Counts every refused login in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Keeps at most `entries` verified logins, each for `lifetime`; either 0 turns the cache
    /// off (every login runs PBKDF2).
    pub fn with_login_cache(mut self, entries: usize, lifetime: Duration) -> Self {
        self.cache.configure(entries, lifetime);
        self
    }

    /// PBKDF2 checks run so far (logins the cache did not answer), for tests and diagnostics.
    pub fn pbkdf2_checks(&self) -> u64 {
        self.pbkdf2_checks.load(Ordering::Relaxed)
    }

    fn load(path: &Path, generation: u64) -> Result<(Option<FileStamp>, Accounts), UsersError> {
        // The stamp is taken before reading, so a change while reading triggers another load.
        let stamp = FileStamp::of(path);
        let text = match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => t,
            Ok(_) => "[]".to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "[]".to_string(),
            Err(source) => {
                return Err(UsersError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let accounts =
            Accounts::parse(&text, generation).map_err(|reason| UsersError::Invalid {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok((stamp, accounts))
    }

    /// The accounts of the users file as it is now, reloading it (and emptying the login
    /// cache) if it changed.
    fn accounts(&self) -> Arc<Accounts> {
        let stamp = FileStamp::of(&self.path);
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if cur.0 == stamp {
                return cur.1.clone();
            }
        }
        let generation = self.loads.fetch_add(1, Ordering::Relaxed);
        match Self::load(&self.path, generation) {
            Ok((m, accounts)) => {
                let accounts = Arc::new(accounts);
                let dropped = {
                    let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
                    *cur = (m, accounts.clone());
                    // Under the same lock: the cache always serves the accounts now current.
                    self.cache.clear(generation)
                };
                tracing::info!(path = %self.path.display(), login_cache_dropped = dropped, "users file reloaded");
                accounts
            }
            Err(e) => {
                tracing::error!(error = %e, "users file changed but cannot be read; keeping the previous accounts");
                self.current
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .1
                    .clone()
            }
        }
    }

    /// True when `password` is `username`'s: from the login cache when this exact user,
    /// password and stored hash were verified lately, otherwise PBKDF2 on the pool (a success
    /// is then cached; a failure never is).
    async fn password_is_right(
        &self,
        accounts: &Accounts,
        username: &str,
        password: &str,
        hash: &Arc<Hash>,
    ) -> Result<bool, AuthenticationError> {
        let presented = self
            .cache
            .enabled()
            .then(|| hash.presented(username, password));
        if let Some(p) = &presented {
            if self
                .cache
                .contains(accounts.generation, username, p, Instant::now())
            {
                tracing::debug!(user = username, "password matched the login cache");
                return Ok(true);
            }
        }
        let (pw, h, checks) = (
            password.to_string(),
            hash.clone(),
            self.pbkdf2_checks.clone(),
        );
        let right = self
            .pool
            .run(move || {
                checks.fetch_add(1, Ordering::Relaxed);
                h.verify(&pw)
            })
            .await
            .map_err(|e| AuthenticationError::with_source("password check", e))?;
        tracing::debug!(user = username, right, "password checked with PBKDF2");
        if let (true, Some(p)) = (right, &presented) {
            self.cache
                .insert(accounts.generation, username, p, Instant::now());
        }
        Ok(right)
    }
}

#[async_trait]
impl Authenticator for UsersAuthenticator {
    /// libunftp asks once per `PASS`; each refusal counts once as a failed login.
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        let result = self.check(username, creds).await;
        if let (Err(_), Some(m)) = (&result, &self.metrics) {
            m.login_failed();
        }
        result
    }

    fn name(&self) -> &str {
        "users-file"
    }
}

impl UsersAuthenticator {
    /// The login decision: the principal, or why not.
    async fn check(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        if self.anonymous && (username == "anonymous" || username == "ftp") {
            return Ok(Principal {
                username: "anonymous".into(),
            });
        }
        if validate_name(username).is_err() {
            return Err(AuthenticationError::BadUser);
        }
        let accounts = self.accounts();
        let (Some(password), Some(hash)) = (&creds.password, accounts.hashes.get(username)) else {
            return accounts.file.authenticate(username, creds).await;
        };
        let right = self
            .password_is_right(&accounts, username, password, hash)
            .await?;
        let mut creds = creds.clone();
        creds.password = Some(if right {
            accounts.token.clone()
        } else {
            String::new()
        });
        accounts.checked.authenticate(username, &creds).await
    }
}

/// Gives each principal its home `<root>/<name>`, creating the directory on first login.
#[derive(Debug)]
pub struct HomeProvider {
    pub root: PathBuf,
}

#[async_trait]
impl UserDetailProvider for HomeProvider {
    type User = FtpUser;

    async fn provide_user_detail(&self, principal: &Principal) -> Result<FtpUser, UserDetailError> {
        validate_name(&principal.username)
            .map_err(|e| UserDetailError::with_source("bad user name", e))?;
        let home = self.root.join(&principal.username);
        let h = home.clone();
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(&h))
            .await
            .map_err(|e| UserDetailError::with_source("home directory", e))?
            .map_err(|e| UserDetailError::with_source("cannot create home directory", e))?;
        Ok(FtpUser {
            name: principal.username.clone(),
            home,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(password: &str) -> Credentials {
        Credentials {
            password: Some(password.into()),
            certificate_chain: None,
            source_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            command_channel_security: unftp_core::auth::ChannelEncryptionState::Plaintext,
        }
    }

    fn authenticator(path: PathBuf, threads: usize) -> UsersAuthenticator {
        UsersAuthenticator::new(path, false, threads).unwrap()
    }

    /// The pool checks the hash; the rest of the entry (address ranges) and plain-password
    /// entries work as unftp-auth-jsonfile has them, and the stand-in for a checked password
    /// opens nothing by itself.
    #[tokio::test]
    async fn a_checked_password_still_meets_the_rest_of_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let mut f = UsersFile::load(&path).unwrap();
        f.add("boxa", "pw", NonZeroU32::new(1000).unwrap()).unwrap();
        f.save().unwrap();
        let mut entries: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        entries[0]["allowed_ip_ranges"] = serde_json::json!(["10.0.0.0/8"]);
        entries.push(serde_json::json!({"username": "plain", "password": "pl"}));
        // A later entry of a name replaces an earlier one, hashed or not.
        let mut other = UsersFile::load(&dir.path().join("other.json")).unwrap();
        other
            .add("redone", "hashed", NonZeroU32::new(1000).unwrap())
            .unwrap();
        other.save().unwrap();
        let hashed: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("other.json")).unwrap())
                .unwrap();
        entries.extend(hashed);
        entries.push(serde_json::json!({"username": "redone", "password": "plain-now"}));
        std::fs::write(&path, serde_json::to_string(&entries).unwrap()).unwrap();

        let auth = authenticator(path, 1);
        let from = |ip: [u8; 4], password: &str| Credentials {
            source_ip: std::net::Ipv4Addr::from(ip).into(),
            ..creds(password)
        };
        let token = auth.accounts().token.clone();
        let inside = from([10, 1, 2, 3], "pw");
        let (outside, wrong, stand_in, plain_right, plain_wrong) = (
            from([127, 0, 0, 1], "pw"),
            from([10, 1, 2, 3], "nope"),
            from([10, 1, 2, 3], &token),
            creds("pl"),
            creds("x"),
        );
        let (ok, outside, wrong, stand_in, plain, plain_wrong) = tokio::join!(
            auth.authenticate("boxa", &inside),
            auth.authenticate("boxa", &outside),
            auth.authenticate("boxa", &wrong),
            auth.authenticate("boxa", &stand_in),
            auth.authenticate("plain", &plain_right),
            auth.authenticate("plain", &plain_wrong),
        );
        assert_eq!(ok.unwrap().username, "boxa");
        assert!(
            matches!(outside, Err(AuthenticationError::IpDisallowed)),
            "{outside:?}"
        );
        assert!(
            matches!(wrong, Err(AuthenticationError::BadPassword)),
            "{wrong:?}"
        );
        assert!(
            matches!(stand_in, Err(AuthenticationError::BadPassword)),
            "{stand_in:?}"
        );
        assert!(plain.is_ok());
        let (now, before) = (creds("plain-now"), creds("hashed"));
        let (now, before) = tokio::join!(
            auth.authenticate("redone", &now),
            auth.authenticate("redone", &before)
        );
        assert!(now.is_ok() && before.is_err(), "{now:?} {before:?}");
        assert!(
            matches!(plain_wrong, Err(AuthenticationError::BadPassword)),
            "{plain_wrong:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_runs_at_most_its_size_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = PasswordPool::new(3);
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut jobs = tokio::task::JoinSet::new();
        for i in 0..12 {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            jobs.spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                })
                .await
            });
        }
        let mut done = Vec::new();
        while let Some(r) = jobs.join_next().await {
            done.push(r.unwrap().unwrap());
        }
        done.sort_unstable();
        assert_eq!(done, (0..12).collect::<Vec<_>>());
        assert_eq!(
            most.load(Ordering::SeqCst),
            3,
            "never more than the pool's size, and all of it used"
        );
        // A size of 0 still checks passwords, one at a time.
        assert_eq!(PasswordPool::new(0).run(|| 5).await.unwrap(), 5);
    }

    #[test]
    fn names_are_safe_directory_names() {
        for ok in ["stb", "box-01", "a.b_c"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "-x", "a/b", "a b", &"x".repeat(65), "ü"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn added_users_log_in_and_removed_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let mut f = UsersFile::load(&path).unwrap();
        let it = NonZeroU32::new(1000).unwrap();
        f.add("alice", "s3cret", it).unwrap();
        assert!(matches!(
            f.add("alice", "x", it),
            Err(UsersError::Exists(_))
        ));
        assert!(matches!(
            f.add("bob", "", it),
            Err(UsersError::EmptyPassword)
        ));
        f.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret"), "password stored in clear");

        let auth = authenticator(path.clone(), 2);
        assert!(auth.authenticate("alice", &creds("s3cret")).await.is_ok());
        assert!(auth.authenticate("alice", &creds("wrong")).await.is_err());
        assert!(auth.authenticate("anonymous", &creds("x")).await.is_err());

        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = UsersFile::load(&path).unwrap();
        f.remove("alice").unwrap();
        f.add("carol", "pw", it).unwrap();
        f.save().unwrap();
        assert!(
            auth.authenticate("alice", &creds("s3cret")).await.is_err(),
            "reload on change"
        );
        assert!(auth.authenticate("carol", &creds("pw")).await.is_ok());
    }

    /// PBKDF2 rounds that take at least `at_least` here (debug builds are slower than release).
    fn slow_iterations(at_least: std::time::Duration) -> (NonZeroU32, std::time::Duration) {
        let mut n = 10_000u32;
        loop {
            let t = std::time::Instant::now();
            let mut out = [0u8; 32];
            let it = NonZeroU32::new(n).unwrap();
            ring::pbkdf2::derive(
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                it,
                b"salt",
                b"pw",
                &mut out,
            );
            let took = t.elapsed();
            if took >= at_least || n >= 1 << 26 {
                return (it, took);
            }
            n *= 2;
        }
    }

    /// On a runtime with one worker thread, a task that ticks every millisecond keeps
    /// ticking while four slow password checks run: they run elsewhere.
    #[test]
    fn password_checks_leave_the_async_worker_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let (iterations, one_check) = slow_iterations(std::time::Duration::from_millis(150));
        let mut f = UsersFile::load(&path).unwrap();
        f.add("slow", "pw", iterations).unwrap();
        f.save().unwrap();
        let auth = Arc::new(authenticator(path, 1));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let worst = rt.block_on(async move {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ticker = tokio::spawn({
                let stop = stop.clone();
                async move {
                    let mut worst = std::time::Duration::ZERO;
                    let mut last = std::time::Instant::now();
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        worst = worst.max(last.elapsed());
                        last = std::time::Instant::now();
                    }
                    worst
                }
            });
            let checks: Vec<_> = (0..4)
                .map(|_| {
                    let auth = auth.clone();
                    tokio::spawn(async move { auth.authenticate("slow", &creds("pw")).await })
                })
                .collect();
            for c in checks {
                assert!(c.await.unwrap().is_ok());
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            ticker.await.unwrap()
        });
        assert!(
            worst < one_check / 3,
            "the worker stalled for {worst:?} (one check takes {one_check:?})"
        );
    }

    #[test]
    fn generated_passwords_differ() {
        let a = generate_password().unwrap();
        assert_eq!(a.len(), 20);
        assert_ne!(a, generate_password().unwrap());
    }

    // -- the login cache -------------------------------------------------------------------

    /// A users file with `users` (name, password) at 1,000 rounds.
    fn users_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
        let path = dir.join("users.json");
        let mut f = UsersFile::load(&path).unwrap();
        for (name, pw) in users {
            f.add(name, pw, NonZeroU32::new(1000).unwrap()).unwrap();
        }
        f.save().unwrap();
        path
    }

    /// Logs `user` in with each password at once (failures wait 1.5 s each; together, once).
    async fn logins(auth: &Arc<UsersAuthenticator>, user: &str, passwords: &[&str]) -> Vec<bool> {
        let mut set = tokio::task::JoinSet::new();
        for (i, pw) in passwords.iter().enumerate() {
            let (auth, user, pw) = (auth.clone(), user.to_string(), pw.to_string());
            set.spawn(async move { (i, auth.authenticate(&user, &creds(&pw)).await.is_ok()) });
        }
        let mut out = vec![false; passwords.len()];
        while let Some(r) = set.join_next().await {
            let (i, ok) = r.unwrap();
            out[i] = ok;
        }
        out
    }

    /// "Fast" without a clock: a login the cache answers runs no PBKDF2 at all.
    #[tokio::test]
    async fn a_login_after_a_success_is_a_cache_hit_without_pbkdf2() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(users_file(dir.path(), &[("boxa", "pw"), ("boxb", "pw")]), 2);
        assert_eq!(auth.pbkdf2_checks(), 0);
        assert!(auth.authenticate("boxa", &creds("pw")).await.is_ok());
        assert_eq!(auth.pbkdf2_checks(), 1);
        for _ in 0..100 {
            assert!(auth.authenticate("boxa", &creds("pw")).await.is_ok());
        }
        assert_eq!(auth.pbkdf2_checks(), 1, "100 logins answered by the cache");
        // Another user with the same password is another entry.
        assert!(auth.authenticate("boxb", &creds("pw")).await.is_ok());
        assert_eq!(auth.pbkdf2_checks(), 2);
        assert_eq!(auth.cache.len(), 2);
    }

    /// Wrong passwords always run PBKDF2 and fail, before and after a success, and never
    /// add an entry, however many distinct ones come.
    #[tokio::test]
    async fn wrong_passwords_miss_and_are_never_cached() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Arc::new(authenticator(users_file(dir.path(), &[("boxa", "pw")]), 2));
        let wrong: Vec<String> = (0..40).map(|i| format!("wrong-{i}")).collect();
        let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
        assert!(logins(&auth, "boxa", &wrong).await.iter().all(|ok| !ok));
        assert_eq!(auth.pbkdf2_checks(), 40);
        assert_eq!(auth.cache.len(), 0, "a failure is never cached");

        assert_eq!(logins(&auth, "boxa", &["pw"]).await, [true]);
        assert_eq!(auth.pbkdf2_checks(), 41);
        let near = ["pw ", " pw", "p", "PW", "", "pwpw", "wrong-0"];
        let got = logins(&auth, "boxa", &near).await;
        assert!(got.iter().all(|ok| !ok), "{got:?}");
        assert_eq!(
            auth.pbkdf2_checks(),
            41 + near.len() as u64,
            "each wrong one checked"
        );
        assert_eq!(auth.cache.len(), 1);
        // The right password's entry survived the wrong ones.
        assert_eq!(logins(&auth, "boxa", &["pw"]).await, [true]);
        assert_eq!(auth.pbkdf2_checks(), 41 + near.len() as u64);
        // HMAC pads short keys with zeros, so PBKDF2 takes "pw\0" for "pw": the users file
        // accepts it with or without the cache. The cache still answers only the exact bytes
        // it verified: this one is checked with PBKDF2.
        assert_eq!(logins(&auth, "boxa", &["pw\0"]).await, [true]);
        assert_eq!(auth.pbkdf2_checks(), 42 + near.len() as u64);
    }

    #[tokio::test]
    async fn cached_logins_expire() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(users_file(dir.path(), &[("boxa", "pw")]), 1)
            .with_login_cache(100, std::time::Duration::from_millis(50));
        assert!(auth.authenticate("boxa", &creds("pw")).await.is_ok());
        assert!(auth.authenticate("boxa", &creds("pw")).await.is_ok());
        assert_eq!(auth.pbkdf2_checks(), 1);
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
        assert!(auth.authenticate("boxa", &creds("pw")).await.is_ok());
        assert_eq!(auth.pbkdf2_checks(), 2, "expired: checked again");
        // (The lifetime itself is tested with an explicit clock in login_cache.)
    }

    #[tokio::test]
    async fn the_cache_holds_at_most_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..10).map(|i| format!("box{i}")).collect();
        let users: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "pw")).collect();
        let auth = authenticator(users_file(dir.path(), &users), 2)
            .with_login_cache(3, DEFAULT_LOGIN_CACHE_LIFETIME);
        for n in &names {
            assert!(auth.authenticate(n, &creds("pw")).await.is_ok());
            assert!(auth.cache.len() <= 3);
        }
        assert_eq!(auth.pbkdf2_checks(), 10);
        // The last three are held, the first was evicted.
        assert!(auth.authenticate("box9", &creds("pw")).await.is_ok());
        assert_eq!(auth.pbkdf2_checks(), 10);
        assert!(auth.authenticate("box0", &creds("pw")).await.is_ok());
        assert_eq!(auth.pbkdf2_checks(), 11);
        assert_eq!(auth.cache.len(), 3);
    }

    /// `ftpd user del` + `ftpd user add` with a new password: the old password is refused at
    /// the next login, the new one accepted; a removed user is refused at once.
    #[tokio::test]
    async fn a_changed_users_file_empties_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_file(dir.path(), &[("boxa", "old"), ("boxb", "pw")]);
        let auth = Arc::new(authenticator(path.clone(), 2));
        assert_eq!(logins(&auth, "boxa", &["old", "old"]).await, [true, true]);
        assert_eq!(logins(&auth, "boxb", &["pw"]).await, [true]);
        assert_eq!(auth.cache.len(), 2);

        // No pause: the file is replaced (another inode), so even a change within one
        // timestamp tick is seen.
        let mut f = UsersFile::load(&path).unwrap();
        f.remove("boxa").unwrap();
        f.remove("boxb").unwrap();
        f.add("boxa", "new", NonZeroU32::new(1000).unwrap())
            .unwrap();
        f.save().unwrap();
        let before = auth.pbkdf2_checks();
        assert_eq!(logins(&auth, "boxa", &["old"]).await, [false]);
        assert_eq!(logins(&auth, "boxb", &["pw"]).await, [false], "removed");
        assert_eq!(
            auth.pbkdf2_checks(),
            before + 1,
            "old password checked, not cached"
        );
        assert_eq!(logins(&auth, "boxa", &["new", "old"]).await, [true, false]);
        assert_eq!(logins(&auth, "boxa", &["new"]).await, [true]);
        assert_eq!(
            auth.pbkdf2_checks(),
            before + 3,
            "the new password cached after one check"
        );
        assert_eq!(auth.cache.len(), 1);

        // The same password with a new salt (user re-added unchanged): a new record, checked again.
        let mut f = UsersFile::load(&path).unwrap();
        f.remove("boxa").unwrap();
        f.add("boxa", "new", NonZeroU32::new(1000).unwrap())
            .unwrap();
        f.save().unwrap();
        assert_eq!(logins(&auth, "boxa", &["new"]).await, [true]);
        assert_eq!(auth.pbkdf2_checks(), before + 4);
    }

    /// A password check that was running while the file changed does not fill the new cache.
    #[tokio::test]
    async fn a_check_begun_before_a_change_is_not_cached_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_file(dir.path(), &[("boxa", "pw")]);
        let auth = authenticator(path.clone(), 1);
        let old = auth.accounts();
        let hash = old.hashes["boxa"].clone();
        // The file changes (same password, new record) and is reloaded ...
        let mut f = UsersFile::load(&path).unwrap();
        f.remove("boxa").unwrap();
        f.add("boxa", "pw", NonZeroU32::new(1000).unwrap()).unwrap();
        f.save().unwrap();
        assert_ne!(auth.accounts().generation, old.generation);
        // ... before the check on the old accounts ends.
        assert!(auth
            .password_is_right(&old, "boxa", "pw", &hash)
            .await
            .unwrap());
        assert_eq!(auth.cache.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_logins_of_one_user() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Arc::new(authenticator(users_file(dir.path(), &[("boxa", "pw")]), 4));
        // Cold: all succeed; each may run its own check (at most one per login), one entry.
        assert!(logins(&auth, "boxa", &["pw"; 16])
            .await
            .iter()
            .all(|ok| *ok));
        let cold = auth.pbkdf2_checks();
        assert!((1..=16).contains(&cold), "{cold}");
        assert_eq!(auth.cache.len(), 1);
        // Warm, with wrong passwords mixed in: the right ones cost no check, the wrong ones
        // one each and fail.
        let mut mixed = vec!["pw"; 64];
        for i in (0..64).step_by(8) {
            mixed[i] = "pW";
        }
        let got = logins(&auth, "boxa", &mixed).await;
        for (pw, ok) in mixed.iter().zip(&got) {
            assert_eq!(*ok, *pw == "pw", "{pw}");
        }
        assert_eq!(auth.pbkdf2_checks(), cold + 8);
        assert_eq!(auth.cache.len(), 1);
    }

    #[tokio::test]
    async fn a_disabled_cache_checks_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_file(dir.path(), &[("boxa", "pw")]);
        for auth in [
            authenticator(path.clone(), 1).with_login_cache(0, DEFAULT_LOGIN_CACHE_LIFETIME),
            authenticator(path.clone(), 1).with_login_cache(100, std::time::Duration::ZERO),
        ] {
            for _ in 0..3 {
                assert!(auth.authenticate("boxa", &creds("pw")).await.is_ok());
            }
            assert_eq!(auth.pbkdf2_checks(), 3);
            assert_eq!(auth.cache.len(), 0);
        }
    }

    /// A cache hit stands for the PBKDF2 check only: the address ranges still apply.
    #[tokio::test]
    async fn a_cached_password_still_meets_the_rest_of_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_file(dir.path(), &[("boxa", "pw")]);
        let mut entries: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        entries[0]["allowed_ip_ranges"] = serde_json::json!(["10.0.0.0/8"]);
        std::fs::write(&path, serde_json::to_string(&entries).unwrap()).unwrap();
        let auth = authenticator(path, 1);
        let inside = Credentials {
            source_ip: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
            ..creds("pw")
        };
        assert!(auth.authenticate("boxa", &inside).await.is_ok());
        assert!(auth.authenticate("boxa", &inside).await.is_ok());
        let outside = auth.authenticate("boxa", &creds("pw")).await;
        assert!(
            matches!(outside, Err(AuthenticationError::IpDisallowed)),
            "{outside:?}"
        );
        assert_eq!(auth.pbkdf2_checks(), 1);
    }

    #[tokio::test]
    async fn anonymous_logins_do_not_touch_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let auth =
            UsersAuthenticator::new(users_file(dir.path(), &[("boxa", "pw")]), true, 1).unwrap();
        for name in ["anonymous", "ftp"] {
            let p = auth.authenticate(name, &creds("me@example.com")).await;
            assert_eq!(p.unwrap().username, "anonymous");
        }
        assert_eq!((auth.pbkdf2_checks(), auth.cache.len()), (0, 0));
    }
}
