//! What the host reports about itself: `GET /_turserver/status`.

use crate::store::{redact_url, Mode, Store, SyncSnapshot};
use crate::wasm::Workers;
use serde::Serialize;

#[derive(Serialize)]
struct Status {
    mode: &'static str,
    primary: Option<String>,
    worker: WorkerStatus,
    sync: Option<SyncSnapshot>,
    /// With `--write-queue`: the writes waiting for the primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    write_queue: Option<QueueStatus>,
}

#[derive(Serialize)]
struct QueueStatus {
    depth: usize,
    /// How long the oldest waiting write has waited, in seconds.
    oldest_age_secs: Option<i64>,
}

#[derive(Serialize)]
struct WorkerStatus {
    version: String,
    origin: &'static str,
    active_since: String,
    last_error: Option<String>,
}

/// The status document (JSON): mode, primary without credentials, the
/// active worker, and for a replica its syncs.
pub fn render(store: &Store, workers: &Workers) -> Vec<u8> {
    let active = workers.active();
    let (mode, primary) = match store.mode() {
        Mode::Local => ("local", None),
        Mode::Replica { url } => ("replica", Some(redact_url(url))),
    };
    let status = Status {
        mode,
        primary,
        worker: WorkerStatus {
            version: active.worker.hash.clone(),
            origin: active.origin.name(),
            active_since: humantime::format_rfc3339_millis(active.since).to_string(),
            last_error: workers.last_error(),
        },
        sync: matches!(store.mode(), Mode::Replica { .. }).then(|| store.sync_stats().snapshot()),
        write_queue: store.write_queue().map(|q| QueueStatus { depth: q.depth(), oldest_age_secs: q.oldest_age() }),
    };
    serde_json::to_vec_pretty(&status).unwrap_or_default()
}
