//! The component: each `files` call is one HTTP call to the sidecar. An
//! upload or a batch is one streamed request whose body the worker's
//! `write` calls feed; its answer comes back at `finish`/`commit` (or at
//! the first `write` the sidecar refuses, when it answered early).

#[cfg(feature = "spin")]
wit_bindgen::generate!({
    path: "../../wit",
    world: "turserver:store/adapter-spin",
    generate_all,
    additional_derives: [serde::Serialize, serde::Deserialize],
    additional_derives_ignore: ["stream-error"],
});

#[cfg(not(feature = "spin"))]
wit_bindgen::generate!({
    path: "../../wit",
    world: "turserver:store/adapter-env",
    generate_all,
    additional_derives: [serde::Serialize, serde::Deserialize],
    additional_derives_ignore: ["stream-error"],
});

use crate::wire::Sidecar;
use turserver_protocol::{self as protocol, Request as Call};
use exports::turserver::store::files::{
    self as api, Error, Expectation, Guest, GuestBatch, GuestUpload, Listing, Metadata, Written,
};
use exports::turserver::store::kv;
use std::cell::RefCell;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    FutureIncomingResponse, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::io::streams::{OutputStream, StreamError};

struct Adapter;
export!(Adapter);

/// Largest JSON answer read (a listing page of 1000 files fits easily).
const MAX_JSON: usize = 16 << 20;
const SECOND_NS: u64 = 1_000_000_000;

thread_local! {
    /// The client's `Authorization` value, from `authorize`, which the
    /// worker calls at the start of every request: always this request's.
    static CREDENTIALS: RefCell<Option<String>> = const { RefCell::new(None) };
    /// A small body `stat` brought along: (version, identity bytes).
    static INLINE: RefCell<Option<(u64, Vec<u8>)>> = const { RefCell::new(None) };
    /// The site document, once a call of this request brought it (Some(None):
    /// none is stored). Forgotten at `authorize`, the start of each request.
    static SITE: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Bodies up to this size come with `stat`, saving a call per small GET.
const INLINE_LIMIT: u64 = 64 << 10;

/// Bytes asked of an answer's body stream at a time. The runtime sets a
/// buffer of this size aside for each read, whatever arrives: a small
/// answer read with a large request costs more than the call itself.
const READ_PIECE: u64 = 64 << 10;

/// Bytes `send` fetches from the sidecar per call: the host's chunk size.
const SEND_PIECE: u64 = 1 << 20;

/// The sidecar's address and token, read from the configuration on each
/// call (Spin resolves variables per request; they may change).
struct Config {
    sidecar: Sidecar,
    token: String,
}

#[cfg(feature = "spin")]
fn setting(name: &str) -> Result<String, Error> {
    fermyon::spin::variables::get(name).map_err(|e| {
        Error::Unavailable(format!("the store adapter cannot read the Spin variable {name}: {e:?}"))
    })
}

#[cfg(not(feature = "spin"))]
fn setting(name: &str) -> Result<String, Error> {
    let var = format!("TURSERVER_{}", name.to_ascii_uppercase());
    std::env::var(&var).map_err(|_| Error::Unavailable(format!("the store adapter needs the environment variable {var}")))
}

fn config() -> Result<Config, Error> {
    let sidecar = Sidecar::parse(&setting("sidecar_url")?).map_err(Error::Unavailable)?;
    Ok(Config { sidecar, token: setting("sidecar_token")? })
}

/// An HTTP call to the sidecar whose request body may still be streaming.
struct Pending {
    sidecar: String,
    stream: Option<OutputStream>,
    body: Option<OutgoingBody>,
    response: FutureIncomingResponse,
}

/// Starts a call; write calls carry the client's credentials.
fn start(call: &Call, streaming: bool) -> Result<Pending, Error> {
    let config = config()?;
    let mut headers = vec![("authorization".to_string(), format!("Bearer {}", config.token).into_bytes())];
    if call.is_write() {
        if let Some(c) = CREDENTIALS.with(|c| c.borrow().clone()) {
            headers.push((protocol::CLIENT_AUTHORIZATION.to_string(), c.into_bytes()));
        }
    }
    let method = match call.method() {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };
    let fields = Fields::from_list(&headers).map_err(|e| Error::Invalid(format!("credentials not sendable: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let target = call.target(&config.sidecar.prefix);
    let scheme = if config.sidecar.https { Scheme::Https } else { Scheme::Http };
    let malformed = |what: &str| Error::Unavailable(format!("the sidecar URL gives an unusable {what}"));
    request.set_method(&method).map_err(|()| malformed("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| malformed("scheme"))?;
    request.set_authority(Some(&config.sidecar.authority)).map_err(|()| malformed("host"))?;
    request.set_path_with_query(Some(&target)).map_err(|()| malformed("path"))?;
    let body = request.body().map_err(|()| Error::Internal("outgoing body unavailable".into()))?;
    // Runtimes may not support every timeout; the defaults apply then.
    let options = RequestOptions::new();
    let _ = options.set_connect_timeout(Some(5 * SECOND_NS));
    if !streaming {
        // A streamed upload is answered only once its body is in.
        let _ = options.set_first_byte_timeout(Some(30 * SECOND_NS));
    }
    let sidecar = config.sidecar.origin();
    let response = outgoing_handler::handle(request, Some(options)).map_err(|e| unreachable(&sidecar, e))?;
    let stream = body.write().map_err(|()| Error::Internal("outgoing body stream unavailable".into()))?;
    Ok(Pending { sidecar, stream: Some(stream), body: Some(body), response })
}

fn unreachable(sidecar: &str, e: impl std::fmt::Debug) -> Error {
    Error::Unavailable(format!("the store sidecar at {sidecar} is unreachable: {e:?}"))
}

impl Pending {
    /// Writes all of `bytes` to the request body.
    fn send(&self, bytes: &[u8]) -> Result<(), ()> {
        write_all(self.stream.as_ref().ok_or(())?, bytes)
    }

    /// Ends the request body (`complete`: properly, else as cut off) and
    /// waits for the answer.
    fn answer(mut self, complete: bool) -> Result<(u16, Vec<(String, Vec<u8>)>, Vec<u8>), Error> {
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            if complete {
                let _ = OutgoingBody::finish(body, None);
            }
        }
        self.response.subscribe().block();
        let response = match self.response.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => return Err(unreachable(&self.sidecar, e)),
            _ => return Err(Error::Unavailable(format!("no answer from the store sidecar at {}", self.sidecar))),
        };
        let status = response.status();
        let headers = response.headers().entries();
        let body = read_all(&response, MAX_JSON).map_err(|why| {
            Error::Unavailable(format!("the store sidecar at {} sent a broken answer: {why}", self.sidecar))
        })?;
        Ok((status, headers, body))
    }
}

/// Writes all of `bytes` to `stream`, waiting for room, then flushes.
fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), ()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let permit = match stream.check_write() {
            Ok(0) => {
                stream.subscribe().block();
                continue;
            }
            Ok(n) => n.min(rest.len() as u64) as usize,
            Err(_) => return Err(()),
        };
        stream.write(&rest[..permit]).map_err(|_| ())?;
        rest = &rest[permit..];
    }
    stream.blocking_flush().map_err(|_| ())
}

fn read_all(response: &IncomingResponse, limit: usize) -> Result<Vec<u8>, String> {
    let body = response.consume().map_err(|()| "body already taken".to_string())?;
    let stream = body.stream().map_err(|()| "body unreadable".to_string())?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(READ_PIECE) {
            Ok(bytes) => {
                out.extend_from_slice(&bytes);
                if out.len() > limit {
                    return Err(format!("answer larger than {limit} bytes"));
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
        }
    }
    Ok(out)
}

/// A finished answer: headers and body on success, else the error it
/// carries.
fn decode(pending: Pending, complete: bool) -> Result<(Vec<(String, Vec<u8>)>, Vec<u8>), Error> {
    let sidecar = pending.sidecar.clone();
    let (status, headers, body) = pending.answer(complete)?;
    if (200..300).contains(&status) {
        return Ok((headers, body));
    }
    Err(serde_json::from_slice::<Error>(&body)
        .unwrap_or_else(|_| Error::Unavailable(format!("the store sidecar at {sidecar} answered {status}"))))
}

fn json<T: serde::de::DeserializeOwned>(body: Vec<u8>) -> Result<T, Error> {
    serde_json::from_slice(&body).map_err(|e| Error::Internal(format!("unexpected answer from the store sidecar: {e}")))
}

/// One call without a request body: its answer's headers and body.
fn call(call: Call) -> Result<(Vec<(String, Vec<u8>)>, Vec<u8>), Error> {
    decode(start(&call, false)?, true)
}

/// One call without a request body: its answer's body.
fn call_body(c: Call) -> Result<Vec<u8>, Error> {
    call(c).map(|(_, body)| body)
}

fn wire_expect(expect: Option<Expectation>) -> Option<protocol::Expectation> {
    expect.map(|e| match e {
        Expectation::Absent => protocol::Expectation::Absent,
        Expectation::Hash(h) => protocol::Expectation::Hash(h),
    })
}

impl Guest for Adapter {
    type Upload = Upload;
    type Batch = Batch;

    fn stat(path: String) -> Result<Metadata, Error> {
        // The first call of a request also fetches the site document.
        let site = SITE.with(|s| s.borrow().is_none());
        let (headers, body) = call(Call::Stat { path, inline: INLINE_LIMIT, site })?;
        let header = |name: &str| {
            headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        let answer = protocol::StatAnswer::decode(header, body).map_err(Error::Internal)?;
        let meta: Metadata = json(answer.metadata)?;
        if let Some(doc) = answer.site {
            SITE.with(|s| *s.borrow_mut() = Some(doc));
        }
        if let Some(file) = answer.inline {
            INLINE.with(|i| *i.borrow_mut() = Some((meta.version, file)));
        }
        Ok(meta)
    }

    fn read(version: u64, encoding: String, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let inlined = INLINE.with(|i| match &*i.borrow() {
            Some((v, body)) if *v == version && encoding == "identity" => {
                let start = (offset as usize).min(body.len());
                let end = start.saturating_add(len as usize).min(body.len());
                Some(body[start..end].to_vec())
            }
            _ => None,
        });
        if let Some(bytes) = inlined {
            return Ok(bytes);
        }
        call_body(Call::Read { version, encoding, offset, len })
    }

    fn send(version: u64, encoding: String, offset: u64, len: u64, out: &OutputStream) -> Result<(), Error> {
        let end = offset.checked_add(len).ok_or_else(|| Error::Invalid("offset + len overflows".into()))?;
        let mut offset = offset;
        while offset < end {
            // The host's whole, aligned chunks: one database read each.
            let want = (SEND_PIECE - offset % SEND_PIECE).min(end - offset);
            let bytes = Self::read(version, encoding.clone(), offset, want)?;
            if bytes.is_empty() {
                return Err(Error::Invalid(format!("the range passes the end of body {version}")));
            }
            offset += bytes.len() as u64;
            write_all(out, &bytes).map_err(|()| Error::Internal("the response stream failed".into()))?;
        }
        Ok(())
    }

    fn list_files(prefix: String, cursor: Option<String>, limit: u32) -> Result<Listing, Error> {
        json(call_body(Call::List { prefix, cursor, limit })?)
    }

    fn begin_upload(
        path: String,
        content_type: String,
        size_hint: Option<u64>,
        expect: Option<Expectation>,
    ) -> Result<api::Upload, Error> {
        let upload = Call::Upload { path, content_type, size_hint, expect: wire_expect(expect) };
        let pending = start(&upload, true)?;
        Ok(api::Upload::new(Upload(Streamed(RefCell::new(Some(pending))))))
    }

    fn begin_batch() -> Result<api::Batch, Error> {
        let pending = start(&Call::Batch, true)?;
        Ok(api::Batch::new(Batch(Streamed(RefCell::new(Some(pending))))))
    }

    fn delete(path: String, expect: Option<Expectation>) -> Result<(), Error> {
        call(Call::Delete { path, expect: wire_expect(expect) }).map(drop)
    }

    fn site_config() -> Result<Option<String>, Error> {
        if let Some(known) = SITE.with(|s| s.borrow().clone()) {
            return Ok(known);
        }
        let body = call_body(Call::SiteConfig)?;
        let doc = match body.is_empty() {
            true => None,
            false => Some(String::from_utf8(body).map_err(|_| Error::Internal("site configuration is not UTF-8".into()))?),
        };
        SITE.with(|s| *s.borrow_mut() = Some(doc.clone()));
        Ok(doc)
    }

    fn set_site_config(json: String) -> Result<(), Error> {
        SITE.with(|s| *s.borrow_mut() = None);
        let pending = start(&Call::SetSiteConfig, false)?;
        let sent = pending.send(json.as_bytes()).is_ok();
        decode(pending, sent).map(drop)
    }

    fn authorize(credentials: String) {
        // Each request's own: none when it carries none; nothing an earlier
        // request fetched is kept.
        CREDENTIALS.with(|c| *c.borrow_mut() = (!credentials.is_empty()).then_some(credentials));
        SITE.with(|s| *s.borrow_mut() = None);
        INLINE.with(|i| *i.borrow_mut() = None);
    }

    fn check_write() -> Result<(), Error> {
        call(Call::CheckWrite).map(drop)
    }
}

fn wire_kv_expect(expect: Option<kv::Expectation>) -> Option<protocol::KvExpectation> {
    expect.map(|e| match e {
        kv::Expectation::Absent => protocol::KvExpectation::Absent,
        kv::Expectation::Present => protocol::KvExpectation::Present,
        kv::Expectation::Version(v) => protocol::KvExpectation::Version(v),
    })
}

impl kv::Guest for Adapter {
    fn get(key: String) -> Result<Option<kv::Entry>, Error> {
        let pending = start(&Call::KvGet { key }, false)?;
        let sidecar = pending.sidecar.clone();
        let (status, headers, body) = pending.answer(true)?;
        let header = |name: &str| {
            headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        match status {
            204 => Ok(None),
            200 => Ok(Some(kv::Entry {
                value: body,
                content_type: header(protocol::KV_TYPE_HEADER).map(str::to_string),
                version: header(protocol::KV_VERSION_HEADER)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| Error::Internal("the sidecar's entry has no version".into()))?,
                expires: header(protocol::KV_EXPIRES_HEADER).and_then(|v| v.parse().ok()),
            })),
            _ => Err(serde_json::from_slice::<Error>(&body)
                .unwrap_or_else(|_| Error::Unavailable(format!("the store sidecar at {sidecar} answered {status}")))),
        }
    }

    fn set(
        key: String,
        value: Vec<u8>,
        content_type: Option<String>,
        ttl: Option<u64>,
        expect: Option<kv::Expectation>,
    ) -> Result<u64, Error> {
        let pending = start(&Call::KvSet { key, content_type, ttl, expect: wire_kv_expect(expect) }, false)?;
        let sent = pending.send(&value).is_ok();
        json(decode(pending, sent)?.1)
    }

    fn delete(key: String, expect: Option<kv::Expectation>) -> Result<bool, Error> {
        json(call_body(Call::KvDelete { key, expect: wire_kv_expect(expect) })?)
    }

    fn list_keys(prefix: String, cursor: Option<String>, limit: u32) -> Result<(Vec<String>, Option<String>), Error> {
        json(call_body(Call::KvList { prefix, cursor, limit })?)
    }
}

/// Pieces of one streamed request; `None` once answered.
struct Streamed(RefCell<Option<Pending>>);

impl Streamed {
    fn send(&self, pieces: &[&[u8]]) -> Result<(), Error> {
        let mut slot = self.0.borrow_mut();
        let pending = slot.as_ref().ok_or_else(|| Error::Invalid("already finished".into()))?;
        if pieces.iter().all(|p| pending.send(p).is_ok()) {
            return Ok(());
        }
        // The sidecar stopped reading: it answered early, with the reason.
        let pending = slot.take().expect("checked above");
        match decode(pending, false) {
            Err(e) => Err(e),
            Ok(_) => Err(Error::Unavailable("the store sidecar ended the upload early".into())),
        }
    }

    fn finish(&self) -> Result<Vec<u8>, Error> {
        let pending = self.0.borrow_mut().take().ok_or_else(|| Error::Invalid("already finished".into()))?;
        decode(pending, true).map(|(_, body)| body)
    }
}

pub struct Upload(Streamed);
pub struct Batch(Streamed);

impl GuestUpload for Upload {
    fn write(&self, bytes: Vec<u8>) -> Result<(), Error> {
        self.0.send(&[&bytes])
    }

    fn finish(&self) -> Result<Written, Error> {
        json(self.0.finish()?)
    }
}

impl GuestBatch for Batch {
    fn add(&self, path: String, content_type: String) -> Result<(), Error> {
        let payload = protocol::add_payload(&path, &content_type);
        self.0.send(&[&protocol::frame_header(protocol::FRAME_ADD, payload.len()), &payload])
    }

    fn write(&self, bytes: Vec<u8>) -> Result<(), Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.0.send(&[&protocol::frame_header(protocol::FRAME_WRITE, bytes.len()), &bytes])
    }

    fn remove(&self, path: String) -> Result<(), Error> {
        self.0.send(&[&protocol::frame_header(protocol::FRAME_REMOVE, path.len()), path.as_bytes()])
    }

    fn commit(&self) -> Result<Vec<Written>, Error> {
        json(self.0.finish()?)
    }
}
