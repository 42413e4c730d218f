//! Conditional requests (RFC 9110 section 13): what `If-Match`,
//! `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since` and `If-Range`
//! ask, for reads and for writes.

use super::serve::all_tags;
use super::{error_response, Expect, Metadata, Request, Response, Store, StoreError};
use crate::http::{self, TagList};

/// RFC 9110 section 13.2.2, steps 1-4: the status a failed precondition
/// gives (304 or 412), or None to go on. `current` is the file's current
/// state (None when absent); `tag` the selected representation's tag.
pub(crate) fn status(req: &Request, current: Option<&Metadata>, tag: &str) -> Option<u16> {
    let safe = matches!(req.method.as_str(), "GET" | "HEAD");
    let tags: Vec<String> = current.map(all_tags).unwrap_or_default();
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    if let Some(v) = req.header("if-match") {
        // Strong comparison against any current representation.
        let ok = http::parse_tag_list(v).is_some_and(|l| l.matches_strong(&tag_refs));
        if !ok {
            return Some(412);
        }
    } else if let (Some(v), Some(meta)) = (req.header("if-unmodified-since"), current) {
        if let Some(date) = http::parse_date(v) {
            if meta.last_modified > date {
                return Some(412);
            }
        }
    }
    if let Some(v) = req.header("if-none-match") {
        let matched = match http::parse_tag_list(v) {
            // GET compares with the representation it would send; a write
            // with any representation of the current file.
            Some(l) if safe => l.matches_weak(&[tag]) && current.is_some(),
            Some(l) => l.matches_weak(&tag_refs),
            None => false,
        };
        if matched {
            return Some(if safe { 304 } else { 412 });
        }
    } else if let (true, Some(v), Some(meta)) = (safe, req.header("if-modified-since"), current) {
        if let Some(date) = http::parse_date(v) {
            if meta.last_modified <= date {
                return Some(304);
            }
        }
    }
    None
}

/// If-Range: the range applies only when the validator still matches.
pub(crate) fn if_range_allows(req: &Request, meta: &Metadata, tag: &str) -> bool {
    let Some(v) = req.header("if-range") else { return true };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        matches!(http::parse_tag_list(v), Some(TagList::Tags(t)) if t.len() == 1 && !t[0].weak && t[0].tag == tag)
    } else {
        http::parse_date(v) == Some(meta.last_modified)
    }
}

/// For a conditional write: checks its preconditions against the current
/// file and returns what the host must find when it commits.
pub(crate) fn write_expectation(req: &Request, path: &str, store: &mut impl Store) -> Result<Option<Expect>, Response> {
    if !(req.has("if-match") || req.has("if-none-match") || req.has("if-unmodified-since")) {
        return Ok(None);
    }
    let current = match store.stat(path) {
        Ok(m) => Some(m),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(error_response(e)),
    };
    if let Some(status) = status(req, current.as_ref(), "") {
        return Err(Response::text(status, "precondition failed: the file is not in the state the request expects"));
    }
    Ok(Some(match current {
        Some(m) => Expect::Hash(m.hash),
        None => Expect::Absent,
    }))
}
