//! The wasm engine: one Engine and Linker for the process, the epoch clock,
//! and workers compiled (or loaded from the compiled-worker cache), linked
//! and pre-instantiated once.
//!
//! Isolation: each instance lives in a pooled slot with a memory limit, and
//! runs under a no-progress deadline. An epoch ticks every [`TICK`]; at each
//! tick a running instance yields to the scheduler (so a spinning worker
//! never starves other requests) and is interrupted once it has gone
//! `deadline` without progress (see [`super::instance`]).

use super::artifacts::ArtifactCache;
use super::bindings::{files, kv};
use super::files::FilesView;
use super::instance::{declares_stateless, IdlePool, RequestState, Worker};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sha2::{Digest, Sha256};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;
use wasmtime::component::{Component, HasData, Linker};
use wasmtime::error::Context as _;
use wasmtime::{Config, Engine, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The worker built into the binary (see `host/build.rs`).
pub const DEFAULT_WORKER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/worker.wasm"));

/// Pooled slots left warm (their resident pages kept) while unused.
const MAX_UNUSED_WARM_SLOTS: u32 = 16;
/// The top of each request's stack kept resident (zeroed in place) when the
/// request ends; the rest is returned to the system. A GET stays within it.
const STACK_KEEP_RESIDENT: usize = 64 << 10;
/// Epoch period: how often a running instance yields and checks its deadline.
pub const TICK: Duration = Duration::from_millis(10);

struct FilesData;

impl HasData for FilesData {
    type Data<'a> = FilesView<'a>;
}

/// The engine's epoch clock: a thread that ticks as long as the engine
/// lives, and ends with it.
struct EpochThread;

impl EpochThread {
    fn start(engine: &Engine) -> std::io::Result<EpochThread> {
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
            .map(|_| EpochThread)
    }
}

/// How workers run.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Largest linear memory one instance may grow to.
    pub worker_memory_bytes: u64,
    /// How long an instance may run without progress.
    pub deadline: Duration,
    /// Where compiled workers are kept (None: no cache).
    pub cache_dir: Option<std::path::PathBuf>,
    /// Instances that may exist at once: the requests the worker can serve
    /// concurrently. Past it a request gets 503.
    pub max_instances: u32,
    /// How long an h2 response may go without the client taking any of it
    /// before it is cut off and the instance streaming it ended.
    pub send_timeout: Duration,
}

/// Most distinct compiled components kept in memory for reuse; past it the
/// set starts again (each is still on disk).
const MAX_COMPILED_IN_MEMORY: usize = 32;

pub struct Runtime {
    pub(super) engine: Engine,
    linker: Linker<RequestState>,
    cache: Option<ArtifactCache>,
    /// Compiled components by hash, so sites running the same worker share
    /// one compiled copy.
    compiled: std::sync::Mutex<std::collections::HashMap<String, Component>>,
    /// Idle instances by component hash, while a worker holds them: sites
    /// running the same stateless worker take turns with its warm
    /// instances, as one site's requests do.
    idle: std::sync::Mutex<std::collections::HashMap<String, Weak<IdlePool>>>,
    /// How long an instance may run without progress.
    pub(super) deadline: Duration,
    pub(super) next_request_id: AtomicU64,
    /// Instances created (a stateless worker's instances serve many requests).
    pub(super) instantiations: Counter,
    /// Requests an instance is working on right now (streaming included).
    pub(super) busy: Gauge,
    /// Requests that waited because their connection had its quota of
    /// responses under way.
    pub(super) quota_waits: Counter,
    pub(super) send_timeout: Duration,
    _epoch: EpochThread,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let RuntimeConfig { worker_memory_bytes, deadline, cache_dir, max_instances, send_timeout } = config;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(max_instances)
            .total_core_instances(max_instances * 4)
            .total_memories(max_instances * 2)
            .total_tables(max_instances * 4)
            .total_stacks(max_instances)
            .max_memory_size(worker_memory_bytes as usize)
            // Keep a reused slot's low pages resident and reset them in
            // place; PAGEMAP_SCAN (Linux 6.7+) finds the dirty ones. `Auto`
            // falls back to plain resets on older kernels.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            // Slots no instance uses keep their resident pages only this
            // many at a time, so the memory of a burst comes back.
            .max_unused_warm_slots(MAX_UNUSED_WARM_SLOTS)
            .pagemap_scan(Enabled::Auto)
            // A stack's deepest pages go back to the system when its
            // request ends (see `async_stack_zeroing` below).
            .async_stack_keep_resident(STACK_KEEP_RESIDENT);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Slots are sized to the memory limit rather than the default 4 GiB
            // reservation, so a thousand of them fit comfortably.
            .memory_reservation(worker_memory_bytes)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            .epoch_interruption(true)
            // Each request runs on a pooled 2 MiB stack, and the host calls
            // it makes (the store's reads and writes) run there too. Without
            // a reset, every stack a burst of requests touched would keep
            // resident for good as much as its deepest request used: up to
            // `max_instances` stacks.
            .async_stack_zeroing(true);
        if std::env::var_os("TURSERVER_PERF_MAP").is_some() {
            // Names the compiled worker's functions for `perf` (/tmp/perf-PID.map).
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).context("creating the wasm engine")?;
        let epoch = EpochThread::start(&engine).context("starting the epoch ticker")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).context("linking WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).context("linking wasi:http")?;
        files::add_to_linker::<_, FilesData>(&mut linker, RequestState::files_view)
            .context("linking turserver:store/files")?;
        kv::add_to_linker::<_, FilesData>(&mut linker, RequestState::files_view).context("linking turserver:store/kv")?;
        let cache = cache_dir.map(|dir| ArtifactCache::new(dir, &engine));
        Ok(Runtime {
            engine,
            linker,
            cache,
            compiled: Default::default(),
            idle: Default::default(),
            deadline,
            next_request_id: AtomicU64::new(1),
            instantiations: Counter::default(),
            busy: Gauge::default(),
            quota_waits: Counter::default(),
            send_timeout,
            _epoch: epoch,
        })
    }

    /// Registers the runtime's metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "worker_instantiations",
            "Worker instances created (a stateless worker's instances serve many requests)",
            self.instantiations.clone(),
        );
        registry.register(
            "worker_instances_busy",
            "Requests a worker instance is running right now, including responses it is still streaming",
            self.busy.clone(),
        );
        registry.register(
            "worker_connection_quota_waits",
            "Requests that waited because their connection already had --instances-per-connection responses under way",
            self.quota_waits.clone(),
        );
    }

    /// Compiles (or loads from the cache) and links a worker component,
    /// checking it has the `turserver:store/worker` shape: imports the host
    /// provides and the wasi:http handler export. CPU-heavy: call it from a
    /// blocking context.
    pub fn load(&self, bytes: &[u8]) -> anyhow::Result<Worker> {
        let hash = component_hash(bytes);
        let in_memory = self.compiled.lock().unwrap_or_else(|e| e.into_inner()).get(&hash).cloned();
        let cached = in_memory.or_else(|| self.cache.as_ref().and_then(|c| c.load(&self.engine, &hash)));
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
        {
            let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
            if compiled.len() >= MAX_COMPILED_IN_MEMORY && !compiled.contains_key(&hash) {
                compiled.clear();
            }
            compiled.insert(hash.clone(), component.clone());
        }
        let instance_pre = self.linker.instantiate_pre(&component).context("linking the worker")?;
        let pre = ProxyPre::new(instance_pre).context("the worker does not export wasi:http/incoming-handler")?;
        let idle = {
            let mut pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            pools.retain(|_, p| p.strong_count() > 0);
            match pools.get(&hash).and_then(Weak::upgrade) {
                Some(p) => p,
                None => {
                    let p = Arc::new(IdlePool::default());
                    pools.insert(hash.clone(), Arc::downgrade(&p));
                    p
                }
            }
        };
        Ok(Worker::new(pre, hash, from_cache, declares_stateless(bytes), idle)?)
    }
}

/// A component's version: the hex SHA-256 of its bytes.
pub fn component_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
