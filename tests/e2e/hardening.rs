//! Regression tests for what a hostile client found: each bounded in time,
//! against the real binary.

use crate::support::*;

const SIDECAR_TOKEN: &str = "hardening-sidecar-token";

/// A server with its sidecar on; the sidecar's base URL.
fn with_sidecar(label: &str) -> (Server, String) {
    let dir = TempDir::new(label);
    let data = dir.path().to_path_buf();
    let s = Server::start(&data, &["--sidecar-listen", "127.0.0.1:0", "--sidecar-token", SIDECAR_TOKEN], Some(dir));
    let base = format!("http://{}", s.sidecar_addr());
    (s, base)
}

#[test]
fn the_deployed_worker_is_not_a_public_file() {
    // This edge keeps the built-in worker (`--worker`) while another worker
    // is deployed for the others, as a deploy to a fleet leaves it.
    let built_in = target_dir().join("worker/wasm32-wasip2/release/turserver_worker.wasm");
    let dir = TempDir::new("deployed-worker");
    let s = Server::start(&dir.path().join("data"), &["--worker", built_in.to_str().unwrap()], None);
    let worker = std::fs::read(test_worker("v1")).unwrap();
    let r = client().put(s.url("/_turserver/worker")).bearer_auth(TOKEN).body(worker).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());

    assert_eq!(s.get("/_turserver/worker.wasm").status(), 404);
    let listed: serde_json::Value = s.get("/_api/files?prefix=_turserver").json().unwrap();
    assert_eq!(listed["files"], serde_json::json!([]));
    let all: serde_json::Value = s.get("/_api/files").json().unwrap();
    assert_eq!(all["files"], serde_json::json!([]), "the worker is not listed among the files");
    // Not even as a fallback page.
    let rules = r#"{"spa_fallback": "_turserver/worker.wasm", "not_found_page": "_turserver/worker.wasm"}"#;
    let r = client().put(s.url("/_api/site")).bearer_auth(TOKEN).body(rules).send().unwrap();
    assert!(r.status().is_success() || r.status() == 400, "{}", r.status());
    let r = client().get(s.url("/nowhere")).header("accept", "text/html").send().unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.bytes().unwrap().len() < 1000, "the worker's bytes were served");
}

#[test]
fn the_sidecar_checks_what_the_public_port_checks() {
    let (s, sidecar) = with_sidecar("sidecar-checks");
    assert_eq!(s.put("/a.txt", None, b"abcdef".to_vec()).status(), 201);
    let c = client();
    let call = |method: reqwest::Method, target: &str, body: &str| {
        let r = c
            .request(method, format!("{sidecar}{target}"))
            .bearer_auth(SIDECAR_TOKEN)
            .header("turserver-client-authorization", format!("Bearer {TOKEN}"))
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.bytes().unwrap().to_vec())
    };
    let stat: serde_json::Value = serde_json::from_slice(&call(reqwest::Method::GET, "/v1/stat?path=a.txt", "").1).unwrap();
    let version = stat["version"].as_u64().unwrap();

    // An offset past any body reads nothing, never bytes from the start.
    for offset in [u64::MAX, 1 << 32, 1 << 62] {
        let target = format!("/v1/read?version={version}&encoding=identity&offset={offset}&len=4");
        let (status, body) = call(reqwest::Method::GET, &target, "");
        assert!(body.is_empty() || status >= 400, "{offset}: {status}: {:?}", String::from_utf8_lossy(&body));
    }
    assert_eq!(call(reqwest::Method::GET, &format!("/v1/read?version={version}&encoding=identity&offset=2&len=2"), "").1, b"cd");

    // A content type that would break the header it is sent back in.
    let (status, _) = call(reqwest::Method::PUT, "/v1/upload?path=b.txt&content-type=text%2Fplain%0D%0AX-Evil%3A%201", "x");
    assert_eq!(status, 400);
    // Reserved paths.
    for path in ["_api/x", "_turserver/worker.wasm", "_api"] {
        let (status, _) = call(reqwest::Method::PUT, &format!("/v1/upload?path={path}&content-type=text%2Fplain"), "x");
        assert_eq!(status, 400, "{path}");
    }
    // A site document the worker would ignore.
    let (status, body) = call(reqwest::Method::PUT, "/v1/site-config", r#"{"spa_fallback": 7}"#);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(call(reqwest::Method::GET, "/v1/site-config", "").0, 204, "nothing was stored");

    // Nothing of it reached the public port.
    assert_eq!(s.get("/b.txt").status(), 404);
    assert_eq!(s.get("/a.txt").text().unwrap(), "abcdef");
    assert_eq!(s.get("/_turserver/health").status(), 200);
}

#[test]
fn overlapping_ranges_cost_no_more_than_the_file() {
    let s = Server::local();
    let body = pseudo_random(100_000, 5);
    assert_eq!(s.put("/r.bin", None, body.clone()).status(), 201);
    let sixteen = format!("bytes={}", vec!["0-"; 16].join(","));
    let r = client().get(s.url("/r.bin")).header("range", sixteen).send().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 0-99999/100000");
    assert_eq!(r.bytes().unwrap().len(), body.len());
}

#[test]
fn host_and_authorization_headers_are_checked() {
    let s = Server::local();
    assert_eq!(s.put("/h.txt", None, b"kept".to_vec()).status(), 201);
    // HTTP/1.1 needs exactly one valid Host; HTTP/1.0 may go without.
    assert_eq!(s.raw("GET /h.txt HTTP/1.1\r\nConnection: close\r\n\r\n").0, 400);
    assert_eq!(s.raw("GET /h.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n").0, 400);
    let (status, body) = s.raw("GET /h.txt HTTP/1.0\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "kept"));
    // A right token followed by a wrong one writes nothing.
    let two = format!(
        "PUT /h.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nAuthorization: Bearer wrong\r\n\
         Content-Length: 3\r\nConnection: close\r\n\r\nnew"
    );
    assert_eq!(s.raw(&two).0, 400);
    assert_eq!(s.get("/h.txt").text().unwrap(), "kept");
    assert!(!s.log().contains("ERROR"), "{}", s.log());
}

/// Reads from `stream` until the server closes it: how long that took and
/// what came, or None when it stayed open past `within`.
fn closed_within(stream: &mut std::net::TcpStream, within: std::time::Duration) -> Option<(std::time::Duration, String)> {
    use std::io::Read;
    let started = std::time::Instant::now();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some((started.elapsed(), String::from_utf8_lossy(&got).to_string())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some((started.elapsed(), String::from_utf8_lossy(&got).to_string()))
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn slow_headers_and_stalled_bodies_are_cut_off() {
    use std::io::Write;
    let dir = TempDir::new("timeouts");
    let flags = ["--header-read-timeout", "1s", "--body-timeout", "1s"];
    let s = Server::start(dir.path(), &flags, None);

    // Half a request line, never finished (slowloris).
    let mut slow = std::net::TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    let (took, _) = closed_within(&mut slow, std::time::Duration::from_secs(10)).expect("a slow header is cut off");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");

    // An upload whose body stops half-way fails with a reason, and stores nothing.
    let mut stalled = std::net::TcpStream::connect(s.addr).unwrap();
    write!(stalled, "PUT /stalled.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 10\r\n\r\nhalf").unwrap();
    let (took, answer) = closed_within(&mut stalled, std::time::Duration::from_secs(10)).expect("a stalled body ends the request");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(s.get("/stalled.txt").status(), 404);
    assert_eq!(s.get("/_turserver/health").status(), 200);
}

#[test]
fn a_connection_with_nothing_moving_is_closed() {
    use std::io::Write;
    let dir = TempDir::new("idle");
    let s = Server::start(dir.path(), &["--idle-timeout", "1s", "--header-read-timeout", "60s"], None);
    let mut idle = std::net::TcpStream::connect(s.addr).unwrap();
    idle.write_all(b"GET /_turserver/health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (took, answer) = closed_within(&mut idle, std::time::Duration::from_secs(10)).expect("an idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "the request itself was answered: {answer}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

#[test]
fn past_the_connection_limit_new_connections_wait_their_turn() {
    use std::io::Write;
    let dir = TempDir::new("max-connections");
    let s = Server::start(dir.path(), &["--max-connections", "3"], None);
    // Three held connections (one is the reqwest pool's, closed as soon as
    // the harness's client is dropped; the others are these).
    let held: Vec<std::net::TcpStream> = (0..3).map(|_| std::net::TcpStream::connect(s.addr).unwrap()).collect();
    let waits_before = eventually(std::time::Duration::from_secs(5), || {
        let mut probe = std::net::TcpStream::connect(s.addr).ok()?;
        probe.write_all(b"GET /_turserver/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        // The probe is accepted by the kernel but not served while all three are held.
        closed_within(&mut probe, std::time::Duration::from_millis(500)).is_none().then_some(())
    });
    assert!(waits_before.is_some(), "a connection past the limit was served at once");
    drop(held);
    let served = eventually(std::time::Duration::from_secs(10), || {
        (client().get(s.url("/_turserver/health")).send().ok()?.status() == 200).then_some(())
    });
    assert!(served.is_some(), "once the held connections closed, new ones were served");
    assert!(s.metric("turserver_connection_limit_waits_total") >= 1.0);
    assert!(s.logged("connection limit reached"), "{}", s.log());
}

#[test]
fn one_address_cannot_hold_every_connection() {
    use std::io::Write;
    let dir = TempDir::new("per-ip");
    let s = Server::start(dir.path(), &["--max-connections-per-ip", "2"], None);
    let health = b"GET /_turserver/health HTTP/1.1\r\nHost: x\r\n\r\n";
    let health_close = b"GET /_turserver/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Two kept-alive connections from 127.0.0.1, both answered (retried
    // until the harness's own connections have closed).
    let mut held = eventually(std::time::Duration::from_secs(10), || {
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = std::net::TcpStream::connect(s.addr).ok()?;
            c.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
            c.write_all(health).ok()?;
            (read_response(&mut c) == 200).then_some(())?;
            held.push(c);
        }
        Some(held)
    })
    .expect("two connections from one address are served");

    // A third from the same address is answered 503 and closed.
    let mut third = std::net::TcpStream::connect(s.addr).unwrap();
    third.write_all(health_close).unwrap();
    let (_, answer) = closed_within(&mut third, std::time::Duration::from_secs(5)).expect("the third connection is closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1") && answer.contains("too many connections"), "{answer}");

    // Another address is served meanwhile, and so are the two held ones.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.bind(&"127.0.0.2:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    other.connect(&s.addr.into()).unwrap();
    let mut other: std::net::TcpStream = other.into();
    other.write_all(health_close).unwrap();
    let (_, answer) = closed_within(&mut other, std::time::Duration::from_secs(5)).expect("the other address is answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for c in &mut held {
        c.write_all(health).unwrap();
        assert_eq!(read_response(c), 200);
    }

    // Once they close, the address is served again.
    drop(held);
    let refused = eventually(std::time::Duration::from_secs(10), || {
        Some(s.metric("turserver_connections_refused_per_ip_total")).filter(|&n| n >= 1.0)
    });
    assert!(refused.is_some(), "the refusal is counted");
    assert!(s.logged("too many connections from one address"), "{}", s.log());
    assert_eq!(s.get("/_turserver/health").status(), 200);
}

#[test]
fn a_flood_of_refused_connections_leaves_room_for_other_addresses() {
    use std::io::Write;
    let dir = TempDir::new("per-ip-flood");
    let s = Server::start(dir.path(), &["--max-connections", "4", "--max-connections-per-ip", "1"], None);
    let health = b"GET /_turserver/health HTTP/1.1\r\nHost: x\r\n\r\n";
    // 127.0.0.1 holds its one connection (retried until the harness's own
    // connections have closed).
    let held = eventually(std::time::Duration::from_secs(10), || {
        let mut c = std::net::TcpStream::connect(s.addr).ok()?;
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
        c.write_all(health).ok()?;
        (read_response(&mut c) == 200).then_some(c)
    })
    .expect("one connection from the address is served");
    // Forty more from it that send nothing and never close: each is refused,
    // and its answer waits up to a second for the client to close. Had they
    // held places under --max-connections 4, the three left would serve
    // nobody else for about 13 s.
    let flood: Vec<std::net::TcpStream> = (0..40).map(|_| std::net::TcpStream::connect(s.addr).unwrap()).collect();
    let started = std::time::Instant::now();
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.bind(&"127.0.0.2:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    other.connect(&s.addr.into()).unwrap();
    let mut other: std::net::TcpStream = other.into();
    other.write_all(b"GET /_turserver/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let (_, answer) = closed_within(&mut other, std::time::Duration::from_secs(20)).expect("the other address is answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(3), "the other address waited {waited:?} behind the refusals");
    // The address has its place back once its connection closes.
    drop((held, flood));
    let refused = eventually(std::time::Duration::from_secs(10), || {
        let r = client().get(s.url("/metrics")).send().ok().filter(|r| r.status() == 200)?;
        let text = r.text().ok()?;
        let n: f64 = text.lines().find_map(|l| l.strip_prefix("turserver_connections_refused_per_ip_total "))?.trim().parse().ok()?;
        (n >= 40.0).then_some(n)
    });
    assert!(refused.is_some(), "every refusal is counted");
}

#[test]
fn a_site_document_without_credentials_is_refused_before_its_body() {
    let s = Server::local();
    let next = "GET /_turserver/health HTTP/1.1\r\nHost: x\r\n\r\n";
    // The answer comes before any of the body is sent.
    let head = "PUT /_api/site HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n";
    let (early, sent, after) = refused_then_sent(s.addr, head, 1000, next);
    assert_eq!((early, sent, after), (401, true, 200));
    let head = "PUT /_api/site HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: 1000\r\n\r\n";
    assert_eq!(refused_then_sent(s.addr, head, 1000, next).0, 403);
    let rules: serde_json::Value = s.get("/_api/site").json().unwrap();
    assert_eq!(rules, serde_json::json!({}), "nothing was stored");
}

#[test]
fn a_reused_instance_never_writes_with_an_earlier_requests_credentials() {
    let (edge, sidecar) = with_sidecar("reused-credentials");
    let composed = target_dir().join("spin/turserver-wasi.wasm");
    let env = [("TURSERVER_SIDECAR_URL", sidecar.as_str()), ("TURSERVER_SIDECAR_TOKEN", SIDECAR_TOKEN)];
    // One instance serves every request in turn.
    let spin = WasmtimeServe::start_with(&composed, &env, &["--max-instance-reuse-count", "1000"]);
    let c = client();
    for i in 0..5 {
        let url = spin.url(&format!("/cred/{i}.txt"));
        assert_eq!(c.put(&url).bearer_auth(TOKEN).body("mine").send().unwrap().status(), 201);
        assert_eq!(c.put(&url).body("theirs").send().unwrap().status(), 401, "no credentials, no write");
        assert_eq!(c.delete(&url).send().unwrap().status(), 401);
        let r = c.put(spin.url("/_api/site")).body("{}").send().unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(edge.get(&format!("/cred/{i}.txt")).text().unwrap(), "mine");
    }
}

#[test]
fn a_worker_that_links_but_cannot_serve_is_refused() {
    let s = Server::local();
    let before = status(&s)["worker"]["version"].clone();
    // The Spin build reaches its store over HTTP through a sidecar it is not
    // configured for here: it links, but answers every request 503.
    let composed = std::fs::read(target_dir().join("spin/turserver-wasi.wasm")).unwrap();
    let r = client().put(s.url("/_turserver/worker")).bearer_auth(TOKEN).body(composed).send().unwrap();
    assert_eq!(r.status(), 400);
    let why = r.text().unwrap();
    assert!(why.contains("test request"), "{why}");
    assert_eq!(status(&s)["worker"]["version"], before, "the active worker keeps serving");
    assert_eq!(s.put("/still.txt", None, b"served".to_vec()).status(), 201);
    assert_eq!(s.get("/still.txt").text().unwrap(), "served");
}

#[test]
fn files_replaced_or_deleted_while_being_read_never_give_500() {
    let dir = TempDir::new("replace-race");
    let s = Server::start(dir.path(), &["--response-cache-mib", "0"], None);
    let versions = [pseudo_random(3000, 1), pseudo_random(5000, 2)];
    assert_eq!(s.put("/race.bin", None, versions[0].clone()).status(), 201);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url, versions) = (stop.clone(), s.url("/race.bin"), versions.clone());
            std::thread::spawn(move || {
                let c = client();
                let (mut served, mut failures) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = c.get(&url).send().unwrap();
                    let status = r.status().as_u16();
                    let body = r.bytes().map(|b| b.to_vec()).unwrap_or_default();
                    match status {
                        200 if versions.iter().any(|v| *v == body) => served += 1,
                        404 => {}
                        _ => failures.push(format!("{status}: {} bytes {:?}", body.len(), String::from_utf8_lossy(&body[..body.len().min(80)]))),
                    }
                }
                (served, failures)
            })
        })
        .collect();
    let c = client();
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < std::time::Duration::from_secs(5) {
        i += 1;
        if i % 5 == 0 {
            c.delete(s.url("/race.bin")).bearer_auth(TOKEN).send().unwrap();
        }
        c.put(s.url("/race.bin")).bearer_auth(TOKEN).body(versions[i % 2].clone()).send().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for r in readers {
        let (n, failures) = r.join().unwrap();
        assert!(failures.is_empty(), "{} bad answers, e.g. {:?}", failures.len(), &failures[..failures.len().min(3)]);
        served += n;
    }
    assert!(served > 100, "the readers barely ran: {served}");
}

/// One h2 connection whose flow-control window is shut, so no body byte of
/// its responses is sent until [`StalledH2::open_window`].
struct StalledH2 {
    /// The status of each stream's response head.
    statuses: Vec<u16>,
    /// How each body ended: its error, or "ended" if it looked complete.
    ended: tokio::sync::mpsc::UnboundedReceiver<String>,
    open: Option<tokio::sync::oneshot::Sender<()>>,
}

impl StalledH2 {
    /// Opens `streams` GETs of `path` and waits for their heads.
    async fn start(addr: std::net::SocketAddr, path: &str, streams: usize) -> StalledH2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, mut conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        let (open, opened) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                _ = &mut conn => return,
                _ = opened => {}
            }
            conn.set_initial_window_size(1 << 20).unwrap();
            let _ = conn.await;
        });
        let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
        let mut heads = Vec::new();
        for _ in 0..streams {
            let mut client = client.clone().ready().await.unwrap();
            let req = http::Request::get(format!("http://{addr}{path}")).body(()).unwrap();
            heads.push(client.send_request(req, true).unwrap().0);
        }
        let mut statuses = Vec::new();
        for head in heads {
            let Ok(resp) = head.await else {
                statuses.push(0);
                continue;
            };
            statuses.push(resp.status().as_u16());
            let mut body = resp.into_body();
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let outcome = loop {
                    match body.data().await {
                        Some(Ok(bytes)) => {
                            let _ = body.flow_control().release_capacity(bytes.len());
                        }
                        Some(Err(e)) => break e.to_string(),
                        None => break "ended".to_string(),
                    }
                };
                let _ = ended_tx.send(outcome);
            });
        }
        // The connection lives as long as a sender does.
        std::mem::forget(client);
        StalledH2 { statuses, ended, open: Some(open) }
    }

    fn open_window(&mut self) {
        let _ = self.open.take().unwrap().send(());
    }
}

#[test]
fn h2_streams_that_never_take_their_body_do_not_hold_the_workers() {
    let dir = TempDir::new("h2-stall");
    let s = Server::start(
        &dir.path().join("data"),
        &["--max-instances", "16", "--send-timeout", "2s", "--response-cache-mib", "0"],
        Some(dir),
    );
    // One file larger than what a response buffers (its instance streams
    // it), one that fits (its instance finishes at once).
    assert_eq!(s.put("/big.bin", None, pseudo_random(16 << 20, 7)).status(), 201);
    assert_eq!(s.put("/medium.bin", None, pseudo_random(1 << 20, 8)).status(), 201);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // Stalled streams of the smaller file, then two connections with as
    // many stalled streams of the large one as there are instances.
    let mut stalls = vec![rt.block_on(StalledH2::start(s.addr, "/medium.bin", 8))];
    stalls.extend((0..2).map(|_| rt.block_on(StalledH2::start(s.addr, "/big.bin", 8))));
    let heads: Vec<&Vec<u16>> = stalls.iter().map(|c| &c.statuses).collect();
    assert!(heads.iter().all(|h| h.iter().all(|s| *s == 200)), "{heads:?}");
    assert_eq!(s.metric("turserver_worker_instances_busy"), 16.0, "each stalled response of the large file holds an instance");
    // While they hold them, the pool is full.
    assert_eq!(s.get("/medium.bin").status(), 503);

    // Once the send timeout has passed, the instances are freed, with the
    // connections still open and their windows still shut.
    let freed = eventually(std::time::Duration::from_secs(15), || (s.metric("turserver_worker_instances_busy") == 0.0).then_some(()));
    assert!(freed.is_some(), "stalled responses still hold {} instances", s.metric("turserver_worker_instances_busy"));
    assert!(s.logged("took none of the response for the send timeout"), "{}", s.log());
    // A burst the size of the pool is served in full.
    let c = client();
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let c = c.clone();
            let url = s.url("/big.bin");
            std::thread::spawn(move || {
                let r = c.get(url).send().unwrap();
                (r.status().as_u16(), r.bytes().unwrap().len())
            })
        })
        .collect();
    for t in burst {
        assert_eq!(t.join().unwrap(), (200, 16 << 20));
    }
    // A stalled client that opens its window at last sees each response cut
    // off (what was buffered for it is gone), never a short body that
    // looks complete.
    for c in &mut stalls {
        c.open_window();
        for _ in 0..8 {
            let outcome = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(10), c.ended.recv()).await });
            let outcome = outcome.expect("the stream ends once the window opens").unwrap();
            assert_ne!(outcome, "ended", "a cut response looked complete");
        }
    }
}

#[test]
fn one_h2_connection_holds_no_more_than_its_share_of_the_workers() {
    let dir = TempDir::new("h2-share");
    let s = Server::start(
        &dir.path().join("data"),
        &["--max-instances", "16", "--instances-per-connection", "4", "--send-timeout", "2s", "--response-cache-mib", "0"],
        Some(dir),
    );
    let body = pseudo_random(16 << 20, 9);
    assert_eq!(s.put("/big.bin", None, body.clone()).status(), 201);
    assert_eq!(s.put("/medium.bin", None, pseudo_random(1 << 20, 10)).status(), 201);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // Twelve streams on one connection, none of which ever takes its body.
    let stalled = rt.spawn(StalledH2::start(s.addr, "/big.bin", 12));
    let waiting = eventually(std::time::Duration::from_secs(10), || {
        (s.metric("turserver_worker_connection_quota_waits_total") >= 8.0).then_some(())
    });
    assert!(waiting.is_some(), "streams that waited: {}", s.metric("turserver_worker_connection_quota_waits_total"));
    assert_eq!(s.metric("turserver_worker_instances_busy"), 4.0);
    // Other clients are served meanwhile, in full.
    let c = client();
    let r = c.get(s.url("/big.bin")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().unwrap()[..] == body[..], "another client got a different body");
    assert!(s.metric("turserver_worker_instances_busy") <= 4.0, "the stalled connection holds more than its share");
    // The streams past the share waited for their turn: none was refused.
    let stalled = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(30), stalled).await });
    let stalled = stalled.expect("every stream got its head within three send timeouts").unwrap();
    assert_eq!(stalled.statuses, vec![200; 12]);

    // A response the instance finished at once still counts until the
    // client has taken it: what one connection keeps buffered is bounded.
    let waits = s.metric("turserver_worker_connection_quota_waits_total");
    let stalled = rt.spawn(StalledH2::start(s.addr, "/medium.bin", 12));
    let waiting = eventually(std::time::Duration::from_secs(10), || {
        (s.metric("turserver_worker_connection_quota_waits_total") >= waits + 8.0).then_some(())
    });
    assert!(waiting.is_some(), "streams that waited: {}", s.metric("turserver_worker_connection_quota_waits_total") - waits);
    let stalled = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(30), stalled).await });
    assert_eq!(stalled.expect("every stream got its head").unwrap().statuses, vec![200; 12]);
}

/// A server with a 1 s send timeout holding `/big.bin` (2 MiB), and its bytes.
fn for_a_slow_reader(label: &str, seed: u64) -> (Server, Vec<u8>) {
    let dir = TempDir::new(label);
    let s = Server::start(&dir.path().join("data"), &["--send-timeout", "1s", "--response-cache-mib", "0"], Some(dir));
    let body = pseudo_random(2 << 20, seed);
    assert_eq!(s.put("/big.bin", None, body.clone()).status(), 201);
    (s, body)
}

#[test]
fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
    use std::io::{Read, Write};
    let (s, body) = for_a_slow_reader("slow-reader", 9);
    let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
    // A small receive buffer, so the server's writes wait on this reader.
    let sock = socket2::SockRef::from(&conn);
    sock.set_recv_buffer_size(16 << 10).unwrap();
    conn.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    // About 300 KiB/s: each 1 MiB chunk of the file takes over 3 send
    // timeouts to drain.
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let text_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got[..text_end]));
    assert_eq!(got.len() - text_end, body.len(), "the whole body arrived");
    assert!(got[text_end..] == body[..]);
}

#[test]
fn a_slow_h2_reader_that_keeps_reading_is_not_cut_off() {
    let (s, body) = for_a_slow_reader("slow-h2-reader", 10);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let got = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::get(format!("http://{}/big.bin", s.addr)).body(()).unwrap();
        let resp = client.send_request(req, true).unwrap().0.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        // About 300 KiB/s (3 µs a byte), opening the window only as it
        // reads: a 1 MiB chunk of the file takes over 3 send timeouts to
        // drain.
        while let Some(data) = body.data().await {
            let data = data.expect("the body arrives whole");
            got.extend_from_slice(&data);
            tokio::time::sleep(std::time::Duration::from_micros(data.len() as u64 * 3)).await;
            let _ = body.flow_control().release_capacity(data.len());
        }
        got
    });
    assert_eq!(got.len(), body.len());
    assert!(got == body);
}
