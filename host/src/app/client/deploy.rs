//! `turserver deploy DIR`: walks DIR, hashes its files in parallel, asks the
//! edge which it lacks (`POST /_api/plan`), and sends those (and, with
//! `--delete`, the removal of files no longer in DIR) as one batch archive,
//! streamed: the edge publishes all of it in one transaction or none.

use super::progress::{Progress, Unit};
use super::{human_bytes, local_store_path, wire, Remote, RequestError};
use crate::app::config::DeployArgs;
use anyhow::{bail, Context};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use turserver_worker::core::{Manifest, Plan, MANIFEST_ENTRY};

/// Most files one deploy may send and remove (the edge's batch limit).
const MAX_FILES: usize = 10_000;
/// Bytes read from a file at a time, and sent to the edge at a time.
const PIECE: usize = 256 << 10;

/// A file of DIR, as it will be stored.
#[derive(Debug, Clone)]
struct LocalFile {
    /// Where to read it.
    source: PathBuf,
    /// Its store path: the prefix and its path under DIR.
    path: String,
    size: u64,
    hash: String,
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let remote = Remote::new(&args.remote)?;
    let prefix = normal_prefix(&args.prefix)?;
    let (dir, walk_prefix) = (args.dir.clone(), prefix.clone());
    let (excludes, respect_ignore) = (args.exclude.clone(), args.respect_ignore);
    let found = tokio::task::spawn_blocking(move || walk(&dir, &walk_prefix, &excludes, respect_ignore)).await??;
    for warning in &found.warnings {
        eprintln!("warning: {warning}");
    }
    let threads = args.concurrency.map_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get()), usize::from);
    let files = tokio::task::spawn_blocking(move || hash_all(found.files, threads)).await??;

    let plan = ask_plan(&remote, &prefix, &files).await?;
    let remove = if args.delete { plan.remove.clone() } else { Vec::new() };
    let to_send: Vec<LocalFile> = {
        let wanted: std::collections::HashSet<&str> = plan.upload.iter().map(String::as_str).collect();
        files.iter().filter(|f| wanted.contains(f.path.as_str())).cloned().collect()
    };
    if to_send.len() + remove.len() > MAX_FILES {
        bail!(
            "this deploy sends {} files and removes {}: one deploy holds at most {MAX_FILES}; deploy the folders \
             one --prefix at a time",
            to_send.len(),
            remove.len()
        );
    }
    let bytes: u64 = to_send.iter().map(|f| f.size).sum();
    if args.dry_run {
        for f in &to_send {
            println!("upload  {} ({})", f.path, human_bytes(f.size));
        }
        for p in &plan.unchanged {
            println!("keep    {p}");
        }
        for p in &remove {
            println!("delete  {p}");
        }
        if !args.delete && !plan.remove.is_empty() {
            println!("({} stored files under the prefix are not in DIR; --delete would remove them)", plan.remove.len());
        }
        println!(
            "dry run: would upload {} ({}), keep {}, delete {}; nothing was changed",
            files_count(to_send.len()),
            human_bytes(bytes),
            plan.unchanged.len(),
            remove.len()
        );
        return Ok(());
    }
    let position = if to_send.is_empty() && remove.is_empty() {
        None
    } else {
        send_batch(&remote, to_send.clone(), remove.clone(), bytes).await?
    };
    println!(
        "deployed: {} uploaded ({}), {} unchanged, {} deleted in {:.2}s",
        files_count(to_send.len()),
        human_bytes(bytes),
        plan.unchanged.len(),
        remove.len(),
        started.elapsed().as_secs_f64()
    );
    match position {
        Some(p) => println!("turserver-position: {p}"),
        None if to_send.is_empty() && remove.is_empty() => println!("nothing changed"),
        None => {}
    }
    Ok(())
}

fn files_count(n: usize) -> String {
    format!("{n} file{}", if n == 1 { "" } else { "s" })
}

/// `--prefix` in store form: empty, or a folder path ending in `/`.
fn normal_prefix(raw: &str) -> anyhow::Result<String> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    match local_store_path(trimmed) {
        Ok(p) => Ok(format!("{p}/")),
        Err(why) => bail!("--prefix {why}"),
    }
}

/// What a walk of DIR found.
struct Found {
    files: Vec<(PathBuf, String)>,
    warnings: Vec<String>,
}

/// The files of `dir` with their store paths. Refuses the whole deploy when
/// any path would be refused by the edge, or a folder cannot be read.
fn walk(dir: &Path, prefix: &str, excludes: &[String], respect_ignore: bool) -> anyhow::Result<Found> {
    let meta = std::fs::metadata(dir).with_context(|| format!("{}: cannot read it", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory; deploy takes the folder your site was built into", dir.display());
    }
    let root = dir.canonicalize().with_context(|| format!("{}: cannot resolve it", dir.display()))?;
    let mut builder = ignore::WalkBuilder::new(&root);
    builder.standard_filters(false).hidden(false).follow_links(false).sort_by_file_name(|a, b| a.cmp(b));
    if respect_ignore {
        builder.git_ignore(true).git_exclude(true).ignore(true).require_git(false).parents(false);
    }
    builder.filter_entry(|e| e.file_name() != ".git");
    if !excludes.is_empty() {
        let mut overrides = ignore::overrides::OverrideBuilder::new(&root);
        for glob in excludes {
            overrides.add(&format!("!{glob}")).with_context(|| format!("--exclude {glob:?} is not a valid glob"))?;
        }
        builder.overrides(overrides.build().context("building the --exclude globs")?);
    }
    let mut found = Found { files: Vec::new(), warnings: Vec::new() };
    let mut refused = Vec::new();
    for entry in builder.build() {
        let entry = entry.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
        let Some(kind) = entry.file_type() else { continue };
        let source = entry.path().to_path_buf();
        let rel = source.strip_prefix(&root).unwrap_or(&source).to_path_buf();
        if kind.is_dir() {
            continue;
        }
        if kind.is_symlink() {
            match std::fs::canonicalize(&source) {
                Ok(target) if target.starts_with(&root) && target.is_file() => {}
                Ok(target) if target.starts_with(&root) => {
                    found.warnings.push(format!("skipping {}: a link to a folder", rel.display()));
                    continue;
                }
                Ok(_) => {
                    found.warnings.push(format!("skipping {}: a link that leads out of {}", rel.display(), dir.display()));
                    continue;
                }
                Err(_) => {
                    found.warnings.push(format!("skipping {}: a broken link", rel.display()));
                    continue;
                }
            }
        } else if !kind.is_file() {
            found.warnings.push(format!("skipping {}: not a regular file", rel.display()));
            continue;
        }
        let Some(name) = rel.to_str() else {
            refused.push(format!("{}: the name is not UTF-8", rel.display()));
            continue;
        };
        let name = name.replace(std::path::MAIN_SEPARATOR, "/");
        match local_store_path(&format!("{prefix}{name}")) {
            Ok(path) => found.files.push((source, path)),
            Err(why) => refused.push(why),
        }
    }
    if !refused.is_empty() {
        let shown: Vec<&str> = refused.iter().take(20).map(String::as_str).collect();
        bail!(
            "{} file{} cannot be stored under these names, so nothing was sent:\n  {}{}",
            refused.len(),
            if refused.len() == 1 { "" } else { "s" },
            shown.join("\n  "),
            if refused.len() > shown.len() { "\n  ..." } else { "" }
        );
    }
    if found.files.is_empty() {
        bail!("{} holds no files to deploy", dir.display());
    }
    Ok(found)
}

/// Hashes every file on `threads` threads (SHA-256, the edge's ETag).
fn hash_all(files: Vec<(PathBuf, String)>, threads: usize) -> anyhow::Result<Vec<LocalFile>> {
    use rayon::prelude::*;
    let progress = Progress::start("hashing", Unit::Files, files.len() as u64);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build().context("starting hash threads")?;
    let hashed: anyhow::Result<Vec<LocalFile>> = pool.install(|| {
        files
            .into_par_iter()
            .map(|(source, path)| {
                let (size, hash) = hash_file(&source)?;
                progress.inc(1);
                Ok(LocalFile { source, path, size, hash })
            })
            .collect()
    });
    progress.finish();
    hashed
}

fn hash_file(source: &Path) -> anyhow::Result<(u64, String)> {
    let vanished = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("{} vanished while it was being read; nothing was sent", source.display())
        } else {
            anyhow::anyhow!("cannot read {}: {e}; nothing was sent", source.display())
        }
    };
    let mut file = std::fs::File::open(source).map_err(vanished)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(vanished)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

async fn ask_plan(remote: &Remote, prefix: &str, files: &[LocalFile]) -> anyhow::Result<Plan> {
    #[derive(serde::Serialize)]
    struct PlanRequest<'a> {
        prefix: String,
        files: std::collections::BTreeMap<String, &'a str>,
    }
    let body = PlanRequest { prefix: wire(prefix), files: files.iter().map(|f| (wire(&f.path), f.hash.as_str())).collect() };
    let body = serde_json::to_vec(&body).context("encoding the plan request")?;
    let resp = remote
        .send_simple(|| remote.request(reqwest::Method::POST, remote.url("_api/plan")).header("content-type", "application/json").body(body.clone()))
        .await?;
    #[derive(serde::Deserialize)]
    struct Answer {
        upload: Vec<String>,
        unchanged: Vec<String>,
        remove: Vec<String>,
    }
    let a: Answer = resp.json().await.context("reading the edge's plan (is --url a turserver edge?)")?;
    Ok(Plan { upload: a.upload, unchanged: a.unchanged, remove: a.remove })
}

/// Sends the batch, again from the start after a lost connection or a 503
/// (the edge discards a batch it did not receive whole). Returns the
/// replication position of the commit, when the edge reports one.
async fn send_batch(remote: &Remote, files: Vec<LocalFile>, remove: Vec<String>, bytes: u64) -> anyhow::Result<Option<u64>> {
    let manifest = if remove.is_empty() { 0 } else { 1024 + remove.iter().map(|p| p.len() as u64 + 3).sum::<u64>() };
    let progress = Arc::new(Progress::start("uploading", Unit::Bytes, archive_size(&files, bytes) + manifest));
    // Why the archive itself failed (a file changed since it was hashed):
    // that is reported as it is, and not retried.
    let local_failure: Arc<Mutex<Option<String>>> = Arc::default();
    let files = Arc::new(files);
    let remove = Arc::new(remove);
    let make = || {
        progress.reset();
        let body = archive_stream(files.clone(), remove.clone(), progress.clone(), local_failure.clone());
        remote
            .request(reqwest::Method::POST, remote.url("_api/batch"))
            .header("content-type", "application/x-tar")
            .body(reqwest::Body::wrap_stream(body))
    };
    let sent = remote
        .send(make, |why| {
            if local_failure.lock().expect("poisoned").is_none() {
                progress.say(why)
            }
        })
        .await;
    progress.finish();
    if let Some(why) = local_failure.lock().expect("poisoned").take() {
        bail!("{why}; nothing was deployed, the edge still serves the previous version");
    }
    let resp = match sent {
        Ok(resp) => resp,
        Err(e @ RequestError::Refused { .. }) => {
            return Err(remote.explain(e).context("the deploy was refused; the edge still serves the previous version"))
        }
        Err(e) => {
            return Err(remote.explain(e).context("the deploy did not complete; the edge still serves the previous version"))
        }
    };
    let position = resp
        .headers()
        .get("turserver-position")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    #[derive(serde::Deserialize)]
    struct Committed {
        count: usize,
    }
    let committed: Committed = resp.json().await.context("reading the edge's answer to the deploy")?;
    if committed.count != files.len() {
        bail!("the edge published {} files of the {} sent", committed.count, files.len());
    }
    Ok(position)
}

/// About how many bytes the archive of `files` takes: a header block per
/// file (two more for a long name), bodies padded to blocks, the end.
fn archive_size(files: &[LocalFile], body_bytes: u64) -> u64 {
    let blocks = |n: u64| n.div_ceil(512) * 512;
    let headers: u64 = files.iter().map(|f| if f.path.len() < 100 { 512 } else { 1024 + blocks(f.path.len() as u64 + 1) }).sum();
    let padding: u64 = files.iter().map(|f| blocks(f.size) - f.size).sum();
    body_bytes + headers + padding + 1024
}

/// The batch archive, made on a thread as it is sent: each file read again
/// (and checked against its hash), then the manifest of removals.
fn archive_stream(
    files: Arc<Vec<LocalFile>>,
    remove: Arc<Vec<String>>,
    progress: Arc<Progress>,
    failure: Arc<Mutex<Option<String>>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    std::thread::spawn(move || {
        let sink = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(PIECE), progress };
        if let Err(e) = write_archive(sink, &files, &remove) {
            // A closed channel means the request was dropped: nothing to say.
            if tx.is_closed() {
                return;
            }
            *failure.lock().expect("poisoned") = Some(e.to_string());
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

fn write_archive(sink: ChannelWriter, files: &[LocalFile], remove: &[String]) -> anyhow::Result<()> {
    let mut archive = tar::Builder::new(sink);
    for f in files {
        let file = std::fs::File::open(&f.source)
            .with_context(|| format!("{} cannot be read any more", f.source.display()))?;
        let mut header = file_header(f.size);
        let mut reader = Checked { inner: file.take(f.size + 1), hasher: Sha256::new(), read: 0 };
        archive
            .append_data(&mut header, wire(&f.path), &mut reader)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.source.display()))?;
        if reader.read != f.size || hex::encode(reader.hasher.finalize()) != f.hash {
            bail!("{} changed while it was being deployed", f.source.display());
        }
    }
    if !remove.is_empty() {
        append_manifest(&mut archive, remove)?;
    }
    archive.into_inner()?.flush()?;
    Ok(())
}

/// A tar header for a regular file of `size` bytes.
fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header
}

/// Adds the batch manifest that removes `paths` when the batch commits.
pub(super) fn append_manifest<W: Write>(archive: &mut tar::Builder<W>, paths: &[String]) -> anyhow::Result<()> {
    let manifest = serde_json::to_vec(&Manifest { remove: paths.iter().map(|p| wire(p)).collect() })?;
    archive.append_data(&mut file_header(manifest.len() as u64), MANIFEST_ENTRY, &manifest[..])?;
    Ok(())
}

/// A file's bytes as the archive takes them, hashed on the way.
struct Checked<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Sends what is written to the request body in pieces, waiting while the
/// connection is busy (the body never sits whole in memory).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    progress: Arc<Progress>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        let n = piece.len() as u64;
        self.tx
            .blocking_send(Ok(Bytes::from(piece)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the request was dropped"))?;
        self.progress.inc(n);
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}
