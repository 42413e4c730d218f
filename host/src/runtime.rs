//! The wasm runtime: one Engine and Linker, workers compiled and
//! pre-instantiated once, and a fresh Store and instance per request, or,
//! for a worker that declares itself stateless (a `turserver:stateless`
//! custom section), an instance reused for up to [`MAX_REUSE`] requests in
//! turn. Between requests a reused instance gets fresh request state (its
//! write access, its store calls' progress); one that trapped or was
//! interrupted is never reused.
//!
//! Isolation: each instance lives in a pooled slot with a memory limit, and
//! runs under a no-progress deadline. An epoch ticks every [`TICK`]; at each
//! tick a running instance yields to the scheduler (so a spinning worker
//! never starves other requests) and is interrupted once it has gone
//! `deadline` without progress (request or response body bytes moving, or a
//! store call). A long download that keeps moving is never cut off.

use crate::bindings::files;
use crate::cache::ArtifactCache;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use crate::files::{FilesCtx, FilesView};
use crate::linger::RequestBody;
use std::future::Future;
use wasmtime::error::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasData, Linker, ResourceTable};
use wasmtime::{Config, Engine, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use http_body_util::BodyExt;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// The worker built into the binary (see `host/build.rs`).
pub const DEFAULT_WORKER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/worker.wasm"));

/// Instances that may exist at once: the number of requests the worker can
/// serve concurrently. Past it a request gets 503.
const MAX_INSTANCES: u32 = 1000;
/// Requests one instance of a stateless worker serves before it is retired.
pub const MAX_REUSE: u32 = 1000;
/// Idle instances kept per worker for reuse.
const MAX_IDLE: usize = 64;
/// Name of the custom section by which a worker declares itself stateless.
pub const STATELESS_SECTION: &str = "turserver:stateless";
/// Epoch period: how often a running instance yields and checks its deadline.
pub const TICK: Duration = Duration::from_millis(10);

/// When an instance last made progress; shared with the bodies and the
/// store calls that count as progress.
pub struct Progress {
    base: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Arc<Progress> {
        Arc::new(Progress { base: Instant::now(), last_ms: AtomicU64::new(0) })
    }

    pub fn touch(&self) {
        self.last_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A body that records progress whenever a frame passes through it.
pub struct ProgressBody<B> {
    inner: B,
    progress: Arc<Progress>,
}

impl<B: Body + Unpin> Body for ProgressBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.progress.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The message of the error an instance is interrupted with.
const DEADLINE_MESSAGE: &str = "worker made no progress within its deadline";

/// State held in the Store; `files` and `progress` are the current
/// request's.
pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    files: FilesCtx,
    hooks: DenyOutbound,
    progress: Arc<Progress>,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Workers reach data only through the host's `files` interface: outbound
/// HTTP is refused.
struct DenyOutbound;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }

    /// One chunk waits while hyper sends another. A stored body reaches the
    /// stream through `files.send`, which reads the next chunk as soon as
    /// this slot frees, so reading and sending still overlap; a second slot
    /// gained no speed and cost 1 MiB more per download in flight.
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }
}

struct FilesData;

impl HasData for FilesData {
    type Data<'a> = FilesView<'a>;
}

/// A compiled, linked worker ready to instantiate.
pub struct Worker {
    pre: ProxyPre<RequestState>,
    /// Hex SHA-256 of the component bytes: the worker's version.
    pub hash: String,
    /// The `x-turserver-worker` response header: the hash's first 16 digits.
    pub version_header: http::HeaderValue,
    /// Whether it came from the compiled-artifact cache.
    pub from_cache: bool,
    /// Declared stateless: instances may serve several requests.
    pub stateless: bool,
    /// Instances waiting for their next request (stateless workers only).
    idle: std::sync::Mutex<Vec<Warm>>,
}

/// An instance between two requests, with the Store it lives in.
struct Warm {
    store: Store<RequestState>,
    proxy: Proxy,
    served: u32,
}

impl Worker {
    fn take_idle(&self) -> Option<Warm> {
        if !self.stateless {
            return None;
        }
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put_idle(&self, warm: Warm) {
        if warm.served >= MAX_REUSE {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(warm);
        }
    }
}

/// Whether `bytes` (a component) carries the [`STATELESS_SECTION`], in
/// itself or in a module it embeds.
pub fn declares_stateless(bytes: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(bytes).any(|payload| {
        matches!(payload, Ok(wasmparser::Payload::CustomSection(c)) if c.name() == STATELESS_SECTION)
    })
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<RequestState>,
    cache: Option<ArtifactCache>,
    deadline: Duration,
    next_request_id: AtomicU64,
    instantiations: prometheus_client::metrics::counter::Counter,
}

impl Runtime {
    /// `cache_dir`: where compiled workers are kept (None: no cache).
    /// `deadline`: how long an instance may run without progress.
    /// `instantiations`: counts the instances created.
    pub fn new(
        worker_memory_bytes: u64,
        deadline: Duration,
        cache_dir: Option<std::path::PathBuf>,
        instantiations: prometheus_client::metrics::counter::Counter,
    ) -> anyhow::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_INSTANCES)
            .total_core_instances(MAX_INSTANCES * 4)
            .total_memories(MAX_INSTANCES * 2)
            .total_tables(MAX_INSTANCES * 4)
            .total_stacks(MAX_INSTANCES)
            .max_memory_size(worker_memory_bytes as usize)
            // Keep a reused slot's low pages resident and reset them in
            // place; PAGEMAP_SCAN (Linux 6.7+) finds the dirty ones. `Auto`
            // falls back to plain resets on older kernels.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Slots are sized to the memory limit rather than the default 4 GiB
            // reservation, so a thousand of them fit comfortably.
            .memory_reservation(worker_memory_bytes)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            .epoch_interruption(true);
        if std::env::var_os("TURSERVER_PERF_MAP").is_some() {
            // Names the compiled worker's functions for `perf` (/tmp/perf-PID.map).
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).context("creating the wasm engine")?;
        // The epoch clock. It lives as long as the process, like the engine.
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .context("starting the epoch ticker")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).context("linking WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).context("linking wasi:http")?;
        files::add_to_linker::<_, FilesData>(&mut linker, |s: &mut RequestState| FilesView {
            ctx: &mut s.files,
            table: &mut s.table,
        })
        .context("linking turserver:store/files")?;
        let cache = cache_dir.map(|dir| ArtifactCache::new(dir, &engine));
        Ok(Runtime {
            engine,
            linker,
            cache,
            deadline,
            next_request_id: AtomicU64::new(1),
            instantiations,
        })
    }

    /// Compiles (or loads from the cache) and links a worker component,
    /// checking it has the `turserver:store/worker` shape: imports the host
    /// provides and the wasi:http handler export. CPU-heavy: call it from a
    /// blocking context.
    pub fn load(&self, bytes: &[u8]) -> anyhow::Result<Worker> {
        let hash = hex::encode(Sha256::digest(bytes));
        let cached = self.cache.as_ref().and_then(|c| c.load(&self.engine, &hash));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(c) => c,
            None => {
                let c = Component::new(&self.engine, bytes).context("compiling the worker")?;
                if let Some(cache) = &self.cache {
                    cache.store(&hash, &c);
                }
                c
            }
        };
        let instance_pre = self.linker.instantiate_pre(&component).context("linking the worker")?;
        let pre = ProxyPre::new(instance_pre).context("the worker does not export wasi:http/incoming-handler")?;
        let stateless = declares_stateless(bytes);
        let version_header = http::HeaderValue::from_str(&hash[..16]).context("hex is a valid header value")?;
        Ok(Worker { pre, hash, version_header, from_cache, stateless, idle: Default::default() })
    }

    /// A Store for a new instance; its deadline follows whichever request
    /// it is serving.
    fn new_store(&self, files: FilesCtx, progress: Arc<Progress>) -> Store<RequestState> {
        let state = RequestState {
            wasi: WasiCtx::builder().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            files,
            hooks: DenyOutbound,
            progress,
        };
        let mut store = Store::new(&self.engine, state);
        let deadline = self.deadline;
        store.epoch_deadline_callback(move |ctx| {
            if ctx.data().progress.idle() >= deadline {
                return Err(wasmtime::Error::msg(DEADLINE_MESSAGE));
            }
            Ok(wasmtime::UpdateDeadline::Yield(1))
        });
        store
    }

    /// Runs one request through `worker`. Failures of the worker become 500
    /// responses; the host itself never fails here.
    pub async fn handle(
        &self,
        worker: Arc<Worker>,
        req: hyper::Request<RequestBody>,
        mut files: FilesCtx,
    ) -> hyper::Response<HyperOutgoingBody> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let progress = Progress::new();
        files.progress = Some(progress.clone());
        let req = req.map(|b| ProgressBody { inner: b, progress: progress.clone() });
        // A reused instance keeps its Store (and resource table, so handles
        // can never alias across requests); the request's own state is new.
        let (mut store, proxy, served) = match worker.take_idle() {
            Some(Warm { mut store, proxy, served }) => {
                let state = store.data_mut();
                state.files = files;
                state.progress = progress.clone();
                (store, Some(proxy), served)
            }
            None => (self.new_store(files, progress.clone()), None, 0),
        };
        store.set_epoch_deadline(1);
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
        let prepared = (|| -> wasmtime::Result<_> {
            let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok((req, out))
        })();
        let (req, out) = match prepared {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(cause = %format!("{e:#}"), "could not hand the request to the worker");
                return crate::server::text_response(500, "internal error: the request could not reach the worker");
            }
        };
        let instantiations = self.instantiations.clone();
        let run = async move {
            let result = async {
                let proxy = match proxy {
                    Some(p) => p,
                    None => {
                        instantiations.inc();
                        worker.pre.instantiate_async(&mut store).await.context("instantiating the worker")?
                    }
                };
                proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await?;
                Ok(proxy)
            }
            .await;
            match result {
                Ok(proxy) => {
                    worker.put_idle(Warm { store, proxy, served: served + 1 });
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(request_id, worker = %&worker.hash[..12], cause = %format!("{e:#}"), "worker failed");
                    // A failed instance (and its pooled slot) is dropped
                    // here, never reused.
                    Err(e)
                }
            }
        };
        // The instance runs here until it answers. Most finish their whole
        // response at once (small bodies fit the pipe); one still streaming
        // a body when the head arrives goes on in its own task, feeding
        // hyper. No task or thread hop for the common case.
        let mut run = Box::pin(run);
        let (head, finished) = tokio::select! {
            biased;
            done = &mut run => (receiver.await, Some(done)),
            head = &mut receiver => (head, None),
        };
        let streaming = finished.is_none().then(|| tokio::spawn(run));
        let mut resp = match head {
            Ok(Ok(resp)) => resp.map(|b| ProgressBody { inner: b, progress }.boxed_unsync()),
            Ok(Err(code)) => worker_error_response(&code),
            Err(_) => {
                // The worker never set a response: it trapped, ran out of
                // time or memory, or returned without answering. The cause
                // is logged.
                let done = match (finished, streaming) {
                    (Some(done), _) => Some(done),
                    (None, Some(task)) => task.await.ok(),
                    (None, None) => None,
                };
                let (status, why) = match done {
                    Some(Err(e)) if format!("{e:#}").contains(DEADLINE_MESSAGE) => (504, "worker timed out"),
                    Some(Err(e)) if is_resource_exhaustion(&e) => (503, "worker capacity exhausted; retry"),
                    _ => (500, "worker failed: it did not produce a response"),
                };
                crate::server::text_response(status, &format!("{why} (request {request_id})"))
            }
        };
        resp.headers_mut().insert("x-request-id", http::HeaderValue::from(request_id));
        resp
    }
}

fn worker_error_response(code: &ErrorCode) -> hyper::Response<HyperOutgoingBody> {
    tracing::warn!(?code, "worker answered with an error code");
    crate::server::text_response(500, &format!("worker error: {code:?}"))
}

/// Instantiation fails this way when every pooled slot is in use.
fn is_resource_exhaustion(e: &wasmtime::Error) -> bool {
    format!("{e:#}").contains("maximum concurrent")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in worker (it traps if called) importing `files` at
    /// `version` with the functions `files_wit` declares.
    fn worker_importing(version: &str, files_wit: &str) -> Vec<u8> {
        let mut resolve = wit_parser::Resolve::default();
        // The repository's WIT brings the wasi:http package the world exports.
        resolve.push_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit")).unwrap();
        let source = format!(
            "package turserver:store@{version};\n\
             interface files {{ {files_wit} }}\n\
             world old-worker {{ import files; export wasi:http/incoming-handler@0.2.0; }}"
        );
        let pkg = resolve.push_str("old.wit", &source).unwrap();
        let world = resolve.select_world(&[pkg], Some("old-worker")).unwrap();
        let mut module = wit_component::dummy_module(&resolve, world, wit_parser::ManglingAndAbi::Standard32);
        wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8)
            .unwrap();
        wit_component::ComponentEncoder::default().module(&module).unwrap().validate(true).encode().unwrap()
    }

    const ERROR: &str = "variant error { not-found, unauthorized, forbidden, too-large(u64), \
                         precondition-failed, invalid(string), unavailable(string), internal(string) }";

    #[test]
    fn workers_built_against_earlier_files_versions_still_link() {
        let runtime = Runtime::new(16 << 20, Duration::from_secs(1), None, Default::default()).unwrap();
        // 0.1.0 had no `authorize`; 0.1.1 added it; 0.1.2 added `send`.
        let v010 = worker_importing(
            "0.1.0",
            &format!("{ERROR} read: func(version: u64, encoding: string, offset: u64, len: u64) -> result<list<u8>, error>;"),
        );
        let v011 = worker_importing("0.1.1", &format!("{ERROR} authorize: func(credentials: string);"));
        runtime.load(&v010).expect("a 0.1.0 worker links");
        runtime.load(&v011).expect("a 0.1.1 worker links");

        // The checks can fail: another major version, or a function this
        // host lacks, is refused.
        let v020 = worker_importing("0.2.0", &format!("{ERROR} authorize: func(credentials: string);"));
        assert!(runtime.load(&v020).is_err());
        let unknown = worker_importing("0.1.1", &format!("{ERROR} frobnicate: func();"));
        let err = runtime.load(&unknown).err().expect("an unknown import is refused");
        assert!(format!("{err:#}").contains("frobnicate"), "{err:#}");
    }
}
