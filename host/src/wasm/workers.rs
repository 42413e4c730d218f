//! Which worker is active, and how it changes while the host keeps running.
//!
//! A request takes the active worker when it starts and keeps it to the
//! end, so a swap never disturbs requests in flight. New workers come from
//! the `--worker` file (watched) or, without `--worker`, from the replicated
//! database (`PUT /_turserver/worker` on any edge stores the component; every
//! edge loads it after its next sync). A worker that fails to compile or
//! link is refused and the active one keeps serving.

use super::bindings::files::Error;
use super::files::FilesCtx;
use super::instance::Invoked;
use crate::http::WriteAccess;
use http_body_util::BodyExt;
use super::engine::{component_hash, Runtime, DEFAULT_WORKER};
use super::files::to_wit;
use super::instance::Worker;
use crate::store::{Reader, Store};
use crate::task::AbortOnDrop;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

/// Where a deployed worker is stored in the database (a reserved path
/// workers themselves cannot write).
pub const DEPLOY_PATH: &str = "_turserver/worker.wasm";
/// Media type of a stored worker; not compressible, so stored as is.
const DEPLOY_CONTENT_TYPE: &str = "application/vnd.turserver.worker+wasm";
/// Largest worker component accepted.
pub const MAX_WORKER_SIZE: u64 = 64 << 20;
/// How often the `--worker` file is looked at.
const FILE_POLL: Duration = Duration::from_millis(200);
/// How long an idle instance of a stateless worker waits for its next
/// request before it is dropped.
const IDLE_INSTANCE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new worker has to answer its test request.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The path of that request: a reserved one, never a file.
const SMOKE_PATH: &str = "/_turserver/probe";

/// Where the active worker came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    BuiltIn,
    /// The `--worker` file.
    File,
    /// Deployed through the database.
    Database,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::BuiltIn => "built-in",
            Origin::File => "file",
            Origin::Database => "database",
        }
    }
}

/// The active worker and when it became active.
pub struct Active {
    pub worker: Arc<Worker>,
    pub since: SystemTime,
    pub origin: Origin,
}

/// Why a deployment was refused.
pub enum DeployError {
    /// The component does not compile or link.
    Unusable(String),
    /// Storing it failed (the cause is logged).
    Store(Error),
}

/// The active worker, the runtime that runs it, and its swaps.
pub struct Workers {
    runtime: Arc<Runtime>,
    store: Arc<Store>,
    /// `--worker` was given: the file decides the worker, not the database.
    pinned: bool,
    active: ArcSwap<Active>,
    /// Why the last candidate was refused, until a swap succeeds.
    last_error: Mutex<Option<String>>,
    /// Hash of the last refused candidate, so it is not retried every poll.
    refused: Mutex<Option<String>>,
}

impl Workers {
    /// Loads the first worker: the `file`, else the one deployed in the
    /// database, else the built-in one. A deployed worker that no longer
    /// loads falls back to the built-in one, so a broken deployment never
    /// keeps the edge down.
    pub async fn start(runtime: Arc<Runtime>, store: Arc<Store>, file: Option<&PathBuf>) -> anyhow::Result<Workers> {
        let started = Instant::now();
        let (bytes, origin) = match file {
            Some(path) => {
                (std::fs::read(path).with_context(|| format!("reading the worker {}", path.display()))?, Origin::File)
            }
            None => match deployed(&store).await.context("reading the deployed worker")? {
                Some(bytes) => (bytes, Origin::Database),
                None => (DEFAULT_WORKER.to_vec(), Origin::BuiltIn),
            },
        };
        let loaded = match compile(runtime.clone(), bytes).await {
            Ok((w, _)) if origin == Origin::BuiltIn => Ok(Arc::new(w)),
            Ok((w, _)) => smoke_test(&runtime, &store, w).await,
            Err(e) => Err(e),
        };
        let worker = match loaded {
            Ok(w) => w,
            Err(e) if origin == Origin::Database => {
                tracing::error!(cause = %format!("{e:#}"), "the deployed worker is unusable; starting with the built-in one");
                Arc::new(compile(runtime.clone(), DEFAULT_WORKER.to_vec()).await?.0)
            }
            Err(e) => return Err(e.context(format!("loading the {} worker", origin.name()))),
        };
        tracing::info!(
            version = %worker.hash,
            origin = origin.name(),
            from_cache = worker.from_cache,
            ms = started.elapsed().as_millis() as u64,
            "worker ready"
        );
        Ok(Workers {
            runtime,
            store,
            pinned: file.is_some(),
            active: ArcSwap::from_pointee(Active { worker, since: SystemTime::now(), origin }),
            last_error: Mutex::new(None),
            refused: Mutex::new(None),
        })
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
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

    fn swap(&self, worker: Arc<Worker>, origin: Origin, took: Duration) {
        let hash = worker.hash.clone();
        let cached = worker.from_cache;
        let old = self.active.swap(Arc::new(Active { worker, since: SystemTime::now(), origin }));
        *self.last_error.lock().expect("poisoned") = None;
        *self.refused.lock().expect("poisoned") = None;
        tracing::info!(
            from = %&old.worker.hash[..12],
            to = %&hash[..12],
            origin = origin.name(),
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

    /// Compiles and tests `bytes`; the worker, or why it is refused.
    async fn candidate(&self, bytes: Vec<u8>) -> anyhow::Result<(Arc<Worker>, Duration)> {
        let started = Instant::now();
        let (worker, _) = compile(self.runtime.clone(), bytes).await?;
        let worker = smoke_test(&self.runtime, &self.store, worker).await?;
        Ok((worker, started.elapsed()))
    }

    /// Compiles `bytes` and makes it the active worker, or records why not.
    async fn try_swap(&self, bytes: Vec<u8>, origin: Origin) {
        let hash = component_hash(&bytes);
        match self.candidate(bytes).await {
            Ok((worker, took)) => self.swap(worker, origin, took),
            Err(e) => self.refuse(&hash, format!("{e:#}")),
        }
    }

    /// Drops the active worker's instances that have gone unused for
    /// [`IDLE_INSTANCE_TIMEOUT`], every so often, and hands the memory they
    /// held back to the system: a burst's instances do not stay forever.
    pub fn sweep_idle(self: &Arc<Self>) -> AbortOnDrop {
        let workers = self.clone();
        AbortOnDrop::spawn(async move {
            loop {
                tokio::time::sleep(IDLE_INSTANCE_TIMEOUT / 2).await;
                if workers.current().trim_idle(IDLE_INSTANCE_TIMEOUT) > 0 {
                    release_free_memory();
                }
            }
        })
    }

    /// Watches where new workers come from: the `--worker` file when there
    /// is one, else the database every `interval`.
    pub fn watch(self: &Arc<Self>, file: Option<PathBuf>, interval: Duration) -> AbortOnDrop {
        match file {
            Some(path) => self.clone().watch_file(path),
            None => self.clone().watch_database(interval),
        }
    }

    /// Swaps when the file's content changes. A change is taken once the
    /// file's size and mtime hold still for one poll, so a file being
    /// written is not read half-way.
    fn watch_file(self: Arc<Self>, path: PathBuf) -> AbortOnDrop {
        let span = tracing::info_span!("worker_watch", path = %path.display());
        AbortOnDrop::spawn(
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
                    if !self.is_current_or_refused(&component_hash(&bytes)) {
                        self.try_swap(bytes, Origin::File).await;
                    }
                }
            }
            .instrument(span),
        )
    }

    /// Swaps to a worker deployed in the database (written on any edge and
    /// replicated here).
    fn watch_database(self: Arc<Self>, interval: Duration) -> AbortOnDrop {
        AbortOnDrop::spawn(
            async move {
                loop {
                    tokio::time::sleep(interval).await;
                    let meta = match self.store.stat(DEPLOY_PATH).await {
                        Ok(Some(m)) => m,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::debug!(cause = %e, "cannot look for a deployed worker");
                            continue;
                        }
                    };
                    if self.is_current_or_refused(&meta.hash) {
                        continue;
                    }
                    match self.store.read_whole(Reader::Host, meta.version, meta.size).await {
                        Ok(bytes) => self.try_swap(bytes, Origin::Database).await,
                        Err(e) => tracing::warn!(cause = %e, "cannot read the deployed worker"),
                    }
                }
            }
            .instrument(tracing::info_span!("worker_deploy_watch")),
        )
    }

    /// `PUT /_turserver/worker`: checks the component compiles and links,
    /// stores it on the primary for every edge, and swaps to it here. The
    /// new worker's version on success.
    pub async fn deploy(&self, bytes: Vec<u8>) -> Result<String, DeployError> {
        let hash = component_hash(&bytes);
        let (worker, took) =
            self.candidate(bytes.clone()).await.map_err(|e| DeployError::Unusable(format!("not a usable worker: {e:#}")))?;
        let stored = async {
            let size = Some(bytes.len() as u64);
            let mut upload = self.store.begin_upload(DEPLOY_PATH, DEPLOY_CONTENT_TYPE, MAX_WORKER_SIZE, size, None).await?;
            upload.write(&bytes).await?;
            upload.finish().await
        };
        stored.await.map_err(|e| DeployError::Store(to_wit("storing a deployed worker", e)))?;
        if self.pinned {
            tracing::info!(version = %&hash[..12], "worker stored for other edges; this edge keeps its --worker file");
        } else {
            self.swap(worker, Origin::Database, took);
        }
        Ok(hash)
    }
}

/// Hands memory freed after a burst back to the system, rather than keep
/// it: the allocator keeps freed memory up to its trim threshold, set high
/// for the serving path (see `main.rs`).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Compiles a candidate off the async threads.
async fn compile(runtime: Arc<Runtime>, bytes: Vec<u8>) -> anyhow::Result<(Worker, Duration)> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let loaded = runtime.load(&bytes).map(|w| (w, started.elapsed()));
        drop(bytes);
        // Compiling takes tens of MiB that are free again now.
        release_free_memory();
        loaded
    })
    .await?
}

/// One request through a worker before it serves: a component that links
/// but cannot serve (one built to reach its store over HTTP, as the composed
/// Spin build does, or one that traps) is refused while the active worker
/// keeps serving. The request reads nothing a client could not.
async fn smoke_test(runtime: &Runtime, store: &Arc<Store>, worker: Worker) -> anyhow::Result<Arc<Worker>> {
    let worker = Arc::new(worker);
    let req = hyper::Request::get(SMOKE_PATH)
        .header(hyper::header::HOST, "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .context("building the test request")?;
    let files = FilesCtx { store: store.clone(), site: Default::default(), access: WriteAccess::Missing, max_upload: 0, progress: None, reads: None, limit_refused: None, queued: None };
    let invoked = tokio::time::timeout(SMOKE_TIMEOUT, runtime.invoke(worker.clone(), req, files)).await;
    let failure = match invoked {
        Err(_) => Some(format!("it did not answer a test request within {SMOKE_TIMEOUT:?}")),
        Ok(Invoked { result: Err(e), request_id }) => Some(format!("it failed a test request ({e:?}, request {request_id})")),
        Ok(Invoked { result: Ok(resp), .. }) if resp.status().is_server_error() => {
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), 1024).collect().await;
            let body = body.map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string()).unwrap_or_default();
            Some(format!("it answered a test request with {status}: {body}"))
        }
        Ok(_) => None,
    };
    if let Some(why) = failure {
        anyhow::bail!("{why}");
    }
    Ok(worker)
}

/// The deployed worker at startup, if there is one.
async fn deployed(store: &Store) -> anyhow::Result<Option<Vec<u8>>> {
    match store.stat(DEPLOY_PATH).await? {
        Some(meta) => Ok(Some(store.read_whole(Reader::Host, meta.version, meta.size).await?)),
        None => Ok(None),
    }
}
