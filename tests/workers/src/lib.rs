//! A worker for the host's isolation and hot-swap tests. It answers by path:
//! - `/version`: 200 with the version it was built with
//!   (`TEST_WORKER_VERSION` at build time);
//! - `/trap`: traps;
//! - `/loop`: spins forever;
//! - `/alloc`: allocates until memory runs out;
//! - `/count`: how many requests this instance has served (it keeps a
//!   global: built as `stateless*`, it declares itself stateless all the
//!   same, which shows when the host reuses an instance);
//! - `/kv/get/{key}`: the key-value entry's value (404 when absent);
//! - `/kv/set-briefly/{key}`: sets the entry to `"short"` for three seconds;
//! - `/kv/incr/{key}`: adds one to the entry (a JSON number), with a
//!   compare-and-set that retries when another request got there first,
//!   and answers the new count (not cached);
//! - anything else: 200 `ok`.
//!
//! Built as `hello`, it is only the last: a plain `wasi:http/proxy`
//! component that imports nothing of turserver's, the minimal baseline the
//! benchmark runs under Spin. Built as `hello-fetch`, a request for
//! `/fetch/{host:port}/{path}` first GETs `http://{host:port}/{path}` and
//! reads its answer to the end: the least a component whose data lives
//! elsewhere does per request, also a benchmark baseline.

#[cfg(all(target_arch = "wasm32", not(hello)))]
mod wasm {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "turserver:store/worker",
        generate_all,
    });

    use exports::wasi::http::incoming_handler::Guest;
    use turserver::store::kv;

    /// Adds one to the counter at `key`; retries while other writers win.
    fn increment(key: &str) -> Result<u64, turserver::store::files::Error> {
        loop {
            let (next, expect) = match kv::get(key)? {
                Some(e) => {
                    let n: u64 = String::from_utf8_lossy(&e.value).trim().parse().unwrap_or(0);
                    (n + 1, kv::Expectation::Version(e.version))
                }
                None => (1, kv::Expectation::Absent),
            };
            match kv::set(key, next.to_string().as_bytes(), None, None, Some(expect)) {
                Ok(_) => return Ok(next),
                Err(turserver::store::files::Error::PreconditionFailed) => continue,
                Err(e) => return Err(e),
            }
        }
    }
    use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

    const VERSION: &str = match option_env!("TEST_WORKER_VERSION") {
        Some(v) => v,
        None => "dev",
    };

    struct TestWorker;
    export!(TestWorker);

    static SERVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    #[cfg(stateless)]
    #[used]
    #[link_section = "turserver:stateless"]
    static STATELESS: [u8; 1] = [1];

    impl Guest for TestWorker {
        fn handle(request: IncomingRequest, out: ResponseOutparam) {
            let path = request.path_with_query().unwrap_or_default();
            let served = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let (mut status, mut cache) = (200, "max-age=60");
            let body = match path.as_str() {
                p if p.starts_with("/kv/get/") => match kv::get(&p["/kv/get/".len()..]) {
                    Ok(Some(entry)) => String::from_utf8_lossy(&entry.value).to_string(),
                    Ok(None) => {
                        status = 404;
                        "absent".to_string()
                    }
                    Err(e) => {
                        status = 500;
                        format!("{e:?}")
                    }
                },
                p if p.starts_with("/kv/set-briefly/") => {
                    cache = "no-store";
                    match kv::set(&p["/kv/set-briefly/".len()..], b"\"short\"", None, Some(3), None) {
                        Ok(version) => version.to_string(),
                        Err(e) => {
                            status = 500;
                            format!("{e:?}")
                        }
                    }
                }
                p if p.starts_with("/kv/incr/") => {
                    cache = "no-store";
                    match increment(&p["/kv/incr/".len()..]) {
                        Ok(n) => n.to_string(),
                        Err(e) => {
                            status = 500;
                            format!("{e:?}")
                        }
                    }
                }
                "/version" => VERSION.to_string(),
                "/trap" => panic!("trapping on purpose"),
                "/loop" => loop {
                    std::hint::spin_loop();
                },
                "/alloc" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "/count" => served.to_string(),
                _ => "ok".to_string(),
            };
            let headers = Fields::from_list(&[
                ("content-type".to_string(), b"text/plain".to_vec()),
                ("content-length".to_string(), body.len().to_string().into_bytes()),
                // Cacheable, so the host's response cache is exercised across swaps.
                ("cache-control".to_string(), cache.as_bytes().to_vec()),
            ])
            .unwrap();
            let resp = OutgoingResponse::new(headers);
            resp.set_status_code(status).unwrap();
            let body_handle = resp.body().unwrap();
            ResponseOutparam::set(out, Ok(resp));
            let stream = body_handle.write().unwrap();
            stream.blocking_write_and_flush(body.as_bytes()).unwrap();
            drop(stream);
            OutgoingBody::finish(body_handle, None).unwrap();
        }
    }
}

#[cfg(all(target_arch = "wasm32", hello))]
mod hello {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wasi:http/proxy@0.2.0",
        generate_all,
    });

    use exports::wasi::http::incoming_handler::Guest;
    use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

    struct Hello;
    export!(Hello);

    impl Guest for Hello {
        fn handle(_request: IncomingRequest, out: ResponseOutparam) {
            #[cfg(fetch)]
            if let Some(target) = _request.path_with_query().as_deref().and_then(|p| p.strip_prefix("/fetch/")) {
                fetch(target);
            }
            let headers = Fields::from_list(&[
                ("content-type".to_string(), b"text/plain".to_vec()),
                ("content-length".to_string(), b"2".to_vec()),
            ])
            .unwrap();
            let resp = OutgoingResponse::new(headers);
            let body = resp.body().unwrap();
            ResponseOutparam::set(out, Ok(resp));
            let stream = body.write().unwrap();
            stream.blocking_write_and_flush(b"ok").unwrap();
            drop(stream);
            OutgoingBody::finish(body, None).unwrap();
        }
    }

    /// GETs `http://{target}` and reads the answer's body to its end.
    #[cfg(fetch)]
    fn fetch(target: &str) {
        use wasi::http::outgoing_handler;
        use wasi::http::types::{Method, OutgoingRequest, Scheme};
        let (authority, path) = target.split_once('/').unwrap_or((target, ""));
        let request = OutgoingRequest::new(Fields::new());
        request.set_method(&Method::Get).unwrap();
        request.set_scheme(Some(&Scheme::Http)).unwrap();
        request.set_authority(Some(authority)).unwrap();
        request.set_path_with_query(Some(&format!("/{path}"))).unwrap();
        let body = request.body().unwrap();
        let answer = outgoing_handler::handle(request, None).unwrap();
        OutgoingBody::finish(body, None).unwrap();
        answer.subscribe().block();
        let response = answer.get().unwrap().unwrap().unwrap();
        let body = response.consume().unwrap();
        let stream = body.stream().unwrap();
        while stream.blocking_read(64 << 10).is_ok() {}
    }
}
