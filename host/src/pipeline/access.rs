//! The access step: what the request's `Authorization` header proves: the
//! write token, or a token signed with a key of the replicated key set (or
//! of a JWKS URL). The
//! header is removed here, before the worker runs, so a token never enters
//! guest memory. A signed token that fails verification is answered 401
//! with the reason at once; its request goes no further.

use crate::http::tokens::{looks_like_jwt, KeySet, KeyState, PublicKey, Verifier};
use crate::http::{bearer_token, text_response, Request, Response, TokenDigest, WriteAccess};
use crate::store::{Store, StoreError};
use crate::task::AbortOnDrop;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `site_config` document holding the key set.
pub const KEYS_DOCUMENT: &str = "access_keys";

/// The key set as this edge last read it, ready to verify with; read again
/// once the store has changed (a sync may have brought a rotation). Keys
/// published at a JWKS URL (`--jwks-url`) are accepted beside them.
pub struct Keys {
    store: Arc<Store>,
    /// The `aud` signed tokens must carry, when configured.
    audience: Option<String>,
    cached: Mutex<Option<Cached>>,
    jwks: Option<Jwks>,
}

/// The verifier of the key set document read at a store generation, with
/// the JWKS keys of one fetch.
struct Cached {
    generation: u64,
    doc: Option<String>,
    fetch: u64,
    verifier: Arc<Verifier>,
}

/// How often the JWKS URL is fetched again.
pub const JWKS_REFRESH: Duration = Duration::from_secs(300);
/// A token naming a key nobody knows makes the JWKS URL be fetched again,
/// at most this often.
const JWKS_REFETCH_UNKNOWN: Duration = Duration::from_secs(60);

/// Keys published as a JSON Web Key Set at a URL.
struct Jwks {
    url: String,
    http: reqwest::Client,
    state: Mutex<JwksState>,
    /// Serialises fetches.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct JwksState {
    keys: Vec<PublicKey>,
    /// Counts successful fetches, so a verifier knows it is stale.
    fetch: u64,
    /// When a token naming an unknown key last made the set be fetched.
    last_unknown: Option<Instant>,
}

impl Jwks {
    /// Fetches the set and keeps it; a failure keeps the keys of the last
    /// fetch that worked.
    async fn fetch(&self) {
        let _one = self.fetching.lock().await;
        let fetched = async {
            let resp = self.http.get(&self.url).send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("answered {}", resp.status()));
            }
            let doc: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
            parse_jwks(&doc)
        };
        match tokio::time::timeout(Duration::from_secs(10), fetched).await {
            Ok(Ok(keys)) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched the JWKS");
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.keys = keys;
                state.fetch += 1;
            }
            Ok(Err(why)) => tracing::warn!(url = %self.url, %why, "fetching the JWKS failed; keeping the keys fetched before"),
            Err(_) => tracing::warn!(url = %self.url, "fetching the JWKS took over 10 s; keeping the keys fetched before"),
        }
    }

    /// Whether a token naming an unknown key may make the set be fetched
    /// again now; if so, that fetch is counted as made.
    fn due_for_unknown_kid(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.last_unknown.is_some_and(|t| t.elapsed() < JWKS_REFETCH_UNKNOWN) {
            return false;
        }
        state.last_unknown = Some(Instant::now());
        true
    }
}

/// The keys of a JWKS document that can verify tokens: Ed25519 (`OKP`) and
/// P-256 (`EC`) keys with a `kid`.
fn parse_jwks(doc: &serde_json::Value) -> Result<Vec<PublicKey>, String> {
    let keys = doc["keys"].as_array().ok_or("the document has no \"keys\" array")?;
    let text = |k: &serde_json::Value, f: &str| k[f].as_str().map(str::to_string);
    let mut out = Vec::new();
    for k in keys {
        let (Some(kid), Some(x)) = (text(k, "kid"), text(k, "x")) else { continue };
        let alg = match (k["kty"].as_str(), k["crv"].as_str()) {
            (Some("OKP"), Some("Ed25519")) => "EdDSA",
            (Some("EC"), Some("P-256")) => "ES256",
            _ => continue,
        };
        out.push(PublicKey { kid, alg: alg.into(), x, y: text(k, "y"), k: None, state: KeyState::Current, added: 0 });
    }
    Ok(out)
}

impl Keys {
    pub fn new(store: Arc<Store>, audience: Option<String>, jwks_url: Option<String>) -> Keys {
        let jwks = jwks_url.map(|url| Jwks {
            url,
            http: reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().unwrap_or_default(),
            state: Mutex::new(JwksState::default()),
            fetching: tokio::sync::Mutex::new(()),
        });
        Keys { store, audience, cached: Mutex::new(None), jwks }
    }

    /// Fetches the JWKS now and every [`JWKS_REFRESH`] (nothing without
    /// `--jwks-url`).
    pub fn refresh_jwks(self: &Arc<Self>) -> Option<AbortOnDrop> {
        self.jwks.as_ref()?;
        let keys = self.clone();
        Some(AbortOnDrop::spawn(async move {
            loop {
                if let Some(j) = &keys.jwks {
                    j.fetch().await;
                }
                tokio::time::sleep(JWKS_REFRESH).await;
            }
        }))
    }

    fn jwks_fetch(&self) -> u64 {
        self.jwks.as_ref().map_or(0, |j| j.state.lock().unwrap_or_else(|e| e.into_inner()).fetch)
    }

    /// The verifier for the key set as stored now. Another write leaves it
    /// (and the tokens it remembers) as it was; a changed key set makes a
    /// new one.
    pub async fn verifier(&self) -> Result<Arc<Verifier>, StoreError> {
        let generation = self.store.generation();
        let fetch = self.jwks_fetch();
        if let Some(c) = &*self.cached.lock().unwrap_or_else(|e| e.into_inner()) {
            if c.generation == generation && c.fetch == fetch {
                return Ok(c.verifier.clone());
            }
        }
        let doc = self.store.site_config(KEYS_DOCUMENT).await?;
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_mut().filter(|c| c.doc == doc && c.fetch == fetch) {
            c.generation = c.generation.max(generation);
            return Ok(c.verifier.clone());
        }
        let mut set = match &doc {
            Some(doc) => KeySet::parse(doc).unwrap_or_else(|why| {
                tracing::error!(%why, "the stored key set cannot be read; no signed token is accepted");
                KeySet::default()
            }),
            None => KeySet::default(),
        };
        if let Some(j) = &self.jwks {
            // A kid in the stored set wins (it may be revoked there).
            let published = j.state.lock().unwrap_or_else(|e| e.into_inner()).keys.clone();
            for k in published {
                if !set.keys.iter().any(|s| s.kid == k.kid) {
                    set.keys.push(k);
                }
            }
        }
        let verifier = Arc::new(Verifier::new(&set, self.audience.clone()));
        *cached = Some(Cached { generation, doc, fetch, verifier: verifier.clone() });
        Ok(verifier)
    }

    /// Judges an `Authorization` header value: the write token, a signed
    /// token, or neither. Err: the answer for a signed token that is not
    /// valid (401), or for a store that cannot say (503).
    pub async fn judge(&self, header: Option<&[u8]>, write_token: Option<&TokenDigest>) -> Result<WriteAccess, Response> {
        let access = WriteAccess::judge(header, write_token);
        if access != WriteAccess::Denied {
            return Ok(access);
        }
        let Some(token) = header.and_then(bearer_token).filter(|t| looks_like_jwt(t)) else {
            return Ok(access);
        };
        let verifier = self.verifier().await.map_err(key_set_unreadable)?;
        let mut verified = verifier.verify(token);
        if let (Err(why), Some(jwks)) = (&verified, &self.jwks) {
            // A key published since the last fetch: fetch again, at most
            // once a minute whatever clients send.
            if why.starts_with("unknown key") && jwks.due_for_unknown_kid() {
                jwks.fetch().await;
                if let Ok(v) = self.verifier().await {
                    verified = v.verify(token);
                }
            }
        }
        match verified {
            Ok(grant) => Ok(WriteAccess::Scoped(grant)),
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

/// The answer when the key set cannot be read (the store failed).
fn key_set_unreadable(e: StoreError) -> Response {
    tracing::warn!(cause = %e, "reading the key set");
    crate::http::retry_later(503, "the key set cannot be read right now; retry")
}

/// The query parameter a GET or HEAD may carry its token in (for `<img>`).
pub const TOKEN_PARAM: &str = "token";
/// The cookie a GET or HEAD may carry its token in.
pub const TOKEN_COOKIE: &str = "turserver_token";

/// Reads, judges and removes the request's credentials. The
/// `Authorization` header wins; a GET or HEAD without one may carry its
/// token as `?token=` (then as the `turserver_token` cookie), or be a
/// signed link (`?exp=&kid=&sig=`, from `turserver url sign`). Writes
/// never take a token from the URL or a cookie (a page on another site
/// could make a browser send them). All three are removed before the
/// worker runs.
pub async fn take(req: &mut Request, write_token: Option<&TokenDigest>, keys: &Keys) -> Result<WriteAccess, Response> {
    let header = req.headers_mut().remove(hyper::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    let from_query = remove_query_param(req, TOKEN_PARAM);
    let from_cookie = remove_cookie(req, TOKEN_COOKIE);
    let read = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
    let credentials = match header {
        Some(h) => Some(h),
        None if read => from_query.or(from_cookie).map(|t| format!("Bearer {t}").into_bytes()),
        None => None,
    };
    if credentials.is_none() && read {
        if let Some(link) = SignedLink::of(req) {
            return keys.judge_link(req.uri().path(), &link).await;
        }
    }
    keys.judge(credentials.as_deref(), write_token).await
}

/// A signed link's query parameters.
struct SignedLink {
    exp: String,
    kid: String,
    sig: String,
}

impl SignedLink {
    fn of(req: &Request) -> Option<SignedLink> {
        let query = req.uri().query()?;
        let (mut exp, mut kid, mut sig) = (None, None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "exp" => exp = Some(v.into_owned()),
                "kid" => kid = Some(v.into_owned()),
                "sig" => sig = Some(v.into_owned()),
                _ => {}
            }
        }
        Some(SignedLink { exp: exp?, kid: kid?, sig: sig? })
    }
}

impl Keys {
    /// A signed link's grant (`read` on its path), or 403 saying why not.
    async fn judge_link(&self, raw_path: &str, link: &SignedLink) -> Result<WriteAccess, Response> {
        let refused = |why: &str| text_response(403, &format!("the signed link was refused: {why}"));
        let path = turserver_worker::path::normalise(raw_path).map_err(|e| refused(&e.to_string()))?.path;
        let verifier = self.verifier().await.map_err(key_set_unreadable)?;
        match verifier.verify_url(&path, &link.exp, &link.kid, &link.sig) {
            Ok(grant) => Ok(WriteAccess::Scoped(Arc::new(grant))),
            Err(why) => Err(refused(&why)),
        }
    }
}

/// Removes every `name=` parameter from the request's query; the first
/// one's value.
fn remove_query_param<B>(req: &mut hyper::Request<B>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    if !form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == name) {
        return None;
    }
    let mut found = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let mut parsed = form_urlencoded::parse(pair.as_bytes());
            match parsed.next() {
                Some((k, v)) if k == name => {
                    found.get_or_insert_with(|| v.into_owned());
                    false
                }
                _ => true,
            }
        })
        .collect();
    let path = req.uri().path();
    let rebuilt = if kept.is_empty() { path.to_string() } else { format!("{path}?{}", kept.join("&")) };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = rebuilt.parse().ok();
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    found
}

/// Removes the cookie `name` from the request's `Cookie` headers; its value.
fn remove_cookie<B>(req: &mut hyper::Request<B>, name: &str) -> Option<String> {
    let headers = req.headers_mut();
    if !headers.contains_key(hyper::header::COOKIE) {
        return None;
    }
    let mut found = None;
    let mut kept = Vec::new();
    for value in headers.get_all(hyper::header::COOKIE) {
        let Ok(text) = value.to_str() else {
            kept.push(value.clone());
            continue;
        };
        let others: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|c| match c.split_once('=') {
                Some((k, v)) if k.trim() == name => {
                    found.get_or_insert_with(|| v.trim().to_string());
                    false
                }
                _ => !c.is_empty(),
            })
            .collect();
        if !others.is_empty() {
            if let Ok(v) = http::HeaderValue::from_str(&others.join("; ")) {
                kept.push(v);
            }
        }
    }
    headers.remove(hyper::header::COOKIE);
    for v in kept {
        headers.append(hyper::header::COOKIE, v);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, cookies: &[&str]) -> hyper::Request<()> {
        let mut b = hyper::Request::get(uri);
        for c in cookies {
            b = b.header("cookie", *c);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn tokens_in_the_query_and_cookies_are_taken_out() {
        let mut req = request("/a.png?w=10&token=abc.def.ghi&h=2&token=second", &[]);
        assert_eq!(remove_query_param(&mut req, TOKEN_PARAM).as_deref(), Some("abc.def.ghi"));
        assert_eq!(req.uri().to_string(), "/a.png?w=10&h=2");
        let mut req = request("/a.png?token=x", &[]);
        assert_eq!(remove_query_param(&mut req, TOKEN_PARAM).as_deref(), Some("x"));
        assert_eq!(req.uri().to_string(), "/a.png");
        let mut req = request("/a.png?tokens=1", &[]);
        assert_eq!(remove_query_param(&mut req, TOKEN_PARAM), None);
        assert_eq!(req.uri().to_string(), "/a.png?tokens=1");

        let mut req = request("/", &["theme=dark; turserver_token=t1; lang=en", "turserver_token=t2"]);
        assert_eq!(remove_cookie(&mut req, TOKEN_COOKIE).as_deref(), Some("t1"));
        let left: Vec<_> = req.headers().get_all("cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(left, ["theme=dark; lang=en"]);
    }
}
