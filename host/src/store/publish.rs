//! Publishing staged files: one transaction that removes what was at their
//! paths (and at the paths a batch removes), inserts the new rows and their
//! encodings, and forgets their staging ids.
//!
//! With a replica every statement is a round trip to the primary, so rows
//! go in groups: a thousand small files take a few dozen statements, not
//! thousands. A group's parameters stay well under the primary's message
//! limit (a statement of about 4 MiB fails).

use super::error::StoreError;
use super::sql::query_all;
use super::upload::{Body, Staged};
use super::writes::{check_expectation, currents, remove_files};
use super::quota::{self, Quota};
use super::{unix_now, FileMeta, CHUNK_SIZE};
use libsql::{Connection, Transaction, Value};
use std::collections::{BTreeSet, HashMap};

/// Most inline bytes one statement carries.
const GROUP_BYTES: usize = 1 << 20;
/// Most rows one statement inserts.
const GROUP_ROWS: usize = 200;

/// Publishes staged files and removes the files at `removed` in one
/// transaction: all become visible, replacing what was at their paths, or
/// none does (and their staged bytes are deleted).
pub(super) async fn publish(
    conn: &Connection,
    staged: Vec<Staged>,
    removed: BTreeSet<String>,
    quota: Quota,
) -> Result<Vec<(FileMeta, bool)>, StoreError> {
    let now = unix_now();
    let result = publish_while_locked(conn, &staged, &removed, now, false, quota).await;
    if result.is_err() {
        discard_all(conn, &staged).await;
    }
    // All or nothing: no file failed alone.
    let outcomes = result?.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(staged.into_iter().zip(outcomes).map(|(s, outcome)| published(s, outcome, now)).collect())
}

/// Publishes independent writes together (a group commit): one
/// transaction, but a write whose precondition fails fails alone and the
/// others are published. Every write gets its own answer.
pub(super) async fn publish_each(
    conn: &Connection,
    staged: Vec<Staged>,
    quota: Quota,
) -> Vec<Result<(FileMeta, bool), StoreError>> {
    let now = unix_now();
    match publish_while_locked(conn, &staged, &BTreeSet::new(), now, true, quota).await {
        Err(e) => {
            discard_all(conn, &staged).await;
            staged.iter().map(|_| Err(e.duplicate())).collect()
        }
        Ok(outcomes) => {
            let mut answers = Vec::with_capacity(staged.len());
            for (s, outcome) in staged.into_iter().zip(outcomes) {
                answers.push(match outcome {
                    Ok(o) => Ok(published(s, o, now)),
                    Err(e) => {
                        discard_all(conn, std::slice::from_ref(&s)).await;
                        Err(e)
                    }
                });
            }
            answers
        }
    }
}

/// Deletes what `staged` wrote before publishing.
pub(super) async fn discard_all(conn: &Connection, staged: &[Staged]) {
    for s in staged {
        for blob in s.blobs() {
            super::upload::discard_logged(conn, blob).await;
        }
    }
}

/// A staged file's metadata once published.
fn published(s: Staged, (version, created_at, created): (u64, i64, bool), now: i64) -> (FileMeta, bool) {
    let encodings = s.variants.iter().map(|(n, b)| (n.to_string(), b.size)).collect();
    let meta = FileMeta {
        path: s.path,
        version,
        size: s.body.size,
        content_type: s.content_type,
        hash: s.hash,
        last_modified: now as u64,
        created: created_at as u64,
        encodings,
    };
    (meta, created)
}

/// Tries after a failed one before publishing gives up on a locked database.
const LOCKED_RETRIES: u32 = 5;

/// [`publish_in_transaction`], run again (after a pause that doubles each
/// time) while the primary says another writer held its lock: such a
/// transaction published nothing. Many edges writing at once, or a batch
/// beside a group commit, meet this under load.
async fn publish_while_locked(
    conn: &Connection,
    staged: &[Staged],
    removed: &BTreeSet<String>,
    now: i64,
    each_alone: bool,
    quota: Quota,
) -> Result<Vec<Result<(u64, i64, bool), StoreError>>, StoreError> {
    let mut pause = std::time::Duration::from_millis(25);
    let mut retries = 0;
    loop {
        match publish_in_transaction(conn, staged, removed, now, each_alone, quota).await {
            // A connection left inside a transaction is not tried again.
            Err(e) if e.is_locked() && retries < LOCKED_RETRIES && conn.is_autocommit() => {
                tracing::info!(retry = retries + 1, "the database was locked by another writer; publishing again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                retries += 1;
            }
            result => return result,
        }
    }
}

/// Each staged file's (version, created_at, whether the path was new), or
/// why it alone was not published (only with `each_alone`; otherwise a
/// failed precondition fails the whole transaction).
async fn publish_in_transaction(
    conn: &Connection,
    staged: &[Staged],
    removed: &BTreeSet<String>,
    now: i64,
    each_alone: bool,
    quota: Quota,
) -> Result<Vec<Result<(u64, i64, bool), StoreError>>, StoreError> {
    let w = |e| StoreError::write("publishing an upload", e);
    let tx = conn.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await.map_err(w)?;
    let paths: Vec<&str> = staged.iter().map(|s| s.path.as_str()).chain(removed.iter().map(String::as_str)).collect();
    let current = currents(&tx, &paths).await?;
    let mut refused = HashMap::new();
    for (i, s) in staged.iter().enumerate() {
        if let Err(e) = check_expectation(s.expect.as_ref(), current.get(&s.path)) {
            if !each_alone {
                tx.rollback().await.map_err(w)?;
                return Err(e);
            }
            refused.insert(i, e);
        }
    }
    if quota.is_set() {
        if let Err(e) = check_quota(&tx, staged, removed, &current, &mut refused, each_alone, quota).await {
            tx.rollback().await.map_err(w)?;
            return Err(e);
        }
    }
    let going: Vec<&Staged> = staged.iter().enumerate().filter(|(i, _)| !refused.contains_key(i)).map(|(_, s)| s).collect();
    let replaced: Vec<i64> = going
        .iter()
        .map(|s| s.path.as_str())
        .chain(removed.iter().map(String::as_str))
        .filter_map(|p| current.get(p).map(|c| c.id))
        .collect();
    // A replacement is logged as a delete and a put; folded into the put below.
    let logged_before = match replaced.is_empty() {
        true => None,
        false => Some(super::changes::last_seq(&tx).await?),
    };
    remove_files(&tx, &replaced).await?;

    let versions = insert_files(&tx, &going, &current, now).await?;
    if let Some(before) = logged_before {
        super::changes::fold_replacements(&tx, before).await?;
    }
    insert_variants(&tx, &going, &versions).await?;
    let blobs: Vec<i64> = going.iter().flat_map(|s| s.blobs()).collect();
    for group in blobs.chunks(500) {
        let sql = format!("DELETE FROM uploads WHERE blob_id IN ({})", placeholders(group.len()));
        tx.execute(&sql, group.iter().map(|b| Value::Integer(*b)).collect::<Vec<_>>()).await.map_err(w)?;
    }
    tx.commit().await.map_err(w)?;
    Ok(staged
        .iter()
        .enumerate()
        .map(|(i, s)| match refused.remove(&i) {
            Some(e) => Err(e),
            None => {
                let old = current.get(&s.path);
                Ok((versions[&s.path] as u64, old.map_or(now, |c| c.created_at), old.is_none()))
            }
        })
        .collect())
}

/// Refuses the files that would take the site past its limits: in order,
/// each one alone (a group commit), or the whole transaction (a batch,
/// whose removals count first).
async fn check_quota(
    tx: &Transaction,
    staged: &[Staged],
    removed: &BTreeSet<String>,
    current: &HashMap<String, super::writes::Current>,
    refused: &mut HashMap<usize, StoreError>,
    each_alone: bool,
    quota: Quota,
) -> Result<(), StoreError> {
    let mut totals = quota::totals(tx).await?;
    // The size each path named here counts for as the transaction goes.
    let mut held: HashMap<&str, u64> = current
        .iter()
        .filter(|(path, _)| quota::counted(path))
        .map(|(path, c)| (path.as_str(), c.size))
        .collect();
    for path in removed {
        if let Some(size) = held.remove(path.as_str()) {
            totals.files = totals.files.saturating_sub(1);
            totals.bytes = totals.bytes.saturating_sub(size);
        }
    }
    for (i, s) in staged.iter().enumerate() {
        if refused.contains_key(&i) || !quota::counted(&s.path) {
            continue;
        }
        let mut after = totals;
        if let Some(size) = held.get(s.path.as_str()) {
            after.files = after.files.saturating_sub(1);
            after.bytes = after.bytes.saturating_sub(*size);
        }
        after.files += 1;
        after.bytes += s.body.size;
        // Within the limits, or no worse than before (a replacement by a
        // smaller file is always allowed).
        let shrinks = after.files <= totals.files && after.bytes <= totals.bytes;
        match quota.check(after) {
            Err(e) if !shrinks => {
                if !each_alone {
                    return Err(StoreError::LimitExceeded(e));
                }
                refused.insert(i, StoreError::LimitExceeded(e));
            }
            _ => {
                totals = after;
                held.insert(s.path.as_str(), s.body.size);
            }
        }
    }
    Ok(())
}

/// Inserts the file rows, a group per statement; returns each path's new id.
async fn insert_files(
    tx: &Transaction,
    staged: &[&Staged],
    current: &HashMap<String, super::writes::Current>,
    now: i64,
) -> Result<HashMap<String, i64>, StoreError> {
    let w = |e| StoreError::write("publishing an upload", e);
    let mut versions = HashMap::with_capacity(staged.len());
    for group in groups(staged.iter(), |s| inline_len(&s.body)) {
        let mut params = Vec::with_capacity(group.len() * 9);
        for s in &group {
            let created_at = current.get(&s.path).map_or(now, |c| c.created_at);
            params.extend([
                Value::Text(s.path.clone()),
                s.body.inline.clone().map_or(Value::Null, Value::Blob),
                Value::Text(s.content_type.clone()),
                Value::Integer(now),
                Value::Integer(s.body.size as i64),
                Value::Integer(created_at),
                Value::Text(s.hash.clone()),
                s.body.blob.map_or(Value::Null, Value::Integer),
                s.body.blob.map_or(Value::Null, |_| Value::Integer(CHUNK_SIZE as i64)),
            ]);
        }
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; group.len()].join(", ");
        let sql = format!(
            "INSERT INTO files (path, content, content_type, last_modified, size, created_at, hash, blob_id, chunk_size) \
             VALUES {rows}"
        );
        tx.execute(&sql, params).await.map_err(w)?;
        let sql = format!("SELECT path, id FROM files WHERE path IN ({})", placeholders(group.len()));
        let paths: Vec<Value> = group.iter().map(|s| Value::Text(s.path.clone())).collect();
        for row in query_all(tx, &sql, paths).await.map_err(w)? {
            versions.insert(row.text(0)?, row.i64(1)?);
        }
    }
    if versions.len() != staged.len() {
        return Err(StoreError::Internal("a published file has no row".into()));
    }
    Ok(versions)
}

async fn insert_variants(tx: &Transaction, staged: &[&Staged], versions: &HashMap<String, i64>) -> Result<(), StoreError> {
    let w = |e| StoreError::write("publishing an upload", e);
    let variants: Vec<(i64, &str, &Body)> =
        staged.iter().flat_map(|s| s.variants.iter().map(|(name, body)| (versions[&s.path], *name, body))).collect();
    for group in groups(variants.iter(), |(_, _, body)| inline_len(body)) {
        let mut params = Vec::with_capacity(group.len() * 6);
        for (file_id, name, body) in &group {
            params.extend([
                Value::Integer(*file_id),
                Value::Text(name.to_string()),
                Value::Integer(body.size as i64),
                body.inline.clone().map_or(Value::Null, Value::Blob),
                body.blob.map_or(Value::Null, Value::Integer),
                body.blob.map_or(Value::Null, |_| Value::Integer(CHUNK_SIZE as i64)),
            ]);
        }
        let rows = vec!["(?, ?, ?, ?, ?, ?)"; group.len()].join(", ");
        let sql = format!("INSERT INTO variants (file_id, encoding, size, content, blob_id, chunk_size) VALUES {rows}");
        tx.execute(&sql, params).await.map_err(w)?;
    }
    Ok(())
}

fn inline_len(body: &Body) -> usize {
    body.inline.as_ref().map_or(0, Vec::len)
}

/// Splits items into groups of at most [`GROUP_ROWS`] and about
/// [`GROUP_BYTES`] inline bytes (an item larger than that goes alone).
fn groups<T>(items: impl Iterator<Item = T>, bytes: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut size = 0;
    for item in items {
        let n = bytes(&item);
        match out.last_mut() {
            Some(g) if g.len() < GROUP_ROWS && size + n <= GROUP_BYTES => {
                size += n;
                g.push(item);
            }
            _ => {
                size = n;
                out.push(vec![item]);
            }
        }
    }
    out
}

/// `?, ?, ?` for `n` parameters.
pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_bounded_by_rows_and_bytes() {
        let sizes = [600_000usize, 600_000, 10, 2_000_000, 5];
        let g = groups(sizes.iter(), |n| **n);
        let lens: Vec<usize> = g.iter().map(Vec::len).collect();
        assert_eq!(lens, [1, 2, 1, 1], "{g:?}");
        let many = groups(0..450, |_| 1);
        assert_eq!(many.iter().map(Vec::len).collect::<Vec<_>>(), [200, 200, 50]);
    }
}
