//! The access step: what the request's `Authorization` header proves. The
//! header is removed here, before the worker runs, so a token never enters
//! guest memory.

use crate::http::{Request, TokenDigest, WriteAccess};

/// Reads and removes the `Authorization` header.
pub fn take(req: &mut Request, write_token: Option<&TokenDigest>) -> WriteAccess {
    let value = req.headers_mut().remove(hyper::header::AUTHORIZATION);
    WriteAccess::judge(value.as_ref().map(|v| v.as_bytes()), write_token)
}
