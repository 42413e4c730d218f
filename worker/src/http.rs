//! HTTP header grammar the core needs (RFC 9110): entity tags, dates, byte
//! ranges and content-coding negotiation. Pure functions over strings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One entity tag from a header list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    pub weak: bool,
    /// The opaque tag, without quotes.
    pub tag: String,
}

/// A parsed `If-Match`/`If-None-Match` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagList {
    Any,
    Tags(Vec<EntityTag>),
}

/// Parses an entity-tag list (`*`, or `"a", W/"b"`). None when malformed;
/// callers treat a malformed precondition as failing to match.
pub fn parse_tag_list(value: &str) -> Option<TagList> {
    let value = value.trim();
    if value == "*" {
        return Some(TagList::Any);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let weak = rest.starts_with("W/");
        if weak {
            rest = &rest[2..];
        }
        let inner = rest.strip_prefix('"')?;
        let end = inner.find('"')?;
        let tag = &inner[..end];
        if tag.bytes().any(|b| b < 0x21 || b == 0x7f) {
            return None;
        }
        tags.push(EntityTag { weak, tag: tag.to_string() });
        rest = &inner[end + 1..];
        let trimmed = rest.trim_start();
        if !trimmed.is_empty() && !trimmed.starts_with(',') {
            return None;
        }
    }
    if tags.is_empty() {
        None
    } else {
        Some(TagList::Tags(tags))
    }
}

impl TagList {
    /// Strong comparison (If-Match): weak tags never match.
    pub fn matches_strong(&self, current: &[&str]) -> bool {
        match self {
            TagList::Any => !current.is_empty(),
            TagList::Tags(tags) => tags.iter().any(|t| !t.weak && current.contains(&t.tag.as_str())),
        }
    }

    /// Weak comparison (If-None-Match): the W/ prefix is ignored.
    pub fn matches_weak(&self, current: &[&str]) -> bool {
        match self {
            TagList::Any => !current.is_empty(),
            TagList::Tags(tags) => tags.iter().any(|t| current.contains(&t.tag.as_str())),
        }
    }
}

/// Seconds since the epoch of an HTTP date, None when it is not one.
pub fn parse_date(value: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(value.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

pub fn fmt_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Current time, for `Date`-like comparisons in tests.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One satisfiable byte range, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// Malformed, another unit, or too many ranges: serve the whole
    /// representation, as RFC 9110 section 14.2 allows.
    Ignore,
    /// No range overlaps the representation: 416.
    Unsatisfiable,
    /// The satisfiable ranges, in request order.
    Ranges(Vec<ByteRange>),
}

/// More ranges than this in one request are ignored (a defence against
/// requests that ask for the same bytes many times over).
pub const MAX_RANGES: usize = 16;

pub fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignore;
    };
    let specs: Vec<&str> = spec.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if specs.is_empty() || specs.len() > MAX_RANGES {
        return RangeRequest::Ignore;
    }
    let mut ranges = Vec::new();
    for s in specs {
        let Some((a, b)) = s.split_once('-') else { return RangeRequest::Ignore };
        let num = |x: &str| -> Option<u64> {
            if x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()) {
                None
            } else {
                x.parse().ok()
            }
        };
        let range = match (a.is_empty(), b.is_empty()) {
            // `-n`: the last n bytes.
            (true, false) => {
                let Some(n) = num(b) else { return RangeRequest::Ignore };
                (n > 0 && len > 0).then(|| ByteRange { start: len.saturating_sub(n), end: len - 1 })
            }
            // `a-`: from a to the end.
            (false, true) => {
                let Some(start) = num(a) else { return RangeRequest::Ignore };
                (start < len).then(|| ByteRange { start, end: len - 1 })
            }
            (false, false) => {
                let (Some(start), Some(end)) = (num(a), num(b)) else { return RangeRequest::Ignore };
                if end < start {
                    return RangeRequest::Ignore;
                }
                (start < len).then(|| ByteRange { start, end: end.min(len - 1) })
            }
            (true, true) => return RangeRequest::Ignore,
        };
        ranges.extend(range);
    }
    if ranges.is_empty() {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Ranges(coalesce(ranges))
    }
}

/// Ranges that overlap or touch are merged (RFC 9110 section 14.2 allows
/// it), so a request never costs more than the representation itself:
/// sixteen `0-` ranges are one. Ranges that stand apart keep the order the
/// client asked for.
fn coalesce(mut ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    let mut sorted = ranges.clone();
    sorted.sort_by_key(|r| r.start);
    let apart = sorted.windows(2).all(|w| w[0].end.saturating_add(1) < w[1].start);
    if apart {
        return ranges;
    }
    ranges.clear();
    for r in sorted {
        match ranges.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(1) => last.end = last.end.max(r.end),
            _ => ranges.push(r),
        }
    }
    ranges
}

/// Picks the content coding to send from `available` (name, size) pairs;
/// `identity` is always available with size `identity_size`. None when the
/// client accepts none of them (406).
pub fn negotiate_encoding(accept: Option<&str>, available: &[(String, u64)], identity_size: u64) -> Option<String> {
    let Some(accept) = accept else {
        // No Accept-Encoding: send the body as stored.
        return Some("identity".to_string());
    };
    let mut prefs: Vec<(String, f32)> = Vec::new();
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        if coding.is_empty() {
            continue;
        }
        let mut q = 1.0;
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")) {
                q = v.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)).unwrap_or(0.0);
            }
        }
        prefs.push((coding, q));
    }
    let q_of = |coding: &str| -> f32 {
        if let Some((_, q)) = prefs.iter().find(|(c, _)| c == coding || (coding == "gzip" && c == "x-gzip")) {
            return *q;
        }
        if let Some((_, q)) = prefs.iter().find(|(c, _)| c == "*") {
            return *q;
        }
        // identity is acceptable unless excluded, but any coding the client
        // listed is preferred to it.
        if coding == "identity" {
            0.001
        } else {
            0.0
        }
    };
    let mut best: Option<(String, f32, u64)> = None;
    let candidates = available.iter().map(|(n, s)| (n.as_str(), *s)).chain(std::iter::once(("identity", identity_size)));
    for (name, size) in candidates {
        let q = q_of(name);
        if q <= 0.0 {
            continue;
        }
        let better = match &best {
            None => true,
            Some((_, bq, bs)) => q > *bq || (q == *bq && size < *bs),
        };
        if better {
            best = Some((name.to_string(), q, size));
        }
    }
    best.map(|(n, _, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn tag_lists() {
        assert_eq!(parse_tag_list("*"), Some(TagList::Any));
        let l = parse_tag_list(r#""a", W/"b" ,"c""#).unwrap();
        assert!(l.matches_strong(&["a"]));
        assert!(!l.matches_strong(&["b"]));
        assert!(l.matches_weak(&["b"]));
        assert!(!l.matches_weak(&["d"]));
        assert_eq!(parse_tag_list("abc"), None);
        assert_eq!(parse_tag_list(r#""unterminated"#), None);
        assert_eq!(parse_tag_list(r#""a" junk"#), None);
        assert!(TagList::Any.matches_weak(&["x"]));
        assert!(!TagList::Any.matches_weak(&[]));
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("Tue, 14 Nov 2023 22:13:20 GMT"), Some(1_700_000_000));
        assert_eq!(parse_date("yesterday"), None);
        assert_eq!(fmt_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeRequest::Ranges(vec![r(0, 9)]));
        assert_eq!(parse_range("bytes=90-", 100), RangeRequest::Ranges(vec![r(90, 99)]));
        assert_eq!(parse_range("bytes=-10", 100), RangeRequest::Ranges(vec![r(90, 99)]));
        assert_eq!(parse_range("bytes=-500", 100), RangeRequest::Ranges(vec![r(0, 99)]));
        assert_eq!(parse_range("bytes=50-500", 100), RangeRequest::Ranges(vec![r(50, 99)]));
        assert_eq!(parse_range("bytes=0-0,-1", 100), RangeRequest::Ranges(vec![r(0, 0), r(99, 99)]));
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=200-300,0-1", 100), RangeRequest::Ranges(vec![r(0, 1)]));
        for bad in ["bytes=5-1", "bytes=a-b", "items=0-1", "bytes=", "bytes=-", "bytes=1", "bytes=+1-2", "0-1"] {
            assert_eq!(parse_range(bad, 100), RangeRequest::Ignore, "{bad}");
        }
        let many = format!("bytes={}", vec!["0-1"; MAX_RANGES + 1].join(","));
        assert_eq!(parse_range(&many, 100), RangeRequest::Ignore);
    }

    #[test]
    fn overlapping_ranges_are_merged_and_apart_ones_kept_in_order() {
        let r = |start, end| ByteRange { start, end };
        let sixteen = format!("bytes={}", vec!["0-"; MAX_RANGES].join(","));
        assert_eq!(parse_range(&sixteen, 100), RangeRequest::Ranges(vec![r(0, 99)]));
        assert_eq!(parse_range("bytes=50-59,0-9", 100), RangeRequest::Ranges(vec![r(50, 59), r(0, 9)]));
        assert_eq!(parse_range("bytes=50-59,0-9,5-52", 100), RangeRequest::Ranges(vec![r(0, 59)]));
        assert_eq!(parse_range("bytes=0-9,10-19", 100), RangeRequest::Ranges(vec![r(0, 19)]));
        assert_eq!(parse_range("bytes=-10,0-", 100), RangeRequest::Ranges(vec![r(0, 99)]));
    }

    #[test]
    fn encodings() {
        let avail = vec![("br".to_string(), 10), ("gzip".to_string(), 12), ("zstd".to_string(), 11)];
        let pick = |a: Option<&str>| negotiate_encoding(a, &avail, 100);
        assert_eq!(pick(None).as_deref(), Some("identity"));
        assert_eq!(pick(Some("gzip, deflate, br, zstd")).as_deref(), Some("br"));
        assert_eq!(pick(Some("gzip")).as_deref(), Some("gzip"));
        assert_eq!(pick(Some("br;q=0.5, gzip;q=0.9")).as_deref(), Some("gzip"));
        assert_eq!(pick(Some("zstd, gzip")).as_deref(), Some("zstd"));
        assert_eq!(pick(Some("*")).as_deref(), Some("br"));
        assert_eq!(pick(Some("br;q=0, *;q=0.1")).as_deref(), Some("zstd"));
        assert_eq!(pick(Some("identity")).as_deref(), Some("identity"));
        assert_eq!(pick(Some("deflate")).as_deref(), Some("identity"));
        assert_eq!(pick(Some("identity;q=0")), None);
        assert_eq!(pick(Some("gzip;q=1, identity;q=0")).as_deref(), Some("gzip"));
        assert_eq!(pick(Some("*;q=0")), None);
        assert_eq!(negotiate_encoding(Some("identity;q=0"), &[], 5), None);
        assert_eq!(pick(Some("gzip;q=bogus")).as_deref(), Some("identity"));
    }
}
