//! Request-path normalisation: turns the raw request target into the store's
//! path form (no leading slash, `/`-separated, valid UTF-8) or refuses it.
//!
//! Anything that could escape the namespace or mean two things is refused
//! rather than repaired: `.`/`..` segments (also percent-encoded), backslashes,
//! encoded slashes, NUL and other control characters, bad percent-escapes and
//! invalid UTF-8. Repeated slashes are merged, as nginx does.

use percent_encoding::percent_decode_str;

/// A request path in store form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// Segments joined by `/`, without leading or trailing slash; empty for `/`.
    pub path: String,
    /// The request named a directory (`/` or a trailing slash).
    pub dir: bool,
}

impl NormalPath {
    /// The file a GET serves: `index.html` inside a directory.
    pub fn file_to_serve(&self) -> String {
        match (self.dir, self.path.is_empty()) {
            (true, true) => "index.html".to_string(),
            (true, false) => format!("{}/index.html", self.path),
            (false, _) => self.path.clone(),
        }
    }
}

/// Why a path was refused; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub &'static str);

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Longest path accepted, in bytes after decoding.
pub const MAX_PATH_BYTES: usize = 1024;

/// Normalises the path part of a request target (the part before `?`).
pub fn normalise(raw: &str) -> Result<NormalPath, PathError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError("path must start with '/'"));
    };
    if raw.contains('\\') {
        return Err(PathError("backslash in path"));
    }
    let mut segments: Vec<String> = Vec::new();
    for raw_segment in rest.split('/') {
        if raw_segment.is_empty() {
            continue;
        }
        segments.push(decode_segment(raw_segment)?);
    }
    let path = segments.join("/");
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError("path too long"));
    }
    let dir = path.is_empty() || rest.ends_with('/');
    Ok(NormalPath { path, dir })
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    check_escapes(raw)?;
    let bytes: Vec<u8> = percent_decode_str(raw).collect();
    let segment = String::from_utf8(bytes).map_err(|_| PathError("path is not valid UTF-8"))?;
    if segment == "." || segment == ".." {
        return Err(PathError("'.' and '..' segments are not allowed"));
    }
    if segment.contains('/') {
        return Err(PathError("encoded '/' in path"));
    }
    if segment.contains('\\') {
        return Err(PathError("backslash in path"));
    }
    if segment.chars().any(char::is_control) {
        return Err(PathError("control character in path"));
    }
    Ok(segment)
}

/// `percent_decode_str` passes malformed escapes through; we refuse them.
fn check_escapes(raw: &str) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(PathError("malformed percent-escape in path"));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Percent-encodes a store path for use in a `Location` header.
pub fn encode(path: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    const SEGMENT: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}');
    utf8_percent_encode(path, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> NormalPath {
        normalise(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn plain_paths() {
        assert_eq!(ok("/"), NormalPath { path: "".into(), dir: true });
        assert_eq!(ok("/a/b.txt"), NormalPath { path: "a/b.txt".into(), dir: false });
        assert_eq!(ok("/a/b/"), NormalPath { path: "a/b".into(), dir: true });
        assert_eq!(ok("//a///b"), NormalPath { path: "a/b".into(), dir: false });
        assert_eq!(ok("/caf%C3%A9%20x.txt").path, "café x.txt");
        assert_eq!(ok("/a/").file_to_serve(), "a/index.html");
        assert_eq!(ok("/").file_to_serve(), "index.html");
        assert_eq!(ok("/.well-known/x").path, ".well-known/x");
    }

    #[test]
    fn refuses_traversal_and_junk() {
        for raw in [
            "/..",
            "/a/../b",
            "/a/./b",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/x",
            "/.%2e/x",
            "/a%2f..%2fb",
            "/a\\b",
            "/a%5cb",
            "/a%00b",
            "/a%0ab",
            "/%ff%fe",
            "/a%zz",
            "/a%2",
            "relative",
            "",
        ] {
            assert!(normalise(raw).is_err(), "{raw} should be refused");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES + 1));
        assert!(normalise(&long).is_err());
    }

    #[test]
    fn encodes_for_location() {
        assert_eq!(encode("a b/c?d"), "a%20b/c%3Fd");
        assert_eq!(encode("café"), "caf%C3%A9");
    }
}
