//! `crc-tools`: CRC-32 of files as the KEY protocol writes it.

use clap::{Parser, Subcommand};
use crc_tools::{Crc32, KeyValue};
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "CRC-32/ISO-HDLC of files, written as KEY values (0xHHHHHHHH)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print `0xHHHHHHHH  NAME` for each file (`-` reads standard input).
    Sum {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the CRC of the first N bytes of FILE (what a client checks before resuming).
    Prefix { file: PathBuf, n: u64 },
}

/// Why a file could not be summed.
#[derive(Debug)]
enum CliError {
    Open(PathBuf, io::Error),
    Read(PathBuf, io::Error),
    ShortFile {
        file: PathBuf,
        wanted: u64,
        has: u64,
    },
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Open(p, e) => write!(f, "cannot open {}: {e}", p.display()),
            CliError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            CliError::ShortFile { file, wanted, has } => write!(
                f,
                "{} has {has} bytes, fewer than the {wanted} asked for",
                file.display()
            ),
        }
    }
}

/// Feeds at most `limit` bytes of `reader` into a CRC, 1 MiB at a time.
fn crc_of(mut reader: impl Read, limit: u64) -> io::Result<Crc32> {
    let mut crc = Crc32::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = limit;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        crc.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(crc)
}

fn open(path: &PathBuf) -> Result<Box<dyn Read>, CliError> {
    if path.as_os_str() == "-" {
        Ok(Box::new(io::stdin().lock()))
    } else {
        File::open(path)
            .map(|f| Box::new(f) as Box<dyn Read>)
            .map_err(|e| CliError::Open(path.clone(), e))
    }
}

fn sum(path: &PathBuf) -> Result<u32, CliError> {
    let reader = open(path)?;
    crc_of(reader, u64::MAX)
        .map(|c| c.value())
        .map_err(|e| CliError::Read(path.clone(), e))
}

fn prefix(path: &PathBuf, n: u64) -> Result<u32, CliError> {
    let reader = open(path)?;
    let crc = crc_of(reader, n).map_err(|e| CliError::Read(path.clone(), e))?;
    if crc.len() < n {
        return Err(CliError::ShortFile {
            file: path.clone(),
            wanted: n,
            has: crc.len(),
        });
    }
    Ok(crc.value())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut failed = false;
    match cli.command {
        Command::Sum { files } => {
            for f in &files {
                match sum(f) {
                    Ok(v) => println!("{}  {}", KeyValue(v), f.display()),
                    Err(e) => {
                        eprintln!("crc-tools: {e}");
                        failed = true;
                    }
                }
            }
        }
        Command::Prefix { file, n } => match prefix(&file, n) {
            Ok(v) => println!("{}", KeyValue(v)),
            Err(e) => {
                eprintln!("crc-tools: {e}");
                failed = true;
            }
        },
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
