//! A worker for the host's isolation and hot-swap tests. It answers by path:
//! - `/version`: 200 with the version it was built with
//!   (`TEST_WORKER_VERSION` at build time);
//! - `/trap`: traps;
//! - `/loop`: spins forever;
//! - `/alloc`: allocates until memory runs out;
//! - `/count`: how many requests this instance has served (it keeps a
//!   global: built as `stateless*`, it declares itself stateless all the
//!   same, which shows when the host reuses an instance);
//! - anything else: 200 `ok`.

#[cfg(target_arch = "wasm32")]
mod wasm {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "turserver:store/worker",
        generate_all,
    });

    use exports::wasi::http::incoming_handler::Guest;
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
            let body = match path.as_str() {
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
                ("cache-control".to_string(), b"max-age=60".to_vec()),
            ])
            .unwrap();
            let resp = OutgoingResponse::new(headers);
            let body_handle = resp.body().unwrap();
            ResponseOutparam::set(out, Ok(resp));
            let stream = body_handle.write().unwrap();
            stream.blocking_write_and_flush(body.as_bytes()).unwrap();
            drop(stream);
            OutgoingBody::finish(body_handle, None).unwrap();
        }
    }
}
