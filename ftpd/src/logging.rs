//! Logs through `tracing`, as text or JSON on standard error. libunftp logs through `slog`;
//! its records are bridged via `slog-stdlog` and tracing's `log` compatibility.

use crate::config::LogFormat;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    // libunftp instruments its handlers with spans whose fields dump whole sessions; log
    // events only.
    let events_only = filter_fn(|meta| meta.is_event());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let layer = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let result = tracing_subscriber::registry()
        .with(layer.with_filter(events_only).with_filter(filter))
        .try_init();
    if let Err(e) = result {
        eprintln!("ftpd: logging already initialised: {e}");
    }
}

/// The slog logger handed to libunftp.
pub fn slog_logger() -> slog::Logger {
    use slog::Drain;
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}
