//! Replication state: syncs with the primary, what they record, how long
//! a read waits for a position, and what a write leaves for other edges.

use super::{Mode, Store};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a write's answer waits for the replica to hold it, syncing
/// again as often as needed (sqld refuses syncs while it compacts its log,
/// for about 3 s at its default 200 MB log). Well under the 10 s a write
/// may take in all, so a committed write is never answered as failed.
pub const WRITE_VISIBLE_WAIT: Duration = Duration::from_secs(5);

/// What every sync with the primary records (the periodic loop, the sync
/// after a write, and on-demand syncs for read-your-writes).
pub struct SyncStats {
    pub ok: AtomicU64,
    /// Unix milliseconds of the last successful sync (0: never).
    pub last_success_ms: AtomicU64,
    pub last_duration_us: AtomicU64,
    /// Time spent in successful syncs, all told.
    pub total_duration_us: AtomicU64,
    /// The replica's replication index (frame number) after the last sync.
    pub replication_index: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub duration: Histogram,
    pub failures: Counter,
    pub index_gauge: Gauge,
    /// Whether the replica follows the primary's commit stream (see
    /// `follow`); false while it syncs on the interval only.
    streaming: std::sync::atomic::AtomicBool,
    /// Why the commit stream is not followed, when it is not.
    stream_error: Mutex<Option<String>>,
    /// Commits the stream announced (each one a sync).
    pub stream_signals: Counter,
    stream_gauge: Gauge,
}

impl Default for SyncStats {
    fn default() -> Self {
        SyncStats {
            ok: AtomicU64::new(0),
            last_success_ms: AtomicU64::new(0),
            last_duration_us: AtomicU64::new(0),
            total_duration_us: AtomicU64::new(0),
            replication_index: AtomicU64::new(0),
            last_error: Mutex::new(None),
            // 1 ms to ~16 s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            failures: Counter::default(),
            index_gauge: Gauge::default(),
            streaming: Default::default(),
            stream_error: Mutex::new(Some("the commit stream has not been opened yet".into())),
            stream_signals: Counter::default(),
            stream_gauge: Gauge::default(),
        }
    }
}

impl SyncStats {
    pub fn succeeded(&self, took: Duration, frame: Option<u64>) {
        self.duration.observe(took.as_secs_f64());
        if let Some(f) = frame {
            self.index_gauge.set(f as i64);
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.last_success_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        self.last_duration_us.store(took.as_micros() as u64, Ordering::Relaxed);
        self.total_duration_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if let Some(f) = frame {
            self.replication_index.store(f, Ordering::Relaxed);
        }
        *self.last_error.lock().expect("poisoned") = None;
    }

    pub fn failed(&self, why: String) {
        self.failures.inc();
        *self.last_error.lock().expect("poisoned") = Some(why);
    }

    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }

    /// Records whether the commit stream is followed, and why not.
    pub(super) fn set_streaming(&self, on: bool, why_not: Option<String>) {
        self.streaming.store(on, Ordering::Release);
        self.stream_gauge.set(on as i64);
        *self.stream_error.lock().expect("poisoned") = why_not;
    }

    /// How long ago the last successful sync was (forever: never).
    pub(super) fn since_last_success(&self) -> Duration {
        match self.last_success_ms.load(Ordering::Relaxed) {
            0 => Duration::MAX,
            ms => Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(ms)),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn rfc3339_ms(ms: u64) -> Option<String> {
    (ms > 0).then(|| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
}

/// A URL without user info, query or fragment: tokens never leak.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = match rest.split_once('@') {
        Some((_, host)) => host,
        None => rest,
    };
    if scheme.is_empty() {
        rest.to_string()
    } else {
        format!("{scheme}://{rest}")
    }
}

/// What `/_turserver/status` shows of the syncs.
#[derive(Serialize)]
pub struct SyncSnapshot {
    /// `stream`: syncs when the primary commits; `interval`: on the timer.
    mode: &'static str,
    /// Why the commit stream is not followed, in `interval` mode.
    stream_error: Option<String>,
    replication_index: u64,
    last_success: Option<String>,
    last_duration_ms: f64,
    last_error: Option<String>,
    syncs_ok: u64,
    syncs_failed: u64,
}

impl SyncStats {
    pub fn snapshot(&self) -> SyncSnapshot {
        SyncSnapshot {
            mode: if self.is_streaming() { "stream" } else { "interval" },
            stream_error: self.stream_error.lock().expect("poisoned").clone(),
            replication_index: self.replication_index.load(Ordering::Relaxed),
            last_success: rfc3339_ms(self.last_success_ms.load(Ordering::Relaxed)),
            last_duration_ms: self.last_duration_us.load(Ordering::Relaxed) as f64 / 1000.0,
            last_error: self.last_error.lock().expect("poisoned").clone(),
            syncs_ok: self.ok.load(Ordering::Relaxed),
            syncs_failed: self.failures.get(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register("sync_duration_seconds", "Duration of syncs with the primary", self.duration.clone());
        registry.register("sync_failures", "Syncs with the primary that failed", self.failures.clone());
        registry.register("replication_index", "The replica's replication index (frame number)", self.index_gauge.clone());
        registry.register("sync_stream_up", "1 while the replica follows the primary's commit stream", self.stream_gauge.clone());
        registry.register("sync_stream_commits", "Commits the primary's stream announced", self.stream_signals.clone());
    }
}

/// What tells a wait for the primary that it is over.
///
/// A successful sync holds everything the primary had committed when the
/// sync began (libsql syncs up to the index the primary names in its
/// handshake). So a write is visible here, and a read is fresh enough for
/// any write acknowledged before it arrived, once a sync that *began* after
/// it has succeeded: syncs are numbered as they begin for that. Frame
/// numbers alone cannot say so: sqld that restarts after a crash rebuilds
/// its replication log from its database file, and the log's frame numbers
/// start again, lower than the ones it handed out before.
#[derive(Default)]
pub(super) struct Catchup {
    /// Held for each sync, so syncs (and what they record) run in order.
    gate: tokio::sync::Mutex<()>,
    /// Syncs begun (the last one's number).
    begun: AtomicU64,
    /// The number of the latest sync that succeeded.
    succeeded: AtomicU64,
    /// The replica's replication index after the last successful sync.
    frame: AtomicU64,
    /// libsql's highest write index when the primary's log last restarted
    /// (0: it has not): positions up to it belong to the old log.
    stale_through: AtomicU64,
}

impl Store {

    /// Pulls new frames from the primary; a no-op for a local database.
    pub async fn sync(&self) -> Result<Option<u64>, libsql::Error> {
        self.sync_unless_after(None).await
    }

    /// A sync, skipped when one begun after `after` (a value of
    /// `catchup.begun`) has succeeded by the time this one's turn comes.
    async fn sync_unless_after(&self, after: Option<u64>) -> Result<Option<u64>, libsql::Error> {
        if self.mode == Mode::Local {
            return Ok(None);
        }
        let _turn = self.catchup.gate.lock().await;
        if after.is_some_and(|after| self.catchup.succeeded.load(Ordering::Acquire) > after) {
            return Ok(Some(self.catchup.frame.load(Ordering::Acquire)));
        }
        let number = self.catchup.begun.fetch_add(1, Ordering::AcqRel) + 1;
        let started = std::time::Instant::now();
        match self.db.sync().await {
            Ok(r) => {
                self.stats.succeeded(started.elapsed(), r.frame_no());
                let frame = r.frame_no().unwrap_or(0);
                let before = self.catchup.frame.load(Ordering::Acquire);
                if frame < before {
                    self.log_restarted(before, frame);
                }
                if before != frame {
                    self.advance().await;
                }
                // Only now: a reader released by this frame or this number
                // reads through caches that already know what the sync
                // brought (the gate keeps other syncs out meanwhile).
                self.catchup.frame.store(frame, Ordering::Release);
                self.catchup.succeeded.store(number, Ordering::Release);
                Ok(r.frame_no())
            }
            Err(e) => {
                self.stats.failed(e.to_string());
                Err(e)
            }
        }
    }

    /// The primary's replication log started again (sqld rebuilt it from its
    /// database file after a crash): positions handed out from now on count
    /// in the new log's frames.
    fn log_restarted(&self, before: u64, now: u64) {
        let stale = self.db.max_write_replication_index().unwrap_or(0).max(before);
        self.catchup.stale_through.fetch_max(stale, Ordering::AcqRel);
        tracing::warn!(
            before,
            now,
            "the primary's replication log started again (it was rebuilt after a crash); \
             positions from before this point are met by the next successful sync"
        );
    }

    /// Whether a sync begun after `after` (a value of `catchup.begun`) has
    /// succeeded, syncing on demand until one has, for at most `bound`.
    async fn synced_after(&self, after: u64, bound: std::time::Duration) -> bool {
        let done = || self.catchup.succeeded.load(Ordering::Acquire) > after;
        let deadline = tokio::time::Instant::now() + bound;
        while !done() {
            match tokio::time::timeout_at(deadline, self.sync_unless_after(Some(after))).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    let retry = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
                    tokio::time::sleep_until(retry.min(deadline)).await;
                }
                Err(_) => break,
            }
        }
        done()
    }

    /// The frame the replica holds, if it holds any.
    pub(super) async fn replication_index(&self) -> Option<u64> {
        self.db.replication_index().await.ok().flatten()
    }

    /// Whether this edge is ready to serve: a replica must have synced once.
    pub fn is_ready(&self) -> bool {
        self.mode == Mode::Local || self.stats.ok.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// The primary's replication index after this process's latest write:
    /// a position other edges can wait for (None in local mode).
    pub fn write_position(&self) -> Option<u64> {
        if self.mode == Mode::Local {
            return None;
        }
        let highest = self.db.max_write_replication_index();
        let stale = self.catchup.stale_through.load(Ordering::Acquire);
        if stale == 0 {
            return highest;
        }
        // libsql keeps the highest index ever written, which after a
        // restarted log counts only once past what the old log reached.
        // Meanwhile the replica's own index serves: a write is answered
        // once a sync begun after it brought it here.
        let highest = highest.filter(|&h| h > stale).unwrap_or(0);
        Some(highest.max(self.catchup.frame.load(Ordering::Acquire))).filter(|&p| p > 0)
    }

    /// Waits until this replica has caught up with `position`, or with
    /// everything the primary holds (which a position from before the
    /// primary's log restarted may never be reached by), syncing on demand,
    /// for at most `bound`. False when it has not.
    pub async fn wait_for(&self, position: u64, bound: std::time::Duration) -> bool {
        if self.mode == Mode::Local {
            return true;
        }
        if self.catchup.frame.load(Ordering::Acquire) >= position {
            return true;
        }
        let after = self.catchup.begun.load(Ordering::Acquire);
        self.synced_after(after, bound).await
    }

    /// Read-your-writes: after a write commits on the primary, pull it into
    /// the replica before answering, so the next read on this edge sees it.
    /// A sync that fails meanwhile (the primary compacting its replication
    /// log refuses syncs for seconds) is retried until one begun after the
    /// write succeeds, for at most [`WRITE_VISIBLE_WAIT`]. The write itself
    /// has succeeded either way; past the bound it is logged and the
    /// periodic sync catches up.
    pub(crate) async fn written(&self) {
        if self.mode == Mode::Local {
            return self.advance().await;
        }
        let after = self.catchup.begun.load(Ordering::Acquire);
        if self.synced_after(after, WRITE_VISIBLE_WAIT).await {
            return;
        }
        let cause = self.stats.last_error.lock().expect("poisoned").clone().unwrap_or_default();
        tracing::warn!(
            cause,
            "the replica did not catch up with a write within {WRITE_VISIBLE_WAIT:?}; \
             the write is on the primary but not yet visible here"
        );
    }
}
