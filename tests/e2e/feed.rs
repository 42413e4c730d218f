//! The change feed: `/_api/changes` (pages and long polls) and
//! `/_api/events` (Server-Sent Events), across two edges of a real primary,
//! with writes made through an edge and straight on the primary.

use crate::access::{issue, new_key};
use crate::support::*;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

/// One page of `/_api/changes`: (status, body as JSON).
fn changes(edge: &Server, query: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = client().get(edge.url(&format!("/_api/changes{query}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| serde_json::Value::String(text)))
}

/// (seq, kind, path, version) of each change of a page.
fn rows(page: &serde_json::Value) -> Vec<(u64, String, String, Option<u64>)> {
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["seq"].as_u64().unwrap(),
                c["kind"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
                c["version"].as_u64(),
            )
        })
        .collect()
}

/// Follows the feed from `since` until `count` changes have come (long
/// polls of a few seconds, for at most `within`).
fn collect(edge: &Server, since: u64, count: usize, within: Duration) -> Vec<(u64, String, String, Option<u64>)> {
    let deadline = Instant::now() + within;
    let (mut out, mut cursor) = (Vec::new(), since);
    while out.len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} changes came: {out:?}", out.len());
        let (status, page) = changes(edge, &format!("?since={cursor}&wait=3s"), Some(TOKEN));
        assert_eq!(status, 200, "{page}");
        out.extend(rows(&page));
        cursor = page["next"].as_u64().unwrap();
    }
    out
}

/// The latest sequence an edge holds.
fn latest(edge: &Server) -> u64 {
    let (status, page) = changes(edge, "?limit=1", Some(TOKEN));
    assert_eq!(status, 200, "{page}");
    page["latest"].as_u64().unwrap()
}

fn delete(edge: &Server, path: &str) -> u16 {
    client().delete(edge.url(path)).bearer_auth(TOKEN).send().unwrap().status().as_u16()
}

/// An open `/_api/events` stream.
struct Events(BufReader<reqwest::blocking::Response>);

impl Events {
    fn open(edge: &Server, query: &str, last_event_id: Option<u64>) -> Events {
        let mut req = client().get(edge.url(&format!("/_api/events{query}"))).bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let r = req.send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        Events(BufReader::new(r))
    }

    /// The next event's (id, name, data); None when the stream ended.
    fn next(&mut self) -> Option<(Option<u64>, String, serde_json::Value)> {
        let (mut id, mut name, mut data) = (None, String::new(), String::new());
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if !data.is_empty() {
                    return Some((id, name, serde_json::from_str(&data).unwrap()));
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }

    /// The next change: (seq, kind, path).
    fn change(&mut self) -> (u64, String, String) {
        let (id, name, data) = self.next().expect("the stream ended before the next change");
        assert_eq!(name, "change", "{data}");
        assert_eq!(id, data["seq"].as_u64());
        (id.unwrap(), data["kind"].as_str().unwrap().into(), data["path"].as_str().unwrap().into())
    }
}

#[test]
fn a_write_on_one_edge_appears_in_the_other_edges_feed_once_and_in_order() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, "1s");
    let b = Server::replica(&primary, "1s");
    let start = latest(&b);

    assert_eq!(a.put("/x.txt", None, b"one".to_vec()).status(), 201);
    assert_eq!(a.put("/a.txt", None, b"a".to_vec()).status(), 201);
    assert_eq!(a.put("/x.txt", None, b"two".to_vec()).status(), 204);
    assert_eq!(delete(&a, "/a.txt"), 204);
    let got = collect(&b, start, 4, Duration::from_secs(30));
    let kinds: Vec<(&str, &str)> = got.iter().map(|(_, k, p, _)| (k.as_str(), p.as_str())).collect();
    assert_eq!(kinds, [("put", "x.txt"), ("put", "a.txt"), ("put", "x.txt"), ("delete", "a.txt")], "{got:?}");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "sequences grow: {got:?}");
    let (x1, a1, x2, a_gone) = (got[0].3.unwrap(), got[1].3.unwrap(), got[2].3.unwrap(), got[3].3.unwrap());
    assert!(x2 > x1, "a replacement is a new version: {got:?}");
    assert_eq!(a_gone, a1, "a delete names the version it removed");
    // Announced only once the edge holds it: a GET there sees it at once.
    assert_eq!(b.get("/x.txt").text().unwrap(), "two");
    assert_eq!(b.get("/a.txt").status(), 404);

    // Nothing more, and nothing twice: a poll from the last cursor waits.
    let last = got[3].0;
    let (status, page) = changes(&b, &format!("?since={last}"), Some(TOKEN));
    assert_eq!((status, rows(&page).len()), (200, 0), "{page}");

    // A row written straight into the primary's `files` table is logged too.
    primary.execute(
        "INSERT INTO files (path, content, content_type) VALUES ('direct.txt', ?1, 'text/plain')",
        vec![libsql::Value::Blob(b"by hand".to_vec())],
    );
    let got = collect(&b, last, 1, Duration::from_secs(30));
    assert_eq!((got[0].1.as_str(), got[0].2.as_str()), ("put", "direct.txt"), "{got:?}");
    assert_eq!(b.get("/direct.txt").text().unwrap(), "by hand");

    // A batch publishes its files (and removals) as one change per path.
    let batch = tar_of(&[("d/1.txt", "1"), ("d/2.txt", "2")]);
    let r = client().post(a.url("/_api/batch")).bearer_auth(TOKEN).body(batch).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let got = collect(&b, got[0].0, 2, Duration::from_secs(30));
    let mut paths: Vec<&str> = got.iter().map(|c| c.2.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["d/1.txt", "d/2.txt"], "{got:?}");
    assert!(got.iter().all(|c| c.1 == "put"), "{got:?}");

    // Paging: `limit` and `next` walk the log without gaps or repeats.
    let (_, p1) = changes(&b, &format!("?since={start}&limit=3"), Some(TOKEN));
    let (_, p2) = changes(&b, &format!("?since={}&limit=3", p1["next"]), Some(TOKEN));
    let (_, p3) = changes(&b, &format!("?since={}&limit=3", p2["next"]), Some(TOKEN));
    let walked: Vec<u64> = [&p1, &p2, &p3].iter().flat_map(|p| rows(p)).map(|c| c.0).collect();
    assert_eq!(walked.len(), 7, "{p1} {p2} {p3}");
    assert!(walked.windows(2).all(|w| w[0] < w[1]), "{walked:?}");
    // `prefix` keeps only the paths under it.
    let (_, only_d) = changes(&b, &format!("?since={start}&prefix=/d/"), Some(TOKEN));
    assert_eq!(rows(&only_d).len(), 2, "{only_d}");
}

#[test]
fn a_long_poll_wakes_on_a_change_and_ends_empty_when_none_comes() {
    let edge = Server::local();
    let since = latest(&edge);
    let started = Instant::now();
    let (status, page) = changes(&edge, &format!("?since={since}&wait=1s"), None);
    assert_eq!(status, 200, "{page}");
    assert_eq!(rows(&page).len(), 0);
    assert_eq!(page["next"].as_u64(), Some(since));
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited: {:?}", started.elapsed());

    let url = edge.url(&format!("/_api/changes?since={since}&wait=30s"));
    let poll = std::thread::spawn(move || client().get(url).send().unwrap().json::<serde_json::Value>().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!poll.is_finished(), "the poll waits for a change");
    assert_eq!(edge.put("/woke.txt", None, b"w".to_vec()).status(), 201);
    let page = poll.join().unwrap();
    let got = rows(&page);
    assert_eq!(got.len(), 1, "{page}");
    assert_eq!(got[0].2, "woke.txt");
    assert_eq!(page["next"].as_u64(), Some(got[0].0));

    // Bad queries say what is wrong.
    for (query, says) in [("?since=-1", "since"), ("?limit=0", "limit"), ("?limit=5000", "limit"), ("?wait=2h", "wait"), ("?wait=soon", "wait")] {
        let (status, body) = changes(&edge, query, None);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.as_str().unwrap().contains(says), "{query}: {body}");
    }
    let r = client().post(edge.url("/_api/changes")).send().unwrap();
    assert_eq!(r.status(), 405);
}

#[test]
fn events_resume_from_last_event_id_across_a_restart_missing_nothing() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, "1s");
    let dir = TempDir::new("events-edge");
    let flags = ["--primary-url", &primary.url(), "--sync-interval", "1s"];
    let mut b = Server::start(dir.path(), &flags, None);

    let mut events = Events::open(&b, "", None);
    for i in 0..3 {
        assert_eq!(a.put(&format!("/e/{i}.txt"), None, b"e".to_vec()).status(), 201);
    }
    let seen: Vec<(u64, String, String)> = (0..3).map(|_| events.change()).collect();
    let paths: Vec<&str> = seen.iter().map(|c| c.2.as_str()).collect();
    assert_eq!(paths, ["e/0.txt", "e/1.txt", "e/2.txt"]);
    let last_id = seen[2].0;

    // Shutdown ends the stream cleanly, and the edge exits.
    b.signal_term();
    assert!(events.next().is_none(), "the stream ends on shutdown");
    assert_eq!(b.wait_exit(Duration::from_secs(20)), Some(true), "{}", b.log());

    for i in 3..5 {
        assert_eq!(a.put(&format!("/e/{i}.txt"), None, b"e".to_vec()).status(), 201);
    }
    let b = Server::start(dir.path(), &flags, None);
    let mut events = Events::open(&b, "", Some(last_id));
    let resumed: Vec<String> = (0..2).map(|_| events.change().2).collect();
    assert_eq!(resumed, ["e/3.txt", "e/4.txt"]);
    assert_eq!(a.put("/e/5.txt", None, b"e".to_vec()).status(), 201);
    assert_eq!(events.change().2, "e/5.txt", "nothing repeated, nothing extra");

    // A prefix filter, and a cursor given as `since`.
    let mut only_f = Events::open(&b, &format!("?prefix=f/&since={last_id}"), None);
    assert_eq!(a.put("/g/1.txt", None, b"g".to_vec()).status(), 201);
    assert_eq!(a.put("/f/1.txt", None, b"f".to_vec()).status(), 201);
    assert_eq!(only_f.change().2, "f/1.txt");
}

#[test]
fn a_cursor_older_than_the_pruned_log_is_told_to_resync() {
    let dir = TempDir::new("pruned");
    let edge = Server::start(dir.path(), &["--changes-keep", "2"], None);
    let since = latest(&edge);
    for i in 0..5 {
        assert_eq!(edge.put(&format!("/p/{i}.txt"), None, b"p".to_vec()).status(), 201);
    }
    drop(edge);
    // Pruning runs at start (and every minute).
    let edge = Server::start(dir.path(), &["--changes-keep", "2"], None);
    let (status, body) = eventually(Duration::from_secs(20), || {
        let (status, body) = changes(&edge, &format!("?since={since}"), None);
        (status == 410).then_some((status, body))
    })
    .expect("the old cursor is refused once pruned");
    assert_eq!(status, 410);
    let oldest = body["oldest"].as_u64().unwrap();
    assert!(body["error"].as_str().unwrap().contains("pruned"), "{body}");
    let (status, page) = changes(&edge, &format!("?since={}", oldest - 1), None);
    assert_eq!(status, 200, "{page}");
    let kept: Vec<String> = rows(&page).into_iter().map(|c| c.2).collect();
    assert_eq!(kept, ["p/3.txt", "p/4.txt"]);
    let r = client().get(edge.url(&format!("/_api/events?since={since}"))).send().unwrap();
    assert_eq!(r.status(), 410);
}

#[test]
fn the_feed_shows_a_change_only_to_whoever_may_read_its_path() {
    let edge = Server::local();
    let keys = TempDir::new("feed-keys");
    let (_, key) = new_key(&edge, keys.path(), "k.key", true);
    let since = latest(&edge);
    let rules = r#"{"private": ["members/**"]}"#;
    assert_eq!(client().put(edge.url("/_api/site")).bearer_auth(TOKEN).body(rules).send().unwrap().status(), 200);
    assert_eq!(edge.put("/members/a.txt", None, b"m".to_vec()).status(), 201);
    assert_eq!(edge.put("/public.txt", None, b"p".to_vec()).status(), 201);
    let paths = |token: Option<&str>| -> Vec<String> {
        let (status, page) = changes(&edge, &format!("?since={since}"), token);
        assert_eq!(status, 200, "{page}");
        rows(&page).into_iter().map(|c| c.2).collect()
    };
    // A deployed worker is logged too (it is a row under `_turserver/`).
    let worker = std::fs::read(test_worker("v1")).unwrap();
    let r = client().put(edge.url("/_turserver/worker")).bearer_auth(TOKEN).body(worker).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert_eq!(paths(None), ["public.txt"]);
    let reader = issue(&key, &["members/**:read"], "10m");
    assert_eq!(paths(Some(&reader)), ["members/a.txt", "public.txt"]);
    assert_eq!(paths(Some(TOKEN)), ["_turserver/config/site", "members/a.txt", "public.txt", "_turserver/worker.wasm"]);
    // A token that is not the write token sees what anyone sees; a signed
    // token that fails verification is refused with the reason.
    assert_eq!(paths(Some("not-a-token")), ["public.txt"]);
    // The signature's last character changed (to one it is not).
    let (head, last) = reader.split_at(reader.len() - 1);
    let tampered = format!("{head}{}", if last == "A" { "B" } else { "A" });
    let (status, body) = changes(&edge, &format!("?since={since}"), Some(&tampered));
    assert_eq!(status, 401, "{body}");
}
