//! The write queue (`--write-queue`): while the primary cannot be reached,
//! single-file writes (a PUT's body, a DELETE) are kept in a local database
//! on the edge's disk, durable before they are answered, shown to this
//! edge's reads at once, and applied to the primary one by one, in the order
//! they were accepted, when it returns.
//!
//! The queue is its own SQLite file (`write-queue.db`, WAL with
//! `synchronous=FULL`: a commit is on disk when it returns), never the
//! replica. A queued body is kept in chunks under a staging number; an
//! entry row makes it part of the queue, so a crash before that row leaves
//! only chunks, removed when the queue opens again.
//!
//! Each entry ends `applied` (with the position of its commit) or `failed`
//! (with the reason: its precondition did not hold on the primary, a limit,
//! a refusal), and its outcome stays readable at its status URL. A failed
//! write is never applied later.

use super::error::StoreError;
use super::sql::query_all;
use super::upload::Expect;
use super::{unix_now, FileMeta, Store, CHUNK_SIZE};
use crate::task::AbortOnDrop;
use anyhow::Context;
use libsql::Connection;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Versions of queued bodies start here, far above any row id, so a read
/// knows where to look.
const QUEUED_VERSION: u64 = 1 << 62;
/// How long the drain waits before trying the primary again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Attempts at an entry that fails other than by the primary being away
/// (a database error) before it is reported failed.
const MAX_ATTEMPTS: u32 = 10;
/// Finished entries kept for their status URLs.
const KEEP_FINISHED: i64 = 10_000;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        op TEXT NOT NULL,
        path TEXT NOT NULL,
        content_type TEXT,
        expect TEXT,
        size INTEGER NOT NULL DEFAULT 0,
        hash TEXT,
        staging INTEGER,
        queued_at INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',
        reason TEXT,
        position INTEGER,
        done_at INTEGER)",
    "CREATE INDEX IF NOT EXISTS entries_state ON entries (state, id)",
    "CREATE TABLE IF NOT EXISTS bodies (
        staging INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (staging, seq))",
];

/// What a queued entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }
}

/// What this edge shows at a path while writes to it wait.
struct Shadow {
    id: i64,
    /// The queued file, or none for a queued delete.
    file: Option<FileMeta>,
}

#[derive(Default)]
struct Waiting {
    /// The latest queued write of each path.
    by_path: HashMap<String, Shadow>,
    /// Entries not yet applied or failed: id -> queued at (Unix seconds).
    pending: BTreeMap<i64, i64>,
}

pub struct WriteQueue {
    /// The queue's only connection: writes to it are few (the primary is
    /// away) and each is one fsync'd commit.
    conn: tokio::sync::Mutex<Connection>,
    _db: libsql::Database,
    waiting: Mutex<Waiting>,
    /// How many paths have a shadow: reads skip the lock while it is 0.
    shadows: AtomicUsize,
    next_staging: AtomicI64,
    /// The oldest entry waiting when the queue opened: the host may have
    /// died after the primary took it and before its outcome was recorded.
    first_at_open: Option<i64>,
    /// The count of successful syncs when a write found the primary
    /// unreachable (-1: none since): until the next sync succeeds, writes
    /// queue.
    refused_at: AtomicI64,
    wake: tokio::sync::Notify,
    applied: Counter,
    failed: Counter,
    depth: Gauge,
    oldest_seconds: Gauge,
}

/// A queued entry's outcome, for its status URL.
#[derive(serde::Serialize)]
pub struct QueuedStatus {
    pub id: i64,
    pub op: String,
    pub path: String,
    /// `queued`, `applied` or `failed`.
    pub state: String,
    pub queued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_at: Option<i64>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The primary's replication position after it was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
}

fn expect_text(e: Option<&Expect>) -> Option<String> {
    e.map(|e| match e {
        Expect::Absent => "absent".to_string(),
        Expect::Hash(h) => format!("hash:{h}"),
    })
}

fn expect_of(text: Option<String>) -> Option<Expect> {
    match text.as_deref() {
        Some("absent") => Some(Expect::Absent),
        Some(t) => t.strip_prefix("hash:").map(|h| Expect::Hash(h.to_string())),
        None => None,
    }
}

fn queue_err(op: &'static str) -> impl Fn(libsql::Error) -> StoreError {
    move |e| StoreError::Internal(format!("the write queue failed during {op}: {e}"))
}

impl WriteQueue {
    /// Opens (or creates) the queue in `data_dir`, dropping what a crash
    /// left half-written and showing what waits.
    async fn open(data_dir: &Path) -> anyhow::Result<WriteQueue> {
        let path = data_dir.join("write-queue.db");
        let db = libsql::Builder::new_local(&path).build().await.with_context(|| format!("opening {}", path.display()))?;
        let conn = db.connect().context("connecting to the write queue")?;
        query_all(&conn, "PRAGMA journal_mode=WAL", ()).await.context("write queue: WAL")?;
        conn.execute("PRAGMA synchronous=FULL", ()).await.context("write queue: synchronous")?;
        for sql in SCHEMA {
            conn.execute(sql, ()).await.context("write queue: schema")?;
        }
        conn.execute("DELETE FROM bodies WHERE staging NOT IN (SELECT staging FROM entries WHERE state = 'queued' AND staging IS NOT NULL)", ())
            .await
            .context("write queue: removing unfinished bodies")?;
        let rows = query_all(
            &conn,
            "SELECT id, op, path, content_type, size, hash, queued_at FROM entries WHERE state = 'queued' ORDER BY id",
            (),
        )
        .await
        .context("write queue: reading what waits")?;
        let max_staging = query_all(&conn, "SELECT COALESCE(MAX(staging), 0) FROM entries", ()).await?;
        let max_staging = max_staging.first().map(|r| r.i64(0)).transpose()?.unwrap_or(0);
        let mut waiting = Waiting::default();
        for row in rows {
            let id = row.i64(0)?;
            let path = row.text(2)?;
            let queued_at = row.i64(6)?;
            let file = match row.text(1)?.as_str() {
                "put" => Some(queued_meta(id, &path, &row.opt_text(3)?.unwrap_or_default(), row.i64(4)? as u64, row.opt_text(5)?.unwrap_or_default(), queued_at)),
                _ => None,
            };
            waiting.pending.insert(id, queued_at);
            waiting.by_path.insert(path, Shadow { id, file });
        }
        if !waiting.pending.is_empty() {
            tracing::info!(writes = waiting.pending.len(), "the write queue holds writes to apply to the primary");
        }
        let first_at_open = waiting.pending.keys().next().copied();
        let queue = WriteQueue {
            conn: tokio::sync::Mutex::new(conn),
            _db: db,
            shadows: AtomicUsize::new(waiting.by_path.len()),
            waiting: Mutex::new(waiting),
            next_staging: AtomicI64::new(max_staging + 1),
            refused_at: AtomicI64::new(-1),
            first_at_open,
            wake: tokio::sync::Notify::new(),
            applied: Counter::default(),
            failed: Counter::default(),
            depth: Gauge::default(),
            oldest_seconds: Gauge::default(),
        };
        queue.update_gauges();
        Ok(queue)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes accepted and not yet applied or failed.
    pub fn depth(&self) -> usize {
        self.waiting().pending.len()
    }

    /// How long the oldest waiting write has waited, in seconds.
    pub fn oldest_age(&self) -> Option<i64> {
        self.waiting().pending.values().next().map(|at| (unix_now() - at).max(0))
    }

    fn update_gauges(&self) {
        self.depth.set(self.depth() as i64);
        self.oldest_seconds.set(self.oldest_age().unwrap_or(0));
    }

    /// What this edge shows at `path` while writes to it wait: `Some(None)`
    /// for a queued delete, none when nothing waits for the path.
    pub(super) fn shadow(&self, path: &str) -> Option<Option<FileMeta>> {
        if self.shadows.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.waiting().by_path.get(path).map(|s| s.file.clone())
    }

    /// Every shadowed path under `prefix`, with what it shows.
    fn shadows_under(&self, prefix: &str) -> Vec<(String, Option<FileMeta>)> {
        if self.shadows.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let waiting = self.waiting();
        waiting.by_path.iter().filter(|(p, _)| p.starts_with(prefix)).map(|(p, s)| (p.clone(), s.file.clone())).collect()
    }

    /// Records an accepted entry as waiting (and its path as shadowed).
    fn accepted(&self, id: i64, path: &str, file: Option<FileMeta>, queued_at: i64) {
        let mut waiting = self.waiting();
        waiting.pending.insert(id, queued_at);
        waiting.by_path.insert(path.to_string(), Shadow { id, file });
        self.shadows.store(waiting.by_path.len(), Ordering::Release);
        drop(waiting);
        self.update_gauges();
        self.wake.notify_one();
    }

    /// Records a finished entry: its path shows the replica again unless a
    /// later write to it waits.
    fn finished(&self, id: i64, path: &str) {
        let mut waiting = self.waiting();
        waiting.pending.remove(&id);
        if waiting.by_path.get(path).is_some_and(|s| s.id == id) {
            waiting.by_path.remove(path);
        }
        self.shadows.store(waiting.by_path.len(), Ordering::Release);
        drop(waiting);
        self.update_gauges();
    }

    /// A queued delete of `path`; its id.
    async fn enqueue_delete(&self, path: &str, expect: Option<&Expect>) -> Result<i64, StoreError> {
        let conn = self.conn.lock().await;
        let now = unix_now();
        conn.execute(
            "INSERT INTO entries (op, path, expect, queued_at) VALUES ('delete', ?1, ?2, ?3)",
            libsql::params![path, expect_text(expect), now],
        )
        .await
        .map_err(queue_err("queueing a delete"))?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.accepted(id, path, None, now);
        Ok(id)
    }

    async fn add_chunk(&self, staging: i64, seq: i64, data: Vec<u8>) -> Result<(), StoreError> {
        let conn = self.conn.lock().await;
        conn.execute("INSERT INTO bodies (staging, seq, data) VALUES (?1, ?2, ?3)", libsql::params![staging, seq, data])
            .await
            .map_err(queue_err("keeping a body"))?;
        Ok(())
    }

    async fn discard(&self, staging: i64) {
        let conn = self.conn.lock().await;
        if let Err(e) = conn.execute("DELETE FROM bodies WHERE staging = ?1", [staging]).await {
            tracing::warn!(cause = %e, "discarding an unfinished queued body failed; it is removed when the queue opens again");
        }
    }

    /// `len` bytes from `offset` of a waiting put's body; none once it was
    /// applied or failed.
    async fn read(&self, version: u64, offset: u64, len: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let id = (version - QUEUED_VERSION) as i64;
        let conn = self.conn.lock().await;
        let entry = query_all(&conn, "SELECT staging, size FROM entries WHERE id = ?1 AND state = 'queued' AND op = 'put'", [id])
            .await
            .map_err(queue_err("reading a body"))?;
        let Some(entry) = entry.first() else { return Ok(None) };
        let (staging, size) = (entry.i64(0)?, entry.i64(1)? as u64);
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Some(Vec::new()));
        }
        let chunk = CHUNK_SIZE as u64;
        let rows = query_all(
            &conn,
            "SELECT seq, data FROM bodies WHERE staging = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq",
            libsql::params![staging, (offset / chunk) as i64, ((end - 1) / chunk) as i64],
        )
        .await
        .map_err(queue_err("reading a body"))?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for mut row in rows {
            let start = row.i64(0)? as u64 * chunk;
            let data = row.take_blob(1)?.unwrap_or_default();
            let from = offset.saturating_sub(start) as usize;
            let to = ((end - start) as usize).min(data.len());
            if from < to {
                out.extend_from_slice(&data[from..to]);
            }
        }
        Ok(Some(out))
    }

    /// An entry's outcome.
    pub async fn status(&self, id: i64) -> Result<Option<QueuedStatus>, StoreError> {
        let conn = self.conn.lock().await;
        let rows = query_all(
            &conn,
            "SELECT id, op, path, state, queued_at, done_at, reason, position FROM entries WHERE id = ?1",
            [id],
        )
        .await
        .map_err(queue_err("reading an outcome"))?;
        rows.first()
            .map(|r| {
                Ok(QueuedStatus {
                    id: r.i64(0)?,
                    op: r.text(1)?,
                    path: r.text(2)?,
                    state: r.text(3)?,
                    queued_at: r.i64(4)?,
                    done_at: r.opt_i64(5)?,
                    reason: r.opt_text(6)?,
                    position: r.opt_i64(7)?,
                })
            })
            .transpose()
    }

    /// The oldest waiting entry.
    async fn next(&self) -> Result<Option<Entry>, StoreError> {
        let conn = self.conn.lock().await;
        let rows = query_all(
            &conn,
            "SELECT id, op, path, content_type, expect, staging, size, hash FROM entries WHERE state = 'queued' ORDER BY id LIMIT 1",
            (),
        )
        .await
        .map_err(queue_err("reading the next write"))?;
        rows.first()
            .map(|r| {
                Ok(Entry {
                    id: r.i64(0)?,
                    op: if r.text(1)? == "put" { Op::Put } else { Op::Delete },
                    path: r.text(2)?,
                    content_type: r.opt_text(3)?.unwrap_or_default(),
                    expect: expect_of(r.opt_text(4)?),
                    staging: r.opt_i64(5)?.unwrap_or(0),
                    size: r.i64(6)? as u64,
                    hash: r.opt_text(7)?.unwrap_or_default(),
                })
            })
            .transpose()
    }

    /// Body chunk `seq` of a waiting put.
    async fn chunk(&self, staging: i64, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.conn.lock().await;
        let mut rows = query_all(&conn, "SELECT data FROM bodies WHERE staging = ?1 AND seq = ?2", [staging, seq])
            .await
            .map_err(queue_err("reading a body"))?;
        match rows.first_mut() {
            Some(r) => Ok(r.take_blob(0)?),
            None => Ok(None),
        }
    }

    /// Records an entry's outcome and lets its body go, in one commit.
    async fn conclude(&self, entry: &Entry, outcome: Result<Option<u64>, String>) -> Result<(), StoreError> {
        let conn = self.conn.lock().await;
        let tx = conn.transaction().await.map_err(queue_err("recording an outcome"))?;
        let (state, reason, position) = match &outcome {
            Ok(position) => ("applied", None, position.map(|p| p as i64)),
            Err(why) => ("failed", Some(why.clone()), None),
        };
        let params = libsql::params![state, reason, position, unix_now(), entry.id];
        tx.execute("UPDATE entries SET state = ?1, reason = ?2, position = ?3, done_at = ?4 WHERE id = ?5", params)
            .await
            .map_err(queue_err("recording an outcome"))?;
        tx.execute("DELETE FROM bodies WHERE staging = ?1", [entry.staging]).await.map_err(queue_err("recording an outcome"))?;
        tx.execute(
            "DELETE FROM entries WHERE state <> 'queued' AND id <= (SELECT MAX(id) FROM entries) - ?1",
            [KEEP_FINISHED],
        )
        .await
        .map_err(queue_err("recording an outcome"))?;
        tx.commit().await.map_err(queue_err("recording an outcome"))?;
        drop(conn);
        match &outcome {
            Ok(_) => {
                self.applied.inc();
                tracing::info!(id = entry.id, op = entry.op.name(), path = entry.path, "applied a queued write");
            }
            Err(why) => {
                self.failed.inc();
                tracing::warn!(id = entry.id, op = entry.op.name(), path = entry.path, reason = %why, "a queued write failed on the primary");
            }
        }
        self.finished(entry.id, &entry.path);
        Ok(())
    }

    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("write_queue_depth", "Writes accepted while the primary was away, not yet applied", self.depth.clone());
        registry.register("write_queue_oldest_seconds", "How long the oldest queued write has waited", self.oldest_seconds.clone());
        registry.register("write_queue_applied", "Queued writes applied to the primary", self.applied.clone());
        registry.register("write_queue_failed", "Queued writes the primary refused (reported at their status URL)", self.failed.clone());
    }
}

/// A waiting entry, as the drain applies it.
struct Entry {
    id: i64,
    op: Op,
    path: String,
    content_type: String,
    expect: Option<Expect>,
    staging: i64,
    size: u64,
    hash: String,
}

fn queued_meta(id: i64, path: &str, content_type: &str, size: u64, hash: String, at: i64) -> FileMeta {
    FileMeta {
        path: path.to_string(),
        version: QUEUED_VERSION + id as u64,
        size,
        content_type: content_type.to_string(),
        hash,
        last_modified: at.max(0) as u64,
        created: at.max(0) as u64,
        encodings: Vec::new(),
    }
}

/// A body being queued: kept chunk by chunk; part of the queue once
/// [`QueuedUpload::finish`] returns.
pub struct QueuedUpload {
    queue: Arc<WriteQueue>,
    store: Arc<Store>,
    path: String,
    content_type: String,
    expect: Option<Expect>,
    max_size: u64,
    staging: i64,
    hasher: Sha256,
    size: u64,
    seq: i64,
    pending: Vec<u8>,
    created: bool,
}

impl QueuedUpload {
    pub fn path(&self) -> &str {
        &self.path
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if self.size + bytes.len() as u64 > self.max_size {
            return Err(StoreError::TooLarge(self.max_size));
        }
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= CHUNK_SIZE {
            let rest = self.pending.split_off(CHUNK_SIZE);
            let chunk = std::mem::replace(&mut self.pending, rest);
            self.queue.add_chunk(self.staging, self.seq, chunk).await?;
            self.seq += 1;
        }
        Ok(())
    }

    /// Makes the write part of the queue (on disk when this returns) and
    /// shows it to this edge's reads. Returns what a finished upload
    /// returns, and the entry's id.
    pub async fn finish(mut self) -> Result<(FileMeta, bool, i64), StoreError> {
        if !self.pending.is_empty() {
            let chunk = std::mem::take(&mut self.pending);
            self.queue.add_chunk(self.staging, self.seq, chunk).await?;
        }
        let hash = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let now = unix_now();
        let conn = self.queue.conn.lock().await;
        let params = libsql::params![
            self.path.as_str(),
            self.content_type.as_str(),
            expect_text(self.expect.as_ref()),
            self.size as i64,
            hash.as_str(),
            self.staging,
            now
        ];
        conn.execute(
            "INSERT INTO entries (op, path, content_type, expect, size, hash, staging, queued_at) \
             VALUES ('put', ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params,
        )
        .await
        .map_err(queue_err("queueing a write"))?;
        let id = conn.last_insert_rowid();
        drop(conn);
        let meta = queued_meta(id, &self.path, &self.content_type, self.size, hash, now);
        self.queue.accepted(id, &self.path, Some(meta.clone()), now);
        self.store.shadow_changed(&self.path).await;
        Ok((meta, self.created, id))
    }

    /// Drops what was kept of the body.
    pub async fn abort(self) {
        self.queue.discard(self.staging).await;
    }
}

impl Store {
    /// Keeps writes in a local queue in `data_dir` while the primary is
    /// away (`--write-queue`); returns the task that applies them.
    pub async fn open_write_queue(self: &Arc<Self>, data_dir: &Path) -> anyhow::Result<AbortOnDrop> {
        anyhow::ensure!(
            matches!(self.mode, super::Mode::Replica { .. }),
            "--write-queue needs a primary (--primary): a local database takes every write itself"
        );
        let queue = Arc::new(WriteQueue::open(data_dir).await?);
        let _ = self.queue.set(queue.clone());
        Ok(AbortOnDrop::spawn(drain(queue, Arc::downgrade(self))))
    }

    pub fn write_queue(&self) -> Option<&Arc<WriteQueue>> {
        self.queue.get()
    }

    /// The queue, when a write made now must go to it: the primary is away
    /// (its last sync failed), or earlier writes still wait (a later write
    /// applied first would be overwritten by them).
    pub fn queue_for_writes(&self) -> Option<&Arc<WriteQueue>> {
        let queue = self.queue.get()?;
        (self.primary_seems_away(queue) || queue.depth() > 0).then_some(queue)
    }

    /// Whether the primary was unreachable at the last sync, or at a write
    /// since the last successful sync.
    fn primary_seems_away(&self, queue: &WriteQueue) -> bool {
        let failing = self.stats.last_error.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        let refused = queue.refused_at.load(Ordering::Acquire);
        failing || (refused >= 0 && self.stats.ok.load(Ordering::Acquire) as i64 <= refused)
    }

    /// A write just failed to reach the primary: later writes queue until
    /// a sync succeeds (the syncs take a few seconds to give up).
    pub fn write_found_primary_away(&self, e: &StoreError) {
        if let (Some(queue), StoreError::Unavailable { .. }) = (self.queue.get(), e) {
            if !e.is_locked() {
                queue.refused_at.store(self.stats.ok.load(Ordering::Acquire) as i64, Ordering::Release);
            }
        }
    }

    /// Starts a queued upload of `path`.
    pub async fn begin_queued_upload(
        self: &Arc<Self>,
        queue: &Arc<WriteQueue>,
        path: &str,
        content_type: &str,
        max_size: u64,
        size_hint: Option<u64>,
        expect: Option<Expect>,
    ) -> Result<QueuedUpload, StoreError> {
        if size_hint.is_some_and(|n| n > max_size) {
            return Err(StoreError::TooLarge(max_size));
        }
        let created = self.stat(path).await?.is_none();
        Ok(QueuedUpload {
            queue: queue.clone(),
            store: self.clone(),
            path: path.to_string(),
            content_type: content_type.to_string(),
            expect,
            max_size,
            staging: queue.next_staging.fetch_add(1, Ordering::Relaxed),
            hasher: Sha256::new(),
            size: 0,
            seq: 0,
            pending: Vec::new(),
            created,
        })
    }

    /// Queues a delete of `path`: its id, or none when this edge holds no
    /// file there (nothing is queued then).
    pub async fn queue_delete(&self, queue: &WriteQueue, path: &str, expect: Option<&Expect>) -> Result<Option<i64>, StoreError> {
        if self.stat(path).await?.is_none() {
            return Ok(None);
        }
        let id = queue.enqueue_delete(path, expect).await?;
        self.shadow_changed(path).await;
        Ok(Some(id))
    }

    /// What a read of `path` shows while writes to it wait.
    pub(super) fn shadow(&self, path: &str) -> Option<Option<FileMeta>> {
        self.queue.get()?.shadow(path)
    }

    /// A queued body's bytes, when `version` is one.
    pub(super) async fn read_queued(&self, version: u64, encoding: &str, offset: u64, len: u64) -> Option<Result<Option<Vec<u8>>, StoreError>> {
        if version < QUEUED_VERSION {
            return None;
        }
        let queue = self.queue.get()?;
        if encoding != "identity" {
            return Some(Ok(None));
        }
        Some(queue.read(version, offset, len).await)
    }

    /// A listing page with the waiting writes under `prefix` laid over it:
    /// queued files shown, queued deletes hidden. `next` bounds the page.
    pub(super) fn lay_over(&self, prefix: &str, cursor: Option<&str>, files: &mut Vec<FileMeta>, next: &Option<String>) {
        let Some(queue) = self.queue.get() else { return };
        let shadows = queue.shadows_under(prefix);
        if shadows.is_empty() {
            return;
        }
        let shadowed: HashMap<String, Option<FileMeta>> = shadows.into_iter().collect();
        files.retain(|f| !shadowed.contains_key(&f.path));
        let in_page = |p: &str| cursor.is_none_or(|c| p > c) && next.as_deref().is_none_or(|n| p <= n);
        files.extend(shadowed.into_values().flatten().filter(|f| in_page(&f.path)));
        files.sort_by(|a, b| a.path.cmp(&b.path));
    }
}

/// Applies waiting writes in order, one at a time, whenever the primary
/// takes them; ends with the store.
async fn drain(queue: Arc<WriteQueue>, store: Weak<Store>) {
    let mut attempts = 0;
    // The entry whose wait for the primary was logged.
    let mut waiting_logged = None;
    loop {
        let entry = match queue.next().await {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                queue.update_gauges();
                let _ = tokio::time::timeout(RETRY_EVERY * 5, queue.wake.notified()).await;
                continue;
            }
            Err(e) => {
                tracing::error!(cause = %e, "reading the write queue failed");
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        };
        let Some(store) = store.upgrade() else { return };
        // While the primary is away, only a sync tells when it is back.
        if store.primary_seems_away(&queue) && !matches!(tokio::time::timeout(RETRY_EVERY * 10, store.sync()).await, Ok(Ok(_))) {
            drop(store);
            queue.update_gauges();
            tokio::time::sleep(RETRY_EVERY).await;
            continue;
        }
        let outcome = match queue.first_at_open == Some(entry.id) && already_applied(&store, &entry).await {
            true => {
                tracing::info!(id = entry.id, path = entry.path, "the primary already holds a queued write (the host stopped before recording it)");
                Ok(())
            }
            false => apply(&queue, &store, &entry).await,
        };
        let concluded = match outcome {
            Ok(()) => queue.conclude(&entry, Ok(store.write_position())).await,
            Err(e @ StoreError::Unavailable { .. }) => {
                if waiting_logged.replace(entry.id) != Some(entry.id) {
                    tracing::info!(id = entry.id, cause = %e, "the primary did not take a queued write; retrying every second");
                }
                drop(store);
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
            Err(e @ (StoreError::Database { .. } | StoreError::Internal(_))) if attempts + 1 < MAX_ATTEMPTS => {
                attempts += 1;
                tracing::warn!(id = entry.id, attempts, cause = %e, "applying a queued write failed; retrying");
                drop(store);
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
            Err(e) => queue.conclude(&entry, Err(reason(&e))).await,
        };
        attempts = 0;
        match concluded {
            Ok(()) => store.shadow_changed(&entry.path).await,
            Err(e) => {
                tracing::error!(cause = %e, id = entry.id, "recording a queued write's outcome failed");
                tokio::time::sleep(RETRY_EVERY).await;
            }
        }
    }
}

/// Whether the replica (synced with the primary) already shows what `entry`
/// makes: the file with its body, or no file. Asked of the oldest entry
/// waiting when the queue opened, so a write the primary took just before
/// the host died is not applied twice (or reported failed by its own
/// precondition).
async fn already_applied(store: &Store, entry: &Entry) -> bool {
    match (entry.op, store.stat_replica(&entry.path).await) {
        (Op::Put, Ok(Some(meta))) => meta.hash == entry.hash,
        (Op::Delete, Ok(None)) => true,
        _ => false,
    }
}

/// What a failed entry's status says.
fn reason(e: &StoreError) -> String {
    match e {
        StoreError::PreconditionFailed => "precondition failed: the file on the primary is not what the write expected".into(),
        StoreError::TooLarge(n) => format!("larger than {n} bytes"),
        other => other.to_string(),
    }
}

/// Applies one entry through the store's own write paths, with its
/// precondition checked in the writing transaction as for any write.
async fn apply(queue: &WriteQueue, store: &Arc<Store>, entry: &Entry) -> Result<(), StoreError> {
    match entry.op {
        Op::Put => {
            let mut upload = store.begin_upload(&entry.path, &entry.content_type, u64::MAX, None, entry.expect.clone()).await?;
            let chunks = entry.size.div_ceil(CHUNK_SIZE as u64) as i64;
            for seq in 0..chunks {
                let Some(bytes) = queue.chunk(entry.staging, seq).await? else {
                    upload.abort().await;
                    return Err(StoreError::Internal(format!("queued body {} lost chunk {seq}", entry.id)));
                };
                if let Err(e) = upload.write(&bytes).await {
                    upload.abort().await;
                    return Err(e);
                }
            }
            upload.finish().await.map(|_| ())
        }
        Op::Delete => match store.delete(&entry.path, entry.expect.as_ref()).await? {
            true => Ok(()),
            false => Err(StoreError::Invalid("no file at the path on the primary".into())),
        },
    }
}

impl Store {
    /// A path's shadow appeared or went: what caches hold of it is stale.
    async fn shadow_changed(&self, path: &str) {
        self.advance_paths(vec![(path.to_string(), None)]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_round_trip_through_their_text() {
        for e in [None, Some(Expect::Absent), Some(Expect::Hash("ab12".into()))] {
            assert_eq!(expect_of(expect_text(e.as_ref())), e);
        }
    }

    #[tokio::test]
    async fn a_queue_keeps_waiting_writes_across_a_reopen_and_drops_unfinished_bodies() {
        let dir = std::env::temp_dir().join(format!("turserver-queue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let q = WriteQueue::open(&dir).await.unwrap();
            q.add_chunk(7, 0, b"orphan".to_vec()).await.unwrap();
            let id = q.enqueue_delete("a.txt", Some(&Expect::Absent)).await.unwrap();
            assert_eq!(q.depth(), 1);
            assert_eq!(q.shadow("a.txt"), Some(None));
            assert_eq!(id, 1);
        }
        let q = WriteQueue::open(&dir).await.unwrap();
        assert_eq!(q.depth(), 1);
        assert_eq!(q.shadow("a.txt"), Some(None));
        assert_eq!(q.shadow("b.txt"), None);
        let next = q.next().await.unwrap().unwrap();
        assert_eq!((next.op, next.path.as_str(), next.expect.clone()), (Op::Delete, "a.txt", Some(Expect::Absent)));
        assert_eq!(q.chunk(7, 0).await.unwrap(), None, "a body no entry names is dropped on open");
        q.conclude(&next, Err("precondition failed".into())).await.unwrap();
        assert_eq!(q.depth(), 0);
        assert_eq!(q.shadow("a.txt"), None);
        let status = q.status(1).await.unwrap().unwrap();
        assert_eq!((status.state.as_str(), status.reason.as_deref()), ("failed", Some("precondition failed")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
