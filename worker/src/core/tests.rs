use super::*;
use std::collections::BTreeMap;

#[derive(Default)]
struct Fake {
    files: BTreeMap<String, Metadata>,
    site: Option<String>,
}

const T: u64 = 1_700_000_000;

impl Fake {
    fn with(paths: &[&str]) -> Self {
        let mut f = Fake::default();
        for (i, p) in paths.iter().enumerate() {
            f.files.insert(
                p.to_string(),
                Metadata {
                    path: p.to_string(),
                    version: i as u64 + 1,
                    size: 100,
                    content_type: guess_content_type(p),
                    hash: format!("{:064x}", i + 1),
                    last_modified: T,
                    created: T,
                    encodings: vec![],
                },
            );
        }
        f
    }

    fn compressed(mut self, path: &str) -> Self {
        self.files.get_mut(path).unwrap().encodings = vec![("br".into(), 20), ("gzip".into(), 30)];
        self
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
    fn delete(&mut self, path: &str, expect: Option<Expect>) -> Result<(), StoreError> {
        if let Some(Expect::Hash(h)) = expect {
            if self.files.get(path).map(|m| &m.hash) != Some(&h) {
                return Err(StoreError::PreconditionFailed);
            }
        }
        self.files.remove(path).map(|_| ()).ok_or(StoreError::NotFound)
    }
    fn site_config(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self.site.clone())
    }
    fn set_site_config(&mut self, json: &str) -> Result<(), StoreError> {
        self.site = Some(json.to_string());
        Ok(())
    }
}

fn req(method: &str, target: &str) -> Request {
    Request { method: method.into(), path_and_query: target.into(), headers: vec![] }
}

fn with(mut r: Request, name: &str, value: &str) -> Request {
    r.headers.push((name.into(), value.as_bytes().to_vec()));
    r
}

fn respond(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Respond(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn tag(i: usize) -> String {
    format!("\"{:064x}\"", i)
}

#[test]
fn get_serves_file_with_headers() {
    let mut s = Fake::with(&["a/b.css"]);
    let r = respond(handle(&req("GET", "/a/b.css"), &mut s));
    assert_eq!(r.status, 200);
    assert_eq!(r.get("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(r.get("content-length"), Some("100"));
    assert_eq!(r.get("etag"), Some(tag(1).as_str()));
    assert_eq!(r.get("last-modified"), Some("Tue, 14 Nov 2023 22:13:20 GMT"));
    assert_eq!(r.get("accept-ranges"), Some("bytes"));
    assert_eq!(r.get("cache-control"), Some("no-cache"));
    assert_eq!(r.get("vary"), None);
    assert_eq!(r.body, Body::File(FilePart { version: 1, encoding: "identity".into(), offset: 0, len: 100 }));
}

#[test]
fn head_has_headers_and_no_body() {
    let mut s = Fake::with(&["x.txt"]);
    let r = respond(handle(&req("HEAD", "/x.txt"), &mut s));
    assert_eq!(r.status, 200);
    assert_eq!(r.get("content-length"), Some("100"));
    assert_eq!(r.body, Body::Empty);
}

#[test]
fn conditional_get() {
    let mut s = Fake::with(&["x.txt"]);
    let get = |s: &mut Fake, h: &str, v: &str| respond(handle(&with(req("GET", "/x.txt"), h, v), s));
    let r = get(&mut s, "if-none-match", &tag(1));
    assert_eq!((r.status, r.body.clone()), (304, Body::Empty));
    assert_eq!(r.get("etag"), Some(tag(1).as_str()));
    assert_eq!(r.get("cache-control"), Some("no-cache"));
    assert_eq!(get(&mut s, "if-none-match", &format!("W/{}", tag(1))).status, 304);
    assert_eq!(get(&mut s, "if-none-match", &format!("\"zz\", {}", tag(1))).status, 304);
    assert_eq!(get(&mut s, "if-none-match", "*").status, 304);
    assert_eq!(get(&mut s, "if-none-match", "\"other\"").status, 200);
    assert_eq!(get(&mut s, "if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT").status, 304);
    assert_eq!(get(&mut s, "if-modified-since", "Tue, 14 Nov 2023 22:13:19 GMT").status, 200);
    assert_eq!(get(&mut s, "if-modified-since", "garbage").status, 200);
    // If-None-Match wins over If-Modified-Since.
    let r = respond(handle(
        &with(with(req("GET", "/x.txt"), "if-none-match", "\"other\""), "if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT"),
        &mut s,
    ));
    assert_eq!(r.status, 200);
    assert_eq!(get(&mut s, "if-match", "\"other\"").status, 412);
    assert_eq!(get(&mut s, "if-match", &tag(1)).status, 200);
    assert_eq!(get(&mut s, "if-match", &format!("W/{}", tag(1))).status, 412);
    assert_eq!(get(&mut s, "if-unmodified-since", "Tue, 14 Nov 2023 22:13:19 GMT").status, 412);
    assert_eq!(get(&mut s, "if-unmodified-since", "Tue, 14 Nov 2023 22:13:20 GMT").status, 200);
}

#[test]
fn ranges() {
    let mut s = Fake::with(&["x.bin"]);
    let get = |s: &mut Fake, v: &str| respond(handle(&with(req("GET", "/x.bin"), "range", v), s));
    let r = get(&mut s, "bytes=10-19");
    assert_eq!(r.status, 206);
    assert_eq!(r.get("content-range"), Some("bytes 10-19/100"));
    assert_eq!(r.get("content-length"), Some("10"));
    assert_eq!(r.body, Body::File(FilePart { version: 1, encoding: "identity".into(), offset: 10, len: 10 }));
    let r = get(&mut s, "bytes=100-");
    assert_eq!((r.status, r.get("content-range")), (416, Some("bytes */100")));
    assert_eq!(get(&mut s, "bytes=5-1").status, 200);
    let r = get(&mut s, "bytes=0-1,5-6");
    assert_eq!(r.status, 206);
    assert!(r.get("content-type").unwrap().starts_with("multipart/byteranges; boundary="));
    let Body::Parts(parts) = &r.body else { panic!() };
    assert_eq!(parts.len(), 5);
    let total: u64 = parts
        .iter()
        .map(|p| match p {
            Part::Bytes(b) => b.len() as u64,
            Part::File(f) => f.len,
        })
        .sum();
    assert_eq!(r.get("content-length"), Some(total.to_string().as_str()));
    // If-Range with a stale validator serves the whole file.
    let r = respond(handle(&with(with(req("GET", "/x.bin"), "range", "bytes=0-1"), "if-range", "\"stale\""), &mut s));
    assert_eq!(r.status, 200);
    let r = respond(handle(&with(with(req("GET", "/x.bin"), "range", "bytes=0-1"), "if-range", &tag(1)), &mut s));
    assert_eq!(r.status, 206);
    // HEAD ignores Range.
    let r = respond(handle(&with(req("HEAD", "/x.bin"), "range", "bytes=0-1"), &mut s));
    assert_eq!(r.status, 200);
}

#[test]
fn encodings() {
    let mut s = Fake::with(&["app.js"]).compressed("app.js");
    let r = respond(handle(&with(req("GET", "/app.js"), "accept-encoding", "gzip, br"), &mut s));
    assert_eq!(r.get("content-encoding"), Some("br"));
    assert_eq!(r.get("content-length"), Some("20"));
    assert_eq!(r.get("vary"), Some("Accept-Encoding"));
    assert_eq!(r.get("etag"), Some(format!("\"{:064x}-br\"", 1).as_str()));
    let r = respond(handle(&with(req("GET", "/app.js"), "accept-encoding", "gzip"), &mut s));
    assert_eq!((r.get("content-encoding"), r.get("content-length")), (Some("gzip"), Some("30")));
    let r = respond(handle(&req("GET", "/app.js"), &mut s));
    assert_eq!((r.get("content-encoding"), r.get("vary")), (None, Some("Accept-Encoding")));
    let r = respond(handle(&with(req("GET", "/app.js"), "accept-encoding", "identity;q=0"), &mut s));
    assert_eq!(r.status, 406);
    // A 304 for the encoded representation's own tag.
    let r = respond(handle(
        &with(with(req("GET", "/app.js"), "accept-encoding", "br"), "if-none-match", &format!("\"{:064x}-br\"", 1)),
        &mut s,
    ));
    assert_eq!(r.status, 304);
}

#[test]
fn index_redirect_fallback_and_404s() {
    let mut s = Fake::with(&["index.html", "docs/index.html", "404.html"]);
    assert_eq!(respond(handle(&req("GET", "/"), &mut s)).status, 200);
    assert_eq!(respond(handle(&req("GET", "/docs/"), &mut s)).status, 200);
    let r = respond(handle(&req("GET", "/docs?v=1"), &mut s));
    assert_eq!((r.status, r.get("location")), (301, Some("/docs/?v=1")));
    let r = respond(handle(&req("GET", "/nope"), &mut s));
    assert_eq!((r.status, r.body.clone()), (404, Body::Bytes(b"not found\n".to_vec())));

    s.site = Some(r#"{"spa_fallback": "index.html", "not_found_page": "404.html"}"#.into());
    let html = with(req("GET", "/app/route"), "accept", "text/html,*/*;q=0.8");
    let r = respond(handle(&html, &mut s));
    assert_eq!((r.status, r.get("etag")), (200, Some(tag(1).as_str())));
    let r = respond(handle(&with(req("GET", "/missing.png"), "accept", "image/*"), &mut s));
    assert_eq!(r.status, 404);
    assert_eq!(r.body, Body::File(FilePart { version: 3, encoding: "identity".into(), offset: 0, len: 100 }));
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
fn put_decides_type_size_and_expectation() {
    let mut s = Fake::with(&["exists.txt"]);
    assert_eq!(
        handle(&req("PUT", "/site/app.js"), &mut s),
        Outcome::Upload {
            path: "site/app.js".into(),
            content_type: "text/javascript; charset=utf-8".into(),
            size_hint: None,
            expect: None
        }
    );
    let r = with(with(req("PUT", "/blob"), "Content-Type", "image/png"), "content-length", "12");
    assert_eq!(
        handle(&r, &mut s),
        Outcome::Upload { path: "blob".into(), content_type: "image/png".into(), size_hint: Some(12), expect: None }
    );
    // Types clients send by default are replaced by the extension's.
    for default in ["application/x-www-form-urlencoded", "application/octet-stream", "Multipart/Form-Data; boundary=x"] {
        let r = with(req("PUT", "/index.html"), "content-type", default);
        assert!(
            matches!(handle(&r, &mut s), Outcome::Upload { content_type, .. } if content_type == "text/html; charset=utf-8"),
            "{default}"
        );
    }
    let r = with(req("PUT", "/notes.md"), "content-type", "text/plain; charset=latin1");
    assert!(matches!(handle(&r, &mut s), Outcome::Upload { content_type, .. } if content_type == "text/plain; charset=latin1"));
    // Create-only.
    let r = with(req("PUT", "/new.txt"), "if-none-match", "*");
    assert!(matches!(handle(&r, &mut s), Outcome::Upload { expect: Some(Expect::Absent), .. }));
    let r = with(req("PUT", "/exists.txt"), "if-none-match", "*");
    assert_eq!(respond(handle(&r, &mut s)).status, 412);
    // Optimistic concurrency.
    let r = with(req("PUT", "/exists.txt"), "if-match", &tag(1));
    assert!(matches!(handle(&r, &mut s), Outcome::Upload { expect: Some(Expect::Hash(_)), .. }));
    let r = with(req("PUT", "/exists.txt"), "if-match", "\"stale\"");
    assert_eq!(respond(handle(&r, &mut s)).status, 412);
    let r = with(req("PUT", "/absent.txt"), "if-match", "*");
    assert_eq!(respond(handle(&r, &mut s)).status, 412);
    let r = with(req("PUT", "/exists.txt"), "if-unmodified-since", "Tue, 14 Nov 2023 22:13:19 GMT");
    assert_eq!(respond(handle(&r, &mut s)).status, 412);

    assert_eq!(respond(handle(&req("PUT", "/dir/"), &mut s)).status, 400);
    assert_eq!(respond(handle(&req("PUT", "/_api/x"), &mut s)).status, 400);
    assert_eq!(respond(handle(&with(req("PUT", "/x"), "content-length", "abc"), &mut s)).status, 400);
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
    assert_eq!(upload_response(Err(StoreError::PreconditionFailed)).status, 412);
    let r = upload_response(Err(StoreError::Unavailable("primary down".into())));
    assert_eq!((r.status, r.get("retry-after")), (503, Some("1")));
}

#[test]
fn delete_and_methods() {
    let mut s = Fake::with(&["a", "b"]);
    assert_eq!(respond(handle(&req("DELETE", "/a"), &mut s)).status, 204);
    assert_eq!(respond(handle(&req("DELETE", "/a"), &mut s)).status, 404);
    assert_eq!(respond(handle(&with(req("DELETE", "/b"), "if-match", "\"stale\""), &mut s)).status, 412);
    let r = respond(handle(&req("PATCH", "/a"), &mut s));
    assert_eq!((r.status, r.get("allow")), (405, Some(ALLOW)));
    assert_eq!(respond(handle(&req("POST", "/_api/files"), &mut s)).status, 405);
    let r = respond(handle(&req("OPTIONS", "/a"), &mut s));
    assert_eq!((r.status, r.get("allow")), (204, Some(ALLOW)));
}

#[test]
fn cors() {
    let mut s = Fake::with(&["a.txt"]);
    s.site = Some(r#"{"cors": {"allow_origins": ["https://app.example"], "allow_methods": ["GET", "PUT"], "max_age": 600}}"#.into());
    let pre = with(with(req("OPTIONS", "/a.txt"), "origin", "https://app.example"), "access-control-request-method", "PUT");
    let r = respond(handle(&pre, &mut s));
    assert_eq!(r.status, 204);
    assert_eq!(r.get("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(r.get("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(r.get("access-control-max-age"), Some("600"));
    let bad = with(with(req("OPTIONS", "/a.txt"), "origin", "https://evil.example"), "access-control-request-method", "GET");
    assert_eq!(respond(handle(&bad, &mut s)).status, 403);
    let r = respond(handle(&with(req("GET", "/a.txt"), "origin", "https://app.example"), &mut s));
    assert_eq!(r.get("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(r.get("vary"), Some("Origin"));
    let r = respond(handle(&with(req("GET", "/a.txt"), "origin", "https://evil.example"), &mut s));
    assert_eq!(r.get("access-control-allow-origin"), None);
}

#[test]
fn site_config_api() {
    let mut s = Fake::default();
    assert_eq!(handle(&req("PUT", "/_api/site"), &mut s), Outcome::PutSiteConfig);
    assert_eq!(put_site_config(b"{\"spa_fallback\": \"../x\"}", &mut s).status, 400);
    assert_eq!(s.site, None);
    assert_eq!(put_site_config(b"{\"spa_fallback\": \"index.html\"}", &mut s).status, 200);
    let r = respond(handle(&req("GET", "/_api/site"), &mut s));
    let Body::Bytes(b) = r.body else { panic!() };
    assert_eq!(String::from_utf8(b).unwrap(), "{\"spa_fallback\":\"index.html\"}");
}

#[test]
fn changed_site_rules_apply_to_the_next_request() {
    // The same thread (as a reused instance) sees each document's rules.
    let mut s = Fake::with(&["a.css"]);
    let cache_control = |s: &mut Fake| respond(handle(&req("GET", "/a.css"), s)).get("cache-control").map(str::to_string);
    s.site = Some(r#"{"cache_control": [{"glob": "*.css", "value": "max-age=60"}]}"#.into());
    assert_eq!(cache_control(&mut s).as_deref(), Some("max-age=60"));
    assert_eq!(cache_control(&mut s).as_deref(), Some("max-age=60"));
    s.site = Some(r#"{"cache_control": [{"glob": "*.css", "value": "max-age=5"}]}"#.into());
    assert_eq!(cache_control(&mut s).as_deref(), Some("max-age=5"));
    s.site = None;
    assert_eq!(cache_control(&mut s).as_deref(), Some("no-cache"));
}

#[test]
fn list_by_folder_names_each_subfolder_once_and_pages() {
    let mut s = Fake::with(&["a.txt", "d/1", "d/2", "d/e/3", "f/9", "z.txt"]);
    let page = |s: &mut Fake, query: &str| -> serde_json::Value {
        let r = respond(handle(&req("GET", &format!("/_api/files?{query}")), s));
        assert_eq!(r.status, 200, "{query}");
        let Body::Bytes(b) = r.body else { panic!() };
        serde_json::from_slice(&b).unwrap()
    };
    let names = |v: &serde_json::Value| -> (Vec<String>, Vec<String>) {
        let files = v["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_string()).collect();
        let folders = v["folders"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
        (files, folders)
    };
    let v = page(&mut s, "delimiter=/");
    assert_eq!(names(&v), (vec!["a.txt".into(), "z.txt".into()], vec!["d/".into(), "f/".into()]));
    assert!(v["next_cursor"].is_null());
    assert_eq!(v["files"][0]["encodings"], serde_json::json!({}));
    let v = page(&mut s, "delimiter=/&prefix=d/");
    assert_eq!(names(&v), (vec!["d/1".into(), "d/2".into()], vec!["d/e/".into()]));
    // Pages of two: the cursor resumes after a folder without repeating it.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let v = page(&mut s, &format!("delimiter=/&limit=2&cursor={}", percent_encoding::utf8_percent_encode(&cursor, percent_encoding::NON_ALPHANUMERIC)));
        let (files, folders) = names(&v);
        assert!(files.len() + folders.len() <= 2);
        seen.extend(folders);
        seen.extend(files);
        match v["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["a.txt", "d/", "f/", "z.txt"]);
    let r = respond(handle(&req("GET", "/_api/files?delimiter=,"), &mut s));
    assert_eq!(r.status, 400);
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

#[test]
fn batch_entries() {
    let mut s = Fake::default();
    assert_eq!(handle(&req("POST", "/_api/batch"), &mut s), Outcome::Batch);
    assert_eq!(respond(handle(&req("GET", "/_api/batch"), &mut s)).status, 405);
    assert_eq!(batch_entry("site/index.html").unwrap(), ("site/index.html".into(), "text/html; charset=utf-8".into()));
    assert_eq!(batch_entry("./a.css").unwrap().0, "a.css");
    for bad in ["../evil", "a/../../b", "dir/", "_turserver/x", "a\\b"] {
        assert!(batch_entry(bad).is_err(), "{bad}");
    }
}

#[test]
fn rules_are_parsed_once_per_document() {
    let mut cache = RulesCache::default();
    let mut s = Fake::with(&[]);
    s.site = Some(r#"{"spa_fallback": "index.html"}"#.into());
    let first = cache.load(&mut s).unwrap();
    let again = cache.load(&mut s).unwrap();
    assert!(std::rc::Rc::ptr_eq(&first, &again), "the same document is not parsed again");
    s.site = Some(r#"{"spa_fallback": "app.html"}"#.into());
    let changed = cache.load(&mut s).unwrap();
    assert_eq!(changed.fallback_page().as_deref(), Some("app.html"));
}

/// What a batch received, file by file.
#[derive(Default)]
struct Sink {
    files: Vec<(String, String, Vec<u8>)>,
    removed: Vec<String>,
    fail_writes: bool,
}

impl BatchSink for Sink {
    fn add(&mut self, path: &str, content_type: &str) -> Result<(), StoreError> {
        self.files.push((path.into(), content_type.into(), Vec::new()));
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if self.fail_writes {
            return Err(StoreError::TooLarge(1));
        }
        self.files.last_mut().unwrap().2.extend_from_slice(bytes);
        Ok(())
    }
    fn remove(&mut self, path: &str) -> Result<(), StoreError> {
        self.removed.push(path.into());
        Ok(())
    }
}

/// A tar archive of `entries` (name, kind, body), written by the `tar` crate.
fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        // Set the name raw, so names the builder would refuse reach the reader.
        let field = &mut h.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *body).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn a_batch_archive_is_read_file_by_file() {
    let tar = archive(&[
        ("site/", tar::EntryType::Directory, b""),
        ("./site/index.html", tar::EntryType::Regular, b"<h1>hi</h1>"),
        ("site/big.bin", tar::EntryType::Regular, &[7u8; 3000]),
    ]);
    let mut sink = Sink::default();
    let mut buf = [0u8; 1000];
    read_batch(&tar[..], &mut sink, &mut buf).unwrap();
    assert_eq!(sink.files.len(), 2);
    assert_eq!(sink.files[0], ("site/index.html".into(), "text/html; charset=utf-8".into(), b"<h1>hi</h1>".to_vec()));
    assert_eq!((sink.files[1].0.as_str(), sink.files[1].2.len()), ("site/big.bin", 3000));
}

#[test]
fn a_bad_batch_archive_is_refused_with_why() {
    let buf = [0u8; 64];
    let status = |tar: &[u8], sink: &mut Sink| read_batch(tar, sink, &mut buf.clone()).unwrap_err().status;
    let link = archive(&[("a", tar::EntryType::Symlink, b"")]);
    assert_eq!(status(&link, &mut Sink::default()), 400);
    let escape = archive(&[("../x", tar::EntryType::Regular, b"1")]);
    assert_eq!(status(&escape, &mut Sink::default()), 400);
    let reserved = archive(&[("_api/x", tar::EntryType::Regular, b"1")]);
    assert_eq!(status(&reserved, &mut Sink::default()), 400);
    // Cut off inside an entry's body.
    let whole = archive(&[("a.txt", tar::EntryType::Regular, &[1u8; 2000])]);
    assert_eq!(status(&whole[..1200], &mut Sink::default()), 400);
    // The store's refusal is the answer.
    let ok = archive(&[("a.txt", tar::EntryType::Regular, b"abc")]);
    assert_eq!(status(&ok, &mut Sink { fail_writes: true, ..Sink::default() }), 413);
}

#[test]
fn a_batch_manifest_names_files_to_remove() {
    let manifest = br#"{"remove": ["/old/a.css", "b//c.js"]}"#;
    let tar = archive(&[
        ("site/index.html", tar::EntryType::Regular, b"<h1>hi</h1>"),
        (MANIFEST_ENTRY, tar::EntryType::Regular, manifest),
    ]);
    let mut sink = Sink::default();
    read_batch(&tar[..], &mut sink, &mut [0u8; 64]).unwrap();
    assert_eq!(sink.files.len(), 1, "the manifest is not stored as a file");
    assert_eq!(sink.removed, ["old/a.css", "b/c.js"]);

    for bad in [&br#"{"remove": ["../x"]}"#[..], br#"{"remove": ["_api/x"]}"#, br#"{"delete": []}"#, b"not json"] {
        let tar = archive(&[(MANIFEST_ENTRY, tar::EntryType::Regular, bad)]);
        let err = read_batch(&tar[..], &mut Sink::default(), &mut [0u8; 64]).unwrap_err();
        assert_eq!(err.status, 400, "{}", String::from_utf8_lossy(bad));
    }
}

/// The plan a request body gets from a store holding `stored`.
fn plan_of(stored: &[&str], body: &str) -> Response {
    let mut s = Fake::with(stored);
    assert_eq!(handle(&req("POST", "/_api/plan"), &mut s), Outcome::Plan);
    plan(body.as_bytes(), &mut s)
}

#[test]
fn a_plan_sends_what_is_new_or_changed_and_removes_what_is_gone() {
    // The fake's files have the hash `etag_for` gives their index; take the
    // stored hash of the first to name it unchanged.
    let s = Fake::with(&["site/a.html", "site/b.css", "site/old.js", "other/x"]);
    let same = s.files["site/a.html"].hash.clone();
    let body = format!(
        r#"{{"prefix": "site", "files": {{"site/a.html": "{same}", "site/b.css": "{}", "site/new.txt": "{}"}}}}"#,
        "0".repeat(64),
        "a".repeat(64)
    );
    let r = plan_of(&["site/a.html", "site/b.css", "site/old.js", "other/x"], &body);
    assert_eq!(r.status, 200, "{}", r.message());
    let got: serde_json::Value = serde_json::from_str(&r.message()).unwrap();
    assert_eq!(got["unchanged"], serde_json::json!(["site/a.html"]));
    assert_eq!(got["upload"], serde_json::json!(["site/b.css", "site/new.txt"]));
    assert_eq!(got["remove"], serde_json::json!(["site/old.js"]), "nothing outside the prefix");

    let zero = "0".repeat(64);
    for (body, why) in [
        (format!(r#"{{"files": {{"../x": "{zero}"}}}}"#), "escaping path"),
        (format!(r#"{{"files": {{"_api/x": "{zero}"}}}}"#), "reserved path"),
        (r#"{"files": {"a": "abc"}}"#.to_string(), "short hash"),
        (format!(r#"{{"prefix": "site", "files": {{"other/a": "{zero}"}}}}"#), "outside the prefix"),
        (format!(r#"{{"files": {{"a": "{zero}", "/a": "{zero}"}}}}"#), "named twice"),
        ("[]".to_string(), "not an object"),
    ] {
        assert_eq!(plan_of(&[], &body).status, 400, "{why}");
    }
}

/// A store that records the paths it was asked to stat.
struct Recording(Fake, Vec<String>);

impl Store for Recording {
    fn stat(&mut self, path: &str) -> Result<Metadata, StoreError> {
        self.1.push(path.to_string());
        self.0.stat(path)
    }
    fn list(&mut self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<Listing, StoreError> {
        self.0.list(prefix, cursor, limit)
    }
    fn delete(&mut self, path: &str, expect: Option<Expect>) -> Result<(), StoreError> {
        self.0.delete(path, expect)
    }
    fn site_config(&mut self) -> Result<Option<String>, StoreError> {
        self.0.site_config()
    }
    fn set_site_config(&mut self, json: &str) -> Result<(), StoreError> {
        self.0.set_site_config(json)
    }
}

#[test]
fn the_first_stat_is_known_before_routing() {
    for (method, target) in [
        ("GET", "/a.css"),
        ("HEAD", "/docs/"),
        ("GET", "/"),
        ("GET", "/docs?x=1"),
        ("GET", "/missing.txt"),
        ("GET", "/_api/files"),
        ("GET", "/_api/site"),
        ("PUT", "/a.css"),
        ("DELETE", "/a.css"),
        ("GET", "/%2e%2e/x"),
    ] {
        let mut s = Recording(Fake::with(&["a.css", "docs/index.html", "index.html"]), Vec::new());
        let r = req(method, target);
        let _ = handle(&r, &mut s);
        assert_eq!(first_stat(&r), s.1.first().cloned(), "{method} {target}");
    }
}
