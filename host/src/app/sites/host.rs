//! Which site a request is for: its host (the `Host` header, or the h2
//! `:authority`), compared without its port, without a trailing dot and in
//! lower case, against each site's names: exact ones first, then
//! `*.example.com` wildcards (any depth below it, the longest suffix wins).

use std::collections::HashMap;

/// A host a site answers, as written in the sites file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    Exact(String),
    /// `*.example.com`, kept as `example.com`.
    Wildcard(String),
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(h) => f.write_str(h),
            Pattern::Wildcard(h) => write!(f, "*.{h}"),
        }
    }
}

/// A name made of DNS labels (letters, digits, `-`, `_`), or an IP address.
fn check_name(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("it is empty");
    }
    if host.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must be 1 to 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("a host holds only letters, digits, `-`, `_` and dots");
        }
    }
    Ok(())
}

/// A host from the sites file: lower case, no trailing dot; `*.` may lead.
pub fn normalize_pattern(raw: &str) -> Result<Pattern, String> {
    let lower = raw.trim().to_ascii_lowercase();
    let host = lower.strip_suffix('.').unwrap_or(&lower);
    if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err("a host has no port here: a site answers on every port the server listens on".into());
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if name.contains('*') {
        return Err("`*` may only lead a host, as in `*.example.com`".into());
    }
    check_name(name).map_err(|why| format!("not a host name: {why}"))?;
    Ok(if wild { Pattern::Wildcard(name.to_string()) } else { Pattern::Exact(name.to_string()) })
}

/// A request's host as sites are looked up by: no port, no trailing dot,
/// lower case; `[::1]` for an IPv6 address. `Err` for what is no host.
pub fn normalize_request_host(raw: &str) -> Result<String, &'static str> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6] or [v6]:port
        let (addr, after) = rest.split_once(']').ok_or("an IPv6 host is written [address]")?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))) {
            return Err("what follows an IPv6 host is not a port");
        }
        addr.parse::<std::net::Ipv6Addr>().map_err(|_| "not an IPv6 address")?;
        return Ok(format!("[{}]", addr.to_ascii_lowercase()));
    } else {
        match raw.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return Err("what follows the host's `:` is not a port"),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    check_name(&host)?;
    Ok(host)
}

/// Hosts to sites (by index).
#[derive(Debug, Default)]
pub struct HostTable {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl HostTable {
    pub fn insert(&mut self, pattern: &Pattern, site: usize) {
        match pattern {
            Pattern::Exact(h) => self.exact.insert(h.clone(), site),
            Pattern::Wildcard(h) => self.wildcard.insert(h.clone(), site),
        };
    }

    /// The site for a normalised host.
    pub fn find(&self, host: &str) -> Option<usize> {
        if let Some(site) = self.exact.get(host) {
            return Some(*site);
        }
        // a.b.example.com: *.b.example.com, then *.example.com, then *.com.
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(site) = self.wildcard.get(suffix) {
                return Some(*site);
            }
            rest = suffix;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(normalize_request_host("Docs.Example.COM:8080").unwrap(), "docs.example.com");
        assert_eq!(normalize_request_host("docs.example.com.").unwrap(), "docs.example.com");
        assert_eq!(normalize_request_host("docs.example.com.:443").unwrap(), "docs.example.com");
        assert_eq!(normalize_request_host("127.0.0.1:80").unwrap(), "127.0.0.1");
        assert_eq!(normalize_request_host("[::1]:8080").unwrap(), "[::1]");
        assert!(normalize_request_host("").is_err());
        assert!(normalize_request_host("a b").is_err());
        assert!(normalize_request_host("x.com:port").is_err());
        assert!(normalize_request_host("a..b").is_err());
        assert!(normalize_request_host("[::1").is_err());
    }

    #[test]
    fn exact_names_win_then_the_longest_wildcard() {
        let mut t = HostTable::default();
        t.insert(&normalize_pattern("*.example.com").unwrap(), 0);
        t.insert(&normalize_pattern("*.docs.example.com").unwrap(), 1);
        t.insert(&normalize_pattern("Exact.Docs.Example.com").unwrap(), 2);
        assert_eq!(t.find("exact.docs.example.com"), Some(2));
        assert_eq!(t.find("v2.docs.example.com"), Some(1));
        assert_eq!(t.find("a.b.docs.example.com"), Some(1));
        assert_eq!(t.find("blog.example.com"), Some(0));
        assert_eq!(t.find("example.com"), None);
        assert_eq!(t.find("other.org"), None);
    }

    #[test]
    fn patterns_refuse_ports_and_inner_stars() {
        assert!(normalize_pattern("x.com:80").is_err());
        assert!(normalize_pattern("a.*.com").is_err());
        assert!(normalize_pattern("").is_err());
        assert_eq!(normalize_pattern("X.COM.").unwrap(), Pattern::Exact("x.com".into()));
    }
}
