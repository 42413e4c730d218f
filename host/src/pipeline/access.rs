//! The access step: what the request's `Authorization` header proves: the
//! write token, or a token signed with a key of the replicated key set. The
//! header is removed here, before the worker runs, so a token never enters
//! guest memory. A signed token that fails verification is answered 401
//! with the reason at once; its request goes no further.

use crate::http::tokens::{looks_like_jwt, KeySet, Verifier};
use crate::http::{text_response, Request, Response, TokenDigest, WriteAccess};
use crate::store::{Store, StoreError};
use std::sync::{Arc, Mutex};

/// The `site_config` document holding the key set.
pub const KEYS_DOCUMENT: &str = "access_keys";

/// The key set as this edge last read it, ready to verify with; read again
/// once the store has changed (a sync may have brought a rotation).
pub struct Keys {
    store: Arc<Store>,
    /// The `aud` signed tokens must carry, when configured.
    audience: Option<String>,
    cached: Mutex<Option<(u64, Arc<Verifier>)>>,
}

impl Keys {
    pub fn new(store: Arc<Store>, audience: Option<String>) -> Keys {
        Keys { store, audience, cached: Mutex::new(None) }
    }

    async fn verifier(&self) -> Result<Arc<Verifier>, StoreError> {
        let generation = self.store.generation();
        if let Some((g, v)) = &*self.cached.lock().unwrap_or_else(|e| e.into_inner()) {
            if *g == generation {
                return Ok(v.clone());
            }
        }
        let set = match self.store.site_config(KEYS_DOCUMENT).await? {
            Some(doc) => KeySet::parse(&doc).unwrap_or_else(|why| {
                tracing::error!(%why, "the stored key set cannot be read; no signed token is accepted");
                KeySet::default()
            }),
            None => KeySet::default(),
        };
        let v = Arc::new(Verifier::new(&set, self.audience.clone()));
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, v.clone()));
        Ok(v)
    }

    /// Judges an `Authorization` header value: the write token, a signed
    /// token, or neither. Err: the answer for a signed token that is not
    /// valid (401), or for a store that cannot say (503).
    pub async fn judge(&self, header: Option<&[u8]>, write_token: Option<&TokenDigest>) -> Result<WriteAccess, Response> {
        let access = WriteAccess::judge(header, write_token);
        if access != WriteAccess::Denied {
            return Ok(access);
        }
        let token = header.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let Some(token) = token.filter(|t| looks_like_jwt(t)) else {
            return Ok(access);
        };
        let verifier = self.verifier().await.map_err(|e| {
            tracing::warn!(cause = %e, "reading the key set");
            crate::http::retry_later(503, "the key set cannot be read right now; retry")
        })?;
        match verifier.verify(token) {
            Ok(grant) => Ok(WriteAccess::Scoped(Arc::new(grant))),
            Err(why) => {
                let mut resp = text_response(401, &format!("the token was refused: {why}"));
                resp.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                Err(resp)
            }
        }
    }
}

/// Reads, judges and removes the `Authorization` header.
pub async fn take(req: &mut Request, write_token: Option<&TokenDigest>, keys: &Keys) -> Result<WriteAccess, Response> {
    let value = req.headers_mut().remove(hyper::header::AUTHORIZATION);
    keys.judge(value.as_ref().map(|v| v.as_bytes()), write_token).await
}
