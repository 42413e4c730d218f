//! Responses the host makes itself, in the body type every response here
//! carries (the worker's responses come in it from wasi-http).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;

/// The body of every response the servers send.
pub type ResponseBody = wasmtime_wasi_http::p2::body::HyperOutgoingBody;
/// A response as the servers send it.
pub type Response = hyper::Response<ResponseBody>;

/// A complete body in [`ResponseBody`].
pub fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// A complete response made by the host, with its `Content-Type` if any.
pub fn response(status: u16, content_type: Option<&'static str>, body: impl Into<Bytes>) -> Response {
    let mut resp = hyper::Response::new(full_body(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(ct) = content_type {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, http::HeaderValue::from_static(ct));
    }
    resp
}

/// A short plain-text response made by the host.
pub fn text_response(status: u16, message: &str) -> Response {
    response(status, Some("text/plain; charset=utf-8"), format!("{message}\n"))
}

pub fn json_response(status: u16, body: Vec<u8>) -> Response {
    response(status, Some("application/json"), body)
}

/// A value as JSON.
pub fn json_value(status: u16, value: &impl serde::Serialize) -> Response {
    json_response(status, serde_json::to_vec(value).unwrap_or_default())
}

/// A refusal the client should retry after a second.
pub fn retry_later(status: u16, message: &str) -> Response {
    let mut r = text_response(status, message);
    r.headers_mut().insert(hyper::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    r
}

/// 405 with the methods the resource allows (`Allow`) and what to do.
pub fn method_not_allowed(allow: &'static str, message: &str) -> Response {
    let mut r = text_response(405, message);
    r.headers_mut().insert(hyper::header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

pub fn no_content() -> Response {
    response(204, None, Bytes::new())
}
