//! `SITE HASH [-a SHA-256|SHA-1|MD5|CRC32] [--] <path>...`: digests of stored files.
//!
//! Written here rather than taken from the unftp-site-hash crate, which is built against
//! libunftp 0.23 and so pulled a second libunftp (and its rustls with aws-lc) into the build.
//! The replies are that crate's, word for word: one line `<ALG> <hex digest> <path>` per path
//! (a failed path gets `<path>: <reason>` instead), `213` when every path was hashed, `550` when
//! any failed, `501` with the usage text for bad arguments, at most [`MAX_PATHS`] paths.
//!
//! Paths go to the storage back-end's `get` as the client wrote them, as the crate did:
//! `KeyStorage` takes a relative one from the session's working directory, and unftp-sbe-fs
//! keeps every path inside the user's root.

use async_trait::async_trait;
use libunftp::options::{Reply, ReplyCode, SiteCommandContext, SiteCommandHandler};
use md5::Digest as _;
use std::fmt::Write as _;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};
use unftp_core::auth::UserDetail;
use unftp_core::storage::{Metadata, StorageBackend};

/// Paths one command may name, so that one line cannot queue unbounded work.
pub const MAX_PATHS: usize = 100;
/// Sent after every argument error.
const USAGE: &str = "Usage: SITE HASH [-a SHA-256|SHA-1|MD5|CRC32] [--] <path>...";
/// Bytes read per step: one bounded buffer per command, large enough that a big file is not
/// thousands of blocking-pool round trips, small enough that hashing one chunk between two
/// awaits stays well under a millisecond of a runtime worker.
const CHUNK: usize = 64 * 1024;

/// The digests `SITE HASH` offers; SHA-256 when the client names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    #[default]
    Sha256,
    Sha1,
    Md5,
    Crc32,
}

impl Algorithm {
    /// The name in replies, as the FTP HASH draft spells it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha1 => "SHA-1",
            Algorithm::Md5 => "MD5",
            Algorithm::Crc32 => "CRC32",
        }
    }

    /// Reads a client's name, ignoring case, `-` and `_` (`sha-256`, `SHA256`, `Sha_1`...).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().replace(['-', '_'], "").as_str() {
            "SHA256" => Some(Algorithm::Sha256),
            "SHA1" => Some(Algorithm::Sha1),
            "MD5" => Some(Algorithm::Md5),
            "CRC32" => Some(Algorithm::Crc32),
            _ => None,
        }
    }
}

/// One running digest; ring for the SHAs, RustCrypto for MD5 (ring has none), crc-tools for
/// the CRC so that it is the very value KEY INFO reports.
enum Hasher {
    Ring(ring::digest::Context),
    Md5(md5::Md5),
    Crc32(crc_tools::Crc32),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Ring(ring::digest::Context::new(&ring::digest::SHA256)),
            Algorithm::Sha1 => Hasher::Ring(ring::digest::Context::new(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            )),
            Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Crc32 => Hasher::Crc32(crc_tools::Crc32::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Ring(c) => c.update(bytes),
            Hasher::Md5(m) => m.update(bytes),
            Hasher::Crc32(c) => c.update(bytes),
        }
    }

    /// Lowercase hex; the CRC as exactly eight digits.
    fn finish(self) -> String {
        match self {
            Hasher::Ring(c) => hex(c.finish().as_ref()),
            Hasher::Md5(m) => hex(&m.finalize()),
            Hasher::Crc32(c) => format!("{:08x}", c.value()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Hashes everything `reader` yields, `buffer.len()` bytes at a time. The reads are the
/// back-end's async ones (tokio::fs, on the blocking pool), so a slow disk never holds a
/// runtime worker; only one chunk's hashing runs between two awaits.
async fn hash_reader<R: AsyncRead + Unpin>(
    algorithm: Algorithm,
    mut reader: R,
    buffer: &mut [u8],
) -> io::Result<String> {
    let mut hasher = Hasher::new(algorithm);
    loop {
        match reader.read(buffer).await? {
            0 => return Ok(hasher.finish()),
            n => hasher.update(&buffer[..n]),
        }
    }
}

/// What the client asked for.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    algorithm: Algorithm,
    paths: Vec<String>,
}

/// Splits the arguments as a POSIX shell would (quotes keep names with spaces whole), takes
/// `-a NAME` (the last one wins) and everything else, or everything after `--`, as paths.
fn parse_arguments(arguments: &str, default: Algorithm) -> Result<Request, String> {
    let words =
        shell_words::split(arguments).map_err(|e| format!("Could not parse arguments: {e}"))?;
    let mut words = words.into_iter();
    let mut algorithm = default;
    let mut paths = Vec::new();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--" => {
                paths.extend(words.by_ref());
                break;
            }
            "-a" => {
                let name = words.next().ok_or("-a needs an algorithm name")?;
                algorithm = Algorithm::parse(&name).ok_or(format!("Unknown algorithm {name}"))?;
            }
            option if option.starts_with('-') => return Err(format!("Unknown option {option}")),
            _ => paths.push(word),
        }
    }
    if paths.is_empty() {
        return Err("No paths given".to_string());
    }
    if paths.len() > MAX_PATHS {
        return Err(format!("At most {MAX_PATHS} paths may be given"));
    }
    Ok(Request { algorithm, paths })
}

/// One line per path, in the order given; any failure makes the whole reply a 550.
fn reply(lines: Vec<Result<String, String>>) -> Reply {
    let code = if lines.iter().all(Result::is_ok) {
        ReplyCode::FileStatus
    } else {
        ReplyCode::FileError
    };
    Reply::new_multiline(code, lines.into_iter().map(|l| l.unwrap_or_else(|e| e)))
}

/// The `SITE HASH` handler. Generic over the back-end because it needs only `get`: ftpd
/// registers it for `KeyStorage`, and the tests run it on plain unftp-sbe-fs.
#[derive(Debug, Default)]
pub struct SiteHash {
    /// Used when the client names no algorithm (`-a`); SHA-256 by default.
    default_algorithm: Algorithm,
}

impl SiteHash {
    /// A handler that uses `default_algorithm` when the client names none.
    pub fn new(default_algorithm: Algorithm) -> Self {
        SiteHash { default_algorithm }
    }
}

#[async_trait]
impl<S, U> SiteCommandHandler<S, U> for SiteHash
where
    S: StorageBackend<U> + 'static,
    S::Metadata: Metadata,
    U: UserDetail + 'static,
{
    async fn handle(&self, ctx: &SiteCommandContext<S, U>) -> Reply {
        let request = match parse_arguments(&ctx.arguments, self.default_algorithm) {
            Ok(r) => r,
            Err(problem) => {
                return Reply::new_with_string(
                    ReplyCode::ParameterSyntaxError,
                    format!("{problem}. {USAGE}"),
                )
            }
        };
        let Some(user) = ctx.user.as_ref().as_ref() else {
            return Reply::new(
                ReplyCode::NotLoggedIn,
                "Please open a new connection to re-authenticate",
            );
        };
        let mut buffer = vec![0u8; CHUNK];
        let mut lines = Vec::with_capacity(request.paths.len());
        for path in &request.paths {
            let line = match ctx.storage.get(user, path.as_str(), 0).await {
                Err(e) => Err(format!("{path}: {e}")),
                Ok(reader) => match hash_reader(request.algorithm, reader, &mut buffer).await {
                    Ok(digest) => Ok(format!("{} {digest} {path}", request.algorithm.name())),
                    Err(e) => Err(format!("{path}: Failed to read: {e}")),
                },
            };
            lines.push(line);
        }
        reply(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use unftp_core::auth::DefaultUser;
    use unftp_sbe_fs::Filesystem;

    fn parse(arguments: &str) -> Result<Request, String> {
        parse_arguments(arguments, Algorithm::default())
    }

    fn request(algorithm: Algorithm, paths: &[&str]) -> Result<Request, String> {
        let paths = paths.iter().map(|p| p.to_string()).collect();
        Ok(Request { algorithm, paths })
    }

    #[test]
    fn default_algorithm_is_sha256() {
        assert_eq!(
            parse("/foo/bar.txt"),
            request(Algorithm::Sha256, &["/foo/bar.txt"])
        );
    }

    #[test]
    fn configured_default_applies_without_a() {
        assert_eq!(
            parse_arguments("/f", Algorithm::Crc32),
            request(Algorithm::Crc32, &["/f"])
        );
        assert_eq!(
            parse_arguments("-a md5 /f", Algorithm::Crc32),
            request(Algorithm::Md5, &["/f"])
        );
    }

    #[test]
    fn algorithm_names_ignore_case_and_separators() {
        assert_eq!(parse("-a SHA-1 /foo"), request(Algorithm::Sha1, &["/foo"]));
        assert_eq!(parse("-a md5 /foo"), request(Algorithm::Md5, &["/foo"]));
        assert_eq!(
            parse("-a sha_256 /foo"),
            request(Algorithm::Sha256, &["/foo"])
        );
        assert_eq!(
            parse("-a Crc-32 /foo"),
            request(Algorithm::Crc32, &["/foo"])
        );
        assert_eq!(
            parse("-a md5 -a sha1 /f"),
            request(Algorithm::Sha1, &["/f"])
        );
    }

    #[test]
    fn quotes_keep_names_whole() {
        assert_eq!(
            parse(r#"-a crc32 a.txt "b c.txt" 'd e.txt'"#),
            request(Algorithm::Crc32, &["a.txt", "b c.txt", "d e.txt"])
        );
    }

    #[test]
    fn everything_after_double_dash_is_a_path() {
        assert_eq!(parse("-- -a"), request(Algorithm::Sha256, &["-a"]));
        assert_eq!(
            parse("-a md5 -- MD5 --"),
            request(Algorithm::Md5, &["MD5", "--"])
        );
    }

    #[test]
    fn bad_arguments_say_why() {
        let err = |a: &str| parse(a).err().unwrap_or_default();
        assert_eq!(err(""), "No paths given");
        assert_eq!(err("-a md5"), "No paths given");
        assert_eq!(err("-a"), "-a needs an algorithm name");
        assert_eq!(err("-a sha999 /foo"), "Unknown algorithm sha999");
        assert_eq!(err("-x /foo"), "Unknown option -x");
        assert_eq!(
            err("\"open"),
            "Could not parse arguments: missing closing quote"
        );
    }

    #[test]
    fn at_most_max_paths() {
        assert!(parse(&vec!["/f"; MAX_PATHS].join(" ")).is_ok());
        assert_eq!(
            parse(&vec!["/f"; MAX_PATHS + 1].join(" ")),
            Err("At most 100 paths may be given".to_string())
        );
    }

    #[test]
    fn reply_is_213_only_when_every_path_hashed() {
        let ok = Ok("CRC32 352441c2 /a".to_string());
        assert_eq!(
            reply(vec![ok.clone()]),
            Reply::new_multiline(ReplyCode::FileStatus, ["CRC32 352441c2 /a"])
        );
        assert_eq!(
            reply(vec![ok, Err("/b: no".to_string())]),
            Reply::new_multiline(ReplyCode::FileError, ["CRC32 352441c2 /a", "/b: no"])
        );
    }

    async fn digest(algorithm: Algorithm, data: &[u8], chunk: usize) -> String {
        let mut buffer = vec![0u8; chunk];
        hash_reader(algorithm, data, &mut buffer)
            .await
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn known_vectors_in_any_chunking() {
        let cases = [
            (
                Algorithm::Sha256,
                "",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                Algorithm::Sha256,
                "abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                Algorithm::Sha1,
                "",
                "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            ),
            (
                Algorithm::Sha1,
                "abc",
                "a9993e364706816aba3e25717850c26c9cd0d89d",
            ),
            (Algorithm::Md5, "", "d41d8cd98f00b204e9800998ecf8427e"),
            (Algorithm::Md5, "abc", "900150983cd24fb0d6963f7d28e17f72"),
            (Algorithm::Crc32, "", "00000000"),
            (Algorithm::Crc32, "abc", "352441c2"),
            (Algorithm::Crc32, "123456789", "cbf43926"),
            (Algorithm::Crc32, "62", "0012d20a"), // leading zeros kept
        ];
        for (algorithm, data, expected) in cases {
            for chunk in [1, 2, CHUNK] {
                let got = digest(algorithm, data.as_bytes(), chunk).await;
                assert_eq!(got, expected, "{algorithm:?} of {data:?}, chunk {chunk}");
            }
        }
    }

    async fn run(root: &std::path::Path, arguments: &str, user: Option<DefaultUser>) -> Reply {
        let Ok(storage) = Filesystem::new(root) else {
            panic!("no storage at {root:?}");
        };
        let ctx = SiteCommandContext {
            command: "HASH".to_string(),
            arguments: arguments.to_string(),
            username: user.as_ref().map(|_| "u".to_string()),
            storage: Arc::new(storage),
            user: Arc::new(user),
            logger: slog::Logger::root(slog::Discard, slog::o!()),
        };
        SiteHash::default().handle(&ctx).await
    }

    #[tokio::test]
    async fn handler_replies_like_unftp_site_hash() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("abc.txt"), b"abc")?;
        std::fs::write(dir.path().join("with space.txt"), b"abc")?;
        let root = dir.path();
        let md5 = "900150983cd24fb0d6963f7d28e17f72";

        let r = run(
            root,
            r#"-a md5 /abc.txt "/with space.txt""#,
            Some(DefaultUser),
        )
        .await;
        let want = [
            format!("MD5 {md5} /abc.txt"),
            format!("MD5 {md5} /with space.txt"),
        ];
        assert_eq!(r, Reply::new_multiline(ReplyCode::FileStatus, want));

        let Reply::MultiLine { code, lines } = run(root, "/abc.txt /nope", Some(DefaultUser)).await
        else {
            panic!("not a multi-line reply");
        };
        assert_eq!(code, ReplyCode::FileError);
        assert!(lines[0].starts_with("SHA-256 ba7816bf"), "{lines:?}");
        assert!(lines[1].starts_with("/nope: "), "{lines:?}");

        let r = run(root, "-a", Some(DefaultUser)).await;
        let want = format!("-a needs an algorithm name. {USAGE}");
        assert_eq!(
            r,
            Reply::new_with_string(ReplyCode::ParameterSyntaxError, want)
        );

        let r = run(root, "/abc.txt", None).await;
        assert!(matches!(
            r,
            Reply::CodeAndMsg {
                code: ReplyCode::NotLoggedIn,
                ..
            }
        ));
        Ok(())
    }
}
