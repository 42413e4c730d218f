//! Site rules: SPA fallback, custom 404 page, Cache-Control by glob, CORS,
//! private files.
//!
//! The rules are one JSON document in the replicated database (so every edge
//! serves the same rules), edited through `PUT /_api/site`. This module
//! parses and validates it and answers the questions routing asks.

use serde::{Deserialize, Serialize};

/// Cache-Control for HTML and other files no rule matches: always revalidate.
pub const DEFAULT_REVALIDATE: &str = "no-cache";
/// Cache-Control for private files: never kept by shared caches.
pub const PRIVATE: &str = "private, no-cache";
/// Cache-Control for file names that carry a content hash.
pub const DEFAULT_IMMUTABLE: &str = "public, max-age=31536000, immutable";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRules {
    /// File served (200) for unknown paths whose request accepts HTML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spa_fallback: Option<String>,
    /// File served with status 404 for unknown paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_found_page: Option<String>,
    /// First matching rule wins; the defaults apply after these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_control: Vec<CacheRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Globs (as in `cache_control`) whose files need a token allowing
    /// `read`; they are sent with `Cache-Control: private, no-cache`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// A glob over the path (`assets/**/*.js`); a glob without `/` matches
    /// the file name in any directory (`*.html`).
    pub glob: String,
    /// The Cache-Control value to send.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed, or `["*"]`.
    pub allow_origins: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<u32>,
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_cors_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

impl SiteRules {
    /// Parses and validates a rules document; the error says what is wrong.
    pub fn parse(json: &str) -> Result<SiteRules, String> {
        // The error names the field it is about (`cors.allow_origins[0]: …`).
        let rules: SiteRules = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(json))
            .map_err(|e| match e.path().to_string() {
                path if path == "." => format!("invalid site rules: {}", e.inner()),
                path => format!("invalid site rules: {path}: {}", e.inner()),
            })?;
        rules.validate()?;
        Ok(rules)
    }

    fn validate(&self) -> Result<(), String> {
        for (name, page) in [("spa_fallback", &self.spa_fallback), ("not_found_page", &self.not_found_page)] {
            if let Some(p) = page {
                let normal = crate::path::normalise(&format!("/{}", p.trim_start_matches('/')))
                    .map_err(|e| format!("{name}: {e}"))?;
                if normal.dir {
                    return Err(format!("{name} must name a file, not a directory"));
                }
            }
        }
        for (i, rule) in self.cache_control.iter().enumerate() {
            if rule.glob.is_empty() || rule.glob.len() > 512 {
                return Err(format!("cache_control[{i}].glob must be 1 to 512 characters"));
            }
            if !balanced(&rule.glob) {
                return Err(format!("cache_control[{i}].glob has unbalanced brackets or braces"));
            }
            if rule.value.trim().is_empty() || !rule.value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(format!("cache_control[{i}].value must be non-empty printable ASCII"));
            }
        }
        for (i, glob) in self.private.iter().enumerate() {
            if glob.is_empty() || glob.len() > 512 {
                return Err(format!("private[{i}] must be 1 to 512 characters"));
            }
            if !balanced(glob) {
                return Err(format!("private[{i}] has unbalanced brackets or braces"));
            }
        }
        if let Some(c) = &self.cors {
            if c.allow_origins.is_empty() {
                return Err("cors.allow_origins must list at least one origin (or \"*\")".into());
            }
            for o in &c.allow_origins {
                let ok = o == "*"
                    || ((o.starts_with("http://") || o.starts_with("https://"))
                        && !o.ends_with('/')
                        && o.bytes().all(|b| b.is_ascii_graphic()));
                if !ok {
                    return Err(format!("cors.allow_origins: {o:?} is not \"*\" or an origin like https://example.com"));
                }
            }
            if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
                return Err("cors.allow_credentials cannot be used with the \"*\" origin".into());
            }
            for m in &c.allow_methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(format!("cors.allow_methods: {m:?} is not a method"));
                }
            }
            for h in c.allow_headers.iter().chain(&c.expose_headers) {
                if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*') {
                    return Err(format!("cors headers: {h:?} is not a header name"));
                }
            }
        }
        Ok(())
    }

    /// Whether a stored file needs a token allowing `read`.
    pub fn is_private(&self, path: &str) -> bool {
        self.private.iter().any(|g| glob_matches(g, path))
    }

    /// The Cache-Control value for a stored file.
    pub fn cache_control(&self, path: &str, content_type: &str) -> String {
        if self.is_private(path) {
            return PRIVATE.into();
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        for rule in &self.cache_control {
            if glob_matches(&rule.glob, path) {
                return rule.value.clone();
            }
        }
        if content_type.starts_with("text/html") {
            DEFAULT_REVALIDATE.into()
        } else if has_content_hash(name) {
            DEFAULT_IMMUTABLE.into()
        } else {
            DEFAULT_REVALIDATE.into()
        }
    }

    pub fn fallback_page(&self) -> Option<String> {
        self.spa_fallback.as_deref().map(|p| p.trim_start_matches('/').to_string())
    }

    pub fn not_found(&self) -> Option<String> {
        self.not_found_page.as_deref().map(|p| p.trim_start_matches('/').to_string())
    }
}

/// A glob over the path; one without `/` matches the file name in any
/// directory.
fn glob_matches(glob: &str, path: &str) -> bool {
    let subject = if glob.contains('/') { path } else { path.rsplit('/').next().unwrap_or(path) };
    glob_match::glob_match(glob, subject)
}

fn balanced(glob: &str) -> bool {
    let (mut square, mut curly) = (0i32, 0i32);
    for c in glob.chars() {
        match c {
            '[' => square += 1,
            ']' => square -= 1,
            '{' => curly += 1,
            '}' => curly -= 1,
            _ => {}
        }
        if square < 0 || curly < 0 {
            return false;
        }
    }
    square == 0 && curly == 0
}

/// True for names like `app.3f2a1b9c.js` or `index-BmXq3K9z.js`: a `.`/`-`
/// separated token of 8+ letters and digits, with a digit, before the
/// extension, as bundlers write them.
pub fn has_content_hash(name: &str) -> bool {
    let Some((stem, _ext)) = name.rsplit_once('.') else { return false };
    stem.split(['.', '-', '_']).skip(1).any(|t| {
        t.len() >= 8 && t.bytes().all(|b| b.is_ascii_alphanumeric()) && t.bytes().any(|b| b.is_ascii_digit())
    })
}

impl Cors {
    /// The value for Access-Control-Allow-Origin, when `origin` is allowed.
    pub fn allow_origin(&self, origin: &str) -> Option<String> {
        if self.allow_origins.iter().any(|o| o == "*") {
            Some("*".into())
        } else {
            self.allow_origins.iter().any(|o| o == origin).then(|| origin.to_string())
        }
    }

    pub fn allows_method(&self, method: &str) -> bool {
        self.allow_methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(SiteRules::parse("{}").unwrap(), SiteRules::default());
        let r = SiteRules::parse(
            r#"{"spa_fallback": "/index.html", "cache_control": [{"glob": "*.css", "value": "max-age=60"}],
                "cors": {"allow_origins": ["https://a.example"]}}"#,
        )
        .unwrap();
        assert_eq!(r.fallback_page().as_deref(), Some("index.html"));
        assert_eq!(r.cors.unwrap().allow_methods, vec!["GET", "HEAD"]);
        for (bad, why) in [
            (r#"{"spa_fallback": "../x"}"#, "spa_fallback"),
            (r#"{"spa_fallback": "dir/"}"#, "directory"),
            (r#"{"unknown": 1}"#, "unknown field"),
            (r#"{"cache_control": [{"glob": "[a", "value": "x"}]}"#, "unbalanced"),
            (r#"{"cache_control": [{"glob": "*", "value": ""}]}"#, "value"),
            (r#"{"cors": {"allow_origins": ["example.com"]}}"#, "origin"),
            (r#"{"cors": {"allow_origins": ["*"], "allow_credentials": true}}"#, "credentials"),
            ("not json", "invalid site rules"),
            (r#"{"spa_fallback": 5}"#, "invalid site rules: spa_fallback: invalid type: integer `5`"),
            (r#"{"cors": {"allow_origins": [1]}}"#, "cors.allow_origins[0]"),
        ] {
            let e = SiteRules::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn private_globs_need_read_and_are_never_shared() {
        let r = SiteRules::parse(r#"{"private": ["members/**", "*.secret"], "cache_control": [{"glob": "**", "value": "public"}]}"#).unwrap();
        assert!(r.is_private("members/a/b.pdf") && r.is_private("x/y.secret"));
        assert!(!r.is_private("membersx/a.pdf") && !r.is_private("index.html"));
        assert_eq!(r.cache_control("members/a.pdf", "application/pdf"), PRIVATE);
        assert_eq!(r.cache_control("index.html", "text/html"), "public");
        assert!(SiteRules::parse(r#"{"private": ["[a"]}"#).is_err());
        assert!(SiteRules::parse(r#"{"private": [""]}"#).is_err());
    }

    #[test]
    fn cache_control_rules_and_defaults() {
        let r = SiteRules::parse(
            r#"{"cache_control": [{"glob": "*.css", "value": "max-age=60"},
                                  {"glob": "media/**", "value": "max-age=3600"}]}"#,
        )
        .unwrap();
        assert_eq!(r.cache_control("a/b/site.css", "text/css"), "max-age=60");
        assert_eq!(r.cache_control("media/x/y.png", "image/png"), "max-age=3600");
        assert_eq!(r.cache_control("index.html", "text/html; charset=utf-8"), DEFAULT_REVALIDATE);
        assert_eq!(r.cache_control("assets/app.3f2a1b9c.js", "text/javascript"), DEFAULT_IMMUTABLE);
        assert_eq!(r.cache_control("assets/index-BmXq3K9z.js", "text/javascript"), DEFAULT_IMMUTABLE);
        assert_eq!(r.cache_control("logo.png", "image/png"), DEFAULT_REVALIDATE);
    }

    #[test]
    fn content_hash_names() {
        assert!(has_content_hash("app.3f2a1b9c.js"));
        assert!(has_content_hash("chunk-5XJ2KQ7A.mjs"));
        assert!(!has_content_hash("application.js"));
        assert!(!has_content_hash("my-component.js"));
        assert!(!has_content_hash("README"));
    }

    #[test]
    fn cors_origins() {
        let c = Cors {
            allow_origins: vec!["https://a.example".into()],
            allow_methods: default_cors_methods(),
            allow_headers: vec![],
            expose_headers: vec![],
            max_age: None,
            allow_credentials: false,
        };
        assert_eq!(c.allow_origin("https://a.example").as_deref(), Some("https://a.example"));
        assert_eq!(c.allow_origin("https://b.example"), None);
        assert!(c.allows_method("get") && !c.allows_method("PUT"));
    }
}
