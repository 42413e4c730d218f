//! The dashboard: a few static files embedded in the binary, served at
//! `/_turserver/ui/` with a strict Content-Security-Policy (no inline
//! script or style, nothing from another origin), and the usage document
//! its charts read (`/_turserver/usage`).
//!
//! The page calls the same endpoints as any client (`/_api/files`,
//! `/_api/batch`, `/_api/site`, `/_turserver/status`, `/_turserver/worker`)
//! with the token the person signs in with; of its own it has only the
//! usage document and `/_turserver/token`, which says what a token is.

use super::App;
use crate::http::{self, method_not_allowed, text_response, Request, Response, WriteAccess};
use crate::pipeline::take_access;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// Where the dashboard is served.
pub(super) const PREFIX: &str = "/_turserver/ui/";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The embedded files: name under [`PREFIX`], media type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("", "text/html; charset=utf-8", include_bytes!("../../ui/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../ui/app.js")),
    ("charts.js", "text/javascript; charset=utf-8", include_bytes!("../../ui/charts.js")),
    ("tar.js", "text/javascript; charset=utf-8", include_bytes!("../../ui/tar.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../../ui/style.css")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../../ui/favicon.svg")),
];

/// Each asset's ETag, made once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| ASSETS.iter().map(|(_, _, bytes)| format!("\"{}\"", hex::encode(&Sha256::digest(bytes)[..12]))).collect())
}

/// `GET /_turserver/ui` and everything under it.
pub(super) fn asset(req: &Request) -> Response {
    let path = req.uri().path();
    let Some(name) = path.strip_prefix(PREFIX) else {
        // `/_turserver/ui` without its slash: the page's relative URLs need it.
        let mut resp = http::response(301, None, "");
        resp.headers_mut().insert(hyper::header::LOCATION, ::http::HeaderValue::from_static(PREFIX));
        return resp;
    };
    if !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) {
        return method_not_allowed("GET, HEAD", "method not allowed");
    }
    let Some(i) = ASSETS.iter().position(|(n, _, _)| *n == name) else {
        return text_response(404, "no such dashboard file");
    };
    let (_, media_type, bytes) = ASSETS[i];
    let etag = &etags()[i];
    let fresh = http::headers::none_match(req.headers(), |tag| tag == etag);
    let mut resp = match (fresh, req.method() == hyper::Method::HEAD) {
        (true, _) => http::response(304, None, ""),
        (false, true) => http::response(200, None, ""),
        (false, false) => http::response(200, None, bytes),
    };
    let h = resp.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, ::http::HeaderValue::from_static(media_type));
    if req.method() == hyper::Method::HEAD && !fresh {
        h.insert(hyper::header::CONTENT_LENGTH, ::http::HeaderValue::from(bytes.len()));
    }
    if let Ok(v) = ::http::HeaderValue::from_str(etag) {
        h.insert(hyper::header::ETAG, v);
    }
    h.insert(hyper::header::CACHE_CONTROL, ::http::HeaderValue::from_static("no-cache"));
    h.insert(hyper::header::CONTENT_SECURITY_POLICY, ::http::HeaderValue::from_static(CSP));
    h.insert(hyper::header::X_CONTENT_TYPE_OPTIONS, ::http::HeaderValue::from_static("nosniff"));
    h.insert(hyper::header::REFERRER_POLICY, ::http::HeaderValue::from_static("no-referrer"));
    h.insert(hyper::header::X_FRAME_OPTIONS, ::http::HeaderValue::from_static("DENY"));
    resp
}

/// `GET /_turserver/usage`: the last hour, one point per interval, and the
/// most requested paths this request may see.
pub(super) async fn usage(app: &App, mut req: Request) -> Response {
    if req.method() != hyper::Method::GET {
        return method_not_allowed("GET", "method not allowed");
    }
    let visibility = match super::feed::visibility(app, &mut req).await {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let may_see = visibility.judge().await;
    let doc = app.usage.render(app.usage_interval, |url_path| {
        // Ranked by request path: judged as the store path it names.
        let path = percent_encoding::percent_decode_str(url_path.trim_start_matches('/')).decode_utf8_lossy();
        may_see(&path)
    });
    http::json_value(200, &doc)
}

/// `GET /_turserver/token`: what the request's token is, so a sign-in can
/// tell a wrong token at once (reads work without one, so they cannot).
/// 401 for no token or one that is neither the write token nor a valid
/// signed token.
pub(super) async fn token(app: &App, mut req: Request) -> Response {
    if req.method() != hyper::Method::GET {
        return method_not_allowed("GET", "method not allowed");
    }
    let access = match take_access(&mut req, app.pipeline.write_token.as_ref(), &app.pipeline.keys).await {
        Ok(access) => access,
        Err(refused) => return refused,
    };
    match access {
        WriteAccess::Granted => http::json_value(200, &serde_json::json!({ "kind": "write" })),
        WriteAccess::Scoped(grant) => http::json_value(200, &serde_json::json!({ "kind": "scoped", "subject": grant.subject })),
        WriteAccess::Missing => text_response(401, "no token: send Authorization: Bearer <token>"),
        WriteAccess::Denied => text_response(401, "this token is neither the write token nor a token signed by a current key"),
    }
}
