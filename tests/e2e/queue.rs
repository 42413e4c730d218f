//! The write queue (`--write-queue`): writes accepted while the primary is
//! away, kept through a `kill -9`, shown to the edge's reads, applied in
//! order when the primary returns, with a conflicting one reported failed.

use crate::support::*;
use std::path::Path;
use std::time::Duration;

fn queued_edge(primary: &Sqld, data: &Path) -> Server {
    Server::start(data, &["--primary-url", &primary.url(), "--sync-interval", "200ms", "--write-queue"], None)
}

/// A queued write's outcome, read from its status URL.
fn outcome(edge: &Server, location: &str) -> serde_json::Value {
    let r = client().get(edge.url(location)).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), 200, "{location}");
    r.json().unwrap()
}

fn text_of(edge: &Server, path: &str) -> (u16, String) {
    let r = client().get(edge.url(path)).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn texts(values: Vec<libsql::Value>) -> Vec<String> {
    values
        .into_iter()
        .map(|v| match v {
            libsql::Value::Text(t) => t,
            other => panic!("expected text, got {other:?}"),
        })
        .collect()
}

#[test]
fn writes_wait_through_an_outage_and_a_kill_then_apply_in_order() {
    let mut primary = Sqld::start();
    let dir = TempDir::new("queue");
    let data = dir.path().join("edge");
    let edge = queued_edge(&primary, &data);
    assert_eq!(edge.put("/q/keep.txt", None, b"v0".to_vec()).status(), 201);
    assert_eq!(edge.put("/q/gone.txt", None, b"bye".to_vec()).status(), 201);
    let cas = edge.put("/q/cas.txt", None, b"orig".to_vec());
    assert_eq!(cas.status(), 201);
    let orig_tag = cas.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(text_of(&edge, "/q/keep.txt"), (200, "v0".into()), "read (and cached) before the outage");
    assert!(status(&edge)["write_queue"]["depth"] == 0);

    primary.stop();
    // The first write to find the primary gone may get 503 (the edge's
    // syncs take seconds to give up); from then on writes queue.
    let first = edge.put("/q/probe-1.txt", None, b"1".to_vec()).status();
    assert!(first == 503 || first == 202, "{first}");
    assert_eq!(edge.put("/q/probe-2.txt", None, b"2".to_vec()).status(), 202);
    let probes = 1 + usize::from(first == 202);

    // Writes are accepted, each with where to read its outcome.
    let mut locations = Vec::new();
    for i in 0..100 {
        let r = edge.put(&format!("/q/n/{i:03}.txt"), None, format!("queued {i}").into_bytes());
        assert_eq!(r.status(), 202, "{}", r.text().unwrap_or_default());
        let location = r.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with("/_turserver/queue/"), "{location}");
        locations.push(location);
    }
    assert_eq!(edge.put("/q/keep.txt", None, b"v1".to_vec()).status(), 202);
    assert_eq!(edge.put("/q/keep.txt", None, b"v2".to_vec()).status(), 202);
    let big = pseudo_random(3 << 20, 9);
    assert_eq!(edge.put("/q/big.bin", Some("application/octet-stream"), big.clone()).status(), 202);
    let del = client().delete(edge.url("/q/gone.txt")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(del.status(), 202);
    // Checked against what this edge shows: the original, so accepted here.
    let conflicting = client().put(edge.url("/q/cas.txt")).bearer_auth(TOKEN).header("if-match", &orig_tag).body("from the edge").send().unwrap();
    assert_eq!(conflicting.status(), 202);
    let conflicting = conflicting.headers()["location"].to_str().unwrap().to_string();
    // Without a credential, no outcome; a number that names nothing is 404.
    assert_eq!(client().get(edge.url(&locations[0])).send().unwrap().status(), 401);
    assert_eq!(client().get(edge.url("/_turserver/queue/999999")).bearer_auth(TOKEN).send().unwrap().status(), 404);
    assert_eq!(outcome(&edge, &locations[0])["state"], "queued");
    let r = client().delete(edge.url(&locations[0])).bearer_auth(TOKEN).send().unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["allow"].to_str().unwrap()), (405, "GET, HEAD"));
    assert_eq!(client().get(edge.url("/_turserver/queue/twelve")).bearer_auth(TOKEN).send().unwrap().status(), 400);

    // The edge shows its queued writes at once.
    assert_eq!(text_of(&edge, "/q/keep.txt"), (200, "v2".into()));
    assert_eq!(text_of(&edge, "/q/n/042.txt"), (200, "queued 42".into()));
    assert_eq!(client().get(edge.url("/q/gone.txt")).header("accept", "text/plain").send().unwrap().status(), 404);
    let r = client().get(edge.url("/q/big.bin")).header("range", "bytes=1048570-1048589").send().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &big[1048570..1048590], "a range across a chunk boundary");
    let listing: serde_json::Value = edge.get("/_api/files?prefix=q/").json().unwrap();
    let listed: Vec<&str> = listing["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(listed.contains(&"q/n/000.txt") && !listed.contains(&"q/gone.txt"), "{listed:?}");
    assert_eq!(status(&edge)["write_queue"]["depth"], 105 + probes);
    assert_eq!(edge.metric("turserver_write_queue_depth"), (105 + probes) as f64);

    // The edge dies without a chance to flush anything, and comes back
    // while the primary is still away: the queue is all there.
    edge.kill();
    let edge = queued_edge(&primary, &data);
    assert_eq!(status(&edge)["write_queue"]["depth"], 105 + probes);
    assert_eq!(text_of(&edge, "/q/n/099.txt"), (200, "queued 99".into()));
    assert_eq!(sha256_hex(&edge.get("/q/big.bin").bytes().unwrap()), sha256_hex(&big));
    edge.kill();

    // Meanwhile another edge changes the file the queued write expected.
    primary.restart();
    let other = Server::replica(&primary, "200ms");
    assert_eq!(other.put("/q/cas.txt", None, b"from elsewhere".to_vec()).status(), 204);

    let edge = queued_edge(&primary, &data);
    let drained = eventually(Duration::from_secs(60), || (status(&edge)["write_queue"]["depth"] == 0).then_some(()));
    assert!(drained.is_some(), "the queue drains once the primary is back: {}", status(&edge));

    // Everything applied, in the order it was accepted, once each.
    let order = texts(primary.query_column("SELECT path FROM changes WHERE path LIKE 'q/n/%' ORDER BY seq", vec![]));
    let expected: Vec<String> = (0..100).map(|i| format!("q/n/{i:03}.txt")).collect();
    assert_eq!(order, expected);
    let first = outcome(&edge, &locations[0]);
    assert_eq!(first["state"], "applied", "{first}");
    assert!(first["position"].as_u64().is_some(), "{first}");
    for edge in [&edge, &other] {
        let settled = eventually(Duration::from_secs(10), || (text_of(edge, "/q/keep.txt").1 == "v2").then_some(()));
        assert!(settled.is_some(), "the later write of a path wins");
        assert_eq!(text_of(edge, "/q/n/007.txt"), (200, "queued 7".into()));
        assert_eq!(sha256_hex(&edge.get("/q/big.bin").bytes().unwrap()), sha256_hex(&big));
        assert_eq!(client().get(edge.url("/q/gone.txt")).header("accept", "text/plain").send().unwrap().status(), 404);
        // The conflicting write was not applied, on any edge.
        assert_eq!(text_of(edge, "/q/cas.txt"), (200, "from elsewhere".into()));
    }
    let failed = outcome(&edge, &conflicting);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(failed["reason"].as_str().unwrap().contains("precondition"), "{failed}");
    assert_eq!(edge.metric("turserver_write_queue_failed_total"), 1.0);

    // With the queue empty and the primary here, writes are direct again.
    assert_eq!(edge.put("/q/after.txt", None, b"direct".to_vec()).status(), 201);

    // A host that died after the primary took a queued write, before it
    // recorded so: the write is still waiting when the queue opens again.
    edge.kill();
    let keep_changes = || primary.query_column("SELECT count(*) FROM changes WHERE path = 'q/keep.txt'", vec![]);
    let before = keep_changes();
    let db = data.join("write-queue.db");
    let last_keep = block_on(async move {
        let conn = libsql::Builder::new_local(&db).build().await.unwrap().connect().unwrap();
        let mut rows = conn.query("SELECT max(id) FROM entries WHERE path = 'q/keep.txt'", ()).await.unwrap();
        let id: i64 = rows.next().await.unwrap().unwrap().get(0).unwrap();
        drop(rows);
        conn.execute("UPDATE entries SET state = 'queued', done_at = NULL, position = NULL WHERE id = ?1", [id]).await.unwrap();
        id
    });
    let edge = queued_edge(&primary, &data);
    let drained = eventually(Duration::from_secs(30), || (status(&edge)["write_queue"]["depth"] == 0).then_some(()));
    assert!(drained.is_some(), "{}", status(&edge));
    let again = outcome(&edge, &format!("/_turserver/queue/{last_keep}"));
    assert_eq!(again["state"], "applied", "a write the primary holds is not applied twice: {again}");
    assert_eq!(keep_changes(), before, "the primary took the write once");
    assert_eq!(text_of(&edge, "/q/keep.txt"), (200, "v2".into()));
}

#[test]
fn the_write_queue_needs_a_primary() {
    let dir = TempDir::new("queue-local");
    let (ok, log) = Server::run_to_exit(dir.path(), &["--write-queue"]);
    assert!(!ok);
    assert!(log.contains("--write-queue needs --primary-url"), "{log}");
}
