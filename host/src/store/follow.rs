//! Following the primary's commits: a replica syncs as soon as the primary
//! commits, instead of waiting for the next tick of its interval.
//!
//! sqld streams its replication log to replicas (`ReplicationLog/LogEntries`,
//! grpc-web on its HTTP port, the call libSQL's embedded replicas are served
//! by): the stream waits for new frames and sends each as it commits. The
//! follower opens it from the frame after the one the replica holds and
//! treats the first frame that arrives as the signal to sync; it then drops
//! the stream and opens it again from the new position. So a commit costs one
//! sync and one frame of the stream, never a second copy of the data, and an
//! idle edge holds one open request instead of polling.
//!
//! When the stream is unavailable (a primary that does not offer it, a
//! refused or broken connection) the interval loop in `upkeep` syncs as
//! before; the follower retries the stream with backoff. `/_turserver/status`
//! says which mode is active.

use super::Store;
use base64::Engine as _;
use libsql_replication::rpc::replication::{
    Frame, HelloRequest, HelloResponse, LogOffset, NEED_SNAPSHOT_ERROR_MSG, NO_HELLO_ERROR_MSG, SESSION_TOKEN_KEY,
};
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;

/// A stream silent this long is opened again: a connection that died
/// without a word (a vanished host, a NAT that forgot it) is noticed.
const SILENT_STREAM: Duration = Duration::from_secs(60);
/// Longest wait between attempts to open the stream while it keeps failing.
const MAX_RETRY: Duration = Duration::from_secs(10);
/// Longest pause after a sync that did not bring the frame the stream
/// announced, so a primary and replica that disagree never spin.
const MAX_STALL: Duration = Duration::from_secs(1);

/// Where the stream is and how to ask for it.
pub(super) struct Follower {
    store: Arc<Store>,
    client: reqwest::Client,
    /// `{primary}/wal_log.ReplicationLog/`.
    base: String,
    headers: reqwest::header::HeaderMap,
    /// The primary's session token, from its `Hello`; None until asked.
    session: Option<reqwest::header::HeaderValue>,
}

/// What one opening of the stream ended with.
enum Heard {
    /// A frame the replica does not hold yet was committed.
    Commit,
    /// The first frame was one the replica already holds, or the stream
    /// stayed silent for [`SILENT_STREAM`].
    Nothing,
}

/// Why the stream could not be opened or read.
enum Refused {
    /// The primary restarted, or this session never said hello.
    NoHello,
    /// The replica's position is older than the primary's log: a sync
    /// (which loads the snapshot) must come first.
    NeedSnapshot,
    Failed(String),
}

impl Follower {
    pub(super) fn new(store: Arc<Store>, url: &str, token: Option<&str>) -> anyhow::Result<Follower> {
        let client = reqwest::Client::builder()
            // Every stream is dropped mid-body; no connection is reusable.
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Duration::from_secs(30))
            .build()?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("content-type", "application/grpc-web+proto".parse()?);
        headers.insert("x-grpc-web", "1".parse()?);
        // The namespace: the one configured, else chosen as libSQL's own
        // client does: the host's first label when it has several, else
        // `default`.
        let host = reqwest::Url::parse(url)?.host_str().unwrap_or_default().to_string();
        let namespace = match (store.namespace.as_deref(), host.split_once('.')) {
            (Some(ns), _) => ns.to_string(),
            (None, Some((ns, _))) if !ns.is_empty() && host.parse::<std::net::IpAddr>().is_err() => ns.to_string(),
            (None, _) => "default".to_string(),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(namespace.as_bytes());
        headers.insert("x-namespace-bin", encoded.parse()?);
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let mut value: reqwest::header::HeaderValue = format!("Bearer {token}").parse()?;
            value.set_sensitive(true);
            headers.insert("x-authorization", value);
        }
        Ok(Follower {
            store,
            client,
            base: format!("{}/wal_log.ReplicationLog/", url.trim_end_matches('/')),
            headers,
            session: None,
        })
    }

    /// Follows the primary until dropped.
    pub(super) async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut stalls: u32 = 0;
        let mut hellos: u32 = 0;
        // After a broken stream or a new session, the primary may have
        // restarted with a new log (a log recovered after a crash numbers
        // its frames anew): a sync first, so the stream starts from where
        // the replica stands in that log.
        let mut resync = false;
        loop {
            if std::mem::take(&mut resync) {
                let _ = self.store.sync().await;
            }
            let signal = match self.listen().await {
                Ok(heard) => {
                    (failures, hellos) = (0, 0);
                    matches!(heard, Heard::Commit)
                }
                // A primary that restarted forgets its sessions.
                Err(Refused::NoHello) if hellos < 2 => {
                    hellos += 1;
                    if let Err(why) = self.hello().await {
                        self.failed(&mut failures, why).await;
                    }
                    resync = true;
                    continue;
                }
                Err(Refused::NoHello) => {
                    hellos = 0;
                    self.failed(&mut failures, "the primary keeps refusing this session".into()).await;
                    resync = true;
                    continue;
                }
                // The replica is older than the primary's log: a sync loads
                // the snapshot, then the log has the rest.
                Err(Refused::NeedSnapshot) => true,
                Err(Refused::Failed(why)) => {
                    self.failed(&mut failures, why).await;
                    resync = true;
                    continue;
                }
            };
            if signal {
                self.store.stats.stream_signals.inc();
                let before = self.store.replication_index().await;
                let _ = self.store.sync().await;
                if self.store.replication_index().await > before {
                    stalls = 0;
                } else {
                    // The sync failed or brought nothing: the next stream
                    // would announce the same frame at once.
                    stalls = stalls.saturating_add(1);
                    tokio::time::sleep(stall(stalls)).await;
                }
            }
        }
    }

    /// Records a failure, logs it once per change of state, and waits.
    async fn failed(&mut self, failures: &mut u32, why: String) {
        *failures = failures.saturating_add(1);
        if self.store.stats.is_streaming() || *failures == 1 {
            tracing::warn!(cause = %why, "cannot follow the primary's commits; syncing on the interval until it can");
        } else {
            tracing::debug!(cause = %why, failures = *failures, "the commit stream is still unavailable");
        }
        self.store.stats.set_streaming(false, Some(why));
        tokio::time::sleep(retry(*failures)).await;
    }

    /// Asks the primary for a session token.
    async fn hello(&mut self) -> Result<(), String> {
        let response = self.call("Hello", &HelloRequest::new().encode_to_vec()).await?;
        let body = response.bytes().await.map_err(|e| format!("reading the primary's hello: {e}"))?;
        let message = first_message(&body).ok_or("the primary's hello had no message")?;
        let hello = HelloResponse::decode(message).map_err(|e| format!("the primary's hello is not understood: {e}"))?;
        let token = std::str::from_utf8(&hello.session_token)
            .ok()
            .and_then(|t| reqwest::header::HeaderValue::from_str(t).ok())
            .ok_or("the primary's session token is not text")?;
        self.session = Some(token);
        Ok(())
    }

    /// Opens the stream after the replica's position and waits for its
    /// first frame.
    async fn listen(&mut self) -> Result<Heard, Refused> {
        let Some(session) = self.session.clone() else {
            return Err(Refused::NoHello);
        };
        let held = self.store.replication_index().await;
        let offset = LogOffset { next_offset: held.map_or(0, |i| i + 1), wal_flavor: None };
        let mut response = self
            .call_with("LogEntries", &offset.encode_to_vec(), Some(session))
            .await
            ?;
        if !self.store.stats.is_streaming() {
            tracing::info!("following the primary's commits");
            self.store.stats.set_streaming(true, None);
        }
        let mut buffer = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(SILENT_STREAM, response.chunk()).await {
                Err(_) => return Ok(Heard::Nothing),
                Ok(Err(e)) => return Err(Refused::Failed(format!("the commit stream broke: {e}"))),
                Ok(Ok(None)) => return Err(Refused::Failed("the primary closed the commit stream".into())),
                Ok(Ok(Some(chunk))) => chunk,
            };
            buffer.extend_from_slice(&chunk);
            let Some((flags, message)) = split_message(&buffer) else { continue };
            if flags & 0x80 != 0 {
                // Trailers: the stream ended, with a status.
                let text = String::from_utf8_lossy(message).to_string();
                return Err(refusal(trailer(&text, "grpc-status"), trailer(&text, "grpc-message")));
            }
            let frame = Frame::decode(message).map_err(|e| Refused::Failed(format!("a frame of the stream is not understood: {e}")))?;
            // A frame starts with its number, little-endian. One the
            // replica holds by now (a write through this edge, synced by its
            // writer) needs no sync.
            let number = frame.data.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            let held = self.store.replication_index().await;
            return Ok(match (number, held) {
                (Some(n), Some(h)) if n <= h => Heard::Nothing,
                _ => Heard::Commit,
            });
        }
    }

    async fn call(&self, method: &str, message: &[u8]) -> Result<reqwest::Response, String> {
        self.call_with(method, message, None).await.map_err(|r| match r {
            Refused::Failed(why) => why,
            Refused::NoHello => "the primary asked for a session".into(),
            Refused::NeedSnapshot => "the primary asked for a snapshot".into(),
        })
    }

    async fn call_with(
        &self,
        method: &str,
        message: &[u8],
        session: Option<reqwest::header::HeaderValue>,
    ) -> Result<reqwest::Response, Refused> {
        let mut body = Vec::with_capacity(5 + message.len());
        body.push(0);
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        let mut request = self.client.post(format!("{}{method}", self.base)).headers(self.headers.clone()).body(body);
        if let Some(session) = session {
            request = request.header(SESSION_TOKEN_KEY, session);
        }
        let response = request.send().await.map_err(|e| Refused::Failed(format!("{method}: {e}")))?;
        if !response.status().is_success() {
            return Err(Refused::Failed(format!(
                "the primary answered {} to {method}: it does not offer the replication stream here",
                response.status()
            )));
        }
        // A refusal comes at once, as headers only.
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        match header("grpc-status").as_deref() {
            None | Some("0") => Ok(response),
            status => Err(refusal(status.map(str::to_string), header("grpc-message"))),
        }
    }
}

fn refusal(status: Option<String>, message: Option<String>) -> Refused {
    let message = message.map(|m| percent_encoding::percent_decode_str(&m).decode_utf8_lossy().to_string());
    match message.as_deref() {
        Some(m) if m.contains(NO_HELLO_ERROR_MSG) => Refused::NoHello,
        Some(m) if m.contains(NEED_SNAPSHOT_ERROR_MSG) => Refused::NeedSnapshot,
        _ => Refused::Failed(format!(
            "the primary ended the commit stream (grpc-status {}: {})",
            status.unwrap_or_else(|| "none".into()),
            message.unwrap_or_default()
        )),
    }
}

/// One grpc-web message from the start of `buffer`: its flags and bytes,
/// once all of it has arrived.
fn split_message(buffer: &[u8]) -> Option<(u8, &[u8])> {
    let head = buffer.get(..5)?;
    let len = u32::from_be_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    Some((head[0], buffer.get(5..5 + len)?))
}

fn first_message(buffer: &[u8]) -> Option<&[u8]> {
    split_message(buffer).filter(|(flags, _)| flags & 0x80 == 0).map(|(_, m)| m)
}

/// A value of grpc-web trailers (`name:value` lines).
fn trailer(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn retry(failures: u32) -> Duration {
    Duration::from_millis(250).saturating_mul(1 << failures.min(16)).min(MAX_RETRY)
}

fn stall(stalls: u32) -> Duration {
    Duration::from_millis(25).saturating_mul(1 << stalls.min(16)).min(MAX_STALL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_only_once_whole() {
        let mut b = vec![0, 0, 0, 0, 3, b'a', b'b'];
        assert!(split_message(&b).is_none());
        b.push(b'c');
        assert_eq!(split_message(&b), Some((0, &b"abc"[..])));
        let t = b"\x80\x00\x00\x00\x1fgrpc-status:9\r\ngrpc-message:NO\r\n";
        let (flags, m) = split_message(t).expect("whole");
        assert_eq!(flags, 0x80);
        assert_eq!(trailer(&String::from_utf8_lossy(m), "grpc-status").as_deref(), Some("9"));
        assert_eq!(trailer(&String::from_utf8_lossy(m), "grpc-message").as_deref(), Some("NO"));
    }

    #[test]
    fn refusals_are_told_apart() {
        assert!(matches!(refusal(Some("9".into()), Some("NO_HELLO".into())), Refused::NoHello));
        assert!(matches!(refusal(Some("9".into()), Some("NEED_SNAPSHOT".into())), Refused::NeedSnapshot));
        assert!(matches!(refusal(Some("12".into()), None), Refused::Failed(_)));
    }

    #[test]
    fn waits_grow_and_cap() {
        assert_eq!(retry(1), Duration::from_millis(500));
        assert_eq!(retry(20), MAX_RETRY);
        assert_eq!(stall(1), Duration::from_millis(50));
        assert_eq!(stall(20), MAX_STALL);
    }
}
