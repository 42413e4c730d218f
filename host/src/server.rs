//! The HTTP server: accepts connections, answers host endpoints itself,
//! decides write access, and hands every other request to the worker.

use crate::config::ServeArgs;
use crate::files::{FilesCtx, WriteAccess};
use crate::runtime::{Runtime, Worker};
use crate::store::{Mode, Store};
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
    pub runtime: Runtime,
    pub worker: Worker,
    pub store: Arc<Store>,
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
    let _sync = crate::sync::spawn(store.clone(), args.sync_interval);

    let runtime = Runtime::new(args.worker_memory_mib << 20)?;
    let worker = match &args.worker {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading the worker {}", path.display()))?;
            runtime.load(&bytes).with_context(|| format!("loading the worker {}", path.display()))?
        }
        None => runtime.load(crate::runtime::DEFAULT_WORKER).context("loading the built-in worker")?,
    };
    tracing::info!(version = %worker.hash, "worker ready");
    if args.write_token.is_none() {
        tracing::warn!("no --write-token: every write will be refused");
    }
    let state = Arc::new(AppState {
        runtime,
        worker,
        store,
        write_token_digest: args.write_token.as_deref().map(|t| Sha256::digest(t.as_bytes()).into()),
        max_upload: args.max_upload_size,
    });
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
    if req.uri().path() == "/_turserver/health" {
        return text_response(200, "ok");
    }
    let access = write_access(state, &mut req);
    let files = FilesCtx { store: state.store.clone(), access, max_upload: state.max_upload };
    state.runtime.handle(&state.worker, req, files).await
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
