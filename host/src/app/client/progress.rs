//! Progress of long client work: an `indicatif` bar when stderr is a
//! terminal; otherwise a plain line at the start, at each quarter and at the
//! end, with no control characters.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What is counted.
#[derive(Clone, Copy)]
pub enum Unit {
    Files,
    Bytes,
}

pub struct Progress {
    label: &'static str,
    unit: Unit,
    total: u64,
    done: AtomicU64,
    started: Instant,
    bar: Option<ProgressBar>,
    /// Quarters already reported in plain mode.
    quarters: Mutex<u64>,
}

impl Progress {
    /// Starts reporting `label` (e.g. "hashing") of `total` units.
    pub fn start(label: &'static str, unit: Unit, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let template = match unit {
                Unit::Files => "{prefix:>9} [{bar:30}] {pos}/{len} files {per_sec} ETA {eta}",
                Unit::Bytes => "{prefix:>9} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            };
            let bar = ProgressBar::new(total);
            bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
            bar.set_prefix(label);
            bar
        });
        let p = Progress { label, unit, total, done: AtomicU64::new(0), started: Instant::now(), bar, quarters: Mutex::new(0) };
        if p.bar.is_none() {
            eprintln!("{label}: {}", p.amount(total));
        }
        p
    }

    fn amount(&self, n: u64) -> String {
        match self.unit {
            Unit::Files => format!("{n} file{}", if n == 1 { "" } else { "s" }),
            Unit::Bytes => super::human_bytes(n),
        }
    }

    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        if self.total == 0 {
            return;
        }
        // Short work gets its first and last line only.
        if self.started.elapsed() < std::time::Duration::from_secs(2) {
            return;
        }
        let quarter = (done.min(self.total) * 4 / self.total).min(3);
        let mut reported = self.quarters.lock().expect("poisoned");
        if quarter > *reported {
            *reported = quarter;
            eprintln!("{}: {}% ({} of {})", self.label, quarter * 25, self.amount(done), self.amount(self.total));
        }
    }

    /// Starts over (a retried upload sends everything again).
    pub fn reset(&self) {
        self.done.store(0, Ordering::Relaxed);
        *self.quarters.lock().expect("poisoned") = 0;
        if let Some(bar) = &self.bar {
            bar.set_position(0);
        }
    }

    /// Prints a message without breaking the bar.
    pub fn say(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    pub fn finish(&self) {
        let secs = self.started.elapsed().as_secs_f64();
        let done = self.done.load(Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("{}: done, {} in {secs:.2}s", self.label, self.amount(done)),
        }
    }
}
