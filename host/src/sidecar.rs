//! The replica sidecar: `turserver:store/files` over HTTP, for workers that
//! run in another runtime (Spin) and reach this host's replica through the
//! store adapter (`worker/adapter`).
//!
//! It listens on its own address (`--sidecar-listen`), never on the public
//! one, and answers only requests carrying its own token
//! (`--sidecar-token`). Every route is one WIT call served by the same code
//! as the local worker's calls ([`crate::files`]), so both paths check,
//! store and fail alike.
//!
//! # Protocol
//! Every request carries `Authorization: Bearer <sidecar token>`; write
//! calls also carry the client's own `Authorization` header, unread by the
//! worker, as `turserver-client-authorization`, judged like the public
//! port judges it. WIT values travel as JSON (the serde form of the
//! generated types); query values are percent-encoded.
//!
//! | call              | request                                                          | success            |
//! |-------------------|------------------------------------------------------------------|--------------------|
//! | `stat`            | `GET /v1/stat?path=&inline=`                                     | 200 `metadata`     |
//! | `read`            | `GET /v1/read?version=&encoding=&offset=&len=`                   | 200 the bytes      |
//! | `list-files`      | `GET /v1/list?prefix=&cursor=&limit=`                            | 200 `listing`      |
//! | `begin-upload`…   | `PUT /v1/upload?path=&content-type=&size-hint=&expect=`, body    | 200 `written`      |
//! | `begin-batch`…    | `POST /v1/batch`, body of frames (below)                         | 200 `list<written>`|
//! | `delete`          | `DELETE /v1/file?path=&expect=`                                  | 204                |
//! | `site-config`     | `GET /v1/site-config`                                            | 200 JSON, or 204   |
//! | `set-site-config` | `PUT /v1/site-config`, body                                      | 204                |
//!
//! An upload's body streams into the upload; the call ends with `finish`
//! when the body ends, and a body cut off discards the upload. A batch body
//! is a sequence of frames, each one byte of kind, a big-endian `u32`
//! length and the payload: `A` starts a file (payload: JSON
//! `[path, content-type]`), `W` appends bytes to it; the body's end
//! commits.
//!
//! `stat` may inline a small body after the metadata (see [`stat`]): a GET
//! then costs the adapter one call less.
//!
//! Failures answer the WIT `error` as JSON with the status the worker would
//! give it (404, 401, 403, 413, 412, 400, 503, 500). A wrong sidecar token
//! answers 401 with `unavailable`, so the worker tells its client the
//! store is unreachable rather than asking it for credentials.

use crate::bindings::files::{self, Error, Expectation, HostBatch, HostUpload};
use crate::files::{FilesCtx, FilesView, WriteAccess};
use crate::server::response;
use crate::store::Store;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use crate::linger::{Linger, RequestBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use wasmtime::component::{Resource, ResourceTable};

/// What the sidecar shares between requests.
pub struct Sidecar {
    pub store: Arc<Store>,
    /// SHA-256 of the sidecar token.
    pub token_digest: [u8; 32],
    /// SHA-256 of the write token that client credentials are judged by.
    pub write_token_digest: Option<[u8; 32]>,
    pub max_upload: u64,
    /// How long an answer may wait for an adapter that stopped reading.
    pub send_timeout: std::time::Duration,
}

/// Header carrying the client's own `Authorization` value on writes.
pub const CLIENT_AUTHORIZATION: &str = "turserver-client-authorization";

/// Largest body `stat` inlines.
const MAX_INLINE: u64 = 1 << 20;

/// Largest `A` frame (a path and a content type) in a batch body.
const MAX_ADD_FRAME: usize = 64 << 10;

type Response = hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>;

/// Serves the sidecar on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, sidecar: Arc<Sidecar>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = crate::server::accept(&listener).await;
        let stream = crate::send_timeout::SendTimeout::new(stream, sidecar.send_timeout);
        let sidecar = sidecar.clone();
        let service = hyper::service::service_fn(move |req| {
            let sidecar = sidecar.clone();
            async move { Ok::<_, Infallible>(handle(&sidecar, req.map(Linger::new)).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, cause = %e, "sidecar connection ended with an error");
            }
        });
    }
}

async fn handle(sidecar: &Sidecar, req: hyper::Request<RequestBody>) -> Response {
    if !sidecar.admits(&req) {
        tracing::warn!(path = req.uri().path(), "sidecar request with a missing or wrong sidecar token");
        let refused = Error::Unavailable("the store sidecar refused this worker's sidecar token".into());
        return json(401, &refused);
    }
    let access = WriteAccess::judge(
        req.headers().get(CLIENT_AUTHORIZATION).map(|v| v.as_bytes()),
        sidecar.write_token_digest.as_ref(),
    );
    let mut ctx = FilesCtx { store: sidecar.store.clone(), access, max_upload: sidecar.max_upload, progress: None };
    let mut table = ResourceTable::new();
    let mut view = FilesView { ctx: &mut ctx, table: &mut table };
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let result = match (&method, req.uri().path()) {
        (&hyper::Method::GET, "/v1/stat") => stat(&mut view, &query).await,
        (&hyper::Method::GET, "/v1/read") => read(&mut view, &query).await,
        (&hyper::Method::GET, "/v1/list") => list(&mut view, &query).await,
        (&hyper::Method::PUT, "/v1/upload") => upload(&mut view, &query, req.into_body()).await,
        (&hyper::Method::POST, "/v1/batch") => batch(&mut view, req.into_body()).await,
        (&hyper::Method::DELETE, "/v1/file") => match (query.text("path"), query.expect()) {
            (Ok(path), Ok(expect)) => answer(files::Host::delete(&mut view, path, expect).await, |()| no_content()),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        (&hyper::Method::GET, "/v1/site-config") => answer(files::Host::site_config(&mut view).await, |c| match c {
            Some(json) => response(200, Some("application/json"), json.into_bytes()),
            None => no_content(),
        }),
        (&hyper::Method::PUT, "/v1/site-config") => match collect_text(req.into_body()).await {
            Ok(json) => answer(files::Host::set_site_config(&mut view, json).await, |()| no_content()),
            Err(e) => Err(e),
        },
        _ => Err(Error::Invalid(format!("no sidecar call {method} {}", req.uri().path()))),
    };
    result.unwrap_or_else(|e| json(status_of(&e), &e))
}

impl Sidecar {
    fn admits(&self, req: &hyper::Request<RequestBody>) -> bool {
        let header = req.headers().get(hyper::header::AUTHORIZATION);
        header.is_some_and(|v| crate::files::bearer_matches(v.as_bytes(), &self.token_digest))
    }
}

/// The host call's result: a trap (a host bug, or a resource the table
/// lost) becomes `internal`, logged.
fn call<T>(result: wasmtime::Result<Result<T, Error>>) -> Result<T, Error> {
    result.unwrap_or_else(|e| {
        tracing::error!(cause = %format!("{e:#}"), "sidecar call failed");
        Err(Error::Internal("the sidecar call failed; the host log has the cause".into()))
    })
}

/// [`call`], answered by `ok` on success.
fn answer<T>(result: wasmtime::Result<Result<T, Error>>, ok: impl FnOnce(T) -> Response) -> Result<Response, Error> {
    call(result).map(ok)
}

/// `stat`; with `inline=N`, a body of at most N bytes (capped at
/// [`MAX_INLINE`]) follows the metadata, saving the `read` that would come
/// next: the answer is the metadata JSON, then the body, split at the
/// length given in `turserver-inline`.
async fn stat(view: &mut FilesView<'_>, query: &Query) -> Result<Response, Error> {
    let meta = call(files::Host::stat(view, query.text("path")?).await)?;
    let inline = query.get("inline").map(|_| query.number("inline")).transpose()?.unwrap_or(0).min(MAX_INLINE);
    let mut out = serde_json::to_vec(&meta).unwrap_or_default();
    if meta.size > inline {
        return Ok(response(200, Some("application/json"), out));
    }
    let json_len = out.len();
    match call(files::Host::read(view, meta.version, "identity".into(), 0, meta.size).await) {
        Ok(body) => out.extend_from_slice(&body),
        // Replaced meanwhile: the metadata alone, the worker's read will say.
        Err(_) => return Ok(response(200, Some("application/json"), out)),
    }
    let mut resp = response(200, Some("application/octet-stream"), out);
    resp.headers_mut().insert("turserver-inline", http::HeaderValue::from(json_len));
    Ok(resp)
}

async fn read(view: &mut FilesView<'_>, query: &Query) -> Result<Response, Error> {
    let version = query.number("version")?;
    let encoding = query.text("encoding")?;
    let offset = query.number("offset")?;
    let len = query.number("len")?;
    answer(files::Host::read(view, version, encoding, offset, len).await, |b| {
        response(200, Some("application/octet-stream"), b)
    })
}

async fn list(view: &mut FilesView<'_>, query: &Query) -> Result<Response, Error> {
    let prefix = query.text("prefix").unwrap_or_default();
    let cursor = query.text("cursor").ok();
    let limit = query.number("limit")?.min(u32::MAX as u64) as u32;
    answer(files::Host::list_files(view, prefix, cursor, limit).await, |l| json(200, &l))
}

/// `begin-upload`, `write` for each piece of the body, `finish` at its end.
async fn upload(view: &mut FilesView<'_>, query: &Query, mut body: RequestBody) -> Result<Response, Error> {
    let path = query.text("path")?;
    let content_type = query.text("content-type")?;
    let size_hint = query.get("size-hint").map(|_| query.number("size-hint")).transpose()?;
    let expect = query.expect()?;
    let upload = call(files::Host::begin_upload(view, path, content_type, size_hint, expect).await)?;
    let rep = upload.rep();
    let outcome = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Invalid(format!("upload body incomplete: {e}")))?;
            if let Ok(data) = frame.into_data() {
                call(HostUpload::write(view, Resource::new_own(rep), data.to_vec()).await)?;
            }
        }
        answer(HostUpload::finish(view, Resource::new_own(rep)).await, |w| json(200, &w))
    }
    .await;
    // Unfinished (an error, or a body cut off) means discarded.
    let _ = HostUpload::drop(view, upload).await;
    outcome
}

/// `begin-batch`, then `add`/`write` per frame, `commit` at the body's end.
async fn batch(view: &mut FilesView<'_>, mut body: RequestBody) -> Result<Response, Error> {
    let batch = call(files::Host::begin_batch(view).await)?;
    let rep = batch.rep();
    let outcome = async {
        let mut frames = Frames::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Invalid(format!("batch body incomplete: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            frames.buf.extend_from_slice(&data);
            while let Some(piece) = frames.next()? {
                match piece {
                    Piece::Add(path, content_type) => {
                        call(HostBatch::add(view, Resource::new_own(rep), path, content_type).await)?
                    }
                    Piece::Write(bytes) => call(HostBatch::write(view, Resource::new_own(rep), bytes).await)?,
                }
            }
        }
        if !frames.buf.is_empty() || frames.writing > 0 {
            return Err(Error::Invalid("batch body ends inside a frame".into()));
        }
        answer(HostBatch::commit(view, Resource::new_own(rep)).await, |w| json(200, &w))
    }
    .await;
    let _ = HostBatch::drop(view, batch).await;
    outcome
}

/// Splits a batch body into calls as its bytes arrive; a `W` frame's
/// payload is passed on in whatever pieces the body brings.
#[derive(Default)]
struct Frames {
    buf: BytesMut,
    /// Payload bytes of the current `W` frame still to come.
    writing: usize,
}

enum Piece {
    Add(String, String),
    Write(Vec<u8>),
}

impl Frames {
    fn next(&mut self) -> Result<Option<Piece>, Error> {
        if self.writing > 0 {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let n = self.writing.min(self.buf.len());
            self.writing -= n;
            return Ok(Some(Piece::Write(self.buf.split_to(n).to_vec())));
        }
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        match kind {
            b'W' => {
                self.buf.advance(5);
                self.writing = len;
                Ok(if len == 0 { None } else { self.next()? })
            }
            b'A' if len > MAX_ADD_FRAME => Err(Error::Invalid("batch frame too large".into())),
            b'A' if self.buf.len() < 5 + len => Ok(None),
            b'A' => {
                self.buf.advance(5);
                let payload = self.buf.split_to(len);
                let (path, content_type): (String, String) = serde_json::from_slice(&payload)
                    .map_err(|e| Error::Invalid(format!("bad batch frame: {e}")))?;
                Ok(Some(Piece::Add(path, content_type)))
            }
            other => Err(Error::Invalid(format!("unknown batch frame kind {other:#04x}"))),
        }
    }
}

/// Query parameters, percent-decoded.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn text(&self, name: &str) -> Result<String, Error> {
        self.get(name).map(str::to_string).ok_or_else(|| Error::Invalid(format!("missing {name}")))
    }

    fn number(&self, name: &str) -> Result<u64, Error> {
        self.get(name)
            .ok_or_else(|| Error::Invalid(format!("missing {name}")))?
            .parse()
            .map_err(|_| Error::Invalid(format!("{name} is not a number")))
    }

    fn expect(&self) -> Result<Option<Expectation>, Error> {
        self.get("expect")
            .map(|e| serde_json::from_str(e).map_err(|e| Error::Invalid(format!("bad expect: {e}"))))
            .transpose()
    }
}

async fn collect_text(body: RequestBody) -> Result<String, Error> {
    // The store refuses larger site configurations; stop reading well past that.
    let limited = http_body_util::Limited::new(body, 1 << 20);
    let bytes = limited.collect().await.map_err(|e| Error::Invalid(format!("body refused: {e}")))?.to_bytes();
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::Invalid("body is not UTF-8".into()))
}

/// The status the worker gives each error, so the wire reads the same way.
fn status_of(e: &Error) -> u16 {
    match e {
        Error::NotFound => 404,
        Error::Unauthorized => 401,
        Error::Forbidden => 403,
        Error::TooLarge(_) => 413,
        Error::PreconditionFailed => 412,
        Error::Invalid(_) => 400,
        Error::Unavailable(_) => 503,
        Error::Internal(_) => 500,
    }
}

fn no_content() -> Response {
    response(204, None, Bytes::new())
}

fn json(status: u16, value: &impl serde::Serialize) -> Response {
    response(status, Some("application/json"), serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_split_across_reads() {
        let mut body = frame(b'A', br#"["a.txt","text/plain"]"#);
        body.extend(frame(b'W', b"hello world"));
        let mut frames = Frames::default();
        let mut got = Vec::new();
        // One byte at a time: every split point is exercised.
        for b in body {
            frames.buf.extend_from_slice(&[b]);
            while let Some(p) = frames.next().unwrap() {
                got.push(p);
            }
        }
        let mut written = Vec::new();
        for p in &got {
            match p {
                Piece::Add(path, ct) => assert_eq!((path.as_str(), ct.as_str()), ("a.txt", "text/plain")),
                Piece::Write(b) => written.extend_from_slice(b),
            }
        }
        assert!(matches!(got[0], Piece::Add(..)));
        assert_eq!(written, b"hello world");
        assert_eq!(frames.writing, 0);
    }

    #[test]
    fn frames_refuse_unknown_kinds() {
        let mut frames = Frames::default();
        frames.buf.extend_from_slice(&frame(b'X', b""));
        assert!(matches!(frames.next(), Err(Error::Invalid(_))));
    }
}
