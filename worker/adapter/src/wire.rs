//! What goes on the wire to the sidecar, apart from the HTTP calls.

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

    /// Path and query of a call, e.g. `target("stat", &[("path", "a b")])`.
    pub fn target(&self, call: &str, params: &[(&str, &str)]) -> String {
        let mut target = format!("{}/v1/{call}", self.prefix);
        if !params.is_empty() {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (name, value) in params {
                query.append_pair(name, value);
            }
            target.push('?');
            target.push_str(&query.finish());
        }
        target
    }
}

/// A batch body frame: kind, big-endian length, payload.
pub fn frame(kind: u8, payload_len: usize) -> [u8; 5] {
    let len = (payload_len as u32).to_be_bytes();
    [kind, len[0], len[1], len[2], len[3]]
}

/// The payload of an `A` frame: the file's path and content type.
pub fn add_payload(path: &str, content_type: &str) -> Vec<u8> {
    serde_json::to_vec(&(path, content_type)).unwrap_or_default()
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

    #[test]
    fn targets_are_percent_encoded() {
        let s = Sidecar::parse("http://h:1/p").unwrap();
        assert_eq!(s.target("site-config", &[]), "/p/v1/site-config");
        assert_eq!(s.target("stat", &[("path", "a b/ü&x=1")]), "/p/v1/stat?path=a+b%2F%C3%BC%26x%3D1");
    }

    #[test]
    fn frames_carry_kind_and_length() {
        assert_eq!(frame(b'W', 0x0102_0304), [b'W', 1, 2, 3, 4]);
        assert_eq!(add_payload("a.txt", "text/plain"), br#"["a.txt","text/plain"]"#);
    }
}
