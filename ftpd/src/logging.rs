//! Logs through `tracing`, as text or JSON on standard error. libunftp logs through `slog`;
//! its records are bridged via `slog-stdlog` and tracing's `log` compatibility.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = result {
        eprintln!("ftpd: logging already initialised: {e}");
    }
}

/// The slog logger handed to libunftp.
pub fn slog_logger() -> slog::Logger {
    use slog::Drain;
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}
