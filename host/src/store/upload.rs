//! Streaming uploads. Bytes are buffered up to one chunk; full chunks are
//! written at once under a staging `blob_id`, each in its own short
//! statement (a slow client never holds a write transaction open on the
//! primary). Compressible bodies are also compressed as they stream in (br,
//! gzip, zstd), each staged the same way. `finish` publishes the file and the
//! encodings that came out smaller in one small transaction; an upload
//! dropped before that is discarded.

use super::{unix_now, FileMeta, Store, CHUNK_SIZE};
use super::error::StoreError;
use libsql::Connection;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::Arc;

/// Bodies larger than this are not precompressed: compressing them at
/// upload would take seconds of CPU for little gain on typical blobs.
pub const MAX_COMPRESS_SIZE: u64 = 32 << 20;
/// Bodies smaller than this are not worth compressing.
pub const MIN_COMPRESS_SIZE: u64 = 256;

/// What a conditional write expects at its path (checked when publishing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Absent,
    Hash(String),
}

/// A body being written in chunks.
struct BlobWriter {
    size: u64,
    /// Bytes not yet written: less than one chunk.
    pending: Vec<u8>,
    /// Staging id, taken when the first full chunk is written.
    blob: Option<i64>,
    next_seq: i64,
}

/// A finished body: inline bytes, or chunks under a blob id.
pub(super) struct Body {
    pub size: u64,
    pub inline: Option<Vec<u8>>,
    pub blob: Option<i64>,
}

impl BlobWriter {
    fn new() -> Self {
        BlobWriter { size: 0, pending: Vec::new(), blob: None, next_seq: 0 }
    }

    async fn push(&mut self, conn: &Connection, path: &str, mut bytes: &[u8]) -> Result<(), StoreError> {
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (CHUNK_SIZE - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == CHUNK_SIZE {
                let chunk = std::mem::take(&mut self.pending);
                self.write_chunk(conn, path, chunk).await?;
            }
        }
        Ok(())
    }

    async fn write_chunk(&mut self, conn: &Connection, path: &str, chunk: Vec<u8>) -> Result<(), StoreError> {
        let blob = match self.blob {
            Some(b) => b,
            None => {
                conn.execute(
                    "INSERT INTO uploads (path, started_at) VALUES (?1, ?2)",
                    libsql::params![path, unix_now()],
                )
                .await
                .map_err(|e| StoreError::write("staging an upload", e))?;
                let b = conn.last_insert_rowid();
                self.blob = Some(b);
                b
            }
        };
        conn.execute(
            "INSERT INTO chunks (blob_id, seq, data) VALUES (?1, ?2, ?3)",
            libsql::params![blob, self.next_seq, chunk],
        )
        .await
        .map_err(|e| StoreError::write("writing a chunk", e))?;
        self.next_seq += 1;
        Ok(())
    }

    /// Writes what is left: inline when the whole body fits in one chunk,
    /// unless `spill` asks for it to be written out as a chunk all the same.
    async fn finish(mut self, conn: &Connection, path: &str, spill: bool) -> Result<Body, StoreError> {
        if self.blob.is_none() && !(spill && !self.pending.is_empty()) {
            return Ok(Body { size: self.size, inline: Some(std::mem::take(&mut self.pending)), blob: None });
        }
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            if let Err(e) = self.write_chunk(conn, path, last).await {
                self.discard(conn).await;
                return Err(e);
            }
        }
        Ok(Body { size: self.size, inline: None, blob: self.blob })
    }

    async fn discard(&mut self, conn: &Connection) {
        if let Some(blob) = self.blob.take() {
            discard_logged(conn, blob).await;
        }
    }
}

enum Encoder {
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// One encoder per coding, for a body of about `size_hint` bytes (None:
    /// large or unknown). A small body is compressed whole, and what costs
    /// most then is setting an encoder up: brotli's strongest levels zero
    /// tens of MiB of tables first (about 3 ms a file), so small bodies get
    /// brotli 7 with an 18-bit window (about 1 ms, within 1% of level 9 on
    /// web text) and zstd 12; large ones brotli 9 and zstd 15.
    fn all(size_hint: Option<u64>) -> Vec<Encoder> {
        let (br_quality, br_window, zstd_level) = match size_hint {
            Some(n) if n <= CHUNK_SIZE as u64 => (7, 18, 12),
            _ => (9, 22, 15),
        };
        let mut v = vec![
            Encoder::Br(Box::new(brotli::CompressorWriter::new(Vec::new(), 64 << 10, br_quality, br_window))),
            Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best())),
        ];
        if let Ok(mut z) = zstd::stream::write::Encoder::new(Vec::new(), zstd_level) {
            if let Some(n) = size_hint {
                let _ = z.set_pledged_src_size(Some(n));
            }
            v.push(Encoder::Zstd(z));
        }
        v
    }

    /// The whole of `body` in this coding.
    fn compress_whole(mut self, body: &[u8]) -> std::io::Result<Vec<u8>> {
        self.write(body)?;
        let mut out = self.take_output();
        out.extend(self.finish()?);
        Ok(out)
    }

    fn name(&self) -> &'static str {
        match self {
            Encoder::Br(_) => "br",
            Encoder::Gzip(_) => "gzip",
            Encoder::Zstd(_) => "zstd",
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Br(e) => e.write_all(bytes),
            Encoder::Gzip(e) => e.write_all(bytes),
            Encoder::Zstd(e) => e.write_all(bytes),
        }
    }

    /// Compressed bytes produced so far.
    fn take_output(&mut self) -> Vec<u8> {
        match self {
            Encoder::Br(e) => std::mem::take(e.get_mut()),
            Encoder::Gzip(e) => std::mem::take(e.get_mut()),
            Encoder::Zstd(e) => std::mem::take(e.get_mut()),
        }
    }

    /// The remaining compressed bytes.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Br(e) => Ok(e.into_inner()),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

/// One content coding being produced alongside the body.
struct Variant {
    encoder: Encoder,
    writer: BlobWriter,
}

pub struct Upload {
    store: Arc<Store>,
    conn: Connection,
    path: String,
    content_type: String,
    max_size: u64,
    expect: Option<Expect>,
    hasher: Sha256,
    body: BlobWriter,
    /// Whether encodings are wanted (by media type) and still possible.
    compress: bool,
    /// The encodings being produced; started only once the body outgrows
    /// its first chunk (smaller bodies are compressed whole at the end).
    variants: Vec<Variant>,
    /// Stage even a small body as a chunk rather than in memory (a batch
    /// that already holds its share of small bodies asks for this).
    spill: bool,
}

impl Upload {
    pub(super) fn new(
        store: Arc<Store>,
        conn: Connection,
        path: &str,
        content_type: &str,
        max_size: u64,
        expect: Option<Expect>,
    ) -> Self {
        Upload {
            store,
            conn,
            path: path.to_string(),
            content_type: content_type.to_string(),
            max_size,
            expect,
            hasher: Sha256::new(),
            body: BlobWriter::new(),
            compress: is_compressible(content_type),
            variants: Vec::new(),
            spill: false,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Appends bytes, writing every chunk that fills up.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if self.body.size + bytes.len() as u64 > self.max_size {
            return Err(StoreError::TooLarge(self.max_size));
        }
        self.hasher.update(bytes);
        if self.body.size + bytes.len() as u64 > MAX_COMPRESS_SIZE {
            self.compress = false;
            self.drop_variants().await;
        }
        // The body is about to leave the buffer: start the encoders with
        // what is buffered so far.
        let leaves_buffer = self.body.blob.is_none() && self.body.pending.len() + bytes.len() >= CHUNK_SIZE;
        if self.compress && self.variants.is_empty() && leaves_buffer {
            let sample = if self.body.pending.is_empty() { bytes } else { &self.body.pending[..] };
            self.compress = compression_pays(sample);
        }
        if self.compress && self.variants.is_empty() && leaves_buffer {
            self.variants = Encoder::all(None).into_iter().map(|encoder| Variant { encoder, writer: BlobWriter::new() }).collect();
            let buffered = self.body.pending.clone();
            self.feed_variants(&buffered).await?;
        }
        self.body.push(&self.conn, &self.path, bytes).await?;
        self.feed_variants(bytes).await
    }

    async fn feed_variants(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        for i in 0..self.variants.len() {
            let v = &mut self.variants[i];
            // Compression is CPU work: keep it off the async scheduler.
            let out = tokio::task::block_in_place(|| v.encoder.write(bytes).map(|()| v.encoder.take_output()));
            match out {
                Ok(out) => v.writer.push(&self.conn, &self.path, &out).await?,
                Err(e) => return Err(StoreError::Internal(format!("compressing: {e}"))),
            }
        }
        Ok(())
    }

    async fn drop_variants(&mut self) {
        for mut v in std::mem::take(&mut self.variants) {
            v.writer.discard(&self.conn).await;
        }
    }

    /// Publishes the file (and its smaller encodings), replacing any previous
    /// file at its path. Returns its metadata and whether the path was new.
    /// Publishing goes through the group commit: uploads finishing together
    /// share one transaction (and the sync after it).
    pub async fn finish(mut self) -> Result<(FileMeta, bool), StoreError> {
        let staged = self.stage().await?;
        // Reuse the connection: with a replica each new one opens another
        // write-delegation session on the primary, which holds it for a while.
        self.store.put_back(self.conn.clone());
        self.store.commit(staged).await
    }

    /// Writes what is still buffered and decides which encodings to keep:
    /// everything is stored but nothing is visible yet.
    async fn stage(&mut self) -> Result<Staged, StoreError> {
        let hash = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let mut variants = Vec::new();
        // A body that stayed within its first chunk is compressed whole now,
        // every coding at once.
        if self.compress
            && self.variants.is_empty()
            && self.body.blob.is_none()
            && self.body.size >= MIN_COMPRESS_SIZE
            && compression_pays(&self.body.pending)
        {
            let body = &self.body.pending;
            let outputs: Vec<_> = tokio::task::block_in_place(|| {
                use rayon::prelude::*;
                Encoder::all(Some(body.len() as u64))
                    .into_par_iter()
                    .map(|e| (e.name(), e.compress_whole(body)))
                    .collect()
            });
            for (name, out) in outputs {
                let out = out.map_err(|e| StoreError::Internal(format!("compressing: {e}")))?;
                let mut writer = BlobWriter::new();
                // Less than a chunk (as the body is): held in memory until publish.
                writer.push(&self.conn, &self.path, &out).await?;
                variants.push((name, writer));
            }
        }
        for mut v in std::mem::take(&mut self.variants) {
            let name = v.encoder.name();
            let tail = tokio::task::block_in_place(|| v.encoder.finish());
            let pushed = match tail {
                Ok(tail) => v.writer.push(&self.conn, &self.path, &tail).await,
                Err(e) => Err(StoreError::Internal(format!("compressing: {e}"))),
            };
            if let Err(e) = pushed {
                v.writer.discard(&self.conn).await;
                self.discard_all(variants).await;
                return Err(e);
            }
            variants.push((name, v.writer));
        }
        let body = match std::mem::replace(&mut self.body, BlobWriter::new()).finish(&self.conn, &self.path, self.spill).await {
            Ok(b) => b,
            Err(e) => {
                self.discard_all(variants).await;
                return Err(e);
            }
        };
        // Keep only encodings that are smaller than the body itself.
        let mut kept = Vec::new();
        for (name, mut writer) in variants {
            if writer.size < body.size {
                match writer.finish(&self.conn, &self.path, self.spill).await {
                    Ok(b) => kept.push((name, b)),
                    Err(e) => {
                        tracing::warn!(cause = %e, encoding = name, "dropping an encoding that could not be stored");
                    }
                }
            } else {
                writer.discard(&self.conn).await;
            }
        }
        Ok(Staged {
            path: self.path.clone(),
            content_type: self.content_type.clone(),
            expect: self.expect.take(),
            hash,
            body,
            variants: kept,
        })
    }

    async fn discard_all(&self, writers: Vec<(&'static str, BlobWriter)>) {
        for (_, mut w) in writers {
            w.discard(&self.conn).await;
        }
    }

    /// Drops the upload and deletes whatever it staged.
    pub async fn abort(mut self) {
        self.body.discard(&self.conn).await;
        self.drop_variants().await;
        self.store.put_back(self.conn.clone());
    }
}

/// A file whose bytes are stored but not yet published.
pub(super) struct Staged {
    pub path: String,
    pub content_type: String,
    pub expect: Option<Expect>,
    pub hash: String,
    pub body: Body,
    pub variants: Vec<(&'static str, Body)>,
}

impl Staged {
    /// Bytes of it held in memory until it is published.
    fn held_bytes(&self) -> u64 {
        let inline = |b: &Body| b.inline.as_ref().map_or(0, |v| v.len() as u64);
        inline(&self.body) + self.variants.iter().map(|(_, v)| inline(v)).sum::<u64>()
    }

    /// The staging ids of the body and its encodings (inline ones have none).
    pub fn blobs(&self) -> Vec<i64> {
        let mut blobs: Vec<i64> = self.body.blob.into_iter().collect();
        blobs.extend(self.variants.iter().filter_map(|(_, v)| v.blob));
        blobs
    }
}

/// Most files one batch may hold.
pub const MAX_BATCH_FILES: usize = 10_000;
/// Most bytes of small bodies a batch keeps in memory until it commits;
/// past it, small bodies are staged in the database as large ones are.
pub const MAX_BATCH_MEMORY: u64 = 16 << 20;

/// Files written together and published in one transaction.
pub struct Batch {
    store: Arc<Store>,
    conn: Connection,
    max_size: u64,
    /// Bytes of the files staged so far.
    staged_bytes: u64,
    /// Bytes of those held in memory (small bodies and encodings).
    held_bytes: u64,
    current: Option<Upload>,
    staged: Vec<Staged>,
    /// Paths whose files the commit removes.
    removed: std::collections::BTreeSet<String>,
    /// Paths the batch writes.
    written: std::collections::HashSet<String>,
}

impl Batch {
    pub(super) fn new(store: Arc<Store>, conn: Connection, max_size: u64) -> Batch {
        Batch {
            store,
            conn,
            max_size,
            staged_bytes: 0,
            held_bytes: 0,
            current: None,
            staged: Vec::new(),
            removed: Default::default(),
            written: Default::default(),
        }
    }

    /// Starts the next file; the previous one is staged.
    pub async fn add(&mut self, path: &str, content_type: &str) -> Result<(), StoreError> {
        self.stage_current().await?;
        if self.removed.contains(path) {
            return Err(StoreError::Invalid(format!("{path:?} is both written and removed by the batch")));
        }
        if !self.written.insert(path.to_string()) {
            return Err(StoreError::Invalid(format!("{path:?} is written twice by the batch")));
        }
        if self.staged.len() + self.removed.len() >= MAX_BATCH_FILES {
            return Err(StoreError::Invalid(format!("a batch holds at most {MAX_BATCH_FILES} files")));
        }
        // The whole batch shares the upload size limit.
        let room = self.max_size.saturating_sub(self.staged_bytes);
        self.current = Some(Upload::new(self.store.clone(), self.conn.clone(), path, content_type, room, None));
        Ok(())
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let max = self.max_size;
        let Some(upload) = self.current.as_mut() else {
            return Err(StoreError::Invalid("write before the first add".into()));
        };
        upload.write(bytes).await.map_err(|e| match e {
            StoreError::TooLarge(_) => StoreError::TooLarge(max),
            other => other,
        })
    }

    /// Removes the file at `path` when the batch commits (nothing when
    /// there is none then).
    pub async fn remove(&mut self, path: &str) -> Result<(), StoreError> {
        if self.written.contains(path) {
            return Err(StoreError::Invalid(format!("{path:?} is both written and removed by the batch")));
        }
        if self.staged.len() + self.removed.len() >= MAX_BATCH_FILES {
            return Err(StoreError::Invalid(format!("a batch holds at most {MAX_BATCH_FILES} files")));
        }
        self.removed.insert(path.to_string());
        Ok(())
    }

    async fn stage_current(&mut self) -> Result<(), StoreError> {
        if let Some(mut upload) = self.current.take() {
            upload.spill = self.held_bytes >= MAX_BATCH_MEMORY;
            let staged = upload.stage().await?;
            self.staged_bytes += staged.body.size;
            self.held_bytes += staged.held_bytes();
            self.staged.push(staged);
        }
        Ok(())
    }

    /// Publishes every file in one transaction.
    pub async fn commit(mut self) -> Result<Vec<(FileMeta, bool)>, StoreError> {
        if let Err(e) = self.stage_current().await {
            self.abort().await;
            return Err(e);
        }
        let staged = std::mem::take(&mut self.staged);
        let removed = std::mem::take(&mut self.removed);
        let published = super::publish::publish(&self.conn, staged, removed, self.store.quota()).await?;
        self.store.put_back(self.conn.clone());
        self.store.written().await;
        Ok(published)
    }

    /// Discards everything staged so far.
    pub async fn abort(mut self) {
        if let Some(upload) = self.current.take() {
            upload.abort().await;
        }
        for s in std::mem::take(&mut self.staged) {
            for blob in s.blobs() {
                discard_logged(&self.conn, blob).await;
            }
        }
    }
}

/// Bytes of a body tried with a fast compressor before the real ones run.
const PROBE_BYTES: usize = 64 << 10;

/// Whether a body that starts with `sample` is worth precompressing: a
/// fast compressor saves at least a tenth of its first bytes. Text that is
/// already compressed or random (a type's name says nothing of that) costs
/// the three slow encoders' time for nothing.
fn compression_pays(sample: &[u8]) -> bool {
    let sample = &sample[..sample.len().min(PROBE_BYTES)];
    match zstd::bulk::compress(sample, 1) {
        Ok(out) => out.len() * 10 <= sample.len() * 9,
        Err(_) => true,
    }
}

/// Media types worth precompressing.
pub fn is_compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/wasm"
                | "application/manifest+json"
                | "image/svg+xml"
                | "application/x-javascript"
                | "font/ttf"
                | "font/otf"
                | "application/vnd.ms-fontobject"
        )
}

pub(super) async fn discard_logged(conn: &Connection, blob: i64) {
    if let Err(e) = discard(conn, blob).await {
        // Garbage collection removes it later.
        tracing::warn!(cause = %e, blob, "could not discard a staged body");
    }
}

/// Deletes a staged blob and its staging row.
pub(super) async fn discard(conn: &Connection, blob: i64) -> Result<(), StoreError> {
    let w = |e| StoreError::write("discarding an upload", e);
    conn.execute("DELETE FROM chunks WHERE blob_id = ?1", [blob]).await.map_err(w)?;
    conn.execute("DELETE FROM uploads WHERE blob_id = ?1", [blob]).await.map_err(w)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_types() {
        for t in ["text/html; charset=utf-8", "application/json", "image/svg+xml", "application/wasm", "application/ld+json"] {
            assert!(is_compressible(t), "{t}");
        }
        for t in ["image/png", "application/octet-stream", "video/mp4", "application/zip"] {
            assert!(!is_compressible(t), "{t}");
        }
    }

    #[test]
    fn only_bodies_that_compress_are_precompressed() {
        assert!(compression_pays("hello hello hello hello ".repeat(500).as_bytes()));
        let random: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert!(!compression_pays(&zstd::bulk::compress(&random, 19).unwrap()), "already compressed");
    }

    #[test]
    fn encoders_round_trip() {
        let text = "hello hello hello hello ".repeat(1000);
        for mut e in Encoder::all(None).into_iter().chain(Encoder::all(Some(text.len() as u64))) {
            let name = e.name();
            e.write(text.as_bytes()).unwrap();
            let mut out = e.take_output();
            out.extend(e.finish().unwrap());
            assert!(out.len() < text.len() / 10, "{name} compressed to {}", out.len());
            let back = match name {
                "gzip" => {
                    let mut d = flate2::read::GzDecoder::new(&out[..]);
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut d, &mut s).unwrap();
                    s.into_bytes()
                }
                "zstd" => zstd::decode_all(&out[..]).unwrap(),
                _ => {
                    let mut d = brotli::Decompressor::new(&out[..], 4096);
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut d, &mut v).unwrap();
                    v
                }
            };
            assert_eq!(back, text.as_bytes(), "{name}");
        }
    }
}
