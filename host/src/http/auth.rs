//! Write access: what a request's `Authorization` header proves, judged
//! against a token's SHA-256 (comparing digests keeps the comparison's
//! timing independent of how much of a guessed token is right).

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
        let token = std::str::from_utf8(header).ok().and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        token.is_some_and(|t| Sha256::digest(t.as_bytes()).as_slice() == self.0)
    }
}

/// What the request's `Authorization` header proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAccess {
    /// No bearer token was sent.
    Missing,
    /// A token was sent and it is not the write token.
    Denied,
    Granted,
}

impl WriteAccess {
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
