//! Writes: where a file may be written, uploads and their answers, deletes,
//! batch entries, and the site rules document.

use super::{error_response, preconditions, FileEntry, Metadata, Outcome, Request, Response, Store, StoreError};
use crate::http;
use crate::path::{self, NormalPath};
use crate::site::SiteRules;
use serde::Serialize;

pub(crate) fn writable(target: &NormalPath) -> Result<(), Response> {
    if target.dir {
        return Err(Response::text(400, "bad path: a file path cannot end with '/'"));
    }
    if turserver_protocol::is_reserved(&target.path) {
        let first = target.path.split('/').next().unwrap_or_default();
        return Err(Response::text(400, format!("bad path: '/{first}/' is reserved")));
    }
    Ok(())
}

pub(crate) fn put(req: &Request, target: &NormalPath, store: &mut impl Store) -> Outcome {
    if let Err(resp) = writable(target) {
        return Outcome::Respond(resp);
    }
    let content_type = match req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type")) {
        Some((_, v)) => match std::str::from_utf8(v) {
            Ok(s) if is_client_default_type(s) => guess_content_type(&target.path),
            Ok(s) if turserver_protocol::valid_media_type(s) => s.trim().to_string(),
            _ => return Outcome::Respond(Response::text(400, "bad content-type header")),
        },
        None => guess_content_type(&target.path),
    };
    let size_hint = match req.header("content-length").map(|v| v.trim().parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Outcome::Respond(Response::text(400, "bad content-length header")),
    };
    match preconditions::write_expectation(req, &target.path, store) {
        Ok(expect) => Outcome::Upload { path: target.path.clone(), content_type, size_hint, expect },
        Err(resp) => Outcome::Respond(resp),
    }
}

/// Types that HTTP clients send on their own rather than because the body is
/// of that type: curl's `--data-binary` says `application/x-www-form-urlencoded`
/// and many tools say `application/octet-stream` for any file. An upload
/// with one of them (or none) is typed by its path's extension instead; any
/// other type is stored as given.
pub fn is_client_default_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    ["application/x-www-form-urlencoded", "application/octet-stream", "multipart/form-data"]
        .iter()
        .any(|t| essence.eq_ignore_ascii_case(t))
}

/// The media type for a path's extension, `application/octet-stream` when
/// unknown. Text types are served as UTF-8.
pub fn guess_content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    let is_text = mime.type_() == mime_guess::mime::TEXT
        || matches!(essence, "application/javascript" | "application/json" | "image/svg+xml");
    if is_text && mime.get_param("charset").is_none() {
        format!("{essence}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// The answer to a finished (or failed) upload.
pub fn upload_response(result: Result<(Metadata, bool), StoreError>) -> Response {
    match result {
        Ok((meta, created)) => {
            let mut resp = if created {
                let location = format!("/{}", path::encode(&meta.path));
                Response::json(201, &FileEntry::from(&meta)).header("location", location)
            } else {
                Response::new(204)
            };
            resp.headers.push(("etag".into(), format!("\"{}\"", meta.hash)));
            resp.headers.push(("last-modified".into(), http::fmt_date(meta.last_modified)));
            resp
        }
        Err(e) => error_response(e),
    }
}

pub(crate) fn delete(req: &Request, target: &NormalPath, store: &mut impl Store) -> Response {
    if let Err(resp) = writable(target) {
        return resp;
    }
    let expect = match preconditions::write_expectation(req, &target.path, store) {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    match store.delete(&target.path, expect) {
        Ok(()) => Response::new(204),
        Err(e) => error_response(e),
    }
}

/// The store path and media type for a file named `name` in a batch
/// archive; the error says why the entry (and so the batch) is refused.
pub fn batch_entry(name: &str) -> Result<(String, String), String> {
    let target = path::normalise(&format!("/{}", name.trim_start_matches("./").trim_start_matches('/')))
        .map_err(|e| format!("entry {name:?}: {e}"))?;
    if let Err(resp) = writable(&target) {
        return Err(format!("entry {name:?}: {}", resp.message()));
    }
    let content_type = guess_content_type(&target.path);
    Ok((target.path, content_type))
}

/// The answer to a committed (or failed) batch.
pub fn batch_response(result: Result<Vec<(Metadata, bool)>, StoreError>) -> Response {
    #[derive(Serialize)]
    struct BatchBody<'a> {
        count: usize,
        files: Vec<FileEntry<'a>>,
    }
    match result {
        Ok(files) => Response::json(
            200,
            &BatchBody { count: files.len(), files: files.iter().map(|(m, _)| FileEntry::from(m)).collect() },
        ),
        Err(e) => error_response(e),
    }
}

/// Validates and stores a new site rules document.
pub fn put_site_config(body: &[u8], store: &mut impl Store) -> Response {
    let Ok(text) = std::str::from_utf8(body) else {
        return Response::text(400, "site rules must be UTF-8 JSON");
    };
    let rules = match SiteRules::parse(text) {
        Ok(r) => r,
        Err(why) => return Response::text(400, why),
    };
    let canonical = match serde_json::to_string(&rules) {
        Ok(s) => s,
        Err(e) => return Response::text(500, format!("cannot encode site rules: {e}")),
    };
    match store.set_site_config(&canonical) {
        Ok(()) => Response::json(200, &rules),
        Err(e) => error_response(e),
    }
}
