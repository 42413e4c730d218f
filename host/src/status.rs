//! What the host reports about itself: `GET /_turserver/status`.

use crate::server::AppState;
use crate::store::Mode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What every sync with the primary records (the periodic loop, the sync
/// after a write, and on-demand syncs for read-your-writes).
pub struct SyncStats {
    pub ok: AtomicU64,
    /// Unix milliseconds of the last successful sync (0: never).
    pub last_success_ms: AtomicU64,
    pub last_duration_us: AtomicU64,
    /// The replica's replication index (frame number) after the last sync.
    pub replication_index: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub duration: Histogram,
    pub failures: Counter,
    pub index_gauge: Gauge,
}

impl Default for SyncStats {
    fn default() -> Self {
        SyncStats {
            ok: AtomicU64::new(0),
            last_success_ms: AtomicU64::new(0),
            last_duration_us: AtomicU64::new(0),
            replication_index: AtomicU64::new(0),
            last_error: Mutex::new(None),
            // 1 ms to ~16 s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            failures: Counter::default(),
            index_gauge: Gauge::default(),
        }
    }
}

impl SyncStats {
    pub fn succeeded(&self, took: Duration, frame: Option<u64>) {
        self.duration.observe(took.as_secs_f64());
        if let Some(f) = frame {
            self.index_gauge.set(f as i64);
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.last_success_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        self.last_duration_us.store(took.as_micros() as u64, Ordering::Relaxed);
        if let Some(f) = frame {
            self.replication_index.store(f, Ordering::Relaxed);
        }
        *self.last_error.lock().expect("poisoned") = None;
    }

    pub fn failed(&self, why: String) {
        self.failures.inc();
        *self.last_error.lock().expect("poisoned") = Some(why);
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn rfc3339_ms(ms: u64) -> Option<String> {
    (ms > 0).then(|| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
}

/// A URL without user info, query or fragment: tokens never leak.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = match rest.split_once('@') {
        Some((_, host)) => host,
        None => rest,
    };
    if scheme.is_empty() {
        rest.to_string()
    } else {
        format!("{scheme}://{rest}")
    }
}

#[derive(Serialize)]
struct Status {
    mode: &'static str,
    primary: Option<String>,
    worker: WorkerStatus,
    sync: Option<SyncStatus>,
}

#[derive(Serialize)]
struct WorkerStatus {
    version: String,
    origin: &'static str,
    active_since: Option<String>,
    last_error: Option<String>,
}

#[derive(Serialize)]
struct SyncStatus {
    replication_index: u64,
    last_success: Option<String>,
    last_duration_ms: f64,
    last_error: Option<String>,
    syncs_ok: u64,
    syncs_failed: u64,
}

pub fn render(state: &AppState) -> Vec<u8> {
    let active = state.workers.active();
    let (mode, primary) = match state.store.mode() {
        Mode::Local => ("local", None),
        Mode::Replica { url } => ("replica", Some(redact_url(url))),
    };
    let s = &state.sync_stats;
    let status = Status {
        mode,
        primary,
        worker: WorkerStatus {
            version: active.worker.hash.clone(),
            origin: active.origin,
            active_since: rfc3339_ms(unix_ms(active.since)),
            last_error: state.workers.last_error(),
        },
        sync: (mode == "replica").then(|| SyncStatus {
            replication_index: s.replication_index.load(Ordering::Relaxed),
            last_success: rfc3339_ms(s.last_success_ms.load(Ordering::Relaxed)),
            last_duration_ms: s.last_duration_us.load(Ordering::Relaxed) as f64 / 1000.0,
            last_error: s.last_error.lock().expect("poisoned").clone(),
            syncs_ok: s.ok.load(Ordering::Relaxed),
            syncs_failed: s.failures.get(),
        }),
    };
    serde_json::to_vec_pretty(&status).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("https://user:secret@db.example.com/x?authToken=abc"), "https://db.example.com/x");
        assert_eq!(redact_url("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(redact_url("libsql://db.turso.io#frag"), "libsql://db.turso.io");
    }
}
