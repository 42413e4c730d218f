//! The accept and serve loop both ports use (the public port and the
//! sidecar): HTTP/1.1 and h2, Nagle off, a send timeout on every
//! connection, request bodies that linger, and a graceful drain on shutdown.

use super::linger::{Linger, RequestBody};
use super::response::Response;
use super::send_timeout::SendTimeout;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long shutdown waits for in-flight requests before giving up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What answers the requests of one port.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: hyper::Request<RequestBody>) -> impl Future<Output = Response> + Send;
}

/// The next connection, with Nagle's algorithm off. Accept errors (typically
/// EMFILE) are logged and retried after a pause instead of spinning.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(cause = %e, addr = ?listener.local_addr().ok(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves connections on `listener` with `handler` until `shutdown`
/// resolves, then stops accepting and drains in-flight requests for at most
/// [`DRAIN_TIMEOUT`]. `name` labels the log lines.
pub async fn serve<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    send_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, peer) = accept(&listener) => {
                let stream = SendTimeout::new(stream, send_timeout);
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.handle(req.map(Linger::new)).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, cause = %e, "{name} connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("{name}: shutting down, draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("{name}: drained"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("{name}: gave up draining after {DRAIN_TIMEOUT:?}"),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
