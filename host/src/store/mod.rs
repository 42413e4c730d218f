//! The file store: a libSQL database that is either a local file (embedded
//! default) or an embedded replica of a primary.
//!
//! Bodies up to one chunk are stored inline in `files.content`; larger ones
//! are written as chunks under a fresh `blob_id` before the `files` row that
//! publishes them, so a reader never sees half a file and no statement
//! carries more than one chunk (the primary limits message sizes).
//!
//! - `schema`: versioned migrations, run through the primary.
//! - `upload`: staging bodies (and their encodings) and publishing them.
//! - `replica`: opening, checking and rebuilding the embedded replica.
//! - `sql`: rows copied out of statements, with typed getters.

mod replica;
mod schema;
mod sql;
mod upload;

pub(crate) use sql::{query_all, Record};

pub use upload::{Batch, Expect, Upload};

use crate::error::StoreError;
use crate::status::SyncStats;
use anyhow::Context;
use libsql::{Connection, Database};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Size of a body chunk. One chunk is one statement to the primary: well
/// under its message limit, large enough that a 20 MiB upload is 20 writes.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Most entries one listing page returns.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Staged uploads older than this are garbage (their writer died).
pub const STALE_UPLOAD_SECS: i64 = 3600;
/// Reads of at most this many bytes are cached (whole small files; large
/// bodies stream through without displacing them).
const SMALL_READ_BYTES: u64 = 64 << 10;
/// Memory for cached metadata and small bodies.
const READ_CACHE_BYTES: u64 = 32 << 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum ReadKey {
    Stat(String),
    /// version, encoding, offset, length
    Body(u64, String, u64, u64),
}

/// A cached read, stamped with the generation it was read at.
#[derive(Clone)]
enum ReadEntry {
    Stat(u64, Option<FileMeta>),
    Body(u64, Option<bytes::Bytes>),
}

#[derive(Clone)]
struct ReadWeight;

impl quick_cache::Weighter<ReadKey, ReadEntry> for ReadWeight {
    fn weight(&self, _key: &ReadKey, val: &ReadEntry) -> u64 {
        match val {
            ReadEntry::Stat(..) => 512,
            ReadEntry::Body(_, b) => 256 + b.as_ref().map_or(0, |b| b.len() as u64),
        }
    }
}

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
    stats: Arc<SyncStats>,
    /// Changes whenever the local database may have changed (a write here,
    /// or a sync that brought frames): what caches of its content check.
    generation: AtomicU64,
    /// Replication index after the last sync, to tell whether one changed anything.
    last_frame: AtomicU64,
    /// The site document as of a generation: read on every request, so kept.
    site_cache: Mutex<Option<(u64, String, Option<String>)>>,
    /// Metadata and small bodies as of a generation: a hot file costs no SQL.
    reads: quick_cache::sync::Cache<ReadKey, ReadEntry, ReadWeight>,
    /// Idle connections. Opening one per request would cost a file open and a
    /// cold page cache each time.
    idle: Mutex<Vec<Connection>>,
}

const META_COLUMNS: &str =
    "id, path, COALESCE(size, length(content)), content_type, hash, last_modified, created_at, \
     CASE WHEN hash IS NULL THEN content END, \
     (SELECT group_concat(encoding || ':' || size, ',') FROM variants WHERE file_id = files.id)";

impl Store {
    fn new(db: Database, mode: Mode, stats: Arc<SyncStats>) -> Store {
        Store {
            db,
            mode,
            stats,
            generation: AtomicU64::new(0),
            last_frame: AtomicU64::new(0),
            site_cache: Mutex::new(None),
            reads: quick_cache::sync::Cache::with_weighter(4096, READ_CACHE_BYTES, ReadWeight),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// See [`Store::generation`]'s field: compare two readings to know
    /// whether anything may have changed in between.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Opens the local database in `data_dir`, creating it if needed.
    pub async fn open_local(data_dir: &Path, stats: Arc<SyncStats>) -> anyhow::Result<Store> {
        let path = data_dir.join("local.db");
        let db = libsql::Builder::new_local(&path)
            .build()
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let store = Store::new(db, Mode::Local, stats);
        let conn = store.conn().await?;
        // WAL lets readers proceed while a write commits.
        query_all(&conn, "PRAGMA journal_mode=WAL", ()).await.context("enabling WAL")?;
        schema::migrate(&conn).await?;
        store.put_back(conn);
        Ok(store)
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Pulls new frames from the primary; a no-op for a local database.
    pub async fn sync(&self) -> Result<Option<u64>, libsql::Error> {
        if self.mode == Mode::Local {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        match self.db.sync().await {
            Ok(r) => {
                self.stats.succeeded(started.elapsed(), r.frame_no());
                let frame = r.frame_no().unwrap_or(0);
                if self.last_frame.swap(frame, Ordering::AcqRel) != frame {
                    self.changed();
                }
                Ok(r.frame_no())
            }
            Err(e) => {
                self.stats.failed(e.to_string());
                Err(e)
            }
        }
    }

    /// Whether this edge is ready to serve: a replica must have synced once.
    pub fn is_ready(&self) -> bool {
        self.mode == Mode::Local || self.stats.ok.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// The primary's replication index after this process's latest write:
    /// a position other edges can wait for (None in local mode).
    pub fn write_position(&self) -> Option<u64> {
        match self.mode {
            Mode::Local => None,
            Mode::Replica { .. } => self.db.max_write_replication_index(),
        }
    }

    /// Waits until this replica has caught up with `position`, syncing on
    /// demand, for at most `bound`. False when it has not caught up.
    pub async fn wait_for(&self, position: u64, bound: std::time::Duration) -> bool {
        if self.mode == Mode::Local {
            return true;
        }
        let caught_up = |i: Option<u64>| i.is_some_and(|i| i >= position);
        if caught_up(self.db.replication_index().await.ok().flatten()) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + bound;
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.sync()).await {
                Ok(Ok(frame)) if caught_up(frame) => return true,
                Ok(Ok(_)) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                Ok(Err(_)) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                Err(_) => break,
            }
        }
        caught_up(self.db.replication_index().await.ok().flatten())
    }

    /// Read-your-writes: after a write commits on the primary, pull it into
    /// the replica before answering, so the next read on this edge sees it.
    /// The write itself has succeeded either way; a failed pull is logged
    /// and the periodic sync catches up.
    pub(crate) async fn written(&self) {
        if self.mode == Mode::Local {
            self.changed();
        }
        if let Mode::Replica { .. } = self.mode {
            if let Err(e) = self.sync().await {
                tracing::warn!(cause = %e, "sync after a write failed; the write is on the primary but not yet visible here");
            }
        }
    }

    async fn conn(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().expect("connection pool poisoned").pop() {
            return Ok(c);
        }
        let conn = self.db.connect().map_err(|e| StoreError::internal("connecting", e))?;
        if self.mode == Mode::Local {
            // Concurrent local writers wait for each other instead of failing.
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(|e| StoreError::internal("setting busy timeout", e))?;
            // Read pages through a mapping rather than a pread (and a copy)
            // per page: large bodies are long overflow chains.
            crate::store::sql::query_all(&conn, "PRAGMA mmap_size = 1073741824", ())
                .await
                .map_err(|e| StoreError::internal("setting mmap_size", e))?;
        }
        Ok(conn)
    }

    /// Returns a connection for reuse. Only connections outside a transaction
    /// come back; the caller drops the others.
    pub(crate) fn put_back(&self, conn: Connection) {
        if conn.is_autocommit() {
            let mut idle = self.idle.lock().expect("connection pool poisoned");
            if idle.len() < 64 {
                idle.push(conn);
            }
        }
    }

    pub async fn stat(&self, path: &str) -> Result<Option<FileMeta>, StoreError> {
        let generation = self.generation();
        let key = ReadKey::Stat(path.to_string());
        if let Some(ReadEntry::Stat(g, meta)) = self.reads.get(&key) {
            if g == generation {
                return Ok(meta);
            }
        }
        let meta = self.stat_uncached(path).await?;
        self.reads.insert(key, ReadEntry::Stat(generation, meta.clone()));
        Ok(meta)
    }

    async fn stat_uncached(&self, path: &str) -> Result<Option<FileMeta>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!("SELECT {META_COLUMNS} FROM files WHERE path = ?1");
        let rows = query_all(&conn, &sql, [path]).await.map_err(|e| StoreError::read("stat", e))?;
        self.put_back(conn);
        rows.first().map(meta_from_row).transpose()
    }

    /// Up to `len` bytes of body `version` in content coding `encoding` from
    /// `offset`; `None` when that version (or coding) does not exist.
    pub async fn read(
        &self,
        version: u64,
        encoding: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read_bytes(version, encoding, offset, len).await?.map(Vec::from))
    }

    /// [`Store::read`] as shared bytes: a small body comes out of the read
    /// cache without a copy.
    pub async fn read_bytes(
        &self,
        version: u64,
        encoding: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        let generation = self.generation();
        let small = len <= SMALL_READ_BYTES;
        let key = ReadKey::Body(version, encoding.to_string(), offset, len);
        if small {
            if let Some(ReadEntry::Body(g, bytes)) = self.reads.get(&key) {
                if g == generation {
                    return Ok(bytes);
                }
            }
        }
        let conn = self.conn().await?;
        let result = read_body(&conn, version, encoding, offset, len).await.map(|b| b.map(bytes::Bytes::from));
        self.put_back(conn);
        if let (true, Ok(bytes)) = (small, &result) {
            self.reads.insert(key, ReadEntry::Body(generation, bytes.clone()));
        }
        result
    }

    /// A whole identity body of `size` bytes, read chunk by chunk.
    pub async fn read_whole(&self, version: u64, size: u64) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(size as usize);
        while (out.len() as u64) < size {
            // Exactly what is left, at most a chunk: a small body's read is
            // then the one the read cache keeps.
            let want = (size - out.len() as u64).min(CHUNK_SIZE as u64);
            let piece = self
                .read(version, "identity", out.len() as u64, want)
                .await?
                .ok_or_else(|| StoreError::Internal(format!("version {version} was replaced while being read")))?;
            if piece.is_empty() {
                return Err(StoreError::Internal(format!("version {version} is shorter than its recorded size")));
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    /// Files under `prefix` after `cursor`, at most `limit`; the second value
    /// is the cursor of the next page.
    pub async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<FileMeta>, Option<String>), StoreError> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        // Every path starting with `prefix` sorts before `upper` (the prefix
        // with its last character incremented), so the range uses the index.
        let upper = prefix_upper_bound(prefix);
        let sql = format!(
            "SELECT {META_COLUMNS} FROM files \
             WHERE path >= ?1 AND (?2 IS NULL OR path < ?2) AND (?3 IS NULL OR path > ?3) \
             ORDER BY path LIMIT ?4"
        );
        let conn = self.conn().await?;
        let params = libsql::params![prefix, upper, cursor, i64::from(limit) + 1];
        let rows = query_all(&conn, &sql, params).await.map_err(|e| StoreError::read("list", e))?;
        self.put_back(conn);
        let mut files = rows.iter().map(meta_from_row).collect::<Result<Vec<_>, _>>()?;
        files.retain(|f| f.path.starts_with(prefix));
        let next = if files.len() > limit as usize {
            files.truncate(limit as usize);
            files.last().map(|f| f.path.clone())
        } else {
            None
        };
        Ok((files, next))
    }

    /// Deletes the file at `path`; false when there was none.
    pub async fn delete(&self, path: &str, expect: Option<&Expect>) -> Result<bool, StoreError> {
        let w = |e| StoreError::write("delete", e);
        let conn = self.conn().await?;
        let tx = conn.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await.map_err(w)?;
        let current = current(&tx, path).await?;
        let outcome = match (&current, check_expectation(expect, current.as_ref())) {
            (_, Err(e)) => Err(e),
            (None, Ok(())) => Ok(false),
            (Some(c), Ok(())) => remove_file(&tx, c.id).await.map(|()| true),
        };
        match outcome {
            Ok(true) => tx.commit().await.map_err(w)?,
            _ => tx.rollback().await.map_err(w)?,
        }
        self.put_back(conn);
        if let Ok(true) = outcome {
            self.written().await;
        }
        outcome
    }

    /// Starts an upload of `path`; nothing is visible until it finishes.
    pub async fn begin_upload(
        self: &Arc<Self>,
        path: &str,
        content_type: &str,
        max_size: u64,
        size_hint: Option<u64>,
        expect: Option<Expect>,
    ) -> Result<Upload, StoreError> {
        if size_hint.is_some_and(|n| n > max_size) {
            return Err(StoreError::TooLarge(max_size));
        }
        let conn = self.conn().await?;
        Ok(Upload::new(self.clone(), conn, path, content_type, max_size, expect))
    }

    /// Starts a batch of files published together.
    pub async fn begin_batch(self: &Arc<Self>, max_size: u64) -> Result<Batch, StoreError> {
        let conn = self.conn().await?;
        Ok(Batch::new(self.clone(), conn, max_size))
    }

    /// A site configuration document, if one was set.
    pub async fn site_config(&self, key: &str) -> Result<Option<String>, StoreError> {
        let generation = self.generation();
        if let Some((g, k, v)) = &*self.site_cache.lock().expect("poisoned") {
            if *g == generation && k == key {
                return Ok(v.clone());
            }
        }
        let value = self.read_site_config(key).await?;
        *self.site_cache.lock().expect("poisoned") = Some((generation, key.to_string(), value.clone()));
        Ok(value)
    }

    async fn read_site_config(&self, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn().await?;
        let rows = query_all(&conn, "SELECT value FROM site_config WHERE key = ?1", [key])
            .await
            .map_err(|e| StoreError::read("site config", e))?;
        self.put_back(conn);
        rows.first().map(|r| r.text(0)).transpose()
    }

    pub async fn set_site_config(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO site_config (key, value, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            libsql::params![key, value, unix_now()],
        )
        .await
        .map_err(|e| StoreError::write("site config", e))?;
        self.put_back(conn);
        self.written().await;
        Ok(())
    }

    /// Removes chunks of uploads that never finished (their writer crashed).
    pub async fn collect_garbage(&self) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        let cutoff = unix_now() - STALE_UPLOAD_SECS;
        let rows = query_all(&conn, "SELECT blob_id FROM uploads WHERE started_at < ?1", [cutoff])
            .await
            .map_err(|e| StoreError::read("garbage collection", e))?;
        let mut removed = 0;
        for row in rows {
            let blob = row.i64(0)?;
            upload::discard(&conn, blob).await?;
            removed += 1;
        }
        self.put_back(conn);
        Ok(removed)
    }
}

/// Checks a path the worker wants to write. The worker normalises paths
/// already; the host does not trust it to (workers are swappable code).
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 1024 {
        return Err("path must be 1 to 1024 bytes".into());
    }
    if path.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err("path has an empty, '.' or '..' segment".into());
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err("path has a control character or backslash".into());
    }
    if path.split('/').next() == Some("_turserver") {
        return Err("paths under _turserver/ are reserved for the host".into());
    }
    Ok(())
}

async fn read_body(
    conn: &Connection,
    version: u64,
    encoding: &str,
    offset: u64,
    len: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let (v, o, l) = (version as i64, offset as i64, len as i64);
    let rows = if encoding == "identity" {
        query_all(
            conn,
            "SELECT COALESCE(size, length(content)), blob_id, chunk_size, \
             CASE WHEN blob_id IS NULL THEN substr(content, ?2 + 1, ?3) END \
             FROM files WHERE id = ?1",
            libsql::params![v, o, l],
        )
        .await
    } else {
        query_all(
            conn,
            "SELECT size, blob_id, chunk_size, CASE WHEN blob_id IS NULL THEN substr(content, ?2 + 1, ?3) END \
             FROM variants WHERE file_id = ?1 AND encoding = ?4",
            libsql::params![v, o, l, encoding],
        )
        .await
    }
    .map_err(|e| StoreError::read("read", e))?;
    let Some(row) = rows.first() else { return Ok(None) };
    let size = row.opt_i64(0)?.unwrap_or(0).max(0) as u64;
    let Some(blob) = row.opt_i64(1)? else {
        return Ok(Some(row.opt_blob(3)?.unwrap_or_default()));
    };
    let chunk = row.i64(2)?;
    if chunk <= 0 {
        return Err(StoreError::Internal(format!("blob {blob} has chunk size {chunk}")));
    }
    let chunk = chunk as u64;
    let end = size.min(offset.saturating_add(len));
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let seq = pos / chunk;
        let within = pos % chunk;
        let take = (chunk - within).min(end - pos);
        // A whole chunk is read as it is: `substr` would copy it once more.
        let whole = within == 0 && (take == chunk || pos + take == size);
        let rows = if whole {
            query_all(conn, "SELECT data FROM chunks WHERE blob_id = ?1 AND seq = ?2", libsql::params![blob, seq as i64])
                .await
        } else {
            query_all(
                conn,
                "SELECT substr(data, ?3 + 1, ?4) FROM chunks WHERE blob_id = ?1 AND seq = ?2",
                libsql::params![blob, seq as i64, within as i64, take as i64],
            )
            .await
        }
        .map_err(|e| StoreError::read("read chunk", e))?;
        // A chunk vanishing mid-read means the version was replaced or deleted.
        let Some(mut row) = rows.into_iter().next() else { return Ok(None) };
        let mut bytes = row.take_blob(0)?.unwrap_or_default();
        if bytes.is_empty() {
            return Err(StoreError::Internal(format!("chunk {seq} of blob {blob} is short")));
        }
        bytes.truncate(take as usize);
        pos += bytes.len() as u64;
        if out.is_empty() && pos >= end {
            // One chunk answers the whole read (the usual, aligned case).
            return Ok(Some(bytes));
        }
        out.extend_from_slice(&bytes);
    }
    Ok(Some(out))
}

fn meta_from_row(row: &Record) -> Result<FileMeta, StoreError> {
    let hash = match row.opt_text(4)? {
        Some(h) => h,
        // Rows written directly on the primary carry no hash: derive it from
        // the inline body.
        None => hex::encode(Sha256::digest(row.opt_blob(7)?.unwrap_or_default())),
    };
    Ok(FileMeta {
        version: row.i64(0)? as u64,
        path: row.text(1)?,
        size: row.opt_i64(2)?.unwrap_or(0).max(0) as u64,
        content_type: row.text(3)?,
        hash,
        last_modified: row.i64(5)?.max(0) as u64,
        created: row.i64(6)?.max(0) as u64,
        encodings: parse_encodings(row.opt_text(8)?.as_deref().unwrap_or_default()),
    })
}

/// Parses `br:123,gzip:140` as produced by the metadata query.
fn parse_encodings(list: &str) -> Vec<(String, u64)> {
    list.split(',')
        .filter_map(|e| {
            let (name, size) = e.split_once(':')?;
            Some((name.to_string(), size.parse().ok()?))
        })
        .collect()
}

/// The file currently at a path, as a write transaction sees it.
pub(crate) struct Current {
    pub id: i64,
    pub created_at: i64,
    pub hash: String,
}

pub(crate) async fn current(conn: &Connection, path: &str) -> Result<Option<Current>, StoreError> {
    let rows = query_all(
        conn,
        "SELECT id, created_at, hash, CASE WHEN hash IS NULL THEN content END FROM files WHERE path = ?1",
        [path],
    )
    .await
    .map_err(|e| StoreError::write("reading the current file", e))?;
    let Some(row) = rows.first() else { return Ok(None) };
    let hash = match row.opt_text(2)? {
        Some(h) => h,
        None => hex::encode(Sha256::digest(row.opt_blob(3)?.unwrap_or_default())),
    };
    Ok(Some(Current { id: row.i64(0)?, created_at: row.i64(1)?, hash }))
}

/// Checks a conditional write against what is at the path.
pub(crate) fn check_expectation(expect: Option<&Expect>, current: Option<&Current>) -> Result<(), StoreError> {
    match (expect, current) {
        (None, _) | (Some(Expect::Absent), None) => Ok(()),
        (Some(Expect::Hash(h)), Some(c)) if *h == c.hash => Ok(()),
        _ => Err(StoreError::PreconditionFailed),
    }
}

/// Deletes a file row with its chunks and encodings.
pub(crate) async fn remove_file(conn: &Connection, id: i64) -> Result<(), StoreError> {
    let w = |e| StoreError::write("removing a file", e);
    conn.execute(
        "DELETE FROM chunks WHERE blob_id IN (SELECT blob_id FROM files WHERE id = ?1 AND blob_id IS NOT NULL \
         UNION SELECT blob_id FROM variants WHERE file_id = ?1 AND blob_id IS NOT NULL)",
        [id],
    )
    .await
    .map_err(w)?;
    conn.execute("DELETE FROM variants WHERE file_id = ?1", [id]).await.map_err(w)?;
    conn.execute("DELETE FROM files WHERE id = ?1", [id]).await.map_err(w)?;
    Ok(())
}

/// The smallest string greater than every string that starts with `prefix`,
/// or None when there is none (empty prefix, or it ends in U+10FFFF).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    let last = chars.pop()?;
    let next = (last as u32 + 1..=0x10FFFF).find_map(char::from_u32)?;
    chars.push(next);
    Some(chars.into_iter().collect())
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_list() {
        assert_eq!(parse_encodings(""), vec![]);
        assert_eq!(parse_encodings("br:10,gzip:12"), vec![("br".to_string(), 10), ("gzip".to_string(), 12)]);
    }

    #[test]
    fn expectations() {
        let c = Current { id: 1, created_at: 0, hash: "abc".into() };
        assert!(check_expectation(None, Some(&c)).is_ok());
        assert!(check_expectation(Some(&Expect::Absent), None).is_ok());
        assert!(check_expectation(Some(&Expect::Absent), Some(&c)).is_err());
        assert!(check_expectation(Some(&Expect::Hash("abc".into())), Some(&c)).is_ok());
        assert!(check_expectation(Some(&Expect::Hash("abd".into())), Some(&c)).is_err());
        assert!(check_expectation(Some(&Expect::Hash("abc".into())), None).is_err());
    }

    #[test]
    fn host_path_check() {
        assert!(validate_path("a/b.txt").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/../b", ".", "a\\b", "a\0b", "_turserver/worker.wasm"] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upper_bound_sorts_after_every_extension() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("a/"), Some("a0".into()));
        let ub = prefix_upper_bound("img").unwrap();
        for p in ["img", "img/x", "img\u{10FFFF}z", "imgzzzz"] {
            assert!(p < ub.as_str(), "{p}");
        }
        assert!("imh" >= ub.as_str());
    }
}
