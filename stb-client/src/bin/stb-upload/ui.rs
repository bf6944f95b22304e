//! What the user sees on standard error: a progress bar on a terminal, notes about retries,
//! and with `--verbose` the FTP dialogue.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stb_client::driver::Observer;
use stb_client::session::Command;
use stb_client::{Decision, LocalFile};
use std::fmt;

/// Progress and notes for one run.
pub struct Ui {
    bar: Option<ProgressBar>,
    verbose: bool,
}

impl Ui {
    /// A bar only when stderr is a terminal; `len` is the file's size before it is digested.
    pub fn new(tty: bool, verbose: bool, len: u64) -> Self {
        let bar = tty.then(|| {
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg:>14} [{bar:32}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {eta:>4}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message("checksum");
            bar
        });
        Ui { bar, verbose }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn note(&self, message: fmt::Arguments<'_>) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{message}")),
            None => eprintln!("{message}"),
        }
    }
}

impl Observer for Ui {
    fn command(&mut self, line: &[u8], command: Command) {
        if self.verbose {
            if command == Command::Pass {
                self.note(format_args!("> PASS ****"));
            } else {
                let text = String::from_utf8_lossy(line);
                self.note(format_args!("> {}", text.trim_end()));
            }
        }
    }

    fn reply_line(&mut self, line: &[u8]) {
        if self.verbose {
            self.note(format_args!("< {}", String::from_utf8_lossy(line)));
        }
    }

    fn attempt_started(&mut self, attempt: u32) {
        if let Some(bar) = &self.bar {
            if attempt > 1 {
                bar.set_message(format!("attempt {attempt}"));
            }
        }
    }

    fn hashing(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn decided(&mut self, decision: Decision, local: &LocalFile) {
        if self.verbose {
            self.note(format_args!(
                "decision: {decision} (local size {}, CRC {})",
                local.len,
                crc_tools::KeyValue(local.crc)
            ));
        }
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(local.len);
            bar.set_position(decision.start(local.len));
            bar.set_message(decision.as_str());
        }
    }

    fn progress(&mut self, offset: u64, _len: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(offset);
        }
    }

    fn attempt_failed(&mut self, attempt: u32, error: &dyn fmt::Display, retry_in_ms: Option<u32>) {
        if let Some(ms) = retry_in_ms {
            let wait = if ms < 1000 {
                format!("{ms} ms")
            } else {
                format!("{:.1} s", f64::from(ms) / 1000.0)
            };
            self.note(format_args!(
                "stb-upload: attempt {attempt} failed: {error}; retrying in {wait}"
            ));
        }
    }
}
