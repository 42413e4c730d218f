//! `GET /_api/files`: a page of the listing, with a cursor for the next.

use super::{error_response, form_pairs, FileEntry, Response, Store, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use serde::Serialize;

#[derive(Serialize)]
struct ListBody<'a> {
    files: Vec<FileEntry<'a>>,
    next_cursor: Option<&'a str>,
}

pub(crate) fn list(query: Option<&str>, store: &mut impl Store) -> Response {
    let mut prefix = String::new();
    let mut cursor = None;
    let mut limit = DEFAULT_LIST_LIMIT;
    for (key, value) in form_pairs(query.unwrap_or_default()) {
        match key.as_str() {
            "prefix" => prefix = value.trim_start_matches('/').to_string(),
            "cursor" if !value.is_empty() => cursor = Some(value),
            "cursor" => {}
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => limit = n,
                _ => return Response::text(400, format!("limit must be a number from 1 to {MAX_LIST_LIMIT}")),
            },
            _ => {}
        }
    }
    match store.list(&prefix, cursor.as_deref(), limit) {
        Ok(listing) => Response::json(
            200,
            &ListBody {
                files: listing.files.iter().map(FileEntry::from).collect(),
                next_cursor: listing.next_cursor.as_deref(),
            },
        ),
        Err(e) => error_response(e),
    }
}
