//! Replica mode: edges replicating from one real sqld primary.

use crate::support::*;
use libsql::Value;
use std::time::{Duration, Instant};

const SYNC: &str = "500ms";
const SYNC_INTERVAL: Duration = Duration::from_millis(500);

#[test]
fn write_on_one_edge_is_read_on_both() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, SYNC);
    let b = Server::replica(&primary, SYNC);

    let body = b"replicated bytes".to_vec();
    assert_eq!(a.put("/shared/note.txt", None, body.clone()).status(), 201);

    // The PUT returned only once the primary held the file...
    let on_primary = primary.query_column("SELECT hash FROM files WHERE path = ?1", vec!["shared/note.txt".into()]);
    assert_eq!(on_primary, vec![Value::Text(sha256_hex(&body))]);
    // ...and the writing edge reads its own write at once.
    let r = a.get("/shared/note.txt");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().to_vec(), body);

    // The other edge serves it within about two sync intervals.
    let started = Instant::now();
    let seen = eventually(SYNC_INTERVAL * 2 + Duration::from_millis(500), || {
        let r = b.get("/shared/note.txt");
        (r.status() == 200).then(|| r.bytes().unwrap().to_vec())
    });
    assert_eq!(seen, Some(body), "edge B did not serve the file within {:?}", started.elapsed());

    // A delete on B disappears from A the same way.
    let r = client().delete(b.url("/shared/note.txt")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(b.get("/shared/note.txt").status(), 404);
    let gone = eventually(SYNC_INTERVAL * 2 + Duration::from_millis(500), || (a.get("/shared/note.txt").status() == 404).then_some(()));
    assert!(gone.is_some(), "edge A still serves a deleted file");
}

#[test]
fn row_written_directly_on_the_primary_reaches_every_edge() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, SYNC);
    let b = Server::replica(&primary, SYNC);

    // A row as another tool would write it: inline content, no hash or size.
    primary.execute(
        "INSERT INTO files (path, content, content_type) VALUES (?1, ?2, ?3)",
        vec!["direct/hello.txt".into(), Value::Blob(b"written on the primary".to_vec()), "text/plain".into()],
    );
    for edge in [&a, &b] {
        let got = eventually(SYNC_INTERVAL * 2 + Duration::from_millis(500), || {
            let r = edge.get("/direct/hello.txt");
            (r.status() == 200).then(|| {
                let etag = r.headers()["etag"].to_str().unwrap().to_string();
                let len = r.headers()["content-length"].to_str().unwrap().to_string();
                (etag, len, r.bytes().unwrap().to_vec())
            })
        });
        let (etag, len, bytes) = got.expect("direct row not served");
        assert_eq!(bytes, b"written on the primary");
        assert_eq!(len, "22");
        assert_eq!(etag, format!("\"{}\"", sha256_hex(b"written on the primary")));
    }
}

#[test]
fn twenty_mib_round_trips_with_bounded_memory() {
    // Bound: six chunk sizes (CHUNK_SIZE is 1 MiB). A piece in flight exists
    // at once in the host's read buffer, the worker's memory and the
    // outgoing stream; buffering the 20 MiB body would grow it by ~16 MiB.
    let primary = Sqld::start();
    let edge = Server::replica(&primary, SYNC);
    let body = pseudo_random(20 * 1024 * 1024, 20);
    let expected = sha256_hex(&body);

    let r = edge.put("/blobs/big.bin", Some("application/octet-stream"), body);
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    let chunks = primary.query_column(
        "SELECT count(*) FROM chunks WHERE blob_id = (SELECT blob_id FROM files WHERE path = 'blobs/big.bin')",
        vec![],
    );
    assert_eq!(chunks, vec![Value::Integer(20)], "stored as 1 MiB chunks on the primary");

    // Warm up the serving path with a small file, so the measurement below
    // is the first large body this process has ever held (an allocator could
    // otherwise reuse memory freed by an earlier large download).
    let small = pseudo_random(64 * 1024, 3);
    assert_eq!(edge.put("/blobs/small.bin", None, small.clone()).status(), 201);
    assert_eq!(edge.get("/blobs/small.bin").bytes().unwrap().to_vec(), small);
    let pid = edge.pid();
    let before = proc_status_kib(pid, "VmRSS");
    reset_peak_rss(pid);
    let mut resp = edge.get("/blobs/big.bin");
    assert_eq!(resp.headers()["content-length"], "20971520");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut resp, &mut got).unwrap();
    let peak = proc_status_kib(pid, "VmHWM");
    assert_eq!(sha256_hex(&got), expected, "20 MiB body differs");
    let growth_mib = peak.saturating_sub(before) as f64 / 1024.0;
    assert!(
        growth_mib <= 6.0,
        "serving 20 MiB grew the host's RSS by {growth_mib:.1} MiB (before {before} KiB, peak {peak} KiB)"
    );
}

#[test]
fn site_rules_reach_every_edge() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, SYNC);
    let b = Server::replica(&primary, SYNC);
    assert_eq!(a.put("/index.html", None, b"<h1>app</h1>".to_vec()).status(), 201);
    let r = client().put(a.url("/_api/site")).bearer_auth(TOKEN).body(r#"{"spa_fallback": "index.html"}"#).send().unwrap();
    assert_eq!(r.status(), 200);
    let route = |edge: &Server| {
        let r = client().get(edge.url("/some/client/route")).header("accept", "text/html").send().unwrap();
        (r.status() == 200).then(|| r.text().unwrap())
    };
    assert_eq!(route(&a).as_deref(), Some("<h1>app</h1>"), "the writing edge applies the rules at once");
    let seen = eventually(SYNC_INTERVAL * 2 + Duration::from_millis(500), || route(&b));
    assert_eq!(seen.as_deref(), Some("<h1>app</h1>"), "edge B did not pick up the rules");
}

/// sqld compacts its replication log past `--max-log-size`; while it builds
/// the snapshot, replicas' syncs fail. A write the edge acknowledged is
/// readable on that edge at once all the same.
#[test]
fn a_write_is_readable_on_its_edge_at_once_while_the_primary_compacts_its_log() {
    let primary = Sqld::start_with(&["--max-log-size", "1"]);
    let edge = Server::replica(&primary, "1s");
    let c = client();
    let mut missing = Vec::new();
    for i in 0..24 {
        let path = format!("/compact/{i}.bin");
        let body = pseudo_random(400 << 10, i);
        assert_eq!(edge.put(&path, None, body.clone()).status(), 201, "{path}");
        // No position header or cookie: only what the edge holds.
        let r = c.get(edge.url(&path)).send().unwrap();
        if r.status() != 200 || r.bytes().unwrap().as_ref() != &body[..] {
            missing.push(path);
        }
    }
    assert!(missing.is_empty(), "acknowledged but not readable on the same edge: {missing:?}");
}

/// Concurrent single PUTs on a replica edge share transactions on the
/// primary (group commit), and each keeps its own precondition.
#[test]
fn concurrent_puts_commit_in_groups_and_each_keeps_its_precondition() {
    let primary = Sqld::start();
    let edge = Server::replica(&primary, "1s");
    assert_eq!(edge.put("/gc/guarded.txt", None, b"old".to_vec()).status(), 201);
    let old_tag = format!("\"{}\"", sha256_hex(b"old"));
    let results: Vec<(u32, u16)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..64u32)
            .map(|i| {
                let (edge, old_tag) = (&edge, old_tag.clone());
                scope.spawn(move || {
                    let c = client();
                    let (path, header) = match i % 4 {
                        0 => (format!("/gc/stale-{i}.txt"), Some(("if-match", "\"0000\"".to_string()))),
                        1 => ("/gc/guarded.txt".to_string(), Some(("if-none-match", "*".to_string()))),
                        2 if i == 2 => ("/gc/guarded.txt".to_string(), Some(("if-match", old_tag))),
                        _ => (format!("/gc/free-{i}.txt"), None),
                    };
                    let mut req = c.put(edge.url(&path)).bearer_auth(TOKEN).body(format!("body {i}"));
                    if let Some((name, value)) = header {
                        req = req.header(name, value);
                    }
                    (i, req.send().unwrap().status().as_u16())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, status) in &results {
        let want = match i % 4 {
            0 | 1 => 412,
            2 if *i == 2 => 204,
            _ => 201,
        };
        assert_eq!(*status, want, "write {i}");
    }
    assert_eq!(edge.get("/gc/guarded.txt").text().unwrap(), "body 2");
    for i in (0..64u32).filter(|i| i % 4 >= 2 && *i != 2) {
        assert_eq!(edge.get(&format!("/gc/free-{i}.txt")).text().unwrap(), format!("body {i}"));
    }
    let stale = primary.query_column("SELECT count(*) FROM files WHERE path LIKE 'gc/stale-%'", vec![]);
    assert_eq!(stale, vec![libsql::Value::Integer(0)], "refused writes left nothing on the primary");
    let (groups, uploads) = (edge.metric("turserver_commit_groups_total"), edge.metric("turserver_committed_uploads_total"));
    assert_eq!(uploads, 33.0);
    assert!(groups < uploads, "{uploads} uploads in {groups} transactions");
}
