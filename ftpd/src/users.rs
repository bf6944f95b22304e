//! Accounts: the users file (unftp-auth-jsonfile's format, PBKDF2-hashed passwords), the
//! authenticator that reloads it when it changes, and the user type with its home directory.

use async_trait::async_trait;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tokio::sync::Semaphore;
use unftp_auth_jsonfile::JsonFileAuthenticator;
use unftp_core::auth::{
    AuthenticationError, Authenticator, Credentials, Principal, UserDetail, UserDetailError,
    UserDetailProvider,
};

/// PBKDF2-HMAC-SHA256 rounds for new passwords: a login costs a few tens of milliseconds.
pub const DEFAULT_ITERATIONS: u32 = 100_000;

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
}

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accounts")
            .field("hashed", &self.hashes.len())
            .finish_non_exhaustive()
    }
}

impl Accounts {
    fn parse(text: &str) -> Result<Self, String> {
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
        })
    }
}

/// Authenticates against the users file, reloading it when its modification time changes,
/// so `ftpd user add` takes effect without a restart. Password hashes are checked on a
/// [`PasswordPool`], never on the async workers.
#[derive(Debug)]
pub struct UsersAuthenticator {
    path: PathBuf,
    anonymous: bool,
    current: RwLock<(Option<SystemTime>, Arc<Accounts>)>,
    pool: PasswordPool,
}

impl UsersAuthenticator {
    /// Loads the users file now, so a broken file stops start-up. Passwords are checked on
    /// `password_threads` threads at most.
    pub fn new(
        path: PathBuf,
        anonymous: bool,
        password_threads: usize,
    ) -> Result<Self, UsersError> {
        let (mtime, accounts) = Self::load(&path)?;
        Ok(UsersAuthenticator {
            path,
            anonymous,
            current: RwLock::new((mtime, Arc::new(accounts))),
            pool: PasswordPool::new(password_threads),
        })
    }

    fn load(path: &Path) -> Result<(Option<SystemTime>, Accounts), UsersError> {
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
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
        let accounts = Accounts::parse(&text).map_err(|reason| UsersError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok((mtime, accounts))
    }

    fn accounts(&self) -> Arc<Accounts> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if cur.0 == mtime {
                return cur.1.clone();
            }
        }
        match Self::load(&self.path) {
            Ok((m, accounts)) => {
                let accounts = Arc::new(accounts);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (m, accounts.clone());
                tracing::info!(path = %self.path.display(), "users file reloaded");
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
}

#[async_trait]
impl Authenticator for UsersAuthenticator {
    async fn authenticate(
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
        let (password, hash) = (password.clone(), hash.clone());
        let right = self
            .pool
            .run(move || hash.verify(&password))
            .await
            .map_err(|e| AuthenticationError::with_source("password check", e))?;
        let mut creds = creds.clone();
        creds.password = Some(if right {
            accounts.token.clone()
        } else {
            String::new()
        });
        accounts.checked.authenticate(username, &creds).await
    }

    fn name(&self) -> &str {
        "users-file"
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
}
