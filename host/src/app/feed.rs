//! The change feed: what this edge's replica holds of the change log, so a
//! change is announced only once a GET here sees it.
//!
//! - `GET /_api/changes?since=SEQ&limit=N&prefix=P&wait=30s`: the changes
//!   after `since`, in order, with the cursor to ask with next; with `wait`,
//!   the request is held until there is one (or the wait ends, with none).
//! - `GET /_api/events?prefix=P&since=SEQ`: Server-Sent Events, one event
//!   per change whose `id` is its sequence, so a reconnecting `EventSource`
//!   (`Last-Event-ID`) resumes exactly; a heartbeat comment when quiet; the
//!   stream ends on shutdown. Without a cursor it starts at the latest.
//!
//! A cursor older than what the log keeps answers 410 with the oldest
//! sequence kept (an event stream sends a `pruned` event and ends): the
//! client has missed changes and must resync. A change is shown to whoever
//! may read its path: private paths (site rules) need a token allowing
//! `read` there, a key-value entry (`_api/kv/{key}`) a token allowing
//! `read` on that path, the host's own (`_turserver/…`: site rules, key
//! set, worker) the write token.

use super::App;
use crate::http::tokens::Action;
use crate::http::{json_value, method_not_allowed, text_response, Request, Response, ResponseBody, WriteAccess};
use crate::pipeline::take_access;
use crate::store::{Change, ChangePage, FeedError, Store, KV_PATH_PREFIX, MAX_CHANGES_PAGE};
use crate::wasm::SiteRulesCache;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Changes a page holds unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 100;
/// Longest `wait` a long poll may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Longest silence on an event stream before a heartbeat comment.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long an event stream waits before reading the log again after the
/// store failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What the request asked for.
struct Query {
    since: Option<u64>,
    limit: u32,
    prefix: String,
    wait: Duration,
}

impl Query {
    fn parse(req: &Request, max_wait: Duration) -> Result<Query, String> {
        let mut q = Query { since: None, limit: DEFAULT_LIMIT, prefix: String::new(), wait: Duration::ZERO };
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
            match k.as_ref() {
                "since" => q.since = Some(v.parse().map_err(|_| format!("since must be a sequence number (got {v:?})"))?),
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_CHANGES_PAGE).contains(n))
                        .ok_or_else(|| format!("limit must be between 1 and {MAX_CHANGES_PAGE} (got {v:?})"))?
                }
                "prefix" => q.prefix = v.trim_start_matches('/').to_string(),
                "wait" => {
                    let wait = match v.parse::<u64>() {
                        Ok(secs) => Duration::from_secs(secs),
                        Err(_) => humantime::parse_duration(&v)
                            .map_err(|_| format!("wait must be a duration such as 30s (got {v:?})"))?,
                    };
                    if wait > max_wait {
                        return Err(format!("wait may be at most {}s (got {v:?})", max_wait.as_secs()));
                    }
                    q.wait = wait;
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Which paths a request may see: in the feed, and in the usage document's
/// most requested paths.
pub(super) struct Visibility {
    access: WriteAccess,
    site: Arc<SiteRulesCache>,
    store: Arc<Store>,
}

impl Visibility {
    /// The changes of `page` this request may see.
    async fn filter(&self, page: ChangePage) -> Vec<Change> {
        let may_see = self.judge().await;
        page.changes.into_iter().filter(|c| may_see(&c.path)).collect()
    }

    /// Whether this request may see a store path: a private path (site
    /// rules) needs a token allowing `read` on it, a key-value entry a token
    /// allowing `read` on `_api/kv/{key}`, any other reserved path the write
    /// token.
    pub(super) async fn judge(&self) -> impl Fn(&str) -> bool + '_ {
        let admin = self.access.check_admin().is_ok();
        // Rules that cannot be read hide every private path.
        let rules = self.site.rules(&self.store).await.ok();
        move |path: &str| {
            if path.starts_with(KV_PATH_PREFIX) {
                return self.access.check(Action::Read, path).is_ok();
            }
            if turserver_protocol::is_reserved(path) {
                return admin;
            }
            match &rules {
                Some(r) if !r.is_private(path) => true,
                _ => self.access.check(Action::Read, path).is_ok(),
            }
        }
    }
}

fn change_json(c: &Change) -> serde_json::Value {
    serde_json::json!({ "seq": c.seq, "path": c.path, "kind": c.kind.as_str(), "version": c.version, "at": c.at })
}

fn pruned(oldest: u64) -> Response {
    json_value(
        410,
        &serde_json::json!({
            "error": format!("changes before {oldest} were pruned from the log: read the files again, then follow the feed from `latest`"),
            "oldest": oldest,
        }),
    )
}

fn failed(e: crate::store::StoreError) -> Response {
    tracing::warn!(cause = %format!("{:#}", anyhow::Error::new(e)), "reading the change log failed");
    crate::http::retry_later(503, "reading the change log failed; the host log has the cause")
}

fn only_get(req: &Request) -> Option<Response> {
    (req.method() != hyper::Method::GET).then(|| method_not_allowed("GET", "method not allowed"))
}

/// A long poll answers, and an event stream speaks, well within the
/// connection's idle timeout.
fn within_idle(app: &App, most: Duration) -> Duration {
    most.min(app.idle_timeout * 2 / 3).max(Duration::from_millis(500))
}

pub(super) async fn visibility(app: &App, req: &mut Request) -> Result<Visibility, Response> {
    let access = take_access(req, app.pipeline.write_token.as_ref(), &app.pipeline.keys).await?;
    Ok(Visibility { access, site: app.pipeline.site.clone(), store: app.pipeline.store.clone() })
}

/// `GET /_api/changes`.
pub(super) async fn changes(app: &App, mut req: Request) -> Response {
    if let Some(r) = only_get(&req) {
        return r;
    }
    let who = match visibility(app, &mut req).await {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let q = match Query::parse(&req, within_idle(app, MAX_WAIT)) {
        Ok(q) => q,
        Err(why) => return text_response(400, &why),
    };
    let store = &app.pipeline.store;
    let deadline = tokio::time::Instant::now() + q.wait;
    // Subscribed before the first read: a change landing meanwhile wakes it.
    let mut changed = store.subscribe();
    let mut stopping = app.stopping.clone();
    let mut since = q.since.unwrap_or(0);
    loop {
        let page = match store.changes_after(since, q.limit, &q.prefix).await {
            Ok(page) => page,
            Err(FeedError::Pruned { oldest }) => return pruned(oldest),
            Err(FeedError::Store(e)) => return failed(e),
        };
        let (full, next, latest) = (page.changes.len() == q.limit as usize, page.next, page.latest);
        let shown = who.filter(page).await;
        since = next;
        if !shown.is_empty() || full && since < latest {
            return page_response(&shown, next, latest);
        }
        let woke = tokio::select! {
            woke = tokio::time::timeout_at(deadline, changed.changed()) => matches!(woke, Ok(Ok(()))),
            _ = stopping.wait_for(|s| *s) => false,
        };
        if !woke {
            return page_response(&shown, next, latest);
        }
    }
}

fn page_response(shown: &[Change], next: u64, latest: u64) -> Response {
    let changes: Vec<_> = shown.iter().map(change_json).collect();
    let mut r = json_value(200, &serde_json::json!({ "changes": changes, "next": next, "latest": latest }));
    r.headers_mut().insert(hyper::header::CACHE_CONTROL, ::http::HeaderValue::from_static("no-store"));
    r
}

/// `GET /_api/events`.
pub(super) async fn events(app: &App, mut req: Request) -> Response {
    if let Some(r) = only_get(&req) {
        return r;
    }
    let who = match visibility(app, &mut req).await {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let q = match Query::parse(&req, MAX_WAIT) {
        Ok(q) => q,
        Err(why) => return text_response(400, &why),
    };
    let last_event_id = match req.headers().get("last-event-id").map(|v| v.to_str().ok().and_then(|s| s.trim().parse().ok())) {
        Some(None) => return text_response(400, "Last-Event-ID must be a sequence number"),
        Some(Some(id)) => Some(id),
        None => None,
    };
    let store = app.pipeline.store.clone();
    let changed = store.subscribe();
    let cursor = match last_event_id.or(q.since) {
        Some(since) => since,
        None => match store.latest_change().await {
            Ok(latest) => latest,
            Err(e) => return failed(e),
        },
    };
    // A cursor already pruned is refused before the stream starts.
    match store.check_cursor(cursor).await {
        Ok(_) => {}
        Err(FeedError::Pruned { oldest }) => return pruned(oldest),
        Err(FeedError::Store(e)) => return failed(e),
    }
    let stream = EventStream {
        who,
        prefix: q.prefix,
        cursor,
        changed,
        stopping: app.stopping.clone(),
        heartbeat: within_idle(app, HEARTBEAT),
        quiet_until: tokio::time::Instant::now(),
        first: true,
        ended: false,
    };
    let frames = futures::stream::unfold(stream, |mut s| async move {
        let bytes = s.next().await?;
        s.quiet_until = tokio::time::Instant::now() + s.heartbeat;
        Some((Ok(hyper::body::Frame::data(bytes)), s))
    });
    let body: ResponseBody = http_body_util::StreamBody::new(Box::pin(frames)).boxed_unsync();
    let mut r = hyper::Response::new(body);
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, ::http::HeaderValue::from_static("text/event-stream"));
    h.insert(hyper::header::CACHE_CONTROL, ::http::HeaderValue::from_static("no-store"));
    // Proxies in front must pass each event on at once.
    h.insert("x-accel-buffering", ::http::HeaderValue::from_static("no"));
    r
}

/// One subscriber's stream: holds a cursor and two receivers; costs nothing
/// while the store does not change.
struct EventStream {
    who: Visibility,
    prefix: String,
    cursor: u64,
    changed: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
    heartbeat: Duration,
    /// When a heartbeat is due if nothing else is sent.
    quiet_until: tokio::time::Instant,
    first: bool,
    ended: bool,
}

impl EventStream {
    /// The next piece of the stream: events, a heartbeat, or the end.
    async fn next(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        if std::mem::take(&mut self.first) {
            // Sent at once, so a client knows the stream is open.
            return Some(Bytes::from(format!(": following changes after {}\nretry: 2000\n\n", self.cursor)));
        }
        let store = self.who.store.clone();
        loop {
            match store.changes_after(self.cursor, MAX_CHANGES_PAGE, &self.prefix).await {
                Ok(page) => {
                    let full = page.changes.len() == MAX_CHANGES_PAGE as usize;
                    self.cursor = page.next;
                    let shown = self.who.filter(page).await;
                    if !shown.is_empty() {
                        return Some(Bytes::from(events_text(&shown)));
                    }
                    if full {
                        continue;
                    }
                }
                Err(FeedError::Pruned { oldest }) => {
                    self.ended = true;
                    return Some(Bytes::from(format!("event: pruned\ndata: {{\"oldest\":{oldest}}}\n\n")));
                }
                Err(FeedError::Store(e)) => {
                    tracing::warn!(cause = %format!("{:#}", anyhow::Error::new(e)), "an event stream could not read the change log");
                    tokio::time::sleep(RETRY_AFTER_FAILURE).await;
                }
            }
            tokio::select! {
                woke = self.changed.changed() => {
                    if woke.is_err() {
                        return None;
                    }
                }
                _ = tokio::time::sleep_until(self.quiet_until) => return Some(Bytes::from_static(b": heartbeat\n\n")),
                _ = self.stopping.wait_for(|s| *s) => return None,
            }
        }
    }
}

/// Changes as Server-Sent Events.
fn events_text(changes: &[Change]) -> String {
    let mut text = String::new();
    for c in changes {
        text.push_str(&format!("id: {}\nevent: change\ndata: {}\n\n", c.seq, change_json(c)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::changes::ChangeKind;

    #[test]
    fn events_carry_their_sequence_as_id() {
        let c = Change { seq: 7, path: "a b.txt".into(), kind: ChangeKind::Delete, version: Some(3), at: 10 };
        assert_eq!(
            events_text(&[c]),
            "id: 7\nevent: change\ndata: {\"at\":10,\"kind\":\"delete\",\"path\":\"a b.txt\",\"seq\":7,\"version\":3}\n\n"
        );
    }
}
