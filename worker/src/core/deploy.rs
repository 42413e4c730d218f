//! Deploys: `POST /_api/plan` tells a client which of its files the store
//! lacks, and a batch archive's manifest entry names the files the batch
//! removes. Together they publish a directory in one transaction while
//! sending only what changed.

use super::{error_response, Response, Store, MAX_LIST_LIMIT};
use crate::path;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest plan request body: about 10,000 paths with their hashes.
pub const MAX_PLAN_BODY: usize = 4 << 20;
/// Name of the batch archive entry that lists paths to remove. It lies under
/// the reserved `_turserver/` so no stored file can have it.
pub const MANIFEST_ENTRY: &str = "_turserver/batch.json";
/// Largest manifest entry.
pub const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanRequest {
    /// The folder being deployed: stored files under it that are not in
    /// `files` are reported in `remove`. Empty for the whole site.
    #[serde(default)]
    prefix: String,
    /// Every file of the new version: path -> hex SHA-256 of its body.
    files: BTreeMap<String, String>,
}

#[derive(Serialize, Default, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Paths whose file is absent or differs: send these.
    pub upload: Vec<String>,
    /// Paths already stored with the same body.
    pub unchanged: Vec<String>,
    /// Stored paths under the prefix that the new version lacks.
    pub remove: Vec<String>,
}

/// The manifest of a batch archive.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Paths whose files the batch removes when it commits.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A path as a client names it in a plan or manifest, in store form, or
/// why it is refused.
pub fn store_path(name: &str) -> Result<String, String> {
    let target = path::normalise(&format!("/{}", name.trim_start_matches('/')))
        .map_err(|e| format!("{name:?}: {e}"))?;
    if target.path.is_empty() {
        return Err(format!("{name:?}: not a file path"));
    }
    super::write::writable(&target).map_err(|resp| format!("{name:?}: {}", resp.message()))?;
    Ok(target.path)
}

/// A prefix in store form: `""` or a normalised folder ending in `/`.
fn store_prefix(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    Ok(format!("{}/", store_path(trimmed).map_err(|why| format!("prefix {why}"))?))
}

fn valid_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Answers a plan request: which paths to send, which are unchanged, and
/// which stored files under the prefix the new version lacks.
pub fn plan(body: &[u8], store: &mut impl Store) -> Response {
    let req: PlanRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Response::text(400, format!("bad plan request: {e}")),
    };
    let prefix = match store_prefix(&req.prefix) {
        Ok(p) => p,
        Err(why) => return Response::text(400, why),
    };
    let mut wanted = BTreeMap::new();
    for (name, hash) in &req.files {
        let p = match store_path(name) {
            Ok(p) => p,
            Err(why) => return Response::text(400, format!("bad path {why}")),
        };
        if !p.starts_with(&prefix) {
            return Response::text(400, format!("{name:?} is not under the prefix {:?}", req.prefix));
        }
        if !valid_hash(hash) {
            return Response::text(400, format!("{name:?}: the hash must be 64 hex digits (SHA-256)"));
        }
        if wanted.insert(p, hash.to_ascii_lowercase()).is_some() {
            return Response::text(400, format!("{name:?} is named twice"));
        }
    }
    let mut plan = Plan::default();
    let mut stored = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = match store.list(&prefix, cursor.as_deref(), MAX_LIST_LIMIT) {
            Ok(p) => p,
            Err(e) => return error_response(e),
        };
        for file in page.files {
            stored.insert(file.path, file.hash);
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    for (p, hash) in wanted {
        match stored.remove(&p) {
            Some(h) if h == hash => plan.unchanged.push(p),
            _ => plan.upload.push(p),
        }
    }
    plan.remove = stored.into_keys().collect();
    Response::json(200, &plan)
}

/// Reads a batch manifest: the paths to remove, in store form.
pub fn read_manifest(bytes: &[u8]) -> Result<Vec<String>, String> {
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("bad {MANIFEST_ENTRY}: {e}"))?;
    manifest.remove.iter().map(|p| store_path(p).map_err(|why| format!("{MANIFEST_ENTRY}: bad path {why}"))).collect()
}
