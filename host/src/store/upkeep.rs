//! Background upkeep of the store: the replica's syncs with the primary
//! (following its commits, and on an interval), garbage collection of
//! uploads whose writer died, pruning of the change log and of expired
//! keys.

use super::{follow, redact_url, Mode, Retention, Store};
use crate::task::AbortOnDrop;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Longest wait between sync attempts while the primary keeps failing: an
/// edge catches up within this long of the primary's return.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While the commit stream is followed, the interval loop still syncs when
/// none has succeeded for this long: a safety net that costs an idle edge
/// one request every so often.
const STREAMING_INTERVAL: Duration = Duration::from_secs(30);
/// How often unfinished uploads are looked for.
const GC_INTERVAL: Duration = Duration::from_secs(600);
/// How often the change log is pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The store's background tasks; they stop when this is dropped.
pub struct Upkeep(#[allow(dead_code)] Vec<AbortOnDrop>);

/// How a replica keeps up with its primary.
pub struct SyncPlan {
    /// How often it syncs when it does not follow the commit stream.
    pub interval: Duration,
    /// Follow the primary's commit stream (sync as each commit lands).
    pub follow_commits: bool,
    /// The primary's token, for the stream (the replica has its own copy).
    pub primary_token: Option<String>,
    /// How much of the change log is kept.
    pub changes: Retention,
}

impl Store {
    /// Starts the replica's syncs (following the primary's commits, with
    /// the interval loop as fallback), the garbage collector and the change
    /// log's pruning.
    pub fn start_upkeep(self: &Arc<Self>, plan: SyncPlan) -> anyhow::Result<Upkeep> {
        let mut tasks = Vec::new();
        if let Mode::Replica { url } = self.mode() {
            let span = tracing::info_span!("sync", primary = %redact_url(url));
            if plan.follow_commits {
                let follower = follow::Follower::new(self.clone(), url, plan.primary_token.as_deref())?;
                tasks.push(AbortOnDrop::spawn(follower.run().instrument(span.clone())));
            } else {
                self.stats.set_streaming(false, Some("turned off (--no-commit-stream)".into()));
            }
            tasks.push(AbortOnDrop::spawn(sync_loop(self.clone(), plan.interval).instrument(span)));
        }
        tasks.push(AbortOnDrop::spawn(gc_loop(self.clone()).instrument(tracing::info_span!("gc"))));
        tasks.push(AbortOnDrop::spawn(prune_loop(self.clone(), plan.changes).instrument(tracing::info_span!("changes"))));
        Ok(Upkeep(tasks))
    }
}

/// Syncs every `interval` while the commit stream is not followed (and at
/// least every [`STREAMING_INTERVAL`] while it is). Failures back off
/// exponentially up to [`MAX_BACKOFF`] and are logged once per change of
/// state, not per attempt.
async fn sync_loop(store: Arc<Store>, interval: Duration) {
    let mut failures: u32 = 0;
    loop {
        let delay = if failures == 0 { interval } else { backoff(interval, failures) };
        tokio::time::sleep(delay).await;
        if failures == 0 && store.stats.is_streaming() && store.stats.since_last_success() < STREAMING_INTERVAL {
            continue;
        }
        match store.sync().await {
            Ok(_) => {
                if failures > 0 {
                    tracing::info!(failed_attempts = failures, "sync recovered");
                }
                failures = 0;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(cause = %e, "sync failed; retrying with backoff");
                } else {
                    tracing::debug!(cause = %e, failures, "sync still failing");
                }
            }
        }
    }
}

fn backoff(interval: Duration, failures: u32) -> Duration {
    interval.saturating_mul(1 << failures.min(16)).min(MAX_BACKOFF).max(interval)
}

async fn gc_loop(store: Arc<Store>) {
    loop {
        match store.collect_garbage().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "removed unfinished uploads"),
            Err(e) => tracing::warn!(cause = %format!("{:#}", anyhow::Error::new(e)), "garbage collection failed"),
        }
        tokio::time::sleep(GC_INTERVAL).await;
    }
}

/// Prunes the change log and removes expired keys now and every
/// [`PRUNE_INTERVAL`]; a replica
/// waits for its first sync, so it judges by what the primary holds.
async fn prune_loop(store: Arc<Store>, keep: Retention) {
    while !store.is_ready() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        match store.prune_changes(keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(changes = n, "pruned the change log"),
            Err(e) => tracing::warn!(cause = %format!("{:#}", anyhow::Error::new(e)), "pruning the change log failed"),
        }
        match store.kv_remove_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "removed expired keys"),
            Err(e) => tracing::warn!(cause = %format!("{:#}", anyhow::Error::new(e)), "removing expired keys failed"),
        }
        tokio::time::sleep(PRUNE_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let i = Duration::from_secs(1);
        assert_eq!(backoff(i, 1), Duration::from_secs(2));
        assert_eq!(backoff(i, 2), Duration::from_secs(4));
        assert_eq!(backoff(i, 10), MAX_BACKOFF);
        let long = Duration::from_secs(60);
        assert_eq!(backoff(long, 1), long);
    }
}
