//! Which worker is active, and how it changes while the host keeps running.
//!
//! A request takes the active worker when it starts and keeps it to the
//! end, so a swap never disturbs requests in flight. New workers come from
//! the `--worker` file (watched) or, without `--worker`, from the replicated
//! database (`PUT /_turserver/worker` on any edge stores the component; every
//! edge loads it after its next sync). A worker that fails to compile or
//! link is refused and the active one keeps serving.

use crate::runtime::{Runtime, Worker};
use crate::server::AppState;
use crate::store::Store;
use crate::sync::AbortOnDrop;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

/// Where a deployed worker is stored in the database (a reserved path
/// workers themselves cannot write).
pub const DEPLOY_PATH: &str = "_turserver/worker.wasm";
/// Media type of a stored worker; not compressible, so stored as is.
pub const DEPLOY_CONTENT_TYPE: &str = "application/vnd.turserver.worker+wasm";
/// Largest worker component accepted.
pub const MAX_WORKER_SIZE: u64 = 64 << 20;
/// How often the `--worker` file is looked at.
const FILE_POLL: Duration = Duration::from_millis(200);

/// The active worker and when it became active.
pub struct Active {
    pub worker: Arc<Worker>,
    pub since: SystemTime,
    /// `built-in`, `file` or `database`.
    pub origin: &'static str,
}

pub struct WorkerSlot {
    active: ArcSwap<Active>,
    /// Why the last candidate was refused, until a swap succeeds.
    last_error: Mutex<Option<String>>,
    /// Hash of the last refused candidate, so it is not retried every poll.
    refused: Mutex<Option<String>>,
}

impl WorkerSlot {
    pub fn new(worker: Worker, origin: &'static str) -> WorkerSlot {
        WorkerSlot {
            active: ArcSwap::from_pointee(Active { worker: Arc::new(worker), since: SystemTime::now(), origin }),
            last_error: Mutex::new(None),
            refused: Mutex::new(None),
        }
    }

    pub fn current(&self) -> Arc<Worker> {
        self.active.load().worker.clone()
    }

    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("poisoned").clone()
    }

    fn swap(&self, worker: Worker, origin: &'static str, took: Duration) {
        let hash = worker.hash.clone();
        let cached = worker.from_cache;
        let old = self.active.swap(Arc::new(Active { worker: Arc::new(worker), since: SystemTime::now(), origin }));
        *self.last_error.lock().expect("poisoned") = None;
        *self.refused.lock().expect("poisoned") = None;
        tracing::info!(
            from = %&old.worker.hash[..12],
            to = %&hash[..12],
            origin,
            from_cache = cached,
            ms = took.as_millis() as u64,
            "worker swapped"
        );
    }

    fn refuse(&self, hash: &str, why: String) {
        tracing::error!(candidate = %&hash[..12.min(hash.len())], cause = %why, "worker refused; the active worker keeps serving");
        *self.last_error.lock().expect("poisoned") = Some(why);
        *self.refused.lock().expect("poisoned") = Some(hash.to_string());
    }

    fn is_current_or_refused(&self, hash: &str) -> bool {
        self.active.load().worker.hash == hash || self.refused.lock().expect("poisoned").as_deref() == Some(hash)
    }
}

/// Compiles a candidate off the async threads.
pub async fn compile(runtime: Arc<Runtime>, bytes: Vec<u8>) -> anyhow::Result<(Worker, Duration)> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        runtime.load(&bytes).map(|w| (w, started.elapsed()))
    })
    .await?
}

fn component_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Compiles `bytes` and makes it the active worker, or records why not.
async fn try_swap(state: &AppState, bytes: Vec<u8>, origin: &'static str) -> Result<String, String> {
    let hash = component_hash(&bytes);
    match compile(state.runtime.clone(), bytes).await {
        Ok((worker, took)) => {
            state.workers.swap(worker, origin, took);
            Ok(hash)
        }
        Err(e) => {
            let why = format!("{e:#}");
            state.workers.refuse(&hash, why.clone());
            Err(why)
        }
    }
}

/// Watches the `--worker` file and swaps when its content changes. A change
/// is taken once the file's size and mtime hold still for one poll, so a
/// file being written is not read half-way.
pub fn spawn_file_watch(state: Arc<AppState>, path: PathBuf) -> AbortOnDrop {
    let span = tracing::info_span!("worker_watch", path = %path.display());
    AbortOnDrop::new(tokio::spawn(
        async move {
            let stamp = |p: &PathBuf| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
            let mut seen = stamp(&path);
            let mut settled = seen;
            loop {
                tokio::time::sleep(FILE_POLL).await;
                let now = stamp(&path);
                if now != seen {
                    seen = now;
                    continue;
                }
                if now == settled || now.is_none() {
                    continue;
                }
                settled = now;
                let bytes = match tokio::fs::read(&path).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(cause = %e, "cannot read the worker file");
                        continue;
                    }
                };
                if state.workers.is_current_or_refused(&component_hash(&bytes)) {
                    continue;
                }
                let _ = try_swap(&state, bytes, "file").await;
            }
        }
        .instrument(span),
    ))
}

/// Watches the database for a deployed worker (written on any edge and
/// replicated here) and swaps to it.
pub fn spawn_database_watch(state: Arc<AppState>, interval: Duration) -> AbortOnDrop {
    AbortOnDrop::new(tokio::spawn(
        async move {
            loop {
                tokio::time::sleep(interval).await;
                let meta = match state.store.stat(DEPLOY_PATH).await {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(cause = %e, "cannot look for a deployed worker");
                        continue;
                    }
                };
                if state.workers.is_current_or_refused(&meta.hash) {
                    continue;
                }
                match state.store.read_whole(meta.version, meta.size).await {
                    Ok(bytes) => {
                        let _ = try_swap(&state, bytes, "database").await;
                    }
                    Err(e) => tracing::warn!(cause = %e, "cannot read the deployed worker"),
                }
            }
        }
        .instrument(tracing::info_span!("worker_deploy_watch")),
    ))
}

/// The deployed worker at startup, if there is one.
pub async fn deployed(store: &Store) -> anyhow::Result<Option<Vec<u8>>> {
    match store.stat(DEPLOY_PATH).await? {
        Some(meta) => Ok(Some(store.read_whole(meta.version, meta.size).await?)),
        None => Ok(None),
    }
}

/// `PUT /_turserver/worker`: checks the component compiles and links, stores
/// it on the primary for every edge, and swaps to it here.
pub async fn deploy(state: &AppState, bytes: Vec<u8>) -> Result<String, (u16, String)> {
    let hash = component_hash(&bytes);
    let (worker, took) = compile(state.runtime.clone(), bytes.clone())
        .await
        .map_err(|e| (400, format!("not a usable worker: {e:#}")))?;
    let mut upload = state
        .store
        .begin_upload(DEPLOY_PATH, DEPLOY_CONTENT_TYPE, MAX_WORKER_SIZE, Some(bytes.len() as u64), None)
        .await
        .map_err(store_failure)?;
    upload.write(&bytes).await.map_err(store_failure)?;
    upload.finish().await.map_err(store_failure)?;
    if state.pinned_worker {
        tracing::info!(version = %&hash[..12], "worker stored for other edges; this edge keeps its --worker file");
    } else {
        state.workers.swap(worker, "database", took);
    }
    Ok(hash)
}

fn store_failure(e: crate::error::StoreError) -> (u16, String) {
    let status = match e {
        crate::error::StoreError::Unavailable { .. } => 503,
        crate::error::StoreError::TooLarge(_) => 413,
        _ => 500,
    };
    tracing::error!(cause = %format!("{:#}", anyhow::Error::new(e)), "storing a deployed worker failed");
    (status, "storing the worker failed; the host log has the cause".into())
}
