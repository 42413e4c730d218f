//! Names of the headers and cookies the host adds or reads, in one place.

/// Response header carrying the primary's replication index after a write;
/// a read may send it back (or [`POSITION_COOKIE`]) to be served only once
/// the edge has caught up with it.
pub const POSITION: &str = "turserver-position";
/// Cookie form of [`POSITION`], set by every successful write.
pub const POSITION_COOKIE: &str = "turserver_position";
/// `hit` or `miss`: whether the response cache answered.
pub const CACHE: &str = "turserver-cache";
/// The active worker's version (the first 16 hex digits of its hash).
pub const WORKER: &str = "x-turserver-worker";
/// The request's number, also in the log lines about it.
pub const REQUEST_ID: &str = "x-request-id";

/// Whether the request's `If-None-Match` is `*` or lists an entity tag for
/// which `current` holds (each tag trimmed, as sent): a GET then answers
/// 304.
pub fn none_match(headers: &http::HeaderMap, current: impl Fn(&str) -> bool) -> bool {
    headers
        .get(hyper::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').map(str::trim).any(|tag| tag == "*" || current(tag)))
}
