//! The embedded replica's lifecycle: opening it, refusing one that is
//! damaged or was made from another primary, rebuilding it, and serving the
//! local copy while the primary is unreachable.

use super::{query_all, redact_url, schema, Mode, Store};
use anyhow::Context;
use std::path::Path;

/// The replica's database file in the data directory; libSQL keeps three
/// more beside it (`-wal`, `-shm`, `-client_wal_index`).
const REPLICA_FILE: &str = "replica.db";
/// Records which primary the replica was made from.
const REPLICA_MARKER: &str = "replica.primary";
/// How long startup waits for the first sync before serving a stale replica.
const FIRST_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes every file of the replica (and its marker).
fn discard_replica(data_dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(data_dir).with_context(|| format!("reading {}", data_dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(REPLICA_FILE) || name == REPLICA_MARKER {
            std::fs::remove_file(entry.path()).with_context(|| format!("removing {name}"))?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the embedded replica of `url` in `data_dir`.
    ///
    /// A replica made from another primary, or one whose files are damaged,
    /// is refused (`rebuild` discards it and copies the primary again). When
    /// the primary cannot be reached, an existing replica is served as it is
    /// (the edge is not ready until a sync succeeds); without one, opening
    /// fails.
    pub async fn open_replica(
        data_dir: &Path,
        url: &str,
        token: Option<&str>,
        namespace: Option<&str>,
        rebuild: bool,
    ) -> anyhow::Result<Store> {
        let path = data_dir.join(REPLICA_FILE);
        let marker = data_dir.join(REPLICA_MARKER);
        let hint = "restart with --rebuild-replica to discard it and copy the primary again";
        if rebuild {
            discard_replica(data_dir)?;
            tracing::warn!(dir = %data_dir.display(), "discarded the replica; copying the primary again");
        }
        if path.exists() && !marker.exists() {
            // The marker is written once an opening has finished: without
            // it the replica was left halfway through its first copy.
            discard_replica(data_dir)?;
            tracing::warn!(dir = %data_dir.display(), "discarded a replica whose first copy did not finish; copying the primary again");
        }
        let existed = path.exists();
        // The primary's URL, and its namespace when one is chosen.
        let origin = match namespace {
            Some(ns) => format!("{url} namespace={ns}"),
            None => url.to_string(),
        };
        match std::fs::read_to_string(&marker) {
            Ok(owner) if owner.trim() != origin => anyhow::bail!(
                "the replica in {} was made from the primary {}, not {}; {hint}",
                data_dir.display(),
                redact_url(owner.trim()),
                redact_url(&origin)
            ),
            _ => {}
        }
        let mut builder = libsql::Builder::new_remote_replica(&path, url.to_string(), token.unwrap_or_default().to_string())
            // libSQL's own read-your-writes pulls frames after every delegated
            // statement, once per staged chunk; `written` syncs once per
            // committed write instead.
            .read_your_writes(false);
        if let Some(ns) = namespace {
            builder = builder.namespace(ns);
        }
        let db = builder
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("opening the replica {} failed ({e}); {hint}", path.display()))?;
        let mut store = Store::new(db, Mode::Replica { url: url.to_string() });
        store.namespace = namespace.map(str::to_string);
        if existed {
            store.check_integrity().await.map_err(|why| {
                anyhow::anyhow!("the replica in {} is damaged ({why}); {hint}", data_dir.display())
            })?;
        }
        let first_sync = tokio::time::timeout(FIRST_SYNC_TIMEOUT, store.sync()).await;
        match first_sync {
            Ok(Ok(_)) => {
                let conn = store.conn().await?;
                schema::migrate(&conn).await.context("migrating the primary's schema")?;
                store.put_back(conn);
                store.sync().await.context("sync after migration")?;
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {FIRST_SYNC_TIMEOUT:?}"),
                };
                if !existed || store.check_schema().await.is_err() {
                    anyhow::bail!("cannot reach the primary {} ({why}) and there is no local copy to serve", redact_url(url));
                }
                tracing::warn!(cause = %why, "the primary is unreachable; serving the local replica as it is until a sync succeeds");
            }
        }
        std::fs::write(&marker, &origin).with_context(|| format!("writing {}", marker.display()))?;
        store.start_freshness().await;
        Ok(store)
    }

    /// A structural check of the local replica, run locally (a `SELECT`, so
    /// libSQL does not delegate it to the primary).
    async fn check_integrity(&self) -> Result<(), String> {
        let conn = self.conn().await.map_err(|e| e.to_string())?;
        let rows = query_all(&conn, "SELECT * FROM pragma_quick_check", ()).await.map_err(|e| e.to_string())?;
        let verdict: Vec<String> = rows.iter().filter_map(|r| r.opt_text(0).ok().flatten()).collect();
        if verdict != ["ok"] {
            return Err(verdict.join("; "));
        }
        self.check_schema().await?;
        self.put_back(conn);
        Ok(())
    }

    async fn check_schema(&self) -> Result<(), String> {
        let conn = self.conn().await.map_err(|e| e.to_string())?;
        query_all(&conn, "SELECT count(*) FROM files", ()).await.map_err(|e| e.to_string())?;
        self.put_back(conn);
        Ok(())
    }
}
