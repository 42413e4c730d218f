//! Prometheus metrics (`GET /metrics`, text exposition format). One registry
//! for the process: the request metrics live here, and each owner of other
//! state (the store's syncs, the response cache, the wasm runtime) registers
//! its own metrics on it when it starts.

use crate::http::ResponseBody;
use bytes::Bytes;
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use super::Usage;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    bytes_served: Counter,
    /// The last hour, for the dashboard.
    pub usage: Arc<Usage>,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~3 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("turserver");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests answered, by method and status class", requests.clone());
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("request_duration_seconds", "Time to the response head, by method", latency.clone());
        let bytes_served = Counter::default();
        registry.register("response_body_bytes", "Response body bytes sent", bytes_served.clone());
        let usage = Arc::new(Usage::new(bytes_served.clone()));
        Metrics { registry: Mutex::new(registry), requests, latency, bytes_served, usage }
    }
}

impl Metrics {
    /// Lets an owner register its metrics.
    pub fn register(&self, with: impl FnOnce(&mut Registry)) {
        with(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Records an answered request; its body's bytes are counted as they
    /// are sent. `path` ranks it among the most requested (`None`: the
    /// host's own endpoints) in `usage`: the host's, or a site's.
    pub fn observe(
        &self,
        method: &str,
        path: Option<&str>,
        resp: crate::http::Response,
        seconds: f64,
        usage: &Arc<Usage>,
    ) -> crate::http::Response {
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
        let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        let status = ["1xx", "2xx", "3xx", "4xx", "5xx"][class];
        self.requests.get_or_create(&RequestLabels { method, status }).inc();
        self.latency.get_or_create(&MethodLabels { method }).observe(seconds);
        let body_bytes = match (method, resp.status().as_u16()) {
            ("HEAD", _) | (_, 204 | 304) => 0,
            _ => resp
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or_else(|| http_body::Body::size_hint(resp.body()).lower()),
        };
        usage.record(path, class, seconds, body_bytes);
        let counter = self.bytes_served.clone();
        let site = (!Arc::ptr_eq(usage, &self.usage)).then(|| usage.bytes_counter().clone());
        resp.map(|inner| CountingBody { inner, counter, site }.boxed_unsync())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(cause = %e, "encoding metrics");
        }
        out
    }
}

/// Counts response body bytes into a metric as they are sent.
struct CountingBody {
    inner: ResponseBody,
    counter: Counter,
    /// A site's own count, when the request was for one of many sites.
    site: Option<Counter>,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = <ResponseBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.inc_by(data.len() as u64);
                if let Some(site) = &self.site {
                    site.inc_by(data.len() as u64);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
