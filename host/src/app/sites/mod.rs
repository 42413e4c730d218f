//! Many sites on one host (`--sites`), each with its own database, token,
//! worker and limits, chosen by the request's host.
//!
//! - `file`: the sites file (TOML), checked with line numbers.
//! - `host`: a request's host, normalised, and the lookup by host.
//!
//! A site is opened on its first request (its replica synced before it
//! answers), closed after `--site-idle` without requests or when opening
//! another would pass `--max-open-sites` (the least recently used goes
//! first); a closed site's replica stays on disk for a fast reopen. The
//! sites file is read again on SIGHUP and when it changes: sites whose entry
//! is unchanged keep running, a broken file is refused and the sites as
//! they were keep serving.

mod file;
mod host;

pub use file::{Database, SiteSpec, SitesConfig};

use super::{open_site, App, Shared, SiteSetup, SiteTasks};
use crate::http::{self, retry_later, text_response, Request, Response};
use crate::ops::{Metrics, Usage};
use crate::store::{redact_url, Totals};
use crate::task::AbortOnDrop;
use arc_swap::{ArcSwap, ArcSwapOption};
use futures::future::{BoxFuture, FutureExt, Shared as SharedFuture};
use host::HostTable;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often the sites file is looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Reads the sites file (or folder), taking `*_token_env` from the
/// environment.
pub fn load(source: &Path) -> anyhow::Result<SitesConfig> {
    file::load(source, &|name| std::env::var(name).ok())
}

/// The configured sites, and which are open.
pub(crate) struct Sites {
    source: PathBuf,
    shared: Arc<Shared>,
    table: ArcSwap<Table>,
    /// `last_used` counts milliseconds from here.
    epoch: Instant,
    metrics: SiteMetrics,
    /// One reload, or one round of closing, at a time.
    changing: Mutex<()>,
}

struct Table {
    slots: Vec<Arc<Slot>>,
    hosts: HostTable,
    default: Option<usize>,
}

/// One configured site: open or not.
struct Slot {
    spec: SiteSpec,
    open: ArcSwapOption<OpenSite>,
    /// The opening under way, which every request for the site waits on.
    pending: Mutex<Option<Opening>>,
    /// Milliseconds after `Sites::epoch` of the last request.
    last_used: AtomicU64,
    /// Files and bytes when last seen open.
    known: Mutex<Option<Totals>>,
    /// Removed or changed by a reload: not to be opened again.
    retired: AtomicBool,
    /// Its series of `site_requests`, looked up once rather than per
    /// request.
    requests: Counter,
}

struct OpenSite {
    app: Arc<App>,
    since: SystemTime,
    _tasks: SiteTasks,
}

type Opening = SharedFuture<BoxFuture<'static, Result<Arc<App>, Arc<str>>>>;

/// The sites' background work: closing idle sites, reloading the file.
pub(crate) struct Tasks(#[allow(dead_code)] Vec<AbortOnDrop>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabel {
    site: String,
}

/// Per-site series; bounded, since sites are configured.
#[derive(Default)]
struct SiteMetrics {
    requests: Family<SiteLabel, Counter>,
    open: Family<SiteLabel, Gauge>,
    opens: Family<SiteLabel, Counter>,
    bytes: Family<SiteLabel, Counter>,
    reloads: Counter,
    reload_failures: Counter,
}

impl Table {
    fn new(slots: Vec<Arc<Slot>>, default: Option<&str>) -> Table {
        let mut hosts = HostTable::default();
        for (i, slot) in slots.iter().enumerate() {
            for pattern in &slot.spec.hosts {
                hosts.insert(pattern, i);
            }
        }
        let default = default.and_then(|d| slots.iter().position(|s| s.spec.name == d));
        Table { slots, hosts, default }
    }
}

impl Slot {
    fn new(spec: SiteSpec, metrics: &SiteMetrics) -> Arc<Slot> {
        let requests = metrics.requests.get_or_create(&SiteLabel { site: spec.name.clone() }).clone();
        Arc::new(Slot {
            spec,
            open: ArcSwapOption::empty(),
            pending: Mutex::new(None),
            last_used: AtomicU64::new(0),
            known: Mutex::new(None),
            retired: AtomicBool::new(false),
            requests,
        })
    }

    fn label(&self) -> SiteLabel {
        SiteLabel { site: self.spec.name.clone() }
    }
}

impl Sites {
    /// Serves `config`; the returned tasks close idle sites and reload the
    /// sites file.
    pub fn start(shared: Arc<Shared>, config: SitesConfig, metrics: &Metrics) -> (Arc<Sites>, Tasks) {
        let source = shared.args.sites.clone().unwrap_or_default();
        let site_metrics = SiteMetrics::default();
        let slots = config.sites.into_iter().map(|spec| Slot::new(spec, &site_metrics)).collect();
        let sites = Arc::new(Sites {
            source,
            shared,
            table: ArcSwap::from_pointee(Table::new(slots, config.default.as_deref())),
            epoch: Instant::now(),
            metrics: site_metrics,
            changing: Mutex::new(()),
        });
        metrics.register(|r| {
            let m = &sites.metrics;
            r.register("site_requests", "Requests routed to each site", m.requests.clone());
            r.register("site_open", "Whether each site is open (1) or closed (0)", m.open.clone());
            r.register("site_opens", "Times each site was opened", m.opens.clone());
            r.register("site_response_bytes", "Response body bytes sent for each site", m.bytes.clone());
            r.register("sites_reloads", "Sites file reloads that took effect", m.reloads.clone());
            r.register("sites_reload_failures", "Sites file reloads refused (the old sites kept serving)", m.reload_failures.clone());
        });
        let table = sites.table.load();
        tracing::info!(sites = table.slots.len(), default = ?table.default.map(|i| &table.slots[i].spec.name), "serving many sites");
        let tasks = vec![
            AbortOnDrop::spawn(sites.clone().close_idle()),
            AbortOnDrop::spawn(sites.clone().watch_file()),
        ];
        (sites, Tasks(tasks))
    }

    /// The site a request is for, opened if it was not; or the answer that
    /// says why there is none.
    pub async fn resolve(self: &Arc<Self>, req: &Request) -> Result<Arc<App>, Response> {
        let table = self.table.load();
        let slot = match request_host(req) {
            Ok(Some(host)) => match table.hosts.find(&host).or(table.default) {
                Some(i) => table.slots[i].clone(),
                None => return Err(text_response(404, &format!("no site on this server answers to the host {host:?}"))),
            },
            Ok(None) => match table.default {
                Some(i) => table.slots[i].clone(),
                None => {
                    return Err(text_response(
                        400,
                        "the request names no host: send a Host header naming one of this server's sites",
                    ))
                }
            },
            Err(why) => return Err(text_response(400, &format!("the request's host is not a host name: {why}"))),
        };
        drop(table);
        slot.requests.inc();
        self.app(&slot).await
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The slot's app, opening the site if needed. Requests wait for it up
    /// to `--consistency-wait`, then get 503 while it goes on opening.
    async fn app(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<Arc<App>, Response> {
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        if let Some(open) = &*slot.open.load() {
            return Ok(open.app.clone());
        }
        let opening = {
            let mut pending = slot.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(open) = &*slot.open.load() {
                return Ok(open.app.clone());
            }
            pending
                .get_or_insert_with(|| {
                    let task = tokio::spawn(self.clone().open(slot.clone()));
                    async move { task.await.unwrap_or_else(|e| Err(Arc::from(format!("opening stopped: {e}")))) }
                        .boxed()
                        .shared()
                })
                .clone()
        };
        let name = &slot.spec.name;
        match tokio::time::timeout(self.shared.args.consistency_wait, opening).await {
            Ok(Ok(app)) => Ok(app),
            Ok(Err(_)) => Err(retry_later(503, &format!("the site {name:?} could not be opened; the server log has the cause"))),
            Err(_) => Err(retry_later(503, &format!("the site {name:?} is opening; retry in a moment"))),
        }
    }

    /// Opens a site's store and worker, then closes the least recently used
    /// sites past `--max-open-sites`.
    async fn open(self: Arc<Self>, slot: Arc<Slot>) -> Result<Arc<App>, Arc<str>> {
        let started = Instant::now();
        let spec = &slot.spec;
        let args = &self.shared.args;
        let setup = SiteSetup {
            data_dir: args.data_dir.join("sites").join(&spec.name),
            database: spec.database.clone(),
            rebuild: false,
            write_token: spec.write_token.clone(),
            sync_interval: spec.sync_interval.unwrap_or(args.sync_interval),
            quota: spec.quota,
            max_file_size: spec.max_file_size,
        };
        // Its usage counts bytes on the site's /metrics series, which
        // outlives the opening.
        let usage = Arc::new(Usage::new(self.metrics.bytes.get_or_create(&slot.label()).clone()));
        let span = tracing::info_span!("site", name = %spec.name);
        let opened = tracing::Instrument::instrument(open_site(&self.shared, setup, usage), span).await;
        let result = match opened {
            Ok((app, tasks)) => {
                slot.open.store(Some(Arc::new(OpenSite { app: app.clone(), since: SystemTime::now(), _tasks: tasks })));
                self.metrics.open.get_or_create(&slot.label()).set(1);
                self.metrics.opens.get_or_create(&slot.label()).inc();
                tracing::info!(site = %spec.name, ms = started.elapsed().as_millis() as u64, "site opened");
                Ok(app)
            }
            Err(e) => {
                tracing::error!(site = %spec.name, cause = %format!("{e:#}"), "the site could not be opened");
                Err(Arc::from(format!("{e:#}")))
            }
        };
        *slot.pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if slot.retired.load(Ordering::Acquire) {
            self.close(&slot, "removed from the sites file");
        }
        self.close_over_limit(&slot);
        result
    }

    /// Closes a site: its background work stops now, its memory goes once
    /// the requests under way end.
    fn close(&self, slot: &Arc<Slot>, why: &str) {
        let Some(open) = slot.open.swap(None) else { return };
        self.metrics.open.get_or_create(&slot.label()).set(0);
        tracing::info!(site = %slot.spec.name, why, "site closed");
        let slot = slot.clone();
        tokio::spawn(async move {
            if let Ok(totals) = open.app.pipeline.store.totals().await {
                *slot.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(totals);
            }
            drop(open);
        });
    }

    /// Closes the least recently used open sites (not `keep`) past
    /// `--max-open-sites`.
    fn close_over_limit(&self, keep: &Arc<Slot>) {
        let _one = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let table = self.table.load();
        let mut open: Vec<&Arc<Slot>> = table.slots.iter().filter(|s| s.open.load().is_some()).collect();
        let max = self.shared.args.max_open_sites;
        if open.len() <= max {
            return;
        }
        open.sort_by_key(|s| s.last_used.load(Ordering::Relaxed));
        let mut excess = open.len() - max;
        for slot in open {
            if excess == 0 {
                break;
            }
            if !Arc::ptr_eq(slot, keep) {
                self.close(slot, "more than --max-open-sites are open; this one was used least recently");
                excess -= 1;
            }
        }
    }

    /// Closes sites without a request for `--site-idle`.
    async fn close_idle(self: Arc<Self>) {
        let idle = self.shared.args.site_idle;
        let mut ticks = tokio::time::interval((idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(30)));
        loop {
            ticks.tick().await;
            let now = self.now_ms();
            let table = self.table.load();
            for slot in &table.slots {
                let quiet = now.saturating_sub(slot.last_used.load(Ordering::Relaxed));
                if quiet >= idle.as_millis() as u64 && slot.open.load().is_some() {
                    self.close(slot, "idle");
                }
            }
        }
    }

    /// Reads the sites file again on SIGHUP, and when its files change.
    async fn watch_file(self: Arc<Self>) {
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(cause = %e, "SIGHUP cannot reload the sites file; changes to it still do");
                None
            }
        };
        let mut seen = fingerprint(&self.source);
        loop {
            let hangup = async {
                match &mut hangups {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = hangup => {
                    seen = fingerprint(&self.source);
                    self.reload("SIGHUP");
                }
                _ = tokio::time::sleep(RELOAD_CHECK) => {
                    let now = fingerprint(&self.source);
                    if now != seen {
                        seen = now;
                        self.reload("the sites file changed");
                    }
                }
            }
        }
    }

    /// Applies the sites file as it is now, or keeps the sites as they are
    /// when it is broken.
    fn reload(&self, why: &str) {
        let config = match load(&self.source) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.reload_failures.inc();
                tracing::error!(cause = %format!("{e:#}"), "the sites file was not reloaded; the sites as they were keep serving");
                return;
            }
        };
        let _one = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.table.load_full();
        let (mut kept, mut added) = (0, 0);
        let mut slots = Vec::with_capacity(config.sites.len());
        for spec in config.sites {
            match old.slots.iter().find(|s| s.spec == spec) {
                Some(same) => {
                    kept += 1;
                    slots.push(same.clone());
                }
                None => {
                    added += 1;
                    slots.push(Slot::new(spec, &self.metrics));
                }
            }
        }
        let gone: Vec<Arc<Slot>> = old.slots.iter().filter(|s| !slots.iter().any(|n| Arc::ptr_eq(n, s))).cloned().collect();
        self.table.store(Arc::new(Table::new(slots, config.default.as_deref())));
        drop(_one);
        for slot in &gone {
            slot.retired.store(true, Ordering::Release);
            self.close(slot, "removed or changed in the sites file");
        }
        self.metrics.reloads.inc();
        tracing::info!(why, unchanged = kept, new_or_changed = added, removed_or_changed = gone.len(), "sites file reloaded");
    }

    /// `/_turserver/status` with many sites: every site, open or not.
    pub async fn status(&self) -> Response {
        let table = self.table.load_full();
        let mut sites = Vec::with_capacity(table.slots.len());
        let mut open_count = 0;
        for slot in &table.slots {
            let spec = &slot.spec;
            let open = slot.open.load_full();
            let (mode, primary, namespace) = match &spec.database {
                Database::Local => ("local", None, None),
                Database::Replica { url, namespace, .. } => ("replica", Some(redact_url(url)), namespace.clone()),
            };
            let mut entry = serde_json::json!({
                "name": spec.name,
                "hosts": spec.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                "state": if open.is_some() { "open" } else { "closed" },
                "mode": mode,
                "primary": primary,
                "namespace": namespace,
                "limits": {
                    "max_files": spec.quota.max_files,
                    "max_bytes": spec.quota.max_bytes,
                    "max_file_size": spec.max_file_size,
                },
            });
            let totals = match &open {
                Some(open) => {
                    open_count += 1;
                    let store = &open.app.pipeline.store;
                    entry["open_since"] = humantime::format_rfc3339_millis(open.since).to_string().into();
                    entry["worker"] = open.app.pipeline.workers.active().worker.hash.clone().into();
                    if let Database::Replica { .. } = spec.database {
                        entry["sync"] = serde_json::to_value(store.sync_stats().snapshot()).unwrap_or_default();
                    }
                    match store.totals().await {
                        Ok(t) => {
                            *slot.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                            Some(t)
                        }
                        Err(_) => None,
                    }
                }
                None => *slot.known.lock().unwrap_or_else(|e| e.into_inner()),
            };
            entry["files"] = totals.map(|t| t.files).into();
            entry["bytes"] = totals.map(|t| t.bytes).into();
            sites.push(entry);
        }
        let doc = serde_json::json!({
            "mode": "sites",
            "default": table.default.map(|i| table.slots[i].spec.name.clone()),
            "open": open_count,
            "max_open": self.shared.args.max_open_sites,
            "sites": sites,
        });
        http::json_response(200, serde_json::to_vec_pretty(&doc).unwrap_or_default())
    }
}

/// The request's host, normalised: the h2 `:authority`, else the `Host`
/// header; `None` when it names none (HTTP/1.0).
fn request_host(req: &Request) -> Result<Option<String>, &'static str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().rsplit('@').next().unwrap_or_default().to_string(),
        None => match req.headers().get(hyper::header::HOST) {
            Some(v) => v.to_str().map_err(|_| "the Host header is not text")?.to_string(),
            None => return Ok(None),
        },
    };
    host::normalize_request_host(&raw).map(Some)
}

/// What changes when the sites file is edited: each file's name, size and
/// modification time.
fn fingerprint(source: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    file::files(source)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}
