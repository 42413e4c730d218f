//! The host side of `turserver:store/files`: what a worker instance may do
//! to the store during one request.
//!
//! Write access is decided by the server from the request's bearer token
//! before the worker runs (the header is removed, so the token never enters
//! guest memory); here it gates the writes, path by path for a signed
//! token's rules: `begin-upload` and a batch's `add` need `write` on the
//! path, `delete` and a batch's `remove` need `delete`, `set-site-config`
//! the write token itself.

use super::bindings::files::{self, Encoded, Error, Expectation, Listing, Metadata, Written};
use super::instance::Progress;
use crate::http::tokens::Action;
use crate::http::{Refusal, WriteAccess};
use crate::store::{Batch, Expect, FileMeta, LimitExceeded, QueuedUpload, Reads, Store, StoreError, Upload};
use turserver_worker::site::SiteRules;
use std::sync::Arc;
use wasmtime::component::{Resource, ResourceTable, ResourceTableError};
use wasmtime_wasi::p2::{DynOutputStream, StreamError};

/// What a host function fails with: a store failure the worker sees as its
/// `error`, or a host bug (a lost resource, a misused stream) that traps.
pub enum FilesError {
    Store(Error),
    Trap(wasmtime::Error),
}

impl From<Error> for FilesError {
    fn from(e: Error) -> Self {
        FilesError::Store(e)
    }
}

impl From<ResourceTableError> for FilesError {
    fn from(e: ResourceTableError) -> Self {
        FilesError::Trap(e.into())
    }
}

impl FilesError {
    /// The error the caller sees, or the trap.
    pub fn into_result(self) -> wasmtime::Result<Error> {
        match self {
            FilesError::Store(e) => Ok(e),
            FilesError::Trap(e) => Err(e),
        }
    }
}

impl From<Error> for turserver_protocol::Error {
    fn from(e: Error) -> Self {
        use turserver_protocol::Error as W;
        match e {
            Error::NotFound => W::NotFound,
            Error::Unauthorized => W::Unauthorized,
            Error::Forbidden => W::Forbidden,
            Error::TooLarge(n) => W::TooLarge(n),
            Error::PreconditionFailed => W::PreconditionFailed,
            Error::Invalid(s) => W::Invalid(s),
            Error::Unavailable(s) => W::Unavailable(s),
            Error::Internal(s) => W::Internal(s),
        }
    }
}

impl From<turserver_protocol::Error> for Error {
    fn from(e: turserver_protocol::Error) -> Self {
        use turserver_protocol::Error as W;
        match e {
            W::NotFound => Error::NotFound,
            W::Unauthorized => Error::Unauthorized,
            W::Forbidden => Error::Forbidden,
            W::TooLarge(n) => Error::TooLarge(n),
            W::PreconditionFailed => Error::PreconditionFailed,
            W::Invalid(s) => Error::Invalid(s),
            W::Unavailable(s) => Error::Unavailable(s),
            W::Internal(s) => Error::Internal(s),
        }
    }
}

impl From<turserver_protocol::Expectation> for Expectation {
    fn from(e: turserver_protocol::Expectation) -> Self {
        match e {
            turserver_protocol::Expectation::Absent => Expectation::Absent,
            turserver_protocol::Expectation::Hash(h) => Expectation::Hash(h),
        }
    }
}

/// The site rules as this edge last read them, for the host's own checks
/// (private files); read again once the store has changed.
#[derive(Default)]
pub struct SiteRulesCache {
    cached: std::sync::Mutex<Option<(u64, Arc<SiteRules>)>>,
}

impl SiteRulesCache {
    pub async fn rules(&self, store: &Store) -> Result<Arc<SiteRules>, StoreError> {
        let generation = store.generation();
        if let Some((g, rules)) = &*self.cached.lock().unwrap_or_else(|e| e.into_inner()) {
            if *g == generation {
                return Ok(rules.clone());
            }
        }
        let doc = store.site_config(SITE_KEY).await?;
        let rules = Arc::new(doc.map(|d| SiteRules::parse(&d).unwrap_or_default()).unwrap_or_default());
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, rules.clone()));
        Ok(rules)
    }
}

/// Per-request view of the store.
pub struct FilesCtx {
    pub store: Arc<Store>,
    pub site: Arc<SiteRulesCache>,
    pub access: WriteAccess,
    pub max_upload: u64,
    /// Store calls count as progress for the instance's deadline.
    pub progress: Option<Arc<Progress>>,
    /// What the worker read, when its response may be cached: the entry
    /// goes stale when one of these paths changes.
    pub reads: Option<Arc<std::sync::Mutex<Reads>>>,
    /// Set when a write was refused for passing one of the site's limits,
    /// so the host can answer with the limit's name whatever the worker
    /// made of it.
    pub limit_refused: Option<Arc<std::sync::OnceLock<LimitExceeded>>>,
    /// Where a write queued while the primary is away is noted (its queue
    /// entry), so the host answers 202 with its status URL; none where
    /// writes are never queued.
    pub queued: Option<Arc<std::sync::OnceLock<i64>>>,
}

/// Marks progress when a store call starts and again when it ends, so a
/// slow database never counts against the worker's deadline.
pub(super) struct ProgressGuard(Option<Arc<Progress>>);

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            p.touch();
        }
    }
}

impl FilesView<'_> {
    pub(super) fn progressed(&self) -> ProgressGuard {
        if let Some(p) = &self.ctx.progress {
            p.touch();
        }
        ProgressGuard(self.ctx.progress.clone())
    }
}

/// An upload resource; `None` once finished.
pub struct UploadHandle(Option<Uploading>);

/// An upload to the primary, or one kept in the write queue while the
/// primary is away.
enum Uploading {
    Direct(Upload),
    Queued(QueuedUpload),
}

impl Uploading {
    fn path(&self) -> &str {
        match self {
            Uploading::Direct(u) => u.path(),
            Uploading::Queued(u) => u.path(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        match self {
            Uploading::Direct(u) => u.write(bytes).await,
            Uploading::Queued(u) => u.write(bytes).await,
        }
    }

    /// The file written, whether it is new, and its queue entry if queued.
    async fn finish(self) -> Result<(FileMeta, bool, Option<i64>), StoreError> {
        match self {
            Uploading::Direct(u) => u.finish().await.map(|(meta, created)| (meta, created, None)),
            Uploading::Queued(u) => u.finish().await.map(|(meta, created, id)| (meta, created, Some(id))),
        }
    }

    async fn abort(self) {
        match self {
            Uploading::Direct(u) => u.abort().await,
            Uploading::Queued(u) => u.abort().await,
        }
    }
}

/// A batch resource; `None` once committed.
pub struct BatchHandle(Option<Batch>);

/// The parts of the per-request state the `files` interface needs.
pub struct FilesView<'a> {
    pub ctx: &'a mut FilesCtx,
    pub table: &'a mut ResourceTable,
}

fn refused(r: Refusal) -> Error {
    match r {
        Refusal::Unauthorized => Error::Unauthorized,
        Refusal::Forbidden => Error::Forbidden,
    }
}

impl FilesCtx {
    /// `write`, recording a refusal for passing a limit in
    /// [`FilesCtx::limit_refused`].
    fn noting_limits<T>(
        &self,
        write: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> {
        let cell = self.limit_refused.clone();
        async move {
            let result = write.await;
            if let (Err(StoreError::LimitExceeded(l)), Some(cell)) = (&result, cell) {
                let _ = cell.set(l.clone());
            }
            result
        }
    }

    /// The write queue, when this request's writes go to it now.
    fn queue(&self) -> Option<&Arc<crate::store::WriteQueue>> {
        self.queued.as_ref()?;
        self.store.queue_for_writes()
    }

    /// Records something the worker read, when its response may be cached.
    pub(super) fn note_read(&self, note: impl FnOnce(&mut Reads)) {
        if let Some(reads) = &self.reads {
            note(&mut reads.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Whether the request may write (or delete) somewhere; each path is
    /// checked again when it is named.
    fn check_write(&self) -> Result<(), Error> {
        self.access.check_any(Action::Write).or_else(|_| self.access.check_any(Action::Delete)).map_err(refused)
    }

    /// Whether the request may read `path`: anyone may, unless the site
    /// rules make it private.
    async fn check_read(&self, path: &str) -> Result<(), Error> {
        let rules = self.site.rules(&self.store).await.map_err(|e| to_wit("site config", e))?;
        if rules.is_private(path) {
            return self.access.check(Action::Read, path).map_err(refused);
        }
        Ok(())
    }

    /// A path the host accepts (workers are untrusted), then whether the
    /// request may do `action` there.
    fn check(&self, action: Action, path: &str) -> Result<(), Error> {
        // Unauthorized first: a request without credentials learns nothing
        // of which paths are valid.
        if self.access == WriteAccess::Missing {
            return Err(Error::Unauthorized);
        }
        crate::store::validate_path(path).map_err(Error::Invalid)?;
        self.access.check(action, path).map_err(|r| {
            if let WriteAccess::Scoped(grant) = &self.access {
                tracing::info!(sub = %grant.subject, path, ?action, "the token's rules do not allow this");
            }
            refused(r)
        })
    }
}

/// A media type the store keeps and later sends as `Content-Type`.
fn check_media_type(content_type: &str) -> Result<(), Error> {
    if turserver_protocol::valid_media_type(content_type) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "bad content type {content_type:?}: 1 to {} bytes of visible ASCII",
        turserver_protocol::MAX_MEDIA_TYPE
    )))
}

/// Maps a store failure to what the worker sees, logging the cause first.
pub fn to_wit(op: &'static str, err: StoreError) -> Error {
    match err {
        StoreError::TooLarge(limit) => Error::TooLarge(limit),
        // The worker answers 413; the host names the limit (see
        // `FilesCtx::limit_refused`).
        StoreError::LimitExceeded(l) => Error::TooLarge(l.max),
        StoreError::PreconditionFailed => Error::PreconditionFailed,
        StoreError::Invalid(why) => Error::Invalid(why),
        e @ StoreError::Unavailable { .. } => {
            tracing::warn!(cause = %format!("{:#}", anyhow::Error::new(e)), op, "store unavailable");
            Error::Unavailable("the primary database is unreachable".into())
        }
        e => {
            tracing::error!(cause = %format!("{:#}", anyhow::Error::new(e)), op, "store failure");
            Error::Internal(format!("{op} failed; the host log has the cause"))
        }
    }
}

fn to_metadata(m: FileMeta) -> Metadata {
    Metadata {
        path: m.path,
        version: m.version,
        size: m.size,
        content_type: m.content_type,
        hash: m.hash,
        last_modified: m.last_modified,
        created: m.created,
        encodings: m.encodings.into_iter().map(|(encoding, size)| Encoded { encoding, size }).collect(),
    }
}

fn to_expect(e: Option<Expectation>) -> Option<Expect> {
    e.map(|e| match e {
        Expectation::Absent => Expect::Absent,
        Expectation::Hash(h) => Expect::Hash(h),
    })
}

/// Longest a write may wait on the primary before it fails with
/// `unavailable` (a primary that accepts connections but never answers).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a write with [`WRITE_TIMEOUT`].
/// `write`, telling the store when it found the primary unreachable (so
/// later writes go to the write queue, when there is one).
async fn noting_away<T>(store: &Store, write: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let result = write.await;
    if let Err(e) = &result {
        store.write_found_primary_away(e);
    }
    result
}

async fn bounded<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, Error> {
    match tokio::time::timeout(WRITE_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| to_wit(op, e)),
        Err(_) => {
            tracing::warn!(op, "write timed out waiting for the primary");
            Err(Error::Unavailable(format!("the primary did not answer within {WRITE_TIMEOUT:?}")))
        }
    }
}

/// A failed response stream: the client went away, or the worker misused
/// the stream (a trap).
fn stream_failed(e: StreamError) -> FilesError {
    match e {
        StreamError::Trap(e) => FilesError::Trap(e),
        e => FilesError::Store(Error::Internal(format!("the response stream failed: {e}"))),
    }
}

/// Writes all of `bytes` to `stream`, waiting for room as a blocking write
/// does; the pieces share `bytes`' buffer.
async fn write_all(stream: &mut DynOutputStream, mut bytes: bytes::Bytes) -> Result<(), StreamError> {
    while !bytes.is_empty() {
        let permit = stream.write_ready().await?;
        stream.write(bytes.split_to(permit.min(bytes.len())))?;
    }
    Ok(())
}

/// Key of the site configuration document in `site_config`.
const SITE_KEY: &str = "site";
/// Largest site configuration accepted: the size the worker reads at most.
pub const MAX_SITE_CONFIG: usize = turserver_protocol::MAX_SITE_CONFIG;

type HostResult<T> = Result<T, FilesError>;

impl files::Host for FilesView<'_> {
    fn convert_error(&mut self, err: FilesError) -> wasmtime::Result<Error> {
        err.into_result()
    }

    async fn stat(&mut self, path: String) -> HostResult<Metadata> {
        let _progress = self.progressed();
        if turserver_protocol::is_reserved(&path) {
            // The host's own rows (the deployed worker) are not files.
            return Err(Error::NotFound.into());
        }
        self.ctx.check_read(&path).await?;
        self.ctx.note_read(|r| r.paths.push(path.clone()));
        match self.ctx.store.stat(&path).await {
            Ok(Some(m)) => Ok(to_metadata(m)),
            Ok(None) => Err(Error::NotFound.into()),
            Err(e) => Err(to_wit("stat", e).into()),
        }
    }

    async fn read(&mut self, version: u64, encoding: String, offset: u64, len: u64) -> HostResult<Vec<u8>> {
        let _progress = self.progressed();
        // The guest receives the bytes in its own memory; cap what one call
        // may ask for so a worker cannot make the host allocate without bound.
        let len = len.min(crate::store::CHUNK_SIZE as u64 * 4);
        match self.ctx.store.read(version, &encoding, offset, len).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(Error::NotFound.into()),
            Err(e) => Err(to_wit("read", e).into()),
        }
    }

    async fn send(
        &mut self,
        version: u64,
        encoding: String,
        offset: u64,
        len: u64,
        out: Resource<DynOutputStream>,
    ) -> HostResult<()> {
        let end = offset.checked_add(len).ok_or_else(|| Error::Invalid("offset + len overflows".into()))?;
        let mut offset = offset;
        while offset < end {
            // Each piece read and each piece taken by the stream is progress.
            let _progress = self.progressed();
            // Read only once the stream has room: a download in flight then
            // holds no more than the stream's own buffer.
            self.table.get_mut(&out)?.write_ready().await.map_err(stream_failed)?;
            // Whole, aligned chunks: one database read each.
            let chunk = crate::store::CHUNK_SIZE as u64;
            let want = (chunk - offset % chunk).min(end - offset);
            let bytes = match self.ctx.store.read_bytes(version, &encoding, offset, want).await {
                Ok(Some(bytes)) if bytes.is_empty() => {
                    return Err(Error::Invalid(format!("the range passes the end of body {version}")).into())
                }
                Ok(Some(bytes)) => bytes,
                Ok(None) => return Err(Error::NotFound.into()),
                Err(e) => return Err(to_wit("read", e).into()),
            };
            offset += bytes.len() as u64;
            write_all(self.table.get_mut(&out)?, bytes).await.map_err(stream_failed)?;
        }
        self.table.get_mut(&out)?.flush().map_err(stream_failed)
    }

    async fn list_files(&mut self, prefix: String, cursor: Option<String>, limit: u32) -> HostResult<Listing> {
        let _progress = self.progressed();
        self.ctx.note_read(|r| r.listed = true);
        let (mut files, next_cursor) =
            self.ctx.store.list(&prefix, cursor.as_deref(), limit).await.map_err(|e| to_wit("list", e))?;
        // Private files are listed only to a request that may read them.
        let rules = self.ctx.site.rules(&self.ctx.store).await.map_err(|e| to_wit("site config", e))?;
        files.retain(|f| !rules.is_private(&f.path) || self.ctx.access.check(Action::Read, &f.path).is_ok());
        Ok(Listing { files: files.into_iter().map(to_metadata).collect(), next_cursor })
    }

    async fn begin_upload(
        &mut self,
        path: String,
        content_type: String,
        size_hint: Option<u64>,
        expect: Option<Expectation>,
    ) -> HostResult<Resource<UploadHandle>> {
        let _progress = self.progressed();
        self.ctx.check(Action::Write, &path)?;
        check_media_type(&content_type)?;
        let store = &self.ctx.store;
        let (max, expect) = (self.ctx.max_upload, to_expect(expect));
        let upload = match self.ctx.queue() {
            Some(queue) => store.begin_queued_upload(queue, &path, &content_type, max, size_hint, expect).await.map(Uploading::Queued),
            None => store.begin_upload(&path, &content_type, max, size_hint, expect).await.map(Uploading::Direct),
        };
        let upload = upload.map_err(|e| to_wit("begin upload", e))?;
        Ok(self.table.push(UploadHandle(Some(upload)))?)
    }

    async fn begin_batch(&mut self) -> HostResult<Resource<BatchHandle>> {
        let _progress = self.progressed();
        self.ctx.check_write()?;
        let batch = self.ctx.store.begin_batch(self.ctx.max_upload).await.map_err(|e| to_wit("begin batch", e))?;
        Ok(self.table.push(BatchHandle(Some(batch)))?)
    }

    async fn delete(&mut self, path: String, expect: Option<Expectation>) -> HostResult<()> {
        let _progress = self.progressed();
        self.ctx.check(Action::Delete, &path)?;
        let expect = to_expect(expect);
        if let (Some(queue), Some(noted)) = (self.ctx.queue(), &self.ctx.queued) {
            return match bounded("queue delete", self.ctx.store.queue_delete(queue, &path, expect.as_ref())).await? {
                Some(id) => {
                    tracing::info!(path, id, "delete queued while the primary is away");
                    let _ = noted.set(id);
                    Ok(())
                }
                None => Err(Error::NotFound.into()),
            };
        }
        let store = &self.ctx.store;
        match bounded("delete", noting_away(store, store.delete(&path, expect.as_ref()))).await? {
            true => Ok(()),
            false => Err(Error::NotFound.into()),
        }
    }

    async fn site_config(&mut self) -> HostResult<Option<String>> {
        let _progress = self.progressed();
        Ok(self.ctx.store.site_config(SITE_KEY).await.map_err(|e| to_wit("site config", e))?)
    }

    async fn set_site_config(&mut self, json: String) -> HostResult<()> {
        let _progress = self.progressed();
        self.ctx.access.check_admin().map_err(refused)?;
        if json.len() > MAX_SITE_CONFIG {
            return Err(Error::Invalid(format!("site configuration larger than {MAX_SITE_CONFIG} bytes")).into());
        }
        // A document the built-in worker would ignore is refused, whoever
        // sends it (a worker, or a client of the sidecar).
        turserver_worker::site::SiteRules::parse(&json).map_err(Error::Invalid)?;
        Ok(bounded("set site config", self.ctx.store.set_site_config(SITE_KEY, &json)).await?)
    }

    async fn check_write(&mut self) -> HostResult<()> {
        Ok(self.ctx.check_write()?)
    }

    async fn authorize(&mut self, _credentials: String) -> wasmtime::Result<()> {
        // Write access was decided from the request before the worker ran
        // (and the header removed); a worker cannot raise it.
        Ok(())
    }
}

/// The upload or batch behind a handle, while it is still open.
fn open<'a, T>(slot: &'a mut Option<T>, what: &str) -> Result<&'a mut T, FilesError> {
    slot.as_mut().ok_or_else(|| Error::Invalid(format!("{what} already finished")).into())
}

/// The upload or batch behind a handle, taken to be finished.
fn take<T>(slot: &mut Option<T>, what: &str) -> Result<T, FilesError> {
    slot.take().ok_or_else(|| Error::Invalid(format!("{what} already finished")).into())
}

impl files::HostUpload for FilesView<'_> {
    async fn write(&mut self, this: Resource<UploadHandle>, bytes: Vec<u8>) -> HostResult<()> {
        let _progress = self.progressed();
        let upload = open(&mut self.table.get_mut(&this)?.0, "upload")?;
        Ok(bounded("upload write", upload.write(&bytes)).await?)
    }

    async fn finish(&mut self, this: Resource<UploadHandle>) -> HostResult<Written> {
        let _progress = self.progressed();
        let upload = take(&mut self.table.get_mut(&this)?.0, "upload")?;
        let path = upload.path().to_string();
        let store = self.ctx.store.clone();
        let finish = self.ctx.noting_limits(upload.finish());
        let (meta, created, queued) = bounded("upload finish", noting_away(&store, finish)).await?;
        match (queued, &self.ctx.queued) {
            (Some(id), Some(noted)) => {
                tracing::info!(path, size = meta.size, id, "write queued while the primary is away");
                let _ = noted.set(id);
            }
            _ => tracing::info!(path, size = meta.size, created, "file written"),
        }
        Ok(Written { metadata: to_metadata(meta), created })
    }

    async fn drop(&mut self, this: Resource<UploadHandle>) -> wasmtime::Result<()> {
        if let Some(upload) = self.table.delete(this)?.0 {
            tracing::info!(path = upload.path(), "discarding an unfinished upload");
            upload.abort().await;
        }
        Ok(())
    }
}

impl files::HostBatch for FilesView<'_> {
    async fn add(&mut self, this: Resource<BatchHandle>, path: String, content_type: String) -> HostResult<()> {
        let _progress = self.progressed();
        crate::store::validate_path(&path).map_err(|why| Error::Invalid(format!("{path:?}: {why}")))?;
        self.ctx.check(Action::Write, &path)?;
        check_media_type(&content_type)?;
        let batch = open(&mut self.table.get_mut(&this)?.0, "batch")?;
        Ok(bounded("batch add", batch.add(&path, &content_type)).await?)
    }

    async fn write(&mut self, this: Resource<BatchHandle>, bytes: Vec<u8>) -> HostResult<()> {
        let _progress = self.progressed();
        let batch = open(&mut self.table.get_mut(&this)?.0, "batch")?;
        Ok(bounded("batch write", batch.write(&bytes)).await?)
    }

    async fn remove(&mut self, this: Resource<BatchHandle>, path: String) -> HostResult<()> {
        let _progress = self.progressed();
        crate::store::validate_path(&path).map_err(|why| Error::Invalid(format!("{path:?}: {why}")))?;
        self.ctx.check(Action::Delete, &path)?;
        let batch = open(&mut self.table.get_mut(&this)?.0, "batch")?;
        Ok(bounded("batch remove", batch.remove(&path)).await?)
    }

    async fn commit(&mut self, this: Resource<BatchHandle>) -> HostResult<Vec<Written>> {
        let _progress = self.progressed();
        let batch = take(&mut self.table.get_mut(&this)?.0, "batch")?;
        let files = bounded("batch commit", self.ctx.noting_limits(batch.commit())).await?;
        tracing::info!(files = files.len(), "batch written");
        Ok(files.into_iter().map(|(meta, created)| Written { metadata: to_metadata(meta), created }).collect())
    }

    async fn drop(&mut self, this: Resource<BatchHandle>) -> wasmtime::Result<()> {
        if let Some(batch) = self.table.delete(this)?.0 {
            tracing::info!("discarding an uncommitted batch");
            batch.abort().await;
        }
        Ok(())
    }
}
