//! The worker's pure core: routing and response shaping, independent of wasm.
//!
//! The wasm entry point converts `wasi:http` types into [`Request`], calls
//! [`handle`], and streams what comes back. Everything that decides a status,
//! a header or a body lives here and is unit-tested natively against
//! [`Store`] fakes.

use crate::path::{self, NormalPath};
use serde::Serialize;
use std::time::{Duration, UNIX_EPOCH};

/// Metadata of one stored file, as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub path: String,
    pub version: u64,
    pub size: u64,
    pub content_type: String,
    pub hash: String,
    pub last_modified: u64,
    pub created: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub files: Vec<Metadata>,
    pub next_cursor: Option<String>,
}

/// Store failures, mirroring the WIT `error` variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound,
    Unauthorized,
    Forbidden,
    TooLarge(u64),
    Invalid(String),
    Unavailable(String),
    Internal(String),
}

/// The host calls the core needs to route a request. Uploads are driven by
/// the entry point (they consume the request body), so they are not here.
pub trait Store {
    fn stat(&mut self, path: &str) -> Result<Metadata, StoreError>;
    fn list(&mut self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<Listing, StoreError>;
    fn delete(&mut self, path: &str) -> Result<(), StoreError>;
}

/// An incoming request, reduced to what routing needs.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target's path and query, e.g. `/a/b?x=1`.
    pub path_and_query: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    /// The first value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn split_target(&self) -> (&str, Option<&str>) {
        match self.path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.path_and_query.as_str(), None),
        }
    }
}

/// What to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// A response body: bytes made here, or a stored file's body that the entry
/// point streams from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    File { version: u64, offset: u64, len: u64 },
}

impl Response {
    fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Body::Empty }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// A short plain-text response saying why.
    pub fn text(status: u16, message: impl Into<String>) -> Self {
        let mut body = message.into().into_bytes();
        body.push(b'\n');
        Response::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .header("content-length", body.len().to_string())
            .with_body(Body::Bytes(body))
    }

    fn json(status: u16, value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(status)
                .header("content-type", "application/json")
                .header("content-length", body.len().to_string())
                .with_body(Body::Bytes(body)),
            Err(e) => Response::text(500, format!("cannot encode response: {e}")),
        }
    }

    fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// The value of a response header, for tests and the entry point.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the entry point must do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this response.
    Respond(Response),
    /// Stream the request body into a new file at `path`, then answer with
    /// [`upload_response`].
    Upload { path: String, content_type: String },
}

/// Methods the file routes answer.
pub const ALLOW: &str = "GET, HEAD, PUT, DELETE, OPTIONS";
/// Listing page size when the client names none, and the most it may ask for.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1000;
const LIST_ROUTE: &str = "_api/files";
/// Top-level names the host and the API own; files cannot be written there.
const RESERVED: [&str; 2] = ["_api", "_turserver"];

/// Routes one request.
pub fn handle(req: &Request, store: &mut impl Store) -> Outcome {
    let (raw_path, query) = req.split_target();
    let target = match path::normalise(raw_path) {
        Ok(t) => t,
        Err(e) => return Outcome::Respond(Response::text(400, format!("bad path: {e}"))),
    };
    if target.path == LIST_ROUTE && !target.dir {
        return Outcome::Respond(match req.method.as_str() {
            "GET" | "HEAD" => head_if(req, list(query, store)),
            _ => method_not_allowed("GET, HEAD"),
        });
    }
    match req.method.as_str() {
        "GET" | "HEAD" => Outcome::Respond(head_if(req, get(&target, query, store))),
        "PUT" => put(req, &target),
        "DELETE" => Outcome::Respond(delete(&target, store)),
        "OPTIONS" => Outcome::Respond(Response::new(204).header("allow", ALLOW)),
        _ => Outcome::Respond(method_not_allowed(ALLOW)),
    }
}

/// HEAD gets GET's headers without the body.
fn head_if(req: &Request, mut resp: Response) -> Response {
    if req.method == "HEAD" {
        resp.body = Body::Empty;
    }
    resp
}

fn method_not_allowed(allow: &str) -> Response {
    let mut resp = Response::text(405, "method not allowed");
    resp.headers.push(("allow".into(), allow.into()));
    resp
}

fn get(target: &NormalPath, query: Option<&str>, store: &mut impl Store) -> Response {
    let file = target.file_to_serve();
    match store.stat(&file) {
        Ok(meta) => file_response(&meta),
        Err(StoreError::NotFound) if !target.dir => {
            // `/docs` names a directory when `/docs/index.html` exists.
            match store.stat(&format!("{}/index.html", target.path)) {
                Ok(_) => {
                    let mut location = format!("/{}/", path::encode(&target.path));
                    if let Some(q) = query {
                        location.push('?');
                        location.push_str(q);
                    }
                    let mut resp = Response::text(301, format!("moved to {location}"));
                    resp.headers.push(("location".into(), location));
                    resp
                }
                Err(StoreError::NotFound) => not_found(),
                Err(e) => error_response(e),
            }
        }
        Err(StoreError::NotFound) => not_found(),
        Err(e) => error_response(e),
    }
}

fn not_found() -> Response {
    Response::text(404, "not found")
}

/// Headers every representation of a stored file carries.
pub fn file_response(meta: &Metadata) -> Response {
    Response::new(200)
        .header("content-type", meta.content_type.clone())
        .header("content-length", meta.size.to_string())
        .header("etag", etag(meta))
        .header("last-modified", http_date(meta.last_modified))
        .with_body(Body::File { version: meta.version, offset: 0, len: meta.size })
}

/// Strong entity tag from the content hash.
pub fn etag(meta: &Metadata) -> String {
    format!("\"{}\"", meta.hash)
}

fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn writable(target: &NormalPath) -> Result<(), Response> {
    if target.dir {
        return Err(Response::text(400, "bad path: a file path cannot end with '/'"));
    }
    let first = target.path.split('/').next().unwrap_or_default();
    if RESERVED.contains(&first) {
        return Err(Response::text(400, format!("bad path: '/{first}/' is reserved")));
    }
    Ok(())
}

fn put(req: &Request, target: &NormalPath) -> Outcome {
    if let Err(resp) = writable(target) {
        return Outcome::Respond(resp);
    }
    let content_type = match req.header("content-type") {
        Some(v) => match std::str::from_utf8(v) {
            Ok(s) if !s.trim().is_empty() && s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) => {
                s.trim().to_string()
            }
            _ => return Outcome::Respond(Response::text(400, "bad content-type header")),
        },
        None => guess_content_type(&target.path),
    };
    Outcome::Upload { path: target.path.clone(), content_type }
}

/// The media type for a path's extension, `application/octet-stream` when
/// unknown. Text types are served as UTF-8.
pub fn guess_content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    let is_text = mime.type_() == mime_guess::mime::TEXT
        || matches!(essence, "application/javascript" | "application/json" | "image/svg+xml");
    if is_text && mime.get_param("charset").is_none() {
        format!("{essence}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// The answer to a finished (or failed) upload.
pub fn upload_response(result: Result<(Metadata, bool), StoreError>) -> Response {
    match result {
        Ok((meta, created)) => {
            let mut resp = if created {
                let location = format!("/{}", path::encode(&meta.path));
                Response::json(201, &FileEntry::from(&meta)).header("location", location)
            } else {
                Response::new(204)
            };
            resp.headers.push(("etag".into(), etag(&meta)));
            resp.headers.push(("last-modified".into(), http_date(meta.last_modified)));
            resp
        }
        Err(e) => error_response(e),
    }
}

fn delete(target: &NormalPath, store: &mut impl Store) -> Response {
    if let Err(resp) = writable(target) {
        return resp;
    }
    match store.delete(&target.path) {
        Ok(()) => Response::new(204),
        Err(e) => error_response(e),
    }
}

/// Maps a store failure to a status and a body that says why.
pub fn error_response(err: StoreError) -> Response {
    match err {
        StoreError::NotFound => not_found(),
        StoreError::Unauthorized => Response::text(401, "a write token is required (Authorization: Bearer <token>)")
            .header("www-authenticate", "Bearer"),
        StoreError::Forbidden => Response::text(403, "the write token is not valid"),
        StoreError::TooLarge(limit) => Response::text(413, format!("upload larger than the limit of {limit} bytes")),
        StoreError::Invalid(why) => Response::text(400, why),
        StoreError::Unavailable(why) => {
            Response::text(503, format!("storage unavailable: {why}")).header("retry-after", "1")
        }
        StoreError::Internal(why) => Response::text(500, format!("storage error: {why}")),
    }
}

#[derive(Serialize)]
struct FileEntry<'a> {
    path: &'a str,
    size: u64,
    content_type: &'a str,
    etag: String,
    last_modified: String,
}

impl<'a> From<&'a Metadata> for FileEntry<'a> {
    fn from(m: &'a Metadata) -> Self {
        FileEntry {
            path: &m.path,
            size: m.size,
            content_type: &m.content_type,
            etag: etag(m),
            last_modified: rfc3339(m.last_modified),
        }
    }
}

#[derive(Serialize)]
struct ListBody<'a> {
    files: Vec<FileEntry<'a>>,
    next_cursor: Option<&'a str>,
}

fn list(query: Option<&str>, store: &mut impl Store) -> Response {
    let mut prefix = String::new();
    let mut cursor = None;
    let mut limit = DEFAULT_LIST_LIMIT;
    for (key, value) in form_pairs(query.unwrap_or_default()) {
        match key.as_str() {
            "prefix" => prefix = value.trim_start_matches('/').to_string(),
            "cursor" if !value.is_empty() => cursor = Some(value),
            "cursor" => {}
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => limit = n,
                _ => return Response::text(400, format!("limit must be a number from 1 to {MAX_LIST_LIMIT}")),
            },
            _ => {}
        }
    }
    match store.list(&prefix, cursor.as_deref(), limit) {
        Ok(listing) => Response::json(
            200,
            &ListBody {
                files: listing.files.iter().map(FileEntry::from).collect(),
                next_cursor: listing.next_cursor.as_deref(),
            },
        ),
        Err(e) => error_response(e),
    }
}

/// `application/x-www-form-urlencoded` pairs; undecodable pairs are skipped.
fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        };
        Some((decode(k)?, decode(v)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Fake {
        files: BTreeMap<String, Metadata>,
    }

    impl Fake {
        fn with(paths: &[&str]) -> Self {
            let mut f = Fake::default();
            for (i, p) in paths.iter().enumerate() {
                f.files.insert(
                    p.to_string(),
                    Metadata {
                        path: p.to_string(),
                        version: i as u64 + 1,
                        size: 10,
                        content_type: guess_content_type(p),
                        hash: format!("{:064x}", i + 1),
                        last_modified: 1_700_000_000,
                        created: 1_700_000_000,
                    },
                );
            }
            f
        }
    }

    impl Store for Fake {
        fn stat(&mut self, path: &str) -> Result<Metadata, StoreError> {
            self.files.get(path).cloned().ok_or(StoreError::NotFound)
        }
        fn list(&mut self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<Listing, StoreError> {
            let mut files: Vec<Metadata> = self
                .files
                .values()
                .filter(|m| m.path.starts_with(prefix) && cursor.is_none_or(|c| m.path.as_str() > c))
                .cloned()
                .collect();
            let more = files.len() > limit as usize;
            files.truncate(limit as usize);
            let next_cursor = more.then(|| files.last().unwrap().path.clone());
            Ok(Listing { files, next_cursor })
        }
        fn delete(&mut self, path: &str) -> Result<(), StoreError> {
            self.files.remove(path).map(|_| ()).ok_or(StoreError::NotFound)
        }
    }

    fn req(method: &str, target: &str) -> Request {
        Request { method: method.into(), path_and_query: target.into(), headers: vec![] }
    }

    fn respond(outcome: Outcome) -> Response {
        match outcome {
            Outcome::Respond(r) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    #[test]
    fn get_serves_file_with_headers() {
        let mut s = Fake::with(&["a/b.css"]);
        let r = respond(handle(&req("GET", "/a/b.css"), &mut s));
        assert_eq!(r.status, 200);
        assert_eq!(r.get("content-type"), Some("text/css; charset=utf-8"));
        assert_eq!(r.get("content-length"), Some("10"));
        assert_eq!(r.get("etag"), Some(format!("\"{:064x}\"", 1).as_str()));
        assert_eq!(r.get("last-modified"), Some("Tue, 14 Nov 2023 22:13:20 GMT"));
        assert_eq!(r.body, Body::File { version: 1, offset: 0, len: 10 });
    }

    #[test]
    fn head_has_headers_and_no_body() {
        let mut s = Fake::with(&["x.txt"]);
        let r = respond(handle(&req("HEAD", "/x.txt"), &mut s));
        assert_eq!(r.status, 200);
        assert_eq!(r.get("content-length"), Some("10"));
        assert_eq!(r.body, Body::Empty);
    }

    #[test]
    fn index_and_redirect_and_404() {
        let mut s = Fake::with(&["index.html", "docs/index.html"]);
        assert_eq!(respond(handle(&req("GET", "/"), &mut s)).status, 200);
        assert_eq!(respond(handle(&req("GET", "/docs/"), &mut s)).status, 200);
        let r = respond(handle(&req("GET", "/docs?v=1"), &mut s));
        assert_eq!((r.status, r.get("location")), (301, Some("/docs/?v=1")));
        let r = respond(handle(&req("GET", "/nope"), &mut s));
        assert_eq!(r.status, 404);
        assert_eq!(r.body, Body::Bytes(b"not found\n".to_vec()));
        assert_eq!(respond(handle(&req("GET", "/empty/"), &mut s)).status, 404);
    }

    #[test]
    fn bad_paths_are_400() {
        let mut s = Fake::default();
        for t in ["/%2e%2e/x", "/a/../b", "/a%00", "/a\\b", "/%ff"] {
            assert_eq!(respond(handle(&req("GET", t), &mut s)).status, 400, "{t}");
            assert_eq!(respond(handle(&req("PUT", t), &mut s)).status, 400, "{t}");
        }
    }

    #[test]
    fn put_decides_type_and_refuses_dirs_and_reserved() {
        let mut s = Fake::default();
        assert_eq!(
            handle(&req("PUT", "/site/app.js"), &mut s),
            Outcome::Upload { path: "site/app.js".into(), content_type: "text/javascript; charset=utf-8".into() }
        );
        let mut r = req("PUT", "/blob");
        r.headers.push(("Content-Type".into(), b"image/png".to_vec()));
        assert_eq!(handle(&r, &mut s), Outcome::Upload { path: "blob".into(), content_type: "image/png".into() });
        assert_eq!(
            handle(&req("PUT", "/data.bin"), &mut s),
            Outcome::Upload { path: "data.bin".into(), content_type: "application/octet-stream".into() }
        );
        assert_eq!(respond(handle(&req("PUT", "/dir/"), &mut s)).status, 400);
        assert_eq!(respond(handle(&req("PUT", "/_api/x"), &mut s)).status, 400);
        assert_eq!(respond(handle(&req("DELETE", "/_turserver/x"), &mut s)).status, 400);
    }

    #[test]
    fn upload_outcomes() {
        let meta = Fake::with(&["f.txt"]).files["f.txt"].clone();
        let r = upload_response(Ok((meta.clone(), true)));
        assert_eq!((r.status, r.get("location")), (201, Some("/f.txt")));
        assert_eq!(upload_response(Ok((meta, false))).status, 204);
        assert_eq!(upload_response(Err(StoreError::Unauthorized)).status, 401);
        assert_eq!(upload_response(Err(StoreError::Forbidden)).status, 403);
        assert_eq!(upload_response(Err(StoreError::TooLarge(5))).status, 413);
        let r = upload_response(Err(StoreError::Unavailable("primary down".into())));
        assert_eq!((r.status, r.get("retry-after")), (503, Some("1")));
    }

    #[test]
    fn delete_and_methods() {
        let mut s = Fake::with(&["a"]);
        assert_eq!(respond(handle(&req("DELETE", "/a"), &mut s)).status, 204);
        assert_eq!(respond(handle(&req("DELETE", "/a"), &mut s)).status, 404);
        let r = respond(handle(&req("PATCH", "/a"), &mut s));
        assert_eq!((r.status, r.get("allow")), (405, Some(ALLOW)));
        assert_eq!(respond(handle(&req("POST", "/_api/files"), &mut s)).status, 405);
    }

    #[test]
    fn list_pages_with_cursor() {
        let mut s = Fake::with(&["a/1", "a/2", "a/3", "b/1"]);
        let r = respond(handle(&req("GET", "/_api/files?prefix=a%2F&limit=2"), &mut s));
        assert_eq!(r.status, 200);
        let Body::Bytes(b) = r.body else { panic!() };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["files"].as_array().unwrap().len(), 2);
        assert_eq!(v["files"][0]["path"], "a/1");
        assert_eq!(v["files"][0]["last_modified"], "2023-11-14T22:13:20Z");
        assert_eq!(v["next_cursor"], "a/2");
        let r = respond(handle(&req("GET", "/_api/files?prefix=a/&limit=2&cursor=a%2F2"), &mut s));
        let Body::Bytes(b) = r.body else { panic!() };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["files"][0]["path"], "a/3");
        assert!(v["next_cursor"].is_null());
        for bad in ["limit=0", "limit=1001", "limit=x"] {
            let r = respond(handle(&req("GET", &format!("/_api/files?{bad}")), &mut s));
            assert_eq!(r.status, 400, "{bad}");
        }
    }
}
