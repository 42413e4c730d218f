//! The replica sidecar: `turserver:store/files` and `kv` over HTTP, for workers that
//! run in another runtime (Spin) and reach this host's replica through the
//! store adapter (`worker/adapter`).
//!
//! It listens on its own address (`--sidecar-listen`), never on the public
//! one, and answers only requests carrying its own token
//! (`--sidecar-token`). Every route is one WIT call served by the same code
//! as the local worker's calls (the `files` host side in `crate::wasm`), so both paths check,
//! store and fail alike.
//!
//! The wire protocol (calls, headers, framing, error statuses) is defined
//! once, in the `turserver-protocol` crate, which the adapter uses too. A
//! wrong sidecar token answers 401 with `unavailable`, so the worker tells
//! its client the store is unreachable rather than asking it for
//! credentials.

use crate::http::{self, no_content, response, Handler, RequestBody, Response, TokenDigest};
use crate::pipeline::Keys;
use crate::store::Store;
use crate::wasm::kv_wit;
use crate::wasm::wit::{self, Error, HostBatch, HostUpload};
use crate::wasm::{FilesCtx, FilesError, FilesView, SiteRulesCache};
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use turserver_protocol::{
    FrameReader, Piece, Request as Call, StatAnswer, CLIENT_AUTHORIZATION, KV_EXPIRES_HEADER, KV_TYPE_HEADER,
    KV_VERSION_HEADER,
};
use wasmtime::component::{Resource, ResourceTable};

/// What the sidecar shares between requests.
pub struct Sidecar {
    pub store: Arc<Store>,
    /// The sidecar token.
    pub token: TokenDigest,
    /// The write token client credentials are judged by.
    pub write_token: Option<TokenDigest>,
    /// The key set signed tokens are verified with, as on the public port.
    pub keys: Arc<Keys>,
    /// The site rules, for private files.
    pub site: Arc<SiteRulesCache>,
    pub max_upload: u64,
    /// Calls answered, by name.
    pub calls: Family<CallLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    call: &'static str,
}

impl Sidecar {
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register("sidecar_calls", "Store calls the sidecar answered, by call", self.calls.clone());
    }
}

impl Handler for Sidecar {
    async fn handle(&self, req: http::Request) -> Response {
        self.answer(req).await.unwrap_or_else(failure)
    }
}

impl Sidecar {
    async fn answer(&self, req: http::Request) -> Result<Response, Error> {
        let admitted = req.headers().get(hyper::header::AUTHORIZATION).is_some_and(|v| self.token.admits(v.as_bytes()));
        if !admitted {
            tracing::warn!(path = req.uri().path(), "sidecar request with a missing or wrong sidecar token");
            let refused = Error::Unavailable("the store sidecar refused this worker's sidecar token".into());
            return Ok(http::json_value(401, &turserver_protocol::Error::from(refused)));
        }
        let credentials = req.headers().get(CLIENT_AUTHORIZATION).map(|v| v.as_bytes());
        let access = match self.keys.judge(credentials, self.write_token.as_ref()).await {
            Ok(access) => access,
            Err(refused) => {
                let error = if refused.status() == 401 { Error::Unauthorized } else { Error::Unavailable("the key set cannot be read right now".into()) };
                return Ok(http::json_value(refused.status().as_u16(), &turserver_protocol::Error::from(error)));
            }
        };
        let mut ctx = FilesCtx { store: self.store.clone(), site: self.site.clone(), access, max_upload: self.max_upload, progress: None, reads: None, limit_refused: None, queued: None };
        let mut table = ResourceTable::new();
        let mut view = FilesView { ctx: &mut ctx, table: &mut table };
        let call = Call::parse(req.method().as_str(), req.uri().path(), req.uri().query()).map_err(Error::from)?;
        self.calls.get_or_create(&CallLabels { call: call.name() }).inc();
        let body = req.into_body();
        match call {
            Call::Stat { path, inline, site } => stat(&mut view, path, inline, site).await,
            Call::Read { version, encoding, offset, len } => {
                let bytes = check(wit::Host::read(&mut view, version, encoding, offset, len).await)?;
                Ok(response(200, Some("application/octet-stream"), bytes))
            }
            Call::List { prefix, cursor, limit } => {
                Ok(http::json_value(200, &check(wit::Host::list_files(&mut view, prefix, cursor, limit).await)?))
            }
            Call::Upload { path, content_type, size_hint, expect } => {
                upload(&mut view, path, content_type, size_hint, expect.map(Into::into), body).await
            }
            Call::Batch => batch(&mut view, body).await,
            Call::Delete { path, expect } => {
                check(wit::Host::delete(&mut view, path, expect.map(Into::into)).await)?;
                Ok(no_content())
            }
            Call::SiteConfig => Ok(match check(wit::Host::site_config(&mut view).await)? {
                Some(json) => response(200, Some("application/json"), json.into_bytes()),
                None => no_content(),
            }),
            Call::CheckWrite => {
                check(wit::Host::check_write(&mut view).await)?;
                Ok(no_content())
            }
            Call::SetSiteConfig => {
                let json = collect_text(body).await?;
                check(wit::Host::set_site_config(&mut view, json).await)?;
                Ok(no_content())
            }
            Call::KvGet { key } => Ok(match check(kv_wit::Host::get(&mut view, key).await)? {
                Some(entry) => {
                    let mut resp = response(200, Some("application/octet-stream"), entry.value);
                    let h = resp.headers_mut();
                    h.insert(KV_VERSION_HEADER, ::http::HeaderValue::from(entry.version));
                    if let Some(at) = entry.expires {
                        h.insert(KV_EXPIRES_HEADER, ::http::HeaderValue::from(at));
                    }
                    if let Some(ct) = entry.content_type.and_then(|ct| ::http::HeaderValue::from_str(&ct).ok()) {
                        h.insert(KV_TYPE_HEADER, ct);
                    }
                    resp
                }
                None => no_content(),
            }),
            Call::KvSet { key, content_type, ttl, expect } => {
                let limited = http_body_util::Limited::new(body, crate::store::MAX_VALUE);
                let value = match limited.collect().await {
                    Ok(b) => b.to_bytes().to_vec(),
                    Err(_) => return Err(Error::TooLarge(crate::store::MAX_VALUE as u64)),
                };
                let version = check(kv_wit::Host::set(&mut view, key, value, content_type, ttl, expect.map(kv_expect)).await)?;
                Ok(http::json_value(200, &version))
            }
            Call::KvDelete { key, expect } => {
                Ok(http::json_value(200, &check(kv_wit::Host::delete(&mut view, key, expect.map(kv_expect)).await)?))
            }
            Call::KvList { prefix, cursor, limit } => {
                Ok(http::json_value(200, &check(kv_wit::Host::list_keys(&mut view, prefix, cursor, limit).await)?))
            }
        }
    }
}

fn kv_expect(e: turserver_protocol::KvExpectation) -> kv_wit::Expectation {
    match e {
        turserver_protocol::KvExpectation::Absent => kv_wit::Expectation::Absent,
        turserver_protocol::KvExpectation::Present => kv_wit::Expectation::Present,
        turserver_protocol::KvExpectation::Version(v) => kv_wit::Expectation::Version(v),
    }
}

/// A host call's result: a trap (a host bug, or a resource the table
/// lost) becomes `internal`, logged.
fn check<T>(result: Result<T, FilesError>) -> Result<T, Error> {
    result.or_else(|e| match e.into_result() {
        Ok(e) => Err(e),
        Err(trap) => {
            tracing::error!(cause = %format!("{trap:#}"), "sidecar call failed");
            Err(Error::Internal("the sidecar call failed; the host log has the cause".into()))
        }
    })
}

/// `stat`; with `inline` > 0, a body of at most that many bytes comes along,
/// saving the `read` that would come next, and with `site` the site
/// document, saving the `site-config` call: a small GET through the
/// adapter is one call. The parts are laid out as [`StatAnswer`] says.
async fn stat(view: &mut FilesView<'_>, path: String, inline: u64, site: bool) -> Result<Response, Error> {
    let site = match site {
        true => Some(check(wit::Host::site_config(view).await)?),
        false => None,
    };
    let meta = check(wit::Host::stat(view, path).await)?;
    let mut answer = StatAnswer { metadata: serde_json::to_vec(&meta).unwrap_or_default(), site, inline: None };
    if meta.size <= inline {
        // Replaced meanwhile: the metadata alone, the worker's read will say.
        answer.inline = check(wit::Host::read(view, meta.version, "identity".into(), 0, meta.size).await).ok();
    }
    let (headers, body) = answer.encode();
    let mut resp = response(200, Some("application/octet-stream"), body);
    for (name, value) in headers {
        if let Ok(v) = ::http::HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    Ok(resp)
}

/// `begin-upload`, `write` for each piece of the body, `finish` at its end.
async fn upload(
    view: &mut FilesView<'_>,
    path: String,
    content_type: String,
    size_hint: Option<u64>,
    expect: Option<wit::Expectation>,
    mut body: RequestBody,
) -> Result<Response, Error> {
    let upload = check(wit::Host::begin_upload(view, path, content_type, size_hint, expect).await)?;
    let rep = upload.rep();
    let outcome = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Invalid(format!("upload body incomplete: {e}")))?;
            if let Ok(data) = frame.into_data() {
                check(HostUpload::write(view, Resource::new_own(rep), data.to_vec()).await)?;
            }
        }
        Ok(http::json_value(200, &check(HostUpload::finish(view, Resource::new_own(rep)).await)?))
    }
    .await;
    // Unfinished (an error, or a body cut off) means discarded.
    let _ = HostUpload::drop(view, upload).await;
    outcome
}

/// `begin-batch`, then `add`/`write`/`remove` per frame, `commit` at the body's end.
async fn batch(view: &mut FilesView<'_>, mut body: RequestBody) -> Result<Response, Error> {
    let batch = check(wit::Host::begin_batch(view).await)?;
    let rep = batch.rep();
    let outcome = async {
        let mut frames = FrameReader::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Invalid(format!("batch body incomplete: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            frames.push(&data);
            while let Some(piece) = frames.next_piece().map_err(Error::from)? {
                match piece {
                    Piece::Add { path, content_type } => {
                        check(HostBatch::add(view, Resource::new_own(rep), path, content_type).await)?
                    }
                    Piece::Write(bytes) => check(HostBatch::write(view, Resource::new_own(rep), bytes).await)?,
                    Piece::Remove(path) => check(HostBatch::remove(view, Resource::new_own(rep), path).await)?,
                }
            }
        }
        frames.finish().map_err(Error::from)?;
        Ok(http::json_value(200, &check(HostBatch::commit(view, Resource::new_own(rep)).await)?))
    }
    .await;
    let _ = HostBatch::drop(view, batch).await;
    outcome
}

async fn collect_text(body: RequestBody) -> Result<String, Error> {
    // The store refuses larger site configurations; stop reading past that.
    let limit = turserver_protocol::MAX_SITE_CONFIG + 1;
    let limited = http_body_util::Limited::new(body, limit);
    let bytes = limited.collect().await.map_err(|e| Error::Invalid(format!("body refused: {e}")))?.to_bytes();
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::Invalid("body is not UTF-8".into()))
}

/// A failure as the wire carries it: the error's JSON, with the status the
/// worker gives it.
fn failure(e: Error) -> Response {
    let e = turserver_protocol::Error::from(e);
    http::json_value(e.status(), &e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two ends agree: every WIT error's JSON, as the host's bindings
    /// write it, is the protocol's JSON for it, which the adapter reads.
    #[test]
    fn wit_errors_travel_as_the_protocol_defines() {
        let all = [
            Error::NotFound,
            Error::Unauthorized,
            Error::Forbidden,
            Error::TooLarge(7),
            Error::PreconditionFailed,
            Error::Invalid("a".into()),
            Error::Unavailable("b".into()),
            Error::Internal("c".into()),
        ];
        for e in all {
            let ours = serde_json::to_string(&e).unwrap();
            let wire = turserver_protocol::Error::from(e.clone());
            assert_eq!(ours, serde_json::to_string(&wire).unwrap());
            let back: Error = serde_json::from_str(&serde_json::to_string(&wire).unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
    }
}
