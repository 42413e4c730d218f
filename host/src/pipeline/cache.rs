//! The response cache step: GET responses the worker marks cacheable are
//! kept in memory, as a CDN in front of the worker would keep them, so a hit
//! skips the worker and the database.
//!
//! Entries are keyed by request target, `Accept-Encoding`, `Origin` (CORS
//! headers depend on it) and worker version (a swapped-in worker never sees
//! the old one's responses), and stamped with the store's generation and
//! the paths the worker read to make them: an entry goes stale when one of
//! those paths changes (a write here, or a sync that brought it), or when
//! anything site-wide does (site rules, keys, the worker); a listing goes
//! stale with any change. Bounded in bytes, least-recently-used first.

use crate::http::{full_body, headers, Request, Response};
use crate::store::Reads;
use crate::wasm::Worker;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Largest response body kept.
pub const MAX_ENTRY_BYTES: usize = 256 << 10;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    pub target: String,
    pub accept_encoding: String,
    pub origin: String,
    pub worker: String,
}

pub struct Entry {
    /// The store's generation at which it is known fresh: when it was made,
    /// moved forward by each hit that finds it still fresh.
    pub generation: AtomicU64,
    /// What the worker read to make it.
    pub reads: Reads,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<Key, Arc<Entry>> for ByBytes {
    fn weight(&self, key: &Key, val: &Arc<Entry>) -> u64 {
        // Body plus a rough allowance for the key and headers.
        (val.body.len() + key.target.len() + 512) as u64
    }
}

pub struct ResponseCache {
    entries: quick_cache::sync::Cache<Key, Arc<Entry>, ByBytes>,
    pub hits: Counter,
    pub misses: Counter,
}

impl ResponseCache {
    pub fn new(capacity_bytes: u64) -> ResponseCache {
        let estimated_items = (capacity_bytes / 4096).clamp(16, 1 << 20) as usize;
        ResponseCache {
            entries: quick_cache::sync::Cache::with_weighter(estimated_items, capacity_bytes, ByBytes),
            hits: Counter::default(),
            misses: Counter::default(),
        }
    }

    /// A fresh entry for `key`, if there is one. `fresh_at` answers the
    /// generation at which an entry stamped at a given one is still fresh.
    pub fn get(&self, key: &Key, fresh_at: impl Fn(u64, &Reads) -> Option<u64>) -> Option<Arc<Entry>> {
        let found = self.entries.get(key).and_then(|e| {
            let stamp = e.generation.load(Ordering::Relaxed);
            let now = fresh_at(stamp, &e.reads)?;
            if now > stamp {
                e.generation.fetch_max(now, Ordering::Relaxed);
            }
            Some(e)
        });
        match &found {
            Some(_) => self.hits.inc(),
            None => self.misses.inc(),
        };
        found
    }

    pub fn insert(&self, key: Key, entry: Entry) {
        self.entries.insert(key, Arc::new(entry));
    }

    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("response_cache_hits", "Requests answered from the edge response cache", self.hits.clone());
        registry.register("response_cache_misses", "Cacheable requests the cache could not answer", self.misses.clone());
    }
}

/// Small bodies are gathered before the head is sent, so hyper writes head
/// and body in one go (the worker's body otherwise arrives just after the
/// head, costing a second write and packet).
const COALESCE_BYTES: u64 = 64 << 10;

/// A request's place in the cache: where its response would be kept, and
/// the store's generation before the worker ran (a change during the
/// request leaves the entry already stale).
pub struct Lookup {
    key: Option<Key>,
    generation: u64,
    is_get: bool,
    /// What the worker reads, recorded while it runs (set up only once the
    /// cache could not answer: a hit allocates nothing for it).
    reads: Option<Arc<std::sync::Mutex<Reads>>>,
}

fn header_text(req: &Request, name: http::header::HeaderName) -> String {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

impl Lookup {
    /// A request the cache does not keep (its response may still be gathered).
    pub fn uncached(is_get: bool) -> Lookup {
        Lookup { key: None, generation: 0, is_get, reads: None }
    }

    pub fn new(cache: Option<&ResponseCache>, req: &Request, worker: &Worker, generation: u64) -> Lookup {
        let key = cache.filter(|_| request_is_cacheable(req.method(), req.headers())).map(|_| Key {
            target: req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string(),
            accept_encoding: header_text(req, http::header::ACCEPT_ENCODING),
            origin: header_text(req, http::header::ORIGIN),
            worker: worker.hash.clone(),
        });
        Lookup { key, generation, is_get: req.method() == http::Method::GET, reads: None }
    }

    /// Where the worker's run records what it reads, when its response may
    /// be kept.
    pub fn track_reads(&mut self) -> Option<Arc<std::sync::Mutex<Reads>>> {
        if self.key.is_some() {
            self.reads = Some(Default::default());
        }
        self.reads.clone()
    }
}

/// Pre-process: the cached response, if a fresh one is kept.
pub fn hit(
    cache: Option<&ResponseCache>,
    lookup: &Lookup,
    head: bool,
    fresh_at: impl Fn(u64, &Reads) -> Option<u64>,
) -> Option<Response> {
    let entry = cache?.get(lookup.key.as_ref()?, fresh_at)?;
    let body = if head { Bytes::new() } else { entry.body.clone() };
    let mut resp = hyper::Response::new(full_body(body));
    *resp.status_mut() = entry.status;
    *resp.headers_mut() = entry.headers.clone();
    resp.headers_mut().insert(headers::CACHE, http::HeaderValue::from_static("hit"));
    Some(resp)
}

fn content_length(resp: &Response) -> Option<u64> {
    resp.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The worker's body failed while it was being gathered, before anything
/// was sent: typically the version it chose was replaced or deleted meanwhile.
pub struct BodyFailed;

/// Post-process: a GET that the cache keeps, or one small enough, is
/// gathered whole before the head is sent; the cache keeps what it may.
pub async fn post_process(cache: Option<&ResponseCache>, lookup: Lookup, resp: Response) -> Result<Response, BodyFailed> {
    let cacheable = lookup.is_get && lookup.key.is_some() && response_is_cacheable(resp.status(), resp.headers());
    if !cacheable && !(lookup.is_get && content_length(&resp).is_some_and(|n| n <= COALESCE_BYTES)) {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            tracing::debug!(cause = ?e, "the worker's response body failed before it was sent");
            return Err(BodyFailed);
        }
    };
    if let (true, Some(cache), Some(key)) = (cacheable, cache, lookup.key) {
        parts.headers.remove(headers::REQUEST_ID);
        let reads = lookup.reads.map(|r| std::mem::take(&mut *r.lock().unwrap_or_else(|e| e.into_inner()))).unwrap_or_default();
        let entry = Entry {
            generation: AtomicU64::new(lookup.generation),
            reads,
            status: parts.status,
            headers: parts.headers.clone(),
            body: bytes.clone(),
        };
        cache.insert(key, entry);
        parts.headers.insert(headers::CACHE, http::HeaderValue::from_static("miss"));
    }
    Ok(hyper::Response::from_parts(parts, full_body(bytes)))
}

/// Whether a request may be answered from the cache: a plain GET or HEAD
/// with no validators, ranges, credentials or replication position.
pub fn request_is_cacheable(method: &http::Method, headers: &HeaderMap) -> bool {
    const BYPASS: [&str; 9] = [
        "range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "authorization",
        "cookie",
        headers::POSITION,
    ];
    (method == http::Method::GET || method == http::Method::HEAD) && !BYPASS.iter().any(|h| headers.contains_key(*h))
}

/// Whether the worker's response may be kept: a 200 with a Cache-Control
/// that allows storing, varying only by what the key holds
/// (Accept-Encoding, Origin), no cookies, and a known body length within
/// [`MAX_ENTRY_BYTES`].
pub fn response_is_cacheable(status: StatusCode, headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
    let cache_control = match text(http::header::CACHE_CONTROL) {
        Some(cc) => cc.to_ascii_lowercase(),
        None => return false,
    };
    let storable = !cache_control.contains("no-store") && !cache_control.contains("private");
    let vary_ok = headers.get_all(http::header::VARY).iter().all(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').map(str::trim).all(|f| f.eq_ignore_ascii_case("accept-encoding") || f.eq_ignore_ascii_case("origin"))
        })
    });
    let small = text(http::header::CONTENT_LENGTH)
        .and_then(|l| l.parse::<usize>().ok())
        .is_some_and(|l| l <= MAX_ENTRY_BYTES);
    status == StatusCode::OK && storable && vary_ok && small && !headers.contains_key(http::header::SET_COOKIE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cacheable_responses() {
        let ok = headers(&[("cache-control", "no-cache"), ("content-length", "10")]);
        assert!(response_is_cacheable(StatusCode::OK, &ok));
        assert!(!response_is_cacheable(StatusCode::NOT_FOUND, &ok));
        assert!(!response_is_cacheable(StatusCode::OK, &headers(&[("content-length", "10")])));
        assert!(!response_is_cacheable(StatusCode::OK, &headers(&[("cache-control", "no-store"), ("content-length", "1")])));
        assert!(!response_is_cacheable(StatusCode::OK, &headers(&[("cache-control", "private"), ("content-length", "1")])));
        let origin = headers(&[("cache-control", "max-age=60"), ("content-length", "1"), ("vary", "Accept-Encoding, Origin")]);
        assert!(response_is_cacheable(StatusCode::OK, &origin));
        let cookie = headers(&[("cache-control", "max-age=60"), ("content-length", "1"), ("vary", "Cookie")]);
        assert!(!response_is_cacheable(StatusCode::OK, &cookie));
        let big = headers(&[("cache-control", "max-age=60"), ("content-length", "999999999")]);
        assert!(!response_is_cacheable(StatusCode::OK, &big));
    }

    #[test]
    fn cacheable_requests() {
        assert!(request_is_cacheable(&http::Method::GET, &HeaderMap::new()));
        assert!(!request_is_cacheable(&http::Method::PUT, &HeaderMap::new()));
        assert!(!request_is_cacheable(&http::Method::GET, &headers(&[("range", "bytes=0-1")])));
        assert!(!request_is_cacheable(&http::Method::GET, &headers(&[("if-none-match", "\"x\"")])));
    }

    /// A cache holding one entry for `/a`, stamped with generation 1.
    fn one_entry_stamped_1() -> (ResponseCache, Key) {
        let c = ResponseCache::new(1 << 20);
        let key = Key { target: "/a".into(), accept_encoding: String::new(), origin: String::new(), worker: "w".into() };
        let entry = Entry {
            generation: AtomicU64::new(1),
            reads: Reads::default(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"x"),
        };
        c.insert(key.clone(), entry);
        (c, key)
    }

    #[test]
    fn stale_generations_miss() {
        let (c, key) = one_entry_stamped_1();
        assert!(c.get(&key, |stamp, _| (stamp == 1).then_some(1)).is_some());
        assert!(c.get(&key, |_, _| None).is_none());
        assert_eq!((c.hits.get(), c.misses.get()), (1, 1));
    }

    #[test]
    fn a_hit_found_fresh_later_is_stamped_with_that_generation() {
        let (c, key) = one_entry_stamped_1();
        let seen = std::sync::Mutex::new(Vec::new());
        let fresh_at = |stamp, _: &Reads| {
            seen.lock().unwrap().push(stamp);
            Some(5)
        };
        assert!(c.get(&key, fresh_at).is_some());
        assert!(c.get(&key, fresh_at).is_some());
        assert_eq!(*seen.lock().unwrap(), [1, 5]);
    }
}
