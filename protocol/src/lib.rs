//! The sidecar protocol: `turserver:store/files` over HTTP, for workers that
//! run in another runtime (Spin) and reach a turserver host's store through
//! the store adapter. This crate is the one definition of the wire: the host
//! (`host/src/sidecar`) parses what the adapter (`worker/adapter`) encodes,
//! both with the types here, and it compiles natively and to wasm.
//!
//! # Requests
//! Every request carries `Authorization: Bearer <sidecar token>`; write calls
//! also carry the client's own `Authorization` header, unread by the worker,
//! as [`CLIENT_AUTHORIZATION`]. Query values are percent-encoded; WIT
//! values travel as JSON (the serde form of the generated types).
//!
//! | call              | request                                                          | success            |
//! |-------------------|------------------------------------------------------------------|--------------------|
//! | `stat`            | `GET /v1/stat?path=&inline=&site=`                               | 200 `metadata`     |
//! | `read`            | `GET /v1/read?version=&encoding=&offset=&len=`                   | 200 the bytes      |
//! | `list-files`      | `GET /v1/list?prefix=&cursor=&limit=`                            | 200 `listing`      |
//! | `begin-upload`…   | `PUT /v1/upload?path=&content-type=&size-hint=&expect=`, body    | 200 `written`      |
//! | `begin-batch`…    | `POST /v1/batch`, body of frames ([`frame_header`])              | 200 `list<written>`|
//! | `delete`          | `DELETE /v1/file?path=&expect=`                                  | 204                |
//! | `site-config`     | `GET /v1/site-config`                                            | 200 JSON, or 204   |
//! | `set-site-config` | `PUT /v1/site-config`, body                                      | 204                |
//! | `check-write`     | `GET /v1/check-write`                                            | 204                |
//!
//! `stat` with `inline=N` may append a body of at most N bytes after the
//! metadata JSON; with `site=1` the site document comes along too (a GET
//! through the adapter then makes one call). See [`StatAnswer`].
//!
//! # Errors
//! A failure answers the WIT `error` as JSON ([`Error`]) with the status the
//! worker gives it ([`Error::status`]).

use serde::{Deserialize, Serialize};

/// Header carrying the client's own `Authorization` value on writes.
pub const CLIENT_AUTHORIZATION: &str = "turserver-client-authorization";
/// Header of a `stat` answer with an inlined body: the metadata JSON's length.
pub const INLINE_HEADER: &str = "turserver-inline";
/// Header of a `stat` answer that carries the site document: its length,
/// or `none` when no document is stored.
pub const SITE_HEADER: &str = "turserver-site";
/// Largest body `stat` inlines, whatever the request asks.
pub const MAX_INLINE: u64 = 1 << 20;
/// Largest site rules document the store takes (the worker reads no more
/// of a request body; the host refuses more from any worker).
pub const MAX_SITE_CONFIG: usize = 64 << 10;
/// Largest `A` frame (a path and a content type) in a batch body.
pub const MAX_ADD_FRAME: usize = 64 << 10;

/// Top-level path segments that belong to the host and the API: no file is
/// written there, and no public route serves or lists what the host keeps
/// there (the deployed worker).
pub const RESERVED_TOP_LEVEL: [&str; 2] = ["_api", "_turserver"];

/// Whether a store path (no leading slash) lies under a reserved top-level
/// segment.
pub fn is_reserved(path: &str) -> bool {
    let first = path.split('/').next().unwrap_or_default();
    RESERVED_TOP_LEVEL.contains(&first)
}

/// Longest media type a file may be stored with.
pub const MAX_MEDIA_TYPE: usize = 256;

/// Whether `value` can be stored as a file's media type and sent back as a
/// `Content-Type` header: 1 to [`MAX_MEDIA_TYPE`] bytes of visible ASCII,
/// spaces and tabs, not blank (no CR, LF or other control characters).
pub fn valid_media_type(value: &str) -> bool {
    !value.trim().is_empty()
        && value.len() <= MAX_MEDIA_TYPE
        && value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The WIT `error` variant of `turserver:store/files`, as it travels: its
/// JSON is the serde form of the generated bindings' type on either side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Error {
    NotFound,
    Unauthorized,
    Forbidden,
    TooLarge(u64),
    PreconditionFailed,
    Invalid(String),
    Unavailable(String),
    Internal(String),
}

impl Error {
    /// The HTTP status the worker answers this error with; the sidecar
    /// answers with the same, so the wire reads the same way.
    pub fn status(&self) -> u16 {
        match self {
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
}

/// What a conditional write expects at its path (the WIT `expectation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expectation {
    Absent,
    Hash(String),
}

/// What a key-value write expects (the WIT `kv.expectation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvExpectation {
    Absent,
    Present,
    Version(u64),
}

/// Headers of a `kv-get` answer, whose body is the value (204: absent).
pub const KV_VERSION_HEADER: &str = "turserver-kv-version";
/// When the entry expires (Unix seconds), if it does.
pub const KV_EXPIRES_HEADER: &str = "turserver-kv-expires";
/// The value's media type; absent for JSON.
pub const KV_TYPE_HEADER: &str = "turserver-kv-type";

/// One sidecar call, as the adapter sends it and the host parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `site`: also answer the site document.
    Stat { path: String, inline: u64, site: bool },
    Read { version: u64, encoding: String, offset: u64, len: u64 },
    List { prefix: String, cursor: Option<String>, limit: u32 },
    /// The body is the file.
    Upload { path: String, content_type: String, size_hint: Option<u64>, expect: Option<Expectation> },
    /// The body is a sequence of frames.
    Batch,
    Delete { path: String, expect: Option<Expectation> },
    SiteConfig,
    /// The body is the document.
    SetSiteConfig,
    /// Whether the client's credentials allow writes.
    CheckWrite,
    /// Key-value calls (added with kv@0.1.5); a set's body is the value.
    KvGet { key: String },
    KvSet { key: String, content_type: Option<String>, ttl: Option<u64>, expect: Option<KvExpectation> },
    KvDelete { key: String, expect: Option<KvExpectation> },
    KvList { prefix: String, cursor: Option<String>, limit: u32 },
}

impl Request {
    pub fn method(&self) -> &'static str {
        match self {
            Request::Stat { .. }
            | Request::Read { .. }
            | Request::List { .. }
            | Request::SiteConfig
            | Request::CheckWrite
            | Request::KvGet { .. }
            | Request::KvList { .. } => "GET",
            Request::Upload { .. } | Request::SetSiteConfig | Request::KvSet { .. } => "PUT",
            Request::Batch => "POST",
            Request::Delete { .. } | Request::KvDelete { .. } => "DELETE",
        }
    }

    /// Whether the call writes, and so carries the client's credentials.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Upload { .. } | Request::Batch | Request::Delete { .. } | Request::SetSiteConfig | Request::CheckWrite
        )
    }

    /// The call's name, as its target's last segment says it.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Stat { .. } => "stat",
            Request::Read { .. } => "read",
            Request::List { .. } => "list",
            Request::Upload { .. } => "upload",
            Request::Batch => "batch",
            Request::Delete { .. } => "file",
            Request::SiteConfig | Request::SetSiteConfig => "site-config",
            Request::CheckWrite => "check-write",
            Request::KvGet { .. } | Request::KvSet { .. } | Request::KvDelete { .. } => "kv",
            Request::KvList { .. } => "kv-list",
        }
    }

    /// The request target under a sidecar mounted at `prefix` (no trailing
    /// slash; empty for the root), e.g. `/v1/stat?path=a+b&inline=0`.
    pub fn target(&self, prefix: &str) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let expect = |e: &Option<Expectation>| e.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default());
        match self {
            Request::Stat { path, inline, site } => {
                query.append_pair("path", path).append_pair("inline", &inline.to_string());
                if *site {
                    query.append_pair("site", "1");
                }
            }
            Request::Read { version, encoding, offset, len } => {
                query
                    .append_pair("version", &version.to_string())
                    .append_pair("encoding", encoding)
                    .append_pair("offset", &offset.to_string())
                    .append_pair("len", &len.to_string());
            }
            Request::List { prefix, cursor, limit } => {
                query.append_pair("prefix", prefix).append_pair("limit", &limit.to_string());
                if let Some(c) = cursor {
                    query.append_pair("cursor", c);
                }
            }
            Request::Upload { path, content_type, size_hint, expect: e } => {
                query.append_pair("path", path).append_pair("content-type", content_type);
                if let Some(n) = size_hint {
                    query.append_pair("size-hint", &n.to_string());
                }
                if let Some(e) = expect(e) {
                    query.append_pair("expect", &e);
                }
            }
            Request::Delete { path, expect: e } => {
                query.append_pair("path", path);
                if let Some(e) = expect(e) {
                    query.append_pair("expect", &e);
                }
            }
            Request::KvGet { key } => {
                query.append_pair("key", key);
            }
            Request::KvSet { key, content_type, ttl, expect: e } => {
                query.append_pair("key", key);
                if let Some(ct) = content_type {
                    query.append_pair("content-type", ct);
                }
                if let Some(t) = ttl {
                    query.append_pair("ttl", &t.to_string());
                }
                if let Some(e) = e {
                    query.append_pair("expect", &serde_json::to_string(e).unwrap_or_default());
                }
            }
            Request::KvDelete { key, expect: e } => {
                query.append_pair("key", key);
                if let Some(e) = e {
                    query.append_pair("expect", &serde_json::to_string(e).unwrap_or_default());
                }
            }
            Request::KvList { prefix, cursor, limit } => {
                query.append_pair("prefix", prefix).append_pair("limit", &limit.to_string());
                if let Some(c) = cursor {
                    query.append_pair("cursor", c);
                }
            }
            Request::Batch | Request::SiteConfig | Request::SetSiteConfig | Request::CheckWrite => {}
        }
        let query = query.finish();
        let mut target = format!("{prefix}/v1/{}", self.name());
        if !query.is_empty() {
            target.push('?');
            target.push_str(&query);
        }
        target
    }

    /// The call a request names; the error says what is wrong with it.
    pub fn parse(method: &str, path: &str, query: Option<&str>) -> Result<Request, Error> {
        let q = Query::parse(query);
        Ok(match (method, path) {
            ("GET", "/v1/stat") => {
                let inline = q.get("inline").map(|_| q.number("inline")).transpose()?.unwrap_or(0);
                Request::Stat { path: q.text("path")?, inline: inline.min(MAX_INLINE), site: q.get("site") == Some("1") }
            }
            ("GET", "/v1/read") => Request::Read {
                version: q.number("version")?,
                encoding: q.text("encoding")?,
                offset: q.number("offset")?,
                len: q.number("len")?,
            },
            ("GET", "/v1/list") => Request::List {
                prefix: q.get("prefix").unwrap_or_default().to_string(),
                cursor: q.get("cursor").map(str::to_string),
                limit: q.number("limit")?.min(u64::from(u32::MAX)) as u32,
            },
            ("PUT", "/v1/upload") => Request::Upload {
                path: q.text("path")?,
                content_type: q.text("content-type")?,
                size_hint: q.get("size-hint").map(|_| q.number("size-hint")).transpose()?,
                expect: q.expect()?,
            },
            ("POST", "/v1/batch") => Request::Batch,
            ("DELETE", "/v1/file") => Request::Delete { path: q.text("path")?, expect: q.expect()? },
            ("GET", "/v1/site-config") => Request::SiteConfig,
            ("PUT", "/v1/site-config") => Request::SetSiteConfig,
            ("GET", "/v1/check-write") => Request::CheckWrite,
            ("GET", "/v1/kv") => Request::KvGet { key: q.text("key")? },
            ("PUT", "/v1/kv") => Request::KvSet {
                key: q.text("key")?,
                content_type: q.get("content-type").map(str::to_string),
                ttl: q.get("ttl").map(|_| q.number("ttl")).transpose()?,
                expect: q.json("expect")?,
            },
            ("DELETE", "/v1/kv") => Request::KvDelete { key: q.text("key")?, expect: q.json("expect")? },
            ("GET", "/v1/kv-list") => Request::KvList {
                prefix: q.get("prefix").unwrap_or_default().to_string(),
                cursor: q.get("cursor").map(str::to_string),
                limit: q.number("limit")?.min(u64::from(u32::MAX)) as u32,
            },
            _ => return Err(Error::Invalid(format!("no sidecar call {method} {path}"))),
        })
    }
}

/// Query parameters, percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
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
        self.json("expect")
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        self.get(name)
            .map(|e| serde_json::from_str(e).map_err(|e| Error::Invalid(format!("bad {name}: {e}"))))
            .transpose()
    }
}

/// A `stat` answer's parts: the metadata JSON, then the site document
/// when asked for, then the file's body when it was inlined. The body is
/// their concatenation; [`INLINE_HEADER`] gives the JSON's length whenever
/// anything follows it, [`SITE_HEADER`] the document's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatAnswer {
    pub metadata: Vec<u8>,
    /// Some when the answer carries the site document (Some(None): none is
    /// stored); None when it does not (not asked, or an older sidecar).
    pub site: Option<Option<String>>,
    pub inline: Option<Vec<u8>>,
}

impl StatAnswer {
    /// The headers and body that carry it.
    pub fn encode(self) -> (Vec<(&'static str, String)>, Vec<u8>) {
        let mut headers = Vec::new();
        let mut body = self.metadata;
        if self.site.is_some() || self.inline.is_some() {
            headers.push((INLINE_HEADER, body.len().to_string()));
        }
        match self.site {
            Some(Some(doc)) => {
                headers.push((SITE_HEADER, doc.len().to_string()));
                body.extend_from_slice(doc.as_bytes());
            }
            Some(None) => headers.push((SITE_HEADER, "none".into())),
            None => {}
        }
        if let Some(inline) = self.inline {
            body.extend_from_slice(&inline);
        }
        (headers, body)
    }

    /// Splits an answer's body by its headers (`header` looks one up); the
    /// error says what is wrong with it.
    pub fn decode<'a>(header: impl Fn(&str) -> Option<&'a str>, mut body: Vec<u8>) -> Result<StatAnswer, String> {
        let short = || "unexpected answer from the store sidecar: a short stat answer".to_string();
        let Some(json_len) = header(INLINE_HEADER).and_then(|v| v.trim().parse::<usize>().ok()) else {
            return Ok(StatAnswer { metadata: body, site: None, inline: None });
        };
        if json_len > body.len() {
            return Err(short());
        }
        let mut rest = body.split_off(json_len);
        let site = match header(SITE_HEADER).map(str::trim) {
            None => None,
            Some("none") => Some(None),
            Some(len) => {
                let len: usize = len.parse().map_err(|_| short())?;
                if len > rest.len() {
                    return Err(short());
                }
                let tail = rest.split_off(len);
                let doc = String::from_utf8(std::mem::replace(&mut rest, tail)).map_err(|_| short())?;
                Some(Some(doc))
            }
        };
        let inline = (!rest.is_empty() || (site.is_none())).then_some(rest);
        Ok(StatAnswer { metadata: body, site, inline })
    }
}

/// Kind of a batch frame that starts a file; its payload is [`add_payload`].
pub const FRAME_ADD: u8 = b'A';
/// Kind of a batch frame that appends bytes to the current file.
pub const FRAME_WRITE: u8 = b'W';

/// Kind of a batch frame that removes a file when the batch commits; its
/// payload is the path, UTF-8. Added with files@0.1.4.
pub const FRAME_REMOVE: u8 = b'R';

/// A batch body frame's header: one byte of kind, the payload's length as a
/// big-endian `u32`. The body's end commits the batch.
pub fn frame_header(kind: u8, payload_len: usize) -> [u8; 5] {
    let len = (payload_len as u32).to_be_bytes();
    [kind, len[0], len[1], len[2], len[3]]
}

/// The payload of an `A` frame: the file's path and content type.
pub fn add_payload(path: &str, content_type: &str) -> Vec<u8> {
    serde_json::to_vec(&(path, content_type)).unwrap_or_default()
}

/// What a batch body asks for, piece by piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Add { path: String, content_type: String },
    /// Bytes of the current file, in whatever pieces the body brought them.
    Write(Vec<u8>),
    /// Remove this path when the batch commits.
    Remove(String),
}

/// Splits a batch body into [`Piece`]s as its bytes arrive.
#[derive(Default)]
pub struct FrameReader {
    buf: bytes::BytesMut,
    /// Payload bytes of the current `W` frame still to come.
    writing: usize,
}

impl FrameReader {
    /// Takes the next bytes of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete piece, or None until more bytes arrive.
    pub fn next_piece(&mut self) -> Result<Option<Piece>, Error> {
        use bytes::Buf;
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
            FRAME_WRITE => {
                self.buf.advance(5);
                self.writing = len;
                // An empty frame: go on to whatever follows it.
                self.next_piece()
            }
            FRAME_ADD | FRAME_REMOVE if len > MAX_ADD_FRAME => Err(Error::Invalid("batch frame too large".into())),
            FRAME_ADD | FRAME_REMOVE if self.buf.len() < 5 + len => Ok(None),
            FRAME_REMOVE => {
                self.buf.advance(5);
                let payload = self.buf.split_to(len);
                let path = String::from_utf8(payload.to_vec())
                    .map_err(|_| Error::Invalid("bad batch frame: a path that is not UTF-8".into()))?;
                Ok(Some(Piece::Remove(path)))
            }
            FRAME_ADD => {
                self.buf.advance(5);
                let payload = self.buf.split_to(len);
                let (path, content_type): (String, String) = serde_json::from_slice(&payload)
                    .map_err(|e| Error::Invalid(format!("bad batch frame: {e}")))?;
                Ok(Some(Piece::Add { path, content_type }))
            }
            other => Err(Error::Invalid(format!("unknown batch frame kind {other:#04x}"))),
        }
    }

    /// Checks the body ended between frames.
    pub fn finish(&self) -> Result<(), Error> {
        if !self.buf.is_empty() || self.writing > 0 {
            return Err(Error::Invalid("batch body ends inside a frame".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(target: &str) -> (&str, Option<&str>) {
        match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        }
    }

    #[test]
    fn every_call_round_trips() {
        let calls = [
            Request::Stat { path: "a b/ü&x=1".into(), inline: 65536, site: false },
            Request::Stat { path: "a".into(), inline: 0, site: true },
            Request::Read { version: 7, encoding: "br".into(), offset: u64::MAX, len: 3 },
            Request::List { prefix: "img/".into(), cursor: Some("img/b.png".into()), limit: 100 },
            Request::List { prefix: String::new(), cursor: None, limit: 1 },
            Request::Upload {
                path: "x.txt".into(),
                content_type: "text/plain; charset=utf-8".into(),
                size_hint: Some(12),
                expect: Some(Expectation::Hash("abc".into())),
            },
            Request::Upload { path: "y".into(), content_type: "a/b".into(), size_hint: None, expect: None },
            Request::Batch,
            Request::Delete { path: "d".into(), expect: Some(Expectation::Absent) },
            Request::SiteConfig,
            Request::SetSiteConfig,
            Request::CheckWrite,
            Request::KvGet { key: "flags/a b&c".into() },
            Request::KvSet {
                key: "k".into(),
                content_type: Some("image/png".into()),
                ttl: Some(60),
                expect: Some(KvExpectation::Version(3)),
            },
            Request::KvSet { key: "k".into(), content_type: None, ttl: None, expect: Some(KvExpectation::Present) },
            Request::KvDelete { key: "k".into(), expect: Some(KvExpectation::Absent) },
            Request::KvDelete { key: "k".into(), expect: None },
            Request::KvList { prefix: "a/".into(), cursor: Some("a/b".into()), limit: 10 },
        ];
        for call in calls {
            let target = call.target("/store");
            let (path, query) = split(target.strip_prefix("/store").unwrap());
            assert_eq!(Request::parse(call.method(), path, query), Ok(call.clone()), "{target}");
        }
    }

    #[test]
    fn stat_answers_round_trip() {
        let meta = br#"{"path":"a"}"#.to_vec();
        let cases = [
            StatAnswer { metadata: meta.clone(), site: None, inline: None },
            StatAnswer { metadata: meta.clone(), site: None, inline: Some(b"body".to_vec()) },
            StatAnswer { metadata: meta.clone(), site: None, inline: Some(Vec::new()) },
            StatAnswer { metadata: meta.clone(), site: Some(None), inline: Some(b"body".to_vec()) },
            StatAnswer { metadata: meta.clone(), site: Some(Some(r#"{"spa_fallback":"i.html"}"#.into())), inline: None },
            StatAnswer { metadata: meta.clone(), site: Some(Some("{}".into())), inline: Some(b"x".to_vec()) },
        ];
        for answer in cases {
            let (headers, body) = answer.clone().encode();
            let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
            assert_eq!(StatAnswer::decode(header, body).unwrap(), answer);
        }
        // A length past the body is refused, not read past.
        let header = |name: &str| match name {
            INLINE_HEADER => Some("3"),
            SITE_HEADER => Some("99"),
            _ => None,
        };
        assert!(StatAnswer::decode(header, b"{}xyz".to_vec()).is_err());
    }

    #[test]
    fn targets_are_percent_encoded() {
        let stat = Request::Stat { path: "a b/ü&x=1".into(), inline: 0, site: false };
        assert_eq!(stat.target("/p"), "/p/v1/stat?path=a+b%2F%C3%BC%26x%3D1&inline=0");
        assert_eq!(Request::SiteConfig.target(""), "/v1/site-config");
    }

    #[test]
    fn bad_calls_say_what_is_wrong() {
        assert_eq!(Request::parse("GET", "/v1/nope", None), Err(Error::Invalid("no sidecar call GET /v1/nope".into())));
        assert_eq!(Request::parse("GET", "/v1/stat", None), Err(Error::Invalid("missing path".into())));
        let bad = Request::parse("GET", "/v1/read", Some("version=x&encoding=identity&offset=0&len=1"));
        assert_eq!(bad, Err(Error::Invalid("version is not a number".into())));
        let inline = Request::parse("GET", "/v1/stat", Some("path=a&inline=99999999999")).unwrap();
        assert_eq!(inline, Request::Stat { path: "a".into(), inline: MAX_INLINE, site: false });
    }

    #[test]
    fn reserved_paths_and_media_types() {
        assert!(is_reserved("_turserver/worker.wasm") && is_reserved("_api/x") && is_reserved("_api"));
        assert!(!is_reserved("api/x") && !is_reserved("x/_turserver") && !is_reserved("_apix/y"));
        assert!(valid_media_type("text/html; charset=utf-8"));
        for bad in ["", "  ", "text/html\r\nx-evil: 1", "a\u{7f}", "\u{e9}t\u{e9}"] {
            assert!(!valid_media_type(bad), "{bad:?}");
        }
        assert!(!valid_media_type(&"a".repeat(MAX_MEDIA_TYPE + 1)));
    }

    #[test]
    fn errors_keep_their_json_and_status() {
        assert_eq!(serde_json::to_string(&Error::NotFound).unwrap(), r#""NotFound""#);
        assert_eq!(serde_json::to_string(&Error::TooLarge(5)).unwrap(), r#"{"TooLarge":5}"#);
        assert_eq!(Error::Unavailable("x".into()).status(), 503);
    }

    #[test]
    fn frames_round_trip_split_at_every_byte() {
        let mut body = Vec::new();
        let add = add_payload("a.txt", "text/plain");
        body.extend(frame_header(FRAME_ADD, add.len()));
        body.extend(&add);
        body.extend(frame_header(FRAME_WRITE, 11));
        body.extend(b"hello world");
        body.extend(frame_header(FRAME_WRITE, 0));
        body.extend(frame_header(FRAME_REMOVE, 9));
        body.extend(b"old/x.css");
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        for b in body {
            reader.push(&[b]);
            while let Some(p) = reader.next_piece().unwrap() {
                got.push(p);
            }
        }
        reader.finish().unwrap();
        assert_eq!(got[0], Piece::Add { path: "a.txt".into(), content_type: "text/plain".into() });
        assert_eq!(got.pop(), Some(Piece::Remove("old/x.css".into())));
        let written: Vec<u8> = got[1..]
            .iter()
            .flat_map(|p| match p {
                Piece::Write(b) => b.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(written, b"hello world");
    }

    #[test]
    fn frames_refuse_unknown_kinds_and_cut_bodies() {
        let mut reader = FrameReader::default();
        reader.push(&frame_header(b'X', 0));
        assert!(matches!(reader.next_piece(), Err(Error::Invalid(_))));
        let mut cut = FrameReader::default();
        cut.push(&frame_header(FRAME_WRITE, 4));
        cut.push(b"ab");
        while cut.next_piece().unwrap().is_some() {}
        assert!(cut.finish().is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Files framed by the adapter come out of the host's reader as they
        /// went in, however the body is split.
        #[test]
        fn framed_files_come_back_whole(
            files in prop::collection::vec(("[a-z/]{1,20}", prop::collection::vec(any::<u8>(), 0..300)), 0..5),
            cut in 1usize..64,
        ) {
            let mut body = Vec::new();
            for (path, bytes) in &files {
                let add = add_payload(path, "text/plain");
                body.extend(frame_header(FRAME_ADD, add.len()));
                body.extend(&add);
                body.extend(frame_header(FRAME_WRITE, bytes.len()));
                body.extend(bytes);
            }
            let mut reader = FrameReader::default();
            let mut got: Vec<(String, Vec<u8>)> = Vec::new();
            for piece in body.chunks(cut) {
                reader.push(piece);
                while let Some(p) = reader.next_piece().unwrap() {
                    match p {
                        Piece::Add { path, .. } => got.push((path, Vec::new())),
                        Piece::Write(b) => got.last_mut().unwrap().1.extend(b),
                        Piece::Remove(p) => panic!("no remove frame was sent, got {p:?}"),
                    }
                }
            }
            reader.finish().unwrap();
            prop_assert_eq!(got, files);
        }

        /// Any bytes are read as frames or refused, never more than they hold.
        #[test]
        fn any_body_is_framed_or_refused(body in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut reader = FrameReader::default();
            reader.push(&body);
            let mut written = 0;
            while let Ok(Some(p)) = reader.next_piece() {
                if let Piece::Write(b) = p {
                    written += b.len();
                }
            }
            prop_assert!(written <= body.len());
        }

        /// Any query is parsed into a call or refused with a reason.
        #[test]
        fn any_query_is_a_call_or_a_reason(query in "[a-z=&%0-9.-]{0,40}", which in 0usize..8) {
            let (method, path) = [
                ("GET", "/v1/stat"), ("GET", "/v1/read"), ("GET", "/v1/list"), ("PUT", "/v1/upload"),
                ("POST", "/v1/batch"), ("DELETE", "/v1/file"), ("GET", "/v1/site-config"), ("PUT", "/v1/site-config"),
            ][which];
            if let Err(e) = Request::parse(method, path, Some(&query)) {
                prop_assert_eq!(e.status(), 400);
            }
        }
    }
}
