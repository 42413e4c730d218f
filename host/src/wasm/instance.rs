//! Worker instances: a fresh Store and instance per request or, for a worker
//! that declares itself stateless (a `turserver:stateless` custom section),
//! an instance reused for up to [`MAX_REUSE`] requests in turn. Between
//! requests a reused instance gets fresh request state (its write access,
//! its store calls' progress); one that trapped or was interrupted is never
//! reused.
//!
//! [`Runtime::invoke`] runs one request and says, as an [`InvokeError`], why
//! a worker produced no response; the request pipeline picks the status.

use super::engine::Runtime;
use super::files::FilesCtx;
use crate::http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::error::Context as _;
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Requests one instance of a stateless worker serves before it is retired.
pub const MAX_REUSE: u32 = 1000;
/// Idle instances kept per worker for reuse.
const MAX_IDLE: usize = 64;
/// Name of the custom section by which a worker declares itself stateless.
pub const STATELESS_SECTION: &str = "turserver:stateless";

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

/// What an instance is interrupted with when its deadline passes.
#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("worker made no progress within its deadline")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Why a worker produced no response.
#[derive(Debug)]
pub enum InvokeError {
    /// The request could not be handed to the worker (a host fault).
    Setup,
    /// It ran for its deadline without progress and was interrupted.
    Timeout,
    /// Every pooled instance slot was in use.
    Capacity,
    /// It trapped, or returned without answering.
    Failed,
    /// It answered with a `wasi:http` error code instead of a response.
    ErrorCode(ErrorCode),
}

impl InvokeError {
    /// Classifies what an instance failed with (its cause is logged).
    fn of(e: &wasmtime::Error) -> InvokeError {
        if e.is::<DeadlineExceeded>() {
            InvokeError::Timeout
        } else if e.is::<wasmtime::PoolConcurrencyLimitError>() {
            InvokeError::Capacity
        } else {
            InvokeError::Failed
        }
    }
}

/// One request's run through a worker.
pub struct Invoked {
    /// The request's number, also in the log lines about it.
    pub request_id: u64,
    pub result: Result<Response, InvokeError>,
}

/// State held in the Store; `files` and `progress` are the current
/// request's.
pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub(super) table: ResourceTable,
    pub(super) files: FilesCtx,
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
    /// When it last finished a request.
    parked: Instant,
}

impl Worker {
    pub(super) fn new(pre: ProxyPre<RequestState>, hash: String, from_cache: bool, stateless: bool) -> anyhow::Result<Worker> {
        let version_header = http::HeaderValue::from_str(&hash[..16]).context("hex is a valid header value")?;
        Ok(Worker { pre, hash, version_header, from_cache, stateless, idle: Default::default() })
    }

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

    /// Drops the instances that have waited longer than `unused` for a
    /// request, so what a burst took comes back; how many were dropped.
    pub fn trim_idle(&self, unused: Duration) -> usize {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let before = idle.len();
        // The pool is a stack: the longest unused are at the bottom.
        idle.retain(|w| w.parked.elapsed() < unused);
        before - idle.len()
    }
}

/// Whether `bytes` (a component) carries the [`STATELESS_SECTION`], in
/// itself or in a module it embeds.
pub fn declares_stateless(bytes: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(bytes).any(|payload| {
        matches!(payload, Ok(wasmparser::Payload::CustomSection(c)) if c.name() == STATELESS_SECTION)
    })
}

impl Runtime {
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
                return Err(wasmtime::Error::from(DeadlineExceeded));
            }
            Ok(wasmtime::UpdateDeadline::Yield(1))
        });
        store
    }

    /// Runs one request through `worker`: its response, or why there is
    /// none. The host itself never fails here.
    pub async fn invoke<B>(&self, worker: Arc<Worker>, req: hyper::Request<B>, mut files: FilesCtx) -> Invoked
    where
        B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let progress = Progress::new();
        files.progress = Some(progress.clone());
        let req = req.map(|b| ProgressBody { inner: b, progress: progress.clone() });
        // A reused instance keeps its Store (and resource table, so handles
        // can never alias across requests); the request's own state is new.
        let (mut store, proxy, served) = match worker.take_idle() {
            Some(Warm { mut store, proxy, served, .. }) => {
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
                tracing::error!(request_id, cause = %format!("{e:#}"), "could not hand the request to the worker");
                return Invoked { request_id, result: Err(InvokeError::Setup) };
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
                    worker.put_idle(Warm { store, proxy, served: served + 1, parked: Instant::now() });
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
        let result = match head {
            Ok(Ok(resp)) => Ok(resp.map(|b| ProgressBody { inner: b, progress }.boxed_unsync())),
            Ok(Err(code)) => {
                tracing::warn!(request_id, ?code, "worker answered with an error code");
                Err(InvokeError::ErrorCode(code))
            }
            Err(_) => {
                // The worker never set a response: it trapped, ran out of
                // time or memory, or returned without answering. The cause
                // is logged.
                let done = match (finished, streaming) {
                    (Some(done), _) => Some(done),
                    (None, Some(task)) => task.await.ok(),
                    (None, None) => None,
                };
                Err(match done {
                    Some(Err(e)) => InvokeError::of(&e),
                    _ => InvokeError::Failed,
                })
            }
        };
        Invoked { request_id, result }
    }
}

