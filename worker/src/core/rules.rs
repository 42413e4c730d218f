//! The site rules a request is served by: defaults when none were set, and
//! each version of the document parsed once by whoever keeps the cache (the
//! wasm entry point keeps one for the life of an instance).

use super::{error_response, Response, Store};
use crate::site::SiteRules;
use std::rc::Rc;

/// The last site document parsed, and its rules.
#[derive(Default)]
pub struct RulesCache(Option<(String, Rc<SiteRules>)>);

impl RulesCache {
    /// The rules for the store's current document.
    pub fn load(&mut self, store: &mut impl Store) -> Result<Rc<SiteRules>, Response> {
        match store.site_config() {
            Ok(None) => Ok(Rc::new(SiteRules::default())),
            Ok(Some(json)) => Ok(match &self.0 {
                Some((seen, rules)) if *seen == json => rules.clone(),
                _ => {
                    // Validated when written; a document that no longer
                    // parses (written by another version) must not take the
                    // site down: use defaults.
                    let rules = Rc::new(SiteRules::parse(&json).unwrap_or_default());
                    self.0 = Some((json, rules.clone()));
                    rules
                }
            }),
            Err(e) => Err(error_response(e)),
        }
    }
}
