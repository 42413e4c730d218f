//! The connection pool: idle connections kept for reuse, since opening one
//! per request would cost a file open and a cold page cache each time.

use super::error::StoreError;
use super::{Mode, Store};
use libsql::Connection;

impl Store {

    pub(super) async fn conn(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().expect("connection pool poisoned").pop() {
            return Ok(c);
        }
        let conn = self.db.connect().map_err(|e| StoreError::read("connecting", e))?;
        if self.mode == Mode::Local {
            // Concurrent local writers wait for each other instead of failing.
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(|e| StoreError::read("setting busy timeout", e))?;
            // Read pages through a mapping rather than a pread (and a copy)
            // per page: large bodies are long overflow chains.
            super::sql::query_all(&conn, "PRAGMA mmap_size = 1073741824", ())
                .await
                .map_err(|e| StoreError::read("setting mmap_size", e))?;
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
}
