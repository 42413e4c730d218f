//! HTTP conformance: a table of requests and the exact responses a CDN or
//! browser relies on (RFC 9110 conditional requests, ranges, content
//! negotiation), plus site rules, against the real binary.

use crate::support::*;
use std::io::Read;

/// Upload limit of the server under test, small enough to test 413.
const MAX_UPLOAD: usize = 64 * 1024;

#[derive(Debug, Clone)]
enum H {
    Eq(String),
    Prefix(String),
    Absent,
}

#[derive(Debug, Clone)]
enum B {
    Any,
    Empty,
    Exact(Vec<u8>),
    Contains(&'static str),
    /// The body decoded with this content coding equals the bytes.
    Decoded(&'static str, Vec<u8>),
    /// multipart/byteranges whose parts are these (Content-Range, bytes).
    Multipart(Vec<(String, Vec<u8>)>),
}

#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    status: u16,
    expect: Vec<(&'static str, H)>,
    expect_body: B,
}

fn case(name: &'static str, method: &'static str, path: &str, status: u16) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers: vec![],
        body: None,
        status,
        expect: vec![],
        expect_body: B::Any,
    }
}

impl Case {
    fn h(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = Some(b.into());
        self
    }
    fn auth(self) -> Self {
        self.h("authorization", format!("Bearer {TOKEN}"))
    }
    fn eq(mut self, name: &'static str, v: impl Into<String>) -> Self {
        self.expect.push((name, H::Eq(v.into())));
        self
    }
    fn prefix(mut self, name: &'static str, v: impl Into<String>) -> Self {
        self.expect.push((name, H::Prefix(v.into())));
        self
    }
    fn absent(mut self, name: &'static str) -> Self {
        self.expect.push((name, H::Absent));
        self
    }
    fn then(mut self, b: B) -> Self {
        self.expect_body = b;
        self
    }
}

fn decode(encoding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "br" => brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out).map(|_| ()),
        "gzip" => flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).map(|_| ()),
        "zstd" => zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut out)).map(|_| ()),
        other => panic!("unknown coding {other}"),
    }
    .unwrap_or_else(|e| panic!("decoding {encoding}: {e}"));
    out
}

/// Splits a multipart/byteranges body into (Content-Range, bytes) parts.
fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type.split("boundary=").nth(1).expect("boundary").trim();
    let delimiter = format!("\r\n--{boundary}");
    let text = body;
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let pos = find(rest, delimiter.as_bytes()).expect("delimiter");
        rest = &rest[pos + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let head_end = find(rest, b"\r\n\r\n").expect("part headers");
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let range = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-range: ").map(str::to_string))
            .expect("part content-range");
        rest = &rest[head_end + 4..];
        let next = find(rest, delimiter.as_bytes()).expect("next delimiter");
        parts.push((range, rest[..next].to_vec()));
        rest = &rest[next..];
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn run(s: &Server, c: &Case) {
    let client = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut req = client.request(c.method.parse().unwrap(), s.url(&c.path));
    for (n, v) in &c.headers {
        req = req.header(*n, v);
    }
    if let Some(b) = &c.body {
        req = req.body(b.clone());
    }
    let resp = req.send().unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().unwrap().to_vec();
    let show = || format!("{}: {} {} -> {status} {headers:?} {:?}", c.name, c.method, c.path, String::from_utf8_lossy(&body[..body.len().min(200)]));
    assert_eq!(status, c.status, "{}", show());
    for (name, check) in &c.expect {
        let got = headers.get(*name).map(|v| v.to_str().unwrap().to_string());
        match check {
            H::Eq(v) => assert_eq!(got.as_deref(), Some(v.as_str()), "header {name}: {}", show()),
            H::Prefix(v) => assert!(got.as_deref().is_some_and(|g| g.starts_with(v.as_str())), "header {name}: {}", show()),
            H::Absent => assert_eq!(got, None, "header {name}: {}", show()),
        }
    }
    match &c.expect_body {
        B::Any => {}
        B::Empty => assert!(body.is_empty(), "body should be empty: {}", show()),
        B::Exact(b) => assert!(body == *b, "body differs ({} vs {} bytes): {}", body.len(), b.len(), show()),
        B::Contains(t) => assert!(String::from_utf8_lossy(&body).contains(t), "body lacks {t:?}: {}", show()),
        B::Decoded(enc, b) => {
            assert_eq!(headers.get("content-encoding").map(|v| v.to_str().unwrap()), Some(*enc), "{}", show());
            assert!(decode(enc, &body) == *b, "decoded {enc} body differs: {}", show());
        }
        B::Multipart(parts) => {
            let ct = headers["content-type"].to_str().unwrap();
            assert_eq!(parse_multipart(ct, &body), *parts, "{}", show());
        }
    }
}

struct Fixture {
    data: Vec<u8>,
    data_tag: String,
    data_lm: String,
    app: Vec<u8>,
    app_hash: String,
    br: Vec<u8>,
    index: Vec<u8>,
    docs: Vec<u8>,
    not_found: Vec<u8>,
    cas_tag: String,
}

fn setup(s: &Server) -> Fixture {
    let put = |path: &str, ct: Option<&str>, body: Vec<u8>| {
        let r = s.put(path, ct, body);
        assert!(r.status() == 201, "setup PUT {path}: {}", r.status());
    };
    let data = pseudo_random(1000, 42);
    put("/data.bin", Some("application/octet-stream"), data.clone());
    let app = "function hello(name) { return 'hello ' + name; }\n".repeat(400).into_bytes();
    put("/app.js", None, app.clone());
    put("/assets/app.3f2a1b9c.js", None, b"console.log(1)".to_vec());
    put("/style.css", None, b"body{}".to_vec());
    let index = b"<!doctype html><h1>home</h1>".to_vec();
    put("/index.html", None, index.clone());
    let docs = b"<h1>docs</h1>".to_vec();
    put("/docs/index.html", None, docs.clone());
    let not_found = b"<h1>custom 404</h1>".to_vec();
    put("/404.html", None, not_found.clone());
    put("/w/stale.txt", None, b"original".to_vec());
    put("/w/cas.txt", None, b"v1".to_vec());
    put("/w/del.txt", None, b"keep me".to_vec());
    let rules = r#"{
        "spa_fallback": "index.html",
        "not_found_page": "404.html",
        "cache_control": [{"glob": "*.css", "value": "public, max-age=600"}],
        "cors": {"allow_origins": ["https://app.example"], "allow_methods": ["GET", "HEAD", "PUT"],
                 "allow_headers": ["content-type"], "max_age": 600}
    }"#;
    let r = client().put(s.url("/_api/site")).bearer_auth(TOKEN).body(rules).send().unwrap();
    assert_eq!(r.status(), 200, "setting site rules: {}", r.text().unwrap());

    let r = s.get("/data.bin");
    let data_tag = r.headers()["etag"].to_str().unwrap().to_string();
    let data_lm = r.headers()["last-modified"].to_str().unwrap().to_string();
    let r = client().get(s.url("/app.js")).header("accept-encoding", "br").send().unwrap();
    assert_eq!(r.headers()["content-encoding"], "br", "app.js is stored brotli-compressed");
    let br = r.bytes().unwrap().to_vec();
    let cas_tag = s.get("/w/cas.txt").headers()["etag"].to_str().unwrap().to_string();
    Fixture { app_hash: sha256_hex(&app), data, data_tag, data_lm, app, br, index, docs, not_found, cas_tag }
}

fn cases(f: &Fixture) -> Vec<Case> {
    let d = &f.data;
    let tag = f.data_tag.clone();
    let lm = f.data_lm.clone();
    let earlier = "Mon, 01 Jan 2001 00:00:00 GMT";
    let br_tag = format!("\"{}-br\"", f.app_hash);
    let len = d.len();
    vec![
        // Plain reads.
        case("get whole file", "GET", "/data.bin", 200)
            .eq("content-length", len.to_string())
            .eq("content-type", "application/octet-stream")
            .eq("accept-ranges", "bytes")
            .eq("etag", tag.clone())
            .eq("cache-control", "no-cache")
            .absent("vary")
            .then(B::Exact(d.clone())),
        case("head has headers only", "HEAD", "/data.bin", 200)
            .eq("content-length", len.to_string())
            .eq("etag", tag.clone())
            .then(B::Empty),
        case("root serves index.html", "GET", "/", 200)
            .eq("content-type", "text/html; charset=utf-8")
            .eq("cache-control", "no-cache")
            .then(B::Exact(f.index.clone())),
        case("hashed asset is immutable", "GET", "/assets/app.3f2a1b9c.js", 200)
            .eq("cache-control", "public, max-age=31536000, immutable"),
        case("cache-control glob rule", "GET", "/style.css", 200).eq("cache-control", "public, max-age=600"),
        // Conditional GET and HEAD.
        case("if-none-match strong tag gives 304", "GET", "/data.bin", 304)
            .h("if-none-match", tag.clone())
            .eq("etag", tag.clone())
            .eq("cache-control", "no-cache")
            .eq("last-modified", lm.clone())
            .then(B::Empty),
        case("if-none-match weak form gives 304", "GET", "/data.bin", 304).h("if-none-match", format!("W/{tag}")),
        case("if-none-match other tag gives 200", "GET", "/data.bin", 200).h("if-none-match", "\"other\"").then(B::Exact(d.clone())),
        case("if-none-match star gives 304", "GET", "/data.bin", 304).h("if-none-match", "*"),
        case("if-none-match list gives 304", "GET", "/data.bin", 304).h("if-none-match", format!("\"a\", \"b\", {tag}")),
        case("if-modified-since equal gives 304", "GET", "/data.bin", 304).h("if-modified-since", lm.clone()).eq("etag", tag.clone()),
        case("if-modified-since earlier gives 200", "GET", "/data.bin", 200).h("if-modified-since", earlier),
        case("if-modified-since garbage is ignored", "GET", "/data.bin", 200).h("if-modified-since", "yesterday"),
        case("if-none-match overrides if-modified-since", "GET", "/data.bin", 200)
            .h("if-none-match", "\"other\"")
            .h("if-modified-since", lm.clone()),
        case("head with if-none-match gives 304", "HEAD", "/data.bin", 304).h("if-none-match", tag.clone()),
        case("if-match current tag gives 200", "GET", "/data.bin", 200).h("if-match", tag.clone()),
        case("if-match other tag gives 412", "GET", "/data.bin", 412).h("if-match", "\"other\""),
        case("if-match weak tag gives 412", "GET", "/data.bin", 412).h("if-match", format!("W/{tag}")),
        case("if-match star gives 200", "GET", "/data.bin", 200).h("if-match", "*"),
        case("if-unmodified-since equal gives 200", "GET", "/data.bin", 200).h("if-unmodified-since", lm.clone()),
        case("if-unmodified-since earlier gives 412", "GET", "/data.bin", 412).h("if-unmodified-since", earlier),
        // RFC 9110 13.2.1: preconditions are ignored when the response
        // without them would not be 2xx.
        case("if-match on a missing file stays 404", "GET", "/nope.bin", 404).h("if-match", "*").h("accept", "image/png"),
        // Ranges.
        case("range first 100", "GET", "/data.bin", 206)
            .h("range", "bytes=0-99")
            .eq("content-range", format!("bytes 0-99/{len}"))
            .eq("content-length", "100")
            .then(B::Exact(d[..100].to_vec())),
        case("range open-ended", "GET", "/data.bin", 206)
            .h("range", "bytes=900-")
            .eq("content-range", format!("bytes 900-999/{len}"))
            .then(B::Exact(d[900..].to_vec())),
        case("range suffix", "GET", "/data.bin", 206)
            .h("range", "bytes=-100")
            .eq("content-range", format!("bytes 900-999/{len}"))
            .then(B::Exact(d[900..].to_vec())),
        case("range past the end is clipped", "GET", "/data.bin", 206)
            .h("range", "bytes=990-5000")
            .eq("content-range", format!("bytes 990-999/{len}"))
            .then(B::Exact(d[990..].to_vec())),
        case("range of one byte", "GET", "/data.bin", 206).h("range", "bytes=0-0").then(B::Exact(d[..1].to_vec())),
        case("range crossing nothing gives 416", "GET", "/data.bin", 416)
            .h("range", format!("bytes={len}-"))
            .eq("content-range", format!("bytes */{len}")),
        case("empty suffix gives 416", "GET", "/data.bin", 416).h("range", "bytes=-0").eq("content-range", format!("bytes */{len}")),
        case("reversed range is ignored", "GET", "/data.bin", 200).h("range", "bytes=5-1").then(B::Exact(d.clone())),
        case("other unit is ignored", "GET", "/data.bin", 200).h("range", "items=0-1").then(B::Exact(d.clone())),
        case("garbage range is ignored", "GET", "/data.bin", 200).h("range", "bytes=abc").then(B::Exact(d.clone())),
        case("two ranges give multipart", "GET", "/data.bin", 206)
            .h("range", "bytes=0-9,500-509")
            .prefix("content-type", "multipart/byteranges; boundary=")
            .then(B::Multipart(vec![
                (format!("bytes 0-9/{len}"), d[..10].to_vec()),
                (format!("bytes 500-509/{len}"), d[500..510].to_vec()),
            ])),
        case("if-range current tag honours range", "GET", "/data.bin", 206)
            .h("range", "bytes=0-9")
            .h("if-range", tag.clone())
            .then(B::Exact(d[..10].to_vec())),
        case("if-range stale tag serves whole", "GET", "/data.bin", 200)
            .h("range", "bytes=0-9")
            .h("if-range", "\"stale\"")
            .then(B::Exact(d.clone())),
        case("if-range current date honours range", "GET", "/data.bin", 206)
            .h("range", "bytes=10-19")
            .h("if-range", lm.clone())
            .then(B::Exact(d[10..20].to_vec())),
        case("if-range old date serves whole", "GET", "/data.bin", 200).h("range", "bytes=10-19").h("if-range", earlier),
        case("head ignores range", "HEAD", "/data.bin", 200).h("range", "bytes=0-9").eq("content-length", len.to_string()),
        case("precondition before range", "GET", "/data.bin", 304).h("range", "bytes=0-9").h("if-none-match", tag.clone()),
        // Content codings.
        case("brotli", "GET", "/app.js", 200)
            .h("accept-encoding", "br")
            .eq("vary", "Accept-Encoding")
            .eq("etag", br_tag.clone())
            .then(B::Decoded("br", f.app.clone())),
        case("gzip", "GET", "/app.js", 200).h("accept-encoding", "gzip").then(B::Decoded("gzip", f.app.clone())),
        case("zstd", "GET", "/app.js", 200).h("accept-encoding", "zstd").then(B::Decoded("zstd", f.app.clone())),
        case("q-values pick gzip", "GET", "/app.js", 200)
            .h("accept-encoding", "br;q=0.2, gzip;q=0.9, zstd;q=0.5")
            .then(B::Decoded("gzip", f.app.clone())),
        case("no accept-encoding gives identity", "GET", "/app.js", 200)
            .eq("vary", "Accept-Encoding")
            .absent("content-encoding")
            .eq("etag", format!("\"{}\"", f.app_hash))
            .then(B::Exact(f.app.clone())),
        case("identity refused but gzip accepted", "GET", "/app.js", 200)
            .h("accept-encoding", "gzip;q=0.5, identity;q=0")
            .then(B::Decoded("gzip", f.app.clone())),
        case("identity refused and nothing else: 406", "GET", "/data.bin", 406).h("accept-encoding", "identity;q=0"),
        case("star excludes only what it must", "GET", "/app.js", 200)
            .h("accept-encoding", "br;q=0, *;q=0.5")
            .prefix("content-encoding", ""),
        case("range applies to the encoded bytes", "GET", "/app.js", 206)
            .h("accept-encoding", "br")
            .h("range", "bytes=0-9")
            .eq("content-encoding", "br")
            .eq("content-range", format!("bytes 0-9/{}", f.br.len()))
            .then(B::Exact(f.br[..10].to_vec())),
        case("304 for the encoded tag", "GET", "/app.js", 304).h("accept-encoding", "br").h("if-none-match", br_tag.clone()),
        case("other representation's tag gives 200", "GET", "/app.js", 200)
            .h("accept-encoding", "gzip")
            .h("if-none-match", br_tag.clone()),
        case("incompressible file has no variants", "GET", "/data.bin", 200)
            .h("accept-encoding", "br, gzip")
            .absent("content-encoding")
            .absent("vary"),
        // Site rules.
        case("directory without slash redirects", "GET", "/docs", 301).eq("location", "/docs/"),
        case("redirect keeps the query", "GET", "/docs?x=1&y=2", 301).eq("location", "/docs/?x=1&y=2"),
        case("directory index", "GET", "/docs/", 200).then(B::Exact(f.docs.clone())),
        case("spa fallback for html", "GET", "/app/some/route", 200)
            .h("accept", "text/html,application/xhtml+xml")
            .then(B::Exact(f.index.clone())),
        case("custom 404 page", "GET", "/missing.png", 404)
            .h("accept", "image/png")
            .eq("content-type", "text/html; charset=utf-8")
            .then(B::Exact(f.not_found.clone())),
        case("custom 404 for head has no body", "HEAD", "/missing.png", 404).h("accept", "image/png").then(B::Empty),
        // CORS.
        case("preflight allowed", "OPTIONS", "/data.bin", 204)
            .h("origin", "https://app.example")
            .h("access-control-request-method", "PUT")
            .eq("access-control-allow-origin", "https://app.example")
            .eq("access-control-allow-methods", "GET, HEAD, PUT")
            .eq("access-control-allow-headers", "content-type")
            .eq("access-control-max-age", "600"),
        case("preflight from another origin", "OPTIONS", "/data.bin", 403)
            .h("origin", "https://evil.example")
            .h("access-control-request-method", "GET")
            .absent("access-control-allow-origin"),
        case("preflight for a method not allowed", "OPTIONS", "/data.bin", 403)
            .h("origin", "https://app.example")
            .h("access-control-request-method", "DELETE"),
        case("cors on a simple request", "GET", "/data.bin", 200)
            .h("origin", "https://app.example")
            .eq("access-control-allow-origin", "https://app.example")
            .eq("vary", "Origin"),
        case("no cors for other origins", "GET", "/data.bin", 200).h("origin", "https://evil.example").absent("access-control-allow-origin"),
        // Methods.
        case("options without preflight", "OPTIONS", "/data.bin", 204).eq("allow", "GET, HEAD, PUT, DELETE, OPTIONS"),
        case("unknown method gives 405", "PATCH", "/data.bin", 405).eq("allow", "GET, HEAD, PUT, DELETE, OPTIONS"),
        case("listing is read-only", "POST", "/_api/files", 405).eq("allow", "GET, HEAD"),
        // Conditional and bounded writes.
        case("put with stale if-match gives 412", "PUT", "/w/stale.txt", 412).auth().h("if-match", "\"stale\"").body("overwrite"),
        case("stale put changed nothing", "GET", "/w/stale.txt", 200).then(B::Exact(b"original".to_vec())),
        case("create-only put", "PUT", "/w/new.txt", 201).auth().h("if-none-match", "*").body("first"),
        case("create-only put when it exists", "PUT", "/w/new.txt", 412).auth().h("if-none-match", "*").body("second"),
        case("create-only kept the first", "GET", "/w/new.txt", 200).then(B::Exact(b"first".to_vec())),
        case("put with current if-match", "PUT", "/w/cas.txt", 204).auth().h("if-match", f.cas_tag.clone()).body("v2"),
        case("put with the now-stale tag", "PUT", "/w/cas.txt", 412).auth().h("if-match", f.cas_tag.clone()).body("v3"),
        case("cas kept v2", "GET", "/w/cas.txt", 200).then(B::Exact(b"v2".to_vec())),
        case("delete with stale if-match gives 412", "DELETE", "/w/del.txt", 412).auth().h("if-match", "\"stale\""),
        case("stale delete kept the file", "GET", "/w/del.txt", 200).then(B::Exact(b"keep me".to_vec())),
        case("upload over the limit gives 413", "PUT", "/w/huge.bin", 413).auth().body(vec![7u8; MAX_UPLOAD + 1]),
        case("nothing stored by the 413", "GET", "/w/huge.bin", 404).h("accept", "image/png"),
        case("invalid site rules give 400", "PUT", "/_api/site", 400)
            .auth()
            .body(r#"{"cors": {"allow_origins": ["not an origin"]}}"#)
            .then(B::Contains("allow_origins")),
        case("site rules need the token", "PUT", "/_api/site", 401).body("{}"),
        case("rules unchanged after refusals", "GET", "/_api/site", 200).then(B::Contains("\"spa_fallback\":\"index.html\"")),
    ]
}

#[test]
fn conformance_table() {
    let dir = TempDir::new("conformance");
    let limit = MAX_UPLOAD.to_string();
    let s = Server::start(dir.path(), &["--max-upload-size", &limit], None);
    let fixture = setup(&s);
    let table = cases(&fixture);
    assert!(table.len() >= 60, "the table has {} cases", table.len());
    for c in &table {
        run(&s, c);
    }
}

/// An upload whose client disconnects mid-body stores nothing.
#[test]
fn upload_cut_off_stores_nothing() {
    let s = Server::local();
    let request = format!(
        "PUT /cut.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 3000000\r\n\r\n"
    );
    let mut stream = std::net::TcpStream::connect(s.addr).unwrap();
    use std::io::Write;
    stream.write_all(request.as_bytes()).unwrap();
    // More than a chunk, so part of the body was already staged.
    stream.write_all(&pseudo_random(1_500_000, 9)).unwrap();
    drop(stream);
    let gone = eventually(std::time::Duration::from_secs(5), || {
        s.log().contains("discarding an unfinished upload").then_some(())
    });
    assert!(gone.is_some(), "the host did not discard the upload:\n{}", s.log());
    assert_eq!(client().get(s.url("/cut.bin")).send().unwrap().status(), 404);
    let list: serde_json::Value = s.get("/_api/files").json().unwrap();
    assert_eq!(list["files"].as_array().unwrap().len(), 0);
}

/// A chunked upload (no Content-Length) over the limit is refused while it
/// streams, and leaves nothing behind.
#[test]
fn chunked_upload_over_the_limit_is_refused() {
    let dir = TempDir::new("limit");
    let s = Server::start(dir.path(), &["--max-upload-size", "2000000"], None);
    let body = pseudo_random(3_000_000, 5);
    let reader = std::io::Cursor::new(body);
    let r = client()
        .put(s.url("/big.bin"))
        .bearer_auth(TOKEN)
        .body(reqwest::blocking::Body::new(reader))
        .send();
    // The server may answer 413 and close before the client finished sending.
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    assert_eq!(client().get(s.url("/big.bin")).send().unwrap().status(), 404);
}

/// An upload refused before its body arrives (413 from `Content-Length`)
/// still reaches a client that goes on sending: the server reads and
/// discards the body rather than resetting the connection, which then
/// serves the next request.
#[test]
fn a_refused_upload_lets_the_client_finish_sending() {
    let dir = TempDir::new("linger");
    let s = Server::start(dir.path(), &["--max-upload-size", "1000"], None);
    let size = 4 << 20;
    let head = format!("PUT /big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {size}\r\n\r\n");
    let (early, sent, next) = refused_then_sent(s.addr, &head, size, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(early, 413);
    assert!(sent, "the server reset the connection while the client sent the body");
    assert_eq!(next, 404, "the connection serves the next request; nothing was stored");
}
