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

/// The status document's `sync` section.
fn sync_status(edge: &Server) -> serde_json::Value {
    status(edge)["sync"].clone()
}

#[test]
fn an_edge_syncs_as_the_primary_commits_not_on_its_interval() {
    let primary = Sqld::start();
    // An interval far longer than the test: only the commit stream can
    // bring the writes in time.
    let a = Server::replica(&primary, "60s");
    let b = Server::replica(&primary, "60s");
    for edge in [&a, &b] {
        let mode = eventually(Duration::from_secs(10), || {
            let s = sync_status(edge);
            (s["mode"] == "stream").then_some(s)
        });
        assert!(mode.is_some(), "the edge does not follow the commit stream: {}", sync_status(edge));
    }

    // Writes through edge A, and a row written straight on the primary.
    for i in 0..20 {
        let path = format!("/stream/{i}.txt");
        let body = format!("version {i}").into_bytes();
        assert_eq!(a.put(&path, None, body.clone()).status(), 201);
        let started = Instant::now();
        let seen = eventually(Duration::from_secs(5), || {
            let r = b.get(&path);
            (r.status() == 200).then(|| r.bytes().unwrap().to_vec())
        });
        assert_eq!(seen, Some(body), "edge B did not serve {path} within {:?}", started.elapsed());
    }
    primary.execute(
        "INSERT INTO files (path, content, content_type) VALUES (?1, ?2, ?3)",
        vec!["stream/direct.txt".into(), Value::Blob(b"from the primary".to_vec()), "text/plain".into()],
    );
    for edge in [&a, &b] {
        let seen = eventually(Duration::from_secs(5), || {
            let r = edge.get("/stream/direct.txt");
            (r.status() == 200).then(|| r.bytes().unwrap().to_vec())
        });
        assert_eq!(seen.as_deref(), Some(&b"from the primary"[..]));
    }
    assert!(b.metric("turserver_sync_stream_commits_total") >= 20.0);
    assert_eq!(b.metric("turserver_sync_stream_up"), 1.0);

    // A restarted primary (its sessions forgotten) is followed again.
    let mut primary = primary;
    primary.restart();
    assert_eq!(a.put("/stream/after-restart.txt", None, b"again".to_vec()).status(), 201);
    let seen = eventually(Duration::from_secs(20), || (b.get("/stream/after-restart.txt").status() == 200).then_some(()));
    assert!(seen.is_some(), "edge B missed a write after the primary restarted: {}", sync_status(&b));
    let mode = eventually(Duration::from_secs(20), || (sync_status(&b)["mode"] == "stream").then_some(()));
    assert!(mode.is_some(), "edge B did not follow the restarted primary: {}", sync_status(&b));
}

/// A TCP proxy to `upstream` that answers 404 to every connection whose
/// first request names `refused` and passes the others through whole.
fn refusing_proxy(upstream: std::net::SocketAddr, refused: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            std::thread::spawn(move || {
                let mut head = vec![0u8; 16 << 10];
                let Ok(len) = client.read(&mut head) else { return };
                let first_line = String::from_utf8_lossy(&head[..len]).lines().next().unwrap_or_default().to_string();
                if first_line.contains(refused) {
                    let _ = client.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    return;
                }
                let Ok(mut server) = std::net::TcpStream::connect(upstream) else { return };
                let _ = server.write_all(&head[..len]);
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn without_the_commit_stream_an_edge_syncs_on_its_interval() {
    let primary = Sqld::start();
    let upstream: std::net::SocketAddr = primary.url().trim_start_matches("http://").parse().unwrap();
    let proxied = refusing_proxy(upstream, "/wal_log.ReplicationLog/LogEntries");
    let dir = TempDir::new("edge");
    let refused = Server::start(dir.path(), &["--primary-url", &proxied, "--sync-interval", SYNC], None);
    let off_dir = TempDir::new("edge");
    let off = Server::start(
        off_dir.path(),
        &["--primary-url", &primary.url(), "--sync-interval", SYNC, "--no-commit-stream"],
        None,
    );

    let s = eventually(Duration::from_secs(10), || {
        let s = sync_status(&refused);
        s["stream_error"].as_str().is_some_and(|e| e.contains("404")).then_some(s)
    });
    let s = s.unwrap_or_else(|| panic!("no reason given for the missing stream: {}", sync_status(&refused)));
    assert_eq!(s["mode"], "interval");
    assert_eq!(refused.metric("turserver_sync_stream_up"), 0.0);
    let s = sync_status(&off);
    assert_eq!(s["mode"], "interval");
    assert!(s["stream_error"].as_str().unwrap().contains("--no-commit-stream"), "{s}");

    // Both still get what the primary commits, on their interval.
    primary.execute(
        "INSERT INTO files (path, content, content_type) VALUES (?1, ?2, ?3)",
        vec!["fallback.txt".into(), Value::Blob(b"by interval".to_vec()), "text/plain".into()],
    );
    for edge in [&refused, &off] {
        let seen = eventually(SYNC_INTERVAL * 4 + Duration::from_secs(2), || {
            let r = edge.get("/fallback.txt");
            (r.status() == 200).then(|| r.bytes().unwrap().to_vec())
        });
        assert_eq!(seen.as_deref(), Some(&b"by interval"[..]));
        assert_eq!(edge.metric("turserver_sync_stream_commits_total"), 0.0);
    }
}

/// An Ed25519 key for sqld's `--auth-jwt-key-file` (written into `dir`) and
/// a token it accepts for reads and writes.
fn jwt_key_and_token(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    use base64::Engine as _;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let key_file = dir.join("jwt.key");
    std::fs::write(&key_file, b64.encode(pair.public_key().as_ref())).unwrap();
    let signed = format!("{}.{}", b64.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#), b64.encode(r#"{"a":"rw"}"#));
    let signature = b64.encode(pair.sign(signed.as_bytes()).as_ref());
    (key_file, format!("{signed}.{signature}"))
}

#[test]
fn an_edge_follows_the_commits_of_a_primary_that_requires_a_token() {
    let keys = TempDir::new("jwt");
    let (key_file, token) = jwt_key_and_token(keys.path());
    let primary = Sqld::start_with(&["--auth-jwt-key-file", key_file.to_str().unwrap()]);
    let edge = |label: &str| {
        let dir = TempDir::new(label);
        let data = dir.path().to_path_buf();
        Server::start(&data, &["--primary-url", &primary.url(), "--primary-token", &token, "--sync-interval", "60s"], Some(dir))
    };
    let (a, b) = (edge("jwt-a"), edge("jwt-b"));
    let mode = eventually(Duration::from_secs(10), || (sync_status(&b)["mode"] == "stream").then_some(()));
    assert!(mode.is_some(), "{}", sync_status(&b));
    assert_eq!(a.put("/private-primary.txt", None, b"signed".to_vec()).status(), 201);
    let seen = eventually(Duration::from_secs(5), || {
        let r = b.get("/private-primary.txt");
        (r.status() == 200).then(|| r.bytes().unwrap().to_vec())
    });
    assert_eq!(seen.as_deref(), Some(&b"signed"[..]));
    // The token stays in the host: neither the status nor the log shows it.
    for edge in [&a, &b] {
        assert!(!status(edge).to_string().contains(&token));
        assert!(!edge.log().contains(&token));
    }
}

#[test]
fn a_host_killed_mid_group_loses_only_writes_it_had_not_answered() {
    let primary = Sqld::start();
    let edge = Server::replica(&primary, "1s");
    let base = edge.url("/crash/");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (answered, grouped) = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..32)
            .map(|t| {
                let (base, stop) = (base.clone(), &stop);
                scope.spawn(move || {
                    let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
                    let mut answered = Vec::new();
                    for n in 0.. {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let name = format!("{t}-{n}.txt");
                        match c.put(format!("{base}{name}")).bearer_auth(TOKEN).body(name.clone()).send() {
                            Ok(r) if r.status() == 201 => answered.push(name),
                            Ok(r) => panic!("{name}: {}", r.status()),
                            // The host was killed under this request.
                            Err(_) => break,
                        }
                    }
                    answered
                })
            })
            .collect();
        let grouped = eventually(Duration::from_secs(20), || {
            let (groups, uploads) = (edge.metric("turserver_commit_groups_total"), edge.metric("turserver_committed_uploads_total"));
            // Counted when published, a little before each group is answered.
            (uploads >= 250.0 && groups < uploads).then_some((groups, uploads))
        });
        edge.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answered: Vec<String> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        (answered, grouped)
    });
    assert!(grouped.is_some(), "no group commits happened before the kill");
    assert!(answered.len() >= 200, "only {} writes answered", answered.len());

    // Every answered write is on the primary, whole.
    let rows = primary.query_column("SELECT path || ' ' || hash FROM files WHERE path LIKE 'crash/%'", vec![]);
    let stored: std::collections::HashMap<String, String> = rows
        .into_iter()
        .map(|v| match v {
            libsql::Value::Text(t) => {
                let (path, hash) = t.split_once(' ').unwrap();
                (path.trim_start_matches("crash/").to_string(), hash.to_string())
            }
            other => panic!("{other:?}"),
        })
        .collect();
    for name in &answered {
        assert_eq!(stored.get(name), Some(&sha256_hex(name.as_bytes())), "answered write {name} was lost");
    }
    // Unanswered ones are there whole or not at all.
    for (name, hash) in &stored {
        assert_eq!(hash, &sha256_hex(name.as_bytes()), "{name} is stored damaged");
    }
}
