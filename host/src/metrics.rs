//! Prometheus metrics (`GET /metrics`, text exposition format).

use crate::status::SyncStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    pub bytes_served: Counter,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~3 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

impl Metrics {
    pub fn new(sync: &SyncStats, cache: Option<&crate::edge_cache::EdgeCache>, instantiations: &Counter) -> Metrics {
        let mut registry = Registry::with_prefix("turserver");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests answered, by method and status class", requests.clone());
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("request_duration_seconds", "Time to the response head, by method", latency.clone());
        let bytes_served = Counter::default();
        registry.register("response_body_bytes", "Response body bytes sent", bytes_served.clone());
        registry.register("sync_duration_seconds", "Duration of syncs with the primary", sync.duration.clone());
        registry.register("sync_failures", "Syncs with the primary that failed", sync.failures.clone());
        registry.register("replication_index", "The replica's replication index (frame number)", sync.index_gauge.clone());
        registry.register(
            "worker_instantiations",
            "Worker instances created (a stateless worker's instances serve many requests)",
            instantiations.clone(),
        );
        if let Some(c) = cache {
            registry.register("response_cache_hits", "Requests answered from the edge response cache", c.hits.clone());
            registry.register("response_cache_misses", "Cacheable requests the cache could not answer", c.misses.clone());
        }
        Metrics { registry, requests, latency, bytes_served }
    }

    pub fn observe(&self, method: &str, status: u16, seconds: f64) {
        // Static labels: recording a request allocates nothing.
        let method = match method {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "POST" => "POST",
            "OPTIONS" => "OPTIONS",
            _ => "other",
        };
        let status = match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.requests.get_or_create(&RequestLabels { method, status }).inc();
        self.latency.get_or_create(&MethodLabels { method }).observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(cause = %e, "encoding metrics");
        }
        out
    }
}
