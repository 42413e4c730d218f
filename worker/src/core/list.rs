//! `GET /_api/files`: a page of the listing, with a cursor for the next.
//! With `delimiter=/` the page is one folder's: its files, and its
//! subfolders once each (as S3's `CommonPrefixes`), skipping over their
//! contents rather than reading them.

use super::{error_response, form_pairs, FileEntry, Response, Store, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use serde::Serialize;

#[derive(Serialize)]
struct ListBody<'a> {
    files: Vec<FileEntry<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    folders: Option<Vec<String>>,
    next_cursor: Option<&'a str>,
}

/// Sorts after every path under a folder: the highest character there is.
const PAST_FOLDER: char = '\u{10FFFF}';

pub(crate) fn list(query: Option<&str>, store: &mut impl Store) -> Response {
    let mut prefix = String::new();
    let mut cursor = None;
    let mut limit = DEFAULT_LIST_LIMIT;
    let mut by_folder = false;
    for (key, value) in form_pairs(query.unwrap_or_default()) {
        match key.as_str() {
            "prefix" => prefix = value.trim_start_matches('/').to_string(),
            "cursor" if !value.is_empty() => cursor = Some(value),
            "cursor" => {}
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => limit = n,
                _ => return Response::text(400, format!("limit must be a number from 1 to {MAX_LIST_LIMIT}")),
            },
            "delimiter" if value == "/" => by_folder = true,
            "delimiter" if value.is_empty() => {}
            "delimiter" => return Response::text(400, "delimiter must be / (or absent)"),
            _ => {}
        }
    }
    if by_folder {
        return list_folder(&prefix, cursor, limit, store);
    }
    match store.list(&prefix, cursor.as_deref(), limit) {
        Ok(listing) => Response::json(
            200,
            &ListBody {
                files: listing.files.iter().map(FileEntry::from).collect(),
                folders: None,
                next_cursor: listing.next_cursor.as_deref(),
            },
        ),
        Err(e) => error_response(e),
    }
}

/// One page of the folder `prefix`: at most `limit` files and subfolders
/// together, in path order. A subfolder costs one store call however many
/// files it holds: the listing resumes past it.
fn list_folder(prefix: &str, mut cursor: Option<String>, limit: u32, store: &mut impl Store) -> Response {
    let mut files = Vec::new();
    let mut folders = Vec::new();
    let mut more = true;
    'pages: while more {
        let listing = match store.list(prefix, cursor.as_deref(), limit) {
            Ok(listing) => listing,
            Err(e) => return error_response(e),
        };
        more = listing.next_cursor.is_some();
        for meta in listing.files {
            if files.len() + folders.len() == limit as usize {
                more = true;
                break 'pages;
            }
            let rest = &meta.path[prefix.len().min(meta.path.len())..];
            match rest.find('/') {
                Some(slash) => {
                    let folder = format!("{prefix}{}", &rest[..=slash]);
                    cursor = Some(format!("{folder}{PAST_FOLDER}"));
                    folders.push(folder);
                    // The rest of this page is (mostly) inside the folder.
                    more = true;
                    continue 'pages;
                }
                None => {
                    cursor = Some(meta.path.clone());
                    files.push(meta);
                }
            }
        }
    }
    let entries = files.iter().map(FileEntry::from).collect();
    let next_cursor = if more { cursor.as_deref() } else { None };
    Response::json(200, &ListBody { files: entries, folders: Some(folders), next_cursor })
}
