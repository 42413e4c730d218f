//! Writes that are not uploads: deletes, the site document, starting
//! uploads and batches, and garbage collection of uploads whose writer
//! died; with the checks a conditional write makes in its transaction.

use super::error::StoreError;
use super::sql::query_all;
use super::upload::{self, Batch, Expect, Upload};
use super::{unix_now, Store, STALE_UPLOAD_SECS};
use super::publish::placeholders;
use libsql::{Connection, Value};
use std::collections::HashMap;
use sha2::{Digest, Sha256};
use std::sync::Arc;

impl Store {
    /// Deletes the file at `path`; false when there was none.
    pub async fn delete(&self, path: &str, expect: Option<&Expect>) -> Result<bool, StoreError> {
        let w = |e| StoreError::write("delete", e);
        let conn = self.conn().await?;
        let tx = conn.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await.map_err(w)?;
        let current = current(&tx, path).await?;
        let outcome = match (&current, check_expectation(expect, current.as_ref())) {
            (_, Err(e)) => Err(e),
            (None, Ok(())) => Ok(false),
            (Some(c), Ok(())) => remove_files(&tx, &[c.id]).await.map(|()| true),
        };
        self.end_delete(conn, tx, "delete", outcome).await
    }

    /// Ends a delete's transaction: committed when it removed something,
    /// else rolled back; a removal is made visible here before it returns.
    pub(super) async fn end_delete(
        &self,
        conn: Connection,
        tx: libsql::Transaction,
        op: &'static str,
        outcome: Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let w = |e| StoreError::write(op, e);
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

    /// Replaces a site-wide document with what `change` makes of it, in
    /// one transaction on the primary, so two changes made at once on two
    /// edges never lose one another. `change` refuses with a reason
    /// (`StoreError::Invalid`). Returns the new document.
    pub async fn update_site_config(
        &self,
        key: &str,
        change: impl FnOnce(Option<String>) -> Result<String, String>,
    ) -> Result<String, StoreError> {
        let w = |e| StoreError::write("site config", e);
        let conn = self.conn().await?;
        let tx = conn.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await.map_err(w)?;
        let rows = query_all(&tx, "SELECT value FROM site_config WHERE key = ?1", [key]).await.map_err(w)?;
        let old = rows.first().map(|r| r.text(0)).transpose()?;
        let new = match change(old) {
            Ok(new) => new,
            Err(why) => {
                tx.rollback().await.map_err(w)?;
                self.put_back(conn);
                return Err(StoreError::Invalid(why));
            }
        };
        tx.execute(
            "INSERT INTO site_config (key, value, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            libsql::params![key, new.as_str(), unix_now()],
        )
        .await
        .map_err(w)?;
        tx.commit().await.map_err(w)?;
        self.put_back(conn);
        self.written().await;
        Ok(new)
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


/// The file currently at a path, as a write transaction sees it.
pub(super) struct Current {
    pub id: i64,
    pub created_at: i64,
    pub hash: String,
    pub size: u64,
}

pub(super) async fn current(conn: &Connection, path: &str) -> Result<Option<Current>, StoreError> {
    Ok(currents(conn, &[path]).await?.remove(path))
}

/// The files currently at `paths` (those that have one), by path.
pub(super) async fn currents(conn: &Connection, paths: &[&str]) -> Result<HashMap<String, Current>, StoreError> {
    let mut found = HashMap::new();
    for group in paths.chunks(500) {
        let sql = format!(
            "SELECT path, id, created_at, hash, CASE WHEN hash IS NULL THEN content END, size FROM files WHERE path IN ({})",
            placeholders(group.len())
        );
        let params: Vec<Value> = group.iter().map(|p| Value::Text(p.to_string())).collect();
        let rows = query_all(conn, &sql, params).await.map_err(|e| StoreError::write("reading the current file", e))?;
        for row in rows {
            let hash = match row.opt_text(3)? {
                Some(h) => h,
                None => hex::encode(Sha256::digest(row.opt_blob(4)?.unwrap_or_default())),
            };
            found.insert(row.text(0)?, Current { id: row.i64(1)?, created_at: row.i64(2)?, hash, size: row.i64(5)?.max(0) as u64 });
        }
    }
    Ok(found)
}

/// Checks a conditional write against what is at the path.
pub(super) fn check_expectation(expect: Option<&Expect>, current: Option<&Current>) -> Result<(), StoreError> {
    match (expect, current) {
        (None, _) | (Some(Expect::Absent), None) => Ok(()),
        (Some(Expect::Hash(h)), Some(c)) if *h == c.hash => Ok(()),
        _ => Err(StoreError::PreconditionFailed),
    }
}

/// Deletes file rows with their chunks and encodings.
pub(super) async fn remove_files(conn: &Connection, ids: &[i64]) -> Result<(), StoreError> {
    let w = |e| StoreError::write("removing a file", e);
    for group in ids.chunks(500) {
        let list = placeholders(group.len());
        let params = || group.iter().map(|id| Value::Integer(*id)).collect::<Vec<_>>();
        let sql = format!(
            "DELETE FROM chunks WHERE blob_id IN (SELECT blob_id FROM files WHERE id IN ({list}) AND blob_id IS NOT NULL \
             UNION SELECT blob_id FROM variants WHERE file_id IN ({list}) AND blob_id IS NOT NULL)"
        );
        let doubled: Vec<Value> = params().into_iter().chain(params()).collect();
        conn.execute(&sql, doubled).await.map_err(w)?;
        conn.execute(&format!("DELETE FROM variants WHERE file_id IN ({list})"), params()).await.map_err(w)?;
        conn.execute(&format!("DELETE FROM files WHERE id IN ({list})"), params()).await.map_err(w)?;
    }
    Ok(())
}
