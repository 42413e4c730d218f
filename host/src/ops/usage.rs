//! Usage over the last hour (`GET /_turserver/usage`): requests, latency,
//! bytes, status classes, response-cache hits and syncs, one point per
//! interval (10 s by default) in a bounded ring; and the most requested
//! paths, by requests and by bytes, in bounded space-saving summaries (a
//! scan of unique paths cannot grow them).
//!
//! Recording a request touches a few atomics and one short lock; the points
//! are made by a sampler that reads the counters once per interval.

use crate::store::Store;
use crate::task::AbortOnDrop;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How far back the history goes.
const HISTORY: Duration = Duration::from_secs(3600);
/// Paths each summary follows; the top [`TOP_SHOWN`] are reported.
const TOP_TRACKED: usize = 128;
const TOP_SHOWN: usize = 20;
/// Latency buckets: four per doubling from 10 µs (the last one open).
const LATENCY_BUCKETS: usize = 96;
const LATENCY_FIRST_US: f64 = 10.0;

struct Counters {
    /// By status class: 1xx..5xx.
    status: [AtomicU64; 5],
    latency: [AtomicU64; LATENCY_BUCKETS],
}

/// What the sampler reads besides the request counters, once the store is
/// open.
pub struct Sources {
    pub store: Arc<Store>,
    /// The response cache's hits and misses, when there is a cache.
    pub cache: Option<(Counter, Counter)>,
}

/// One interval's figures.
#[derive(Clone, Serialize, Default, Debug)]
struct Point {
    /// Unix seconds at the end of the interval.
    at: u64,
    requests: u64,
    requests_per_second: f64,
    /// Milliseconds; absent when no request ended in the interval.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    bytes: u64,
    status: StatusClasses,
    cache_hits: u64,
    cache_misses: u64,
    /// Hits over hits and misses; absent without cacheable requests.
    cache_hit_rate: Option<f64>,
    syncs: u64,
    sync_failures: u64,
    /// Mean duration of the interval's successful syncs.
    sync_ms: Option<f64>,
    replication_index: u64,
}

#[derive(Clone, Copy, Serialize, Default, Debug)]
struct StatusClasses {
    #[serde(rename = "1xx")]
    informational: u64,
    #[serde(rename = "2xx")]
    success: u64,
    #[serde(rename = "3xx")]
    redirection: u64,
    #[serde(rename = "4xx")]
    client_error: u64,
    #[serde(rename = "5xx")]
    server_error: u64,
}

/// Cumulative readings, to take differences of.
#[derive(Clone, Default)]
struct Reading {
    status: [u64; 5],
    bytes: u64,
    latency: Vec<u64>,
    cache_hits: u64,
    cache_misses: u64,
    syncs: u64,
    sync_failures: u64,
    sync_us: u64,
}

pub struct Usage {
    counters: Counters,
    /// Response body bytes sent: the `/metrics` counter, read here.
    bytes: Counter,
    top: Mutex<Top>,
    history: Mutex<VecDeque<Point>>,
}

#[derive(Default)]
struct Top {
    requests: SpaceSaving,
    bytes: SpaceSaving,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters { status: Default::default(), latency: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl Usage {
    /// `bytes` counts the response body bytes sent.
    pub fn new(bytes: Counter) -> Usage {
        Usage { counters: Counters::default(), bytes, top: Mutex::default(), history: Mutex::default() }
    }

    /// The response body bytes this usage counts.
    pub fn bytes_counter(&self) -> &Counter {
        &self.bytes
    }

    /// Records an answered request: its status class (0 for 1xx to 4 for
    /// 5xx), time to the response head, and body length (as declared; 0 for
    /// HEAD and bodiless statuses). `path` is `None` for the host's own
    /// endpoints, which are not ranked.
    pub fn record(&self, path: Option<&str>, class: usize, seconds: f64, body_bytes: u64) {
        self.counters.status[class].fetch_add(1, Ordering::Relaxed);
        self.counters.latency[latency_bucket(seconds)].fetch_add(1, Ordering::Relaxed);
        if let Some(path) = path {
            let mut top = self.top.lock().unwrap_or_else(|e| e.into_inner());
            top.requests.add(path, 1);
            if body_bytes > 0 {
                top.bytes.add(path, body_bytes);
            }
        }
    }

    /// Starts the sampler: one point every `interval`, the last hour kept.
    pub fn start(self: &Arc<Self>, sources: Sources, interval: Duration) -> AbortOnDrop {
        let usage = self.clone();
        let keep = (HISTORY.as_secs_f64() / interval.as_secs_f64()).ceil().max(1.0) as usize;
        AbortOnDrop::spawn(async move {
            let mut last = usage.read(&sources);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let now = usage.read(&sources);
                let point = difference(&last, &now, interval, &sources);
                last = now;
                let mut history = usage.history.lock().unwrap_or_else(|e| e.into_inner());
                if history.len() == keep {
                    history.pop_front();
                }
                history.push_back(point);
            }
        })
    }

    fn read(&self, sources: &Sources) -> Reading {
        let c = &self.counters;
        let stats = sources.store.sync_stats();
        Reading {
            status: std::array::from_fn(|i| c.status[i].load(Ordering::Relaxed)),
            bytes: self.bytes.get(),
            latency: c.latency.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            cache_hits: sources.cache.as_ref().map_or(0, |(hits, _)| hits.get()),
            cache_misses: sources.cache.as_ref().map_or(0, |(_, misses)| misses.get()),
            syncs: stats.ok.load(Ordering::Relaxed),
            sync_failures: stats.failures.get(),
            sync_us: stats.total_duration_us.load(Ordering::Relaxed),
        }
    }

    /// The usage document. `may_see` says whether the asker may see a path
    /// (private paths are ranked, but shown only to who may read them).
    pub fn render(&self, interval: Duration, may_see: impl Fn(&str) -> bool) -> serde_json::Value {
        let points: Vec<Point> = self.history.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let (by_requests, by_bytes) = {
            let top = self.top.lock().unwrap_or_else(|e| e.into_inner());
            (top.requests.top(), top.bytes.top())
        };
        let shown = |ranked: Vec<(String, u64, u64)>, unit: &str| -> Vec<serde_json::Value> {
            ranked
                .into_iter()
                .filter(|(path, _, _)| may_see(path))
                .take(TOP_SHOWN)
                .map(|(path, count, error)| serde_json::json!({ "path": path, unit: count, "error": error }))
                .collect()
        };
        serde_json::json!({
            "interval_seconds": interval.as_secs_f64(),
            "points": points,
            "top_by_requests": shown(by_requests, "requests"),
            "top_by_bytes": shown(by_bytes, "bytes"),
        })
    }
}

fn difference(last: &Reading, now: &Reading, interval: Duration, sources: &Sources) -> Point {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let status: Vec<u64> = (0..5).map(|i| d(last.status[i], now.status[i])).collect();
    let requests: u64 = status.iter().sum();
    let latency: Vec<u64> = last.latency.iter().zip(&now.latency).map(|(a, b)| d(*a, *b)).collect();
    let (cache_hits, cache_misses) = (d(last.cache_hits, now.cache_hits), d(last.cache_misses, now.cache_misses));
    let syncs = d(last.syncs, now.syncs);
    Point {
        at: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |t| t.as_secs()),
        requests,
        requests_per_second: requests as f64 / interval.as_secs_f64(),
        p50_ms: quantile_ms(&latency, 0.50),
        p99_ms: quantile_ms(&latency, 0.99),
        bytes: d(last.bytes, now.bytes),
        status: StatusClasses {
            informational: status[0],
            success: status[1],
            redirection: status[2],
            client_error: status[3],
            server_error: status[4],
        },
        cache_hits,
        cache_misses,
        cache_hit_rate: (cache_hits + cache_misses > 0).then(|| cache_hits as f64 / (cache_hits + cache_misses) as f64),
        syncs,
        sync_failures: d(last.sync_failures, now.sync_failures),
        sync_ms: (syncs > 0).then(|| d(last.sync_us, now.sync_us) as f64 / 1000.0 / syncs as f64),
        replication_index: sources.store.sync_stats().replication_index.load(Ordering::Relaxed),
    }
}

fn latency_bucket(seconds: f64) -> usize {
    let us = seconds * 1e6;
    if us <= LATENCY_FIRST_US {
        return 0;
    }
    ((4.0 * (us / LATENCY_FIRST_US).log2()).ceil() as usize).min(LATENCY_BUCKETS - 1)
}

/// The upper bound of bucket `i`, in milliseconds.
fn bucket_upper_ms(i: usize) -> f64 {
    LATENCY_FIRST_US * 2f64.powf(i as f64 / 4.0) / 1000.0
}

/// The quantile `q` of a bucketed distribution, as its bucket's upper bound
/// (within 19% above the true value).
fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some((bucket_upper_ms(i) * 1000.0).round() / 1000.0);
        }
    }
    None
}

/// The space-saving summary (Metwally et al.): at most [`TOP_TRACKED`]
/// paths; a new path when full replaces the smallest, inheriting its count
/// as its possible overcount. Any path with more than total/capacity is
/// guaranteed to be in it.
#[derive(Default)]
struct SpaceSaving {
    /// Path to (count, overcount).
    counts: HashMap<Box<str>, (u64, u64)>,
}

impl SpaceSaving {
    fn add(&mut self, path: &str, by: u64) {
        if let Some((count, _)) = self.counts.get_mut(path) {
            *count += by;
            return;
        }
        if self.counts.len() < TOP_TRACKED {
            self.counts.insert(path.into(), (by, 0));
            return;
        }
        let Some((smallest, &(min, _))) = self.counts.iter().min_by_key(|(_, (count, _))| *count) else {
            return;
        };
        let smallest = smallest.clone();
        self.counts.remove(&smallest);
        self.counts.insert(path.into(), (min + by, min));
    }

    /// Paths by count, highest first: (path, count, overcount).
    fn top(&self) -> Vec<(String, u64, u64)> {
        let mut all: Vec<_> = self.counts.iter().map(|(p, (c, e))| (p.to_string(), *c, *e)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_stays_bounded_and_keeps_the_heavy_paths() {
        let mut s = SpaceSaving::default();
        for i in 0..10_000 {
            s.add("hot", 3);
            s.add(&format!("scan/{i}"), 1);
            if i % 2 == 0 {
                s.add("warm", 1);
            }
        }
        assert!(s.counts.len() <= TOP_TRACKED);
        let top = s.top();
        assert_eq!(top[0].0, "hot");
        assert_eq!(top[0].1, 30_000);
        assert_eq!(top[1].0, "warm");
        // Counts never undercount.
        assert!(top[1].1 >= 5_000);
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut buckets = vec![0u64; LATENCY_BUCKETS];
        for ms in [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 50.0] {
            buckets[latency_bucket(ms / 1000.0)] += 1;
        }
        let p50 = quantile_ms(&buckets, 0.5).unwrap();
        assert!((0.1..0.12).contains(&p50), "{p50}");
        let p99 = quantile_ms(&buckets, 0.99).unwrap();
        assert!((50.0..60.0).contains(&p99), "{p99}");
        assert_eq!(quantile_ms(&vec![0; LATENCY_BUCKETS], 0.5), None);
        assert_eq!(latency_bucket(0.0), 0);
        assert_eq!(latency_bucket(1e9), LATENCY_BUCKETS - 1);
    }
}
