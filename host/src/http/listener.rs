//! The accept and serve loop both ports use (the public port and the
//! sidecar): HTTP/1.1 and h2, Nagle off, the connection limits (in all
//! and, on the public port, per client address), every
//! connection's clocks (header read, idle, send, request body) and quota,
//! malformed requests refused before anything else sees them, request
//! bodies that linger, and a graceful drain on shutdown.

use super::linger::RequestBody;
use super::response::Response;
use super::timed_io::TimedIo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long shutdown waits for in-flight requests before giving up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What answers the requests of one port.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: hyper::Request<RequestBody>) -> impl Future<Output = Response> + Send;
}

/// How long a client may take, per connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// To send a request's headers; HTTP/1.1 counts the wait for the next
    /// request on a kept-alive connection too.
    pub header_read: Duration,
    /// With no byte moving either way.
    pub idle: Duration,
    /// To take response bytes once a write waits.
    pub send: Duration,
    /// Between two pieces of a request body.
    pub body: Duration,
    /// Concurrent h2 streams on one connection.
    pub h2_streams: u32,
    /// Responses from the worker one connection may have under way.
    pub instances: u32,
    /// Connections one client address may hold open (None: no limit).
    pub per_ip: Option<u32>,
}

/// What one connection's requests may hold at once of a shared resource
/// (the worker instances): h2 multiplexes up to `h2_streams` requests on
/// one connection, and one client must not take them all. Every request
/// carries its connection's quota in its extensions; past it, a request
/// waits for one of its connection's earlier ones to finish.
#[derive(Clone)]
pub struct ConnectionQuota(Arc<Semaphore>);

impl ConnectionQuota {
    fn new(n: u32) -> ConnectionQuota {
        ConnectionQuota(Arc::new(Semaphore::new(n as usize)))
    }

    /// A share of the quota, and whether the request had to wait for it.
    pub async fn take(&self) -> (tokio::sync::OwnedSemaphorePermit, bool) {
        match self.0.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => (self.0.clone().acquire_owned().await.expect("the semaphore is never closed"), true),
        }
    }
}

/// The connections both ports share: at most `max` open at once. Past it,
/// new connections wait in the kernel's backlog until one closes.
pub struct Connections {
    permits: Arc<Semaphore>,
    /// Connections past their address's limit being answered now.
    refusing: Arc<Semaphore>,
    max: usize,
    open: Gauge,
    waited: Counter,
    refused_per_ip: Counter,
    /// The limit is reached now: logged once per time it is.
    full: AtomicBool,
}

impl Connections {
    pub fn new(max: usize) -> Connections {
        Connections {
            permits: Arc::new(Semaphore::new(max)),
            refusing: Arc::new(Semaphore::new(REFUSING_AT_ONCE)),
            max,
            open: Gauge::default(),
            waited: Counter::default(),
            refused_per_ip: Counter::default(),
            full: AtomicBool::new(false),
        }
    }

    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("connections_open", "Open client connections, both ports", self.open.clone());
        registry.register(
            "connection_limit_waits",
            "Times a new connection had to wait because the connection limit was reached",
            self.waited.clone(),
        );
        registry.register(
            "connections_refused_per_ip",
            "New connections answered 503 and closed because their address held --max-connections-per-ip",
            self.refused_per_ip.clone(),
        );
    }

    /// A place for one more connection, waiting while there is none.
    async fn admit(&self) -> tokio::sync::OwnedSemaphorePermit {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            if self.full.swap(false, Ordering::Relaxed) {
                tracing::info!(max = self.max, "below the connection limit again");
            }
            return permit;
        }
        self.waited.inc();
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(max = self.max, "connection limit reached: new connections wait until one closes");
        }
        self.permits.clone().acquire_owned().await.expect("the semaphore is never closed")
    }
}

/// The connections each client address holds open on one port. An IPv6
/// address counts by its /64, the block one host is usually given.
struct PerIp {
    max: u32,
    open: Mutex<HashMap<IpAddr, Held>>,
}

#[derive(Default)]
struct Held {
    open: u32,
    /// Refusing this address now: logged once per time it is.
    refusing: bool,
}

/// One connection's place in its address's count, given back on drop.
struct IpShare {
    of: Arc<PerIp>,
    key: IpAddr,
}

impl PerIp {
    fn new(max: u32) -> Arc<PerIp> {
        Arc::new(PerIp { max, open: Mutex::new(HashMap::new()) })
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
        }
    }

    /// A place for one more connection from `ip`, or None past the limit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpShare> {
        let key = PerIp::key(ip);
        let mut open = self.open.lock().expect("poisoned");
        let held = open.entry(key).or_default();
        if held.open >= self.max {
            if !held.refusing {
                held.refusing = true;
                tracing::warn!(address = %key, max = self.max, "too many connections from one address: refusing its new ones until some close");
            }
            return None;
        }
        held.open += 1;
        held.refusing = false;
        Some(IpShare { of: self.clone(), key })
    }
}

impl Drop for IpShare {
    fn drop(&mut self) {
        let mut open = self.of.open.lock().expect("poisoned");
        if let Some(held) = open.get_mut(&self.key) {
            held.open -= 1;
            if held.open == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Refused connections answered at once, beyond `--max-connections` (the
/// default limit leaves file descriptors for them).
pub const REFUSING_AT_ONCE: usize = 64;

const REFUSED_PER_IP: &str = concat!(
    "HTTP/1.1 503 Service Unavailable\r\n",
    "content-type: text/plain; charset=utf-8\r\n",
    "retry-after: 1\r\n",
    "connection: close\r\n",
    "content-length: 72\r\n",
    "\r\n",
    "this address holds too many connections; close some of them, then retry\n",
);

/// Answers a connection past its address's limit with 503 and closes it.
/// What the client sent meanwhile is read and dropped (at most 64 KiB, for
/// at most a second), so closing does not reset the answer away.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let bounded = async {
        stream.write_all(REFUSED_PER_IP.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 64usize << 10;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), bounded).await;
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
    limits: Limits,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(limits.h2_streams);
    // An HTTP/1.0 request without Host is given this port's address.
    let own = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let own = http::HeaderValue::from_str(&own).unwrap_or(http::HeaderValue::from_static("localhost"));
    let per_ip = limits.per_ip.map(PerIp::new);
    tokio::pin!(shutdown);
    loop {
        let next = async {
            let permit = connections.admit().await;
            (permit, accept(&listener).await)
        };
        tokio::select! {
            (permit, (stream, peer)) = next => {
                let share = match &per_ip {
                    Some(per_ip) => match per_ip.admit(peer.ip()) {
                        Some(share) => Some(share),
                        None => {
                            connections.refused_per_ip.inc();
                            // Refusals take no place under --max-connections
                            // (an address flooding them would fill it), but
                            // one of a few of their own while answered (a
                            // second at most); past those, closed unanswered.
                            drop(permit);
                            if let Ok(slot) = connections.refusing.clone().try_acquire_owned() {
                                tokio::spawn(async move {
                                    refuse(stream).await;
                                    drop(slot);
                                });
                            }
                            continue;
                        }
                    },
                    None => None,
                };
                let stream = TimedIo::new(stream, limits.send, limits.idle);
                let handler = handler.clone();
                let own = own.clone();
                let quota = ConnectionQuota::new(limits.instances);
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    let mut req = req.map(|body| super::request_body(body, limits.body));
                    req.extensions_mut().insert(quota.clone());
                    let checked = super::request::check(&mut req, &own);
                    async move {
                        Ok::<_, Infallible>(match checked {
                            Ok(()) => handler.handle(req).await,
                            Err(refused) => refused,
                        })
                    }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                let open = connections.open.clone();
                open.inc();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, cause = %e, "{name} connection ended with an error");
                    }
                    open.dec();
                    drop((share, permit));
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

/// File descriptors this process may open: the soft limit, first raised to
/// the hard limit (as nginx's `worker_rlimit_nofile` would), so the default
/// connection limit can be set below it.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_whole_http_response() {
        let (head, body) = REFUSED_PER_IP.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
    }

    #[test]
    fn addresses_count_by_ipv4_address_and_ipv6_slash_64() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let held = [per_ip.admit(a).unwrap(), per_ip.admit(same_64).unwrap()];
        assert!(per_ip.admit(a).is_none());
        assert!(per_ip.admit(other_64).is_some());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v4_held = [per_ip.admit(v4).unwrap(), per_ip.admit(mapped).unwrap()];
        assert!(per_ip.admit(v4).is_none());
        drop(held);
        assert!(per_ip.admit(a).is_some(), "closing gives the places back");
        drop(v4_held);
        assert!(per_ip.open.lock().unwrap().is_empty(), "an address with nothing open is forgotten");
    }
}
