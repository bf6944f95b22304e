//! `stb-upload`: upload one file over FTP, resuming a partial upload only when the server's
//! KEY (CRC-32) proves it is the beginning of the same file.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod ui;
mod url;

use clap::error::ErrorKind as ClapErrorKind;
use clap::Parser;
use stb_client::driver::{upload, FailureKind, Report, RetryPolicy, UploadError};
use stb_client::session::{Config, ConfigError, KeyForm};
use stb_client::transport::{PasvTarget, StdFile, TcpNetwork, ThreadSleep};
use stb_client::{Buffers, Decision, LocalFile};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use url::{FtpUrl, UrlError};

const EXIT_CODES: &str = "\
Exit codes:
  0  uploaded (or the server already held the complete file)
  1  failed in a way retrying cannot fix (local file unreadable or changed while
     uploading, a path the server calls malformed)
  2  bad usage (arguments, URL, no password, local file missing)
  3  login refused
  4  retries exhausted (the network or the server failed on every attempt)
  5  verification failed (the server's CRC of the stored file differs from the
     declared one, e.g. because the local file changed during the upload)

The password comes from --password-stdin or the STB_PASSWORD environment variable.";

/// Upload a file over FTP; resume a broken upload only when the server's KEY (CRC-32)
/// proves that its partial file is this file's beginning, else upload it again.
#[derive(Debug, Parser)]
#[command(name = "stb-upload", version, after_help = EXIT_CODES)]
struct Cli {
    #[arg(help = "Where to upload: ftp://USER@HOST[:PORT]/REMOTE/PATH \
                  (a path ending in / takes the local file's name)")]
    url: String,

    /// The file to upload
    local_file: PathBuf,

    /// Read the password from the first line of standard input instead of STB_PASSWORD
    #[arg(long)]
    password_stdin: bool,

    /// Attempts after the first failed one, waiting 1x, 2x, 4x... --retry-delay-ms between
    #[arg(long, value_name = "N", default_value_t = 3)]
    retries: u32,

    /// Wait before the first retry, in milliseconds (doubled each time, at most 60 s)
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    retry_delay_ms: u32,

    /// Send bare `KEY ...` commands instead of `SITE KEY ...`
    #[arg(long)]
    bare_key: bool,

    /// On a server without KEY, resume a partial file by its size alone instead of
    /// uploading from zero (unsafe: the partial may belong to another file)
    #[arg(long)]
    trust_rest: bool,

    /// Print one JSON line with the result on standard output
    #[arg(long)]
    json: bool,

    /// Seconds a connect, read or write may stall before the attempt fails (0: no limit)
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,

    /// Open data connections to the address in the 227 reply, not to the server's address
    #[arg(long)]
    pasv_address: bool,

    /// Size of the data buffer in KiB
    #[arg(long, value_name = "KIB", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    buffer_kib: u32,

    /// Threads that read the local file for its CRC before the upload (default: the number of
    /// CPUs, at most 4; 1 reads it in one pass)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    hash_threads: Option<u32>,

    /// Print the FTP dialogue on standard error (the password masked)
    #[arg(short, long)]
    verbose: bool,
}

/// Process exit codes, as listed in `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Success = 0,
    Failure = 1,
    Usage = 2,
    LoginRefused = 3,
    RetriesExhausted = 4,
    VerificationFailed = 5,
}

/// Everything that can stop the program.
#[derive(Debug)]
enum CliError {
    Url { url: String, error: UrlError },
    NoPassword,
    PasswordStdin(io::Error),
    LocalFile { path: PathBuf, error: io::Error },
    NotAFile(PathBuf),
    Config(ConfigError),
    Upload(UploadError<io::Error, io::Error>),
}

impl CliError {
    fn exit(&self) -> Exit {
        match self {
            CliError::Upload(e) => match e.kind() {
                FailureKind::LoginRefused => Exit::LoginRefused,
                FailureKind::VerificationFailed => Exit::VerificationFailed,
                FailureKind::RetriesExhausted => Exit::RetriesExhausted,
                FailureKind::Permanent => Exit::Failure,
            },
            _ => Exit::Usage,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Url { url, error } => write!(f, "invalid URL {url:?}: {error}"),
            CliError::NoPassword => {
                f.write_str("no password: set STB_PASSWORD or use --password-stdin")
            }
            CliError::PasswordStdin(e) => write!(f, "cannot read the password from stdin: {e}"),
            CliError::LocalFile { path, error } => {
                write!(f, "cannot open {}: {error}", path.display())
            }
            CliError::NotAFile(path) => write!(f, "{} is not a regular file", path.display()),
            CliError::Config(e) => e.fmt(f),
            CliError::Upload(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CliError {}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let tty = io::stderr().is_terminal();
    match run(&cli, tty) {
        Ok((report, remote)) => {
            if cli.json {
                println!("{}", success_json(&report, &remote));
            } else if tty {
                eprintln!("{}", summary(&report, &remote));
            }
            ExitCode::from(Exit::Success as u8)
        }
        Err(e) => {
            eprintln!("stb-upload: {e}");
            let exit = e.exit();
            if cli.json {
                let remote = FtpUrl::parse(&cli.url)
                    .ok()
                    .map(|u| u.remote_path(&local_name(&cli)));
                println!("{}", failure_json(&e, exit, remote.as_deref()));
            }
            ExitCode::from(exit as u8)
        }
    }
}

/// Prints help and version as clap does; any other argument error as one line.
fn usage_error(e: &clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ClapErrorKind::DisplayHelp | ClapErrorKind::DisplayVersion
    ) {
        // Nothing sensible to do if stdout is gone.
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("stb-upload: {message} (see --help)");
    ExitCode::from(Exit::Usage as u8)
}

fn password(cli: &Cli) -> Result<String, CliError> {
    if cli.password_stdin {
        let mut line = String::new();
        let n = io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(CliError::PasswordStdin)?;
        if n == 0 {
            return Err(CliError::NoPassword);
        }
        let trimmed = line.trim_end_matches(['\r', '\n']).len();
        line.truncate(trimmed);
        Ok(line)
    } else {
        std::env::var("STB_PASSWORD").map_err(|_| CliError::NoPassword)
    }
}

/// The local file's name, for URLs that name a directory.
fn local_name(cli: &Cli) -> String {
    cli.local_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The digest-ahead thread's buffer, at most: its reads are split among the digest threads.
const AHEAD_BUFFER: usize = 128 << 10;

fn run(cli: &Cli, tty: bool) -> Result<(Report, String), CliError> {
    let url = FtpUrl::parse(&cli.url).map_err(|error| CliError::Url {
        url: cli.url.clone(),
        error,
    })?;
    let local_error = |error| CliError::LocalFile {
        path: cli.local_file.clone(),
        error,
    };
    let file = File::open(&cli.local_file).map_err(local_error)?;
    let meta = file.metadata().map_err(local_error)?;
    if !meta.is_file() {
        return Err(CliError::NotAFile(cli.local_file.clone()));
    }
    let remote = url.remote_path(&local_name(cli));
    let password = password(cli)?;
    let cfg = Config {
        key_form: if cli.bare_key {
            KeyForm::Bare
        } else {
            KeyForm::Site
        },
        trust_rest: cli.trust_rest,
        ..Config::new(&url.user, &password, &remote)
    };
    cfg.validate().map_err(CliError::Config)?;

    let timeout = (cli.timeout > 0).then(|| Duration::from_secs(cli.timeout));
    let mut net = TcpNetwork::new(url.host.clone(), url.port, timeout).with_pasv_target(
        if cli.pasv_address {
            PasvTarget::Announced
        } else {
            PasvTarget::ControlPeer
        },
    );
    let policy = RetryPolicy {
        retries: cli.retries,
        initial_delay_ms: cli.retry_delay_ms,
        ..RetryPolicy::default()
    };
    // The sizeable allocations, the data buffer and the digest's: memory use does not grow
    // with the file.
    let data_len = cli.buffer_kib as usize * 1024;
    let mut control = vec![0u8; 2048];
    let mut command = vec![0u8; remote.len() + password.len() + url.user.len() + 64];
    let mut data = vec![0u8; data_len];
    let bufs = Buffers {
        control: &mut control,
        command: &mut command,
        data: &mut data,
    };
    let mut ui = ui::Ui::new(tty, cli.verbose, meta.len());
    // The digest runs while the dialogue connects and logs in.
    let mut file = StdFile::new(file)
        .with_digest_threads(hash_threads(cli))
        .digest_ahead(data_len.min(AHEAD_BUFFER))
        .map_err(local_error)?;
    let result = upload(
        &mut net,
        &mut file,
        cfg,
        policy,
        bufs,
        &mut ThreadSleep,
        &mut ui,
    );
    ui.finish();
    let report = result.map_err(CliError::Upload)?;
    Ok((report, remote))
}

/// The digest threads: as asked, else one per CPU up to 4 (more rarely helps: memory
/// bandwidth, not CPU, bounds reading a file out of the page cache).
fn hash_threads(cli: &Cli) -> usize {
    match cli.hash_threads {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
    }
}

fn summary(report: &Report, remote: &str) -> String {
    let o = &report.outcome;
    let verified = if o.verified {
        "verified by the server"
    } else {
        "not verified (server without KEY)"
    };
    format!(
        "{remote}: {}, {} bytes sent, {verified}, {} attempt{}",
        o.decision,
        o.bytes_sent,
        report.attempts,
        if report.attempts == 1 { "" } else { "s" }
    )
}

fn reason(decision: Option<Decision>) -> serde_json::Value {
    match decision {
        Some(Decision::Reupload(r)) => r.as_str().into(),
        _ => serde_json::Value::Null,
    }
}

fn crc_text(local: Option<&LocalFile>) -> serde_json::Value {
    local.map_or(serde_json::Value::Null, |l| {
        crc_tools::KeyValue(l.crc).to_string().into()
    })
}

fn success_json(report: &Report, remote: &str) -> serde_json::Value {
    let o = &report.outcome;
    serde_json::json!({
        "ok": true,
        "exit_code": Exit::Success as u8,
        "decision": o.decision.as_str(),
        "reason": reason(Some(o.decision)),
        "resumed_from": o.resumed_from,
        "bytes_sent": o.bytes_sent,
        "bytes_sent_total": report.bytes_sent_total,
        "attempts": report.attempts,
        "verified": o.verified,
        "size": o.local.len,
        "crc": crc_text(Some(&o.local)),
        "remote_path": remote,
        "error": null,
    })
}

fn failure_json(e: &CliError, exit: Exit, remote: Option<&str>) -> serde_json::Value {
    let upload = match e {
        CliError::Upload(u) => Some(u),
        _ => None,
    };
    let decision = upload.and_then(|u| u.decision);
    let local = upload.and_then(|u| u.local);
    serde_json::json!({
        "ok": false,
        "exit_code": exit as u8,
        "decision": decision.map(|d| d.as_str()),
        "reason": reason(decision),
        "resumed_from": decision.zip(local).map(|(d, l)| d.start(l.len)),
        "bytes_sent": upload.map(|u| u.bytes_sent_last),
        "bytes_sent_total": upload.map(|u| u.bytes_sent_total),
        "attempts": upload.map_or(0, |u| u.attempts),
        "verified": false,
        "size": local.map(|l| l.len),
        "crc": crc_text(local.as_ref()),
        "remote_path": remote,
        "error": e.to_string(),
    })
}
