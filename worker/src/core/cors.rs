//! CORS: preflights answered, and the headers an allowed origin gets, as
//! the site rules configure them.

use super::{Request, Response};
use crate::site::SiteRules;

/// Answers a CORS preflight (OPTIONS with Origin and
/// Access-Control-Request-Method) when CORS is configured.
pub(crate) fn preflight(req: &Request, rules: &SiteRules) -> Option<Response> {
    let cors = rules.cors.as_ref()?;
    if req.method != "OPTIONS" {
        return None;
    }
    let origin = req.header("origin")?;
    let method = req.header("access-control-request-method")?;
    let Some(allow_origin) = cors.allow_origin(origin) else {
        return Some(Response::text(403, "CORS preflight refused: origin not allowed"));
    };
    if !cors.allows_method(method.trim()) {
        return Some(Response::text(403, "CORS preflight refused: method not allowed"));
    }
    let mut resp = Response::new(204)
        .header("access-control-allow-origin", allow_origin.clone())
        .header("access-control-allow-methods", cors.allow_methods.join(", "));
    let allow_headers = if cors.allow_headers.iter().any(|h| h == "*") {
        req.header("access-control-request-headers").map(str::to_string)
    } else if cors.allow_headers.is_empty() {
        None
    } else {
        Some(cors.allow_headers.join(", "))
    };
    if let Some(h) = allow_headers {
        resp.headers.push(("access-control-allow-headers".into(), h));
    }
    if let Some(age) = cors.max_age {
        resp.headers.push(("access-control-max-age".into(), age.to_string()));
    }
    if cors.allow_credentials {
        resp.headers.push(("access-control-allow-credentials".into(), "true".into()));
    }
    if allow_origin != "*" {
        resp.headers.push(("vary".into(), "Origin".into()));
    }
    Some(resp)
}

/// Adds CORS headers to an actual response for an allowed origin.
pub(crate) fn with_cors(req: &Request, rules: &SiteRules, mut resp: Response) -> Response {
    let (Some(cors), Some(origin)) = (&rules.cors, req.header("origin")) else { return resp };
    let Some(allow) = cors.allow_origin(origin) else { return resp };
    if allow != "*" {
        match resp.headers.iter_mut().find(|(n, _)| n == "vary") {
            Some((_, v)) => v.push_str(", Origin"),
            None => resp.headers.push(("vary".into(), "Origin".into())),
        }
    }
    resp.headers.push(("access-control-allow-origin".into(), allow));
    if !cors.expose_headers.is_empty() {
        resp.headers.push(("access-control-expose-headers".into(), cors.expose_headers.join(", ")));
    }
    if cors.allow_credentials {
        resp.headers.push(("access-control-allow-credentials".into(), "true".into()));
    }
    resp
}
