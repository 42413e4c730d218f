//! Streaming uploads. Bytes are buffered up to one chunk; full chunks are
//! written at once under a staging `blob_id`, each in its own short
//! statement (a slow client never holds a write transaction open on the
//! primary). `finish` publishes the file in one small transaction; an upload
//! dropped before that is discarded.

use super::{query_all, unix_now, FileMeta, Store, CHUNK_SIZE};
use std::sync::Arc;
use crate::error::StoreError;
use libsql::Connection;
use sha2::{Digest, Sha256};

pub struct Upload {
    store: Arc<Store>,
    conn: Connection,
    path: String,
    content_type: String,
    max_size: u64,
    hasher: Sha256,
    size: u64,
    /// Bytes not yet written: less than one chunk.
    pending: Vec<u8>,
    /// Staging id, taken when the first full chunk is written.
    blob: Option<i64>,
    next_seq: i64,
}

impl Upload {
    pub(super) fn new(store: Arc<Store>, conn: Connection, path: &str, content_type: &str, max_size: u64) -> Self {
        Upload {
            store,
            conn,
            path: path.to_string(),
            content_type: content_type.to_string(),
            max_size,
            hasher: Sha256::new(),
            size: 0,
            pending: Vec::new(),
            blob: None,
            next_seq: 0,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Appends bytes, writing every chunk that fills up.
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), StoreError> {
        let size = self.size + bytes.len() as u64;
        if size > self.max_size {
            return Err(StoreError::TooLarge(self.max_size));
        }
        self.size = size;
        self.hasher.update(bytes);
        while !bytes.is_empty() {
            let room = CHUNK_SIZE - self.pending.len();
            let take = room.min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == CHUNK_SIZE {
                let chunk = std::mem::take(&mut self.pending);
                self.write_chunk(chunk).await?;
            }
        }
        Ok(())
    }

    async fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), StoreError> {
        let blob = match self.blob {
            Some(b) => b,
            None => {
                self.conn
                    .execute(
                        "INSERT INTO uploads (path, started_at) VALUES (?1, ?2)",
                        libsql::params![self.path.as_str(), unix_now()],
                    )
                    .await
                    .map_err(|e| StoreError::write("staging an upload", e))?;
                let b = self.conn.last_insert_rowid();
                self.blob = Some(b);
                b
            }
        };
        self.conn
            .execute(
                "INSERT INTO chunks (blob_id, seq, data) VALUES (?1, ?2, ?3)",
                libsql::params![blob, self.next_seq, chunk],
            )
            .await
            .map_err(|e| StoreError::write("writing a chunk", e))?;
        self.next_seq += 1;
        Ok(())
    }

    /// Publishes the file, replacing any previous one at its path. Returns
    /// its metadata and whether the path was new.
    pub async fn finish(mut self) -> Result<(FileMeta, bool), StoreError> {
        let hash = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let inline = if self.blob.is_none() {
            Some(std::mem::take(&mut self.pending))
        } else {
            if !self.pending.is_empty() {
                let last = std::mem::take(&mut self.pending);
                self.write_chunk(last).await?;
            }
            None
        };
        let now = unix_now();
        let result = self.publish(&hash, inline, now).await;
        if result.is_err() {
            self.discard_staged().await;
        }
        let (version, created_at, created) = result?;
        self.store.written().await;
        Ok((
            FileMeta {
                path: self.path.clone(),
                version,
                size: self.size,
                content_type: self.content_type.clone(),
                hash,
                last_modified: now as u64,
                created: created_at as u64,
            },
            created,
        ))
    }

    async fn publish(&self, hash: &str, inline: Option<Vec<u8>>, now: i64) -> Result<(u64, i64, bool), StoreError> {
        let w = |e| StoreError::write("publishing an upload", e);
        let tx = self.conn.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await.map_err(w)?;
        let old = query_all(&tx, "SELECT id, blob_id, created_at FROM files WHERE path = ?1", [self.path.as_str()])
            .await
            .map_err(w)?;
        let mut created_at = now;
        if let Some(row) = old.first() {
            let id = row.i64(0)?;
            let old_blob = row.opt_i64(1)?;
            created_at = row.i64(2)?;
            tx.execute("DELETE FROM files WHERE id = ?1", [id]).await.map_err(w)?;
            if let Some(b) = old_blob {
                tx.execute("DELETE FROM chunks WHERE blob_id = ?1", [b]).await.map_err(w)?;
            }
        }
        let (chunk_size, blob) = match self.blob {
            Some(b) => (Some(CHUNK_SIZE as i64), Some(b)),
            None => (None, None),
        };
        tx.execute(
            "INSERT INTO files (path, content, content_type, last_modified, size, created_at, hash, blob_id, chunk_size) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            libsql::params![
                self.path.as_str(),
                inline,
                self.content_type.as_str(),
                now,
                self.size as i64,
                created_at,
                hash,
                blob,
                chunk_size
            ],
        )
        .await
        .map_err(w)?;
        let version = tx.last_insert_rowid();
        if let Some(b) = blob {
            tx.execute("DELETE FROM uploads WHERE blob_id = ?1", [b]).await.map_err(w)?;
        }
        tx.commit().await.map_err(w)?;
        Ok((version as u64, created_at, old.is_empty()))
    }

    /// Drops the upload and deletes whatever it staged.
    pub async fn abort(mut self) {
        self.discard_staged().await;
    }

    async fn discard_staged(&mut self) {
        if let Some(blob) = self.blob.take() {
            if let Err(e) = discard(&self.conn, blob).await {
                // Garbage collection removes it later.
                tracing::warn!(cause = %e, blob, path = %self.path, "could not discard an unfinished upload");
            }
        }
    }
}

/// Deletes a staged blob and its staging row.
pub(super) async fn discard(conn: &Connection, blob: i64) -> Result<(), StoreError> {
    let w = |e| StoreError::write("discarding an upload", e);
    conn.execute("DELETE FROM chunks WHERE blob_id = ?1", [blob]).await.map_err(w)?;
    conn.execute("DELETE FROM uploads WHERE blob_id = ?1", [blob]).await.map_err(w)?;
    Ok(())
}
