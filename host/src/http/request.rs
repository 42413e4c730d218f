//! What every request must be before anything answers it (RFC 9112 section
//! 3.2, RFC 9110 section 5.3): one valid `Host` (HTTP/1.1 needs it; an
//! HTTP/1.0 request without one is given this server's own), and at most one
//! `Authorization`, so no two parts of the server read different ones.

use super::response::{text_response, Response};
use hyper::header::{AUTHORIZATION, HOST};

/// Checks `req`; the 400 to answer instead when it is malformed.
pub fn check<B>(req: &mut hyper::Request<B>, own_authority: &http::HeaderValue) -> Result<(), Response> {
    let headers = req.headers();
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(text_response(400, "more than one Host header")),
        (Some(host), None) => {
            if host.as_bytes().is_empty() || !host.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
                return Err(text_response(400, "the Host header is not a valid host"));
            }
        }
        (None, _) if req.uri().authority().is_some() => {}
        (None, _) if req.version() <= http::Version::HTTP_10 => {
            req.headers_mut().insert(HOST, own_authority.clone());
        }
        (None, _) => return Err(text_response(400, "a Host header is required")),
    }
    if req.headers().get_all(AUTHORIZATION).iter().nth(1).is_some() {
        return Err(text_response(400, "more than one Authorization header"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: http::Version, headers: &[(&str, &str)]) -> hyper::Request<()> {
        let mut b = hyper::Request::builder().uri("/x").version(version);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_and_authorization_are_checked() {
        let own = http::HeaderValue::from_static("127.0.0.1:8080");
        let status = |mut r: hyper::Request<()>| check(&mut r, &own).err().map(|r| r.status().as_u16());
        assert_eq!(status(request(http::Version::HTTP_11, &[("host", "a")])), None);
        assert_eq!(status(request(http::Version::HTTP_11, &[])), Some(400));
        assert_eq!(status(request(http::Version::HTTP_11, &[("host", "a"), ("host", "b")])), Some(400));
        assert_eq!(status(request(http::Version::HTTP_11, &[("host", "a b")])), Some(400));
        let two = [("host", "a"), ("authorization", "Bearer x"), ("authorization", "Bearer y")];
        assert_eq!(status(request(http::Version::HTTP_11, &two)), Some(400));
        let mut old = request(http::Version::HTTP_10, &[]);
        assert!(check(&mut old, &own).is_ok());
        assert_eq!(old.headers()[HOST], "127.0.0.1:8080", "an HTTP/1.0 request gets this server's authority");
    }
}
