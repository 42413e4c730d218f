//! A site's limits on what its database holds: how many files and how many
//! bytes. Checked inside the transaction that publishes, so a write past a
//! limit stores nothing, and a delete frees its share at once. The host's
//! own documents (`_turserver/…`: site rules, keys, the worker) are not
//! counted.

use super::error::StoreError;
use super::sql::query_all;
use libsql::Connection;

/// The limits of one database (none: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub max_files: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// Which limit a write would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    /// `max_files` or `max_bytes`.
    pub limit: &'static str,
    pub max: u64,
    /// What the database would hold with the write.
    pub would_be: u64,
}

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.limit {
            "max_files" => write!(f, "this site may hold at most {} files (max_files); the write would make {}", self.max, self.would_be),
            _ => write!(f, "this site may hold at most {} bytes (max_bytes); the write would make {}", self.max, self.would_be),
        }
    }
}

/// Files and body bytes a database holds, as `conn` sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

impl Quota {
    pub fn is_set(&self) -> bool {
        self.max_files.is_some() || self.max_bytes.is_some()
    }

    /// Whether a database holding `totals` is within the limits.
    pub fn check(&self, totals: Totals) -> Result<(), LimitExceeded> {
        if let Some(max) = self.max_files.filter(|m| totals.files > *m) {
            return Err(LimitExceeded { limit: "max_files", max, would_be: totals.files });
        }
        if let Some(max) = self.max_bytes.filter(|m| totals.bytes > *m) {
            return Err(LimitExceeded { limit: "max_bytes", max, would_be: totals.bytes });
        }
        Ok(())
    }
}

/// The files and bytes counted against the limits.
pub(super) async fn totals(conn: &Connection) -> Result<Totals, StoreError> {
    let rows = query_all(
        conn,
        "SELECT count(*), CAST(total(size) AS INTEGER) FROM files WHERE substr(path, 1, 11) != '_turserver/'",
        (),
    )
    .await
    .map_err(|e| StoreError::read("counting the site's files", e))?;
    let row = rows.first().ok_or_else(|| StoreError::Internal("counting files returned no row".into()))?;
    Ok(Totals { files: row.i64(0)?.max(0) as u64, bytes: row.i64(1)?.max(0) as u64 })
}

/// Whether `path` counts against the limits.
pub(super) fn counted(path: &str) -> bool {
    !path.starts_with("_turserver/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_limit_passed_is_named() {
        let quota = Quota { max_files: Some(2), max_bytes: Some(100) };
        assert_eq!(quota.check(Totals { files: 2, bytes: 100 }), Ok(()));
        let files = quota.check(Totals { files: 3, bytes: 10 }).unwrap_err();
        assert_eq!((files.limit, files.max, files.would_be), ("max_files", 2, 3));
        let bytes = quota.check(Totals { files: 1, bytes: 101 }).unwrap_err();
        assert_eq!(bytes.limit, "max_bytes");
        assert!(bytes.to_string().contains("at most 100 bytes"), "{bytes}");
        assert_eq!(Quota::default().check(Totals { files: u64::MAX, bytes: u64::MAX }), Ok(()));
    }
}
