//! Serving a stored file: index pages and redirects, the SPA fallback and
//! 404 page, validators, content negotiation and ranges (RFC 9110 section 14).

use super::{error_response, preconditions, Body, FilePart, Metadata, Part, Request, Response, Store, StoreError};
use crate::http::{self, RangeRequest};
use crate::path::{self, NormalPath};
use crate::site::SiteRules;

pub(crate) fn get(req: &Request, target: &NormalPath, query: Option<&str>, rules: &SiteRules, store: &mut impl Store) -> Response {
    let file = target.file_to_serve();
    match store.stat(&file) {
        Ok(meta) => return serve(req, &meta, rules),
        Err(StoreError::NotFound) => {}
        Err(e) => return error_response(e),
    }
    // `/docs` names a directory when `/docs/index.html` exists.
    if !target.dir {
        match store.stat(&format!("{}/index.html", target.path)) {
            Ok(_) => {
                let mut location = format!("/{}/", path::encode(&target.path));
                if let Some(q) = query {
                    location.push('?');
                    location.push_str(q);
                }
                return Response::text(301, format!("moved to {location}")).header("location", location);
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return error_response(e),
        }
    }
    if let Some(fallback) = rules.fallback_page() {
        if accepts_html(req) {
            match store.stat(&fallback) {
                Ok(meta) => return serve(req, &meta, rules),
                Err(StoreError::NotFound) => {}
                Err(e) => return error_response(e),
            }
        }
    }
    if let Some(page) = rules.not_found() {
        if let Ok(meta) = store.stat(&page) {
            return Response::new(404)
                .header("content-type", meta.content_type.clone())
                .header("content-length", meta.size.to_string())
                .header("cache-control", "no-cache")
                .with_body(Body::File(FilePart { version: meta.version, encoding: "identity".into(), offset: 0, len: meta.size }));
        }
    }
    not_found()
}

fn accepts_html(req: &Request) -> bool {
    req.header("accept").is_some_and(|a| a.contains("text/html"))
}

pub(crate) fn not_found() -> Response {
    Response::text(404, "not found")
}

/// The entity tag of one representation of a file.
pub fn etag_for(meta: &Metadata, encoding: &str) -> String {
    if encoding == "identity" {
        meta.hash.clone()
    } else {
        format!("{}-{encoding}", meta.hash)
    }
}

/// Every entity tag the file currently has (one per stored coding).
pub(crate) fn all_tags(meta: &Metadata) -> Vec<String> {
    std::iter::once(meta.hash.clone()).chain(meta.encodings.iter().map(|(e, _)| etag_for(meta, e))).collect()
}

/// A stored file, with conditional requests, content negotiation and ranges.
fn serve(req: &Request, meta: &Metadata, rules: &SiteRules) -> Response {
    let Some(encoding) = http::negotiate_encoding(req.header("accept-encoding"), &meta.encodings, meta.size) else {
        return Response::text(406, "no acceptable content coding (identity was refused)");
    };
    let size = meta.encodings.iter().find(|(e, _)| *e == encoding).map(|(_, s)| *s).unwrap_or(meta.size);
    let tag = etag_for(meta, &encoding);
    let mut validators = vec![
        ("etag".to_string(), format!("\"{tag}\"")),
        ("last-modified".to_string(), http::fmt_date(meta.last_modified)),
        ("cache-control".to_string(), rules.cache_control(&meta.path, &meta.content_type)),
    ];
    if !meta.encodings.is_empty() {
        validators.push(("vary".into(), "Accept-Encoding".into()));
    }

    if let Some(status) = preconditions::status(req, Some(meta), &tag) {
        let mut resp = if status == 304 { Response::new(304) } else { Response::text(412, "precondition failed") };
        if status == 304 {
            resp.headers.extend(validators);
        }
        return resp;
    }

    let mut resp = Response::new(200);
    resp.headers.extend(validators);
    resp.headers.push(("accept-ranges".into(), "bytes".into()));
    if encoding != "identity" {
        resp.headers.push(("content-encoding".into(), encoding.clone()));
    }
    let whole = FilePart { version: meta.version, encoding: encoding.clone(), offset: 0, len: size };

    let range = match req.header("range") {
        Some(r) if req.method == "GET" && preconditions::if_range_allows(req, meta, &tag) => http::parse_range(r, size),
        _ => RangeRequest::Ignore,
    };
    match range {
        RangeRequest::Ignore => resp
            .header("content-type", meta.content_type.clone())
            .header("content-length", size.to_string())
            .with_body(Body::File(whole)),
        RangeRequest::Unsatisfiable => {
            let mut r = Response::text(416, format!("range not satisfiable: the representation is {size} bytes"));
            r.headers.push(("content-range".into(), format!("bytes */{size}")));
            r.headers.extend(resp.headers);
            r
        }
        RangeRequest::Ranges(ranges) if ranges.len() == 1 => {
            let r = ranges[0];
            resp.status = 206;
            resp.header("content-type", meta.content_type.clone())
                .header("content-range", format!("bytes {}-{}/{size}", r.start, r.end))
                .header("content-length", r.len().to_string())
                .with_body(Body::File(FilePart { offset: r.start, len: r.len(), ..whole }))
        }
        RangeRequest::Ranges(ranges) => {
            let boundary = format!("turserver-{}", &meta.hash[..meta.hash.len().min(24)]);
            let mut parts = Vec::new();
            let mut total = 0u64;
            for r in &ranges {
                let head = format!(
                    "\r\n--{boundary}\r\ncontent-type: {}\r\ncontent-range: bytes {}-{}/{size}\r\n\r\n",
                    meta.content_type, r.start, r.end
                );
                total += head.len() as u64 + r.len();
                parts.push(Part::Bytes(head.into_bytes()));
                parts.push(Part::File(FilePart { offset: r.start, len: r.len(), ..whole.clone() }));
            }
            let tail = format!("\r\n--{boundary}--\r\n");
            total += tail.len() as u64;
            parts.push(Part::Bytes(tail.into_bytes()));
            resp.status = 206;
            resp.header("content-type", format!("multipart/byteranges; boundary={boundary}"))
                .header("content-length", total.to_string())
                .with_body(Body::Parts(parts))
        }
    }
}
