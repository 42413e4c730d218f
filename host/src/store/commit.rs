//! Group commit: single uploads that finish while a commit is under way are
//! published together in the next transaction, so concurrent writers share
//! the round trips to the primary (and the sync that follows) instead of
//! queueing for them one by one. Nothing waits for a group to fill: a lone
//! write commits at once. Each write keeps its own precondition and its own
//! answer (see [`publish_each`]); two writes to one path never share a
//! group, so the later one replaces the earlier.

use super::error::StoreError;
use super::publish::{discard_all, publish_each};
use super::upload::Staged;
use super::{FileMeta, Store};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot};

/// Most writes one transaction publishes, unless configured otherwise.
pub const DEFAULT_MAX_GROUP: usize = 64;
/// Writes waiting for a commit before `finish` waits for room.
const QUEUE: usize = 1024;

/// A staged write and where its answer goes.
pub(super) struct Pending {
    staged: Staged,
    answer: oneshot::Sender<Result<(FileMeta, bool), StoreError>>,
}

impl Store {
    /// Sets the most uploads one group commit publishes; 1 publishes each
    /// in its own transaction.
    pub fn set_max_commit_group(&self, n: usize) {
        self.max_group.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Publishes one staged upload with whatever others are finishing.
    pub(super) async fn commit(self: &Arc<Self>, staged: Staged) -> Result<(FileMeta, bool), StoreError> {
        let queue = self.committer.get_or_init(|| start(Arc::downgrade(self)));
        let (answer, answered) = oneshot::channel();
        if queue.send(Pending { staged, answer }).await.is_err() {
            return Err(StoreError::Internal("the store is shutting down".into()));
        }
        answered.await.unwrap_or_else(|_| Err(StoreError::Internal("the commit was abandoned".into())))
    }

    async fn commit_group(self: &Arc<Self>, group: Vec<Pending>) {
        // A write whose caller stopped waiting (its request timed out or
        // went away) is not published: it was not answered as done.
        let (group, abandoned): (Vec<Pending>, Vec<Pending>) = group.into_iter().partition(|p| !p.answer.is_closed());
        let (staged, answers): (Vec<Staged>, Vec<_>) = group.into_iter().map(|p| (p.staged, p.answer)).unzip();
        let results = match self.conn().await {
            Ok(conn) => {
                let abandoned: Vec<Staged> = abandoned.into_iter().map(|p| p.staged).collect();
                discard_all(&conn, &abandoned).await;
                let results = if staged.is_empty() { Vec::new() } else { publish_each(&conn, staged, self.quota()).await };
                self.put_back(conn);
                results
            }
            // Their staged chunks are collected as garbage later.
            Err(e) => staged.iter().map(|_| Err(e.duplicate())).collect(),
        };
        let published = results.iter().filter(|r| r.is_ok()).count();
        if published > 0 {
            self.commit_groups.inc();
            self.committed_uploads.inc_by(published as u64);
        }
        // The group is answered once this edge holds it, but the next group
        // need not wait for that: a sync that takes seconds (the primary
        // compacting its log, or just restarted) would hold every queued
        // write behind it past its deadline.
        let store = self.clone();
        tokio::spawn(async move {
            if published > 0 {
                store.written().await;
            }
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result);
            }
        });
    }
}

/// Starts the task that commits groups; it ends with the store.
fn start(store: Weak<Store>) -> mpsc::Sender<Pending> {
    let (queue, mut incoming) = mpsc::channel::<Pending>(QUEUE);
    tokio::spawn(async move {
        // Writes held back from a group because it already had their path.
        let mut held: VecDeque<Pending> = VecDeque::new();
        loop {
            let first = match held.pop_front() {
                Some(p) => p,
                None => match incoming.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            let mut paths = HashSet::from([first.staged.path.clone()]);
            let mut group = vec![first];
            let mut later = VecDeque::new();
            let Some(store) = store.upgrade() else { return };
            let max_group = store.max_group.load(std::sync::atomic::Ordering::Relaxed);
            while group.len() < max_group {
                let next = match held.pop_front() {
                    Some(p) => p,
                    None => match incoming.try_recv() {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                if paths.insert(next.staged.path.clone()) {
                    group.push(next);
                } else {
                    later.push_back(next);
                }
            }
            later.extend(held.drain(..));
            held = later;
            store.commit_group(group).await;
        }
    });
    queue
}
