//! Where the sidecar is. What goes on the wire is the `turserver-protocol`
//! crate's.

/// Where the sidecar is: `http://host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    pub https: bool,
    pub authority: String,
    /// Path prefix without a trailing slash; empty for none.
    pub prefix: String,
}

impl Sidecar {
    pub fn parse(url: &str) -> Result<Sidecar, String> {
        let url = url.trim();
        let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("sidecar URL {url:?} must start with http:// or https://"));
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("sidecar URL {url:?} has no host"));
        }
        Ok(Sidecar { https, authority: authority.to_string(), prefix: prefix.to_string() })
    }

    /// `scheme://host:port`, to name the sidecar in messages.
    pub fn origin(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sidecar_urls() {
        let s = Sidecar::parse("http://127.0.0.1:8788").unwrap();
        assert_eq!(s, Sidecar { https: false, authority: "127.0.0.1:8788".into(), prefix: "".into() });
        let s = Sidecar::parse(" https://edge.internal/store/ ").unwrap();
        assert_eq!(s, Sidecar { https: true, authority: "edge.internal".into(), prefix: "/store".into() });
        assert_eq!(s.origin(), "https://edge.internal");
        assert!(Sidecar::parse("ftp://x").is_err());
        assert!(Sidecar::parse("http:///x").is_err());
    }
}
