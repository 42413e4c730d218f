//! The key-value API: entries in the replicated store, read locally on
//! every edge (Workers KV's shape, over REST).
//!
//! - `PUT /_api/kv/{key}` with `{"value": <any JSON>, "ttl"?: seconds}`
//!   (`Content-Type: application/json`, none, or curl's default form
//!   type), or raw bytes with any other `Content-Type` (`?ttl=` then): 201
//!   created, 204 replaced.
//!   `If-Match: "<version>"` (or `*`) and `If-None-Match: *` make it a
//!   compare-and-set, checked in the writing transaction: 412 otherwise.
//! - `GET /_api/kv/{key}`: `{"key", "value", "found": true}` (a raw value
//!   comes back as it was sent), with the version as `ETag`; 404 with
//!   `"found": false`.
//! - `DELETE /_api/kv/{key}`: 204, or 404.
//! - `GET /_api/kv?prefix=&cursor=&limit=`: keys in order, with a cursor.
//!
//! Every call needs a token: the write token, or a signed token whose rules
//! allow the action on `_api/kv/{key}`. Writes answer with the replication
//! position, and reads carrying one wait for it, as files do.

use super::App;
use crate::http::tokens::Action;
use crate::http::{
    headers, json_value, method_not_allowed, response, retry_later, text_response, Refusal, Request, Response, WriteAccess,
};
use crate::pipeline::{carry_position, take_access, wait_for_position};
use crate::store::{validate_key, KvExpect, StoreError, KV_PATH_PREFIX, MAX_KEYS_PAGE, MAX_VALUE};
use http_body_util::BodyExt;

/// Longest `ttl`: ten years.
const MAX_TTL: u64 = 10 * 365 * 24 * 3600;
/// Keys a listing page holds unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 100;

pub(super) async fn route(app: &App, mut req: Request) -> Response {
    let access = match take_access(&mut req, app.pipeline.write_token.as_ref(), &app.pipeline.keys).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let method = req.method().clone();
    if !matches!(method, hyper::Method::PUT | hyper::Method::DELETE) {
        let store = &app.pipeline.store;
        if let Some(refused) = wait_for_position(store, app.pipeline.consistency_wait, &req).await {
            return refused;
        }
    }
    let rest = req.uri().path().strip_prefix("/_api/kv").unwrap_or_default();
    if rest.is_empty() || rest == "/" {
        return match method {
            hyper::Method::GET | hyper::Method::HEAD => list(app, &access, &req).await,
            _ => method_not_allowed("GET, HEAD", "list keys with GET /_api/kv?prefix=; an entry is /_api/kv/{key}"),
        };
    }
    let key = match percent_encoding::percent_decode_str(&rest[1..]).decode_utf8() {
        Ok(k) => k.to_string(),
        Err(_) => return text_response(400, "a key must be UTF-8 (percent-encoded in the URL)"),
    };
    if let Err(why) = validate_key(&key) {
        return text_response(400, &why);
    }
    let path = format!("{KV_PATH_PREFIX}{key}");
    let action = match method {
        hyper::Method::GET | hyper::Method::HEAD => Action::Read,
        hyper::Method::PUT => Action::Write,
        hyper::Method::DELETE => Action::Delete,
        _ => return method_not_allowed("GET, HEAD, PUT, DELETE", "method not allowed"),
    };
    if let Err(r) = access.check(action, &path) {
        return refused(r, action);
    }
    let resp = match action {
        Action::Read => get(app, &key, &req).await,
        Action::Write => put(app, &key, req).await,
        _ => delete(app, &key, &req).await,
    };
    if action == Action::Read {
        resp
    } else {
        carry_position(&app.pipeline.store, resp)
    }
}

fn refused(r: Refusal, action: Action) -> Response {
    let what = match action {
        Action::Read => "read",
        Action::Write => "write",
        Action::Delete => "delete",
        Action::List => "list",
    };
    match r {
        Refusal::Unauthorized => text_response(401, &format!("a token is required to {what} keys (Authorization: Bearer <token>)")),
        Refusal::Forbidden => text_response(403, &format!("this token may not {what} that key")),
    }
}

fn failed(e: StoreError, key: &str) -> Response {
    match e {
        StoreError::TooLarge(n) => text_response(413, &format!("a value is at most {n} bytes")),
        StoreError::PreconditionFailed => json_value(
            412,
            &serde_json::json!({ "key": key, "error": "the key's current version is not the one If-Match or If-None-Match asked for" }),
        ),
        StoreError::Invalid(why) => text_response(400, &why),
        e @ StoreError::Unavailable { .. } => {
            tracing::warn!(cause = %format!("{:#}", anyhow::Error::new(e)), "key-value");
            retry_later(503, "the primary database is unreachable; retry")
        }
        e => {
            tracing::warn!(cause = %format!("{:#}", anyhow::Error::new(e)), "key-value");
            text_response(500, "the key could not be read or written; the host log has the cause")
        }
    }
}

fn etag(version: u64) -> ::http::HeaderValue {
    ::http::HeaderValue::from_str(&format!("\"{version}\"")).expect("digits")
}

/// `"3"` -> 3.
fn parse_etag(value: &str) -> Option<u64> {
    value.trim().trim_start_matches("W/").strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// The compare-and-set a write asks for.
fn expectation(req: &Request) -> Result<Option<KvExpect>, String> {
    let text = |name| req.headers().get(name).map(|v: &::http::HeaderValue| v.to_str().unwrap_or_default().trim().to_string());
    match (text(hyper::header::IF_MATCH), text(hyper::header::IF_NONE_MATCH)) {
        (Some(_), Some(_)) => Err("send If-Match or If-None-Match, not both".into()),
        (Some(m), None) if m == "*" => Ok(Some(KvExpect::Present)),
        (Some(m), None) => parse_etag(&m)
            .map(|v| Some(KvExpect::Version(v)))
            .ok_or_else(|| format!("If-Match must be a version as the ETag gave it (\"3\"), got {m:?}")),
        (None, Some(n)) if n == "*" => Ok(Some(KvExpect::Absent)),
        (None, Some(n)) => Err(format!("on a write, If-None-Match must be * (got {n:?})")),
        (None, None) => Ok(None),
    }
}

async fn get(app: &App, key: &str, req: &Request) -> Response {
    let entry = match app.pipeline.store.kv_get(key).await {
        Ok(Some(e)) => e,
        Ok(None) => return json_value(404, &serde_json::json!({ "key": key, "found": false })),
        Err(e) => return failed(e, key),
    };
    let tag = etag(entry.version);
    let matches = headers::none_match(req.headers(), |tag| parse_etag(tag) == Some(entry.version));
    let mut resp = if matches {
        response(304, None, bytes::Bytes::new())
    } else {
        match &entry.content_type {
            Some(ct) => {
                let mut r = response(200, None, entry.value);
                if let Ok(v) = ::http::HeaderValue::from_str(ct) {
                    r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                }
                r
            }
            None => {
                let value: serde_json::Value = serde_json::from_slice(&entry.value).unwrap_or(serde_json::Value::Null);
                let mut doc = serde_json::json!({ "key": key, "value": value, "found": true, "version": entry.version });
                if let Some(at) = entry.expires_at {
                    doc["expires"] = at.into();
                }
                json_value(200, &doc)
            }
        }
    };
    let h = resp.headers_mut();
    h.insert(hyper::header::ETAG, tag);
    h.insert(hyper::header::CACHE_CONTROL, ::http::HeaderValue::from_static("no-store"));
    resp
}

async fn put(app: &App, key: &str, req: Request) -> Response {
    let expect = match expectation(&req) {
        Ok(e) => e,
        Err(why) => return text_response(400, &why),
    };
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .map(|v| v.to_str().map(str::to_string).unwrap_or_default());
    // curl's `--data` sends the form type on its own: taken as JSON too.
    let json = content_type.as_deref().is_none_or(|ct| {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        ct.eq_ignore_ascii_case("application/json") || ct.eq_ignore_ascii_case("application/x-www-form-urlencoded")
    });
    let query_ttl = match ttl_param(&req) {
        Ok(t) => t,
        Err(why) => return text_response(400, &why),
    };
    // The JSON envelope may add a little around a value of the largest size.
    let limit = MAX_VALUE + if json { 64 << 10 } else { 0 };
    let body = match http_body_util::Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return text_response(413, &format!("a value is at most {MAX_VALUE} bytes"))
        }
        Err(e) => return text_response(400, &format!("the body could not be read: {e}")),
    };
    let (value, stored_type, ttl) = if json {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Envelope {
            value: serde_json::Value,
            ttl: Option<u64>,
        }
        let envelope: Envelope = match serde_json::from_slice(&body) {
            Ok(e) => e,
            Err(e) => {
                return text_response(
                    400,
                    &format!("a JSON write is {{\"value\": <any JSON>, \"ttl\"?: seconds}} ({e}); send other bytes with their own Content-Type"),
                )
            }
        };
        (serde_json::to_vec(&envelope.value).unwrap_or_default(), None, envelope.ttl.or(query_ttl))
    } else {
        (body.to_vec(), content_type, query_ttl)
    };
    if let Some(t) = ttl {
        if t == 0 || t > MAX_TTL {
            return text_response(400, &format!("ttl is 1 to {MAX_TTL} seconds"));
        }
    }
    if stored_type.as_deref().is_some_and(|ct| !turserver_protocol::valid_media_type(ct)) {
        return text_response(400, "the Content-Type cannot be stored (1 to 256 visible characters)");
    }
    match app.pipeline.store.kv_put(key, value, stored_type.as_deref(), ttl, expect.as_ref()).await {
        Ok((version, created)) => {
            let mut r = if created {
                json_value(201, &serde_json::json!({ "key": key, "version": version }))
            } else {
                crate::http::no_content()
            };
            r.headers_mut().insert(hyper::header::ETAG, etag(version));
            r
        }
        Err(e) => failed(e, key),
    }
}

fn ttl_param(req: &Request) -> Result<Option<u64>, String> {
    let query = req.uri().query().unwrap_or_default();
    match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "ttl") {
        None => Ok(None),
        Some((_, v)) => v.parse().map(Some).map_err(|_| format!("ttl must be a number of seconds (got {v:?})")),
    }
}

async fn delete(app: &App, key: &str, req: &Request) -> Response {
    let expect = match expectation(req) {
        Ok(e) => e,
        Err(why) => return text_response(400, &why),
    };
    match app.pipeline.store.kv_delete(key, expect.as_ref()).await {
        Ok(true) => crate::http::no_content(),
        Ok(false) => json_value(404, &serde_json::json!({ "key": key, "found": false })),
        Err(e) => failed(e, key),
    }
}

async fn list(app: &App, access: &WriteAccess, req: &Request) -> Response {
    if let Err(r) = access.check_any(Action::List) {
        return refused(r, Action::List);
    }
    let (mut prefix, mut cursor, mut limit) = (String::new(), None, DEFAULT_LIMIT);
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "prefix" => prefix = v.to_string(),
            "cursor" => cursor = Some(v.to_string()),
            "limit" => match v.parse() {
                Ok(n) if (1..=MAX_KEYS_PAGE).contains(&n) => limit = n,
                _ => return text_response(400, &format!("limit must be between 1 and {MAX_KEYS_PAGE} (got {v:?})")),
            },
            _ => {}
        }
    }
    match app.pipeline.store.kv_list(&prefix, cursor.as_deref(), limit).await {
        Ok((entries, next)) => {
            let keys: Vec<_> = entries
                .iter()
                .filter(|e| access.check(Action::List, &format!("{KV_PATH_PREFIX}{}", e.key)).is_ok())
                .map(|e| {
                    let mut k = serde_json::json!({ "key": e.key, "version": e.version });
                    if let Some(at) = e.expires_at {
                        k["expires"] = at.into();
                    }
                    k
                })
                .collect();
            json_value(200, &serde_json::json!({ "keys": keys, "cursor": next }))
        }
        Err(e) => failed(e, &prefix),
    }
}
