//! Signed access tokens: JWTs (EdDSA or ES256) naming one of the key set's
//! keys by `kid`, whose `allow` claim grants actions on path patterns.
//!
//! The key set holds public keys only, each in a state: `next` (published
//! ahead of use), `current`, `previous` (still accepted after a rotation)
//! or `revoked`. Every state but `revoked` verifies tokens, so a key is
//! accepted on every edge before anyone signs with it, and until it is
//! revoked after. Deny unless some rule allows: a pattern matches the
//! normalised store path (`docs/a.html`), never the raw request path.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN: usize = 8 << 10;
/// Most rules one token may carry.
const MAX_RULES: usize = 64;
/// Longest pattern in a rule.
const MAX_PATTERN: usize = 512;
/// Clock skew allowed when checking `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// What a key is used for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Next,
    Current,
    Previous,
    Revoked,
}

/// One key of the key set, in JWK terms: a public key (`x`, and `y` for
/// ES256), or a link secret (`HS256`, `k`): the edges sign links with it
/// for `POST /_api/links`, and it never verifies a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicKey {
    pub kid: String,
    /// `EdDSA` (Ed25519), `ES256` (P-256), or `HS256` (a link secret).
    pub alg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// A link secret's bytes (base64url); never shown by the key endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
    pub state: KeyState,
    /// When it was added (Unix seconds).
    #[serde(default)]
    pub added: u64,
}

impl PublicKey {
    /// A link secret's bytes, when this is one.
    fn link_secret(&self) -> Option<Result<Vec<u8>, String>> {
        (self.alg == "HS256").then(|| {
            use base64::Engine;
            let k = self.k.as_deref().ok_or_else(|| format!("link secret {} has no k", self.kid))?;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(k)
                .map_err(|e| format!("link secret {}: {e}", self.kid))?;
            if bytes.len() < 32 {
                return Err(format!("link secret {} is shorter than 32 bytes", self.kid));
            }
            Ok(bytes)
        })
    }

    fn decoding_key(&self) -> Result<(Algorithm, DecodingKey), String> {
        let bad = |e: jsonwebtoken::errors::Error| format!("key {}: {e}", self.kid);
        match (self.alg.as_str(), &self.y) {
            ("EdDSA", None) => Ok((Algorithm::EdDSA, DecodingKey::from_ed_components(&self.x).map_err(bad)?)),
            ("ES256", Some(y)) => Ok((Algorithm::ES256, DecodingKey::from_ec_components(&self.x, y).map_err(bad)?)),
            (alg, _) => Err(format!("key {}: algorithm {alg:?} is not EdDSA (with x) or ES256 (with x and y)", self.kid)),
        }
    }
}

/// The key set, as stored (one JSON document replicated to every edge).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeySet {
    pub keys: Vec<PublicKey>,
}

impl KeySet {
    pub fn parse(doc: &str) -> Result<KeySet, String> {
        serde_json::from_str(doc).map_err(|e| format!("the key set is not valid: {e}"))
    }

    fn find(&mut self, kid: &str) -> Result<&mut PublicKey, String> {
        self.keys.iter_mut().find(|k| k.kid == kid).ok_or_else(|| format!("no key {kid:?} in the key set"))
    }

    /// Adds a key (as `next` or `current`; a `current` one demotes the
    /// current key to `previous`).
    pub fn add(&mut self, key: PublicKey) -> Result<(), String> {
        if key.kid.is_empty() || key.kid.len() > 128 || !key.kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("a kid is 1 to 128 letters, digits, '-' or '_'".into());
        }
        if self.keys.iter().any(|k| k.kid == key.kid) {
            return Err(format!("key {:?} is already in the key set", key.kid));
        }
        if !matches!(key.state, KeyState::Next | KeyState::Current) {
            return Err("a new key is added as next or current".into());
        }
        match key.link_secret() {
            Some(secret) => {
                secret?;
            }
            None => {
                key.decoding_key()?;
            }
        }
        let kid = key.kid.clone();
        let current = key.state == KeyState::Current;
        self.keys.push(key);
        if current {
            self.promote(&kid)?;
        }
        Ok(())
    }

    /// Makes `kid` the current key (of its kind: a link secret replaces
    /// the current link secret); the one before becomes `previous` (still
    /// accepted until revoked).
    pub fn promote(&mut self, kid: &str) -> Result<(), String> {
        let key = self.find(kid)?;
        if key.state == KeyState::Revoked {
            return Err(format!("key {kid:?} was revoked; add a new key instead"));
        }
        let link = key.alg == "HS256";
        for k in &mut self.keys {
            if k.kid == kid {
                k.state = KeyState::Current;
            } else if k.state == KeyState::Current && (k.alg == "HS256") == link {
                k.state = KeyState::Previous;
            }
        }
        Ok(())
    }

    /// The set as the key endpoints show it: link secrets without their
    /// bytes.
    pub fn redacted(mut self) -> KeySet {
        for k in &mut self.keys {
            k.k = None;
        }
        self
    }

    /// Stops accepting tokens signed with `kid`, on every edge.
    pub fn revoke(&mut self, kid: &str) -> Result<(), String> {
        self.find(kid)?.state = KeyState::Revoked;
        Ok(())
    }
}

/// Verified tokens remembered, so a client sending the same token again
/// costs a lookup rather than a signature check.
const VERIFIED_TOKENS: usize = 10_000;

/// The key set, ready to verify tokens with. A new key set makes a new
/// verifier, so what one remembers never outlives a revocation.
pub struct Verifier {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    /// Link secrets that verify links (never tokens).
    link_keys: HashMap<String, DecodingKey>,
    /// The current link secret, which signs new links.
    link_signer: Option<(String, Vec<u8>)>,
    revoked: Vec<String>,
    /// The `aud` a token must carry, when configured.
    audience: Option<String>,
    /// Tokens verified, with their grant and `exp`.
    verified: quick_cache::sync::Cache<String, (std::sync::Arc<Grant>, u64)>,
}

impl Verifier {
    /// Keys that cannot be used are skipped (and named in the log).
    pub fn new(set: &KeySet, audience: Option<String>) -> Verifier {
        let mut keys = HashMap::new();
        let mut revoked = Vec::new();
        let mut link_keys = HashMap::new();
        let mut link_signer = None;
        for k in &set.keys {
            if k.state == KeyState::Revoked {
                revoked.push(k.kid.clone());
                continue;
            }
            if let Some(secret) = k.link_secret() {
                match secret {
                    Ok(bytes) => {
                        link_keys.insert(k.kid.clone(), DecodingKey::from_secret(&bytes));
                        if k.state == KeyState::Current {
                            link_signer = Some((k.kid.clone(), bytes));
                        }
                    }
                    Err(why) => tracing::warn!(%why, "a link secret of the key set cannot be used"),
                }
                continue;
            }
            match k.decoding_key() {
                Ok(key) => {
                    keys.insert(k.kid.clone(), key);
                }
                Err(why) => tracing::warn!(%why, "a key of the key set cannot verify tokens"),
            }
        }
        Verifier {
            keys,
            link_keys,
            link_signer,
            revoked,
            audience,
            verified: quick_cache::sync::Cache::new(VERIFIED_TOKENS),
        }
    }

    /// The grant a token proves, or why it proves none.
    pub fn verify(&self, token: &str) -> Result<std::sync::Arc<Grant>, String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Some((grant, exp)) = self.verified.get(token) {
            if now <= exp.saturating_add(LEEWAY_SECS) {
                return Ok(grant);
            }
        }
        let (grant, exp) = self.verify_signed(token)?;
        let grant = std::sync::Arc::new(grant);
        self.verified.insert(token.to_string(), (grant.clone(), exp));
        Ok(grant)
    }

    /// The grant a signed URL proves: `read` on its one path, until `exp`.
    /// `path` is the request's path in store form.
    pub fn verify_url(&self, path: &str, exp: &str, kid: &str, sig: &str) -> Result<Grant, String> {
        let exp: u64 = exp.parse().map_err(|_| "exp is not a Unix time".to_string())?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if now > exp {
            return Err("the link has expired".into());
        }
        let (alg, key) = match (self.keys.get(kid), self.link_keys.get(kid)) {
            (Some((alg, key)), _) => (*alg, key),
            (None, Some(key)) => (Algorithm::HS256, key),
            (None, None) => return Err(self.no_key(kid)),
        };
        match jsonwebtoken::crypto::verify(sig, url_message(path, exp).as_bytes(), key, alg) {
            Ok(true) => Ok(Grant { subject: "signed link".into(), rules: vec![(Pattern::Exact(path.to_string()), Action::Read.bit())] }),
            Ok(false) => Err("the signature does not match this path and expiry".into()),
            Err(_) => Err("the signature is malformed".into()),
        }
    }

    /// Why `kid` verifies nothing: revoked, or never known.
    fn no_key(&self, kid: &str) -> String {
        if self.revoked.iter().any(|k| k == kid) {
            format!("key {kid:?} was revoked")
        } else {
            format!("unknown key {kid:?}")
        }
    }

    /// A signed link's query for `path` (store form), valid until `exp`,
    /// signed with the current link secret.
    pub fn sign_link(&self, path: &str, exp: u64) -> Result<String, String> {
        let (kid, secret) = self
            .link_signer
            .as_ref()
            .ok_or("no current link secret: add one with `turserver keys add --link-secret`")?;
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        let sig = jsonwebtoken::crypto::sign(url_message(path, exp).as_bytes(), &key, Algorithm::HS256)
            .map_err(|e| format!("signing the link: {e}"))?;
        Ok(format!("exp={exp}&kid={kid}&sig={sig}"))
    }

    /// [`Verifier::verify`] without the memory: the grant and `exp`.
    fn verify_signed(&self, token: &str) -> Result<(Grant, u64), String> {
        if token.len() > MAX_TOKEN {
            return Err(format!("the token is longer than {MAX_TOKEN} bytes"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let kid = header.kid.ok_or("the token names no key (kid)")?;
        let Some((alg, key)) = self.keys.get(&kid) else {
            return Err(self.no_key(&kid));
        };
        if header.alg != *alg {
            return Err(format!("the token is signed with {:?}, but key {kid:?} is {alg:?}", header.alg));
        }
        let mut validation = Validation::new(*alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                ErrorKind::InvalidSignature => "the token's signature is not valid".to_string(),
                ErrorKind::InvalidAudience => "the token is for another audience (aud)".to_string(),
                ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c:?} claim"),
                _ => format!("invalid token: {e}"),
            }
        })?;
        let exp = data.claims.exp;
        Ok((Grant::new(data.claims)?, exp))
    }
}

/// What a token claims, beyond what jsonwebtoken checks itself.
#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    allow: Vec<RuleClaim>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleClaim {
    paths: String,
    actions: Vec<String>,
}

/// What a token may do, action by action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
    Delete,
    List,
}

impl Action {
    fn bit(self) -> u8 {
        match self {
            Action::Read => 1,
            Action::Write => 2,
            Action::Delete => 4,
            Action::List => 8,
        }
    }

    pub fn parse(s: &str) -> Result<Action, String> {
        match s {
            "read" => Ok(Action::Read),
            "write" => Ok(Action::Write),
            "delete" => Ok(Action::Delete),
            "list" => Ok(Action::List),
            other => Err(format!("unknown action {other:?} (read, write, delete or list)")),
        }
    }
}

/// A path pattern: a glob (`*` stays within a folder, `**` crosses them)
/// or, after `re:`, a regular expression matched against the whole path.
#[derive(Debug)]
enum Pattern {
    Glob(globset::GlobMatcher),
    Regex(regex::Regex),
    /// One path exactly (a signed URL's).
    Exact(String),
}

impl Pattern {
    fn parse(p: &str) -> Result<Pattern, String> {
        if p.len() > MAX_PATTERN {
            return Err(format!("a path pattern is longer than {MAX_PATTERN} bytes"));
        }
        if let Some(re) = p.strip_prefix("re:") {
            // Anchored, and bounded: the regex crate matches in linear time.
            let re = regex::RegexBuilder::new(&format!("^(?:{re})$"))
                .size_limit(1 << 20)
                .dfa_size_limit(1 << 20)
                .build()
                .map_err(|e| format!("bad path pattern {p:?}: {e}"))?;
            return Ok(Pattern::Regex(re));
        }
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("bad path pattern {p:?}: {e}"))?;
        Ok(Pattern::Glob(glob.compile_matcher()))
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Pattern::Glob(g) => g.is_match(path),
            Pattern::Regex(r) => r.is_match(path),
            Pattern::Exact(p) => p == path,
        }
    }
}

/// What a verified token allows.
#[derive(Debug)]
pub struct Grant {
    /// The token's `sub`, for the log.
    pub subject: String,
    rules: Vec<(Pattern, u8)>,
}

impl Grant {
    fn new(claims: Claims) -> Result<Grant, String> {
        if claims.allow.len() > MAX_RULES {
            return Err(format!("the token has more than {MAX_RULES} rules"));
        }
        let mut rules = Vec::with_capacity(claims.allow.len());
        for rule in claims.allow {
            let mut bits = 0;
            for a in &rule.actions {
                bits |= Action::parse(a)?.bit();
            }
            rules.push((Pattern::parse(&rule.paths)?, bits));
        }
        Ok(Grant { subject: claims.sub.unwrap_or_default(), rules })
    }

    /// Whether some rule allows `action` on `path` (a store path).
    pub fn allows(&self, action: Action, path: &str) -> bool {
        self.rules.iter().any(|(p, bits)| bits & action.bit() != 0 && p.matches(path))
    }

    /// Whether some rule allows `action` anywhere.
    pub fn may(&self, action: Action) -> bool {
        self.rules.iter().any(|(_, bits)| bits & action.bit() != 0)
    }
}

/// One rule of a token's `allow` claim from `PATTERN:ACTIONS` (e.g.
/// `docs/**:write,delete`), checked as the edges will check it.
pub fn rule_claim(spec: &str) -> Result<serde_json::Value, String> {
    let (paths, actions) = spec
        .rsplit_once(':')
        .ok_or_else(|| format!("{spec:?} is not PATTERN:ACTIONS (e.g. docs/**:write,delete)"))?;
    let actions: Vec<&str> = actions.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
    if actions.is_empty() {
        return Err(format!("{spec:?} names no action (read, write, delete, list)"));
    }
    for a in &actions {
        Action::parse(a)?;
    }
    Pattern::parse(paths)?;
    Ok(serde_json::json!({ "paths": paths, "actions": actions }))
}

/// What a signed URL's signature covers: the path (store form) and when
/// the link expires.
pub fn url_message(path: &str, exp: u64) -> String {
    format!("turserver-link\n{path}\n{exp}")
}

/// Whether a bearer token is shaped as a JWT (three dot-separated parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(allow: serde_json::Value) -> Result<Grant, String> {
        Grant::new(serde_json::from_value(serde_json::json!({ "exp": 0, "sub": "ci", "allow": allow })).map_err(|e| e.to_string())?)
    }

    #[test]
    fn rules_allow_what_they_name_and_nothing_else() {
        let g = grant(serde_json::json!([
            {"paths": "docs/**", "actions": ["write", "delete"]},
            {"paths": "img/*.png", "actions": ["read"]},
            {"paths": "re:users/[a-z0-9]+/avatar\\.png", "actions": ["write"]},
        ]))
        .unwrap();
        assert!(g.allows(Action::Write, "docs/a.html"));
        assert!(g.allows(Action::Write, "docs/deep/er/b.css"));
        assert!(g.allows(Action::Delete, "docs/a.html"));
        assert!(!g.allows(Action::Write, "docs"));
        assert!(!g.allows(Action::Write, "docsx/a.html"));
        assert!(!g.allows(Action::Write, "other/docs/a.html"));
        assert!(g.allows(Action::Read, "img/a.png"));
        assert!(!g.allows(Action::Read, "img/sub/a.png"), "* stays within a folder");
        assert!(!g.allows(Action::Write, "img/a.png"));
        assert!(g.allows(Action::Write, "users/bob7/avatar.png"));
        assert!(!g.allows(Action::Write, "users/bob7/avatar.png.exe"), "regexes are anchored");
        assert!(!g.allows(Action::Write, "x/users/bob7/avatar.png"));
        assert!(g.may(Action::Write) && !g.may(Action::List));
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(grant(serde_json::json!([{"paths": "a/**", "actions": ["own"]}])).is_err());
        assert!(grant(serde_json::json!([{"paths": "a/[", "actions": ["read"]}])).is_err());
        assert!(grant(serde_json::json!([{"paths": "re:(", "actions": ["read"]}])).is_err());
        assert!(grant(serde_json::json!([{"paths": "re:a{1000}{1000}", "actions": ["read"]}])).is_err(), "too large a regex");
        assert!(grant(serde_json::json!([{"paths": "a/**", "actions": "read"}])).is_err());
        let many: Vec<_> = (0..65).map(|i| serde_json::json!({"paths": format!("p{i}/**"), "actions": ["read"]})).collect();
        assert!(grant(serde_json::Value::Array(many)).is_err());
        assert!(grant(serde_json::json!([])).unwrap().rules.is_empty(), "a token that allows nothing is still a token");
    }

    #[test]
    fn rotation_keeps_one_current_key() {
        let key = |kid: &str, state| PublicKey {
            kid: kid.into(),
            alg: "EdDSA".into(),
            x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into(),
            y: None,
            k: None,
            state,
            added: 0,
        };
        let mut set = KeySet::default();
        set.add(key("a", KeyState::Current)).unwrap();
        set.add(key("b", KeyState::Next)).unwrap();
        assert!(set.add(key("b", KeyState::Next)).is_err(), "a kid is unique");
        assert!(set.add(key("c", KeyState::Previous)).is_err());
        set.promote("b").unwrap();
        let states: Vec<_> = set.keys.iter().map(|k| (k.kid.as_str(), k.state)).collect();
        assert_eq!(states, [("a", KeyState::Previous), ("b", KeyState::Current)]);
        set.revoke("a").unwrap();
        assert!(set.promote("a").is_err());
        assert!(set.revoke("zz").is_err());
        let v = Verifier::new(&set, None);
        assert_eq!(v.keys.len(), 1);
        assert_eq!(v.verify("eyJhbGciOiJFZERTQSJ9.e30.c2ln").unwrap_err(), "the token names no key (kid)");
    }
}
