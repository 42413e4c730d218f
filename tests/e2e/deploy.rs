//! `turserver deploy` and the file commands, run as a person runs them,
//! against real edges (replicas of a real sqld where it matters).

use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `turserver deploy DIR --url URL --token TOKEN EXTRA...`, expected to succeed.
fn deploy(edge: &Server, dir: &Path, extra: &[&str]) -> String {
    let url = edge.url("");
    let mut args = vec!["deploy", dir.to_str().unwrap(), "--url", &url, "--token", TOKEN];
    args.extend(extra);
    let out = cli(&args);
    assert!(out.status.success(), "deploy failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains('\x1b') && !stderr.contains('\r'), "no control characters in a pipe: {stderr:?}");
    text(&out.stdout)
}

/// The replication position a deploy printed.
fn position(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("turserver-position: "))
        .unwrap_or_else(|| panic!("no position in {stdout:?}"))
        .trim()
        .to_string()
}

/// A GET on `edge` that waits for `position` (read-your-writes).
fn get_at(edge: &Server, path: &str, position: &str) -> reqwest::blocking::Response {
    client().get(edge.url(path)).header("turserver-position", position).send().expect("GET")
}

/// Writes `body` at `dir/rel`, making folders.
fn write(dir: &Path, rel: &str, body: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

/// The body of site file `i` in version `v`: text that compresses, or
/// binary that does not.
fn site_file(i: usize, v: u32) -> (String, Vec<u8>) {
    let folder = format!("section-{}/part-{}", i % 7, i % 3);
    match i % 4 {
        0 => (format!("{folder}/page-{i}.html"), format!("<h1>page {i} v{v}</h1>{}", "<p>text</p>".repeat(i % 50)).into_bytes()),
        1 => (format!("{folder}/style-{i}.css"), format!("/* v{v} */ .c{i} {{ color: red }}").into_bytes()),
        2 => (format!("{folder}/data-{i}.json"), format!("{{\"i\": {i}, \"v\": {v}}}").into_bytes()),
        _ => {
            let mut b = pseudo_random(2000 + i, i as u64);
            b.extend(format!("v{v}").as_bytes());
            (format!("{folder}/img-{i}.png"), b)
        }
    }
}

#[test]
fn a_deploy_publishes_a_tree_then_sends_only_what_changed() {
    let primary = Sqld::start();
    let edge = Server::replica(&primary, "100ms");
    let reader = Server::replica(&primary, "100ms");
    let dir = TempDir::new("site");
    let n = 520;
    for i in 0..n {
        let (rel, body) = site_file(i, 1);
        write(dir.path(), &rel, &body);
    }
    write(dir.path(), ".git/config", b"never deployed");

    let out = deploy(&edge, dir.path(), &[]);
    assert!(out.contains(&format!("deployed: {n} files uploaded")), "{out}");
    let at = position(&out);
    for i in 0..n {
        let (rel, body) = site_file(i, 1);
        let r = get_at(&reader, &format!("/{rel}"), &at);
        assert_eq!(r.status(), 200, "{rel}");
        if rel.ends_with(".html") {
            assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        }
        assert_eq!(r.bytes().unwrap().as_ref(), &body[..], "{rel}");
    }
    assert_eq!(get_at(&reader, "/.git/config", &at).status(), 404, ".git/ is never deployed");

    // Nothing changed: nothing is sent.
    let out = deploy(&edge, dir.path(), &[]);
    assert!(out.contains("deployed: 0 files uploaded") && out.contains(&format!("{n} unchanged")), "{out}");

    // Three files changed: exactly those three reach the edge.
    let changed = [3usize, 100, 257];
    for &i in &changed {
        let (rel, body) = site_file(i, 2);
        write(dir.path(), &rel, &body);
    }
    let before = edge.log().matches("batch written files=").count();
    let out = deploy(&edge, dir.path(), &[]);
    assert!(out.contains("deployed: 3 files uploaded"), "{out}");
    let batches = || -> Vec<String> { edge.log().lines().filter(|l| l.contains("batch written files=")).map(str::to_string).collect() };
    let batches = eventually(Duration::from_secs(10), || Some(batches()).filter(|b| b.len() == before + 1));
    let batches = batches.unwrap_or_else(|| panic!("one more batch is logged:\n{}", edge.log()));
    assert!(batches.last().unwrap().contains("batch written files=3"), "{batches:?}");
    let at = position(&out);
    for &i in &changed {
        let (rel, body) = site_file(i, 2);
        assert_eq!(get_at(&reader, &format!("/{rel}"), &at).bytes().unwrap().as_ref(), &body[..]);
    }

    // A dry run changes nothing.
    let (gone_rel, _) = site_file(10, 1);
    std::fs::remove_file(dir.path().join(&gone_rel)).unwrap();
    let (edited_rel, edited) = site_file(11, 3);
    write(dir.path(), &edited_rel, &edited);
    let out = deploy(&edge, dir.path(), &["--delete", "--dry-run"]);
    assert!(out.contains(&format!("upload  {edited_rel}")) && out.contains(&format!("delete  {gone_rel}")), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    let hashes = primary.query_column("SELECT hash FROM files WHERE path = ?1", vec![edited_rel.clone().into()]);
    assert_eq!(hashes, vec![libsql::Value::Text(sha256_hex(&site_file(11, 1).1))], "the primary holds the old file");
    assert_eq!(reader.get(&format!("/{gone_rel}")).status(), 200);

    // Without --delete a file gone from DIR stays; with it, it goes, in
    // the same transaction as the upload.
    let out = deploy(&edge, dir.path(), &[]);
    assert!(out.contains("deployed: 1 file uploaded") && out.contains("0 deleted"), "{out}");
    let out = deploy(&edge, dir.path(), &["--delete"]);
    assert!(out.contains("1 deleted"), "{out}");
    assert_eq!(get_at(&reader, &format!("/{gone_rel}"), &position(&out)).status(), 404);
    let count = primary.query_column("SELECT count(*) FROM files", vec![]);
    assert_eq!(count, vec![libsql::Value::Integer(n as i64 - 1)]);
}

#[test]
fn a_reader_never_sees_a_mix_of_versions_and_a_killed_deploy_changes_nothing() {
    let primary = Sqld::start();
    let edge = Server::replica(&primary, "100ms");
    let reader = Server::replica(&primary, "50ms");
    let dir = TempDir::new("site");
    let names: Vec<String> = (0..120).map(|i| format!("v/f{i:03}.txt")).collect();
    let set_version = |v: u32| {
        for name in &names {
            write(dir.path(), name, format!("{name} version {v}").as_bytes());
        }
    };
    set_version(1);
    let at = position(&deploy(&edge, dir.path(), &[]));
    assert_eq!(get_at(&reader, &format!("/{}", names[119]), &at).status(), 200);

    // A reader walks the files in the order the deploy writes them, over
    // and over: once it has seen version 2 of any file, it must never see
    // version 1 of a later one.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let walker = {
        let (stop, names, url) = (stop.clone(), names.clone(), reader.url("/"));
        std::thread::spawn(move || {
            let c = client();
            let (mut newest, mut reads) = (1u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for name in &names {
                    let body = c.get(format!("{url}{name}")).send().unwrap().text().unwrap();
                    let v: u32 = body.rsplit(' ').next().unwrap().parse().unwrap();
                    assert!(v >= newest, "{name} went back to version {v} after version {newest} was seen");
                    newest = v;
                    reads += 1;
                }
            }
            (newest, reads)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    set_version(2);
    deploy(&edge, dir.path(), &[]);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (newest, reads) = walker.join().expect("the reader saw a mix of versions");
    assert_eq!(newest, 2, "the reader saw the new version after {reads} reads");

    // A deploy killed while it uploads leaves version 2 whole and nothing
    // staged on the primary.
    set_version(3);
    write(dir.path(), "v/zz-large.bin", &pseudo_random(96 << 20, 7));
    let mut child = Command::new(env!("CARGO_BIN_EXE_turserver"))
        .args(["deploy", dir.path().to_str().unwrap(), "--url", &edge.url(""), "--token", TOKEN])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let staged = || primary.query_column("SELECT count(*) FROM uploads", vec![]) != vec![libsql::Value::Integer(0)];
    assert!(eventually(Duration::from_secs(30), || staged().then_some(())).is_some(), "the upload started");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(20), || (!staged()).then_some(())).is_some(),
        "the edge discarded what the killed deploy staged"
    );
    for name in &names {
        assert_eq!(reader.get(&format!("/{name}")).text().unwrap(), format!("{name} version 2"));
    }
    assert_eq!(reader.get("/v/zz-large.bin").status(), 404);
}

#[test]
fn bad_input_gets_one_clear_error_and_changes_nothing() {
    let edge = Server::local();
    let url = edge.url("");
    let dir = TempDir::new("site");
    write(dir.path(), "index.html", b"<h1>v1</h1>");
    deploy(&edge, dir.path(), &[]);
    write(dir.path(), "index.html", b"<h1>v2</h1>");
    let d = dir.path().to_str().unwrap();
    let fails = |args: &[&str], says: &str| {
        let out = cli(args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(edge.get("/index.html").text().unwrap(), "<h1>v1</h1>", "{args:?} changed the site");
    };
    fails(&["deploy", "/no/such/dir", "--url", &url, "--token", TOKEN], "/no/such/dir: cannot read it");
    fails(&["deploy", &format!("{d}/index.html"), "--url", &url, "--token", TOKEN], "is not a directory");
    fails(&["deploy", d, "--url", &url], "--token or set TURSERVER_TOKEN");
    fails(&["deploy", d, "--url", &url, "--token", "wrong"], "refused the token");
    fails(&["deploy", d, "--url", "http://127.0.0.1:1", "--token", TOKEN, "--retries", "1"], "is the edge running");
    fails(&["deploy", d, "--url", "ftp://x", "--token", TOKEN], "--url must be http://");
    fails(&["deploy", d, "--url", &url, "--token", TOKEN, "--prefix", "../up"], "--prefix");

    // Names the edge would refuse are all reported before anything is sent.
    let bad = TempDir::new("bad");
    write(bad.path(), "index.html", b"<h1>v2</h1>");
    write(bad.path(), "_api/x.json", b"{}");
    write(bad.path(), "a\\b.txt", b"x");
    let before = edge.log().matches("batch written").count();
    fails(&["deploy", bad.path().to_str().unwrap(), "--url", &url, "--token", TOKEN], "2 files cannot be stored");
    assert_eq!(edge.log().matches("batch written").count(), before);

    // A link out of DIR is skipped with a warning, never followed.
    let linked = TempDir::new("linked");
    write(linked.path(), "index.html", b"<h1>v1</h1>");
    std::os::unix::fs::symlink("/etc/hostname", linked.path().join("leak.txt")).unwrap();
    std::os::unix::fs::symlink("index.html", linked.path().join("home.html")).unwrap();
    // Names are taken as they are, `%` and spaces included.
    write(linked.path(), "odd/100% ü.html", b"odd");
    let out = cli(&["deploy", linked.path().to_str().unwrap(), "--url", &url, "--token", TOKEN]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("skipping leak.txt: a link that leads out of"), "{}", text(&out.stderr));
    assert_eq!(edge.get("/leak.txt").status(), 404);
    assert_eq!(edge.get("/home.html").text().unwrap(), "<h1>v1</h1>", "a link inside DIR is deployed");
    assert_eq!(edge.get("/odd/100%25%20%C3%BC.html").text().unwrap(), "odd");
    let again = cli(&["deploy", linked.path().to_str().unwrap(), "--url", &url, "--token", TOKEN, "--dry-run"]);
    assert!(text(&again.stdout).contains("would upload 0 files"), "{}", text(&again.stdout));
}

#[test]
fn progress_shows_on_a_terminal() {
    let edge = Server::local();
    let dir = TempDir::new("site");
    for i in 0..50 {
        write(dir.path(), &format!("f{i}.bin"), &pseudo_random(64 << 10, i));
    }
    let command = format!(
        "{} deploy {} --url {} --token {}",
        env!("CARGO_BIN_EXE_turserver"),
        dir.path().display(),
        edge.url(""),
        TOKEN
    );
    // `script` runs the command on a pseudo-terminal.
    let out = Command::new("script").args(["-qefc", &command, "/dev/null"]).output().expect("run script (bsdutils)");
    let all = text(&out.stdout);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("deployed: 50 files uploaded"), "{all}");
    assert!(all.contains('\x1b') && all.contains("hashing ["), "a bar is drawn on a terminal: {all:?}");
}

#[test]
fn the_file_commands_put_get_list_and_remove() {
    let edge = Server::local();
    let url = edge.url("");
    let dir = TempDir::new("files");
    let page = dir.path().join("page.html");
    std::fs::write(&page, b"<h1>hello</h1>").unwrap();
    let ok = |args: &[&str]| {
        let out = cli(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let out = ok(&["put", page.to_str().unwrap(), "docs/index.html", "--url", &url, "--token", TOKEN]);
    assert!(out.contains("created /docs/index.html"), "{out}");
    assert_eq!(edge.get("/docs/index.html").headers()["content-type"], "text/html; charset=utf-8");
    let big = pseudo_random(3 << 20, 9);
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    ok(&["put", dir.path().join("big.bin").to_str().unwrap(), "docs/big.bin", "--url", &url, "--token", TOKEN]);

    let copy = dir.path().join("copy.bin");
    ok(&["get", "docs/big.bin", "-o", copy.to_str().unwrap(), "--url", &url]);
    assert_eq!(std::fs::read(&copy).unwrap(), big);
    assert_eq!(ok(&["get", "/docs/index.html", "--url", &url]), "<h1>hello</h1>");

    assert_eq!(ok(&["ls", "docs/", "--url", &url]), "docs/big.bin\ndocs/index.html\n");
    let long = ok(&["ls", "-l", "--url", &url]);
    assert!(long.contains(&format!("{:>10}", 3 << 20)) && long.contains("text/html"), "{long}");
    let listed: serde_json::Value = serde_json::from_str(&ok(&["ls", "--json", "--url", &url])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[1]["etag"], format!("\"{}\"", sha256_hex(b"<h1>hello</h1>")));

    let status = ok(&["status", "--url", &url]);
    assert!(status.lines().any(|l| l.starts_with("mode") && l.ends_with("local")), "{status}");
    let doc: serde_json::Value = serde_json::from_str(&ok(&["status", "--json", "--url", &url])).unwrap();
    assert_eq!(doc["mode"], "local");

    let missing = cli(&["rm", "docs/nope.txt", "--url", &url, "--token", TOKEN]);
    assert!(!missing.status.success() && text(&missing.stderr).contains("/docs/nope.txt: no such file"));
    let denied = cli(&["rm", "docs/big.bin", "--url", &url]);
    assert!(!denied.status.success() && text(&denied.stderr).contains("TURSERVER_TOKEN"));
    assert_eq!(edge.get("/docs/big.bin").status(), 200);
    ok(&["rm", "docs/big.bin", "--url", &url, "--token", TOKEN]);
    assert_eq!(edge.get("/docs/big.bin").status(), 404);
    ok(&["put", page.to_str().unwrap(), "docs/a/b.html", "--url", &url, "--token", TOKEN]);
    let out = ok(&["rm", "--recursive", "docs", "--url", &url, "--token", TOKEN]);
    assert!(out.contains("removed 2 files under /docs/"), "{out}");
    assert_eq!(ok(&["ls", "--url", &url]), "");

    // The README's curl upload sends curl's default form type: the file is
    // typed by its extension all the same.
    let r = client()
        .put(edge.url("/index.html"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("<h1>hi</h1>")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(edge.get("/index.html").headers()["content-type"], "text/html; charset=utf-8");
}

#[test]
fn an_edge_that_goes_away_mid_deploy_fails_it_and_keeps_the_old_site() {
    let data = TempDir::new("edge-data");
    let edge = Server::start(data.path(), &[], None);
    let dir = TempDir::new("site");
    write(dir.path(), "index.html", b"<h1>v1</h1>");
    deploy(&edge, dir.path(), &[]);
    write(dir.path(), "index.html", b"<h1>v2</h1>");
    write(dir.path(), "large.bin", &pseudo_random(256 << 20, 3));
    let child = Command::new(env!("CARGO_BIN_EXE_turserver"))
        .args(["deploy", dir.path().to_str().unwrap(), "--url", &edge.url(""), "--token", TOKEN, "--retries", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the edge is taking the upload (its database grows), then kill it.
    let stored = || -> u64 {
        std::fs::read_dir(data.path()).unwrap().flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
    };
    let before = stored();
    let started = eventually(Duration::from_secs(30), || (stored() > before + (16 << 20)).then_some(()));
    assert!(started.is_some(), "the upload reached the edge");
    edge.kill();
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a deploy that did not commit exits non-zero");
    assert!(err.contains("the edge still serves the previous version"), "{err}");

    let edge = Server::start(data.path(), &[], None);
    assert_eq!(edge.get("/index.html").text().unwrap(), "<h1>v1</h1>");
    assert_eq!(edge.get("/large.bin").status(), 404);
}

/// A TCP proxy to `upstream` that cuts its first connection after passing
/// `cut_after` bytes of the answer; later connections pass whole. Returns
/// its address and the requests' heads it forwarded.
fn cutting_proxy(upstream: std::net::SocketAddr, cut_after: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(mut client) = client else { return };
            let mut server = std::net::TcpStream::connect(upstream).unwrap();
            let mut head = vec![0u8; 8192];
            let len = client.read(&mut head).unwrap();
            seen.lock().unwrap().push(String::from_utf8_lossy(&head[..len]).to_string());
            server.write_all(&head[..len]).unwrap();
            let limit = if n == 0 { cut_after } else { usize::MAX };
            let mut passed = 0;
            let mut buf = vec![0u8; 64 << 10];
            while passed < limit {
                let Ok(got) = server.read(&mut buf) else { break };
                if got == 0 {
                    break;
                }
                let take = got.min(limit - passed);
                if client.write_all(&buf[..take]).is_err() {
                    break;
                }
                passed += take;
            }
            // Dropping both ends cuts the connection.
        }
    });
    (format!("http://{addr}"), heads)
}

#[test]
fn get_resumes_a_cut_download_with_a_range_request() {
    let edge = Server::local();
    let body = pseudo_random(5 << 20, 11);
    assert_eq!(edge.put("/big.bin", None, body.clone()).status(), 201);
    let (url, heads) = cutting_proxy(edge.addr, 2 << 20);
    let dir = TempDir::new("get");
    let out = dir.path().join("big.bin");
    let run = cli(&["get", "big.bin", "-o", out.to_str().unwrap(), "--url", &url]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("resuming"), "{}", text(&run.stderr));
    assert_eq!(sha256_hex(&std::fs::read(&out).unwrap()), sha256_hex(&body));
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[1].to_ascii_lowercase().contains("range: bytes="), "the second request asks for the rest: {}", heads[1]);
    assert!(heads[1].to_ascii_lowercase().contains("if-range: \""), "{}", heads[1]);
}

#[test]
fn excludes_and_ignore_files_leave_files_out() {
    let edge = Server::local();
    let url = edge.url("");
    let dir = TempDir::new("site");
    write(dir.path(), "a/app.js", b"1");
    write(dir.path(), "a/app.js.map", b"2");
    write(dir.path(), "node_modules/x/i.js", b"3");
    write(dir.path(), ".gitignore", b"node_modules/\n");
    let listed = |extra: &[&str]| {
        let d = dir.path().to_str().unwrap();
        let mut args = vec!["deploy", d, "--url", &url, "--token", TOKEN, "--dry-run"];
        args.extend(extra);
        let out = cli(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut paths: Vec<String> =
            text(&out.stdout).lines().filter_map(|l| l.strip_prefix("upload  ")).map(|l| l.split(' ').next().unwrap().to_string()).collect();
        paths.sort();
        paths
    };
    assert_eq!(listed(&[]), [".gitignore", "a/app.js", "a/app.js.map", "node_modules/x/i.js"]);
    assert_eq!(listed(&["--exclude", "*.map"]), [".gitignore", "a/app.js", "node_modules/x/i.js"]);
    assert_eq!(listed(&["--exclude", "*.map", "--respect-ignore"]), [".gitignore", "a/app.js"]);
    assert_eq!(edge.get("/a/app.js").status(), 404, "a dry run sends nothing");
}
