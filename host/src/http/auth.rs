//! Write access: what a request's `Authorization` header proves: the write
//! token, judged against its SHA-256 (comparing digests keeps the
//! comparison's timing independent of how much of a guessed token is
//! right), or a signed token's rules (see `tokens`).

use super::tokens::{Action, Grant};
use sha2::{Digest, Sha256};

/// The SHA-256 of a bearer token the host accepts.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`.
    pub fn admits(&self, header: &[u8]) -> bool {
        bearer_token(header).is_some_and(|t| Sha256::digest(t.as_bytes()).as_slice() == self.0)
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: &[u8]) -> Option<&str> {
    let (scheme, token) = std::str::from_utf8(header).ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What the request's `Authorization` header proved.
#[derive(Debug, Clone)]
pub enum WriteAccess {
    /// No bearer token was sent.
    Missing,
    /// A token was sent and it is not the write token.
    Denied,
    /// The write token: every action on every path.
    Granted,
    /// A signed token: what its rules allow.
    Scoped(std::sync::Arc<Grant>),
}

/// Why an action was refused: no credentials (401), or credentials that do
/// not allow it (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unauthorized,
    Forbidden,
}

impl PartialEq for WriteAccess {
    fn eq(&self, other: &WriteAccess) -> bool {
        match (self, other) {
            (WriteAccess::Scoped(a), WriteAccess::Scoped(b)) => std::sync::Arc::ptr_eq(a, b),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl WriteAccess {
    /// Whether `action` on `path` (a store path) is allowed.
    pub fn check(&self, action: Action, path: &str) -> Result<(), Refusal> {
        match self {
            WriteAccess::Granted => Ok(()),
            WriteAccess::Scoped(g) if g.allows(action, path) => Ok(()),
            WriteAccess::Missing => Err(Refusal::Unauthorized),
            _ => Err(Refusal::Forbidden),
        }
    }

    /// Whether `action` is allowed on some path: the paths are checked
    /// call by call.
    pub fn check_any(&self, action: Action) -> Result<(), Refusal> {
        match self {
            WriteAccess::Granted => Ok(()),
            WriteAccess::Scoped(g) if g.may(action) => Ok(()),
            WriteAccess::Missing => Err(Refusal::Unauthorized),
            _ => Err(Refusal::Forbidden),
        }
    }

    /// Whether this is the write token (what changes the whole site needs:
    /// site rules, workers, keys).
    pub fn check_admin(&self) -> Result<(), Refusal> {
        match self {
            WriteAccess::Granted => Ok(()),
            WriteAccess::Missing => Err(Refusal::Unauthorized),
            _ => Err(Refusal::Forbidden),
        }
    }

    /// Judges an `Authorization` header value against the write token
    /// (none: no token allows writes).
    pub fn judge(header: Option<&[u8]>, write_token: Option<&TokenDigest>) -> WriteAccess {
        match (header, write_token) {
            (None, _) => WriteAccess::Missing,
            (Some(value), Some(expected)) if expected.admits(value) => WriteAccess::Granted,
            _ => WriteAccess::Denied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_judged() {
        let t = TokenDigest::of("secret");
        assert_eq!(WriteAccess::judge(None, Some(&t)), WriteAccess::Missing);
        assert_eq!(WriteAccess::judge(Some(b"Bearer secret"), Some(&t)), WriteAccess::Granted);
        assert_eq!(WriteAccess::judge(Some(b"bearer  secret "), Some(&t)), WriteAccess::Granted);
        assert_eq!(WriteAccess::judge(Some(b"Bearer secreT"), Some(&t)), WriteAccess::Denied);
        assert_eq!(WriteAccess::judge(Some(b"Basic secret"), Some(&t)), WriteAccess::Denied);
        assert_eq!(WriteAccess::judge(Some(b"Bearer secret"), None), WriteAccess::Denied);
    }
}
