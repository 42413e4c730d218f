//! Worker instances: a fresh Store and instance per request or, for a worker
//! that declares itself stateless (a `turserver:stateless` custom section),
//! an instance reused for up to [`MAX_REUSE`] requests in turn. Between
//! requests a reused instance gets fresh request state (its write access,
//! its store calls' progress); one that trapped or was interrupted is never
//! reused.
//!
//! On h2, an instance still streaming its response, or a large response
//! still buffered, is watched until the client has taken it: one that takes
//! none of it for the send timeout loses it, and the instance and the
//! buffered bytes are freed (a stream with a shut window holds neither).
//! On HTTP/1.1 the connection's own send timeout does this. One connection
//! has at most its quota of responses under way (running, or buffered until
//! the client takes them); its further requests wait.
//!
//! [`Runtime::invoke`] runs one request and says, as an [`InvokeError`], why
//! a worker produced no response; the request pipeline picks the status.

use super::engine::Runtime;
use super::files::{FilesCtx, FilesView};
use crate::http::{ConnectionQuota, Response, ResponseBody};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::ResourceTable;
use wasmtime::error::Context as _;
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Requests one instance of a stateless worker serves before it is retired.
pub const MAX_REUSE: u32 = 1000;
/// Idle instances kept per component for reuse.
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

/// A response body the instance may still be streaming, shared by the body
/// handed to hyper and the task running the instance. When the instance is
/// ended before it finished the body (it trapped, ran past its deadline, or
/// its client took nothing for the send timeout), the body ends with an
/// error, so the client sees a cut response rather than a short one that
/// looks complete, and what it had buffered is freed at once, even if hyper
/// never polls it again (an h2 stream whose window stays shut).
struct Streaming {
    body: std::sync::Mutex<Option<ResponseBody>>,
    failed: std::sync::atomic::AtomicBool,
    /// Notified when hyper has taken the whole body or dropped it.
    done: tokio::sync::Notify,
    /// The connection's share of the worker this response holds until its
    /// body is taken, or dropped: what a connection's responses keep
    /// buffered is bounded by its quota.
    share: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
}

impl Streaming {
    fn new(share: Option<OwnedSemaphorePermit>) -> Streaming {
        Streaming {
            body: Default::default(),
            failed: Default::default(),
            done: Default::default(),
            share: std::sync::Mutex::new(share),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<ResponseBody>> {
        self.body.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the connection's share back.
    fn release(&self) {
        drop(self.share.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// The instance ended without finishing its response.
    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        drop(self.slot().take());
        self.release();
    }

    /// Hyper has taken the whole body, or dropped it.
    fn end(&self) {
        drop(self.slot().take());
        self.release();
        self.done.notify_one();
    }

    /// Waits until hyper has taken the whole body (or dropped it).
    async fn taken(&self) {
        loop {
            let done = self.done.notified();
            if self.slot().is_none() {
                return;
            }
            done.await;
        }
    }
}

/// Responses at least this large are watched by the host until the client
/// has taken them, even when the instance finished at once: their buffered
/// bytes are freed once the client has taken none of them for the send
/// timeout. Smaller ones cost no more than their own size to hold.
const WATCHED_BODY: u64 = 256 << 10;

/// The body of a response from a worker, as hyper takes it. On h2 it comes
/// in pieces of at most [`H2_PIECE`], so a client that reads slowly but
/// steadily makes progress often enough never to be taken for a stalled
/// one; on HTTP/1.1 the connection's own send timeout watches the client,
/// and chunks pass whole.
struct WorkerBody {
    streaming: Arc<Streaming>,
    progress: Arc<Progress>,
    /// What is left of the last chunk the instance wrote.
    rest: bytes::Bytes,
    piece: usize,
}

/// The largest piece of a body handed to hyper at once on h2. A client
/// must take at least this much per send timeout (about 1 KiB/s with the
/// default).
const H2_PIECE: usize = 64 << 10;

impl Body for WorkerBody {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
        if !self.rest.is_empty() {
            self.progress.touch();
            let n = self.rest.len().min(self.piece);
            let piece = self.rest.split_to(n);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let mut body = self.streaming.slot();
        let polled = match body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                drop(body);
                self.progress.touch();
                match frame.into_data() {
                    Ok(mut data) if data.len() > self.piece => {
                        let piece = self.piece;
                        self.rest = data.split_off(piece);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                }
            }
            Poll::Ready(None) => {
                drop(body);
                self.streaming.end();
                if self.streaming.failed.load(Ordering::Acquire) {
                    return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpProtocolError)));
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        if !self.rest.is_empty() {
            return false;
        }
        self.streaming.slot().as_ref().is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.streaming.slot().as_ref().map(|b| b.size_hint()).unwrap_or_default();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

impl Drop for WorkerBody {
    fn drop(&mut self) {
        self.streaming.end();
    }
}

/// A response's `Content-Length`, 0 if it has none.
fn content_length(resp: &Response) -> u64 {
    resp.headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// Counts a request as running in an instance for as long as it lives.
struct Busy(prometheus_client::metrics::gauge::Gauge);

impl Busy {
    fn start(gauge: &prometheus_client::metrics::gauge::Gauge) -> Busy {
        gauge.inc();
        Busy(gauge.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs `work` (an instance still streaming its response, then the wait
/// for the client to take what is buffered) until it ends, or until the
/// response has gone `limit` without progress: a client that takes none of
/// the body (an h2 stream whose flow-control window stays shut) then loses
/// its response, and the instance is freed for others.
async fn unless_stalled(work: impl Future<Output = ()>, progress: &Progress, limit: Duration) -> Result<(), ResponseStalled> {
    tokio::pin!(work);
    loop {
        let idle = progress.idle();
        if idle >= limit {
            return Err(ResponseStalled);
        }
        tokio::select! {
            () = &mut work => return Ok(()),
            () = tokio::time::sleep(limit - idle) => {}
        }
    }
}

/// A response whose client took none of it for the send timeout.
struct ResponseStalled;

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
    /// The request's site: its store, access and limits. Taken away while
    /// the instance waits, so a parked instance holds no site open.
    files: Option<FilesCtx>,
    hooks: DenyOutbound,
    progress: Arc<Progress>,
}

impl RequestState {
    /// What the store calls act on: the running request's site.
    pub(super) fn files_view(&mut self) -> FilesView<'_> {
        FilesView {
            // Set before the instance is called, taken only once it has returned.
            ctx: self.files.as_mut().expect("an instance is only called with a request's site set"),
            table: &mut self.table,
        }
    }
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
    /// Instances waiting for their next request (stateless workers only),
    /// shared by every site running this component.
    idle: Arc<IdlePool>,
}

/// Instances of one component waiting for their next request, whichever
/// site they serve next: a stateless worker keeps nothing from one request
/// to the next, an instance is parked only once it holds no resource, and
/// the request's site is taken from it while it waits.
pub(super) type IdlePool = std::sync::Mutex<Vec<Warm>>;

/// An instance between two requests, with the Store it lives in.
pub(super) struct Warm {
    store: Store<RequestState>,
    proxy: Proxy,
    served: u32,
    /// When it last finished a request.
    parked: Instant,
}

impl Worker {
    pub(super) fn new(
        pre: ProxyPre<RequestState>,
        hash: String,
        from_cache: bool,
        stateless: bool,
        idle: Arc<IdlePool>,
    ) -> anyhow::Result<Worker> {
        let version_header = http::HeaderValue::from_str(&hash[..16]).context("hex is a valid header value")?;
        Ok(Worker { pre, hash, version_header, from_cache, stateless, idle })
    }

    fn take_idle(&self) -> Option<Warm> {
        if !self.stateless {
            return None;
        }
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put_idle(&self, mut warm: Warm) {
        let state = warm.store.data_mut();
        state.files = None;
        // A handle the worker kept (a stream, an upload) would reach into
        // the site it was made for: such an instance is not reused.
        if warm.served >= MAX_REUSE || !state.table.is_empty() {
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
            files: Some(files),
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
        let h2 = req.version() == http::Version::HTTP_2;
        // Its connection's share of the worker, held until the instance has
        // ended and the client has taken the response (or it was dropped):
        // one h2 connection's streams can neither take every instance nor
        // keep more than their share of responses buffered.
        let share = match req.extensions().get::<ConnectionQuota>() {
            Some(quota) => {
                let (permit, waited) = quota.take().await;
                if waited {
                    self.quota_waits.inc();
                }
                Some(permit)
            }
            None => None,
        };
        let progress = Progress::new();
        files.progress = Some(progress.clone());
        let req = req.map(|b| ProgressBody { inner: b, progress: progress.clone() });
        // A reused instance keeps its Store (and resource table, so handles
        // can never alias across requests); the request's own state is new.
        let (mut store, proxy, served) = match worker.take_idle() {
            Some(Warm { mut store, proxy, served, .. }) => {
                let state = store.data_mut();
                state.files = Some(files);
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
        let busy = Busy::start(&self.busy);
        let streaming = Arc::new(Streaming::new(share));
        let ending = streaming.clone();
        let run = async move {
            let _busy = busy;
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
                    ending.fail();
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
        let still_running = finished.is_none().then_some(run);
        let (result, still_running) = match head {
            Ok(Ok(resp)) => {
                let resp = resp.map(|b| {
                    *streaming.slot() = Some(b);
                    let piece = if h2 { H2_PIECE } else { usize::MAX };
                    WorkerBody { streaming: streaming.clone(), progress: progress.clone(), rest: bytes::Bytes::new(), piece }
                        .boxed_unsync()
                });
                (Ok(resp), still_running)
            }
            Ok(Err(code)) => {
                tracing::warn!(request_id, ?code, "worker answered with an error code");
                (Err(InvokeError::ErrorCode(code)), still_running)
            }
            Err(_) => {
                // The worker never set a response: it trapped, ran out of
                // time or memory, or returned without answering. The cause
                // is logged.
                let done = match (finished, still_running) {
                    (Some(done), _) => Some(done),
                    (None, Some(run)) => Some(run.await),
                    (None, None) => None,
                };
                let failed = match done {
                    Some(Err(e)) => InvokeError::of(&e),
                    _ => InvokeError::Failed,
                };
                (Err(failed), None)
            }
        };
        // An instance still streaming goes on in its own task, feeding
        // hyper. On h2 it, or a large body still buffered, is watched until
        // the client has taken it all; on HTTP/1.1 the connection's send
        // timeout closes a connection whose client stopped reading, which
        // ends the instance.
        let large = result.as_ref().is_ok_and(|r| content_length(r) >= WATCHED_BODY);
        let limit = h2.then_some(self.send_timeout);
        match (still_running, limit) {
            (Some(run), None) => {
                tokio::spawn(run);
            }
            (still_running, Some(limit)) if still_running.is_some() || large => {
                tokio::spawn(async move {
                    let watched = async {
                        if let Some(run) = still_running {
                            // A failed run has already failed its response.
                            let _ = run.await;
                        }
                        streaming.taken().await;
                    };
                    if unless_stalled(watched, &progress, limit).await.is_err() {
                        tracing::warn!(request_id, ?limit, "the client took none of the response for the send timeout; ending it");
                        streaming.fail();
                    }
                });
            }
            _ => {}
        }
        Invoked { request_id, result }
    }
}

