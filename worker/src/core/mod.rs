//! The worker's pure core: routing and response shaping, independent of wasm.
//!
//! The wasm entry point converts `wasi:http` types into [`Request`], calls
//! [`handle_with`], and streams what comes back. Everything that decides a
//! status, a header or a body lives here and is unit-tested natively against
//! [`Store`] fakes.
//!
//! - this module: the types, routing, and store errors as responses.
//! - `serve`: files, with content negotiation and ranges.
//! - `preconditions`: conditional requests (RFC 9110 section 13).
//! - `write`: uploads, deletes, batch entries, the site document.
//! - `batch`: a tar archive read into a batch, all or nothing.
//! - `deploy`: the plan of a deploy (what to send, what to remove) and a
//!   batch's manifest of removals.
//! - `cors`: preflights and CORS headers.
//! - `list`: the file listing API.
//! - `rules`: the site rules a request is served by, parsed once per version.

mod batch;
mod cors;
mod deploy;
mod list;
mod preconditions;
mod rules;
mod serve;
mod write;

pub use batch::{read_batch, BatchSink};
pub use deploy::{plan, read_manifest, store_path, Manifest, Plan, MANIFEST_ENTRY, MAX_MANIFEST, MAX_PLAN_BODY};
pub use rules::RulesCache;
pub use serve::etag_for;
pub use write::{batch_entry, batch_response, guess_content_type, put_site_config, upload_response};

use crate::path::{self, NormalPath};
use crate::site::SiteRules;
use serde::Serialize;

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
    /// Stored content codings (name, size).
    pub encodings: Vec<(String, u64)>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub files: Vec<Metadata>,
    pub next_cursor: Option<String>,
}

/// Store failures, the WIT `error` variant as the sidecar protocol defines
/// it: one status for each, on every path.
pub use turserver_protocol::Error as StoreError;

/// What a conditional write expects at its path.
pub use turserver_protocol::Expectation as Expect;

/// The host calls the core needs to route a request. Uploads are driven by
/// the entry point (they consume the request body), so they are not here.
pub trait Store {
    fn stat(&mut self, path: &str) -> Result<Metadata, StoreError>;
    fn list(&mut self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<Listing, StoreError>;
    fn delete(&mut self, path: &str, expect: Option<Expect>) -> Result<(), StoreError>;
    fn site_config(&mut self) -> Result<Option<String>, StoreError>;
    fn set_site_config(&mut self, json: &str) -> Result<(), StoreError>;
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
    /// A header's value as text (names compared case-insensitively); None
    /// when absent or not valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    pub(crate) fn split_target(&self) -> (&str, Option<&str>) {
        match self.path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.path_and_query.as_str(), None),
        }
    }

    pub(crate) fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// What to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// A response body: bytes made here, a stored body (or part of one) that the
/// entry point streams from the host, or a sequence of both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    File(FilePart),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    pub version: u64,
    pub encoding: String,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Bytes(Vec<u8>),
    File(FilePart),
}

impl Response {
    pub(crate) fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Body::Empty }
    }

    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Self {
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

    pub(crate) fn json(status: u16, value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(status)
                .header("content-type", "application/json")
                .header("content-length", body.len().to_string())
                .with_body(Body::Bytes(body)),
            Err(e) => Response::text(500, format!("cannot encode response: {e}")),
        }
    }

    pub(crate) fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// A text response's message, without its line end.
    pub(crate) fn message(&self) -> String {
        match &self.body {
            Body::Bytes(b) => String::from_utf8_lossy(b).trim().to_string(),
            _ => String::new(),
        }
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
    /// Stream the request body into a new file, then answer with
    /// [`upload_response`].
    Upload { path: String, content_type: String, size_hint: Option<u64>, expect: Option<Expect> },
    /// Read the request body (at most [`MAX_SITE_CONFIG`] bytes) and pass it
    /// to [`put_site_config`].
    PutSiteConfig,
    /// Stream the request body (a tar archive) into a batch: each regular
    /// file goes through [`batch_entry`]; answer with [`batch_response`].
    Batch,
    /// Read the request body (at most [`MAX_PLAN_BODY`] bytes), once the
    /// client may write, and answer with [`plan`].
    Plan,
}

/// Methods the file routes answer.
pub const ALLOW: &str = "GET, HEAD, PUT, DELETE, OPTIONS";
/// Listing page size when the client names none, and the most it may ask for.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Largest site rules document accepted.
pub const MAX_SITE_CONFIG: usize = turserver_protocol::MAX_SITE_CONFIG;
pub(crate) const LIST_ROUTE: &str = "_api/files";
pub(crate) const SITE_ROUTE: &str = "_api/site";
pub(crate) const BATCH_ROUTE: &str = "_api/batch";
pub(crate) const PLAN_ROUTE: &str = "_api/plan";

/// The path a request's routing will `stat` first, when it is known before
/// the site rules are: the file a GET or HEAD serves. A store reached over
/// a network fetches it (and the rules) in one call when told early.
pub fn first_stat(req: &Request) -> Option<String> {
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return None;
    }
    let target = path::normalise(req.split_target().0).ok()?;
    let api = [LIST_ROUTE, SITE_ROUTE, BATCH_ROUTE, PLAN_ROUTE];
    if !target.dir && api.contains(&target.path.as_str()) {
        return None;
    }
    Some(target.file_to_serve())
}

/// Routes one request, parsing the site rules afresh.
pub fn handle(req: &Request, store: &mut impl Store) -> Outcome {
    handle_with(req, store, &mut RulesCache::default())
}

/// Routes one request; `rules` keeps the site rules parsed across requests.
pub fn handle_with(req: &Request, store: &mut impl Store, rules: &mut RulesCache) -> Outcome {
    let (raw_path, query) = req.split_target();
    let target = match path::normalise(raw_path) {
        Ok(t) => t,
        Err(e) => return Outcome::Respond(Response::text(400, format!("bad path: {e}"))),
    };
    let rules = match rules.load(store) {
        Ok(r) => r,
        Err(resp) => return Outcome::Respond(resp),
    };
    if let Some(preflight) = cors::preflight(req, &rules) {
        return Outcome::Respond(preflight);
    }
    let outcome = route(req, &target, query, &rules, store);
    match outcome {
        Outcome::Respond(resp) => Outcome::Respond(cors::with_cors(req, &rules, resp)),
        other => other,
    }
}

fn route(req: &Request, target: &NormalPath, query: Option<&str>, rules: &SiteRules, store: &mut impl Store) -> Outcome {
    if !target.dir && target.path == LIST_ROUTE {
        return Outcome::Respond(match req.method.as_str() {
            "GET" | "HEAD" => head_if(req, list::list(query, store)),
            _ => method_not_allowed("GET, HEAD"),
        });
    }
    if !target.dir && target.path == BATCH_ROUTE {
        return match req.method.as_str() {
            "POST" => Outcome::Batch,
            _ => Outcome::Respond(method_not_allowed("POST")),
        };
    }
    if !target.dir && target.path == PLAN_ROUTE {
        return match req.method.as_str() {
            "POST" => Outcome::Plan,
            _ => Outcome::Respond(method_not_allowed("POST")),
        };
    }
    if !target.dir && target.path == SITE_ROUTE {
        return match req.method.as_str() {
            "GET" | "HEAD" => Outcome::Respond(head_if(req, Response::json(200, rules))),
            "PUT" => Outcome::PutSiteConfig,
            _ => Outcome::Respond(method_not_allowed("GET, HEAD, PUT")),
        };
    }
    match req.method.as_str() {
        "GET" | "HEAD" => Outcome::Respond(head_if(req, serve::get(req, target, query, rules, store))),
        "PUT" => write::put(req, target, store),
        "DELETE" => Outcome::Respond(write::delete(req, target, store)),
        "OPTIONS" => Outcome::Respond(Response::new(204).header("allow", ALLOW)),
        _ => Outcome::Respond(method_not_allowed(ALLOW)),
    }
}

/// HEAD gets GET's headers without the body.
fn head_if(req: &Request, mut resp: Response) -> Response {
    if req.is_head() {
        resp.body = Body::Empty;
    }
    resp
}

pub(crate) fn method_not_allowed(allow: &str) -> Response {
    Response::text(405, "method not allowed").header("allow", allow)
}

/// Maps a store failure to a status and a body that says why.
pub fn error_response(err: StoreError) -> Response {
    let status = err.status();
    match err {
        StoreError::NotFound => serve::not_found(),
        StoreError::Unauthorized => Response::text(status, "a token is required: the write token, or a signed token allowing this (Authorization: Bearer <token>)")
            .header("www-authenticate", "Bearer"),
        StoreError::Forbidden => Response::text(status, "the token does not allow this: it is neither the write token nor a signed token whose rules allow it on this path"),
        StoreError::TooLarge(limit) => Response::text(status, format!("upload larger than the limit of {limit} bytes")),
        StoreError::PreconditionFailed => {
            Response::text(status, "precondition failed: the file changed since the request's validator was taken")
        }
        StoreError::Invalid(why) => Response::text(status, why),
        StoreError::Unavailable(why) => {
            Response::text(status, format!("storage unavailable: {why}")).header("retry-after", "1")
        }
        StoreError::Internal(why) => Response::text(status, format!("storage error: {why}")),
    }
}

#[derive(Serialize)]
pub(crate) struct FileEntry<'a> {
    path: &'a str,
    size: u64,
    content_type: &'a str,
    etag: String,
    last_modified: String,
    /// Stored content codings and their sizes, e.g. `{"br": 1234}`.
    encodings: std::collections::BTreeMap<&'a str, u64>,
}

impl<'a> From<&'a Metadata> for FileEntry<'a> {
    fn from(m: &'a Metadata) -> Self {
        FileEntry {
            path: &m.path,
            size: m.size,
            content_type: &m.content_type,
            etag: format!("\"{}\"", m.hash),
            last_modified: crate::http::rfc3339(m.last_modified),
            encodings: m.encodings.iter().map(|(name, size)| (name.as_str(), *size)).collect(),
        }
    }
}

/// `application/x-www-form-urlencoded` pairs; undecodable pairs are skipped.
pub(crate) fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
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
mod tests;
