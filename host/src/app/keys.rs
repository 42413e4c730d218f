//! `/_turserver/keys`: the key set signed tokens are verified with, kept in
//! the replicated database so a change reaches every edge with its next
//! sync. Write token only.
//!
//! - `GET /_turserver/keys`: the key set (public keys and their states).
//! - `POST /_turserver/keys` with `{"kid", "alg", "x", "y"?, "state"?}`: adds
//!   a public key, as `next` unless `"state": "current"`.
//! - `POST /_turserver/keys/{kid}/promote`: makes it the current key (the
//!   current one becomes `previous`, still accepted).
//! - `POST /_turserver/keys/{kid}/revoke`: no token signed with it is
//!   accepted any more.

use super::App;
use crate::http::tokens::{KeySet, PublicKey};
use crate::http::{json_value, text_response, Request, Response};
use crate::pipeline::KEYS_DOCUMENT;
use crate::store::StoreError;
use http_body_util::BodyExt;

/// A change to the key set, or why it cannot be made.
type Change = Box<dyn FnOnce(&mut KeySet) -> Result<(), String> + Send>;

/// Largest key document a request may send.
const MAX_KEY_BODY: usize = 16 << 10;

pub(super) async fn route(app: &App, mut req: Request) -> Response {
    if let Err(refused) = super::routes::admin(app, &mut req, "manage keys").await {
        return refused;
    }
    let path = req.uri().path().trim_start_matches("/_turserver/keys").trim_start_matches('/').to_string();
    let method = req.method().clone();
    let store = &app.pipeline.store;
    let change: Change = match (method.as_str(), path.split_once('/')) {
        ("GET", None) if path.is_empty() => {
            return match store.site_config(KEYS_DOCUMENT).await {
                Ok(doc) => match doc.map(|d| KeySet::parse(&d)).transpose() {
                    Ok(set) => json_value(200, &serde_json::to_value(set.unwrap_or_default()).unwrap_or_default()),
                    Err(why) => text_response(500, &why),
                },
                Err(e) => failed(e),
            };
        }
        ("POST", None) if path.is_empty() => {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_KEY_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text_response(413, &format!("key body refused: {e}")),
            };
            let mut key: PublicKey = match serde_json::from_slice(&body) {
                Ok(k) => k,
                Err(e) => {
                    return text_response(400, &format!("a key is {{\"kid\", \"alg\", \"x\", \"y\"?, \"state\"?}}: {e}"))
                }
            };
            key.added = crate::store::unix_now() as u64;
            Box::new(move |set| set.add(key))
        }
        ("POST", Some((kid, "promote"))) => {
            let kid = kid.to_string();
            Box::new(move |set| set.promote(&kid))
        }
        ("POST", Some((kid, "revoke"))) => {
            let kid = kid.to_string();
            Box::new(move |set| set.revoke(&kid))
        }
        _ => return text_response(404, "no such key operation: GET or POST /_turserver/keys, POST /_turserver/keys/KID/promote or /revoke"),
    };
    let updated = store
        .update_site_config(KEYS_DOCUMENT, move |doc| {
            let mut set = doc.map(|d| KeySet::parse(&d)).transpose()?.unwrap_or_default();
            change(&mut set)?;
            serde_json::to_string(&set).map_err(|e| e.to_string())
        })
        .await;
    match updated {
        Ok(doc) => {
            let set = KeySet::parse(&doc).unwrap_or_default();
            tracing::info!(keys = set.keys.len(), "key set changed");
            json_value(200, &serde_json::to_value(set).unwrap_or_default())
        }
        Err(StoreError::Invalid(why)) => text_response(400, &why),
        Err(e) => failed(e),
    }
}

fn failed(e: StoreError) -> Response {
    let unavailable = matches!(e, StoreError::Unavailable { .. });
    tracing::warn!(cause = %format!("{:#}", anyhow::Error::new(e)), "key set");
    if unavailable {
        return crate::http::retry_later(503, "the primary database is unreachable; retry");
    }
    text_response(500, "the key set could not be changed or read; the host log has the cause")
}
