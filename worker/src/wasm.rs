//! The wasm entry point: converts between `wasi:http` and the core's types and
//! streams bodies in pieces, so large files never sit whole in guest memory.

use crate::core::{self, Body, Expect, FilePart, Metadata, Outcome, Part, RulesCache, StoreError};
use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../wit",
    world: "turserver:store/worker",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use turserver::store::files;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{OutputStream, StreamError};

/// Bytes read from the request body at a time.
const PIECE: u64 = 256 * 1024;

thread_local! {
    /// The site rules as last parsed: an instance serving many requests
    /// parses each version of the document once. It holds nothing of any
    /// request.
    static RULES: RefCell<RulesCache> = RefCell::new(RulesCache::default());
}

struct Worker;
export!(Worker);

impl Guest for Worker {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let req = core::Request {
            method: method_name(&request.method()),
            path_and_query: request.path_with_query().unwrap_or_else(|| "/".into()),
            headers: request.headers().entries(),
        };
        // turserver takes this header before the worker runs; under Spin it
        // arrives here, and the store (through its sidecar) judges it. Said
        // on every request, empty when absent, so an instance that served an
        // earlier request never writes with that one's credentials.
        let credentials = req.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("authorization"));
        files::authorize(&credentials.map(|(_, v)| String::from_utf8_lossy(v)).unwrap_or_default());
        // Stat the file a GET serves before the rules are read: a store over
        // the network (the Spin adapter) then brings the rules in the same call.
        let mut store = HostStore { first: core::first_stat(&req).map(|p| (p.clone(), HostStore::fetch(&p))) };
        let outcome = RULES.with_borrow_mut(|rules| core::handle_with(&req, &mut store, rules));
        let resp = match outcome {
            Outcome::Respond(resp) => resp,
            Outcome::Upload { path, content_type, size_hint, expect } => {
                core::upload_response(upload(request, &path, &content_type, size_hint, expect))
            }
            Outcome::Batch => batch(request),
            // A client that may not write is answered before its body is read.
            Outcome::PutSiteConfig => match files::check_write().map_err(from_wit) {
                Err(e) => core::error_response(e),
                Ok(()) => match read_body(request, core::MAX_SITE_CONFIG) {
                    Ok(body) => core::put_site_config(&body, &mut store),
                    Err(resp) => resp,
                },
            },
            Outcome::Plan => match files::check_write().map_err(from_wit) {
                Err(e) => core::error_response(e),
                Ok(()) => match read_body(request, core::MAX_PLAN_BODY) {
                    Ok(body) => core::plan(&body, &mut store),
                    Err(resp) => resp,
                },
            },
        };
        send(resp, out);
    }
}

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}

/// Streams the request body into a host upload. The upload is dropped (and
/// its bytes discarded) on any failure, including a body cut off mid-way.
fn upload(
    request: IncomingRequest,
    path: &str,
    content_type: &str,
    size_hint: Option<u64>,
    expect: Option<Expect>,
) -> Result<(Metadata, bool), StoreError> {
    let expect = expect.map(to_wit_expect);
    let upload = files::begin_upload(path, content_type, size_hint, expect.as_ref()).map_err(from_wit)?;
    let body = request.consume().map_err(|()| StoreError::Invalid("request body already taken".into()))?;
    let stream = body.stream().map_err(|()| StoreError::Invalid("request body unreadable".into()))?;
    loop {
        match stream.blocking_read(PIECE) {
            Ok(bytes) if bytes.is_empty() => continue,
            Ok(bytes) => upload.write(&bytes).map_err(from_wit)?,
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(StoreError::Invalid(format!("request body incomplete: {}", e.to_debug_string())));
            }
        }
    }
    drop(stream);
    let _trailers = IncomingBody::finish(body);
    let written = upload.finish().map_err(from_wit)?;
    Ok((to_core(written.metadata), written.created))
}

/// `std::io::Read` over a `wasi:io` input stream.
struct StreamReader<'a>(&'a wasi::io::streams::InputStream);

impl std::io::Read for StreamReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.blocking_read(buf.len() as u64) {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => {
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    return Ok(bytes.len());
                }
                Err(StreamError::Closed) => return Ok(0),
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(std::io::Error::other(format!("request body incomplete: {}", e.to_debug_string())))
                }
            }
        }
    }
}

/// A host batch as the core's [`core::BatchSink`].
struct HostBatch<'a>(&'a files::Batch);

impl core::BatchSink for HostBatch<'_> {
    fn add(&mut self, path: &str, content_type: &str) -> Result<(), StoreError> {
        self.0.add(path, content_type).map_err(from_wit)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.0.write(bytes).map_err(from_wit)
    }

    fn remove(&mut self, path: &str) -> Result<(), StoreError> {
        self.0.remove(path).map_err(from_wit)
    }
}

/// Streams a tar archive into one batch: all files are published together,
/// or (on any bad entry, a cut-off body or a store failure) none is.
fn batch(request: IncomingRequest) -> core::Response {
    let batch = match files::begin_batch() {
        Ok(b) => b,
        Err(e) => return core::error_response(from_wit(e)),
    };
    let unreadable = || core::Response::text(400, "request body unreadable");
    let Ok(body) = request.consume() else { return unreadable() };
    let Ok(stream) = body.stream() else { return unreadable() };
    let mut buf = vec![0u8; PIECE as usize];
    if let Err(resp) = core::read_batch(StreamReader(&stream), &mut HostBatch(&batch), &mut buf) {
        // Dropping the batch discards what it staged.
        return resp;
    }
    drop(stream);
    let _trailers = IncomingBody::finish(body);
    core::batch_response(
        batch
            .commit()
            .map(|files| files.into_iter().map(|w| (to_core(w.metadata), w.created)).collect())
            .map_err(from_wit),
    )
}

/// Reads a whole (small) request body, refusing more than `limit` bytes.
fn read_body(request: IncomingRequest, limit: usize) -> Result<Vec<u8>, core::Response> {
    let unreadable = || core::Response::text(400, "request body unreadable");
    let body = request.consume().map_err(|()| unreadable())?;
    let stream = body.stream().map_err(|()| unreadable())?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(PIECE) {
            Ok(bytes) => {
                out.extend_from_slice(&bytes);
                if out.len() > limit {
                    return Err(core::Response::text(413, format!("body larger than {limit} bytes")));
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return Err(core::Response::text(400, "request body incomplete")),
        }
    }
    Ok(out)
}

fn send(mut resp: core::Response, out: ResponseOutparam) {
    let entries: Vec<(String, Vec<u8>)> =
        std::mem::take(&mut resp.headers).into_iter().map(|(n, v)| (n, v.into_bytes())).collect();
    let headers = match Fields::from_list(&entries) {
        Ok(h) => h,
        Err(e) => {
            let fallback = core::Response::text(500, format!("worker built an invalid header: {e:?}"));
            return send(fallback, out);
        }
    };
    let response = OutgoingResponse::new(headers);
    if resp.status != 200 {
        // A new response is 200 already: one host call fewer for most.
        let _ = response.set_status_code(resp.status);
    }
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    let Ok(stream) = body.write() else { return };
    let complete = match resp.body {
        Body::Empty => true,
        Body::Bytes(bytes) => write_all(&stream, &bytes),
        Body::File(part) => stream_file(&stream, &part),
        Body::Parts(parts) => parts.iter().all(|p| match p {
            Part::Bytes(b) => write_all(&stream, b),
            Part::File(f) => stream_file(&stream, f),
        }),
    };
    drop(stream);
    if complete {
        let _ = OutgoingBody::finish(body, None);
    }
    // An incomplete body is dropped unfinished: the host aborts the response
    // rather than send a truncated file as if it were whole.
}

/// Streams a stored body: the host writes it to the response straight from
/// the store, without passing it through this instance's memory.
fn stream_file(stream: &OutputStream, part: &FilePart) -> bool {
    part.len == 0 || files::send(part.version, &part.encoding, part.offset, part.len, stream).is_ok()
}

/// The most `blocking-write-and-flush` takes in one call.
const SMALL_WRITE: usize = 4096;

fn write_all(stream: &OutputStream, mut bytes: &[u8]) -> bool {
    if bytes.len() <= SMALL_WRITE {
        // One host call instead of check-write, write and flush.
        return stream.blocking_write_and_flush(bytes).is_ok();
    }
    while !bytes.is_empty() {
        let permit = match stream.check_write() {
            Ok(0) => {
                stream.subscribe().block();
                continue;
            }
            Ok(n) => n.min(bytes.len() as u64) as usize,
            Err(_) => return false,
        };
        if stream.write(&bytes[..permit]).is_err() {
            return false;
        }
        bytes = &bytes[permit..];
    }
    stream.blocking_flush().is_ok()
}

/// The host's store as the core's [`core::Store`].
struct HostStore {
    /// A stat made ahead of routing, handed out once.
    first: Option<(String, Result<Metadata, StoreError>)>,
}

impl HostStore {
    fn fetch(path: &str) -> Result<Metadata, StoreError> {
        files::stat(path).map(to_core).map_err(from_wit)
    }
}

impl core::Store for HostStore {
    fn stat(&mut self, path: &str) -> Result<Metadata, StoreError> {
        match self.first.take() {
            Some((p, result)) if p == path => result,
            _ => HostStore::fetch(path),
        }
    }

    fn list(&mut self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<core::Listing, StoreError> {
        let l = files::list_files(prefix, cursor, limit).map_err(from_wit)?;
        Ok(core::Listing { files: l.files.into_iter().map(to_core).collect(), next_cursor: l.next_cursor })
    }

    fn delete(&mut self, path: &str, expect: Option<Expect>) -> Result<(), StoreError> {
        let expect = expect.map(to_wit_expect);
        files::delete(path, expect.as_ref()).map_err(from_wit)
    }

    fn site_config(&mut self) -> Result<Option<String>, StoreError> {
        files::site_config().map_err(from_wit)
    }

    fn set_site_config(&mut self, json: &str) -> Result<(), StoreError> {
        files::set_site_config(json).map_err(from_wit)
    }
}

fn to_core(m: files::Metadata) -> Metadata {
    Metadata {
        path: m.path,
        version: m.version,
        size: m.size,
        content_type: m.content_type,
        hash: m.hash,
        last_modified: m.last_modified,
        created: m.created,
        encodings: m.encodings.into_iter().map(|e| (e.encoding, e.size)).collect(),
    }
}

fn to_wit_expect(e: Expect) -> files::Expectation {
    match e {
        Expect::Absent => files::Expectation::Absent,
        Expect::Hash(h) => files::Expectation::Hash(h),
    }
}

fn from_wit(e: files::Error) -> StoreError {
    match e {
        files::Error::NotFound => StoreError::NotFound,
        files::Error::Unauthorized => StoreError::Unauthorized,
        files::Error::Forbidden => StoreError::Forbidden,
        files::Error::TooLarge(n) => StoreError::TooLarge(n),
        files::Error::PreconditionFailed => StoreError::PreconditionFailed,
        files::Error::Invalid(s) => StoreError::Invalid(s),
        files::Error::Unavailable(s) => StoreError::Unavailable(s),
        files::Error::Internal(s) => StoreError::Internal(s),
    }
}

/// Declares to turserver that this worker keeps nothing from one request to
/// the next (no globals hold request data), so one instance may serve many
/// requests in turn. The host looks for this custom section by name.
#[used]
#[link_section = "turserver:stateless"]
static STATELESS: [u8; 1] = [1];
