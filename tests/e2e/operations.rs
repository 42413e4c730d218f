//! Operating edges: status, metrics, readiness, read-your-writes across
//! edges, primary outages, crashes and damaged replicas. The primary is a
//! real sqld that these tests stop and restart.

use crate::support::*;
use std::time::{Duration, Instant};

fn replica_args<'a>(primary_url: &'a str, interval: &'a str) -> Vec<&'a str> {
    vec!["--primary-url", primary_url, "--sync-interval", interval]
}

#[test]
fn status_and_metrics_after_known_traffic() {
    let primary = Sqld::start();
    let edge = Server::replica(&primary, "200ms");
    let before = |s: &str| edge.metric(s);
    let (puts0, gets0, misses0, bytes0) = (
        before("turserver_requests_total{method=\"PUT\",status=\"2xx\"}"),
        before("turserver_requests_total{method=\"GET\",status=\"2xx\"}"),
        before("turserver_requests_total{method=\"GET\",status=\"4xx\"}"),
        before("turserver_response_body_bytes_total"),
    );
    for i in 0..3 {
        assert_eq!(edge.put(&format!("/m/{i}.txt"), None, vec![b'x'; 1000]).status(), 201);
    }
    for i in 0..5 {
        assert_eq!(edge.get(&format!("/m/{}.txt", i % 3)).status(), 200);
    }
    assert_eq!(client().get(edge.url("/m/none.txt")).send().unwrap().status(), 404);

    let m = |s: &str| edge.metric(s);
    assert_eq!(m("turserver_requests_total{method=\"PUT\",status=\"2xx\"}") - puts0, 3.0);
    // The metrics scrapes themselves are GETs too: read them before counting.
    let gets = m("turserver_requests_total{method=\"GET\",status=\"2xx\"}") - gets0;
    assert!((5.0..=10.0).contains(&gets), "GET 2xx grew by {gets}");
    assert_eq!(m("turserver_requests_total{method=\"GET\",status=\"4xx\"}") - misses0, 1.0);
    assert!(m("turserver_response_body_bytes_total") - bytes0 >= 5000.0);
    assert!(m("turserver_request_duration_seconds_count{method=\"PUT\"}") >= 3.0);
    assert!(m("turserver_sync_duration_seconds_count") >= 1.0);
    assert!(m("turserver_replication_index") > 0.0);

    let st = status(&edge);
    assert_eq!(st["mode"], "replica");
    assert_eq!(st["primary"], primary.url());
    assert!(st["sync"]["replication_index"].as_u64().unwrap() > 0);
    assert!(st["sync"]["last_success"].as_str().unwrap().ends_with('Z'));
    assert!(st["sync"]["syncs_ok"].as_u64().unwrap() >= 1);
    assert!(st["sync"]["last_error"].is_null());
    assert_eq!(st["worker"]["origin"], "built-in");
    assert_eq!(st["worker"]["version"].as_str().unwrap().len(), 64);
    assert_eq!(edge.get("/_turserver/ready").status(), 200);
}

#[test]
fn read_your_writes_across_edges() {
    let primary = Sqld::start();
    // Edge B would not sync by itself for a minute (nor follow the
    // primary's commits, which would bring a write within milliseconds).
    let a = Server::replica(&primary, "60s");
    let b_dir = TempDir::new("ryw-b");
    let b_data = b_dir.path().to_path_buf();
    let b = Server::start(
        &b_data,
        &["--primary-url", &primary.url(), "--sync-interval", "60s", "--consistency-wait", "1s", "--no-commit-stream"],
        Some(b_dir),
    );
    let r = a.put("/ryw.txt", None, b"fresh".to_vec());
    assert_eq!(r.status(), 201);
    let position = r.headers()["turserver-position"].to_str().unwrap().to_string();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with(&format!("turserver_position={position};")), "{cookie}");
    assert!(position.parse::<u64>().unwrap() > 0);

    // Without the position, B serves what it has: nothing yet.
    assert_eq!(client().get(b.url("/ryw.txt")).header("accept", "text/plain").send().unwrap().status(), 404);
    // With it, B catches up first.
    let r = client().get(b.url("/ryw.txt")).header("turserver-position", &position).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "fresh");
    // The cookie works the same way, for a later write.
    let r = a.put("/ryw2.txt", None, b"second".to_vec());
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let r = client().get(b.url("/ryw2.txt")).header("cookie", format!("theme=dark; {cookie}")).send().unwrap();
    assert_eq!(r.status(), 200);
    // A position past the primary's log (one from before its log was
    // rebuilt, or made up): B holds all the primary has once it has synced,
    // which is all any write can have left.
    let r = a.put("/ryw3.txt", None, b"third".to_vec());
    assert_eq!(r.status(), 201);
    let r = client().get(b.url("/ryw3.txt")).header("turserver-position", "999999999").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "third");
    // An edge that cannot reach the primary: 503 with Retry-After, not
    // data that may be stale.
    let mut primary = primary;
    primary.stop();
    let started = Instant::now();
    let r = client().get(b.url("/ryw.txt")).header("turserver-position", "999999999").send().unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
}

/// sqld killed mid-run rebuilds its replication log from its database file
/// when it starts again, and the log's frame numbers start again, below the
/// positions it handed out before. Writes and read-your-writes go on.
#[test]
fn read_your_writes_across_a_primary_that_rebuilt_its_log() {
    let mut primary = Sqld::start();
    let a = Server::replica(&primary, "60s");
    let b_dir = TempDir::new("rebuilt-b");
    let b_data = b_dir.path().to_path_buf();
    let b = Server::start(
        &b_data,
        &["--primary-url", &primary.url(), "--sync-interval", "60s", "--consistency-wait", "2s", "--no-commit-stream"],
        Some(b_dir),
    );
    // Many small rewrites: a long log over a small database.
    let mut before = 0;
    for i in 0..60 {
        let r = a.put(&format!("/rebuilt/{}.txt", i % 3), None, format!("old {i}").into_bytes());
        assert!(r.status().is_success(), "{}", r.status());
        before = r.headers()["turserver-position"].to_str().unwrap().parse::<u64>().unwrap();
    }
    primary.restart();
    let r = eventually(Duration::from_secs(20), || {
        let r = a.put("/rebuilt/new.txt", None, b"after the crash".to_vec());
        r.status().is_success().then_some(r)
    })
    .expect("writes resume after the primary restarts");
    let position = r.headers()["turserver-position"].to_str().unwrap().to_string();
    let after: u64 = position.parse().unwrap();
    assert!(after < before, "positions after the restart count in the rebuilt log (position {before} before, {after} after)");

    // The writing edge reads its write; the other edge, asked for the new
    // position, catches up and serves it instead of waiting for a frame
    // number the new log has not reached.
    assert_eq!(a.get("/rebuilt/new.txt").text().unwrap(), "after the crash");
    let r = client().get(b.url("/rebuilt/new.txt")).header("turserver-position", &position).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    assert_eq!(r.text().unwrap(), "after the crash");
    // So does a read still carrying a position from before the crash.
    let r = a.put("/rebuilt/newer.txt", None, b"and again".to_vec());
    assert!(r.status().is_success());
    let r = client().get(b.url("/rebuilt/newer.txt")).header("turserver-position", before.to_string()).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    assert_eq!(r.text().unwrap(), "and again");
    // Positions handed out now count in the new log: an edge holding the
    // write shows an index at least as high.
    let index = status(&b)["sync"]["replication_index"].as_u64().unwrap();
    assert!(index >= after, "edge B holds the write at index {index}, but it was handed out as {after}");
    assert_eq!(b.get("/rebuilt/2.txt").text().unwrap(), "old 59");
}

#[test]
fn primary_outage_keeps_reads_and_fails_writes_fast() {
    let mut primary = Sqld::start();
    let a = Server::replica(&primary, "200ms");
    let b = Server::replica(&primary, "200ms");
    for i in 0..5 {
        assert_eq!(a.put(&format!("/o/{i}.txt"), None, format!("file {i}").into_bytes()).status(), 201);
    }
    let all_on_b = eventually(Duration::from_secs(5), || (b.get("/o/4.txt").status() == 200).then_some(()));
    assert!(all_on_b.is_some());

    primary.stop();
    let mut served = 0;
    for round in 0..20 {
        for edge in [&a, &b] {
            let r = edge.get(&format!("/o/{}.txt", round % 5));
            assert_eq!(r.status(), 200, "read during the outage");
            assert_eq!(r.text().unwrap(), format!("file {}", round % 5));
            served += 1;
        }
    }
    assert_eq!(served, 40);
    for edge in [&a, &b] {
        let started = Instant::now();
        let r = edge.put("/o/during.txt", None, b"nope".to_vec());
        let took = started.elapsed();
        assert_eq!(r.status(), 503, "{}", r.text().unwrap_or_default());
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(took < Duration::from_secs(1), "a write during the outage took {took:?}");
    }
    let err = eventually(Duration::from_secs(5), || status(&a)["sync"]["last_error"].as_str().map(str::to_string));
    assert!(err.is_some(), "status shows the sync failure");
    assert!(a.log().matches("sync failed; retrying with backoff").count() <= 2, "logged once per state change");

    primary.restart();
    let written = eventually(Duration::from_secs(15), || (a.put("/o/after.txt", None, b"back".to_vec()).status() == 201).then_some(()));
    assert!(written.is_some(), "writes resume after the primary returns");
    let caught_up = eventually(Duration::from_secs(10), || (b.get("/o/after.txt").status() == 200).then_some(()));
    assert!(caught_up.is_some(), "edge B catches up by itself");
    let recovered = eventually(Duration::from_secs(30), || (a.log().contains("sync recovered") || b.log().contains("sync recovered")).then_some(()));
    assert!(recovered.is_some(), "a recovered sync is logged");
    for i in 0..5 {
        assert_eq!(b.get(&format!("/o/{i}.txt")).text().unwrap(), format!("file {i}"), "nothing lost");
    }
    assert_eq!(client().get(b.url("/o/during.txt")).header("accept", "text/plain").send().unwrap().status(), 404);
}

#[test]
fn ready_waits_for_a_first_sync() {
    let mut primary = Sqld::start();
    let dir = TempDir::new("ready");
    let url = primary.url();
    {
        let edge = Server::start(dir.path(), &replica_args(&url, "200ms"), None);
        assert_eq!(edge.get("/_turserver/ready").status(), 200);
        assert_eq!(edge.put("/kept.txt", None, b"kept".to_vec()).status(), 201);
    }
    primary.stop();
    // Restarted while the primary is down: the local copy is served, but
    // the edge is not ready.
    let edge = Server::start(dir.path(), &replica_args(&url, "200ms"), None);
    assert_eq!(edge.get("/kept.txt").text().unwrap(), "kept");
    let r = edge.get("/_turserver/ready");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    primary.restart();
    let ready = eventually(Duration::from_secs(10), || (edge.get("/_turserver/ready").status() == 200).then_some(()));
    assert!(ready.is_some(), "ready after the first successful sync");
    assert_eq!(edge.get("/_turserver/health").status(), 200);
}

#[test]
fn sigkill_mid_upload_loses_nothing_acknowledged() {
    let dir = TempDir::new("sigkill");
    let s = Server::start(dir.path(), &[], None);
    let mut acked = Vec::new();
    for i in 0..5 {
        let body = pseudo_random(200_000 + i * 500_000, i as u64);
        assert_eq!(s.put(&format!("/k/{i}.bin"), None, body.clone()).status(), 201);
        acked.push(body);
    }
    let mut stream = std::net::TcpStream::connect(s.addr).unwrap();
    use std::io::Write;
    write!(stream, "PUT /k/partial.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 5000000\r\n\r\n")
        .unwrap();
    stream.write_all(&pseudo_random(3_000_000, 99)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.kill();
    drop(stream);

    let s = Server::start(dir.path(), &[], None);
    for (i, body) in acked.iter().enumerate() {
        let got = s.get(&format!("/k/{i}.bin")).bytes().unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(body), "acknowledged file {i}");
    }
    assert_eq!(client().get(s.url("/k/partial.bin")).header("accept", "text/plain").send().unwrap().status(), 404);
    let list: serde_json::Value = s.get("/_api/files?prefix=k/").json().unwrap();
    assert_eq!(list["files"].as_array().unwrap().len(), 5);
}

#[test]
fn damaged_or_foreign_replicas_are_refused_and_rebuilt() {
    let primary = Sqld::start();
    let other = Sqld::start();
    let dir = TempDir::new("damaged");
    let url = primary.url();
    {
        let edge = Server::start(dir.path(), &replica_args(&url, "200ms"), None);
        assert_eq!(edge.put("/precious.txt", None, b"precious".to_vec()).status(), 201);
    }
    // The same directory pointed at another primary.
    let other_url = other.url();
    let (ok, log) = Server::run_to_exit(dir.path(), &replica_args(&other_url, "200ms"));
    assert!(!ok);
    assert!(log.contains("was made from the primary") && log.contains("--rebuild-replica"), "{log}");

    // Damage the replica: the database file and its WAL (a damaged page
    // that the WAL still holds a good copy of would not be damage at all).
    for name in ["replica.db", "replica.db-wal"] {
        let file = dir.path().join(name);
        if let Ok(bytes) = std::fs::read(&file) {
            std::fs::write(&file, vec![0x5a; bytes.len()]).unwrap();
        }
    }
    let (ok, log) = Server::run_to_exit(dir.path(), &replica_args(&url, "200ms"));
    assert!(!ok, "a damaged replica must not be served");
    assert!(log.contains("--rebuild-replica"), "{log}");

    let mut args = replica_args(&url, "200ms");
    args.push("--rebuild-replica");
    let edge = Server::start(dir.path(), &args, None);
    assert_eq!(edge.get("/precious.txt").text().unwrap(), "precious");
}


fn post_batch(s: &Server, archive: Vec<u8>) -> reqwest::blocking::Response {
    client().post(s.url("/_api/batch")).bearer_auth(TOKEN).header("content-type", "application/x-tar").body(archive).send().unwrap()
}

#[test]
fn batch_publishes_every_file_at_once() {
    let primary = Sqld::start();
    let edge = Server::replica(&primary, "200ms");
    let mut files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("site/page{i}.html"), format!("<p>page {i}</p>").repeat(50).into_bytes()))
        .collect();
    files.push(("site/big.bin".into(), pseudo_random(2_500_000, 77)));
    let r = post_batch(&edge, tar_of(&files));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    assert!(r.headers().contains_key("turserver-position"));
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["count"], 41);
    for (name, data) in &files {
        let got = edge.get(&format!("/{name}")).bytes().unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(data), "{name}");
    }
    let on_primary = primary.query_column("SELECT count(*) FROM files WHERE path LIKE 'site/%'", vec![]);
    assert_eq!(on_primary, vec![libsql::Value::Integer(41)]);
    let r = client().post(edge.url("/_api/batch")).body(tar_of(&files[..1])).send().unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn batch_with_one_bad_entry_stores_nothing() {
    let primary = Sqld::start();
    let edge = Server::replica(&primary, "200ms");
    let mut files: Vec<(String, Vec<u8>)> =
        (0..10).map(|i| (format!("v2/file{i}.txt"), format!("file {i}").into_bytes())).collect();
    files.insert(3, ("v2/large.bin".into(), pseudo_random(1_500_000, 3)));
    files.push(("../escape.txt".into(), b"evil".to_vec()));
    let r = post_batch(&edge, tar_of(&files));
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("escape.txt"));
    let list: serde_json::Value = edge.get("/_api/files?prefix=v2/").json().unwrap();
    assert_eq!(list["files"].as_array().unwrap().len(), 0, "no file of the batch is visible");
    assert_eq!(primary.query_column("SELECT count(*) FROM files", vec![]), vec![libsql::Value::Integer(0)]);
    let cleaned = eventually(Duration::from_secs(5), || {
        let staged = primary.query_column("SELECT count(*) FROM chunks", vec![]);
        (staged == vec![libsql::Value::Integer(0)]).then_some(())
    });
    assert!(cleaned.is_some(), "the staged chunks of the refused batch are deleted");
}
