//! The worker's pure core: routing and response shaping, independent of wasm.
//!
//! The wasm entry point converts `wasi:http` types into [`Request`], calls
//! [`handle`], and streams what comes back. Everything that decides a status,
//! a header or a body lives here and is unit-tested natively against
//! [`Store`] fakes.

use crate::http::{self, RangeRequest, TagList};
use crate::path::{self, NormalPath};
use crate::site::SiteRules;
use serde::Serialize;
use std::cell::RefCell;
use std::rc::Rc;

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

/// Store failures, mirroring the WIT `error` variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound,
    Unauthorized,
    Forbidden,
    TooLarge(u64),
    PreconditionFailed,
    Invalid(String),
    Unavailable(String),
    Internal(String),
}

/// What a conditional write expects at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Absent,
    Hash(String),
}

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

    fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    fn split_target(&self) -> (&str, Option<&str>) {
        match self.path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.path_and_query.as_str(), None),
        }
    }

    fn is_head(&self) -> bool {
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
    /// Stream the request body into a new file, then answer with
    /// [`upload_response`].
    Upload { path: String, content_type: String, size_hint: Option<u64>, expect: Option<Expect> },
    /// Read the request body (at most [`MAX_SITE_CONFIG`] bytes) and pass it
    /// to [`put_site_config`].
    PutSiteConfig,
    /// Stream the request body (a tar archive) into a batch: each regular
    /// file goes through [`batch_entry`]; answer with [`batch_response`].
    Batch,
}

/// Methods the file routes answer.
pub const ALLOW: &str = "GET, HEAD, PUT, DELETE, OPTIONS";
/// Listing page size when the client names none, and the most it may ask for.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Largest site rules document accepted.
pub const MAX_SITE_CONFIG: usize = 64 << 10;
const LIST_ROUTE: &str = "_api/files";
const SITE_ROUTE: &str = "_api/site";
const BATCH_ROUTE: &str = "_api/batch";
/// Top-level names the host and the API own; files cannot be written there.
const RESERVED: [&str; 2] = ["_api", "_turserver"];

/// Routes one request.
pub fn handle(req: &Request, store: &mut impl Store) -> Outcome {
    let (raw_path, query) = req.split_target();
    let target = match path::normalise(raw_path) {
        Ok(t) => t,
        Err(e) => return Outcome::Respond(Response::text(400, format!("bad path: {e}"))),
    };
    let rules = match load_rules(store) {
        Ok(r) => r,
        Err(resp) => return Outcome::Respond(resp),
    };
    if let Some(preflight) = cors_preflight(req, &rules) {
        return Outcome::Respond(preflight);
    }
    let outcome = route(req, &target, query, &rules, store);
    match outcome {
        Outcome::Respond(resp) => Outcome::Respond(with_cors(req, &rules, resp)),
        other => other,
    }
}

fn route(req: &Request, target: &NormalPath, query: Option<&str>, rules: &SiteRules, store: &mut impl Store) -> Outcome {
    if !target.dir && target.path == LIST_ROUTE {
        return Outcome::Respond(match req.method.as_str() {
            "GET" | "HEAD" => head_if(req, list(query, store)),
            _ => method_not_allowed("GET, HEAD"),
        });
    }
    if !target.dir && target.path == BATCH_ROUTE {
        return match req.method.as_str() {
            "POST" => Outcome::Batch,
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
        "GET" | "HEAD" => Outcome::Respond(head_if(req, get(req, target, query, rules, store))),
        "PUT" => put(req, target, store),
        "DELETE" => Outcome::Respond(delete(req, target, store)),
        "OPTIONS" => Outcome::Respond(Response::new(204).header("allow", ALLOW)),
        _ => Outcome::Respond(method_not_allowed(ALLOW)),
    }
}

/// The site rules, or defaults when none were ever set.
fn load_rules(store: &mut impl Store) -> Result<Rc<SiteRules>, Response> {
    thread_local! {
        /// The last document parsed, and its rules: an instance serving many
        /// requests parses each version of the document once.
        static PARSED: RefCell<Option<(String, Rc<SiteRules>)>> = const { RefCell::new(None) };
    }
    match store.site_config() {
        Ok(None) => Ok(Rc::new(SiteRules::default())),
        Ok(Some(json)) => Ok(PARSED.with_borrow_mut(|parsed| match parsed {
            Some((seen, rules)) if *seen == json => rules.clone(),
            _ => {
                // Validated when written; a document that no longer parses
                // (written by another version) must not take the site down:
                // use defaults.
                let rules = Rc::new(SiteRules::parse(&json).unwrap_or_default());
                *parsed = Some((json, rules.clone()));
                rules
            }
        })),
        Err(e) => Err(error_response(e)),
    }
}

/// HEAD gets GET's headers without the body.
fn head_if(req: &Request, mut resp: Response) -> Response {
    if req.is_head() {
        resp.body = Body::Empty;
    }
    resp
}

fn method_not_allowed(allow: &str) -> Response {
    Response::text(405, "method not allowed").header("allow", allow)
}

fn get(req: &Request, target: &NormalPath, query: Option<&str>, rules: &SiteRules, store: &mut impl Store) -> Response {
    let file = target.file_to_serve();
    match store.stat(&file) {
        Ok(meta) => return serve(req, &meta, rules),
        Err(StoreError::NotFound) => {}
        Err(e) => return error_response(e),
    }
    // `/docs` names a directory when `/docs/index.html` exists.
    if !target.dir {
        match store.stat(&format!("{}/index.html", target.path)) {
            Ok(_) => {
                let mut location = format!("/{}/", path::encode(&target.path));
                if let Some(q) = query {
                    location.push('?');
                    location.push_str(q);
                }
                return Response::text(301, format!("moved to {location}")).header("location", location);
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return error_response(e),
        }
    }
    if let Some(fallback) = rules.fallback_page() {
        if accepts_html(req) {
            match store.stat(&fallback) {
                Ok(meta) => return serve(req, &meta, rules),
                Err(StoreError::NotFound) => {}
                Err(e) => return error_response(e),
            }
        }
    }
    if let Some(page) = rules.not_found() {
        if let Ok(meta) = store.stat(&page) {
            return Response::new(404)
                .header("content-type", meta.content_type.clone())
                .header("content-length", meta.size.to_string())
                .header("cache-control", "no-cache")
                .with_body(Body::File(FilePart { version: meta.version, encoding: "identity".into(), offset: 0, len: meta.size }));
        }
    }
    not_found()
}

fn accepts_html(req: &Request) -> bool {
    req.header("accept").is_some_and(|a| a.contains("text/html"))
}

fn not_found() -> Response {
    Response::text(404, "not found")
}

/// The entity tag of one representation of a file.
pub fn etag_for(meta: &Metadata, encoding: &str) -> String {
    if encoding == "identity" {
        meta.hash.clone()
    } else {
        format!("{}-{encoding}", meta.hash)
    }
}

/// Every entity tag the file currently has (one per stored coding).
fn all_tags(meta: &Metadata) -> Vec<String> {
    std::iter::once(meta.hash.clone()).chain(meta.encodings.iter().map(|(e, _)| etag_for(meta, e))).collect()
}

/// A stored file, with conditional requests, content negotiation and ranges.
fn serve(req: &Request, meta: &Metadata, rules: &SiteRules) -> Response {
    let Some(encoding) = http::negotiate_encoding(req.header("accept-encoding"), &meta.encodings, meta.size) else {
        return Response::text(406, "no acceptable content coding (identity was refused)");
    };
    let size = meta.encodings.iter().find(|(e, _)| *e == encoding).map(|(_, s)| *s).unwrap_or(meta.size);
    let tag = etag_for(meta, &encoding);
    let mut validators = vec![
        ("etag".to_string(), format!("\"{tag}\"")),
        ("last-modified".to_string(), http::fmt_date(meta.last_modified)),
        ("cache-control".to_string(), rules.cache_control(&meta.path, &meta.content_type)),
    ];
    if !meta.encodings.is_empty() {
        validators.push(("vary".into(), "Accept-Encoding".into()));
    }

    if let Some(status) = precondition_status(req, Some(meta), &tag) {
        let mut resp = if status == 304 { Response::new(304) } else { Response::text(412, "precondition failed") };
        if status == 304 {
            resp.headers.extend(validators);
        }
        return resp;
    }

    let mut resp = Response::new(200);
    resp.headers.extend(validators);
    resp.headers.push(("accept-ranges".into(), "bytes".into()));
    if encoding != "identity" {
        resp.headers.push(("content-encoding".into(), encoding.clone()));
    }
    let whole = FilePart { version: meta.version, encoding: encoding.clone(), offset: 0, len: size };

    let range = match req.header("range") {
        Some(r) if req.method == "GET" && if_range_allows(req, meta, &tag) => http::parse_range(r, size),
        _ => RangeRequest::Ignore,
    };
    match range {
        RangeRequest::Ignore => resp
            .header("content-type", meta.content_type.clone())
            .header("content-length", size.to_string())
            .with_body(Body::File(whole)),
        RangeRequest::Unsatisfiable => {
            let mut r = Response::text(416, format!("range not satisfiable: the representation is {size} bytes"));
            r.headers.push(("content-range".into(), format!("bytes */{size}")));
            r.headers.extend(resp.headers);
            r
        }
        RangeRequest::Ranges(ranges) if ranges.len() == 1 => {
            let r = ranges[0];
            resp.status = 206;
            resp.header("content-type", meta.content_type.clone())
                .header("content-range", format!("bytes {}-{}/{size}", r.start, r.end))
                .header("content-length", r.len().to_string())
                .with_body(Body::File(FilePart { offset: r.start, len: r.len(), ..whole }))
        }
        RangeRequest::Ranges(ranges) => {
            let boundary = format!("turserver-{}", &meta.hash[..meta.hash.len().min(24)]);
            let mut parts = Vec::new();
            let mut total = 0u64;
            for r in &ranges {
                let head = format!(
                    "\r\n--{boundary}\r\ncontent-type: {}\r\ncontent-range: bytes {}-{}/{size}\r\n\r\n",
                    meta.content_type, r.start, r.end
                );
                total += head.len() as u64 + r.len();
                parts.push(Part::Bytes(head.into_bytes()));
                parts.push(Part::File(FilePart { offset: r.start, len: r.len(), ..whole.clone() }));
            }
            let tail = format!("\r\n--{boundary}--\r\n");
            total += tail.len() as u64;
            parts.push(Part::Bytes(tail.into_bytes()));
            resp.status = 206;
            resp.header("content-type", format!("multipart/byteranges; boundary={boundary}"))
                .header("content-length", total.to_string())
                .with_body(Body::Parts(parts))
        }
    }
}

/// RFC 9110 section 13.2.2, steps 1-4: the status a failed precondition
/// gives (304 or 412), or None to go on. `current` is the file's current
/// state (None when absent); `tag` the selected representation's tag.
fn precondition_status(req: &Request, current: Option<&Metadata>, tag: &str) -> Option<u16> {
    let safe = matches!(req.method.as_str(), "GET" | "HEAD");
    let tags: Vec<String> = current.map(all_tags).unwrap_or_default();
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    if let Some(v) = req.header("if-match") {
        // Strong comparison against any current representation.
        let ok = http::parse_tag_list(v).is_some_and(|l| l.matches_strong(&tag_refs));
        if !ok {
            return Some(412);
        }
    } else if let (Some(v), Some(meta)) = (req.header("if-unmodified-since"), current) {
        if let Some(date) = http::parse_date(v) {
            if meta.last_modified > date {
                return Some(412);
            }
        }
    }
    if let Some(v) = req.header("if-none-match") {
        let matched = match http::parse_tag_list(v) {
            // GET compares with the representation it would send; a write
            // with any representation of the current file.
            Some(l) if safe => l.matches_weak(&[tag]) && current.is_some(),
            Some(l) => l.matches_weak(&tag_refs),
            None => false,
        };
        if matched {
            return Some(if safe { 304 } else { 412 });
        }
    } else if let (true, Some(v), Some(meta)) = (safe, req.header("if-modified-since"), current) {
        if let Some(date) = http::parse_date(v) {
            if meta.last_modified <= date {
                return Some(304);
            }
        }
    }
    None
}

/// If-Range: the range applies only when the validator still matches.
fn if_range_allows(req: &Request, meta: &Metadata, tag: &str) -> bool {
    let Some(v) = req.header("if-range") else { return true };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        matches!(http::parse_tag_list(v), Some(TagList::Tags(t)) if t.len() == 1 && !t[0].weak && t[0].tag == tag)
    } else {
        http::parse_date(v) == Some(meta.last_modified)
    }
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

/// For a conditional write: checks its preconditions against the current
/// file and returns what the host must find when it commits.
fn write_expectation(req: &Request, path: &str, store: &mut impl Store) -> Result<Option<Expect>, Response> {
    if !(req.has("if-match") || req.has("if-none-match") || req.has("if-unmodified-since")) {
        return Ok(None);
    }
    let current = match store.stat(path) {
        Ok(m) => Some(m),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(error_response(e)),
    };
    if let Some(status) = precondition_status(req, current.as_ref(), "") {
        return Err(Response::text(status, "precondition failed: the file is not in the state the request expects"));
    }
    Ok(Some(match current {
        Some(m) => Expect::Hash(m.hash),
        None => Expect::Absent,
    }))
}

fn put(req: &Request, target: &NormalPath, store: &mut impl Store) -> Outcome {
    if let Err(resp) = writable(target) {
        return Outcome::Respond(resp);
    }
    let content_type = match req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type")) {
        Some((_, v)) => match std::str::from_utf8(v) {
            Ok(s) if !s.trim().is_empty() && s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) => {
                s.trim().to_string()
            }
            _ => return Outcome::Respond(Response::text(400, "bad content-type header")),
        },
        None => guess_content_type(&target.path),
    };
    let size_hint = match req.header("content-length").map(|v| v.trim().parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Outcome::Respond(Response::text(400, "bad content-length header")),
    };
    match write_expectation(req, &target.path, store) {
        Ok(expect) => Outcome::Upload { path: target.path.clone(), content_type, size_hint, expect },
        Err(resp) => Outcome::Respond(resp),
    }
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
            resp.headers.push(("etag".into(), format!("\"{}\"", meta.hash)));
            resp.headers.push(("last-modified".into(), http::fmt_date(meta.last_modified)));
            resp
        }
        Err(e) => error_response(e),
    }
}

fn delete(req: &Request, target: &NormalPath, store: &mut impl Store) -> Response {
    if let Err(resp) = writable(target) {
        return resp;
    }
    let expect = match write_expectation(req, &target.path, store) {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    match store.delete(&target.path, expect) {
        Ok(()) => Response::new(204),
        Err(e) => error_response(e),
    }
}

/// The store path and media type for a file named `name` in a batch
/// archive; the error says why the entry (and so the batch) is refused.
pub fn batch_entry(name: &str) -> Result<(String, String), String> {
    let target = path::normalise(&format!("/{}", name.trim_start_matches("./").trim_start_matches('/')))
        .map_err(|e| format!("entry {name:?}: {e}"))?;
    if let Err(resp) = writable(&target) {
        let why = match resp.body {
            Body::Bytes(b) => String::from_utf8_lossy(&b).trim().to_string(),
            _ => "not writable".into(),
        };
        return Err(format!("entry {name:?}: {why}"));
    }
    let content_type = guess_content_type(&target.path);
    Ok((target.path, content_type))
}

/// The answer to a committed (or failed) batch.
pub fn batch_response(result: Result<Vec<(Metadata, bool)>, StoreError>) -> Response {
    #[derive(Serialize)]
    struct BatchBody<'a> {
        count: usize,
        files: Vec<FileEntry<'a>>,
    }
    match result {
        Ok(files) => Response::json(
            200,
            &BatchBody { count: files.len(), files: files.iter().map(|(m, _)| FileEntry::from(m)).collect() },
        ),
        Err(e) => error_response(e),
    }
}

/// Validates and stores a new site rules document.
pub fn put_site_config(body: &[u8], store: &mut impl Store) -> Response {
    let Ok(text) = std::str::from_utf8(body) else {
        return Response::text(400, "site rules must be UTF-8 JSON");
    };
    let rules = match SiteRules::parse(text) {
        Ok(r) => r,
        Err(why) => return Response::text(400, why),
    };
    let canonical = match serde_json::to_string(&rules) {
        Ok(s) => s,
        Err(e) => return Response::text(500, format!("cannot encode site rules: {e}")),
    };
    match store.set_site_config(&canonical) {
        Ok(()) => Response::json(200, &rules),
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
        StoreError::PreconditionFailed => {
            Response::text(412, "precondition failed: the file changed since the request's validator was taken")
        }
        StoreError::Invalid(why) => Response::text(400, why),
        StoreError::Unavailable(why) => {
            Response::text(503, format!("storage unavailable: {why}")).header("retry-after", "1")
        }
        StoreError::Internal(why) => Response::text(500, format!("storage error: {why}")),
    }
}

/// Answers a CORS preflight (OPTIONS with Origin and
/// Access-Control-Request-Method) when CORS is configured.
fn cors_preflight(req: &Request, rules: &SiteRules) -> Option<Response> {
    let cors = rules.cors.as_ref()?;
    if req.method != "OPTIONS" {
        return None;
    }
    let origin = req.header("origin")?;
    let method = req.header("access-control-request-method")?;
    let Some(allow_origin) = cors.allow_origin(origin) else {
        return Some(Response::text(403, "CORS preflight refused: origin not allowed"));
    };
    if !cors.allows_method(method.trim()) {
        return Some(Response::text(403, "CORS preflight refused: method not allowed"));
    }
    let mut resp = Response::new(204)
        .header("access-control-allow-origin", allow_origin.clone())
        .header("access-control-allow-methods", cors.allow_methods.join(", "));
    let allow_headers = if cors.allow_headers.iter().any(|h| h == "*") {
        req.header("access-control-request-headers").map(str::to_string)
    } else if cors.allow_headers.is_empty() {
        None
    } else {
        Some(cors.allow_headers.join(", "))
    };
    if let Some(h) = allow_headers {
        resp.headers.push(("access-control-allow-headers".into(), h));
    }
    if let Some(age) = cors.max_age {
        resp.headers.push(("access-control-max-age".into(), age.to_string()));
    }
    if cors.allow_credentials {
        resp.headers.push(("access-control-allow-credentials".into(), "true".into()));
    }
    if allow_origin != "*" {
        resp.headers.push(("vary".into(), "Origin".into()));
    }
    Some(resp)
}

/// Adds CORS headers to an actual response for an allowed origin.
fn with_cors(req: &Request, rules: &SiteRules, mut resp: Response) -> Response {
    let (Some(cors), Some(origin)) = (&rules.cors, req.header("origin")) else { return resp };
    let Some(allow) = cors.allow_origin(origin) else { return resp };
    if allow != "*" {
        match resp.headers.iter_mut().find(|(n, _)| n == "vary") {
            Some((_, v)) => v.push_str(", Origin"),
            None => resp.headers.push(("vary".into(), "Origin".into())),
        }
    }
    resp.headers.push(("access-control-allow-origin".into(), allow));
    if !cors.expose_headers.is_empty() {
        resp.headers.push(("access-control-expose-headers".into(), cors.expose_headers.join(", ")));
    }
    if cors.allow_credentials {
        resp.headers.push(("access-control-allow-credentials".into(), "true".into()));
    }
    resp
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
            etag: format!("\"{}\"", m.hash),
            last_modified: http::rfc3339(m.last_modified),
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
mod tests;
