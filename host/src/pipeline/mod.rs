//! The request pipeline: what happens to a request for the worker, as named
//! steps in order (static-web-server's handler chain is the model):
//!
//! 1. [`consistency`]: a read carrying a replication position waits for it.
//! 2. [`cache`]: a fresh cached response answers at once.
//! 3. [`access`]: the `Authorization` header becomes write access (the
//!    write token, or a signed token's rules), removed.
//! 4. [`invoke`]: the worker answers; its failures become 500/503/504.
//! 5. [`cache`] again: small bodies are gathered, cacheable ones kept; a GET
//!    whose file changed before its body was read is run again.
//! 6. [`consistency`] again: a successful write carries its position.

mod access;
mod cache;
mod consistency;
mod invoke;

pub use access::{take as take_access, Keys, KEYS_DOCUMENT};
pub use consistency::{post_process as carry_position, pre_process as wait_for_position};
pub use cache::ResponseCache;

use crate::http::{Request, Response, TokenDigest};
use crate::store::Store;
use crate::wasm::{FilesCtx, SiteRulesCache, Workers};
use std::sync::Arc;
use std::time::Duration;

/// How many times a GET whose file changed under it is run again.
const MAX_REPLAYS: usize = 4;

/// What every request for the worker goes through.
pub struct Pipeline {
    pub store: Arc<Store>,
    pub workers: Arc<Workers>,
    /// The write token (none: only signed tokens may write).
    pub write_token: Option<TokenDigest>,
    /// The key set signed tokens are verified with.
    pub keys: Arc<Keys>,
    /// The site rules, for the host's own checks (private files).
    pub site: Arc<SiteRulesCache>,
    pub max_upload: u64,
    /// The site's `max_file_size`, when it is what limits uploads: a 413
    /// then says so.
    pub max_file_size: Option<u64>,
    pub cache: Option<ResponseCache>,
    /// How long a read waits for the position it carries.
    pub consistency_wait: Duration,
}

impl Pipeline {
    pub async fn handle(&self, mut req: Request) -> Response {
        let is_write = !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS);
        if !is_write {
            if let Some(refused) = consistency::pre_process(&self.store, self.consistency_wait, &req).await {
                return refused;
            }
        }
        let worker = self.workers.current();
        let mut lookup = cache::Lookup::new(self.cache.as_ref(), &req, &worker, self.store.generation());
        let fresh_at = |stamp, reads: &_| self.store.fresh_at(stamp, reads);
        if let Some(hit) = cache::hit(self.cache.as_ref(), &lookup, req.method() == hyper::Method::HEAD, fresh_at) {
            return hit;
        }
        let access = match access::take(&mut req, self.write_token.as_ref(), &self.keys).await {
            Ok(access) => access,
            Err(refused) => return refused,
        };
        let is_get = req.method() == hyper::Method::GET;
        let replay = is_get.then(|| invoke::Replay::of(&req));
        let mut files = self.files(access.clone());
        files.reads = lookup.track_reads();
        let limit_refused = is_write.then(Arc::default);
        files.limit_refused = limit_refused.clone();
        let queued: Option<Arc<std::sync::OnceLock<i64>>> = (is_write && self.store.write_queue().is_some()).then(Arc::default);
        files.queued = queued.clone();
        let resp = invoke::run(&self.workers, worker, req, files).await;
        let resp = match limit_refused {
            Some(refused) => self.name_limit(&refused, resp),
            None => resp,
        };
        let mut answer = cache::post_process(self.cache.as_ref(), lookup, resp).await;
        // The version the worker chose vanished before anything was sent
        // (replaced or deleted meanwhile): answer from the store as it is
        // now. A file replaced again and again may need a few tries.
        if let Some(replay) = replay {
            for _ in 0..MAX_REPLAYS {
                if answer.is_ok() {
                    break;
                }
                let resp = invoke::run(&self.workers, self.workers.current(), replay.request(), self.files(access.clone())).await;
                answer = cache::post_process(None, cache::Lookup::uncached(is_get), resp).await;
            }
        }
        let resp = answer.unwrap_or_else(|cache::BodyFailed| {
            crate::http::retry_later(503, "the file changed while it was being read; retry")
        });
        if let Some(id) = queued.as_ref().and_then(|q| q.get()).filter(|_| resp.status().is_success()) {
            queued_answer(*id, resp)
        } else if is_write {
            consistency::post_process(&self.store, resp)
        } else {
            resp
        }
    }

    /// What one run of the worker may do to the store.
    fn files(&self, access: crate::http::WriteAccess) -> FilesCtx {
        FilesCtx {
            store: self.store.clone(),
            site: self.site.clone(),
            access,
            max_upload: self.max_upload,
            progress: None,
            reads: None,
            limit_refused: None,
            queued: None,
        }
    }

    /// A write refused for passing one of the site's limits answers with
    /// the limit's name: 507 for what the site holds (`max_files`,
    /// `max_bytes`), 413 for one file's size (`max_file_size`).
    fn name_limit(&self, refused: &std::sync::OnceLock<crate::store::LimitExceeded>, resp: Response) -> Response {
        if let Some(limit) = refused.get() {
            return crate::http::text_response(507, &format!("{limit}; nothing was written"));
        }
        match self.max_file_size {
            Some(max) if resp.status() == hyper::StatusCode::PAYLOAD_TOO_LARGE => crate::http::text_response(
                413,
                &format!("files on this site are at most {max} bytes (max_file_size); nothing was written"),
            ),
            _ => resp,
        }
    }

    /// Registers the pipeline's metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(c) = &self.cache {
            c.register_metrics(registry);
        }
    }
}

/// A write kept in the queue while the primary is away: 202 Accepted, with
/// where its outcome can be read (the worker's validator kept).
fn queued_answer(id: i64, worker: Response) -> Response {
    let status_url = format!("{QUEUE_PREFIX}{id}");
    let body = serde_json::json!({
        "queued": id,
        "status": status_url,
        "message": "the primary is unreachable: the write is kept on this edge and applied in order when it returns",
    });
    let mut resp = crate::http::json_value(202, &body);
    let h = resp.headers_mut();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&status_url) {
        h.insert(hyper::header::LOCATION, v);
    }
    if let Some(etag) = worker.headers().get(hyper::header::ETAG) {
        h.insert(hyper::header::ETAG, etag.clone());
    }
    resp
}

/// Where a queued write's outcome is read: `{QUEUE_PREFIX}{id}`.
pub const QUEUE_PREFIX: &str = "/_turserver/queue/";

#[cfg(test)]
mod tests;
