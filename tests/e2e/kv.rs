//! The key-value API over HTTP: values, expiry, compare-and-set, listings,
//! tokens; and an entry written on one edge read on another.

use crate::access::{issue, new_key};
use crate::support::*;
use std::time::Duration;

fn kv(method: reqwest::Method, edge: &Server, key: &str) -> reqwest::blocking::RequestBuilder {
    client().request(method, edge.url(&format!("/_api/kv/{key}"))).bearer_auth(TOKEN)
}

fn json_put(edge: &Server, key: &str, body: &str) -> reqwest::blocking::RequestBuilder {
    kv(reqwest::Method::PUT, edge, key).header("content-type", "application/json").body(body.to_string())
}

fn etag(r: &reqwest::blocking::Response) -> String {
    r.headers()["etag"].to_str().unwrap().to_string()
}

#[test]
fn entries_have_versions_expiry_and_compare_and_set() {
    let edge = Server::local();
    let r = json_put(&edge, "flags/beta", r#"{"value": {"on": true, "pct": 5}}"#).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(etag(&r), "\"1\"");
    let r = kv(reqwest::Method::GET, &edge, "flags/beta").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(etag(&r), "\"1\"");
    let doc: serde_json::Value = r.json().unwrap();
    assert_eq!(doc["value"], serde_json::json!({"on": true, "pct": 5}));
    assert_eq!((doc["key"].as_str(), doc["found"].as_bool()), (Some("flags/beta"), Some(true)));

    // Replacing answers 204 with the next version; If-Match and
    // If-None-Match make a compare-and-set.
    let r = json_put(&edge, "flags/beta", r#"{"value": false}"#).send().unwrap();
    assert_eq!((r.status().as_u16(), etag(&r)), (204, "\"2\"".to_string()));
    let stale = json_put(&edge, "flags/beta", r#"{"value": 1}"#).header("if-match", "\"1\"").send().unwrap();
    assert_eq!(stale.status(), 412);
    let r = json_put(&edge, "flags/beta", r#"{"value": 3}"#).header("if-match", "\"2\"").send().unwrap();
    assert_eq!((r.status().as_u16(), etag(&r)), (204, "\"3\"".to_string()));
    let taken = json_put(&edge, "flags/beta", r#"{"value": 4}"#).header("if-none-match", "*").send().unwrap();
    assert_eq!(taken.status(), 412);
    let r = kv(reqwest::Method::GET, &edge, "flags/beta").send().unwrap();
    assert_eq!(r.json::<serde_json::Value>().unwrap()["value"], 3, "a refused write changed nothing");
    let not_modified = kv(reqwest::Method::GET, &edge, "flags/beta").header("if-none-match", "\"3\"").send().unwrap();
    assert_eq!(not_modified.status(), 304);

    // Raw bytes keep their media type.
    let png = pseudo_random(3000, 9);
    let r = kv(reqwest::Method::PUT, &edge, "img/logo").header("content-type", "image/png").body(png.clone()).send().unwrap();
    assert_eq!(r.status(), 201);
    let r = kv(reqwest::Method::GET, &edge, "img/logo").send().unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().unwrap().as_ref(), png.as_slice());

    // Deletes: conditional too; then absent.
    let r = kv(reqwest::Method::DELETE, &edge, "flags/beta").header("if-match", "\"9\"").send().unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(kv(reqwest::Method::DELETE, &edge, "flags/beta").send().unwrap().status(), 204);
    let r = kv(reqwest::Method::DELETE, &edge, "flags/beta").send().unwrap();
    assert_eq!(r.status(), 404);
    let r = kv(reqwest::Method::GET, &edge, "flags/beta").send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["found"], false);
    // A version is never reused: the ETag of a deleted entry cannot match a new one.
    let r = json_put(&edge, "flags/beta", r#"{"value": "again"}"#).send().unwrap();
    assert_eq!(r.status(), 201);

    // Expiry: absent once the ttl passes, to reads, listings and
    // create-only writes alike.
    // As `curl --data` sends it: the form type it adds on its own is JSON here.
    let r = kv(reqwest::Method::PUT, &edge, "session/x")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"value": "s", "ttl": 1}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let doc: serde_json::Value = kv(reqwest::Method::GET, &edge, "session/x").send().unwrap().json().unwrap();
    assert!(doc["expires"].as_i64().is_some(), "{doc}");
    eventually(Duration::from_secs(5), || (kv(reqwest::Method::GET, &edge, "session/x").send().unwrap().status() == 404).then_some(()))
        .expect("the entry expires");
    let listed: serde_json::Value =
        client().get(edge.url("/_api/kv?prefix=session/")).bearer_auth(TOKEN).send().unwrap().json().unwrap();
    assert_eq!(listed["keys"], serde_json::json!([]));
    let r = json_put(&edge, "session/x", r#"{"value": "new"}"#).header("if-none-match", "*").send().unwrap();
    assert_eq!(r.status(), 201);

    // Listings: in order, a page at a time.
    for k in ["list/b", "list/a", "list/c", "other"] {
        assert_eq!(json_put(&edge, k, r#"{"value": 0}"#).send().unwrap().status(), 201);
    }
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = edge.url("/_api/kv?prefix=list/&limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = client().get(url).bearer_auth(TOKEN).send().unwrap().json().unwrap();
        keys.extend(page["keys"].as_array().unwrap().iter().map(|k| k["key"].as_str().unwrap().to_string()));
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(keys, ["list/a", "list/b", "list/c"]);

    // Bad input says what is wrong and writes nothing.
    let long = "k".repeat(513);
    for (r, status, says) in [
        (json_put(&edge, &long, r#"{"value": 1}"#).send().unwrap(), 400, "512"),
        (json_put(&edge, "bad", "{not json").send().unwrap(), 400, "value"),
        (json_put(&edge, "bad", r#"{"v": 1}"#).send().unwrap(), 400, "value"),
        (json_put(&edge, "bad", r#"{"value": 1, "ttl": 0}"#).send().unwrap(), 400, "ttl"),
        (json_put(&edge, "bad", r#"{"value": 1}"#).header("if-match", "soon").send().unwrap(), 400, "If-Match"),
        (kv(reqwest::Method::PUT, &edge, "bad").header("content-type", "text/plain").body(vec![b'x'; (1 << 20) + 1]).send().unwrap(), 413, "at most"),
        (client().put(edge.url("/_api/kv/bad")).body("{\"value\": 1}").send().unwrap(), 401, "token"),
    ] {
        assert_eq!(r.status(), status);
        let text = r.text().unwrap();
        assert!(text.contains(says), "{status}: {text}");
    }
    assert_eq!(kv(reqwest::Method::GET, &edge, "bad").send().unwrap().status(), 404);

    // A signed token reaches only the keys its rules name.
    let keys_dir = TempDir::new("kv-keys");
    let (_, key) = new_key(&edge, keys_dir.path(), "k.key", true);
    let reader = issue(&key, &["_api/kv/list/**:read"], "10m");
    let get_as = |k: &str, t: &str| client().get(edge.url(&format!("/_api/kv/{k}"))).bearer_auth(t).send().unwrap().status();
    assert_eq!(get_as("list/a", &reader), 200);
    assert_eq!(get_as("other", &reader), 403);
    let write = client().put(edge.url("/_api/kv/list/a")).bearer_auth(&reader).body("{\"value\": 9}").send().unwrap();
    assert_eq!(write.status(), 403);
    assert_eq!(client().get(edge.url("/_api/kv/list/a")).send().unwrap().status(), 401);
}

#[test]
fn an_entry_written_on_one_edge_is_read_on_another_without_dropping_its_cache() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, "1s");
    let b = Server::replica(&primary, "1s");
    assert_eq!(a.put("/page.txt", None, b"page".to_vec()).status(), 201);
    eventually(Duration::from_secs(20), || (b.get("/page.txt").status() == 200).then_some(())).expect("synced");
    let _ = b.get("/page.txt");
    assert_eq!(b.get("/page.txt").headers()["turserver-cache"], "hit");

    let r = json_put(&a, "counter", r#"{"value": 41}"#).send().unwrap();
    assert_eq!(r.status(), 201);
    let position = r.headers()["turserver-position"].to_str().unwrap().to_string();
    // Read-your-writes on the other edge: the position makes it wait.
    let r = kv(reqwest::Method::GET, &b, "counter").header("turserver-position", &position).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["value"], 41);
    // The change feed announces it (to a token that may read it) ...
    let page: serde_json::Value =
        client().get(b.url("/_api/changes?since=0&limit=1000")).bearer_auth(TOKEN).send().unwrap().json().unwrap();
    let kv_change = page["changes"].as_array().unwrap().iter().find(|c| c["path"] == "_api/kv/counter").cloned();
    assert_eq!(kv_change.expect("announced")["version"], 1, "{page}");
    let anonymous: serde_json::Value = client().get(b.url("/_api/changes?since=0&limit=1000")).send().unwrap().json().unwrap();
    assert!(!anonymous.to_string().contains("_api/kv/"), "{anonymous}");
    // ... and a key-value write leaves the file cache as it was.
    assert_eq!(b.get("/page.txt").headers()["turserver-cache"], "hit");

    // B keeps what it read (present or absent) until a write of that key
    // reaches it: a replacement, a delete and a creation on A are each read
    // on B as soon as B holds them.
    assert_eq!(kv(reqwest::Method::GET, &b, "later").send().unwrap().status(), 404);
    let read_after = |r: reqwest::blocking::Response, key: &str| {
        let position = r.headers()["turserver-position"].to_str().unwrap().to_string();
        kv(reqwest::Method::GET, &b, key).header("turserver-position", &position).send().unwrap()
    };
    let r = read_after(json_put(&a, "counter", r#"{"value": 42}"#).send().unwrap(), "counter");
    assert_eq!((r.status().as_u16(), etag(&r)), (200, "\"2\"".to_string()));
    assert_eq!(r.json::<serde_json::Value>().unwrap()["value"], 42);
    let r = read_after(json_put(&a, "later", r#"{"value": "here"}"#).send().unwrap(), "later");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["value"], "here");
    let r = read_after(kv(reqwest::Method::DELETE, &a, "counter").send().unwrap(), "counter");
    assert_eq!(r.status(), 404);
}

#[test]
fn a_worker_reads_and_writes_entries_through_the_wit() {
    let dir = TempDir::new("kv-worker");
    let worker = test_worker("v1");
    let s = Server::start(&dir.path().join("data"), &["--worker", worker.to_str().unwrap()], None);

    // Concurrent increments through the worker's compare-and-set: none lost.
    let url = s.url("/kv/incr/hits");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let r = client().get(&url).send().unwrap();
                    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = kv(reqwest::Method::GET, &s, "hits").send().unwrap();
    let doc: serde_json::Value = r.json().unwrap();
    assert_eq!(doc["value"], 40, "{doc}");
    assert_eq!(doc["version"], 40, "{doc}");

    // An entry written over HTTP is what the worker reads; its cached
    // answer goes stale when the entry changes.
    assert_eq!(s.get("/kv/get/flag").status(), 404);
    assert_eq!(json_put(&s, "flag", r#"{"value": "on"}"#).send().unwrap().status(), 201);
    assert_eq!(s.get("/kv/get/flag").text().unwrap(), "\"on\"");
    let r = s.get("/kv/get/flag");
    assert_eq!(r.headers()["turserver-cache"], "hit");
    assert_eq!(json_put(&s, "flag", r#"{"value": "off"}"#).send().unwrap().status(), 204);
    let r = s.get("/kv/get/flag");
    assert_eq!(r.headers()["turserver-cache"], "miss");
    assert_eq!(r.text().unwrap(), "\"off\"");

    // An entry set with a ttl through the WIT expires for the worker too,
    // cached answer included, though no write marks it.
    assert_eq!(s.get("/kv/set-briefly/brief").status(), 200);
    assert_eq!(s.get("/kv/get/brief").text().unwrap(), "\"short\"");
    assert_eq!(s.get("/kv/get/brief").headers()["turserver-cache"], "hit");
    eventually(Duration::from_secs(10), || (s.get("/kv/get/brief").status() == 404).then_some(()))
        .expect("the entry expires, and the cached answer with it");
}
