//! The public port: the host's own endpoints (`/_turserver/…`, `/metrics`),
//! answered here, and every other request to the pipeline. Every answer is
//! recorded in the metrics.

use super::sites::Sites;
use super::App;
use crate::http::{self, json_value, retry_later, text_response, Handler, Request, Response};
use crate::ops::{render_status, Metrics};
use crate::pipeline::take_access;
use crate::store::Reader;
use crate::wasm::{DeployError, MAX_WORKER_SIZE};
use http_body_util::BodyExt;
use std::sync::{Arc, OnceLock};

/// What the public port answers with: the app (or the sites) once started,
/// and what works before that.
pub(super) struct Routes {
    pub target: Target,
    pub metrics: Metrics,
}

/// One site, or many chosen by host.
pub(super) enum Target {
    One(OnceLock<Arc<App>>),
    Many(OnceLock<Arc<Sites>>),
}

impl Handler for Routes {
    async fn handle(&self, req: Request) -> Response {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        // Cheap: the URI's parts are shared, not copied.
        let uri = req.uri().clone();
        let (resp, app) = self.route(req).await;
        let ranked = Some(uri.path()).filter(|p| !p.starts_with("/_turserver/") && *p != "/metrics");
        let usage = app.as_ref().map_or(&self.metrics.usage, |a| &a.usage);
        self.metrics.observe(method.as_str(), ranked, resp, started.elapsed().as_secs_f64(), usage)
    }
}

impl Routes {
    /// The answer, and the site that gave it.
    async fn route(&self, req: Request) -> (Response, Option<Arc<App>>) {
        if let Some(resp) = self.host_wide(&req).await {
            return (resp, None);
        }
        let app = match &self.target {
            Target::One(app) => match app.get() {
                Some(app) => app.clone(),
                None => return (retry_later(503, "starting: the store and worker are not loaded yet"), None),
            },
            Target::Many(sites) => match sites.get() {
                Some(sites) => match sites.resolve(&req).await {
                    Ok(app) => app,
                    Err(refused) => return (refused, None),
                },
                None => return (retry_later(503, "starting: the sites are not loaded yet"), None),
            },
        };
        (Self::site(&app, req).await, Some(app))
    }

    /// What the host answers for every site: health, readiness, metrics,
    /// and with many sites the status of all of them.
    async fn host_wide(&self, req: &Request) -> Option<Response> {
        Some(match (req.uri().path(), &self.target) {
            ("/_turserver/health", _) => text_response(200, "ok"),
            ("/_turserver/ready", Target::One(app)) => match app.get() {
                Some(app) if app.pipeline.store.is_ready() => text_response(200, "ready"),
                Some(_) => retry_later(503, "not ready: the replica has not completed a sync with the primary yet"),
                None => retry_later(503, "not ready: starting"),
            },
            // Sites open on demand: ready once the sites file is loaded.
            ("/_turserver/ready", Target::Many(sites)) => match sites.get() {
                Some(_) => text_response(200, "ready"),
                None => retry_later(503, "not ready: starting"),
            },
            ("/_turserver/status", Target::Many(sites)) => match sites.get() {
                Some(sites) => sites.status().await,
                None => retry_later(503, "starting: the sites are not loaded yet"),
            },
            ("/metrics", _) => http::response(200, Some("text/plain; version=0.0.4; charset=utf-8"), {
                let mut text = self.metrics.render();
                text.truncate(text.trim_end().len());
                text.push('\n');
                text
            }),
            _ => return None,
        })
    }

    /// What one site answers.
    async fn site(app: &Arc<App>, req: Request) -> Response {
        let app = &**app;
        match req.uri().path() {
            "/_turserver/status" => {
                http::json_response(200, render_status(&app.pipeline.store, &app.pipeline.workers))
            }
            "/_turserver/worker" => deploy_worker(app, req).await,
            "/_turserver/usage" => super::dashboard::usage(app, req).await,
            "/_turserver/token" => super::dashboard::token(app, req).await,
            path if path == "/_turserver/ui" || path.starts_with(super::dashboard::PREFIX) => super::dashboard::asset(&req),
            path if path == "/_turserver/keys" || path.starts_with("/_turserver/keys/") => super::keys::route(app, req).await,
            "/_api/links" => super::keys::sign_link(app, req).await,
            "/_api/changes" => super::feed::changes(app, req).await,
            "/_api/events" => super::feed::events(app, req).await,
            path if path == "/_api/kv" || path.starts_with("/_api/kv/") => super::kv::route(app, req).await,
            path if path.starts_with(crate::pipeline::QUEUE_PREFIX) => queued_status(app, req).await,
            path if app.bench_native && path.starts_with("/_turserver/native/") => native(app, req).await,
            _ => app.pipeline.handle(req).await,
        }
    }
}

/// `PUT /_turserver/worker`: deploy a worker component to every edge.
async fn deploy_worker(app: &App, mut req: Request) -> Response {
    if req.method() != hyper::Method::PUT {
        return http::method_not_allowed("PUT", "method not allowed");
    }
    if let Err(refused) = admin(app, &mut req, "deploy a worker").await {
        return refused;
    }
    let limited = http_body_util::Limited::new(req.into_body(), MAX_WORKER_SIZE as usize);
    let bytes = match limited.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) => return text_response(413, &format!("worker body refused: {e}")),
    };
    match app.pipeline.workers.deploy(bytes).await {
        Ok(hash) => json_value(200, &serde_json::json!({ "version": hash })),
        Err(DeployError::Unusable(why)) => text_response(400, &why),
        Err(DeployError::Store(e)) => {
            let status = turserver_protocol::Error::from(e).status();
            text_response(status, "storing the worker failed; the host log has the cause")
        }
    }
}

/// `GET /_turserver/queue/{id}`: a queued write's outcome. Its path is the
/// writer's business: any credential that may write somewhere may read it.
async fn queued_status(app: &App, mut req: Request) -> Response {
    let Some(queue) = app.pipeline.store.write_queue() else {
        return text_response(404, "this edge keeps no write queue (start it with --write-queue)");
    };
    if !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) {
        return http::method_not_allowed("GET, HEAD", "a queued write's outcome is read with GET");
    }
    let access = match take_access(&mut req, app.pipeline.write_token.as_ref(), &app.pipeline.keys).await {
        Ok(access) => access,
        Err(refused) => return refused,
    };
    if access.check_any(crate::http::tokens::Action::Write).is_err() && access.check_any(crate::http::tokens::Action::Delete).is_err() {
        return text_response(401, "a token that may write is required to read a queued write's outcome");
    }
    let id = req.uri().path().trim_start_matches(crate::pipeline::QUEUE_PREFIX);
    let Ok(id) = id.parse::<i64>() else {
        return text_response(400, "a queued write is named by its number, e.g. /_turserver/queue/12");
    };
    match queue.status(id).await {
        Ok(Some(status)) => json_value(200, &status),
        Ok(None) => text_response(404, "no such queued write (finished ones are kept for the last 10000 writes)"),
        Err(e) => {
            tracing::error!(cause = %e, "reading a queued write's outcome failed");
            text_response(500, "reading the write queue failed; the host log has the cause")
        }
    }
}

/// Whether the request carries the write token, which `what` needs;
/// otherwise the answer that says why not.
pub(super) async fn admin(app: &App, req: &mut Request, what: &str) -> Result<(), Response> {
    let access = take_access(req, app.pipeline.write_token.as_ref(), &app.pipeline.keys).await?;
    match access.check_admin() {
        Ok(()) => Ok(()),
        Err(http::Refusal::Unauthorized) => {
            Err(text_response(401, &format!("a write token is required to {what} (Authorization: Bearer <token>)")))
        }
        Err(http::Refusal::Forbidden) => {
            Err(text_response(403, &format!("only the write token may {what}; this token is not it")))
        }
    }
}

/// Benchmark baseline: a file answered by the host straight from the store,
/// with no worker (`--bench-native`). Only plain GETs of whole files.
async fn native(app: &App, req: Request) -> Response {
    let store = &app.pipeline.store;
    let path = req.uri().path().trim_start_matches("/_turserver/native/").to_string();
    let meta = match store.stat(&path).await {
        Ok(Some(m)) if !turserver_protocol::is_reserved(&m.path) => m,
        Ok(_) => return text_response(404, "not found"),
        Err(e) => return text_response(500, &e.to_string()),
    };
    let Ok(body) = store.read_whole(Reader::Public, meta.version, meta.size).await else {
        return text_response(500, "read failed");
    };
    let mut resp = hyper::Response::new(http::full_body(body));
    let h = resp.headers_mut();
    if let Ok(v) = ::http::HeaderValue::from_str(&meta.content_type) {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = ::http::HeaderValue::from_str(&format!("\"{}\"", meta.hash)) {
        h.insert(hyper::header::ETAG, v);
    }
    resp
}
