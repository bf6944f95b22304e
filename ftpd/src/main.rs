//! The `ftpd` command: run the server, manage accounts.

use clap::{Parser, Subcommand};
use ftpd::config::Settings;
use ftpd::users::{self, UsersFile};
use std::io::BufRead;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "FTP upload server with KEY (CRC-32) resumable uploads"
)]
struct Cli {
    /// Configuration file (TOML) overriding the embedded defaults.
    #[arg(long, global = true, env = "FTPD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM or Ctrl-C.
    Serve,
    /// Manage accounts in the configured users file.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Print the embedded default configuration.
    Defaults,
    /// Check the settings (file and environment, as `serve` reads them) and load the FTPS
    /// certificate and key; starts nothing and touches no data. Exit 0 when `serve` would
    /// accept them, 2 with its error otherwise.
    CheckConfig,
    /// Print the upload journal's events after a seq, read from the running server through
    /// `http_listen` (with `http_token`). Exit 2 when the server cannot be reached, 3 when the
    /// events after SEQ are no longer kept (resync).
    Events {
        /// Print the events after this seq (0: all that are kept).
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        since: u64,
        /// Keep waiting for new events and print each as it comes (until interrupted).
        #[arg(long)]
        follow: bool,
        /// Print each event as the server's JSON line instead of a readable line.
        #[arg(long)]
        json: bool,
    },
    /// The checksum records (uploaded files) as an operator sees them.
    Uploads {
        #[command(subcommand)]
        action: UploadsAction,
    },
}

#[derive(Subcommand)]
enum UploadsAction {
    /// One line per recorded file: user, path, state, size, declared, crc, updated. Reads
    /// through the running server's `http_listen` (with `http_token`); when no listener
    /// answers, from the store in `state_dir` (refused while another process holds it).
    /// Exit 2 with one line on standard error when neither works.
    List {
        /// Only files in this state.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ftpd::records::uploads::STATES))]
        state: Option<String>,
        /// Only this user's files.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// One JSON object per line instead of a readable line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add an account; the password is read from the first line of standard input.
    Add {
        name: String,
        /// Read the password from standard input (required: passwords never go on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// PBKDF2 rounds.
        #[arg(long, default_value_t = users::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
    /// List account names.
    List,
    /// Remove an account (its files stay on disk).
    Del { name: String },
}

fn user_command(settings: &Settings, action: UserAction) -> Result<(), String> {
    let mut file = UsersFile::load(&settings.users_file).map_err(|e| e.to_string())?;
    match action {
        UserAction::List => {
            for n in file.names() {
                println!("{n}");
            }
            Ok(())
        }
        UserAction::Add {
            name, iterations, ..
        } => {
            let iterations =
                NonZeroU32::new(iterations).ok_or("--iterations must be at least 1")?;
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
            let password = line.trim_end_matches(['\r', '\n']);
            file.add(&name, password, iterations)
                .map_err(|e| e.to_string())?;
            file.save().map_err(|e| e.to_string())?;
            println!("added user '{name}'");
            Ok(())
        }
        UserAction::Del { name } => {
            file.remove(&name).map_err(|e| e.to_string())?;
            file.save().map_err(|e| e.to_string())?;
            println!("removed user '{name}' (files under its home directory are kept)");
            Ok(())
        }
    }
}

/// What `check-config` reports about settings that passed.
fn summary(s: &Settings) -> String {
    let ftps = match (&s.ftps, s.ftps_required) {
        (None, _) => "off",
        (Some(_), false) => "optional",
        (Some(_), true) => "required",
    };
    format!(
        "listen {}, passive ports {}-{}, front {}, FTPS {ftps}, root {}, state {}",
        s.listen,
        s.passive_ports.start(),
        s.passive_ports.end(),
        if s.front { "on" } else { "off" },
        s.root.display(),
        s.state_dir.display(),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Defaults = cli.command {
        print!("{}", ftpd::config::DEFAULTS);
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ftpd: {e}");
            return ExitCode::from(2);
        }
    };
    // A certificate or key that cannot be loaded is a bad setting, found before anything starts.
    if matches!(cli.command, Command::Serve | Command::CheckConfig) {
        if let Err(e) = settings.ftps_config() {
            eprintln!("ftpd: {e}");
            return ExitCode::from(2);
        }
    }
    if let Command::Events {
        since,
        follow,
        json,
    } = cli.command
    {
        let opts = ftpd::records::journal::client::Options {
            http_listen: settings.http_listen,
            token: settings.http_token.as_ref().map(|t| t.0.clone()),
            since,
            follow,
            json,
        };
        return match ftpd::records::journal::client::run(&opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ftpd events: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    if let Command::Uploads {
        action: UploadsAction::List { state, user, json },
    } = &cli.command
    {
        let filter = match ftpd::records::uploads::Filter::new(state.as_deref(), user.as_deref()) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("ftpd uploads list: {e}");
                return ExitCode::from(2);
            }
        };
        let opts = ftpd::records::uploads::Options {
            http_listen: settings.http_listen,
            token: settings.http_token.as_ref().map(|t| t.0.clone()),
            state_dir: settings.state_dir.clone(),
            store: settings.store.clone(),
            filter,
            json: *json,
        };
        return match ftpd::records::uploads::run(&opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ftpd uploads list: {e}");
                ExitCode::from(2)
            }
        };
    }
    let result = match cli.command {
        Command::Events { .. } | Command::Uploads { .. } => Ok(()),
        Command::CheckConfig => {
            println!("ftpd: configuration OK ({})", summary(&settings));
            Ok(())
        }
        Command::Serve => {
            ftpd::logging::init(&settings.log_level, settings.log_format);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ftpd: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = rt.block_on(ftpd::server::serve(settings)) {
                eprintln!("ftpd: {e}");
                return ExitCode::from(e.exit_code());
            }
            Ok(())
        }
        Command::User { action } => user_command(&settings, action),
        Command::Defaults => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpd: {e}");
            ExitCode::FAILURE
        }
    }
}
