//! The sites file: which sites a host serves, the hosts each answers, its
//! database, token and limits. One TOML file, or a folder of `*.toml` files
//! read together. Every mistake is refused with its file and line.

use super::host::{normalize_pattern, Pattern};
use crate::store::Quota;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// One site, as the host runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSpec {
    pub name: String,
    pub hosts: Vec<Pattern>,
    pub database: Database,
    /// The bearer token that may write anything on this site.
    pub write_token: Option<String>,
    pub sync_interval: Option<Duration>,
    pub quota: Quota,
    pub max_file_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A file under `DATA_DIR/sites/NAME/`.
    Local,
    /// An embedded replica of a primary (one sqld namespace, or one Turso
    /// database).
    Replica { url: String, namespace: Option<String>, token: Option<String> },
}

/// Every site, and which one answers hosts no site names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SitesConfig {
    pub sites: Vec<SiteSpec>,
    pub default: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    /// The site that answers a host no site names (and requests with no host).
    default: Option<Spanned<String>>,
    #[serde(default)]
    site: Vec<SiteDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteDoc {
    name: Spanned<String>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    local: bool,
    primary: Option<String>,
    namespace: Option<String>,
    primary_token: Option<String>,
    primary_token_env: Option<String>,
    write_token: Option<String>,
    write_token_env: Option<String>,
    sync_interval: Option<String>,
    max_files: Option<u64>,
    max_bytes: Option<u64>,
    max_file_size: Option<u64>,
}

/// A mistake in the sites file, with where it is.
fn at(file: &Path, text: &str, span: std::ops::Range<usize>, what: impl std::fmt::Display) -> anyhow::Error {
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    anyhow::anyhow!("{}, line {line}: {what}", file.display())
}

/// The files `source` names: itself, or the `*.toml` files in a folder, in
/// name order.
pub fn files(source: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(source).map_err(|e| anyhow::anyhow!("reading the sites file {}: {e}", source.display()))?;
    if !meta.is_dir() {
        return Ok(vec![source.to_path_buf()]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(source).map_err(|e| anyhow::anyhow!("reading {}: {e}", source.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Reads and checks every site in `source`. `env` reads environment
/// variables (`*_token_env`).
pub fn load(source: &Path, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<SitesConfig> {
    let mut texts = Vec::new();
    for file in files(source)? {
        let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
        texts.push((file, text));
    }
    parse(&texts, env)
}

/// Checks the sites of `(file, text)` pairs as one configuration.
pub fn parse(texts: &[(PathBuf, String)], env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<SitesConfig> {
    let mut config = SitesConfig::default();
    // Where each name and host was first given, for a clear refusal.
    let mut names: HashMap<String, String> = HashMap::new();
    let mut hosts: HashMap<Pattern, String> = HashMap::new();
    let mut default_at: Option<(String, PathBuf, std::ops::Range<usize>)> = None;
    for (file, text) in texts {
        let doc: FileDoc = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if let Some(d) = doc.default {
            if let Some((earlier, _, _)) = &default_at {
                return Err(at(file, text, d.span(), format!("`default` is already set to {earlier:?}; set it once")));
            }
            default_at = Some((d.get_ref().clone(), file.clone(), d.span()));
        }
        for site in doc.site {
            let span = site.name.span();
            let err = |what: String| at(file, text, span.clone(), format!("site {:?}: {what}", site.name.get_ref()));
            let name = site.name.get_ref().clone();
            if name.is_empty()
                || name.len() > 63
                || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                || name.starts_with('-')
            {
                return Err(err("a site's name is 1 to 63 of a-z, 0-9 and `-`, not starting with `-` (it names its folder)".into()));
            }
            if let Some(first) = names.insert(name.clone(), format!("{}", file.display())) {
                return Err(err(format!("another site has this name (in {first})")));
            }
            let mut patterns = Vec::new();
            for host in &site.hosts {
                let pattern = normalize_pattern(host.get_ref())
                    .map_err(|why| at(file, text, host.span(), format!("site {name:?}: host {:?}: {why}", host.get_ref())))?;
                if let Some(other) = hosts.insert(pattern.clone(), name.clone()) {
                    let what = if other == name { "is listed twice".to_string() } else { format!("is already claimed by site {other:?}") };
                    return Err(at(file, text, host.span(), format!("site {name:?}: host {:?} {what}; a host belongs to one site", host.get_ref())));
                }
                patterns.push(pattern);
            }
            let secret = |value: Option<String>, var: Option<String>, field: &str| -> anyhow::Result<Option<String>> {
                match (value, var) {
                    (Some(_), Some(_)) => Err(err(format!("give `{field}` or `{field}_env`, not both"))),
                    (Some(v), None) if v.trim().is_empty() => Err(err(format!("`{field}` is empty"))),
                    (Some(v), None) => Ok(Some(v)),
                    (None, Some(var)) => match env(&var) {
                        Some(v) if !v.trim().is_empty() => Ok(Some(v)),
                        _ => Err(err(format!("`{field}_env` names {var:?}, which is not set in the environment"))),
                    },
                    (None, None) => Ok(None),
                }
            };
            let primary_token = secret(site.primary_token, site.primary_token_env, "primary_token")?;
            let write_token = secret(site.write_token, site.write_token_env, "write_token")?;
            let database = match (site.local, site.primary) {
                (true, None) => {
                    if site.namespace.is_some() || primary_token.is_some() {
                        return Err(err("`namespace` and `primary_token` are for a site with a `primary`".into()));
                    }
                    Database::Local
                }
                (false, Some(url)) => {
                    let url = match url.strip_prefix("libsql://") {
                        Some(rest) => format!("https://{rest}"),
                        None => url,
                    };
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(err(format!("`primary` must start with http://, https:// or libsql:// (got {url:?})")));
                    }
                    if let Some(ns) = &site.namespace {
                        if ns.is_empty() || !ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                            return Err(err(format!("`namespace` {ns:?} may hold only letters, digits, `-` and `_`")));
                        }
                    }
                    Database::Replica { url, namespace: site.namespace, token: primary_token }
                }
                (true, Some(_)) => return Err(err("give `local = true` or `primary`, not both".into())),
                (false, None) => {
                    return Err(err(
                        "no database: give `primary = \"http://…\"` (a libSQL primary, with `namespace` for one of sqld's) \
                         or `local = true` (a file under the data directory)"
                            .into(),
                    ))
                }
            };
            let sync_interval = match site.sync_interval {
                None => None,
                Some(s) => match humantime::parse_duration(&s) {
                    Ok(d) if d >= Duration::from_millis(10) => Some(d),
                    Ok(_) => return Err(err("`sync_interval` must be at least 10ms".into())),
                    Err(e) => return Err(err(format!("`sync_interval` {s:?}: {e} (e.g. \"1s\", \"250ms\")"))),
                },
            };
            for (field, value) in [("max_files", site.max_files), ("max_bytes", site.max_bytes), ("max_file_size", site.max_file_size)] {
                if value == Some(0) {
                    return Err(err(format!("`{field}` must be at least 1 (leave it out for no limit)")));
                }
            }
            config.sites.push(SiteSpec {
                name,
                hosts: patterns,
                database,
                write_token,
                sync_interval,
                quota: Quota { max_files: site.max_files, max_bytes: site.max_bytes },
                max_file_size: site.max_file_size,
            });
        }
    }
    if let Some((name, file, span)) = default_at {
        if !names.contains_key(&name) {
            let text = &texts.iter().find(|(f, _)| *f == file).map(|(_, t)| t.as_str()).unwrap_or_default();
            return Err(at(&file, text, span, format!("`default` names {name:?}, which is no site here")));
        }
        config.default = Some(name);
    }
    let tokens: Vec<&String> = config.sites.iter().filter_map(|s| s.write_token.as_ref()).collect();
    if tokens.iter().enumerate().any(|(i, t)| tokens[..i].contains(t)) {
        anyhow::bail!("two sites have the same write_token: each site's token must be its own");
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn one(text: &str) -> anyhow::Result<SitesConfig> {
        parse(&[(PathBuf::from("sites.toml"), text.to_string())], &no_env)
    }

    fn refused(text: &str) -> String {
        format!("{:#}", one(text).unwrap_err())
    }

    #[test]
    fn sites_are_read_with_their_hosts_databases_and_limits() {
        let config = one(
            r#"
default = "docs"

[[site]]
name = "docs"
hosts = ["Docs.Example.com.", "*.docs.example.com"]
local = true
write_token = "t1"
max_files = 100
max_bytes = 1000000

[[site]]
name = "blog"
hosts = ["blog.example.com"]
primary = "libsql://blog.turso.io"
namespace = "blog"
sync_interval = "250ms"
max_file_size = 1024
"#,
        )
        .unwrap();
        assert_eq!(config.default.as_deref(), Some("docs"));
        let docs = &config.sites[0];
        assert_eq!(docs.hosts, vec![Pattern::Exact("docs.example.com".into()), Pattern::Wildcard("docs.example.com".into())]);
        assert_eq!(docs.database, Database::Local);
        assert_eq!(docs.quota, Quota { max_files: Some(100), max_bytes: Some(1_000_000) });
        let blog = &config.sites[1];
        assert_eq!(
            blog.database,
            Database::Replica { url: "https://blog.turso.io".into(), namespace: Some("blog".into()), token: None }
        );
        assert_eq!(blog.sync_interval, Some(Duration::from_millis(250)));
        assert_eq!(blog.max_file_size, Some(1024));
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        let two = refused("[[site]]\nname = \"a\"\nhosts = [\"x.com\"]\nlocal = true\n[[site]]\nname = \"b\"\nhosts = [\"X.com\"]\nlocal = true\n");
        assert!(two.contains("line 7") && two.contains("already claimed by site \"a\""), "{two}");
        let none = refused("[[site]]\nname = \"a\"\nhosts = [\"x.com\"]\n");
        assert!(none.contains("line 2") && none.contains("no database"), "{none}");
        let nan = refused("[[site]]\nname = \"a\"\nlocal = true\nmax_bytes = \"lots\"\n");
        assert!(nan.contains("line 4") && nan.contains("max_bytes"), "{nan}");
        let port = refused("[[site]]\nname = \"a\"\nhosts = [\"x.com:8080\"]\nlocal = true\n");
        assert!(port.contains("line 3") && port.contains("port"), "{port}");
        let name = refused("[[site]]\nname = \"A B\"\nlocal = true\n");
        assert!(name.contains("name"), "{name}");
        let dup = refused("[[site]]\nname = \"a\"\nlocal = true\n[[site]]\nname = \"a\"\nlocal = true\n");
        assert!(dup.contains("line 5") && dup.contains("another site has this name"), "{dup}");
        let default = refused("default = \"zz\"\n[[site]]\nname = \"a\"\nlocal = true\n");
        assert!(default.contains("line 1") && default.contains("no site here"), "{default}");
        let unknown = refused("[[site]]\nname = \"a\"\nlocal = true\nmax_file = 3\n");
        assert!(unknown.contains("max_file"), "{unknown}");
        let env = refused("[[site]]\nname = \"a\"\nlocal = true\nwrite_token_env = \"NOPE_NOT_SET\"\n");
        assert!(env.contains("NOPE_NOT_SET"), "{env}");
        let same = refused("[[site]]\nname = \"a\"\nlocal = true\nwrite_token = \"t\"\n[[site]]\nname = \"b\"\nlocal = true\nwrite_token = \"t\"\n");
        assert!(same.contains("same write_token"), "{same}");
    }

    #[test]
    fn tokens_come_from_the_environment_when_asked() {
        let env = |name: &str| (name == "DOCS_TOKEN").then(|| "from-env".to_string());
        let text = "[[site]]\nname = \"a\"\nlocal = true\nwrite_token_env = \"DOCS_TOKEN\"\n";
        let config = parse(&[(PathBuf::from("s.toml"), text.into())], &env).unwrap();
        assert_eq!(config.sites[0].write_token.as_deref(), Some("from-env"));
    }
}
