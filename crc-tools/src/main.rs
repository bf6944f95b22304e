//! `crc-tools`: CRC-32 of files as the KEY protocol writes it.

use clap::{Parser, Subcommand};
use crc_tools::range::crc_of_reader;
use crc_tools::{KeyValue, Span};
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

/// Bytes per read: large reads keep a big file's sum bound by the disk, not by system calls.
const BUF_LEN: usize = 1 << 20;

/// The first `max` bytes of `reader` (all of it for `None`), through the library's one loop.
fn crc_of(reader: impl Read, max: Option<u64>) -> io::Result<Span> {
    crc_of_reader(reader, max, &mut vec![0u8; BUF_LEN])
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
    crc_of(reader, None)
        .map(|s| s.crc)
        .map_err(|e| CliError::Read(path.clone(), e))
}

fn prefix(path: &PathBuf, n: u64) -> Result<u32, CliError> {
    let reader = open(path)?;
    let span = crc_of(reader, Some(n)).map_err(|e| CliError::Read(path.clone(), e))?;
    if span.len < n {
        return Err(CliError::ShortFile {
            file: path.clone(),
            wanted: n,
            has: span.len,
        });
    }
    Ok(span.crc)
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
