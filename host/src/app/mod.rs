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
//! - `sites`: many sites on one host (`--sites`): the sites file, routing
//!   by host, opening sites on demand and closing idle ones.
//! - `client`: the client commands (`deploy`, `put`, `get`, `ls`, `rm`,
//!   `status`, `worker deploy`), HTTP clients of a running edge.

mod client;
mod config;
mod dashboard;
mod feed;
mod keys;
mod kv;
mod routes;
mod sites;

pub use client::{deploy, deploy_worker, get, keys_add, keys_change, keys_generate, keys_ls, ls, put, rm, status, token_issue, url_sign};
pub use config::{Cli, Command, KeysCommand, ServeArgs, TokenCommand, UrlCommand, WorkerCommand};

use crate::http::{self, Connections, Limits, TokenDigest};
use crate::ops::{Metrics, Usage, UsageSources};
use crate::pipeline::{Keys, Pipeline, ResponseCache};
use crate::sidecar::Sidecar;
use crate::store::{redact_url, Mode, Quota, Retention, Store, SyncPlan, Upkeep};
use crate::task::AbortOnDrop;
use crate::wasm::{Runtime, RuntimeConfig, SiteRulesCache, Workers};
use anyhow::Context;
use routes::{Routes, Target};
use sites::Database;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One site's state, shared by every request for it: with `--sites`, one
/// per open site; otherwise the host's only one.
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

/// What keeps one site running (its syncs, worker watch, key refresh,
/// usage sampler); dropped, it stops.
pub(crate) struct SiteTasks {
    _upkeep: Upkeep,
    _watch: AbortOnDrop,
    _sweep: AbortOnDrop,
    _jwks: Option<AbortOnDrop>,
    _usage: AbortOnDrop,
    _queue: Option<AbortOnDrop>,
}

/// What keeps running while the host serves; dropped, it stops.
struct Running {
    _site: Option<SiteTasks>,
    _sites: Option<sites::Tasks>,
    /// The sidecar's serve loop, drained on shutdown.
    sidecar: Option<tokio::task::JoinHandle<()>>,
}

/// What opening a site needs besides the serve flags.
pub(crate) struct SiteSetup {
    pub data_dir: PathBuf,
    pub database: Database,
    pub rebuild: bool,
    pub write_token: Option<String>,
    pub sync_interval: std::time::Duration,
    pub quota: Quota,
    pub max_file_size: Option<u64>,
}

/// What every site shares: the serve flags, the wasm runtime, shutdown.
pub(crate) struct Shared {
    pub args: ServeArgs,
    pub runtime: Arc<Runtime>,
    pub stopping: watch::Receiver<bool>,
}

/// Binds, serves at once (answering 503 until ready), opens the store (or
/// reads the sites file), loads the worker, and serves until SIGINT/SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    // A broken sites file stops the start before anything binds.
    let sites_config = match &args.sites {
        Some(source) => Some(sites::load(source)?),
        None => None,
    };
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

    let target = match sites_config {
        Some(_) => Target::Many(OnceLock::new()),
        None => Target::One(OnceLock::new()),
    };
    let routes = Arc::new(Routes { target, metrics: Metrics::default() });
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
    let starting = async {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
        let shared = Arc::new(Shared { args: args.clone(), runtime: runtime(&args)?, stopping: stopped.clone() });
        routes.metrics.register(|r| shared.runtime.register_metrics(r));
        match (&routes.target, sites_config) {
            (Target::Many(cell), Some(config)) => {
                let (sites, tasks) = sites::Sites::start(shared, config, &routes.metrics);
                let _ = cell.set(sites);
                anyhow::Ok(Running { _site: None, _sites: Some(tasks), sidecar: None })
            }
            (Target::One(cell), _) => {
                let (app, running) = start(shared, &routes.metrics, connections, shutdown(stopped.clone())).await?;
                let _ = cell.set(app);
                Ok(running)
            }
            (Target::Many(_), None) => unreachable!("many sites without a sites file"),
        }
    };
    // A signal while starting ends the server task: stop starting then.
    let running = tokio::select! {
        started = starting => started?,
        ended = &mut server => return ended.context("the server task failed"),
    };
    server.await.context("the server task failed")?;
    if let Some(sidecar) = running.sidecar {
        let _ = sidecar.await;
    }
    Ok(())
}

/// The wasm runtime every site's workers run in.
fn runtime(args: &ServeArgs) -> anyhow::Result<Arc<Runtime>> {
    Ok(Arc::new(Runtime::new(RuntimeConfig {
        worker_memory_bytes: args.worker_memory_mib << 20,
        deadline: args.worker_deadline,
        cache_dir: Some(args.data_dir.join("worker-cache")),
        max_instances: args.max_instances,
        send_timeout: args.send_timeout,
    })?))
}

/// The single site of a host started without `--sites`: its store and
/// worker, its metrics on the host's registry, and the sidecar.
async fn start(
    shared: Arc<Shared>,
    metrics: &Metrics,
    connections: Arc<Connections>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Arc<App>, Running)> {
    let args = &shared.args;
    let database = match args.primary_http_url() {
        None => Database::Local,
        Some(url) => {
            if args.primary_token.is_none() {
                tracing::warn!("no --primary-token: connecting to the primary without authentication");
            }
            Database::Replica { url, namespace: None, token: args.primary_token.clone() }
        }
    };
    if args.write_token.is_none() {
        tracing::warn!("no --write-token: every write will be refused");
    }
    let setup = SiteSetup {
        data_dir: args.data_dir.clone(),
        database,
        rebuild: args.rebuild_replica,
        write_token: args.write_token.clone(),
        sync_interval: args.sync_interval,
        quota: Quota::default(),
        max_file_size: None,
    };
    let (app, site) = open_site(&shared, setup, metrics.usage.clone()).await?;
    let pipeline = &app.pipeline;
    metrics.register(|r| {
        pipeline.store.register_metrics(r);
        pipeline.register_metrics(r);
    });
    let sidecar = match (args.sidecar_listen, &args.sidecar_token) {
        (Some(addr), Some(token)) => {
            let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the sidecar on {addr}"))?;
            let addr = listener.local_addr().context("reading the sidecar's bound address")?;
            tracing::info!("sidecar listening on http://{addr}");
            let sidecar = Arc::new(Sidecar {
                store: pipeline.store.clone(),
                token: TokenDigest::of(token),
                write_token: pipeline.write_token,
                keys: pipeline.keys.clone(),
                site: pipeline.site.clone(),
                max_upload: args.max_upload_size,
                calls: Default::default(),
            });
            metrics.register(|r| sidecar.register_metrics(r));
            Some(tokio::spawn(http::serve("sidecar", listener, sidecar, sidecar_limits(args), connections, shutdown)))
        }
        _ => None,
    };
    Ok((app, Running { _site: Some(site), _sites: None, sidecar }))
}

/// Opens a site's store and loads its worker; what runs in the background
/// runs as long as the returned [`SiteTasks`] are kept. `usage` is where
/// its requests are recorded.
pub(crate) async fn open_site(shared: &Shared, setup: SiteSetup, usage: Arc<Usage>) -> anyhow::Result<(Arc<App>, SiteTasks)> {
    let args = &shared.args;
    std::fs::create_dir_all(&setup.data_dir)
        .with_context(|| format!("creating the data directory {}", setup.data_dir.display()))?;
    let (store, primary_token) = match &setup.database {
        Database::Local => (Store::open_local(&setup.data_dir).await?, None),
        Database::Replica { url, namespace, token } => {
            let store =
                Store::open_replica(&setup.data_dir, url, token.as_deref(), namespace.as_deref(), setup.rebuild).await?;
            (store, token.clone())
        }
    };
    let store = Arc::new(store);
    store.set_max_commit_group(args.commit_group.into());
    store.set_invalidation(args.cache_invalidation);
    store.set_quota(setup.quota);
    match store.mode() {
        Mode::Local => tracing::info!(data_dir = %setup.data_dir.display(), "serving from a local database"),
        Mode::Replica { url } => tracing::info!(primary = %redact_url(url), "serving from an embedded replica"),
    }
    // With many sites, only those with a primary keep a queue.
    let queue = match (args.write_queue, store.mode()) {
        (true, Mode::Replica { .. }) => Some(store.open_write_queue(&setup.data_dir).await?),
        _ => None,
    };
    let upkeep = store.start_upkeep(SyncPlan {
        interval: setup.sync_interval,
        follow_commits: !args.no_commit_stream,
        primary_token,
        changes: Retention { age: args.changes_keep_for, rows: args.changes_keep },
    })?;
    let workers = Arc::new(Workers::start(shared.runtime.clone(), store.clone(), args.worker.as_ref()).await?);
    let write_token = setup.write_token.as_deref().map(TokenDigest::of);
    let max_file_size = setup.max_file_size.filter(|m| *m < args.max_upload_size);
    let pipeline = Pipeline {
        store: store.clone(),
        workers: workers.clone(),
        write_token,
        keys: Arc::new(Keys::new(store.clone(), args.token_audience.clone(), args.jwks_url.clone())),
        site: Arc::new(SiteRulesCache::default()),
        max_upload: max_file_size.unwrap_or(args.max_upload_size),
        max_file_size,
        cache: (args.response_cache_mib > 0).then(|| ResponseCache::new(args.response_cache_mib << 20)),
        consistency_wait: args.consistency_wait,
    };
    let watch = workers.watch(args.worker.clone(), setup.sync_interval);
    let sweep = workers.sweep_idle();
    let jwks = pipeline.keys.refresh_jwks();
    let cache = pipeline.cache.as_ref().map(|c| (c.hits.clone(), c.misses.clone()));
    let sampler = usage.start(UsageSources { store: store.clone(), cache }, args.usage_interval);
    let app = Arc::new(App {
        pipeline,
        bench_native: args.bench_native,
        stopping: shared.stopping.clone(),
        idle_timeout: args.idle_timeout,
        usage,
        usage_interval: args.usage_interval,
    });
    Ok((app, SiteTasks { _upkeep: upkeep, _watch: watch, _sweep: sweep, _jwks: jwks, _usage: sampler, _queue: queue }))
}

/// The connection limit: `--max-connections`, else what the file descriptor
/// limit leaves room for (the store, the compiled-worker cache, the
/// primary's connections and the answers to connections refused per
/// address need some).
fn max_connections(args: &ServeArgs) -> usize {
    let fds = http::raise_fd_limit();
    let room = fds.saturating_sub(256 + http::REFUSING_AT_ONCE as u64).max(64) as usize;
    match args.max_connections {
        Some(n) if n > room => {
            tracing::warn!(max_connections = n, fd_limit = fds, "--max-connections is above what the file descriptor limit allows");
            n
        }
        Some(n) => n,
        None => room.min(1 << 20),
    }
}

/// The sidecar's callers are the runtimes of one deployment, pooling their
/// connections from a few addresses: no limit per address.
fn sidecar_limits(args: &ServeArgs) -> Limits {
    Limits { per_ip: None, ..args.limits() }
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
            per_ip: self.max_connections_per_ip,
        }
    }
}
