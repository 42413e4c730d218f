//! Read-your-writes across edges. A successful write answers with the
//! primary's replication index after it (header and cookie); a read that
//! carries either is served only once this edge has synced that far.

use crate::http::{headers, retry_later, Request, Response};
use crate::store::Store;
use std::time::Duration;

/// The replication position a read asks for: the header, else the cookie a
/// write set.
fn requested_position(h: &http::HeaderMap) -> Option<u64> {
    if let Some(v) = h.get(headers::POSITION) {
        return v.to_str().ok()?.trim().parse().ok();
    }
    h.get_all(hyper::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|cookies| {
        cookies.split(';').find_map(|c| c.trim().strip_prefix(headers::POSITION_COOKIE)?.strip_prefix('=')?.parse().ok())
    })
}

/// Pre-process: a read that carries a position waits (syncing on demand)
/// for at most `wait`, then gets 503 rather than stale data.
pub async fn pre_process(store: &Store, wait: Duration, req: &Request) -> Option<Response> {
    let position = requested_position(req.headers())?;
    if store.wait_for(position, wait).await {
        return None;
    }
    Some(retry_later(503, "this edge has not caught up with your last write yet"))
}

/// Post-process: a successful write carries the position other edges wait for.
pub fn post_process(store: &Store, mut resp: Response) -> Response {
    if !resp.status().is_success() {
        return resp;
    }
    if let Some(position) = store.write_position() {
        let h = resp.headers_mut();
        h.insert(headers::POSITION, http::HeaderValue::from(position));
        let cookie = format!("{}={position}; Path=/; Max-Age=300; SameSite=Lax", headers::POSITION_COOKIE);
        if let Ok(v) = http::HeaderValue::from_str(&cookie) {
            h.append(hyper::header::SET_COOKIE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &'static str, value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn positions_come_from_the_header_or_the_cookie() {
        assert_eq!(requested_position(&request("turserver-position", " 42 ")), Some(42));
        assert_eq!(requested_position(&request("cookie", "a=1; turserver_position=7; b=2")), Some(7));
        assert_eq!(requested_position(&request("cookie", "turserver_positionx=7")), None);
        assert_eq!(requested_position(&request("turserver-position", "x")), None);
    }
}
