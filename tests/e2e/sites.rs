//! Many sites on one host (`--sites`): routing by host, each site's own
//! database, token and limits, sites opened on demand and closed when idle,
//! and the sites file read again while serving.

use crate::support::*;
use reqwest::blocking::Response;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN_A: &str = "token-of-site-a";
const TOKEN_B: &str = "token-of-site-b";

fn get(s: &Server, host: &str, path: &str) -> Response {
    client().get(s.url(path)).header("host", host).send().unwrap()
}

fn put(s: &Server, host: &str, token: &str, path: &str, body: impl Into<Vec<u8>>) -> Response {
    client().put(s.url(path)).header("host", host).bearer_auth(token).body(body.into()).send().unwrap()
}

fn write(path: &Path, text: &str) {
    // Written beside and renamed, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Two replica sites (namespaces `a` and `b` of `primary`) and a local one.
fn three_sites(primary: &Sqld, extra: &str) -> String {
    format!(
        r#"
[[site]]
name = "a"
hosts = ["a.test", "*.a.test"]
primary = "{url}"
namespace = "a"
write_token = "{TOKEN_A}"
{extra}

[[site]]
name = "b"
hosts = ["b.test"]
primary = "{url}"
namespace = "b"
write_token = "{TOKEN_B}"

[[site]]
name = "c"
hosts = ["c.test"]
local = true
write_token = "token-of-site-c"
"#,
        url = primary.url()
    )
}

fn serve(dir: &TempDir, sites: &str, extra: &[&str]) -> Server {
    let file = dir.path().join("sites.toml");
    write(&file, sites);
    let data = dir.path().join("data");
    let mut args = vec!["--sites", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&data, &args, None)
}

fn primary_with(namespaces: &[&str]) -> Sqld {
    let primary = Sqld::with_namespaces();
    for ns in namespaces {
        primary.create_namespace(ns);
    }
    primary
}

fn site_state(s: &Server, name: &str) -> serde_json::Value {
    let status = status(s);
    status["sites"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap_or_default()
}

#[test]
fn the_same_path_on_two_sites_is_two_files_and_tokens_stay_with_their_site() {
    let primary = primary_with(&["a", "b"]);
    let dir = TempDir::new("sites");
    let edge = serve(&dir, &three_sites(&primary, ""), &[]);

    assert_eq!(put(&edge, "a.test", TOKEN_A, "/index.html", "site A").status(), 201);
    assert_eq!(put(&edge, "b.test", TOKEN_B, "/index.html", "site B").status(), 201);
    assert_eq!(get(&edge, "a.test", "/index.html").text().unwrap(), "site A");
    assert_eq!(get(&edge, "b.test", "/index.html").text().unwrap(), "site B");
    // The host is compared without port, trailing dot or case; a wildcard
    // covers any name below it.
    assert_eq!(get(&edge, "A.Test.:8080", "/index.html").text().unwrap(), "site A");
    assert_eq!(get(&edge, "www.a.test", "/index.html").text().unwrap(), "site A");
    // The local site has no such file.
    assert_eq!(get(&edge, "c.test", "/index.html").status(), 404);

    // A token is its own site's only.
    let r = put(&edge, "b.test", TOKEN_A, "/index.html", "from A's token");
    assert_eq!(r.status(), 403);
    assert_eq!(put(&edge, "c.test", TOKEN_B, "/x", "from B's token").status(), 403);
    let r = client().delete(edge.url("/index.html")).header("host", "b.test").bearer_auth(TOKEN_A).send().unwrap();
    assert_eq!(r.status(), 403);
    let r = client().put(edge.url("/index.html")).header("host", "b.test").body("no token").send().unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(edge.url("/_turserver/token")).header("host", "b.test").bearer_auth(TOKEN_A).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(get(&edge, "b.test", "/index.html").text().unwrap(), "site B");

    // Each namespace on the primary holds its own site's file.
    let hash = |ns| primary.query_column_in(Some(ns), "SELECT hash FROM files WHERE path = 'index.html'", vec![]);
    assert_eq!(hash("a"), vec![libsql::Value::Text(sha256_hex(b"site A"))]);
    assert_eq!(hash("b"), vec![libsql::Value::Text(sha256_hex(b"site B"))]);

    // Hosts no site answers, and requests naming none.
    let r = get(&edge, "nobody.test", "/index.html");
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("no site on this server answers to the host \"nobody.test\""));
    // HTTP/1.0 without a Host is for the address it reached.
    let (code, body) = edge.raw("GET /index.html HTTP/1.0\r\n\r\n");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("answers to the host \"127.0.0.1\""), "{body}");
    let (code, body) = edge.raw("GET /index.html HTTP/1.1\r\nHost: a.test:port\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 400, "{body}");

    // The host's own endpoints answer for every site.
    let status = status(&edge);
    assert_eq!(status["mode"], "sites");
    let a = site_state(&edge, "a");
    assert_eq!((a["state"].as_str(), a["files"].as_u64(), a["namespace"].as_str()), (Some("open"), Some(1), Some("a")));
    assert!(a["sync"]["replication_index"].as_u64().unwrap() > 0, "{a}");
    let c = site_state(&edge, "c");
    assert_eq!((c["state"].as_str(), c["mode"].as_str(), c["files"].as_u64()), (Some("open"), Some("local"), Some(0)), "{c}");
    let metrics = edge.get("/metrics").text().unwrap();
    assert!(metrics.contains("turserver_site_requests_total{site=\"a\"} "), "{metrics}");
    assert!(metrics.contains("turserver_site_open{site=\"b\"} 1"), "{metrics}");
    assert!(edge.metric("turserver_site_response_bytes_total{site=\"a\"}") >= 18.0, "{metrics}");
}

#[test]
fn a_default_site_answers_unknown_hosts_and_requests_without_one() {
    let dir = TempDir::new("sites-default");
    let sites = "default = \"main\"\n[[site]]\nname = \"main\"\nhosts = [\"main.test\"]\nlocal = true\nwrite_token = \"t\"\n\
                 [[site]]\nname = \"other\"\nhosts = [\"other.test\"]\nlocal = true\nwrite_token = \"u\"\n";
    let edge = serve(&dir, sites, &[]);
    assert_eq!(put(&edge, "main.test", "t", "/hello", "main").status(), 201);
    assert_eq!(get(&edge, "elsewhere.test", "/hello").text().unwrap(), "main");
    let (code, body) = edge.raw("GET /hello HTTP/1.0\r\n\r\n");
    assert_eq!((code, body.as_str()), (200, "main"));
    assert_eq!(get(&edge, "other.test", "/hello").status(), 404);
}

#[test]
fn limits_refuse_the_write_that_passes_them_and_deletes_free_them() {
    let primary = primary_with(&["a", "b"]);
    let dir = TempDir::new("sites-limits");
    let edge = serve(&dir, &three_sites(&primary, "max_files = 2\nmax_bytes = 1000\nmax_file_size = 700"), &[]);
    let count = || primary.query_column_in(Some("a"), "SELECT count(*) FROM files WHERE path NOT LIKE '\\_turserver/%' ESCAPE '\\'", vec![]);

    assert_eq!(put(&edge, "a.test", TOKEN_A, "/one", vec![1u8; 400]).status(), 201);
    assert_eq!(put(&edge, "a.test", TOKEN_A, "/two", vec![2u8; 400]).status(), 201);
    // A third file.
    let r = put(&edge, "a.test", TOKEN_A, "/three", vec![3u8; 10]);
    assert_eq!(r.status(), 507);
    let why = r.text().unwrap();
    assert!(why.contains("max_files") && why.contains("at most 2 files"), "{why}");
    assert_eq!(get(&edge, "a.test", "/three").status(), 404);
    // One file too large.
    let r = put(&edge, "a.test", TOKEN_A, "/two", vec![9u8; 701]);
    assert_eq!(r.status(), 413);
    assert!(r.text().unwrap().contains("max_file_size"));
    assert_eq!(get(&edge, "a.test", "/two").bytes().unwrap().as_ref(), &[2u8; 400][..]);
    // A replacement within the size, past the bytes: 400 + 601 > 1000.
    let r = put(&edge, "a.test", TOKEN_A, "/two", vec![5u8; 601]);
    assert_eq!(r.status(), 507);
    assert!(r.text().unwrap().contains("max_bytes"));
    // One that fits: 400 + 600.
    assert_eq!(put(&edge, "a.test", TOKEN_A, "/two", vec![6u8; 600]).status(), 204);

    // A batch that would pass the limit stores none of its files.
    let batch = tar_of(&[("x", b"x".as_slice()), ("y", b"y".as_slice())]);
    let r = client().post(edge.url("/_api/batch")).header("host", "a.test").bearer_auth(TOKEN_A).body(batch.clone()).send().unwrap();
    assert_eq!(r.status(), 507);
    assert!(r.text().unwrap().contains("max_files"));
    assert_eq!(get(&edge, "a.test", "/x").status(), 404);
    assert_eq!(count(), vec![libsql::Value::Integer(2)]);

    // The other site is not limited.
    for i in 0..3 {
        assert_eq!(put(&edge, "b.test", TOKEN_B, &format!("/f{i}"), vec![0u8; 700]).status(), 201);
    }

    // Deleting frees the quota at once.
    let r = client().delete(edge.url("/one")).header("host", "a.test").bearer_auth(TOKEN_A).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(put(&edge, "a.test", TOKEN_A, "/three", vec![3u8; 10]).status(), 201);
    let a = site_state(&edge, "a");
    assert_eq!((a["files"].as_u64(), a["bytes"].as_u64()), (Some(2), Some(610)), "{a}");
    assert_eq!(a["limits"]["max_files"], 2);
}

#[test]
fn an_idle_site_closes_and_reopens_with_what_was_written_while_it_was_closed() {
    let primary = primary_with(&["a", "b"]);
    let dir = TempDir::new("sites-idle");
    let sites = three_sites(&primary, "");
    let edge = serve(&dir, &sites, &["--site-idle", "1s", "--max-open-sites", "1"]);
    let other_dir = TempDir::new("sites-other");
    let other = serve(&other_dir, &sites, &[]);

    assert_eq!(put(&other, "a.test", TOKEN_A, "/page", "first").status(), 201);
    assert_eq!(get(&edge, "a.test", "/page").text().unwrap(), "first");
    assert_eq!(site_state(&edge, "a")["state"], "open");
    // Opening b closes a: one site open at most.
    assert_eq!(get(&edge, "b.test", "/page").status(), 404);
    assert_eq!(site_state(&edge, "a")["state"], "closed");
    assert_eq!(site_state(&edge, "b")["state"], "open");
    // Idle for a second: b closes too.
    let closed = eventually(Duration::from_secs(10), || (site_state(&edge, "b")["state"] == "closed").then_some(()));
    assert!(closed.is_some(), "{}", edge.log());

    // Written on another edge while a is closed here.
    assert_eq!(put(&other, "a.test", TOKEN_A, "/page", "second").status(), 204);
    assert_eq!(put(&other, "a.test", TOKEN_A, "/new", "new").status(), 201);
    // The first request opens it again, synced before it answers.
    assert_eq!(get(&edge, "a.test", "/page").text().unwrap(), "second");
    assert_eq!(get(&edge, "a.test", "/new").text().unwrap(), "new");
    let a = site_state(&edge, "a");
    assert_eq!((a["state"].as_str(), a["files"].as_u64()), (Some("open"), Some(2)), "{a}");
    assert!(edge.metric("turserver_site_opens_total{site=\"a\"}") >= 2.0);
}

#[test]
fn the_sites_file_is_read_again_without_dropping_requests_to_other_sites() {
    let dir = TempDir::new("sites-reload");
    let site = |name: &str| format!("[[site]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\nlocal = true\nwrite_token = \"t-{name}\"\n");
    let file = dir.path().join("sites.toml");
    let edge = serve(&dir, &format!("{}{}", site("keep"), site("gone")), &[]);
    assert_eq!(put(&edge, "keep.test", "t-keep", "/f", "kept").status(), 201);
    assert_eq!(put(&edge, "gone.test", "t-gone", "/f", "gone").status(), 201);

    // Requests to the kept site all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = edge.url("/f");
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut bad) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client().get(&addr).header("host", "keep.test").send() {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => bad.push(format!("{}", r.status())),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (ok, bad)
        })
    };

    // A broken file is refused; the sites as they were keep serving.
    write(&file, &format!("{}{}[[site]]\nname = \"bad\"\nlocal = true\nmax_files = \"many\"\n", site("keep"), site("gone")));
    let refused = eventually(Duration::from_secs(10), || edge.log().contains("was not reloaded").then_some(()));
    assert!(refused.is_some(), "{}", edge.log());
    assert!(edge.logged("line 14"), "{}", edge.log());
    assert_eq!(get(&edge, "gone.test", "/f").text().unwrap(), "gone");

    // A site added, one removed.
    write(&file, &format!("{}{}", site("keep"), site("added")));
    let added = eventually(Duration::from_secs(10), || {
        let r = get(&edge, "added.test", "/f");
        (r.status() == 404 && !r.text().unwrap().contains("no site")).then_some(())
    });
    assert!(added.is_some(), "{}", edge.log());
    let r = get(&edge, "gone.test", "/f");
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("no site on this server answers"));
    assert_eq!(put(&edge, "added.test", "t-added", "/f", "added").status(), 201);
    assert_eq!(get(&edge, "added.test", "/f").text().unwrap(), "added");

    // SIGHUP reads it again too: the removed site's data was kept on disk.
    write(&file, &format!("{}{}", site("keep"), site("gone")));
    let _ = std::process::Command::new("kill").args(["-HUP", &edge.pid().to_string()]).status();
    let back = eventually(Duration::from_secs(10), || (get(&edge, "gone.test", "/f").status() == 200).then_some(()));
    assert!(back.is_some(), "{}", edge.log());
    assert_eq!(get(&edge, "gone.test", "/f").text().unwrap(), "gone");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad) = hammer.join().unwrap();
    assert!(ok > 0 && bad.is_empty(), "{ok} answered, failed: {bad:?}");
    assert_eq!(edge.metric("turserver_sites_reloads_total"), 2.0);
    assert_eq!(edge.metric("turserver_sites_reload_failures_total"), 1.0);
}

#[test]
fn a_broken_sites_file_or_a_single_site_flag_stops_the_start_with_the_reason() {
    let dir = TempDir::new("sites-broken");
    let file = dir.path().join("sites.toml");
    let data = dir.path().join("data");
    let arg = file.to_str().unwrap();
    write(&file, "[[site]]\nname = \"a\"\nhosts = [\"x.test\"]\nlocal = true\n[[site]]\nname = \"b\"\nhosts = [\"X.TEST\"]\nlocal = true\n");
    let (ok, log) = Server::run_to_exit(&data, &["--sites", arg]);
    assert!(!ok);
    assert!(log.contains("line 7") && log.contains("already claimed by site \"a\""), "{log}");
    write(&file, "[[site]]\nname = \"a\"\nhosts = [\"x.test\"]\n");
    let (ok, log) = Server::run_to_exit(&data, &["--sites", arg]);
    assert!(!ok && log.contains("no database"), "{log}");
    write(&file, "[[site]]\nname = \"a\"\nlocal = true\n");
    let (ok, log) = Server::run_to_exit(&data, &["--sites", arg, "--write-token", "x"]);
    assert!(!ok && log.contains("--write-token cannot be used with --sites"), "{log}");
}

#[test]
fn a_worker_deployed_to_one_site_runs_there_only() {
    let dir = TempDir::new("sites-worker");
    let site = |name: &str| format!("[[site]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\nlocal = true\nwrite_token = \"t-{name}\"\n");
    let edge = serve(&dir, &format!("{}{}{}", site("one"), site("two"), site("three")), &[]);
    let v1 = std::fs::read(test_worker("v1")).unwrap();
    let deploy = |host: &str, token: &str| {
        client().put(edge.url("/_turserver/worker")).header("host", host).bearer_auth(token).body(v1.clone()).send().unwrap()
    };
    assert_eq!(deploy("one.test", "t-two").status(), 403);
    assert_eq!(deploy("one.test", "t-one").status(), 200);
    assert_eq!(get(&edge, "one.test", "/version").text().unwrap(), "v1");
    // The others still run the default worker, which has no /version.
    assert_eq!(get(&edge, "two.test", "/version").status(), 404);
    assert_eq!(get(&edge, "three.test", "/version").status(), 404);
    // The same component on a second site: its own instances, one compiled copy.
    assert_eq!(deploy("two.test", "t-two").status(), 200);
    assert_eq!(get(&edge, "two.test", "/version").text().unwrap(), "v1");
    assert_eq!(site_state(&edge, "one")["worker"], site_state(&edge, "two")["worker"]);
    assert_ne!(site_state(&edge, "one")["worker"], site_state(&edge, "three")["worker"]);
}

#[test]
fn sites_running_the_same_worker_take_turns_with_its_instances_and_see_only_their_own() {
    let dir = TempDir::new("sites-shared-instances");
    let names = ["one", "two", "three", "four"];
    let site = |name: &str| format!("[[site]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\nlocal = true\nwrite_token = \"t-{name}\"\n");
    let edge = serve(&dir, &names.map(site).concat(), &[]);
    for name in names {
        let token = format!("t-{name}");
        assert_eq!(put(&edge, &format!("{name}.test"), &token, "/page.txt", format!("page of {name}")).status(), 201);
    }
    // Only site one has site rules: a custom 404 page.
    let one = ("one.test", "t-one");
    assert_eq!(put(&edge, one.0, one.1, "/404.html", "missing on one").status(), 201);
    let r = client().put(edge.url("/_api/site")).header("host", one.0).bearer_auth(one.1).body(r#"{"not_found_page": "404.html"}"#).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    for _ in 0..10 {
        for name in names {
            let host = format!("{name}.test");
            let r = get(&edge, &host, "/page.txt");
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().unwrap(), format!("page of {name}"));
            let missing = get(&edge, &host, "/nothing-here");
            assert_eq!(missing.status(), 404);
            let body = missing.text().unwrap();
            assert_eq!(body == "missing on one", name == "one", "{name} answered its 404 with {body:?}");
        }
    }
    // One request at a time over four sites running the built-in worker:
    // its warm instances serve them all, rather than one set per site.
    let made = edge.metric("turserver_worker_instantiations_total");
    assert!(made < names.len() as f64, "{made} instances made for requests one at a time over four sites");
}

/// A TCP proxy to `upstream` that counts the bytes sent through it (both
/// ways) and the connections open.
fn counting_proxy(upstream: &str) -> (String, Arc<AtomicU64>, Arc<AtomicU64>) {
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (bytes, open) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (counted, opened) = (bytes.clone(), open.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
            opened.fetch_add(1, Ordering::SeqCst);
            let ends = Arc::new(AtomicU64::new(2));
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let (counted, opened, ends) = (counted.clone(), opened.clone(), ends.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        counted.fetch_add(n as u64, Ordering::SeqCst);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    if ends.fetch_sub(1, Ordering::SeqCst) == 1 {
                        opened.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        }
    });
    (format!("http://{addr}"), bytes, open)
}

#[test]
fn a_closed_site_sends_nothing_to_its_primary() {
    let primary = primary_with(&["a"]);
    let (via, bytes, open) = counting_proxy(&primary.url());
    let dir = TempDir::new("sites-quiet");
    let sites = format!(
        "[[site]]\nname = \"a\"\nhosts = [\"a.test\"]\nprimary = \"{via}\"\nnamespace = \"a\"\nwrite_token = \"{TOKEN_A}\"\nsync_interval = \"100ms\"\n"
    );
    // Syncs on the interval (no commit stream), so an open site is heard.
    let edge = serve(&dir, &sites, &["--site-idle", "2s", "--no-commit-stream"]);
    assert_eq!(put(&edge, "a.test", TOKEN_A, "/page", "hello").status(), 201);
    let opened = bytes.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get(&edge, "a.test", "/page").text().unwrap(), "hello");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(bytes.load(Ordering::SeqCst) > opened, "an open site syncs with its primary");

    let closed = eventually(Duration::from_secs(15), || (site_state(&edge, "a")["state"] == "closed").then_some(()));
    assert!(closed.is_some(), "{}", edge.log());
    let quiet = eventually(Duration::from_secs(10), || (open.load(Ordering::SeqCst) == 0).then_some(()));
    assert!(quiet.is_some(), "{} connections to the primary still open after the site closed", open.load(Ordering::SeqCst));
    let after_close = bytes.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(bytes.load(Ordering::SeqCst), after_close, "a closed site's edge talked to its primary");
    assert_eq!(open.load(Ordering::SeqCst), 0);
    // And it opens again on the next request.
    assert_eq!(get(&edge, "a.test", "/page").text().unwrap(), "hello");
    assert!(bytes.load(Ordering::SeqCst) > after_close);
}
