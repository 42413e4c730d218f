//! The dashboard (`/_turserver/ui/`) in a real Chromium, driven over
//! WebDriver, against the real binary; and the usage document it charts.
//! Every browser test saves screenshots under `target/ui-screenshots/`.

use crate::support::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a page may take to show what a step waits for.
const STEP: Duration = Duration::from_secs(15);

/// A headless Chromium behind its chromedriver, ended on drop.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: TempDir,
    test: &'static str,
    shots: u32,
}

fn chromedriver() -> PathBuf {
    let path = std::env::var("TURSERVER_CHROMEDRIVER").map(PathBuf::from).unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    assert!(path.exists(), "chromedriver not found at {}: run `bash tests/setup.sh` (it installs Debian's chromium and chromium-driver) or set TURSERVER_CHROMEDRIVER", path.display());
    path
}

impl Browser {
    fn start(test: &'static str) -> Browser {
        let port = free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = TempDir::new("chromium");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": std::env::var("TURSERVER_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()), "--window-size=1280,900",
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connected = rt.block_on(ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new()).capabilities(caps.clone()).connect(&url));
            match connected {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("chromium did not start under chromedriver: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        Browser { rt, client: Some(client), driver, _profile: profile, test, shots: 0 }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// Saves a screenshot as `target/ui-screenshots/{test}-{n}-{name}.png`.
    fn shot(&mut self, name: &str) {
        let png = self.rt.block_on(self.client.as_ref().unwrap().screenshot()).expect("screenshot");
        let dir = target_dir().join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        self.shots += 1;
        std::fs::write(dir.join(format!("{}-{:02}-{name}.png", self.test, self.shots)), png).unwrap();
    }

    fn goto(&self, url: &str) {
        self.rt.block_on(self.c().goto(url)).expect("goto");
    }

    fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.rt
            .block_on(self.c().wait().at_most(STEP).for_element(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("no element {css}: {e}\npage text: {}", self.text("body")))
    }

    fn click(&self, css: &str) {
        let el = self.find(css);
        self.rt.block_on(el.click()).unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.rt.block_on(async {
            el.clear().await?;
            el.send_keys(text).await
        })
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Sets a field's value by script (long text, which typing would
    /// auto-indent or take long over).
    fn set_value(&self, css: &str, value: &str) {
        self.find(css);
        self.js(&format!("document.querySelector({}).value = arguments[0]", json!(css)), vec![json!(value)]);
    }

    fn text(&self, css: &str) -> String {
        self.rt
            .block_on(async { self.c().find(Locator::Css(css)).await?.text().await })
            .unwrap_or_default()
    }

    fn js(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.rt.block_on(self.c().execute(script, args)).unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Waits until `css`'s text satisfies `ok`; its last text.
    fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let text = self.text(css);
            if ok(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{css} never showed what was awaited; last text {text:?}\npage text: {}", self.text("body"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn accept_alert(&self) {
        let deadline = Instant::now() + STEP;
        while self.rt.block_on(self.c().accept_alert()).is_err() {
            assert!(Instant::now() < deadline, "no confirmation was asked");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A 2x2 PNG (red, green, blue, white).
fn png() -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc_input);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&2u32.to_be_bytes());
    ihdr.extend_from_slice(&2u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    // Stored (uncompressed) deflate of two filtered rows.
    let raw = [0u8, 255, 0, 0, 0, 255, 0, 0, 0, 0, 255, 255, 255, 255];
    let mut z = vec![0x78, 0x01, 0x01];
    z.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    z.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    z.extend_from_slice(&raw);
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut sig = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    sig.extend_from_slice(&out);
    sig
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[test]
fn the_dashboard_signs_in_browses_uploads_previews_edits_rules_and_deletes() {
    let dir = TempDir::new("ui");
    let data = dir.path().to_path_buf();
    let server = Server::start(&data, &["--usage-interval", "1s"], Some(dir));
    assert_eq!(server.put("/img/pixel.png", Some("image/png"), png()).status(), 201);
    assert_eq!(server.put("/docs/readme.txt", None, b"read me".to_vec()).status(), 201);
    assert_eq!(server.put("/home.html", None, b"<h1>home page</h1>".to_vec()).status(), 201);
    let mut b = Browser::start("files");

    // Signed out: the public listing; a wrong token is refused and not kept.
    b.goto(&server.url("/_turserver/ui/"));
    b.wait_text("#listing", |t| t.contains("docs/") && t.contains("img/") && t.contains("home.html"));
    b.shot("signed-out");
    b.type_into("#token", "not-the-token");
    b.click("#signin button");
    b.wait_text("#message", |t| t.contains("Sign-in refused: 401: this token is neither"));
    assert_eq!(b.js("return sessionStorage.getItem('turserver-token')", vec![]), serde_json::Value::Null);
    b.type_into("#token", TOKEN);
    b.click("#signin button");
    b.wait_text("#signedin", |t| t.contains("Signed in with the write token"));
    // Kept for the tab only, never in the URL.
    assert_eq!(b.js("return sessionStorage.getItem('turserver-token')", vec![]), json!(TOKEN));
    assert!(!b.js("return location.href", vec![]).as_str().unwrap().contains(TOKEN));

    // Filter by the start of a name; then keyboard only: focus a file's
    // name and press Enter to open it.
    b.type_into("#filter", "ho");
    b.click(".filter button");
    b.wait_text("#listing", |t| t.contains("home.html") && !t.contains("docs/"));
    let name = b.find("button[data-path='home.html']");
    b.js("document.querySelector(\"button[data-path='home.html']\").focus()", vec![]);
    b.rt.block_on(name.send_keys("\u{E007}")).expect("press Enter");
    b.wait_text("#preview-text", |t| t == "<h1>home page</h1>");
    b.goto(&server.url("/_turserver/ui/#/files"));

    // Browse into a folder and preview an image.
    b.click("#listing a[href='#/files?prefix=img%2F']");
    b.wait_text(".crumbs", |t| t.contains("img"));
    b.click("button[data-path='img/pixel.png']");
    b.find("#preview-image");
    let loaded = Instant::now();
    let size = loop {
        let size = b.js("const i = document.querySelector('#preview-image'); return [i.complete, i.naturalWidth, i.naturalHeight]", vec![]);
        if size[0] == json!(true) || loaded.elapsed() > STEP {
            break size;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(size, json!([true, 2, 2]), "the preview shows the stored PNG");
    b.wait_text("#cache-control", |t| t.contains("no-cache"));
    b.shot("image-preview");

    // Upload a folder through the folder input: one batch, served at once.
    let upload = TempDir::new("ui-upload");
    let folder = upload.path().join("bundle");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(folder.join("a.txt"), "alpha").unwrap();
    std::fs::write(folder.join("sub/b.html"), "<p>beta</p>").unwrap();
    b.goto(&server.url("/_turserver/ui/#/upload?prefix=site/"));
    let input = b.find("#pick-folder");
    b.rt.block_on(input.send_keys(folder.to_str().unwrap())).expect("choose the folder");
    b.wait_text("#upload-start", |t| t == "Upload 2 files");
    b.click("#upload-start");
    b.wait_text("#message", |t| t.contains("Uploaded 2 files into site/"));
    b.shot("folder-uploaded");
    assert_eq!(server.get("/site/bundle/a.txt").text().unwrap(), "alpha");
    assert_eq!(server.get("/site/bundle/sub/b.html").text().unwrap(), "<p>beta</p>");
    b.click("#upload-done");
    b.click("#listing a[href='#/files?prefix=site%2Fbundle%2F']");
    b.wait_text("#listing", |t| t.contains("a.txt") && t.contains("sub/"));
    b.click("button[data-path='site/bundle/a.txt']");
    b.wait_text("#preview-text", |t| t == "alpha");
    b.shot("folder-listed");

    // Delete a file, confirming.
    b.click("#delete-file");
    b.accept_alert();
    b.wait_text("#message", |t| t.contains("Deleted site/bundle/a.txt"));
    b.wait_text("#listing", |t| !t.contains("a.txt") && t.contains("sub/"));
    assert_eq!(server.get("/site/bundle/a.txt").status(), 404);

    // Delete a whole folder: one batch.
    b.goto(&server.url("/_turserver/ui/#/files?prefix=site%2F"));
    b.click("#delete-folder");
    b.accept_alert();
    b.wait_text("#message", |t| t.contains("Deleted 1 files under site/"));
    assert_eq!(server.get("/site/bundle/sub/b.html").status(), 404);

    // Drop files on the page (a drop made by script: WebDriver cannot drag
    // files). One name is longer than a tar header holds (a pax record) and
    // one is not ASCII.
    let long = format!("{}.txt", "n".repeat(150));
    b.goto(&server.url("/_turserver/ui/#/upload?prefix=dropped/"));
    b.find("#drop");
    b.js(
        "const dt = new DataTransfer();
         dt.items.add(new File(['dropped one'], arguments[0], { type: 'text/plain' }));
         dt.items.add(new File(['{\"two\": 2}'], 'zwei-ü.json', { type: 'application/json' }));
         document.querySelector('#drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));",
        vec![json!(long)],
    );
    b.wait_text("#upload-start", |t| t == "Upload 2 files");
    b.click("#upload-start");
    b.wait_text("#message", |t| t.contains("Uploaded 2 files into dropped/"));
    assert_eq!(server.get(&format!("/dropped/{long}")).text().unwrap(), "dropped one");
    assert_eq!(server.get("/dropped/zwei-%C3%BC.json").text().unwrap(), r#"{"two": 2}"#);

    // Site rules: a bad document shows the server's error beside the field
    // and changes nothing; a good one changes what `/` serves.
    let root = || client().get(server.url("/")).header("accept", "text/html").send().unwrap();
    assert_eq!(root().status(), 404);
    b.goto(&server.url("/_turserver/ui/#/site"));
    b.wait_text("#site-rules", |_| true);
    b.set_value("#site-rules", r#"{"spa_fallback": 5}"#);
    b.click("#site-save");
    let error = b.wait_text("#site-error", |t| t.starts_with("400"));
    assert!(error.contains("spa_fallback"), "the error names the field: {error}");
    b.shot("site-rules-error");
    assert_eq!(root().status(), 404);
    b.set_value("#site-rules", r#"{"spa_fallback": "home.html"}"#);
    b.click("#site-save");
    b.wait_text("#message", |t| t.contains("Site rules saved"));
    assert_eq!(b.text("#site-error"), "");
    let served = root();
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().unwrap(), "<h1>home page</h1>");

    // Usage: the charts and the most requested paths.
    for _ in 0..5 {
        server.get("/docs/readme.txt");
    }
    b.goto(&server.url("/_turserver/ui/#/usage"));
    b.wait_text("#top-requests", |t| t.contains("/docs/readme.txt"));
    assert_eq!(b.js("return document.querySelectorAll('#usage figure.chart svg').length", vec![]), json!(5));
    b.wait_text("#usage", |t| t.contains("req/s:"));
    b.shot("usage");

    // Narrow screens: nothing wider than the window.
    b.rt.block_on(b.c().set_window_size(390, 844)).unwrap();
    b.goto(&server.url("/_turserver/ui/#/files?prefix=docs%2F"));
    b.click("button[data-path='docs/readme.txt']");
    b.wait_text("#preview-text", |t| t == "read me");
    let overflow = b.js("return document.documentElement.scrollWidth - document.documentElement.clientWidth", vec![]);
    assert!(overflow.as_i64().unwrap() <= 0, "the page is wider than 390 px by {overflow}");
    b.shot("narrow");
    // Loading the page, on loopback: reported, not asserted.
    let load = b.js("const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime", vec![]);
    eprintln!("dashboard page load: {load} ms");

    // Worker (last: the test worker deployed here serves no dashboard
    // listing): the active version, a refused deploy with its reason, then
    // a real one.
    let version = status(&server)["worker"]["version"].as_str().unwrap().to_string();
    b.goto(&server.url("/_turserver/ui/#/worker"));
    b.wait_text("#worker-version", |t| t == version);
    let junk = upload.path().join("junk.wasm");
    std::fs::write(&junk, b"not a component").unwrap();
    let input = b.find("#worker-file");
    b.rt.block_on(input.send_keys(junk.to_str().unwrap())).expect("choose the worker");
    b.click("#worker-deploy");
    b.wait_text("#worker-result", |t| t.starts_with("Refused: 400"));
    b.shot("worker-refused");
    assert_eq!(status(&server)["worker"]["version"], json!(version));
    // A real component: deployed, and the page shows the new version.
    let component = test_worker("v1");
    let deployed = sha256_hex(&std::fs::read(&component).unwrap());
    let input = b.find("#worker-file");
    b.rt.block_on(input.send_keys(component.to_str().unwrap())).expect("choose the worker");
    b.click("#worker-deploy");
    b.wait_text("#worker-result", |t| t.starts_with(&format!("Deployed version {deployed}")));
    b.wait_text("#worker-version", |t| t == deployed);
    b.shot("worker-deployed");
    assert!(eventually(Duration::from_secs(10), || (status(&server)["worker"]["version"] == json!(deployed)).then_some(())).is_some());
}

#[test]
fn the_replication_page_follows_a_replica_as_another_edge_writes() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, "60s");
    let b_edge = Server::replica(&primary, "60s");
    assert_eq!(a.put("/first.txt", None, b"1".to_vec()).status(), 201);
    let mut b = Browser::start("replication");
    b.goto(&b_edge.url("/_turserver/ui/#/replication"));
    b.wait_text("#ready", |t| t == "ready");
    let before: u64 = b.wait_text("#replication-index", |t| t.parse::<u64>().is_ok()).parse().unwrap();
    b.shot("before");
    let position: u64 = a.put("/second.txt", None, b"2".to_vec()).headers()["turserver-position"].to_str().unwrap().parse().unwrap();
    assert!(position > before);
    // The page refreshes by itself: no reload.
    let after: u64 = b.wait_text("#replication-index", |t| t.parse::<u64>().is_ok_and(|n| n >= position)).parse().unwrap();
    assert!(after > before);
    assert!(b.text("#replication").contains("embedded replica of a primary"));
    b.shot("after");
}

#[test]
fn the_dashboard_is_embedded_with_a_strict_policy() {
    let server = Server::local();
    let page = client().get(server.url("/_turserver/ui/")).send().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");
    let etag = page.headers()["etag"].to_str().unwrap().to_string();
    let html = page.text().unwrap();
    // Only scripts from files, no inline script or style.
    assert!(html.contains(r#"<script type="module" src="app.js"></script>"#));
    assert!(!html.contains(" style=") && !html.contains("<style") && !html.contains(" onclick="));
    let again = client().get(server.url("/_turserver/ui/")).header("if-none-match", &etag).send().unwrap();
    assert_eq!(again.status(), 304);
    for (asset, kind) in [("app.js", "text/javascript"), ("charts.js", "text/javascript"), ("tar.js", "text/javascript"), ("style.css", "text/css")] {
        let r = client().get(server.url(&format!("/_turserver/ui/{asset}"))).send().unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind), "{asset}");
    }
    // Nothing else under the prefix, and no other method.
    assert_eq!(server.raw("GET /_turserver/ui/../status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").0, 404);
    assert_eq!(client().get(server.url("/_turserver/ui/secret.txt")).send().unwrap().status(), 404);
    assert_eq!(client().put(server.url("/_turserver/ui/app.js")).bearer_auth(TOKEN).body("x").send().unwrap().status(), 405);
    let bare = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = bare.get(server.url("/_turserver/ui")).send().unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/_turserver/ui/");
}

#[test]
fn usage_keeps_points_and_shows_private_paths_only_to_readers() {
    let dir = TempDir::new("usage");
    let data = dir.path().to_path_buf();
    let server = Server::start(&data, &["--usage-interval", "1s"], Some(dir));
    let rules = client()
        .put(server.url("/_api/site"))
        .bearer_auth(TOKEN)
        .body(r#"{"private": ["members/**"]}"#)
        .send()
        .unwrap();
    assert_eq!(rules.status(), 200);
    assert_eq!(server.put("/members/secret.txt", None, vec![b'x'; 1000]).status(), 201);
    assert_eq!(server.put("/public.txt", None, vec![b'y'; 100]).status(), 201);
    for _ in 0..3 {
        assert_eq!(client().get(server.url("/members/secret.txt")).bearer_auth(TOKEN).send().unwrap().status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(server.get("/public.txt").status(), 200);
    }
    assert_eq!(server.get("/missing").status(), 404);
    let usage = |token: Option<&str>| -> serde_json::Value {
        let mut req = client().get(server.url("/_turserver/usage"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    };
    let doc = eventually(Duration::from_secs(10), || {
        let doc = usage(Some(TOKEN));
        let points = doc["points"].as_array().unwrap();
        let requests: u64 = points.iter().map(|p| p["requests"].as_u64().unwrap()).sum();
        (requests >= 9).then_some(doc)
    })
    .expect("the usage points count the requests");
    let points = doc["points"].as_array().unwrap();
    let sum = |key: &str| points.iter().map(|p| p["status"][key].as_u64().unwrap()).sum::<u64>();
    assert!(sum("2xx") >= 7 && sum("4xx") >= 1, "{points:?}");
    assert!(points.iter().map(|p| p["bytes"].as_u64().unwrap()).sum::<u64>() >= 3 * 1000 + 2 * 100);
    assert_eq!(doc["interval_seconds"], json!(1.0));
    let find = |doc: &serde_json::Value, list: &str, path: &str| doc[list].as_array().unwrap().iter().find(|e| e["path"] == path).cloned();
    // The secret file: its PUT and 3 GETs of 1,000 bytes (and the PUT's answer).
    let secret = find(&doc, "top_by_requests", "/members/secret.txt").expect("ranked for the write token");
    assert_eq!(secret["requests"], json!(4));
    let secret_bytes = find(&doc, "top_by_bytes", "/members/secret.txt").unwrap()["bytes"].as_u64().unwrap();
    assert!((3000..3600).contains(&secret_bytes), "{secret_bytes}");
    assert_eq!(find(&doc, "top_by_requests", "/public.txt").unwrap()["requests"], json!(3));
    // Anonymous: the same figures, but no private (or reserved) path.
    let anonymous = usage(None);
    assert!(find(&anonymous, "top_by_requests", "/members/secret.txt").is_none());
    assert!(find(&anonymous, "top_by_bytes", "/members/secret.txt").is_none());
    assert!(find(&anonymous, "top_by_requests", "/_api/site").is_none());
    assert!(find(&anonymous, "top_by_requests", "/public.txt").is_some());
    assert_eq!(client().post(server.url("/_turserver/usage")).send().unwrap().status(), 405);
}
