//! The edge response cache: hits skip the worker, and nothing stale is ever
//! served after a write, a sync or a worker swap.

use crate::support::*;
use std::time::Duration;

fn cache_header(r: &reqwest::blocking::Response) -> String {
    r.headers().get("turserver-cache").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[test]
fn hits_then_invalidation_by_writes() {
    let s = Server::local();
    assert_eq!(s.put("/c.txt", None, b"one".to_vec()).status(), 201);
    let r = s.get("/c.txt");
    assert_eq!(cache_header(&r), "miss");
    assert_eq!(r.text().unwrap(), "one");
    let r = s.get("/c.txt");
    assert_eq!(cache_header(&r), "hit");
    assert_eq!(r.headers()["etag"].to_str().unwrap(), format!("\"{}\"", sha256_hex(b"one")));
    assert_eq!(r.text().unwrap(), "one");
    let head = client().head(s.url("/c.txt")).send().unwrap();
    assert_eq!(cache_header(&head), "hit");
    assert_eq!(head.headers()["content-length"], "3");
    assert!(s.metric("turserver_response_cache_hits_total") >= 2.0);

    assert_eq!(s.put("/c.txt", None, b"two".to_vec()).status(), 204);
    let r = s.get("/c.txt");
    assert_ne!(cache_header(&r), "hit");
    assert_eq!(r.text().unwrap(), "two");
    assert_eq!(s.get("/c.txt").text().unwrap(), "two");
    let r = client().delete(s.url("/c.txt")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(client().get(s.url("/c.txt")).header("accept", "text/plain").send().unwrap().status(), 404);
    // Different Accept-Encoding values are different entries.
    let app = "let x = 1;\n".repeat(500).into_bytes();
    assert_eq!(s.put("/app.js", None, app.clone()).status(), 201);
    for _ in 0..2 {
        let r = client().get(s.url("/app.js")).header("accept-encoding", "gzip").send().unwrap();
        assert_eq!(r.headers()["content-encoding"], "gzip");
        let r = client().get(s.url("/app.js")).send().unwrap();
        assert!(r.headers().get("content-encoding").is_none());
        assert_eq!(r.bytes().unwrap().to_vec(), app);
    }
}

#[test]
fn a_sync_that_replaces_or_deletes_a_file_invalidates_it() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, "300ms");
    let b = Server::replica(&primary, "300ms");
    assert_eq!(a.put("/shared.txt", None, b"old".to_vec()).status(), 201);
    let on_b = eventually(Duration::from_secs(5), || (b.get("/shared.txt").status() == 200).then_some(()));
    assert!(on_b.is_some());
    // The first answers can be stamped with the generation from before the
    // sync that brought the file (a sync during the request makes its entry
    // stale at once, by design): edge B caches the file within a few requests.
    let cached = eventually(Duration::from_secs(5), || (cache_header(&b.get("/shared.txt")) == "hit").then_some(()));
    assert!(cached.is_some(), "edge B caches the file");

    let r = a.put("/shared.txt", None, b"new".to_vec());
    let position: u64 = r.headers()["turserver-position"].to_str().unwrap().parse().unwrap();
    let synced = eventually(Duration::from_secs(5), || {
        (status(&b)["sync"]["replication_index"].as_u64().unwrap() >= position).then_some(())
    });
    assert!(synced.is_some(), "edge B synced past the write");
    for _ in 0..5 {
        assert_eq!(b.get("/shared.txt").text().unwrap(), "new", "a stale cached copy was served");
    }

    let r = client().delete(a.url("/shared.txt")).bearer_auth(TOKEN).send().unwrap();
    let position: u64 = r.headers()["turserver-position"].to_str().unwrap().parse().unwrap();
    let synced = eventually(Duration::from_secs(5), || {
        (status(&b)["sync"]["replication_index"].as_u64().unwrap() >= position).then_some(())
    });
    assert!(synced.is_some());
    assert_eq!(client().get(b.url("/shared.txt")).header("accept", "text/plain").send().unwrap().status(), 404);
}

#[test]
fn a_swapped_out_worker_is_never_served_from_the_cache() {
    let (v1, v2) = (test_worker("v1"), test_worker("v2"));
    let dir = TempDir::new("cache-swap");
    let live = dir.path().join("worker.wasm");
    install_file(&v1, &live);
    let s = Server::start(&dir.path().join("data"), &["--worker", live.to_str().unwrap()], None);
    assert_eq!(s.get("/version").text().unwrap(), "v1");
    let r = s.get("/version");
    assert_eq!((cache_header(&r), r.text().unwrap()), ("hit".to_string(), "v1".to_string()));
    install_file(&v2, &live);
    let v2_hash = sha256_hex(&std::fs::read(&v2).unwrap());
    let swapped = eventually(Duration::from_secs(30), || (status(&s)["worker"]["version"] == v2_hash).then_some(()));
    assert!(swapped.is_some());
    for _ in 0..5 {
        assert_eq!(s.get("/version").text().unwrap(), "v2");
    }
}

/// Follows `edge`'s change feed until it announces `path` after `since`;
/// the change's sequence.
fn announced(edge: &Server, since: u64, path: &str) -> u64 {
    let mut cursor = since;
    eventually(Duration::from_secs(30), || {
        let url = edge.url(&format!("/_api/changes?since={cursor}&wait=2s"));
        let page: serde_json::Value = client().get(url).bearer_auth(TOKEN).send().unwrap().json().unwrap();
        cursor = page["next"].as_u64().unwrap();
        page["changes"].as_array().unwrap().iter().find(|c| c["path"] == path).map(|c| c["seq"].as_u64().unwrap())
    })
    .unwrap_or_else(|| panic!("{path} was never announced"))
}

fn latest_change(edge: &Server) -> u64 {
    let page: serde_json::Value = client().get(edge.url("/_api/changes?limit=1")).send().unwrap().json().unwrap();
    page["latest"].as_u64().unwrap()
}

#[test]
fn a_synced_change_makes_stale_only_what_read_its_path() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, "1s");
    let b = Server::replica(&primary, "1s");
    for (path, body) in [("/hot.txt", "one"), ("/other.txt", "other"), ("/docs/index.html", "<p>v1</p>")] {
        assert_eq!(a.put(path, None, body.as_bytes().to_vec()).status(), 201);
    }
    let since = latest_change(&a);
    announced(&b, since.saturating_sub(3), "docs/index.html");
    let warm = |path: &str| {
        let _ = b.get(path);
        let r = b.get(path);
        assert_eq!(cache_header(&r), "hit", "{path}");
    };
    for path in ["/hot.txt", "/other.txt", "/docs/"] {
        warm(path);
    }

    // Replaced on A: once B announces it, B serves the new body, and
    // what read other paths is still cached.
    assert_eq!(a.put("/hot.txt", None, b"two".to_vec()).status(), 204);
    let seq = announced(&b, since, "hot.txt");
    let r = b.get("/hot.txt");
    assert_eq!(cache_header(&r), "miss");
    assert_eq!(r.text().unwrap(), "two");
    let r = b.get("/other.txt");
    assert_eq!((cache_header(&r), r.text().unwrap()), ("hit".to_string(), "other".to_string()));
    assert_eq!(cache_header(&b.get("/docs/")), "hit");

    // A directory's page goes stale with its index file.
    assert_eq!(a.put("/docs/index.html", None, b"<p>v2</p>".to_vec()).status(), 204);
    let seq = announced(&b, seq, "docs/index.html");
    let r = b.get("/docs/");
    assert_eq!(r.text().unwrap(), "<p>v2</p>");
    assert_eq!(cache_header(&b.get("/other.txt")), "hit");

    // A file written straight on the primary is invalidated the same way.
    primary.execute("UPDATE files SET content = ?1, hash = NULL, size = NULL WHERE path = 'other.txt'", vec![libsql::Value::Blob(b"by hand".to_vec())]);
    let seq = announced(&b, seq, "other.txt");
    assert_eq!(b.get("/other.txt").text().unwrap(), "by hand");

    // Site rules change every answer: everything is dropped.
    warm("/hot.txt");
    let rules = r#"{"cache_control": [{"glob": "*.txt", "value": "public, max-age=5"}]}"#;
    let r = client().put(a.url("/_api/site")).bearer_auth(TOKEN).body(rules).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    announced(&b, seq, "_turserver/config/site");
    let r = b.get("/hot.txt");
    assert_eq!(cache_header(&r), "miss");
    assert_eq!(r.headers()["cache-control"], "public, max-age=5");
}

#[test]
fn with_whole_invalidation_any_change_drops_every_entry() {
    let s = Server::start(TempDir::new("whole").path(), &["--cache-invalidation", "everything"], None);
    assert_eq!(s.put("/a.txt", None, b"a".to_vec()).status(), 201);
    let _ = s.get("/a.txt");
    assert_eq!(cache_header(&s.get("/a.txt")), "hit");
    assert_eq!(s.put("/b.txt", None, b"b".to_vec()).status(), 201);
    assert_eq!(cache_header(&s.get("/a.txt")), "miss");
    let (ok, log) = Server::run_to_exit(TempDir::new("bad-flag").path(), &["--cache-invalidation", "some"]);
    assert!(!ok && log.contains("paths") && log.contains("everything"), "{log}");
}
