//! The HTTP server: accepts connections, answers host endpoints itself,
//! decides write access, and hands every other request to the worker.

use crate::config::ServeArgs;
use crate::files::{FilesCtx, WriteAccess};
use crate::runtime::Runtime;
use crate::send_timeout::SendTimeout;
use crate::edge_cache::{self, EdgeCache};
use crate::linger::{Linger, RequestBody};
use crate::metrics::Metrics;
use crate::status::SyncStats;
use crate::sync::AbortOnDrop;
use crate::store::{Mode, Store};
use crate::workers::{self, WorkerSlot};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// How long shutdown waits for in-flight requests before giving up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// State shared by every request.
pub struct AppState {
    pub runtime: Arc<Runtime>,
    pub workers: WorkerSlot,
    /// `--worker` was given: the file decides the worker, not the database.
    pub pinned_worker: bool,
    pub store: Arc<Store>,
    pub sync_stats: Arc<SyncStats>,
    /// SHA-256 of the write token: comparing digests keeps the comparison's
    /// timing independent of how much of a guessed token is right.
    write_token_digest: Option<[u8; 32]>,
    max_upload: u64,
    edge_cache: Option<Arc<EdgeCache>>,
    bench_native: bool,
}

/// Binds, serves at once (answering 503 until ready), opens the store,
/// loads the worker, and serves until SIGINT/SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Tests (and people) read the address from this first line.
    tracing::info!("listening on http://{addr}");

    let sync_stats = Arc::new(SyncStats::default());
    let instantiations = prometheus_client::metrics::counter::Counter::default();
    let edge_cache = (args.response_cache_mib > 0).then(|| Arc::new(EdgeCache::new(args.response_cache_mib << 20)));
    let shared = Arc::new(Shared {
        app: OnceLock::new(),
        metrics: Metrics::new(&sync_stats, edge_cache.as_deref(), &instantiations),
        consistency_wait: args.consistency_wait,
        send_timeout: args.send_timeout,
    });
    let mut server = tokio::spawn(serve(listener, shared.clone(), shutdown_signal()));
    // A signal while starting ends the server task: stop starting then.
    let (app, _tasks) = tokio::select! {
        started = start(&args, sync_stats, edge_cache, instantiations) => started?,
        ended = &mut server => return ended.context("the server task failed")?,
    };
    let _ = shared.app.set(app);
    server.await.context("the server task failed")?
}

/// Opens the store and loads the worker; the tasks returned run as long as
/// they are kept.
async fn start(
    args: &ServeArgs,
    sync_stats: Arc<SyncStats>,
    edge_cache: Option<Arc<EdgeCache>>,
    instantiations: prometheus_client::metrics::counter::Counter,
) -> anyhow::Result<(Arc<AppState>, Vec<AbortOnDrop>)> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let store = match args.primary_http_url() {
        None => Store::open_local(&args.data_dir, sync_stats.clone()).await?,
        Some(url) => {
            if args.primary_token.is_none() {
                tracing::warn!("no --primary-token: connecting to the primary without authentication");
            }
            let token = args.primary_token.as_deref();
            Store::open_replica(&args.data_dir, &url, token, args.rebuild_replica, sync_stats.clone()).await?
        }
    };
    let store = Arc::new(store);
    match store.mode() {
        Mode::Local => tracing::info!(data_dir = %args.data_dir.display(), "serving from a local database"),
        Mode::Replica { url } => {
            tracing::info!(primary = %crate::status::redact_url(url), "serving from an embedded replica")
        }
    }
    let mut tasks = crate::sync::spawn(store.clone(), args.sync_interval);

    let runtime = Arc::new(Runtime::new(
        args.worker_memory_mib << 20,
        args.worker_deadline,
        Some(args.data_dir.join("worker-cache")),
        instantiations,
    )?);
    let started = std::time::Instant::now();
    let (bytes, origin) = match &args.worker {
        Some(path) => (std::fs::read(path).with_context(|| format!("reading the worker {}", path.display()))?, "file"),
        None => match workers::deployed(&store).await.context("reading the deployed worker")? {
            Some(bytes) => (bytes, "database"),
            None => (crate::runtime::DEFAULT_WORKER.to_vec(), "built-in"),
        },
    };
    let worker = match workers::compile(runtime.clone(), bytes).await {
        Ok((w, _)) => w,
        // A broken deployment must not keep the edge down: fall back.
        Err(e) if origin == "database" => {
            tracing::error!(cause = %format!("{e:#}"), "the deployed worker is unusable; starting with the built-in one");
            workers::compile(runtime.clone(), crate::runtime::DEFAULT_WORKER.to_vec()).await?.0
        }
        Err(e) => return Err(e.context(format!("loading the {origin} worker"))),
    };
    tracing::info!(
        version = %worker.hash,
        origin,
        from_cache = worker.from_cache,
        ms = started.elapsed().as_millis() as u64,
        "worker ready"
    );
    if args.write_token.is_none() {
        tracing::warn!("no --write-token: every write will be refused");
    }
    let state = Arc::new(AppState {
        runtime,
        workers: WorkerSlot::new(worker, origin),
        pinned_worker: args.worker.is_some(),
        store: store.clone(),
        sync_stats,
        write_token_digest: args.write_token.as_deref().map(|t| Sha256::digest(t.as_bytes()).into()),
        max_upload: args.max_upload_size,
        edge_cache,
        bench_native: args.bench_native,
    });
    if let (Some(addr), Some(token)) = (args.sidecar_listen, &args.sidecar_token) {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the sidecar on {addr}"))?;
        let addr = listener.local_addr().context("reading the sidecar's bound address")?;
        tracing::info!("sidecar listening on http://{addr}");
        let sidecar = Arc::new(crate::sidecar::Sidecar {
            store: store.clone(),
            token_digest: Sha256::digest(token.as_bytes()).into(),
            write_token_digest: state.write_token_digest,
            max_upload: args.max_upload_size,
            send_timeout: args.send_timeout,
        });
        tasks.push(AbortOnDrop::new(tokio::spawn(crate::sidecar::serve(listener, sidecar))));
    }
    tasks.push(match &args.worker {
        Some(path) => workers::spawn_file_watch(state.clone(), path.clone()),
        None => workers::spawn_database_watch(state.clone(), args.sync_interval),
    });
    Ok((state, tasks))
}

/// What the accept loop shares: the app once it has started, and what
/// works before that.
pub struct Shared {
    app: OnceLock<Arc<AppState>>,
    metrics: Metrics,
    consistency_wait: Duration,
    send_timeout: Duration,
}

/// The next connection, with Nagle's algorithm off. Accept errors (typically
/// EMFILE) are logged and retried after a pause instead of spinning.
pub(crate) async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(cause = %e, addr = ?listener.local_addr().ok(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves connections on `listener` until `shutdown` resolves, then stops
/// accepting and drains in-flight requests.
pub async fn serve(listener: TcpListener, state: Arc<Shared>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, peer) = accept(&listener) => {
                let stream = SendTimeout::new(stream, state.send_timeout);
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(observed(&state, req.map(Linger::new)).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, cause = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("gave up draining after {DRAIN_TIMEOUT:?}"),
    }
    Ok(())
}

/// Answers a request and records it in the metrics.
async fn observed(shared: &Shared, req: hyper::Request<RequestBody>) -> hyper::Response<HyperOutgoingBody> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let resp = route(shared, req).await;
    shared.metrics.observe(method.as_str(), resp.status().as_u16(), started.elapsed().as_secs_f64());
    let counter = shared.metrics.bytes_served.clone();
    resp.map(|b| CountingBody { inner: b, counter }.boxed_unsync())
}

async fn route(shared: &Shared, req: hyper::Request<RequestBody>) -> hyper::Response<HyperOutgoingBody> {
    let app = shared.app.get();
    match req.uri().path() {
        "/_turserver/health" => return text_response(200, "ok"),
        "/_turserver/ready" => {
            return match app {
                Some(app) if app.store.is_ready() => text_response(200, "ready"),
                Some(_) => retry_later(503, "not ready: the replica has not completed a sync with the primary yet"),
                None => retry_later(503, "not ready: starting"),
            };
        }
        "/metrics" => {
            let mut r = text_response(200, shared.metrics.render().trim_end());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return r;
        }
        _ => {}
    }
    let Some(app) = app else {
        return retry_later(503, "starting: the store and worker are not loaded yet");
    };
    match req.uri().path() {
        "/_turserver/status" => json_response(200, crate::status::render(app)),
        "/_turserver/worker" => deploy_worker(app, req).await,
        path if app.bench_native && path.starts_with("/_turserver/native/") => native(app, req).await,
        _ => handle(app, shared.consistency_wait, req).await,
    }
}

/// Benchmark baseline: a file answered by the host straight from the store,
/// with no worker (`--bench-native`). Only plain GETs of whole files.
async fn native(state: &AppState, req: hyper::Request<RequestBody>) -> hyper::Response<HyperOutgoingBody> {
    let path = req.uri().path().trim_start_matches("/_turserver/native/").to_string();
    let meta = match state.store.stat(&path).await {
        Ok(Some(m)) => m,
        Ok(None) => return text_response(404, "not found"),
        Err(e) => return text_response(500, &e.to_string()),
    };
    let Ok(body) = state.store.read_whole(meta.version, meta.size).await else {
        return text_response(500, "read failed");
    };
    let mut resp = hyper::Response::new(full_body(body));
    let h = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&meta.content_type) {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{}\"", meta.hash)) {
        h.insert(hyper::header::ETAG, v);
    }
    resp
}

/// Small bodies are gathered before the head is sent, so hyper writes head
/// and body in one go (the worker's body otherwise arrives just after the
/// head, costing a second write and packet).
const COALESCE_BYTES: u64 = 64 << 10;

fn content_length(resp: &hyper::Response<HyperOutgoingBody>) -> Option<u64> {
    resp.headers().get(hyper::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The whole body of a worker's response, or the 500 to send instead when
/// the worker failed while sending it.
async fn gather(
    resp: hyper::Response<HyperOutgoingBody>,
) -> Result<(http::response::Parts, Bytes), hyper::Response<HyperOutgoingBody>> {
    let (parts, body) = resp.into_parts();
    match body.collect().await {
        Ok(c) => Ok((parts, c.to_bytes())),
        Err(e) => {
            tracing::warn!(cause = ?e, "the worker's response body failed");
            Err(text_response(500, "worker failed while sending the response"))
        }
    }
}

fn header_text(req: &hyper::Request<RequestBody>, name: hyper::header::HeaderName) -> String {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

fn cached_response(entry: &edge_cache::Entry, head: bool) -> hyper::Response<HyperOutgoingBody> {
    let body = if head { Bytes::new() } else { entry.body.clone() };
    let mut resp = hyper::Response::new(full_body(body));
    *resp.status_mut() = entry.status;
    *resp.headers_mut() = entry.headers.clone();
    resp.headers_mut().insert("turserver-cache", http::HeaderValue::from_static("hit"));
    resp
}

/// The replication position a read asks for: the header, else the cookie a
/// write set.
fn requested_position(req: &hyper::Request<RequestBody>) -> Option<u64> {
    if let Some(v) = req.headers().get(POSITION_HEADER) {
        return v.to_str().ok()?.trim().parse().ok();
    }
    req.headers().get_all(hyper::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|cookies| {
        cookies.split(';').find_map(|c| c.trim().strip_prefix(POSITION_COOKIE)?.strip_prefix('=')?.parse().ok())
    })
}

async fn handle(state: &AppState, wait: Duration, mut req: hyper::Request<RequestBody>) -> hyper::Response<HyperOutgoingBody> {
    let is_write = !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS);
    if !is_write {
        if let Some(position) = requested_position(&req) {
            if !state.store.wait_for(position, wait).await {
                return retry_later(503, "this edge has not caught up with your last write yet");
            }
        }
    }
    let worker = state.workers.current();
    let is_get = req.method() == hyper::Method::GET;
    let is_head = req.method() == hyper::Method::HEAD;
    // Stamp before the worker runs: a change during the request leaves the
    // entry already stale.
    let generation = state.store.generation();
    let cache_key = state
        .edge_cache
        .as_ref()
        .filter(|_| edge_cache::request_is_cacheable(req.method(), req.headers()))
        .map(|_| edge_cache::Key {
            target: req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string(),
            accept_encoding: header_text(&req, hyper::header::ACCEPT_ENCODING),
            origin: header_text(&req, hyper::header::ORIGIN),
            worker: worker.hash.clone(),
        });
    if let (Some(cache), Some(key)) = (&state.edge_cache, &cache_key) {
        if let Some(entry) = cache.get(key, generation) {
            return cached_response(&entry, is_head);
        }
    }
    let access = write_access(state, &mut req);
    let files = FilesCtx { store: state.store.clone(), access, max_upload: state.max_upload, progress: None };
    let version = worker.version_header.clone();
    let mut resp = state.runtime.handle(worker, req, files).await;
    resp.headers_mut().insert("x-turserver-worker", version);
    // A GET that the cache keeps, or one small enough, is gathered whole
    // before the head is sent.
    let cacheable = is_get && cache_key.is_some() && edge_cache::response_is_cacheable(resp.status(), resp.headers());
    if cacheable || (is_get && content_length(&resp).is_some_and(|n| n <= COALESCE_BYTES)) {
        let (mut parts, bytes) = match gather(resp).await {
            Ok(gathered) => gathered,
            Err(failed) => return failed,
        };
        if let (true, Some(cache), Some(key)) = (cacheable, &state.edge_cache, cache_key) {
            parts.headers.remove("x-request-id");
            let entry = edge_cache::Entry { generation, status: parts.status, headers: parts.headers.clone(), body: bytes.clone() };
            cache.insert(key, entry);
            parts.headers.insert("turserver-cache", http::HeaderValue::from_static("miss"));
        }
        resp = hyper::Response::from_parts(parts, full_body(bytes));
    }
    if is_write && resp.status().is_success() {
        if let Some(position) = state.store.write_position() {
            let headers = resp.headers_mut();
            headers.insert(POSITION_HEADER, http::HeaderValue::from(position));
            let cookie = format!("{POSITION_COOKIE}={position}; Path=/; Max-Age=300; SameSite=Lax");
            if let Ok(v) = http::HeaderValue::from_str(&cookie) {
                headers.append(hyper::header::SET_COOKIE, v);
            }
        }
    }
    resp
}

/// Response header carrying the primary's replication index after a write;
/// a read may send it back (or the cookie) to be served only once the edge
/// has caught up with it.
pub const POSITION_HEADER: &str = "turserver-position";
pub const POSITION_COOKIE: &str = "turserver_position";

fn retry_later(status: u16, message: &str) -> hyper::Response<HyperOutgoingBody> {
    let mut r = text_response(status, message);
    r.headers_mut().insert(hyper::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    r
}

/// Counts response body bytes into a metric as they are sent.
struct CountingBody {
    inner: HyperOutgoingBody,
    counter: prometheus_client::metrics::counter::Counter,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = <HyperOutgoingBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `PUT /_turserver/worker`: deploy a worker component to every edge.
async fn deploy_worker(state: &AppState, mut req: hyper::Request<RequestBody>) -> hyper::Response<HyperOutgoingBody> {
    if req.method() != hyper::Method::PUT {
        let mut r = text_response(405, "method not allowed");
        r.headers_mut().insert(hyper::header::ALLOW, http::HeaderValue::from_static("PUT"));
        return r;
    }
    match write_access(state, &mut req) {
        WriteAccess::Granted => {}
        WriteAccess::Missing => return text_response(401, "a write token is required (Authorization: Bearer <token>)"),
        WriteAccess::Denied => return text_response(403, "the write token is not valid"),
    }
    let limited = http_body_util::Limited::new(req.into_body(), workers::MAX_WORKER_SIZE as usize);
    let bytes = match limited.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) => return text_response(413, &format!("worker body refused: {e}")),
    };
    match workers::deploy(state, bytes).await {
        Ok(hash) => json_response(200, serde_json::to_vec(&serde_json::json!({ "version": hash })).unwrap_or_default()),
        Err((status, why)) => text_response(status, &why),
    }
}

/// Reads and removes the `Authorization` header: the worker never sees it.
fn write_access(state: &AppState, req: &mut hyper::Request<RequestBody>) -> WriteAccess {
    let value = req.headers_mut().remove(hyper::header::AUTHORIZATION);
    WriteAccess::judge(value.as_ref().map(|v| v.as_bytes()), state.write_token_digest.as_ref())
}

fn json_response(status: u16, body: Vec<u8>) -> hyper::Response<HyperOutgoingBody> {
    response(status, Some("application/json"), body)
}

/// A complete body in the type every response here carries.
fn full_body(bytes: impl Into<Bytes>) -> HyperOutgoingBody {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// A complete response made by the host, with its `Content-Type` if any.
pub(crate) fn response(
    status: u16,
    content_type: Option<&'static str>,
    body: impl Into<Bytes>,
) -> hyper::Response<HyperOutgoingBody> {
    let mut resp = hyper::Response::new(full_body(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(ct) = content_type {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, http::HeaderValue::from_static(ct));
    }
    resp
}

/// A short plain-text response made by the host.
pub fn text_response(status: u16, message: &str) -> hyper::Response<HyperOutgoingBody> {
    response(status, Some("text/plain; charset=utf-8"), format!("{message}\n"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
