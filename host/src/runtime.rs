//! The wasm runtime: one Engine and Linker, the worker compiled and
//! pre-instantiated once, and a fresh Store and instance per request.

use crate::bindings::files;
use crate::files::{FilesCtx, FilesView};
use hyper::body::Incoming;
use std::future::Future;
use wasmtime::error::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasData, Linker, ResourceTable};
use wasmtime::{Config, Engine, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// The worker built into the binary (see `host/build.rs`).
pub const DEFAULT_WORKER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/worker.wasm"));

/// Instances that may exist at once: the number of requests the worker can
/// serve concurrently. Past it a request gets 503.
const MAX_INSTANCES: u32 = 1000;

/// Per-request state held in the Store.
pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    files: FilesCtx,
    hooks: DenyOutbound,
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
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<RequestState>,
}

impl Runtime {
    pub fn new(worker_memory_bytes: u64) -> anyhow::Result<Runtime> {
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
            .memory_reservation_for_growth(0);
        let engine = Engine::new(&config).context("creating the wasm engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).context("linking WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).context("linking wasi:http")?;
        files::add_to_linker::<_, FilesData>(&mut linker, |s: &mut RequestState| FilesView {
            ctx: &mut s.files,
            table: &mut s.table,
        })
        .context("linking turserver:store/files")?;
        Ok(Runtime { engine, linker })
    }

    /// Compiles and links a worker component, checking it has the
    /// `turserver:store/worker` shape (imports we provide, the wasi:http
    /// handler export).
    pub fn load(&self, bytes: &[u8]) -> anyhow::Result<Worker> {
        let hash = hex::encode(Sha256::digest(bytes));
        let component = Component::new(&self.engine, bytes).context("compiling the worker")?;
        let instance_pre = self.linker.instantiate_pre(&component).context("linking the worker")?;
        let pre = ProxyPre::new(instance_pre).context("the worker does not export wasi:http/incoming-handler")?;
        Ok(Worker { pre, hash })
    }

    /// Runs one request through `worker`. Failures of the worker become 500
    /// responses; the host itself never fails here.
    pub async fn handle(
        &self,
        worker: &Worker,
        req: hyper::Request<Incoming>,
        files: FilesCtx,
    ) -> hyper::Response<HyperOutgoingBody> {
        let state = RequestState {
            wasi: WasiCtx::builder().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            files,
            hooks: DenyOutbound,
        };
        let mut store = Store::new(&self.engine, state);
        let (sender, receiver) = tokio::sync::oneshot::channel();
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
        let pre = worker.pre.clone();
        // The instance runs in its own task: it goes on streaming the body
        // after the response head has been handed to hyper.
        let task = tokio::spawn(async move {
            let result = async {
                let proxy = pre.instantiate_async(&mut store).await.context("instantiating the worker")?;
                proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
            }
            .await;
            if let Err(e) = &result {
                tracing::error!(cause = %format!("{e:#}"), "worker failed");
            }
            result
        });
        match receiver.await {
            Ok(Ok(resp)) => resp,
            Ok(Err(code)) => worker_error_response(&code),
            Err(_) => {
                // The worker never set a response: it trapped, or returned
                // without answering. The task has logged the cause.
                let status = match task.await {
                    Ok(Err(e)) if is_resource_exhaustion(&e) => 503,
                    _ => 500,
                };
                crate::server::text_response(status, "worker failed: it did not produce a response")
            }
        }
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
