//! The application: wires every layer together. The only module that names
//! them all; startup, the public port's routes and shutdown live here.
//!
//! - `config`: command line and environment, validated up front.
//! - `routes`: the host's own endpoints, and the rest to the pipeline.
//! - `dashboard`: the browser dashboard's embedded files
//!   (`/_turserver/ui/`) and the usage document (`/_turserver/usage`).
//! - `feed`: the change feed (`/_api/changes`, `/_api/events`).
//! - `keys`: the key set's endpoints and signed links.
//! - `kv`: the key-value API (`/_api/kv`).
//! - `client`: the client commands (`deploy`, `put`, `get`, `ls`, `rm`,
//!   `status`, `worker deploy`), HTTP clients of a running edge.

mod client;
mod config;
mod dashboard;
mod feed;
mod keys;
mod kv;
mod routes;

pub use client::{deploy, deploy_worker, get, keys_add, keys_change, keys_generate, keys_ls, ls, put, rm, status, token_issue, url_sign};
pub use config::{Cli, Command, KeysCommand, ServeArgs, TokenCommand, UrlCommand, WorkerCommand};

use crate::http::{self, Connections, Limits, TokenDigest};
use crate::ops::{Metrics, Usage, UsageSources};
use crate::pipeline::{Keys, Pipeline, ResponseCache};
use crate::sidecar::Sidecar;
use crate::store::{redact_url, Mode, Retention, Store, SyncPlan, Upkeep};
use crate::task::AbortOnDrop;
use crate::wasm::{Runtime, RuntimeConfig, SiteRulesCache, Workers};
use anyhow::Context;
use routes::Routes;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// State shared by every request once the host has started.
pub(crate) struct App {
    pub pipeline: Pipeline,
    /// Answer `/_turserver/native/{path}` straight from the store.
    pub bench_native: bool,
    /// Becomes true on shutdown: event streams end then.
    pub stopping: watch::Receiver<bool>,
    /// How long a connection may stay silent: long polls answer, and event
    /// streams send a heartbeat, well within it.
    pub idle_timeout: std::time::Duration,
    /// The last hour's usage, and how often it gains a point.
    pub usage: Arc<Usage>,
    pub usage_interval: std::time::Duration,
}

/// What keeps running while the host serves; dropped, it stops.
struct Running {
    _upkeep: Upkeep,
    _watch: AbortOnDrop,
    _sweep: AbortOnDrop,
    _jwks: Option<AbortOnDrop>,
    _usage: AbortOnDrop,
    /// The sidecar's serve loop, drained on shutdown.
    sidecar: Option<tokio::task::JoinHandle<()>>,
}

/// Binds, serves at once (answering 503 until ready), opens the store,
/// loads the worker, and serves until SIGINT/SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Tests (and people) read the address from this first line.
    tracing::info!("listening on http://{addr}");

    // One signal stops both ports.
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        http::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let routes = Arc::new(Routes { app: OnceLock::new(), metrics: Metrics::default() });
    let connections = Arc::new(Connections::new(max_connections(&args)));
    routes.metrics.register(|r| connections.register_metrics(r));
    let limits = args.limits();
    let mut server = tokio::spawn(http::serve(
        "public port",
        listener,
        routes.clone(),
        limits,
        connections.clone(),
        shutdown(stopped.clone()),
    ));
    // A signal while starting ends the server task: stop starting then.
    let (app, running) = tokio::select! {
        started = start(&args, &routes.metrics, connections, stopped.clone(), shutdown(stopped)) => started?,
        ended = &mut server => return ended.context("the server task failed"),
    };
    let _ = routes.app.set(app);
    server.await.context("the server task failed")?;
    if let Some(sidecar) = running.sidecar {
        let _ = sidecar.await;
    }
    Ok(())
}

/// Opens the store and loads the worker; what runs in the background runs
/// as long as the returned [`Running`] is kept.
async fn start(
    args: &ServeArgs,
    metrics: &Metrics,
    connections: Arc<Connections>,
    stopping: watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Arc<App>, Running)> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let store = match args.primary_http_url() {
        None => Store::open_local(&args.data_dir).await?,
        Some(url) => {
            if args.primary_token.is_none() {
                tracing::warn!("no --primary-token: connecting to the primary without authentication");
            }
            let token = args.primary_token.as_deref();
            Store::open_replica(&args.data_dir, &url, token, args.rebuild_replica).await?
        }
    };
    let store = Arc::new(store);
    store.set_max_commit_group(args.commit_group.into());
    store.set_invalidation(args.cache_invalidation);
    match store.mode() {
        Mode::Local => tracing::info!(data_dir = %args.data_dir.display(), "serving from a local database"),
        Mode::Replica { url } => tracing::info!(primary = %redact_url(url), "serving from an embedded replica"),
    }
    let upkeep = store.start_upkeep(SyncPlan {
        interval: args.sync_interval,
        follow_commits: !args.no_commit_stream,
        primary_token: args.primary_token.clone(),
        changes: Retention { age: args.changes_keep_for, rows: args.changes_keep },
    })?;

    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        worker_memory_bytes: args.worker_memory_mib << 20,
        deadline: args.worker_deadline,
        cache_dir: Some(args.data_dir.join("worker-cache")),
        max_instances: args.max_instances,
        send_timeout: args.send_timeout,
    })?);
    let workers = Arc::new(Workers::start(runtime.clone(), store.clone(), args.worker.as_ref()).await?);
    if args.write_token.is_none() {
        tracing::warn!("no --write-token: every write will be refused");
    }
    let write_token = args.write_token.as_deref().map(TokenDigest::of);
    let pipeline = Pipeline {
        store: store.clone(),
        workers: workers.clone(),
        write_token,
        keys: Arc::new(Keys::new(store.clone(), args.token_audience.clone(), args.jwks_url.clone())),
        site: Arc::new(SiteRulesCache::default()),
        max_upload: args.max_upload_size,
        cache: (args.response_cache_mib > 0).then(|| ResponseCache::new(args.response_cache_mib << 20)),
        consistency_wait: args.consistency_wait,
    };
    metrics.register(|r| {
        store.register_metrics(r);
        runtime.register_metrics(r);
        pipeline.register_metrics(r);
    });
    let sidecar = match (args.sidecar_listen, &args.sidecar_token) {
        (Some(addr), Some(token)) => {
            let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the sidecar on {addr}"))?;
            let addr = listener.local_addr().context("reading the sidecar's bound address")?;
            tracing::info!("sidecar listening on http://{addr}");
            let sidecar = Arc::new(Sidecar {
                store: store.clone(),
                token: TokenDigest::of(token),
                write_token,
                keys: pipeline.keys.clone(),
                site: pipeline.site.clone(),
                max_upload: args.max_upload_size,
                calls: Default::default(),
            });
            metrics.register(|r| sidecar.register_metrics(r));
            Some(tokio::spawn(http::serve("sidecar", listener, sidecar, args.limits(), connections, shutdown)))
        }
        _ => None,
    };
    let watch = workers.watch(args.worker.clone(), args.sync_interval);
    let sweep = workers.sweep_idle();
    let jwks = pipeline.keys.refresh_jwks();
    let cache = pipeline.cache.as_ref().map(|c| (c.hits.clone(), c.misses.clone()));
    let usage = metrics.usage.start(UsageSources { store: store.clone(), cache }, args.usage_interval);
    let app = Arc::new(App {
        pipeline,
        bench_native: args.bench_native,
        stopping,
        idle_timeout: args.idle_timeout,
        usage: metrics.usage.clone(),
        usage_interval: args.usage_interval,
    });
    Ok((app, Running { _upkeep: upkeep, _watch: watch, _sweep: sweep, _jwks: jwks, _usage: usage, sidecar }))
}

/// The connection limit: `--max-connections`, else what the file descriptor
/// limit leaves room for (the store, the compiled-worker cache and the
/// primary's connections need some).
fn max_connections(args: &ServeArgs) -> usize {
    let fds = http::raise_fd_limit();
    let room = fds.saturating_sub(256).max(64) as usize;
    match args.max_connections {
        Some(n) if n > room => {
            tracing::warn!(max_connections = n, fd_limit = fds, "--max-connections is above what the file descriptor limit allows");
            n
        }
        Some(n) => n,
        None => room.min(1 << 20),
    }
}

impl ServeArgs {
    /// What each connection may take.
    fn limits(&self) -> Limits {
        Limits {
            header_read: self.header_read_timeout,
            idle: self.idle_timeout,
            send: self.send_timeout,
            body: self.body_timeout,
            h2_streams: self.h2_max_streams,
            instances: self.instances_per_connection,
        }
    }
}
