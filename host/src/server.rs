//! The HTTP server: accepts connections, answers host endpoints itself,
//! decides write access, and hands every other request to the worker.

use crate::config::ServeArgs;
use crate::files::{FilesCtx, WriteAccess};
use crate::runtime::Runtime;
use crate::status::SyncStats;
use crate::store::{Mode, Store};
use crate::workers::{self, WorkerSlot};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
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
}

/// Opens the store, loads the worker, binds, and serves until SIGINT/SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Tests (and people) read the address from this first line.
    tracing::info!("listening on http://{addr}");

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let store = match args.primary_http_url() {
        None => Store::open_local(&args.data_dir).await?,
        Some(url) => {
            if args.primary_token.is_none() {
                tracing::warn!("no --primary-token: connecting to the primary without authentication");
            }
            Store::open_replica(&args.data_dir, &url, args.primary_token.as_deref()).await?
        }
    };
    let store = Arc::new(store);
    match store.mode() {
        Mode::Local => tracing::info!(data_dir = %args.data_dir.display(), "serving from a local database"),
        Mode::Replica { url } => tracing::info!(primary = %url, "serving from an embedded replica"),
    }
    let sync_stats = Arc::new(SyncStats::default());
    let _sync = crate::sync::spawn(store.clone(), args.sync_interval, sync_stats.clone());

    let runtime = Arc::new(Runtime::new(
        args.worker_memory_mib << 20,
        args.worker_deadline,
        Some(args.data_dir.join("worker-cache")),
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
    });
    let _watch = match &args.worker {
        Some(path) => workers::spawn_file_watch(state.clone(), path.clone()),
        None => workers::spawn_database_watch(state.clone(), args.sync_interval),
    };
    serve(listener, state, shutdown_signal()).await
}

/// Serves connections on `listener` until `shutdown` resolves, then stops
/// accepting and drains in-flight requests.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(cause = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
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

async fn handle(state: &AppState, mut req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
    match req.uri().path() {
        "/_turserver/health" => return text_response(200, "ok"),
        "/_turserver/status" => return json_response(200, crate::status::render(state)),
        "/_turserver/worker" => return deploy_worker(state, req).await,
        _ => {}
    }
    let access = write_access(state, &mut req);
    let files = FilesCtx { store: state.store.clone(), access, max_upload: state.max_upload, progress: None };
    let worker = state.workers.current();
    let version = http::HeaderValue::from_str(&worker.hash[..16]).ok();
    let mut resp = state.runtime.handle(worker, req, files).await;
    if let Some(v) = version {
        resp.headers_mut().insert("x-turserver-worker", v);
    }
    resp
}

/// `PUT /_turserver/worker`: deploy a worker component to every edge.
async fn deploy_worker(state: &AppState, mut req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
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
fn write_access(state: &AppState, req: &mut hyper::Request<Incoming>) -> WriteAccess {
    let Some(value) = req.headers_mut().remove(hyper::header::AUTHORIZATION) else {
        return WriteAccess::Missing;
    };
    let token = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match (token, &state.write_token_digest) {
        (Some(t), Some(expected)) if Sha256::digest(t.as_bytes()).as_slice() == expected => WriteAccess::Granted,
        _ => WriteAccess::Denied,
    }
}

fn json_response(status: u16, body: Vec<u8>) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(body)).map_err(|never: Infallible| match never {}).boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

/// A short plain-text response made by the host.
pub fn text_response(status: u16, message: &str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(format!("{message}\n"))).map_err(|never: Infallible| match never {}).boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("static header"));
    resp
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
