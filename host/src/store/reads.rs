//! Reads: metadata, bodies (whole, ranged, chunk by chunk), listings and
//! the site document, with a cache of metadata and small bodies stamped
//! with the store's generation, so a hot file costs no SQL; an entry goes
//! stale when its path (or version) changes (see `freshness`). Key-value
//! entries share the cache.

use super::sql::{query_all, Record};
use super::{FileMeta, Store, CHUNK_SIZE, MAX_LIST_LIMIT};
use super::error::StoreError;
use libsql::Connection;
use sha2::{Digest, Sha256};

/// Reads of at most this many bytes are cached (whole small files; large
/// bodies stream through without displacing them).
pub(super) const SMALL_READ_BYTES: u64 = 64 << 10;
/// Memory for cached metadata and small bodies.
const READ_CACHE_BYTES: u64 = 32 << 20;

/// Who reads a body. The public routes (workers, the sidecar) never see the
/// host's own rows under reserved paths (the deployed worker); the host
/// itself does.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reader {
    Public,
    Host,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) enum ReadKey {
    Stat(String),
    /// reader, version, encoding, offset, length
    Body(Reader, u64, String, u64, u64),
    /// A key-value entry, by key.
    Kv(String),
}

/// A cached read, stamped with the generation it was read at.
#[derive(Clone)]
pub(super) enum ReadEntry {
    Stat(u64, Option<FileMeta>),
    Body(u64, Option<bytes::Bytes>),
    /// The stored entry, expired or not (expiry is checked as it is read).
    Kv(u64, Option<super::kv::KvEntry>),
}

#[derive(Clone)]
pub(super) struct ReadWeight;

impl quick_cache::Weighter<ReadKey, ReadEntry> for ReadWeight {
    fn weight(&self, _key: &ReadKey, val: &ReadEntry) -> u64 {
        match val {
            ReadEntry::Stat(..) => 512,
            ReadEntry::Body(_, b) => 256 + b.as_ref().map_or(0, |b| b.len() as u64),
            ReadEntry::Kv(_, e) => 256 + e.as_ref().map_or(0, |e| (e.key.len() + e.value.len()) as u64),
        }
    }
}

/// The read cache: metadata and small bodies as of a generation.
pub(super) type ReadCache = quick_cache::sync::Cache<ReadKey, ReadEntry, ReadWeight>;

pub(super) fn read_cache() -> ReadCache {
    quick_cache::sync::Cache::with_weighter(4096, READ_CACHE_BYTES, ReadWeight)
}

const META_COLUMNS: &str =
    "id, path, COALESCE(size, length(content)), content_type, hash, last_modified, created_at, \
     CASE WHEN hash IS NULL THEN content END, \
     (SELECT group_concat(encoding || ':' || size, ',') FROM variants WHERE file_id = files.id)";

impl Store {
    pub async fn stat(&self, path: &str) -> Result<Option<FileMeta>, StoreError> {
        if let Some(shown) = self.shadow(path) {
            return Ok(shown);
        }
        self.stat_replica(path).await
    }

    /// [`Store::stat`] of the replica alone, without the writes that wait in
    /// the write queue.
    pub(super) async fn stat_replica(&self, path: &str) -> Result<Option<FileMeta>, StoreError> {
        let generation = self.generation();
        let key = ReadKey::Stat(path.to_string());
        if let Some(ReadEntry::Stat(g, meta)) = self.reads.get(&key) {
            if self.path_is_fresh(g, path) {
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
        self.read_as(Reader::Public, version, encoding, offset, len).await
    }

    async fn read_as(
        &self,
        reader: Reader,
        version: u64,
        encoding: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<bytes::Bytes>, StoreError> {
        if let Some(queued) = self.read_queued(version, encoding, offset, len).await {
            return queued.map(|b| b.map(bytes::Bytes::from));
        }
        let generation = self.generation();
        let small = len <= SMALL_READ_BYTES;
        let key = ReadKey::Body(reader, version, encoding.to_string(), offset, len);
        if small {
            if let Some(ReadEntry::Body(g, bytes)) = self.reads.get(&key) {
                if self.version_is_fresh(g, version) {
                    return Ok(bytes);
                }
            }
        }
        let conn = self.conn().await?;
        let result = read_body(&conn, reader, version, encoding, offset, len).await.map(|b| b.map(bytes::Bytes::from));
        self.put_back(conn);
        if let (true, Ok(bytes)) = (small, &result) {
            self.reads.insert(key, ReadEntry::Body(generation, bytes.clone()));
        }
        result
    }

    /// A whole identity body of `size` bytes, read chunk by chunk.
    pub async fn read_whole(&self, reader: Reader, version: u64, size: u64) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(size as usize);
        while (out.len() as u64) < size {
            // Exactly what is left, at most a chunk: a small body's read is
            // then the one the read cache keeps.
            let want = (size - out.len() as u64).min(CHUNK_SIZE as u64);
            let piece = self
                .read_as(reader, version, "identity", out.len() as u64, want)
                .await?
                .ok_or_else(|| StoreError::Internal(format!("version {version} was replaced while being read")))?
                .to_vec();
            if piece.is_empty() {
                return Err(StoreError::Internal(format!("version {version} is shorter than its recorded size")));
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    /// Files under `prefix` after `cursor`, at most `limit`; the second value
    /// is the cursor of the next page. Rows under the reserved top-level
    /// paths are the host's, not files: never listed.
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
             AND path <> '_api' AND substr(path, 1, 5) <> '_api/' \
             AND path <> '_turserver' AND substr(path, 1, 11) <> '_turserver/' \
             ORDER BY path LIMIT ?4"
        );
        let conn = self.conn().await?;
        let params = libsql::params![prefix, upper, cursor, i64::from(limit) + 1];
        let rows = query_all(&conn, &sql, params).await.map_err(|e| StoreError::read("list", e))?;
        self.put_back(conn);
        let mut files = rows.iter().map(meta_from_row).collect::<Result<Vec<_>, _>>()?;
        files.retain(|f| f.path.starts_with(prefix));
        let next = split_page(&mut files, limit, |f| f.path.clone());
        self.lay_over(prefix, cursor, &mut files, &next);
        Ok((files, next))
    }

    /// A site configuration document, if one was set.
    pub async fn site_config(&self, key: &str) -> Result<Option<String>, StoreError> {
        let generation = self.generation();
        {
            let cache = self.site_cache.lock().expect("poisoned");
            if cache.0 == generation {
                if let Some(v) = cache.1.get(key) {
                    return Ok(v.clone());
                }
            }
        }
        let value = self.read_site_config(key).await?;
        let mut cache = self.site_cache.lock().expect("poisoned");
        // The few documents (site rules, key set) share one map, emptied
        // when the store changes; a value read before a newer one was kept
        // is not kept.
        if cache.0 < generation {
            cache.0 = generation;
            cache.1.clear();
        }
        if cache.0 == generation {
            cache.1.insert(key.to_string(), value.clone());
        }
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
}


async fn read_body(
    conn: &Connection,
    reader: Reader,
    version: u64,
    encoding: &str,
    offset: u64,
    len: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    // SQLite's substr takes 32-bit positions: offsets and lengths are
    // clamped to one still past any inline body (at most one chunk), never
    // wrapped around to the start.
    const FAR: u64 = 1 << 30;
    let (v, o, l) = (version as i64, offset.min(FAR) as i64, len.min(FAR) as i64);
    let rows = if encoding == "identity" {
        query_all(
            conn,
            "SELECT COALESCE(size, length(content)), blob_id, chunk_size, \
             CASE WHEN blob_id IS NULL THEN substr(content, ?2 + 1, ?3) END, path \
             FROM files WHERE id = ?1",
            libsql::params![v, o, l],
        )
        .await
    } else {
        query_all(
            conn,
            "SELECT v.size, v.blob_id, v.chunk_size, \
             CASE WHEN v.blob_id IS NULL THEN substr(v.content, ?2 + 1, ?3) END, f.path \
             FROM variants v JOIN files f ON f.id = v.file_id WHERE v.file_id = ?1 AND v.encoding = ?4",
            libsql::params![v, o, l, encoding],
        )
        .await
    }
    .map_err(|e| StoreError::read("read", e))?;
    let Some(row) = rows.first() else { return Ok(None) };
    if reader == Reader::Public && turserver_protocol::is_reserved(&row.text(4)?) {
        // The host's own rows (the deployed worker) are not files.
        return Ok(None);
    }
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
pub(super) fn parse_encodings(list: &str) -> Vec<(String, u64)> {
    list.split(',')
        .filter_map(|e| {
            let (name, size) = e.split_once(':')?;
            Some((name.to_string(), size.parse().ok()?))
        })
        .collect()
}


/// Cuts a listing read with one row past `limit` down to `limit`; the
/// cursor of the next page (the last kept name) when there is one.
pub(super) fn split_page<T>(items: &mut Vec<T>, limit: u32, name: impl Fn(&T) -> String) -> Option<String> {
    if items.len() <= limit as usize {
        return None;
    }
    items.truncate(limit as usize);
    items.last().map(name)
}

/// The smallest string greater than every string that starts with `prefix`,
/// or None when there is none (empty prefix, or it ends in U+10FFFF).
pub(super) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    let last = chars.pop()?;
    let next = (last as u32 + 1..=0x10FFFF).find_map(char::from_u32)?;
    chars.push(next);
    Some(chars.into_iter().collect())
}
