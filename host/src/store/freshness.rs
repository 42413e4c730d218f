//! Which cached reads are still fresh: each change of the local database
//! (a write here, a sync that brought frames) is a new generation, and the
//! change log says which paths (and file versions) it touched. An entry
//! stamped with an older generation stays fresh unless one of the paths it
//! depends on changed since; a change the log cannot describe path by path
//! (site rules, keys, a worker, a log pruned past what this edge had seen,
//! a very large sync) makes everything stale, as before the log existed.

use super::changes::MAX_PAGE;
use super::sql::query_all;
use super::Store;
use libsql::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::RwLock;

/// Paths and versions remembered before everything is dropped at once
/// (which lets the maps start empty again).
const MAX_REMEMBERED: usize = 100_000;
/// Most changes one generation is described by, path by path.
const MAX_DESCRIBED: u32 = 10 * MAX_PAGE;

/// What a cached response read: its entry is fresh while none of it changed.
#[derive(Debug, Default, Clone)]
pub struct Reads {
    pub paths: Vec<String>,
    /// A listing was read: any change of a path makes it stale.
    pub listed: bool,
    /// The earliest expiry (Unix seconds) of the key-value entries read:
    /// stale from then on, though no write marks it.
    pub expires: Option<i64>,
}

impl Reads {
    /// Records a key-value entry read, with its expiry if it has one.
    pub fn read_entry(&mut self, path: String, expires: Option<i64>) {
        self.paths.push(path);
        if let Some(at) = expires {
            self.expires = Some(self.expires.map_or(at, |e| e.min(at)));
        }
    }
}

/// How caches are invalidated (`--cache-invalidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Invalidation {
    /// Only entries that read a changed path.
    #[default]
    Paths,
    /// Every entry, on any change.
    Everything,
}

#[derive(Default)]
pub(super) struct Freshness {
    state: RwLock<State>,
    /// Serialises the accounting of new generations.
    advancing: tokio::sync::Mutex<()>,
    mode: std::sync::OnceLock<Invalidation>,
}

#[derive(Default)]
struct State {
    /// Entries stamped before this generation are stale.
    all_stale_before: u64,
    /// The generation at which a path last changed.
    paths: HashMap<String, u64>,
    /// The generation at which a file version last changed (a row updated
    /// in place keeps its version).
    versions: HashMap<u64, u64>,
    /// The generation of the latest change of any path.
    any_path: u64,
    /// The change log is accounted for up to here.
    seen: u64,
}

/// What a new generation changed.
enum Changed {
    Everything,
    Some(Vec<(String, Option<u64>)>),
}

impl State {
    fn is_fresh(&self, stamp: u64, reads: &Reads) -> bool {
        stamp >= self.all_stale_before
            && !(reads.listed && self.any_path > stamp)
            && reads.paths.iter().all(|p| self.paths.get(p).is_none_or(|g| *g <= stamp))
    }

    fn mark(&mut self, generation: u64, changed: Changed) {
        match changed {
            Changed::Some(list) if self.paths.len() + list.len() <= MAX_REMEMBERED => {
                for (path, version) in list {
                    self.any_path = generation;
                    self.paths.insert(path, generation);
                    if let Some(v) = version {
                        self.versions.insert(v, generation);
                    }
                }
            }
            _ => {
                self.all_stale_before = generation;
                self.any_path = generation;
                self.paths.clear();
                self.versions.clear();
            }
        }
    }
}

impl Store {
    /// Chooses how caches are invalidated; before the store serves.
    pub fn set_invalidation(&self, mode: Invalidation) {
        let _ = self.fresh.mode.set(mode);
    }

    /// The generation at which an entry stamped at `stamp` that read
    /// `reads` is known fresh (the current one), or None when it is stale.
    /// Stamping the entry with it again spares its next reads the look at
    /// what changed since `stamp`.
    pub fn fresh_at(&self, stamp: u64, reads: &Reads) -> Option<u64> {
        if reads.expires.is_some_and(|at| super::unix_now() >= at) {
            return None;
        }
        // Read before the accounting: a generation is announced only once
        // its changes are marked, so the marks seen cover it.
        let now = self.generation();
        if stamp == now {
            return Some(now);
        }
        self.fresh.state.read().unwrap_or_else(|e| e.into_inner()).is_fresh(stamp, reads).then_some(now)
    }

    pub(super) fn path_is_fresh(&self, stamp: u64, path: &str) -> bool {
        if stamp == self.generation() {
            return true;
        }
        let state = self.fresh.state.read().unwrap_or_else(|e| e.into_inner());
        stamp >= state.all_stale_before && state.paths.get(path).is_none_or(|g| *g <= stamp)
    }

    pub(super) fn version_is_fresh(&self, stamp: u64, version: u64) -> bool {
        if stamp == self.generation() {
            return true;
        }
        let state = self.fresh.state.read().unwrap_or_else(|e| e.into_inner());
        stamp >= state.all_stale_before && state.versions.get(&version).is_none_or(|g| *g <= stamp)
    }

    /// Starts the accounting from the log as it is now (at open: what is
    /// already there changed nothing cached).
    pub(super) async fn start_freshness(&self) {
        let seen = self.latest_change().await.unwrap_or(0);
        self.fresh.state.write().unwrap_or_else(|e| e.into_inner()).seen = seen;
    }

    /// A new generation: the local database may have changed. What it
    /// changed is read from the log before the generation is announced,
    /// so no reader meets the new generation with the old accounting.
    pub(super) async fn advance(&self) {
        let _one = self.fresh.advancing.lock().await;
        let seen = self.fresh.state.read().unwrap_or_else(|e| e.into_inner()).seen;
        let (changed, seen) = match self.fresh.mode.get().copied().unwrap_or_default() {
            Invalidation::Everything => (Changed::Everything, seen),
            Invalidation::Paths => self.changed_since(seen).await,
        };
        let generation = self.generation.load(Ordering::Acquire) + 1;
        {
            let mut state = self.fresh.state.write().unwrap_or_else(|e| e.into_inner());
            state.mark(generation, changed);
            state.seen = state.seen.max(seen);
        }
        self.generation.store(generation, Ordering::Release);
        self.notify.send_replace(generation);
    }

    /// A new generation that changed `paths` only, known without the log
    /// (a write waiting in the queue appeared or went).
    pub(super) async fn advance_paths(&self, paths: Vec<(String, Option<u64>)>) {
        let _one = self.fresh.advancing.lock().await;
        let generation = self.generation.load(Ordering::Acquire) + 1;
        self.fresh.state.write().unwrap_or_else(|e| e.into_inner()).mark(generation, Changed::Some(paths));
        self.generation.store(generation, Ordering::Release);
        self.notify.send_replace(generation);
    }

    /// The paths the log says changed after `seen`, and the new `seen`.
    async fn changed_since(&self, seen: u64) -> (Changed, u64) {
        let described = async {
            let pruned = self.pruned_through_uncached().await.ok()?;
            let conn = self.conn().await.ok()?;
            let rows = query_all(
                &conn,
                "SELECT seq, path, version FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                vec![Value::Integer(seen as i64), Value::Integer((MAX_DESCRIBED + 1).into())],
            )
            .await;
            self.put_back(conn);
            let rows = rows.ok()?;
            // Changes this edge never saw were pruned, or too many to list.
            if pruned > seen || rows.len() > MAX_DESCRIBED as usize {
                return None;
            }
            let mut last = seen;
            let mut list = Vec::with_capacity(rows.len());
            for row in rows {
                last = row.i64(0).ok()? as u64;
                let path = row.text(1).ok()?;
                // Site-wide documents and the worker change every answer;
                // a key-value entry only what read it.
                if turserver_protocol::is_reserved(&path) && !path.starts_with(super::KV_PATH_PREFIX) {
                    return None;
                }
                list.push((path, row.opt_i64(2).ok()?.map(|v| v as u64)));
            }
            Some((list, last))
        };
        match described.await {
            Some((list, last)) => (Changed::Some(list), last),
            // Everything is stale; the accounting restarts from the latest.
            None => (Changed::Everything, self.latest_change_uncached().await.unwrap_or(seen)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_makes_stale_only_what_read_its_path() {
        let mut s = State::default();
        s.mark(2, Changed::Some(vec![("a".into(), Some(7))]));
        let fresh = |s: &State, stamp: u64, paths: &[&str], listed: bool| {
            s.is_fresh(stamp, &Reads { paths: paths.iter().map(|p| p.to_string()).collect(), listed, expires: None })
        };
        assert!(!fresh(&s, 1, &["a"], false));
        assert!(!fresh(&s, 1, &["b", "a"], false));
        assert!(fresh(&s, 1, &["b", "c"], false));
        assert!(!fresh(&s, 1, &["b"], true), "a listing is stale after any change");
        assert!(fresh(&s, 2, &["a"], true));
        assert_eq!(s.versions.get(&7), Some(&2));
        // A generation that changed nothing the log lists keeps everything.
        s.mark(3, Changed::Some(Vec::new()));
        assert!(fresh(&s, 2, &["a"], true));
        s.mark(4, Changed::Everything);
        assert!(!fresh(&s, 3, &["b"], false));
        assert!(fresh(&s, 4, &["b"], false));
        assert!(s.paths.is_empty() && s.versions.is_empty());
    }
}
