//! Accounts: the users file (unftp-auth-jsonfile's format, PBKDF2-hashed passwords), the
//! authenticator that reloads it when it changes, and the user type with its home directory.

use async_trait::async_trait;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
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

/// Authenticates against the users file, reloading it when its modification time changes,
/// so `ftpd user add` takes effect without a restart.
#[derive(Debug)]
pub struct UsersAuthenticator {
    path: PathBuf,
    anonymous: bool,
    current: RwLock<(Option<SystemTime>, Arc<JsonFileAuthenticator>)>,
}

impl UsersAuthenticator {
    /// Loads the users file now, so a broken file stops start-up.
    pub fn new(path: PathBuf, anonymous: bool) -> Result<Self, UsersError> {
        let (mtime, auth) = Self::load(&path)?;
        Ok(UsersAuthenticator {
            path,
            anonymous,
            current: RwLock::new((mtime, Arc::new(auth))),
        })
    }

    fn load(path: &Path) -> Result<(Option<SystemTime>, JsonFileAuthenticator), UsersError> {
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
        let auth = JsonFileAuthenticator::from_json(text).map_err(|e| UsersError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok((mtime, auth))
    }

    fn authenticator(&self) -> Arc<JsonFileAuthenticator> {
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
            Ok((m, auth)) => {
                let auth = Arc::new(auth);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (m, auth.clone());
                tracing::info!(path = %self.path.display(), "users file reloaded");
                auth
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
        self.authenticator().authenticate(username, creds).await
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

        let auth = UsersAuthenticator::new(path.clone(), false).unwrap();
        let creds = |p: &str| Credentials {
            password: Some(p.into()),
            certificate_chain: None,
            source_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            command_channel_security: unftp_core::auth::ChannelEncryptionState::Plaintext,
        };
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

    #[test]
    fn generated_passwords_differ() {
        let a = generate_password().unwrap();
        assert_eq!(a.len(), 20);
        assert_ne!(a, generate_password().unwrap());
    }
}
