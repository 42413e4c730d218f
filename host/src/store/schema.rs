//! Versioned schema migrations. They run as ordinary statements through the
//! connection, so with a replica they execute on the primary (delegated
//! writes) and reach every edge by sync; nothing writes a replica file
//! directly.

use anyhow::Context;
use libsql::Connection;

/// Each entry upgrades the schema from version `index` to `index + 1`.
/// Append only: a shipped migration never changes.
const MIGRATIONS: &[&[&str]] = &[&[
    // `content` holds small bodies inline (and rows written directly on the
    // primary); larger bodies live in `chunks` under `blob_id`. `size` and
    // `hash` may be NULL for rows written by hand; readers derive them.
    "CREATE TABLE IF NOT EXISTS files (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        content BLOB,
        content_type TEXT NOT NULL DEFAULT 'application/octet-stream',
        last_modified INTEGER NOT NULL DEFAULT (unixepoch()),
        size INTEGER,
        created_at INTEGER NOT NULL DEFAULT (unixepoch()),
        hash TEXT,
        blob_id INTEGER,
        chunk_size INTEGER
    )",
    "CREATE TABLE IF NOT EXISTS chunks (
        blob_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (blob_id, seq)
    )",
    // Uploads whose chunks are written but not yet published; rows left here
    // by a crash are garbage collected. AUTOINCREMENT: a blob id is never
    // reused, even after its staging row is deleted on publish.
    "CREATE TABLE IF NOT EXISTS uploads (
        blob_id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL,
        started_at INTEGER NOT NULL
    )",
], &[
    // Precompressed forms of a file's body, stored like bodies themselves.
    "CREATE TABLE IF NOT EXISTS variants (
        file_id INTEGER NOT NULL,
        encoding TEXT NOT NULL,
        size INTEGER NOT NULL,
        content BLOB,
        blob_id INTEGER,
        chunk_size INTEGER,
        PRIMARY KEY (file_id, encoding)
    )",
    // Site-wide settings (one JSON document per key), replicated like files.
    "CREATE TABLE IF NOT EXISTS site_config (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    )",
], &[
    // The change log: one row per changed path, written by triggers in the
    // transaction that changes it, so rows written straight into `files`
    // on the primary are recorded as well. A replacement made by turserver
    // (a delete and an insert in one transaction) is folded into one `put`
    // by the writer. Site-wide documents are logged under
    // `_turserver/config/{key}`.
    "CREATE TABLE IF NOT EXISTS changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        version INTEGER,
        at INTEGER NOT NULL DEFAULT (unixepoch())
    )",
    "CREATE INDEX IF NOT EXISTS changes_at ON changes (at)",
    // The highest sequence pruning removed: a cursor below it has missed
    // changes and must resync.
    "CREATE TABLE IF NOT EXISTS changes_pruned (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        through INTEGER NOT NULL
    )",
    "CREATE TRIGGER IF NOT EXISTS files_insert_logged AFTER INSERT ON files BEGIN
        INSERT INTO changes (path, kind, version) VALUES (NEW.path, 'put', NEW.id);
    END",
    "CREATE TRIGGER IF NOT EXISTS files_update_logged AFTER UPDATE ON files BEGIN
        INSERT INTO changes (path, kind, version)
            SELECT OLD.path, 'delete', OLD.id WHERE OLD.path IS NOT NEW.path;
        INSERT INTO changes (path, kind, version) VALUES (NEW.path, 'put', NEW.id);
    END",
    "CREATE TRIGGER IF NOT EXISTS files_delete_logged AFTER DELETE ON files BEGIN
        INSERT INTO changes (path, kind, version) VALUES (OLD.path, 'delete', OLD.id);
    END",
    "CREATE TRIGGER IF NOT EXISTS site_config_insert_logged AFTER INSERT ON site_config BEGIN
        INSERT INTO changes (path, kind) VALUES ('_turserver/config/' || NEW.key, 'put');
    END",
    "CREATE TRIGGER IF NOT EXISTS site_config_update_logged AFTER UPDATE ON site_config BEGIN
        INSERT INTO changes (path, kind) VALUES ('_turserver/config/' || NEW.key, 'put');
    END",
    "CREATE TRIGGER IF NOT EXISTS site_config_delete_logged AFTER DELETE ON site_config BEGIN
        INSERT INTO changes (path, kind) VALUES ('_turserver/config/' || OLD.key, 'delete');
    END",
], &[
    // Key-value entries: JSON values (`content_type` NULL) or bytes with a
    // media type; `version` grows with every write (the ETag); an entry
    // past `expires_at` reads as absent. Logged as `_api/kv/{key}`.
    "CREATE TABLE IF NOT EXISTS kv (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        content_type TEXT,
        version INTEGER NOT NULL,
        expires_at INTEGER,
        updated_at INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE TRIGGER IF NOT EXISTS kv_insert_logged AFTER INSERT ON kv BEGIN
        INSERT INTO changes (path, kind, version) VALUES ('_api/kv/' || NEW.key, 'put', NEW.version);
    END",
    "CREATE TRIGGER IF NOT EXISTS kv_update_logged AFTER UPDATE ON kv BEGIN
        INSERT INTO changes (path, kind, version) VALUES ('_api/kv/' || NEW.key, 'put', NEW.version);
    END",
    "CREATE TRIGGER IF NOT EXISTS kv_delete_logged AFTER DELETE ON kv BEGIN
        INSERT INTO changes (path, kind, version) VALUES ('_api/kv/' || OLD.key, 'delete', OLD.version);
    END",
]];

/// Brings the schema up to date in one transaction, so edges starting
/// together cannot apply a migration twice.
pub async fn migrate(conn: &Connection) -> anyhow::Result<()> {
    let tx = conn
        .transaction_with_behavior(libsql::TransactionBehavior::Immediate)
        .await
        .context("beginning the migration transaction")?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS turserver_schema (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        (),
    )
    .await
    .context("creating the schema version table")?;
    let rows = super::query_all(&tx, "SELECT COALESCE(MAX(version), 0) FROM turserver_schema", ()).await?;
    let current = match rows.first() {
        Some(row) => row.i64(0)?,
        None => 0,
    };
    for (index, statements) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        for sql in *statements {
            tx.execute(sql, ()).await.with_context(|| format!("migration {version}"))?;
        }
        tx.execute(
            "INSERT INTO turserver_schema (version, applied_at) VALUES (?1, unixepoch())",
            [version],
        )
        .await?;
        tracing::info!(version, "applied schema migration");
    }
    tx.commit().await.context("committing migrations")?;
    Ok(())
}
