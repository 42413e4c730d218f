//! Local mode: the embedded default, no primary.

use crate::support::*;
use serde_json::Value;

#[test]
fn put_get_head_delete_round_trip() {
    let s = Server::local();
    let body = b"body { color: red }\n".to_vec();

    let r = s.put("/site/style.css", None, body.clone());
    assert_eq!(r.status(), 201);
    let created_etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(created_etag, format!("\"{}\"", sha256_hex(&body)));
    assert_eq!(r.headers()["location"], "/site/style.css");

    let r = s.get("/site/style.css");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(r.headers()["content-length"], body.len().to_string().as_str());
    assert_eq!(r.headers()["etag"].to_str().unwrap(), created_etag);
    assert!(r.headers().contains_key("last-modified"));
    assert_eq!(r.bytes().unwrap().to_vec(), body);

    let r = client().head(s.url("/site/style.css")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], body.len().to_string().as_str());
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
    assert!(r.bytes().unwrap().is_empty());

    // Replacing answers 204 and serves the new bytes, type from the request.
    let r = s.put("/site/style.css", Some("text/plain"), b"v2".to_vec());
    assert_eq!(r.status(), 204);
    let r = s.get("/site/style.css");
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.bytes().unwrap().as_ref(), b"v2");

    let r = client().delete(s.url("/site/style.css")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), 204);
    let r = s.get("/site/style.css");
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().unwrap(), "not found\n");
    let r = client().delete(s.url("/site/style.css")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn index_html_for_directories_and_404s() {
    let s = Server::local();
    assert_eq!(s.get("/").status(), 404);
    assert_eq!(s.put("/index.html", None, b"<h1>home</h1>".to_vec()).status(), 201);
    assert_eq!(s.put("/docs/index.html", None, b"<h1>docs</h1>".to_vec()).status(), 201);

    let r = s.get("/");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.text().unwrap(), "<h1>home</h1>");
    assert_eq!(s.get("/docs/").text().unwrap(), "<h1>docs</h1>");

    let r = client()
        .get(s.url("/docs?page=2"))
        .send()
        .map(|r| (r.status(), r.url().path().to_string()))
        .unwrap();
    assert_eq!(r, (reqwest::StatusCode::OK, "/docs/".to_string()), "redirected to the directory");
    let no_redirect = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirect.get(s.url("/docs?page=2")).send().unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/docs/?page=2");

    assert_eq!(s.get("/missing.txt").status(), 404);
    assert_eq!(s.get("/nodir/").status(), 404);
}

#[test]
fn writes_need_the_token() {
    let s = Server::local();
    let r = client().put(s.url("/a.txt")).body("x").send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = client().put(s.url("/a.txt")).bearer_auth("wrong").body("x").send().unwrap();
    assert_eq!(r.status(), 403);
    let r = client().put(s.url("/a.txt")).header("authorization", "Basic dXNlcjpwYXNz").body("x").send().unwrap();
    assert_eq!(r.status(), 403);
    let r = client().delete(s.url("/a.txt")).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = client().delete(s.url("/a.txt")).bearer_auth("wrong").send().unwrap();
    assert_eq!(r.status(), 403);
    // Nothing was stored by the refused writes.
    assert_eq!(s.get("/a.txt").status(), 404);
    let list: Value = s.get("/_api/files").json().unwrap();
    assert_eq!(list["files"].as_array().unwrap().len(), 0);
}

#[test]
fn traversal_and_junk_paths_are_400() {
    let s = Server::local();
    assert_eq!(s.put("/secret.txt", None, b"s".to_vec()).status(), 201);
    for target in [
        "/../secret.txt",
        "/a/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/a/%2e%2e/secret.txt",
        "/a\\..\\secret.txt",
        "/a%5c..%5csecret.txt",
        "/secret.txt%00.png",
        "/%ff%fe.txt",
        "/bad%zzescape",
    ] {
        let (status, body) = s.raw(&format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        assert_eq!(status, 400, "GET {target}: {body}");
        assert!(body.starts_with("bad path:"), "GET {target}: {body}");
        let (status, _) = s.raw(&format!(
            "PUT {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        ));
        assert_eq!(status, 400, "PUT {target}");
    }
    let list: Value = s.get("/_api/files").json().unwrap();
    assert_eq!(list["files"].as_array().unwrap().len(), 1, "no write got through: {list}");
}

#[test]
fn list_by_prefix_with_cursor() {
    let s = Server::local();
    for p in ["img/a.png", "img/b.png", "img/c.png", "imgx.png", "js/app.js"] {
        assert_eq!(s.put(&format!("/{p}"), None, p.as_bytes().to_vec()).status(), 201, "{p}");
    }
    let page: Value = s.get("/_api/files?prefix=img/&limit=2").json().unwrap();
    let paths: Vec<&str> = page["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["img/a.png", "img/b.png"]);
    let first = &page["files"][0];
    assert_eq!(first["size"], 9);
    assert_eq!(first["content_type"], "image/png");
    assert_eq!(first["etag"], format!("\"{}\"", sha256_hex(b"img/a.png")));
    assert!(first["last_modified"].as_str().unwrap().ends_with('Z'));
    let cursor = page["next_cursor"].as_str().unwrap();

    let page: Value = s.get(&format!("/_api/files?prefix=img/&limit=2&cursor={cursor}")).json().unwrap();
    let paths: Vec<&str> = page["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["img/c.png"]);
    assert!(page["next_cursor"].is_null());

    let all: Value = s.get("/_api/files").json().unwrap();
    assert_eq!(all["files"].as_array().unwrap().len(), 5);
    assert_eq!(s.get("/_api/files?limit=0").status(), 400);
}

#[test]
fn health_is_answered_by_the_host() {
    let s = Server::local();
    let r = s.get("/_turserver/health");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "ok\n");
}

#[test]
fn data_survives_a_restart() {
    let dir = TempDir::new("restart");
    let body = pseudo_random(3 * 1024 * 1024 + 17, 7);
    {
        let s = Server::start(dir.path(), &[], None);
        assert_eq!(s.put("/keep.bin", None, body.clone()).status(), 201);
    }
    let s = Server::start(dir.path(), &[], None);
    let got = s.get("/keep.bin").bytes().unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&body));
}

#[test]
fn sigterm_drains_in_flight_requests() {
    use std::io::{Read, Write};
    let mut s = Server::local();
    let body = pseudo_random(8 * 1024 * 1024, 11);
    assert_eq!(s.put("/drain.bin", None, body.clone()).status(), 201);

    let mut stream = std::net::TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /drain.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = vec![0u8; 64 * 1024];
    let n = stream.read(&mut got).unwrap();
    got.truncate(n);

    // Shut down while the response is still being sent.
    s.signal_term();
    let refused = eventually(std::time::Duration::from_secs(5), || std::net::TcpStream::connect(s.addr).is_err().then_some(()));
    assert!(refused.is_some(), "no new connections after SIGTERM");
    let mut rest = Vec::new();
    // Read slowly-ish: the server must wait for us.
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                rest.extend_from_slice(&buf[..n]);
                let header_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                if got.len() - header_end + rest.len() >= body.len() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("the download was cut off: {e}"),
        }
    }
    got.extend_from_slice(&rest);
    let header_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(sha256_hex(&got[header_end..]), sha256_hex(&body), "the in-flight download completed intact");
    drop(stream);
    assert_eq!(s.wait_exit(std::time::Duration::from_secs(10)), Some(true), "turserver exited cleanly:\n{}", s.log());
    assert!(s.logged("drained"), "{}", s.log());
}

#[test]
fn a_download_never_mixes_versions_and_may_be_left_mid_way() {
    use std::io::Read;
    let s = Server::local();
    let old = pseudo_random(24 << 20, 1);
    let new = pseudo_random(24 << 20, 2);
    assert_eq!(s.put("/big.bin", None, old.clone()).status(), 201);

    // The file is replaced while a download of it is under way: the download
    // goes on with the old bytes or is cut off, never switching to the new.
    let mut r = client().get(s.url("/big.bin")).send().unwrap();
    assert_eq!(r.status(), 200);
    let mut got = vec![0u8; 64 << 10];
    r.read_exact(&mut got).unwrap();
    assert_eq!(s.put("/big.bin", None, new.clone()).status(), 204);
    let mut rest = Vec::new();
    let _cut_off_is_fine = r.read_to_end(&mut rest);
    got.extend_from_slice(&rest);
    assert!(old.starts_with(&got), "a download of {} bytes strayed from the version it began with", got.len());

    // A client that leaves mid-way frees its instance; the next download is whole.
    for _ in 0..4 {
        let mut r = client().get(s.url("/big.bin")).send().unwrap();
        r.read_exact(&mut [0u8; 4096]).unwrap();
    }
    let r = s.get("/big.bin");
    assert_eq!(r.status(), 200);
    assert_eq!(sha256_hex(&r.bytes().unwrap()), sha256_hex(&new));
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_an_idle_one_is_not() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let (ok, log) = Server::run_to_exit(TempDir::new("send-timeout-0").path(), &["--send-timeout", "0s"]);
    assert!(!ok && log.contains("--send-timeout must be at least 1s"), "{log}");

    let dir = TempDir::new("send-timeout");
    let s = Server::start(dir.path(), &["--send-timeout", "1s"], None);
    let body = pseudo_random(48 << 20, 3);
    assert_eq!(s.put("/big.bin", None, body.clone()).status(), 201);
    assert_eq!(s.put("/small.txt", None, b"small".to_vec()).status(), 201);

    // Asks for 48 MiB and reads nothing: once the socket buffers are full the
    // server's write waits, and after 1 s the server closes the connection.
    let mut stalled = TcpStream::connect(s.addr).unwrap();
    stalled.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _cut_off = stalled.read_to_end(&mut got);
    assert!(started.elapsed() < Duration::from_secs(9), "the stalled connection was left open");
    assert!(got.len() < body.len(), "a client that stopped reading got the whole body");

    // Idle between requests for longer than the timeout: nothing was waiting
    // to be written, so the keep-alive connection still serves.
    let mut idle = TcpStream::connect(s.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ask = |conn: &mut TcpStream| {
        conn.write_all(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 4096];
        let mut text = String::new();
        while !text.ends_with("small") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "the connection closed: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    };
    assert!(ask(&mut idle).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(ask(&mut idle).starts_with("HTTP/1.1 200"));

    // The server still serves the whole file to a client that reads.
    assert_eq!(sha256_hex(&s.get("/big.bin").bytes().unwrap()), sha256_hex(&body));
}
