//! The change log (`changes`, written by triggers: see `schema`): reading it
//! after a cursor, waking whoever waits for it, and pruning it by age and
//! count.
//!
//! A cursor is a sequence number. The log's sequence only grows, and a
//! transaction's rows are all visible or none, so "every row up to the
//! latest sequence assigned" is a consistent cut: a page reads the latest
//! sequence first, then the rows up to it.

use super::error::StoreError;
use super::sql::query_all;
use super::{unix_now, Store};
use libsql::Value;
use std::time::Duration;

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Put => "put",
            ChangeKind::Delete => "delete",
        }
    }
}

/// One row of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub path: String,
    pub kind: ChangeKind,
    /// The file's version after a put, the removed version after a delete
    /// (none for site-wide documents).
    pub version: Option<u64>,
    /// When it was written (Unix seconds, the primary's clock).
    pub at: i64,
}

/// Changes after a cursor, and the cursor to ask with next.
#[derive(Debug, Default)]
pub struct ChangePage {
    pub changes: Vec<Change>,
    /// Every change up to here has been looked at (those of other
    /// prefixes included).
    pub next: u64,
    /// The latest sequence this edge holds.
    pub latest: u64,
}

/// Why a page could not be read.
#[derive(Debug)]
pub enum FeedError {
    /// The cursor is older than what pruning kept: the caller missed
    /// changes and must resync from `oldest`.
    Pruned { oldest: u64 },
    Store(StoreError),
}

impl From<StoreError> for FeedError {
    fn from(e: StoreError) -> Self {
        FeedError::Store(e)
    }
}

/// How long and how much of the log is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub age: Duration,
    pub rows: u64,
}

/// Most changes one page returns.
pub const MAX_PAGE: u32 = 1000;

/// Pages recently read, by (since, latest, prefix, limit).
pub(super) type Pages = quick_cache::sync::Cache<(u64, u64, String, u32), std::sync::Arc<Vec<Change>>>;

pub(super) fn pages() -> Pages {
    quick_cache::sync::Cache::new(256)
}

impl Store {
    /// A receiver that sees a new value whenever the local database may
    /// have changed (a write here, a sync that brought frames).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// The latest sequence assigned to a change this edge holds; read once
    /// per generation of the store however many wait for it.
    pub async fn latest_change(&self) -> Result<u64, StoreError> {
        let generation = self.generation();
        let mut cached = self.latest_change.lock().await;
        if let Some((g, seq)) = *cached {
            if g == generation {
                return Ok(seq);
            }
        }
        let seq = self.latest_change_uncached().await?;
        *cached = Some((generation, seq));
        Ok(seq)
    }

    pub(super) async fn latest_change_uncached(&self) -> Result<u64, StoreError> {
        let seq = self.read_i64("the change log", "SELECT seq FROM sqlite_sequence WHERE name = 'changes'", ()).await?;
        Ok(seq.max(0) as u64)
    }

    /// The changes after `since` (of paths starting with `prefix`), at
    /// most `limit`.
    pub async fn changes_after(&self, since: u64, limit: u32, prefix: &str) -> Result<ChangePage, FeedError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let latest = self.latest_change().await?;
        if since >= latest {
            return Ok(ChangePage { changes: Vec::new(), next: since, latest });
        }
        self.check_cursor(since).await?;
        // Subscribers at the same cursor share one read: rows up to
        // `latest` never change (pruning is checked on every call).
        let key = (since, latest, prefix.to_string(), limit);
        let changes = match self.pages.get(&key) {
            Some(changes) => changes,
            None => {
                let changes = std::sync::Arc::new(self.read_changes(since, latest, prefix, limit).await?);
                self.pages.insert(key, changes.clone());
                changes
            }
        };
        // Pruning may have run between the check and the read.
        self.check_cursor(since).await?;
        let next = match changes.last() {
            Some(last) if changes.len() == limit as usize => last.seq,
            _ => latest,
        };
        Ok(ChangePage { changes: changes.to_vec(), next, latest })
    }

    async fn read_changes(&self, since: u64, latest: u64, prefix: &str, limit: u32) -> Result<Vec<Change>, StoreError> {
        let conn = self.conn().await?;
        let read = |e| StoreError::read("the change log", e);
        let rows = query_all(
            &conn,
            "SELECT seq, path, kind, version, at FROM changes \
             WHERE seq > ?1 AND seq <= ?2 AND substr(path, 1, length(?3)) = ?3 ORDER BY seq LIMIT ?4",
            vec![
                Value::Integer(since as i64),
                Value::Integer(latest as i64),
                Value::Text(prefix.to_string()),
                Value::Integer(limit.into()),
            ],
        )
        .await
        .map_err(read);
        self.put_back(conn);
        let mut changes = Vec::with_capacity(rows.as_ref().map_or(0, Vec::len));
        for row in rows? {
            let kind = match row.text(2)?.as_str() {
                "delete" => ChangeKind::Delete,
                _ => ChangeKind::Put,
            };
            changes.push(Change {
                seq: row.i64(0)? as u64,
                path: row.text(1)?,
                kind,
                version: row.opt_i64(3)?.map(|v| v as u64),
                at: row.i64(4)?,
            });
        }
        Ok(changes)
    }

    /// Whether changes after `since` are all still kept: `Pruned` with the
    /// oldest sequence kept when they are not.
    pub async fn check_cursor(&self, since: u64) -> Result<(), FeedError> {
        let through = self.pruned_through().await?;
        if since < through {
            return Err(FeedError::Pruned { oldest: through + 1 });
        }
        Ok(())
    }

    /// The highest sequence pruned, as of the current generation.
    async fn pruned_through(&self) -> Result<u64, StoreError> {
        let generation = self.generation();
        if let Some((g, through)) = *self.pruned.lock().expect("poisoned") {
            if g == generation {
                return Ok(through);
            }
        }
        let through = self.pruned_through_uncached().await?;
        *self.pruned.lock().expect("poisoned") = Some((generation, through));
        Ok(through)
    }

    pub(super) async fn pruned_through_uncached(&self) -> Result<u64, StoreError> {
        let through = self.read_i64("the change log", "SELECT through FROM changes_pruned WHERE id = 1", ()).await?;
        Ok(through.max(0) as u64)
    }

    /// Removes changes older than `keep.age`, and all but the latest
    /// `keep.rows`; returns how many went. Every edge may run it: what this
    /// edge sees decides whether there is anything to do, the primary
    /// decides what goes.
    pub async fn prune_changes(&self, keep: Retention) -> Result<u64, StoreError> {
        let latest = self.latest_change().await? as i64;
        let by_count = latest.saturating_sub(keep.rows.min(i64::MAX as u64) as i64);
        let cutoff_at = unix_now().saturating_sub(keep.age.as_secs().min(i64::MAX as u64) as i64);
        let by_age = self.read_i64("the change log", "SELECT MAX(seq) FROM changes WHERE at < ?1", [cutoff_at]).await?;
        let through = by_count.max(by_age);
        if through <= self.pruned_through_uncached().await? as i64 {
            return Ok(0);
        }
        let w = |e| StoreError::write("pruning the change log", e);
        let conn = self.conn().await?;
        let tx = conn.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await.map_err(w)?;
        let removed = tx.execute("DELETE FROM changes WHERE seq <= ?1", [through]).await.map_err(w)?;
        tx.execute(
            "INSERT INTO changes_pruned (id, through) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET through = MAX(through, excluded.through)",
            [through],
        )
        .await
        .map_err(w)?;
        tx.commit().await.map_err(w)?;
        self.put_back(conn);
        self.written().await;
        Ok(removed)
    }
}

/// The highest sequence of the log, read inside a write transaction (the
/// primary's view).
pub(super) async fn last_seq(conn: &libsql::Connection) -> Result<i64, StoreError> {
    let rows = query_all(conn, "SELECT COALESCE(MAX(seq), 0) FROM changes", ())
        .await
        .map_err(|e| StoreError::write("reading the change log", e))?;
    rows.first().map(|r| r.i64(0)).transpose().map(|v| v.unwrap_or(0))
}

/// Folds a replacement written in this transaction (the old row deleted,
/// the new one inserted, both logged after `before`) into the one `put`.
pub(super) async fn fold_replacements(conn: &libsql::Connection, before: i64) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM changes WHERE seq > ?1 AND kind = 'delete' \
         AND path IN (SELECT path FROM changes WHERE seq > ?1 AND kind = 'put')",
        [before],
    )
    .await
    .map_err(|e| StoreError::write("logging the change", e))?;
    Ok(())
}
