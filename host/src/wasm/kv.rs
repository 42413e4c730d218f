//! The `turserver:store/kv` host side: key-value entries for workers. A
//! worker is the site's own code, so its calls are not checked against the
//! request's token (the HTTP API at `/_api/kv` is). What a worker reads
//! makes its cached response stale when the entry changes or expires.

use super::bindings::files::Error;
use super::bindings::kv::{self, Entry, Expectation};
use super::files::{to_wit, FilesError, FilesView};
use crate::store::{validate_key, KvExpect, KV_PATH_PREFIX, MAX_KEYS_PAGE};

type HostResult<T> = Result<T, FilesError>;

fn expect(e: Option<Expectation>) -> Option<KvExpect> {
    e.map(|e| match e {
        Expectation::Absent => KvExpect::Absent,
        Expectation::Present => KvExpect::Present,
        Expectation::Version(v) => KvExpect::Version(v),
    })
}

fn checked(key: &str) -> Result<(), Error> {
    validate_key(key).map_err(Error::Invalid)
}

impl kv::Host for FilesView<'_> {
    async fn get(&mut self, key: String) -> HostResult<Option<Entry>> {
        let _progress = self.progressed();
        checked(&key)?;
        let entry = self.ctx.store.kv_get(&key).await.map_err(|e| to_wit("kv get", e))?;
        let expires = entry.as_ref().and_then(|e| e.expires_at);
        self.ctx.note_read(|r| r.read_entry(format!("{KV_PATH_PREFIX}{key}"), expires));
        Ok(entry.map(|e| Entry {
            value: e.value,
            content_type: e.content_type,
            version: e.version,
            expires: e.expires_at.map(|t| t.max(0) as u64),
        }))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        content_type: Option<String>,
        ttl: Option<u64>,
        expectation: Option<Expectation>,
    ) -> HostResult<u64> {
        let _progress = self.progressed();
        checked(&key)?;
        match &content_type {
            None if serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_err() => {
                return Err(Error::Invalid("a value without a content type must be JSON".into()).into())
            }
            Some(ct) if !turserver_protocol::valid_media_type(ct) => {
                return Err(Error::Invalid("the content type cannot be stored".into()).into())
            }
            _ => {}
        }
        if ttl == Some(0) {
            return Err(Error::Invalid("ttl must be at least 1 second".into()).into());
        }
        let written = self.ctx.store.kv_put(&key, value, content_type.as_deref(), ttl, expect(expectation).as_ref()).await;
        Ok(written.map_err(|e| to_wit("kv set", e))?.0)
    }

    async fn delete(&mut self, key: String, expectation: Option<Expectation>) -> HostResult<bool> {
        let _progress = self.progressed();
        checked(&key)?;
        Ok(self.ctx.store.kv_delete(&key, expect(expectation).as_ref()).await.map_err(|e| to_wit("kv delete", e))?)
    }

    async fn list_keys(&mut self, prefix: String, cursor: Option<String>, limit: u32) -> HostResult<(Vec<String>, Option<String>)> {
        let _progress = self.progressed();
        self.ctx.note_read(|r| r.listed = true);
        let limit = limit.clamp(1, MAX_KEYS_PAGE);
        let (entries, next) =
            self.ctx.store.kv_list(&prefix, cursor.as_deref(), limit).await.map_err(|e| to_wit("kv list", e))?;
        Ok((entries.into_iter().map(|e| e.key).collect(), next))
    }
}
