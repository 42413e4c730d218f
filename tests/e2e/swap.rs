//! Hot swaps and isolation from bad workers, against the real binary.

use crate::support::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn hash_of(path: &std::path::Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

fn wait_for_version(s: &Server, hash: &str, within: Duration) -> Option<Instant> {
    eventually(within, || (status(s)["worker"]["version"] == hash).then(Instant::now))
}

#[test]
fn swap_under_load_loses_no_request() {
    let (v1, v2, v3) = (test_worker("v1"), test_worker("v2"), test_worker("v3"));
    let dir = TempDir::new("swap");
    let live = dir.path().join("worker.wasm");
    install_file(&v1, &live);
    let s = Server::start(&dir.path().join("data"), &["--worker", live.to_str().unwrap()], None);
    assert_eq!(s.get("/version").text().unwrap(), "v1");

    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<(usize, Instant, u16, String)>>> = Arc::default();
    let clients: Vec<_> = (0..16)
        .map(|id| {
            let (stop, log, url) = (stop.clone(), log.clone(), s.url("/version"));
            std::thread::spawn(move || {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (status, body) = match c.get(&url).send() {
                        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
                        Err(e) => (0, e.to_string()),
                    };
                    log.lock().unwrap().push((id, started, status, body));
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    install_file(&v2, &live);
    let swapped2 = wait_for_version(&s, &hash_of(&v2), Duration::from_secs(30)).expect("swap to v2");
    eprintln!("swap to v2 took {:?} (fresh compile, including the file watch's settle time)", swapped2 - t);
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    install_file(&v3, &live);
    let swapped3 = wait_for_version(&s, &hash_of(&v3), Duration::from_secs(30)).expect("swap to v3");
    eprintln!("swap to v3 took {:?}", swapped3 - t);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    let log = log.lock().unwrap();
    let failed: Vec<_> = log.iter().filter(|(_, _, st, _)| *st != 200).collect();
    eprintln!("{} requests, {} failed", log.len(), failed.len());
    assert!(failed.is_empty(), "failed requests: {:?}", &failed[..failed.len().min(5)]);
    let rank = |v: &str| ["v1", "v2", "v3"].iter().position(|x| *x == v).unwrap_or_else(|| panic!("unknown version {v}"));
    for id in 0..16 {
        let seq: Vec<usize> = log.iter().filter(|(c, ..)| *c == id).map(|(.., b)| rank(b)).collect();
        assert!(seq.windows(2).all(|w| w[0] <= w[1]), "client {id} saw versions out of order: {seq:?}");
    }
    for v in ["v1", "v2", "v3"] {
        assert!(log.iter().any(|(.., b)| b == v), "{v} never observed");
    }
    for (_, started, _, body) in log.iter() {
        if *started > swapped3 {
            assert_eq!(body, "v3", "a request started after the second swap got {body}");
        } else if *started > swapped2 {
            assert_ne!(body, "v1", "a request started after the first swap got v1");
        }
    }
}

#[test]
fn broken_worker_is_refused_and_the_old_one_keeps_serving() {
    let v1 = test_worker("v1");
    let dir = TempDir::new("broken");
    let live = dir.path().join("worker.wasm");
    install_file(&v1, &live);
    let s = Server::start(&dir.path().join("data"), &["--worker", live.to_str().unwrap()], None);
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm this is not a component").unwrap();
    install_file(&junk, &live);
    let err = eventually(Duration::from_secs(10), || status(&s)["worker"]["last_error"].as_str().map(str::to_string));
    let err = err.expect("status never reported the refused worker");
    assert!(err.contains("compiling the worker"), "{err}");
    assert_eq!(status(&s)["worker"]["version"], hash_of(&v1));
    assert_eq!(s.get("/version").text().unwrap(), "v1");
    assert!(s.logged("worker refused"), "{}", s.log());
    // A good worker afterwards clears the error.
    install_file(&test_worker("v2"), &live);
    assert!(wait_for_version(&s, &hash_of(&test_worker("v2")), Duration::from_secs(30)).is_some());
    assert!(status(&s)["worker"]["last_error"].is_null());
}

#[test]
fn compiled_workers_are_cached_and_corrupt_entries_rebuilt() {
    let v1 = test_worker("v1");
    let dir = TempDir::new("cache");
    let data = dir.path().join("data");
    let args = ["--worker", v1.to_str().unwrap()];
    let ready_line = |s: &Server| {
        assert!(s.logged("worker ready"), "{}", s.log());
        s.log().lines().find(|l| l.contains("worker ready")).unwrap().to_string()
    };
    {
        let s = Server::start(&data, &args, None);
        assert!(ready_line(&s).contains("from_cache=false"), "{}", ready_line(&s));
    }
    {
        let s = Server::start(&data, &args, None);
        assert!(ready_line(&s).contains("from_cache=true"), "{}", ready_line(&s));
        assert_eq!(s.get("/version").text().unwrap(), "v1");
    }
    // Flip a byte in every cache entry: it must be detected, not loaded.
    for entry in std::fs::read_dir(data.join("worker-cache")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let s = Server::start(&data, &args, None);
    assert!(s.logged("ignoring a corrupt compiled-worker cache entry"), "{}", s.log());
    assert!(ready_line(&s).contains("from_cache=false"));
    assert_eq!(s.get("/version").text().unwrap(), "v1");
}

#[test]
fn deploy_through_the_database_reaches_every_edge() {
    let primary = Sqld::start();
    let a = Server::replica(&primary, "300ms");
    let b = Server::replica(&primary, "300ms");
    let v2 = test_worker("v2");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turserver"))
        .args(["worker", "deploy", v2.to_str().unwrap(), "--url", &format!("http://{}", a.addr), "--token", TOKEN])
        .output()
        .unwrap();
    assert!(out.status.success(), "deploy failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&hash_of(&v2)));
    assert_eq!(a.get("/version").text().unwrap(), "v2", "the deploying edge swaps at once");
    let seen = eventually(Duration::from_secs(10), || {
        let r = b.get("/version");
        (r.status() == 200 && r.text().unwrap() == "v2").then_some(())
    });
    assert!(seen.is_some(), "edge B never served the deployed worker");
    assert_eq!(status(&b)["worker"]["origin"], "database");
    assert_eq!(status(&b)["worker"]["version"], hash_of(&v2));

    // Deploys need the token, and a non-worker is refused with 400.
    let r = client().put(a.url("/_turserver/worker")).body(std::fs::read(&v2).unwrap()).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = client().put(a.url("/_turserver/worker")).bearer_auth(TOKEN).body("not wasm").send().unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(a.get("/version").text().unwrap(), "v2");
}

#[test]
fn trap_loop_and_memory_bomb_are_contained() {
    let worker = test_worker("v1");
    let dir = TempDir::new("isolation");
    let s = Server::start(
        &dir.path().join("data"),
        &["--worker", worker.to_str().unwrap(), "--worker-deadline", "1s", "--worker-memory-mib", "32"],
        None,
    );

    let r = s.get("/trap");
    assert_eq!(r.status(), 500);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(r.text().unwrap().contains(&format!("request {id}")));
    assert!(s.logged(&format!("request_id={id}")), "the trap is logged with its request id");
    assert_eq!(s.get("/version").status(), 200);

    // A loop, while other requests go on unaffected.
    let url = s.url("/loop");
    let looping = std::thread::spawn(move || {
        let started = Instant::now();
        let r = client().get(url).send().unwrap();
        (r.status().as_u16(), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(s.get("/version").text().unwrap(), "v1");
        assert!(started.elapsed() < Duration::from_millis(500), "a normal request waited {:?}", started.elapsed());
    }
    let (status, took) = looping.join().unwrap();
    assert_eq!(status, 504);
    assert!(took < Duration::from_secs(5), "the loop was stopped after {took:?}");

    let r = s.get("/alloc");
    assert_eq!(r.status(), 500);
    assert_eq!(s.get("/version").text().unwrap(), "v1");
    assert_eq!(s.get("/_turserver/health").status(), 200);
}

/// Requests in a row on an idle server: each finds the instance the last
/// one left.
fn counts(s: &Server, n: usize) -> Vec<u32> {
    (0..n).map(|_| s.get("/count").text().unwrap().parse().unwrap()).collect()
}

#[test]
fn a_stateless_worker_reuses_instances_and_drops_failed_ones() {
    let worker = test_worker("stateless-1");
    let dir = TempDir::new("reuse");
    let flags = ["--worker", worker.to_str().unwrap(), "--response-cache-mib", "0", "--worker-deadline", "1s"];
    let s = Server::start(&dir.path().join("data"), &flags, None);
    // The first request makes the instance the next ones reuse.
    counts(&s, 1);
    let created = s.metric("turserver_worker_instantiations_total");
    let seen = counts(&s, 20);
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "one instance served them in turn: {seen:?}");
    assert_eq!(s.metric("turserver_worker_instantiations_total"), created, "no new instance");

    // A trap or an interrupted loop retires the instance: the next request
    // starts afresh.
    assert_eq!(s.get("/trap").status(), 500);
    assert_eq!(counts(&s, 2), [1, 2]);
    assert_eq!(s.get("/loop").status(), 504);
    assert_eq!(counts(&s, 1), [1]);
    assert_eq!(s.metric("turserver_worker_instantiations_total"), created + 2.0);
}

#[test]
fn a_worker_without_the_declaration_gets_a_fresh_instance_per_request() {
    let worker = test_worker("v1");
    let dir = TempDir::new("no-reuse");
    let flags = ["--worker", worker.to_str().unwrap(), "--response-cache-mib", "0"];
    let s = Server::start(&dir.path().join("data"), &flags, None);
    let created = s.metric("turserver_worker_instantiations_total");
    assert_eq!(counts(&s, 5), [1, 1, 1, 1, 1]);
    assert_eq!(s.metric("turserver_worker_instantiations_total"), created + 5.0);
}

#[test]
fn reused_default_worker_instances_carry_nothing_between_requests() {
    let s = Server::start(&TempDir::new("reuse-default").path().join("data"), &["--response-cache-mib", "0"], None);
    let created = s.metric("turserver_worker_instantiations_total");
    for i in 0..10 {
        let path = format!("/r/{i}.txt");
        // Allowed, then the same request without a token on the instance
        // that just wrote: refused; nothing of the first survives.
        assert_eq!(s.put(&path, None, b"x".to_vec()).status(), 201);
        let r = client().put(s.url(&path)).body("y").send().unwrap();
        assert_eq!(r.status(), 401);
        let r = client().delete(s.url(&path)).send().unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(s.get(&path).text().unwrap(), "x");
    }
    let new = s.metric("turserver_worker_instantiations_total") - created;
    assert!(new <= 2.0, "the built-in worker is stateless and reused: {new} new instances for 40 requests");
}
