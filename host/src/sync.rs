//! Background upkeep of the store: the replica's periodic sync with the
//! primary, and garbage collection of uploads whose writer died.

use crate::store::{Mode, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Longest wait between sync attempts while the primary keeps failing: an
/// edge catches up within this long of the primary's return.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often unfinished uploads are looked for.
const GC_INTERVAL: Duration = Duration::from_secs(600);

/// Aborts the task when dropped, so background work dies with its owner.
pub struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    pub fn new(handle: JoinHandle<()>) -> Self {
        AbortOnDrop(handle)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the sync loop (replicas only) and the garbage collector.
pub fn spawn(store: Arc<Store>, interval: Duration) -> Vec<AbortOnDrop> {
    let mut tasks = Vec::new();
    if let Mode::Replica { url } = store.mode() {
        let span = tracing::info_span!("sync", primary = %crate::status::redact_url(url));
        tasks.push(AbortOnDrop(tokio::spawn(sync_loop(store.clone(), interval).instrument(span))));
    }
    tasks.push(AbortOnDrop(tokio::spawn(gc_loop(store).instrument(tracing::info_span!("gc")))));
    tasks
}

/// Syncs every `interval`. Failures back off exponentially up to
/// [`MAX_BACKOFF`] and are logged once per change of state, not per attempt.
async fn sync_loop(store: Arc<Store>, interval: Duration) {
    let mut failures: u32 = 0;
    loop {
        let delay = if failures == 0 { interval } else { backoff(interval, failures) };
        tokio::time::sleep(delay).await;
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
