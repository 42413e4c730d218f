//! The pipeline in process: a local store, the built-in worker, and requests
//! carried over an in-memory connection (no sockets), so each step is seen
//! from the outside as a client would see it.

use super::*;
use crate::http::{request_body, TokenDigest};
use crate::wasm::Runtime;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const TOKEN: &str = "pipeline-token";

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pipeline over a fresh local store, and a client connected to it.
async fn pipeline(label: &str, cache_bytes: u64) -> (TempDir, hyper::client::conn::http1::SendRequest<Full<Bytes>>) {
    let dir = TempDir(std::env::temp_dir().join(format!("turserver-pipeline-{}-{label}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let store = Arc::new(Store::open_local(&dir.0).await.unwrap());
    let runtime = Arc::new(Runtime::new(crate::wasm::tests::test_config(64 << 20)).unwrap());
    let workers = Arc::new(Workers::start(runtime, store.clone(), None).await.unwrap());
    let pipeline = Arc::new(Pipeline {
        keys: Arc::new(super::Keys::new(store.clone(), None, None)),
        site: Default::default(),
        store,
        workers,
        write_token: Some(TokenDigest::of(TOKEN)),
        max_upload: 1 << 20,
        max_file_size: None,
        cache: (cache_bytes > 0).then(|| ResponseCache::new(cache_bytes)),
        consistency_wait: Duration::from_millis(100),
    });
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let pipeline = pipeline.clone();
        async move { Ok::<_, std::convert::Infallible>(pipeline.handle(req.map(|b| request_body(b, Duration::from_secs(5)))).await) }
    });
    tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server_io), service));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io)).await.unwrap();
    tokio::spawn(conn);
    (dir, sender)
}

/// Sends a request; the answer's status, headers and body.
async fn send(
    client: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, http::HeaderMap, Bytes) {
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", "test");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    client.ready().await.expect("the connection stays usable");
    let resp = client.send_request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_token_and_reads_come_back_through_the_worker() {
    let (_dir, mut c) = pipeline("access", 0).await;
    let bearer = format!("Bearer {TOKEN}");

    let (status, _, _) = send(&mut c, "PUT", "/a.txt", &[], b"no token").await;
    assert_eq!(status, 401);
    let (status, _, _) = send(&mut c, "PUT", "/a.txt", &[("authorization", "Bearer wrong")], b"bad token").await;
    assert_eq!(status, 403);
    let (status, _, _) = send(&mut c, "GET", "/a.txt", &[], b"").await;
    assert_eq!(status, 404, "refused writes stored nothing");

    let (status, headers, _) = send(&mut c, "PUT", "/a.txt", &[("authorization", &bearer)], b"hello").await;
    assert_eq!(status, 201);
    assert!(headers.contains_key("x-turserver-worker"), "the worker's version is on every answer");
    assert!(headers.contains_key("x-request-id"));
    // A local store has no replication position to hand out.
    assert!(!headers.contains_key("turserver-position"));

    let (status, headers, body) = send(&mut c, "GET", "/a.txt", &[], b"").await;
    assert_eq!((status, &body[..]), (200, &b"hello"[..]));
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(!headers.contains_key("turserver-cache"), "no cache configured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_step_answers_repeats_and_drops_changed_files() {
    let (_dir, mut c) = pipeline("cache", 1 << 20).await;
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(send(&mut c, "PUT", "/c.css", &[("authorization", &bearer)], b"a{}").await.0, 201);

    let (_, first, _) = send(&mut c, "GET", "/c.css", &[], b"").await;
    assert_eq!(first["turserver-cache"], "miss");
    let (status, second, body) = send(&mut c, "GET", "/c.css", &[], b"").await;
    assert_eq!((status, second["turserver-cache"].to_str().unwrap(), &body[..]), (200, "hit", &b"a{}"[..]));
    // A conditional request bypasses the cache and reaches the worker.
    let etag = second["etag"].to_str().unwrap().to_string();
    let (status, headers, _) = send(&mut c, "GET", "/c.css", &[("if-none-match", &etag)], b"").await;
    assert_eq!(status, 304);
    assert!(!headers.contains_key("turserver-cache"));

    // Another file's writes leave the entry fresh, hit after hit (each
    // finding it fresh at a newer generation) ...
    for n in 0..2 {
        assert_eq!(send(&mut c, "PUT", &format!("/other{n}.css"), &[("authorization", &bearer)], b"o").await.0, 201);
        let (_, headers, body) = send(&mut c, "GET", "/c.css", &[], b"").await;
        assert_eq!((headers["turserver-cache"].to_str().unwrap(), &body[..]), ("hit", &b"a{}"[..]));
    }
    // ... and its own write still makes it stale.
    assert_eq!(send(&mut c, "PUT", "/c.css", &[("authorization", &bearer)], b"b{}").await.0, 204);
    let (_, headers, body) = send(&mut c, "GET", "/c.css", &[], b"").await;
    assert_eq!((headers["turserver-cache"].to_str().unwrap(), &body[..]), ("miss", &b"b{}"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_edge_never_waits_for_a_position() {
    let (_dir, mut c) = pipeline("position", 0).await;
    // A local store has nothing to wait for: any position is already there.
    let (status, _, _) = send(&mut c, "GET", "/missing", &[("turserver-position", "99")], b"").await;
    assert_eq!(status, 404);
}
