//! Properties of the parsers that see untrusted input, checked on generated
//! inputs (proptest, stable Rust): not only that nothing panics, but what
//! each promises. `PROPTEST_CASES` sets how many inputs each property gets
//! (256 by default; the README gives a longer run).

use crate::core::{read_batch, BatchSink, StoreError};
use crate::http::{self, RangeRequest};
use crate::path;
use crate::site::SiteRules;
use proptest::prelude::*;

/// Text that mixes what paths, headers and JSON are made of with any char.
fn messy(max: usize) -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("/".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2F".to_string()),
        Just("%".to_string()),
        Just("\\".to_string()),
        Just("\0".to_string()),
        "[a-z0-9_-]{1,4}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..max).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn normalised_paths_never_escape(raw in messy(24)) {
        if let Ok(p) = path::normalise(&format!("/{raw}")) {
            prop_assert!(!p.path.starts_with('/') && !p.path.ends_with('/'));
            for segment in p.path.split('/').filter(|_| !p.path.is_empty()) {
                prop_assert!(!segment.is_empty() && segment != "." && segment != "..", "{:?}", p.path);
            }
            prop_assert!(!p.path.chars().any(|c| c.is_control() || c == '\\'), "{:?}", p.path);
            prop_assert!(p.path.len() <= path::MAX_PATH_BYTES);
            // The encoded form names the same file.
            let again = path::normalise(&format!("/{}", path::encode(&p.path))).unwrap();
            prop_assert_eq!(again.path, p.path);
        }
    }

    #[test]
    fn ranges_stay_inside_the_representation(
        specs in prop::collection::vec((prop::option::of(0u64..300), prop::option::of(0u64..300)), 1..20),
        len in 0u64..250,
    ) {
        let text = specs.iter().map(|(a, b)| {
            format!("{}-{}", a.map(|n| n.to_string()).unwrap_or_default(), b.map(|n| n.to_string()).unwrap_or_default())
        }).collect::<Vec<_>>().join(",");
        if let RangeRequest::Ranges(ranges) = http::parse_range(&format!("bytes={text}"), len) {
            prop_assert!(!ranges.is_empty());
            let total: u64 = ranges.iter().map(|r| r.len()).sum();
            prop_assert!(total <= len, "{text}: {total} bytes of {len}");
            for r in &ranges {
                prop_assert!(r.start <= r.end && r.end < len, "{text}: {r:?}");
            }
        }
    }

    #[test]
    fn any_range_header_is_handled(value in messy(16), len in 0u64..1000) {
        let _ = http::parse_range(&value, len);
    }

    #[test]
    fn conditional_headers_never_match_what_is_not_there(value in messy(16)) {
        if let Some(list) = http::parse_tag_list(&value) {
            prop_assert!(!list.matches_strong(&[]) || value.trim() == "*");
        }
        let _ = http::parse_date(&value);
    }

    #[test]
    fn negotiation_picks_a_stored_coding(accept in messy(12), br in any::<bool>()) {
        let available = if br { vec![("br".to_string(), 10)] } else { vec![] };
        if let Some(coding) = http::negotiate_encoding(Some(&accept), &available, 100) {
            prop_assert!(coding == "identity" || available.iter().any(|(c, _)| *c == coding), "{coding}");
        }
    }

    #[test]
    fn accepted_site_rules_survive_their_own_round_trip(json in messy(40)) {
        if let Ok(rules) = SiteRules::parse(&json) {
            let canonical = serde_json::to_string(&rules).unwrap();
            prop_assert_eq!(SiteRules::parse(&canonical).unwrap(), rules);
        }
    }

    #[test]
    fn a_batch_is_all_or_nothing(
        entries in prop::collection::vec((prop_oneof![Just("ok"), Just("../up"), Just("_api/x"), Just("a/b.txt")], 0usize..3000), 1..6),
    ) {
        let tar = {
            let mut b = ::tar::Builder::new(Vec::new());
            for (i, (name, size)) in entries.iter().enumerate() {
                let name = format!("{name}{i}");
                let mut h = ::tar::Header::new_gnu();
                h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_size(*size as u64);
                h.set_mode(0o644);
                h.set_entry_type(::tar::EntryType::Regular);
                h.set_cksum();
                b.append(&h, &vec![7u8; *size][..]).unwrap();
            }
            b.into_inner().unwrap()
        };
        let mut sink = Recorder::default();
        let result = read_batch(&tar[..], &mut sink, &mut [0u8; 512]);
        let all_good = entries.iter().all(|(n, _)| !n.starts_with("..") && !n.starts_with("_api"));
        prop_assert_eq!(result.is_ok(), all_good);
        if all_good {
            prop_assert_eq!(sink.0.len(), entries.len());
            for ((_, size), (_, got)) in entries.iter().zip(&sink.0) {
                prop_assert_eq!(*size, *got);
            }
        }
    }

    #[test]
    fn any_bytes_as_a_batch_are_refused_or_read(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = read_batch(&bytes[..], &mut Recorder::default(), &mut [0u8; 64]);
    }
}

/// What a batch received: each file's path and size.
#[derive(Default)]
struct Recorder(Vec<(String, usize)>);

impl BatchSink for Recorder {
    fn add(&mut self, path: &str, _content_type: &str) -> Result<(), StoreError> {
        self.0.push((path.to_string(), 0));
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.0.last_mut().unwrap().1 += bytes.len();
        Ok(())
    }
    fn remove(&mut self, _path: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
