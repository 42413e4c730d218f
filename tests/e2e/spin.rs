//! The worker outside turserver: the composed component (worker + store
//! adapter) under `wasmtime serve`, a standard wasi:http runtime standing in
//! for Spin, with its store on a real turserver sidecar; and the Spin
//! manifest checked against what its build makes.

use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SIDECAR_TOKEN: &str = "test-sidecar-token";

/// Worker + adapter configured by environment variables.
fn composed() -> PathBuf {
    target_dir().join("spin/turserver-wasi.wasm")
}

fn sidecar_flags() -> [&'static str; 4] {
    ["--sidecar-listen", "127.0.0.1:0", "--sidecar-token", SIDECAR_TOKEN]
}

/// A turserver with its sidecar on, on a fresh data directory.
fn sidecar_server(label: &str, extra: &[&str]) -> Server {
    let dir = TempDir::new(label);
    let data = dir.path().to_path_buf();
    Server::start(&data, &[extra, &sidecar_flags()].concat(), Some(dir))
}

fn spin_worker(sidecar: &str, token: &str) -> WasmtimeServe {
    let url = format!("http://{sidecar}");
    WasmtimeServe::start(&composed(), &[("TURSERVER_SIDECAR_URL", &url), ("TURSERVER_SIDECAR_TOKEN", token)])
}

/// The foundation's local-mode checks, against the server at `base`, on
/// paths under `dir`.
fn foundation_checks(base: &str, dir: &str) {
    let c = client();
    let url = |p: &str| format!("{base}/{dir}/{p}");
    let css = b"body { color: red }\n".to_vec();

    // Auth: no token, a wrong token; nothing is written.
    let r = c.put(url("style.css")).body(css.clone()).send().unwrap();
    assert_eq!(r.status(), 401, "{base}");
    assert!(r.text().unwrap().contains("a token is required"));
    let r = c.put(url("style.css")).bearer_auth("wrong").body(css.clone()).send().unwrap();
    assert_eq!(r.status(), 403, "{base}");
    let r = c.get(url("style.css")).send().unwrap();
    assert_eq!(r.status(), 404, "{base}");
    assert_eq!(r.text().unwrap(), "not found\n");

    // Create, read, HEAD.
    let r = c.put(url("style.css")).bearer_auth(TOKEN).body(css.clone()).send().unwrap();
    assert_eq!(r.status(), 201, "{base}");
    let etag = format!("\"{}\"", sha256_hex(&css));
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.headers()["location"].to_str().unwrap(), format!("/{dir}/style.css"));
    let r = c.get(url("style.css")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(r.headers()["content-length"], css.len().to_string().as_str());
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.headers().contains_key("last-modified"));
    assert_eq!(r.bytes().unwrap().to_vec(), css);
    let r = c.head(url("style.css")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], css.len().to_string().as_str());
    assert!(r.bytes().unwrap().is_empty());
    let r = c.get(url("style.css")).header("if-none-match", &etag).send().unwrap();
    assert_eq!(r.status(), 304);
    let r = c.get(url("style.css")).header("range", "bytes=0-3").send().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), b"body");

    // Replace, list, delete.
    let r = c.put(url("style.css")).bearer_auth(TOKEN).header("content-type", "text/plain").body("v2").send().unwrap();
    assert_eq!(r.status(), 204);
    let r = c.get(url("style.css")).send().unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.bytes().unwrap().as_ref(), b"v2");
    assert_eq!(c.put(url("b.txt")).bearer_auth(TOKEN).body("b").send().unwrap().status(), 201);
    let list: Value = c.get(format!("{base}/_api/files?prefix={dir}/")).send().unwrap().json().unwrap();
    let paths: Vec<&str> = list["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, [format!("{dir}/b.txt"), format!("{dir}/style.css")]);
    assert_eq!(list["files"][1]["size"], 2);
    assert_eq!(c.delete(url("style.css")).send().unwrap().status(), 401);
    assert_eq!(c.delete(url("style.css")).bearer_auth(TOKEN).send().unwrap().status(), 204);
    assert_eq!(c.get(url("style.css")).send().unwrap().status(), 404);
    assert_eq!(c.delete(url("style.css")).bearer_auth(TOKEN).send().unwrap().status(), 404);
}

#[test]
fn the_composed_worker_serves_like_the_host() {
    let primary = Sqld::start();
    let edge = sidecar_server("sidecar-edge", &["--primary-url", &primary.url(), "--sync-interval", "200ms"]);
    let spin = spin_worker(&edge.sidecar_addr(), SIDECAR_TOKEN);
    cross_checks(&primary, &edge, &spin.url(""));

    // Oversized uploads are refused the same way.
    drop(spin);
    let c = client();
    let small = sidecar_server("sidecar-small", &["--max-upload-size", "1000"]);
    let spin = spin_worker(&small.sidecar_addr(), SIDECAR_TOKEN);
    let r = c.put(spin.url("/too-big.bin")).bearer_auth(TOKEN).body(vec![0u8; 5000]).send().unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(small.get("/too-big.bin").status(), 404);
}

#[test]
fn the_sidecar_checks_a_signed_tokens_rules_as_the_host_does() {
    let edge = sidecar_server("sidecar-scoped", &[]);
    let spin = spin_worker(&edge.sidecar_addr(), SIDECAR_TOKEN);
    let keys = TempDir::new("sidecar-keys");
    let (_, key) = crate::access::new_key(&edge, keys.path(), "ci.key", true);
    let ci = crate::access::issue(&key, &["docs/**:write"], "10m");
    let c = client();
    let put = |path: &str, token: &str| c.put(spin.url(path)).bearer_auth(token).body("x").send().unwrap().status().as_u16();
    assert_eq!(put("/docs/a.txt", &ci), 201);
    assert_eq!(put("/blog/a.txt", &ci), 403);
    assert_eq!(put("/docs/b.txt", &format!("{ci}x")), 401, "a bad signature");
    assert_eq!(edge.get("/docs/a.txt").text().unwrap(), "x");
    assert_eq!(edge.get("/blog/a.txt").status(), 404);
    assert_eq!(edge.get("/docs/b.txt").status(), 404);
}

/// The same checks under `spin up`, with the repository's `spin.toml` as
/// written and built by `spin build`.
#[test]
fn the_worker_serves_under_real_spin() {
    let Some(spin) = spin_binary() else {
        eprintln!("skipped: Spin is not installed (tests/setup.sh installs it from ../shared/tools/spin)");
        return;
    };
    let app = built_app();
    let primary = Sqld::start();
    let edge = sidecar_server("spin-edge", &["--primary-url", &primary.url(), "--sync-interval", "200ms"]);
    let sidecar = format!("http://{}", edge.sidecar_addr());
    let up = SpinUp::start(&spin, &app.join("spin.toml"), &[("sidecar_url", &sidecar), ("sidecar_token", SIDECAR_TOKEN)]);
    cross_checks(&primary, &edge, &up.url(""));
    drop(up);

    // A wrong sidecar token is refused with a clear 503.
    let up = SpinUp::start(&spin, &app.join("spin.toml"), &[("sidecar_url", &sidecar), ("sidecar_token", "wrong")]);
    let r = client().get(up.url("/cross/from-host.txt")).send().unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().unwrap().contains("refused this worker's sidecar token"));
}

/// The application as the manifest's build command makes it, built once
/// per test run into a scratch target directory (this run holds the lock
/// on the usual one): by `spin build` when Spin is installed, else by the
/// command itself run as `spin build` runs it. Returns a folder holding the
/// manifest as written beside what the build made.
fn built_app() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let scratch = target_dir().join("test-workers");
        let mut command = match spin_binary() {
            Some(spin) => {
                let mut c = std::process::Command::new(spin);
                c.arg("build").arg("--from").arg(root.join("spin.toml"));
                c
            }
            None => {
                let manifest: toml::Table = std::fs::read_to_string(root.join("spin.toml")).unwrap().parse().unwrap();
                let build = manifest["component"]["turserver"]["build"]["command"].as_str().unwrap().to_string();
                let mut c = std::process::Command::new("sh");
                c.args(["-c", &build]);
                c
            }
        };
        let status = command
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &scratch)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .unwrap();
        assert!(status.success(), "building the Spin application: {command:?}");
        let app = scratch.join("spin-app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::copy(root.join("spin.toml"), app.join("spin.toml")).unwrap();
        let link = app.join("target");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&scratch, &link).unwrap();
        app
    })
}

/// What both runtimes must do alike, with the worker at `base` and its
/// store on `edge`'s sidecar, a replica of `primary`.
fn cross_checks(primary: &Sqld, edge: &Server, base: &str) {
    let native = format!("http://{}", edge.addr);
    let spin_url = |p: &str| format!("{base}{p}");
    foundation_checks(&native, "native");
    foundation_checks(base, "spin");

    // Written through one path, read through the other; the primary holds it.
    let c = client();
    let r = c.put(spin_url("/cross/from-spin.txt")).bearer_auth(TOKEN).body("via the adapter").send().unwrap();
    assert_eq!(r.status(), 201);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let r = edge.get("/cross/from-spin.txt");
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.text().unwrap(), "via the adapter");
    let on_primary = primary.query_column("SELECT hash FROM files WHERE path = ?1", vec!["cross/from-spin.txt".into()]);
    assert_eq!(on_primary, vec![libsql::Value::Text(sha256_hex(b"via the adapter"))]);
    assert_eq!(edge.put("/cross/from-host.txt", None, b"via the host".to_vec()).status(), 201);
    assert_eq!(c.get(spin_url("/cross/from-host.txt")).send().unwrap().text().unwrap(), "via the host");

    // A small GET is one sidecar call: its metadata, body and the site
    // rules come together.
    let calls = || -> f64 {
        let text = edge.get("/metrics").text().unwrap();
        text.lines()
            .filter(|l| l.starts_with("turserver_sidecar_calls_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let before = calls();
    for _ in 0..3 {
        assert_eq!(c.get(spin_url("/cross/from-host.txt")).send().unwrap().text().unwrap(), "via the host");
    }
    assert_eq!(calls() - before, 3.0, "one sidecar call per small GET");

    // A body of several chunks streams both ways through the adapter.
    let big = pseudo_random(3 * 1024 * 1024 + 17, 7);
    let r = c.put(spin_url("/cross/big.bin")).bearer_auth(TOKEN).body(big.clone()).send().unwrap();
    assert_eq!(r.status(), 201);
    let got = c.get(spin_url("/cross/big.bin")).send().unwrap().bytes().unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&big));
    let r = c.get(spin_url("/cross/big.bin")).header("range", "bytes=1048570-1048585").send().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &big[1048570..=1048585]);
    assert_eq!(sha256_hex(&edge.get("/cross/big.bin").bytes().unwrap()), sha256_hex(&big));

    // A batch is framed through the adapter and committed as one.
    let archive = tar_of(&[("batch/a.txt", "first"), ("batch/b.txt", "second")]);
    let r = c.post(spin_url("/_api/batch")).bearer_auth(TOKEN).body(archive).send().unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert_eq!(edge.get("/batch/a.txt").text().unwrap(), "first");
    assert_eq!(edge.get("/batch/b.txt").text().unwrap(), "second");
    // A deploy's plan and its removals go through the adapter too.
    let plan = format!(r#"{{"prefix": "batch", "files": {{"batch/a.txt": "{}"}}}}"#, sha256_hex(b"first"));
    let r = c.post(spin_url("/_api/plan")).bearer_auth(TOKEN).body(plan).send().unwrap();
    let plan: serde_json::Value = r.json().unwrap();
    assert_eq!(plan["unchanged"], serde_json::json!(["batch/a.txt"]));
    assert_eq!(plan["remove"], serde_json::json!(["batch/b.txt"]));
    let archive = tar_of(&[("batch/c.txt", "third"), ("_turserver/batch.json", r#"{"remove": ["batch/b.txt"]}"#)]);
    let r = c.post(spin_url("/_api/batch")).bearer_auth(TOKEN).body(archive).send().unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert_eq!(edge.get("/batch/b.txt").status(), 404);
    assert_eq!(edge.get("/batch/c.txt").text().unwrap(), "third");

    // Site rules written through the adapter apply on both paths.
    assert_eq!(c.put(spin_url("/_api/site")).body("{}").send().unwrap().status(), 401);
    let rules = r#"{"spa_fallback": "cross/from-host.txt"}"#;
    let r = c.put(spin_url("/_api/site")).bearer_auth(TOKEN).body(rules).send().unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let site: Value = c.get(spin_url("/_api/site")).send().unwrap().json().unwrap();
    assert_eq!(site["spa_fallback"], "cross/from-host.txt");
    for base in [base.to_string(), native.clone()] {
        let r = c.get(format!("{base}/some/client/route")).header("accept", "text/html").send().unwrap();
        assert_eq!(r.text().unwrap(), "via the host", "{base}");
    }
}

/// The sidecar answers a refused upload at once and reads the rest of its
/// body, so an HTTP client still sending it (the adapter's runtime) gets
/// the refusal rather than a reset connection.
#[test]
fn the_sidecar_lets_a_refused_upload_finish_sending() {
    let edge = sidecar_server("sidecar-linger", &["--max-upload-size", "1000"]);
    let size = 4 << 20;
    let auth = format!("Authorization: Bearer {SIDECAR_TOKEN}\r\n");
    let head = format!(
        "PUT /v1/upload?path=big.bin&content-type=x&size-hint={size} HTTP/1.1\r\nHost: x\r\n{auth}\
         turserver-client-authorization: Bearer {TOKEN}\r\nContent-Length: {size}\r\n\r\n"
    );
    let next = format!("GET /v1/stat?path=big.bin HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    let (early, sent, next) = refused_then_sent(edge.sidecar_addr(), &head, size, &next);
    assert_eq!(early, 413);
    assert!(sent, "the sidecar reset the connection while the client sent the body");
    assert_eq!(next, 404, "the connection serves the next call; nothing was stored");
}

#[test]
fn a_refused_or_absent_sidecar_is_503_at_once() {
    let edge = sidecar_server("sidecar-refusal", &[]);
    assert_eq!(edge.put("/a", None, b"a".to_vec()).status(), 201);
    let c = client();

    // Wrong sidecar token: reads and writes fail with a clear 503.
    let spin = spin_worker(&edge.sidecar_addr(), "not-the-sidecar-token");
    let r = c.get(spin.url("/a")).send().unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().unwrap().contains("refused this worker's sidecar token"));
    let r = c.put(spin.url("/b")).bearer_auth(TOKEN).body("b").send().unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(edge.get("/b").status(), 404, "a refused adapter wrote nothing");
    drop(spin);

    // Nothing listening: 503 at once, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let spin = spin_worker(&closed, SIDECAR_TOKEN);
    let started = Instant::now();
    let r = c.get(spin.url("/a")).send().unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().unwrap().contains("unreachable"));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    // The sidecar answers only its token, and only on its own address.
    let sidecar = format!("http://{}/v1/stat?path=a", edge.sidecar_addr());
    assert_eq!(c.get(&sidecar).send().unwrap().status(), 401);
    let r = c.get(&sidecar).bearer_auth(SIDECAR_TOKEN).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["hash"], sha256_hex(b"a"));
    let r = c.get(edge.url("/v1/stat?path=a")).bearer_auth(SIDECAR_TOKEN).send().unwrap();
    assert_eq!(r.status(), 404, "the public port serves files, not the sidecar");

    let (ok, log) =
        Server::run_to_exit(TempDir::new("sidecar-no-token").path(), &["--sidecar-listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(log.contains("--sidecar-listen needs --sidecar-token"), "{log}");
}

/// Names in spin.toml that refer to application variables.
fn template_names(value: &str) -> Vec<String> {
    value.split("{{").skip(1).filter_map(|rest| rest.split_once("}}")).map(|(name, _)| name.trim().to_string()).collect()
}

#[test]
fn spin_manifest_names_what_its_build_makes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let manifest: toml::Table = std::fs::read_to_string(root.join("spin.toml")).unwrap().parse().unwrap();
    assert_eq!(manifest["spin_manifest_version"].as_integer(), Some(2));
    let variables = manifest["variables"].as_table().unwrap();
    let components = manifest["component"].as_table().unwrap();

    // No secret has a literal value anywhere: secrets are required, without
    // defaults, and components refer to them only by template.
    let secrets: Vec<&String> =
        variables.iter().filter(|(_, v)| v.get("secret").and_then(|s| s.as_bool()) == Some(true)).map(|(k, _)| k).collect();
    assert!(secrets.iter().any(|s| s.as_str() == "sidecar_token"), "sidecar_token must be secret");
    for name in &secrets {
        let v = &variables[name.as_str()];
        assert!(v.get("default").is_none(), "secret {name} has a default");
        assert_eq!(v.get("required").and_then(|r| r.as_bool()), Some(true), "secret {name} must be required");
    }

    let triggers = manifest["trigger"]["http"].as_array().unwrap();
    assert!(triggers.iter().any(|t| t["route"].as_str() == Some("/...")));
    let scratch = target_dir().join("test-workers");
    for trigger in triggers {
        let id = trigger["component"].as_str().unwrap();
        let component = components.get(id).unwrap_or_else(|| panic!("trigger names a missing component {id}"));
        for (name, value) in component.get("variables").and_then(|v| v.as_table()).into_iter().flatten() {
            let value = value.as_str().unwrap();
            assert!(!template_names(value).is_empty(), "component variable {name} = {value:?} is a literal");
            for used in template_names(value) {
                assert!(variables.contains_key(&used), "{name} uses undefined variable {used}");
            }
        }
        for host in component["allowed_outbound_hosts"].as_array().unwrap() {
            for used in template_names(host.as_str().unwrap()) {
                assert!(variables.contains_key(&used), "allowed_outbound_hosts uses undefined variable {used}");
            }
        }
        assert_eq!(component["dependencies_inherit_configuration"].as_bool(), Some(true));

        built_app();
        let built = |path: &str| scratch.join(path.strip_prefix("target/").expect("sources are built into target/"));

        let engine = wasmtime::Engine::default();
        let load = |path: &Path| {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            wasmtime::component::Component::new(&engine, bytes).unwrap().component_type()
        };
        let worker = load(&built(component["source"].as_str().unwrap()));
        let imports: Vec<String> = worker.imports(&engine).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = worker.exports(&engine).map(|(n, _)| n.to_string()).collect();
        assert!(exports.iter().any(|e| e.starts_with("wasi:http/incoming-handler@0.2")), "{exports:?}");
        let dependencies = component["dependencies"].as_table().unwrap();
        for (interface, dependency) in dependencies {
            assert!(imports.contains(interface), "the worker does not import {interface}: {imports:?}");
            let adapter = load(&built(dependency["path"].as_str().unwrap()));
            let exported: Vec<String> = adapter.exports(&engine).map(|(n, _)| n.to_string()).collect();
            assert!(exported.contains(interface), "the dependency does not export {interface}: {exported:?}");
            let needs: Vec<String> = adapter.imports(&engine).map(|(n, _)| n.to_string()).collect();
            assert!(needs.iter().any(|n| n == "fermyon:spin/variables@2.0.0"), "configured by Spin variables: {needs:?}");
            assert!(needs.iter().any(|n| n.starts_with("wasi:http/outgoing-handler@0.2.")), "{needs:?}");
        }
        // Everything the worker imports besides its dependencies, Spin provides.
        for import in imports.iter().filter(|i| !dependencies.contains_key(i.as_str())) {
            assert!(import.starts_with("wasi:"), "the worker imports {import}, which Spin does not provide");
        }
    }
}

#[test]
fn a_worker_reaches_key_value_entries_through_the_adapter() {
    let edge = sidecar_server("kv-sidecar", &[]);
    let composed = with_adapter(&test_worker("v1"));
    let url = format!("http://{}", edge.sidecar_addr());
    let worker = WasmtimeServe::start(&composed, &[("TURSERVER_SIDECAR_URL", &url), ("TURSERVER_SIDECAR_TOKEN", SIDECAR_TOKEN)]);
    let c = client();
    let counts: Vec<String> = (0..3).map(|_| c.get(worker.url("/kv/incr/visits")).send().unwrap().text().unwrap()).collect();
    assert_eq!(counts, ["1", "2", "3"]);
    // The edge's own API sees what the worker wrote, and the other way round.
    let doc: serde_json::Value = c.get(edge.url("/_api/kv/visits")).bearer_auth(TOKEN).send().unwrap().json().unwrap();
    assert_eq!((doc["value"].as_u64(), doc["version"].as_u64()), (Some(3), Some(3)), "{doc}");
    let r = c.put(edge.url("/_api/kv/cfg")).bearer_auth(TOKEN).body(r#"{"value": {"mode": "dark"}}"#).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(c.get(worker.url("/kv/get/cfg")).send().unwrap().text().unwrap(), r#"{"mode":"dark"}"#);
    let r = c.get(worker.url("/kv/get/none")).send().unwrap();
    assert_eq!(r.status(), 404);
}
