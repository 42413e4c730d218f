//! The invoke step: the request runs through the active worker; a worker
//! that produced no response gets the status its failure deserves.

use crate::http::{headers, text_response, Response};
use crate::wasm::{FilesCtx, InvokeError, Invoked, Worker, Workers};
use bytes::Bytes;
use std::sync::Arc;

pub async fn run<B>(workers: &Workers, worker: Arc<Worker>, req: hyper::Request<B>, files: FilesCtx) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let version = worker.version_header.clone();
    let Invoked { request_id, result } = workers.runtime().invoke(worker, req, files).await;
    let mut resp = result.unwrap_or_else(|e| failure_response(&e, request_id));
    let h = resp.headers_mut();
    h.insert(headers::REQUEST_ID, http::HeaderValue::from(request_id));
    h.insert(headers::WORKER, version);
    resp
}

/// What a client gets when the worker gave no response.
fn failure_response(e: &InvokeError, request_id: u64) -> Response {
    let (status, why) = match e {
        InvokeError::Setup => (500, "internal error: the request could not reach the worker".to_string()),
        InvokeError::Timeout => (504, "worker timed out".into()),
        InvokeError::Capacity => (503, "worker capacity exhausted; retry".into()),
        InvokeError::Failed => (500, "worker failed: it did not produce a response".into()),
        InvokeError::ErrorCode(code) => (500, format!("worker error: {code:?}")),
    };
    text_response(status, &format!("{why} (request {request_id})"))
}

/// A bodiless request as it reached the worker, to run again.
pub struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    /// What the host attached (the connection's quota).
    extensions: http::Extensions,
}

impl Replay {
    pub fn of<B>(req: &hyper::Request<B>) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
        }
    }

    pub fn request(&self) -> hyper::Request<http_body_util::Empty<Bytes>> {
        let mut req = hyper::Request::new(http_body_util::Empty::new());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        req
    }
}
