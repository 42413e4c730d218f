//! Key-value entries (`kv`), replicated like files: reads are local to the
//! edge, writes go to the primary in one transaction with their
//! compare-and-set check. An entry past its `expires_at` reads as absent
//! everywhere at once (reads compare with the clock); pruning removes it
//! later. Writes are logged in the change log as `_api/kv/{key}`.

use super::error::StoreError;
use super::reads::{ReadEntry, ReadKey, SMALL_READ_BYTES};
use super::sql::query_all;
use super::{unix_now, Store};
use libsql::Value;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Most keys one listing page returns.
pub const MAX_KEYS_PAGE: u32 = 1000;
/// Where the change log and token rules name a key.
pub const KV_PATH_PREFIX: &str = "_api/kv/";

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    /// None: the value is JSON.
    pub content_type: Option<String>,
    /// Grows with every write of the key: its ETag.
    pub version: u64,
    pub expires_at: Option<i64>,
}

impl KvEntry {
    /// Not past its expiry, by the clock now.
    fn is_live(&self) -> bool {
        self.expires_at.is_none_or(|at| at > unix_now())
    }
}

/// What a write expects to find (`If-Match`, `If-None-Match: *`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvExpect {
    Absent,
    /// Any live entry (`If-Match: *`).
    Present,
    Version(u64),
}

/// A key the store accepts: 1 to [`MAX_KEY`] bytes, no control characters.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(format!("a key is 1 to {MAX_KEY} bytes (got {})", key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err("a key may not contain control characters".into());
    }
    Ok(())
}

impl Store {
    /// The live entry at `key`. A read the edge served before costs no SQL
    /// until a write of the key (here or synced) makes it stale.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        let generation = self.generation();
        let cached = ReadKey::Kv(key.to_string());
        if let Some(ReadEntry::Kv(g, entry)) = self.reads.get(&cached) {
            if self.path_is_fresh(g, &format!("{KV_PATH_PREFIX}{key}")) {
                return Ok(entry.filter(KvEntry::is_live));
            }
        }
        let entry = self.kv_get_stored(key).await?;
        if entry.as_ref().is_none_or(|e| e.value.len() as u64 <= SMALL_READ_BYTES) {
            self.reads.insert(cached, ReadEntry::Kv(generation, entry.clone()));
        }
        Ok(entry.filter(KvEntry::is_live))
    }

    /// The entry stored at `key`, expired or not.
    async fn kv_get_stored(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        let conn = self.conn().await?;
        let rows = query_all(
            &conn,
            "SELECT key, value, content_type, version, expires_at FROM kv WHERE key = ?1",
            vec![Value::Text(key.to_string())],
        )
        .await
        .map_err(|e| StoreError::read("a key-value read", e));
        self.put_back(conn);
        let Some(mut row) = rows?.into_iter().next() else { return Ok(None) };
        Ok(Some(KvEntry {
            key: row.text(0)?,
            value: row.take_blob(1)?.unwrap_or_default(),
            content_type: row.opt_text(2)?,
            version: row.i64(3)? as u64,
            expires_at: row.opt_i64(4)?,
        }))
    }

    /// Live keys starting with `prefix`, after `cursor`, in order; the
    /// cursor of the next page.
    pub async fn kv_list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<KvEntry>, Option<String>), StoreError> {
        let limit = limit.clamp(1, MAX_KEYS_PAGE);
        // A range on the key (as file listings do), so the index serves it.
        let upper = super::reads::prefix_upper_bound(prefix);
        let conn = self.conn().await?;
        let rows = query_all(
            &conn,
            "SELECT key, version, expires_at FROM kv \
             WHERE key >= ?1 AND (?2 IS NULL OR key < ?2) AND key > ?3 AND (expires_at IS NULL OR expires_at > ?4) \
             ORDER BY key LIMIT ?5",
            vec![
                Value::Text(prefix.to_string()),
                upper.map_or(Value::Null, Value::Text),
                Value::Text(cursor.unwrap_or_default().to_string()),
                Value::Integer(unix_now()),
                Value::Integer(i64::from(limit) + 1),
            ],
        )
        .await
        .map_err(|e| StoreError::read("a key-value listing", e));
        self.put_back(conn);
        let mut out = Vec::new();
        for row in rows? {
            out.push(KvEntry {
                key: row.text(0)?,
                value: Vec::new(),
                content_type: None,
                version: row.i64(1)? as u64,
                expires_at: row.opt_i64(2)?,
            });
        }
        out.retain(|e| e.key.starts_with(prefix));
        let next = super::reads::split_page(&mut out, limit, |e| e.key.clone());
        Ok((out, next))
    }

    /// Writes `value` at `key` if `expect` holds; the new version and
    /// whether the key was created (absent or expired before).
    pub async fn kv_put(
        &self,
        key: &str,
        value: Vec<u8>,
        content_type: Option<&str>,
        ttl: Option<u64>,
        expect: Option<&KvExpect>,
    ) -> Result<(u64, bool), StoreError> {
        if value.len() > MAX_VALUE {
            return Err(StoreError::TooLarge(MAX_VALUE as u64));
        }
        let w = |e| StoreError::write("a key-value write", e);
        let now = unix_now();
        let expires_at = ttl.map(|t| expiry(t, std::time::SystemTime::now()));
        let conn = self.conn().await?;
        let tx = conn.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await.map_err(w)?;
        let (stored, current) = versions(&tx, key, now).await?;
        if let Err(e) = check(expect, current) {
            tx.rollback().await.map_err(w)?;
            self.put_back(conn);
            return Err(e);
        }
        // Versions keep growing past an expiry, so an old ETag never matches.
        let version = stored.unwrap_or(0) + 1;
        tx.execute(
            "INSERT INTO kv (key, value, content_type, version, expires_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, content_type = excluded.content_type, \
             version = excluded.version, expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            vec![
                Value::Text(key.to_string()),
                Value::Blob(value),
                content_type.map_or(Value::Null, |c| Value::Text(c.to_string())),
                Value::Integer(version as i64),
                expires_at.map_or(Value::Null, Value::Integer),
                Value::Integer(now),
            ],
        )
        .await
        .map_err(w)?;
        tx.commit().await.map_err(w)?;
        self.put_back(conn);
        self.written().await;
        Ok((version, current.is_none()))
    }

    /// Deletes the live entry at `key` if `expect` holds; false when there
    /// was none.
    pub async fn kv_delete(&self, key: &str, expect: Option<&KvExpect>) -> Result<bool, StoreError> {
        let w = |e| StoreError::write("a key-value delete", e);
        let now = unix_now();
        let conn = self.conn().await?;
        let tx = conn.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await.map_err(w)?;
        let (_, current) = versions(&tx, key, now).await?;
        let outcome = match check(expect, current) {
            Err(e) => Err(e),
            Ok(()) if current.is_none() => Ok(false),
            Ok(()) => tx.execute("DELETE FROM kv WHERE key = ?1", [key]).await.map(|_| true).map_err(w),
        };
        self.end_delete(conn, tx, "a key-value delete", outcome).await
    }

    /// Removes entries that expired; how many.
    pub async fn kv_remove_expired(&self) -> Result<u64, StoreError> {
        let now = unix_now();
        // Asked locally first: an edge with nothing expired writes nothing.
        if self.read_i64("expired keys", "SELECT COUNT(*) FROM kv WHERE expires_at <= ?1", [now]).await? == 0 {
            return Ok(0);
        }
        let conn = self.conn().await?;
        let removed = conn
            .execute("DELETE FROM kv WHERE expires_at <= ?1", [now])
            .await
            .map_err(|e| StoreError::write("removing expired keys", e));
        self.put_back(conn);
        let removed = removed?;
        self.written().await;
        Ok(removed)
    }
}

/// The version stored at `key` (expired or not), and the live one, inside
/// a write transaction.
async fn versions(conn: &libsql::Connection, key: &str, now: i64) -> Result<(Option<u64>, Option<u64>), StoreError> {
    let rows = query_all(conn, "SELECT version, expires_at FROM kv WHERE key = ?1", [key])
        .await
        .map_err(|e| StoreError::write("reading the current key", e))?;
    let Some(row) = rows.first() else { return Ok((None, None)) };
    let version = row.i64(0)? as u64;
    let live = row.opt_i64(1)?.is_none_or(|at| at > now);
    Ok((Some(version), live.then_some(version)))
}

fn check(expect: Option<&KvExpect>, current: Option<u64>) -> Result<(), StoreError> {
    match (expect, current) {
        (None, _) | (Some(KvExpect::Absent), None) | (Some(KvExpect::Present), Some(_)) => Ok(()),
        (Some(KvExpect::Version(v)), Some(c)) if *v == c => Ok(()),
        _ => Err(StoreError::PreconditionFailed),
    }
}

/// The whole second (Unix time) at which an entry written at `at` with
/// `ttl` seconds expires: the first one at least `ttl` seconds away, so a
/// ttl of 1 never lasts only the rest of the current second.
fn expiry(ttl: u64, at: std::time::SystemTime) -> i64 {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let whole = since.as_secs() as i64 + i64::from(since.subsec_nanos() > 0);
    whole.saturating_add(ttl.min(i64::MAX as u64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_at_least_its_ttl() {
        let second = |s: u64, ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(s * 1000 + ms);
        // Written late in second 100: 1 s later is 101.999, so it ends at 102.
        assert_eq!(expiry(1, second(100, 999)), 102);
        assert_eq!(expiry(1, second(100, 0)), 101);
        assert_eq!(expiry(60, second(100, 1)), 161);
        assert_eq!(expiry(u64::MAX, second(100, 1)), i64::MAX);
    }

    #[test]
    fn keys_are_checked() {
        assert!(validate_key("flags/beta").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY + 1)).is_err());
        assert!(validate_key("a\nb").is_err());
    }

    #[test]
    fn compare_and_set() {
        assert!(check(None, Some(3)).is_ok());
        assert!(check(Some(&KvExpect::Absent), None).is_ok());
        assert!(check(Some(&KvExpect::Absent), Some(1)).is_err());
        assert!(check(Some(&KvExpect::Version(2)), Some(2)).is_ok());
        assert!(check(Some(&KvExpect::Version(2)), Some(3)).is_err());
        assert!(check(Some(&KvExpect::Version(2)), None).is_err());
    }
}
