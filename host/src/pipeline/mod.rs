//! The request pipeline: what happens to a request for the worker, as named
//! steps in order (static-web-server's handler chain is the model):
//!
//! 1. [`consistency`]: a read carrying a replication position waits for it.
//! 2. [`cache`]: a fresh cached response answers at once.
//! 3. [`access`]: the `Authorization` header becomes write access, removed.
//! 4. [`invoke`]: the worker answers; its failures become 500/503/504.
//! 5. [`cache`] again: small bodies are gathered, cacheable ones kept.
//! 6. [`consistency`] again: a successful write carries its position.

mod access;
mod cache;
mod consistency;
mod invoke;

pub use access::take as take_access;
pub use cache::ResponseCache;

use crate::http::{Request, Response, TokenDigest};
use crate::store::Store;
use crate::wasm::{FilesCtx, Workers};
use std::sync::Arc;
use std::time::Duration;

/// What every request for the worker goes through.
pub struct Pipeline {
    pub store: Arc<Store>,
    pub workers: Arc<Workers>,
    /// The write token (none: every write is refused).
    pub write_token: Option<TokenDigest>,
    pub max_upload: u64,
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
        let lookup = cache::Lookup::new(self.cache.as_ref(), &req, &worker, self.store.generation());
        if let Some(hit) = cache::hit(self.cache.as_ref(), &lookup, req.method() == hyper::Method::HEAD) {
            return hit;
        }
        let access = access::take(&mut req, self.write_token.as_ref());
        let files = FilesCtx { store: self.store.clone(), access, max_upload: self.max_upload, progress: None };
        let resp = invoke::run(&self.workers, worker, req, files).await;
        let resp = cache::post_process(self.cache.as_ref(), lookup, resp).await;
        if is_write {
            consistency::post_process(&self.store, resp)
        } else {
            resp
        }
    }

    /// Registers the pipeline's metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(c) = &self.cache {
            c.register_metrics(registry);
        }
    }
}

#[cfg(test)]
mod tests;
