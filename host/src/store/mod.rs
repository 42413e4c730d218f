//! The file store: a libSQL database that is either a local file (embedded
//! default) or an embedded replica of a primary.
//!
//! Bodies up to one chunk are stored inline in `files.content`; larger ones
//! are written as chunks under a fresh `blob_id` before the `files` row that
//! publishes them, so a reader never sees half a file and no statement
//! carries more than one chunk (the primary limits message sizes).
//!
//! The store owns its background work ([`Upkeep`]: the replica's syncs
//! and garbage collection) and its replication state ([`SyncStats`]).
//!
//! - `reads`: metadata, bodies and listings, through a read cache.
//! - `writes`: deletes, the site document, conditional-write checks, GC.
//! - `upload`: staging bodies (and their encodings), uploads and batches.
//! - `publish`: making staged files visible in one transaction, in groups.
//! - `quota`: a site's limits on its files and bytes, checked as it publishes.
//! - `commit`: group commit of single uploads that finish together.
//! - `replication`: syncs, positions, read-your-writes waits, sync stats.
//! - `replica`: opening, checking and rebuilding the embedded replica.
//! - `follow`: syncing as the primary commits, from its replication stream.
//! - `upkeep`: the background sync loops and garbage collector.
//! - `pool`: idle connections kept for reuse.
//! - `changes`: the change log: pages after a cursor, waking waiters,
//!   pruning.
//! - `freshness`: which cached reads a new generation made stale, path by
//!   path from the change log.
//! - `queue`: writes kept on the edge while the primary is away
//!   (`--write-queue`), shown to its reads, applied in order on return.
//! - `kv`: key-value entries with expiry and compare-and-set.
//! - `schema`: versioned migrations, run through the primary.
//! - `sql`: rows copied out of statements, with typed getters.
//! - `paths`: the host's own check of the paths workers write.
//! - `error`: failures, classified by what a caller should do.

pub(crate) mod changes;
mod commit;
mod error;
mod follow;
mod freshness;
mod kv;
mod paths;
mod pool;
mod publish;
mod queue;
mod quota;
mod reads;
mod replica;
mod replication;
mod schema;
mod sql;
mod upkeep;
mod upload;
mod writes;

pub use changes::{Change, ChangePage, FeedError, Retention, MAX_PAGE as MAX_CHANGES_PAGE};
pub use error::StoreError;
pub use freshness::{Invalidation, Reads};
pub use kv::{validate_key, KvExpect, KV_PATH_PREFIX, MAX_KEYS_PAGE, MAX_VALUE};
pub use paths::validate_path;
pub use queue::{QueuedUpload, WriteQueue};
pub use quota::{LimitExceeded, Quota, Totals};
pub use reads::Reader;
pub use replication::{redact_url, SyncSnapshot, SyncStats};
pub use upkeep::{SyncPlan, Upkeep};
pub use upload::{Batch, Expect, Upload};

use anyhow::Context;
use libsql::{Connection, Database};
use sql::query_all;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Size of a body chunk. One chunk is one statement to the primary: well
/// under its message limit, large enough that a 20 MiB upload is 20 writes.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Most entries one listing page returns.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Staged uploads older than this are garbage (their writer died).
pub const STALE_UPLOAD_SECS: i64 = 3600;

/// Whether the database is a local file or a replica of a primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Local,
    Replica { url: String },
}

/// Metadata of one stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub path: String,
    pub version: u64,
    pub size: u64,
    pub content_type: String,
    pub hash: String,
    pub last_modified: u64,
    pub created: u64,
    /// Stored content codings and their sizes.
    pub encodings: Vec<(String, u64)>,
}

pub struct Store {
    db: Database,
    mode: Mode,
    /// What syncs with the primary record.
    stats: SyncStats,
    /// Changes whenever the local database may have changed (a write here,
    /// or a sync that brought frames): what caches of its content check.
    generation: AtomicU64,
    /// Which cached reads each generation made stale.
    fresh: freshness::Freshness,
    /// Tells waiters (the change feed) of each new generation.
    notify: tokio::sync::watch::Sender<u64>,
    /// The change log's latest sequence as of a generation.
    latest_change: tokio::sync::Mutex<Option<(u64, u64)>>,
    /// The change log's pruned sequences as of a generation.
    pruned: Mutex<Option<(u64, u64)>>,
    /// Pages of the change log recently read (see `changes`).
    pages: changes::Pages,
    /// Syncs as they begin and end, and the positions writes hand out.
    catchup: replication::Catchup,
    /// The site-wide documents (site rules, key set) as of a generation:
    /// read on every request, so kept.
    site_cache: Mutex<(u64, std::collections::HashMap<String, Option<String>>)>,
    /// Metadata and small bodies as of a generation: a hot file costs no SQL.
    reads: reads::ReadCache,
    /// Idle connections (see `pool`).
    idle: Mutex<Vec<Connection>>,
    /// Where finished uploads queue for a group commit (see `commit`).
    committer: std::sync::OnceLock<tokio::sync::mpsc::Sender<commit::Pending>>,
    /// Most uploads one group commit publishes.
    max_group: std::sync::atomic::AtomicUsize,
    /// Group commits made, and the uploads they published.
    commit_groups: prometheus_client::metrics::counter::Counter,
    committed_uploads: prometheus_client::metrics::counter::Counter,
    /// The limits publishing checks.
    quota: Mutex<Quota>,
    /// The primary's namespace (sqld `--enable-namespaces`), when set.
    namespace: Option<String>,
    /// Where writes wait while the primary is away (`--write-queue`).
    queue: std::sync::OnceLock<std::sync::Arc<WriteQueue>>,
}

impl Store {
    fn new(db: Database, mode: Mode) -> Store {
        Store {
            db,
            mode,
            stats: SyncStats::default(),
            generation: AtomicU64::new(0),
            fresh: Default::default(),
            notify: tokio::sync::watch::Sender::new(0),
            latest_change: tokio::sync::Mutex::new(None),
            pruned: Mutex::new(None),
            pages: changes::pages(),
            catchup: Default::default(),
            site_cache: Mutex::new((0, Default::default())),
            reads: reads::read_cache(),
            idle: Mutex::new(Vec::new()),
            committer: std::sync::OnceLock::new(),
            max_group: std::sync::atomic::AtomicUsize::new(commit::DEFAULT_MAX_GROUP),
            commit_groups: Default::default(),
            committed_uploads: Default::default(),
            quota: Mutex::new(Quota::default()),
            namespace: None,
            queue: std::sync::OnceLock::new(),
        }
    }

    /// Sets the limits later writes are checked against.
    pub fn set_quota(&self, quota: Quota) {
        *self.quota.lock().unwrap_or_else(|e| e.into_inner()) = quota;
    }

    pub fn quota(&self) -> Quota {
        *self.quota.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The files and bytes the database holds, as counted against the limits.
    pub async fn totals(&self) -> Result<Totals, StoreError> {
        let conn = self.conn().await?;
        let totals = quota::totals(&conn).await;
        self.put_back(conn);
        totals
    }

    /// See [`Store::generation`]'s field: compare two readings to know
    /// whether anything may have changed in between.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }


    /// Opens the local database in `data_dir`, creating it if needed.
    pub async fn open_local(data_dir: &Path) -> anyhow::Result<Store> {
        let path = data_dir.join("local.db");
        let db = libsql::Builder::new_local(&path)
            .build()
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let store = Store::new(db, Mode::Local);
        let conn = store.conn().await?;
        // WAL lets readers proceed while a write commits.
        query_all(&conn, "PRAGMA journal_mode=WAL", ()).await.context("enabling WAL")?;
        schema::migrate(&conn).await?;
        store.put_back(conn);
        store.start_freshness().await;
        Ok(store)
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// What syncs with the primary have recorded.
    pub fn sync_stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Registers the store's metrics (syncs, replication index).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.stats.register(registry);
        registry.register("commit_groups", "Transactions that published single uploads together", self.commit_groups.clone());
        registry.register("committed_uploads", "Single uploads published by those transactions", self.committed_uploads.clone());
        if let Some(queue) = self.queue.get() {
            queue.register_metrics(registry);
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
