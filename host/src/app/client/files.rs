//! One file or folder at a time: `put`, `get` (resuming after a dropped
//! connection), `ls`, `rm`; the edge's `status`; and `worker deploy`.

use super::progress::{Progress, Unit};
use super::{human_bytes, local_store_path, Remote, RequestError};
use crate::app::config::{GetArgs, LsArgs, PutArgs, RemoteArgs, RmArgs, StatusArgs, WorkerDeployArgs};
use anyhow::{bail, Context};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use std::io::Write;
use std::sync::Arc;

/// Files larger than this show progress.
const SHOW_PROGRESS: u64 = 8 << 20;

/// A path as the user typed it, in store form.
fn path_arg(raw: &str) -> anyhow::Result<String> {
    local_store_path(raw).map_err(|why| anyhow::anyhow!("bad path {why}"))
}

pub async fn put(args: PutArgs) -> anyhow::Result<()> {
    let remote = Remote::new(&args.remote)?;
    let path = path_arg(&args.path)?;
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("{}: cannot read it", args.file.display()))?
        .len();
    let progress = Arc::new((size >= SHOW_PROGRESS).then(|| Progress::start("uploading", Unit::Bytes, size)));
    let make = || {
        if let Some(p) = progress.as_ref() {
            p.reset();
        }
        let mut req = remote.request(Method::PUT, remote.url(&path)).header("content-length", size);
        if let Some(t) = &args.content_type {
            req = req.header("content-type", t.as_str());
        }
        let body = match std::fs::File::open(&args.file) {
            Ok(f) => {
                let progress = progress.clone();
                reqwest::Body::wrap_stream(file_stream(tokio::fs::File::from_std(f)).inspect(move |piece| {
                    if let (Ok(piece), Some(p)) = (piece, progress.as_ref()) {
                        p.inc(piece.len() as u64)
                    }
                }))
            }
            Err(e) => reqwest::Body::wrap_stream(futures::stream::once(async move { Err::<bytes::Bytes, _>(e) })),
        };
        req.body(body)
    };
    let resp = remote.send_simple(make).await?;
    if let Some(p) = progress.as_ref() {
        p.finish();
    }
    let verb = if resp.status() == StatusCode::CREATED { "created" } else { "replaced" };
    let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    println!("{verb} /{path} ({}) {etag}", human_bytes(size));
    print_position(&resp);
    Ok(())
}

/// A file's bytes as a stream of pieces.
fn file_stream(file: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

fn print_position(resp: &reqwest::Response) {
    if let Some(p) = resp.headers().get("turserver-position").and_then(|v| v.to_str().ok()) {
        println!("turserver-position: {p}");
    }
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let remote = Remote::new(&args.remote)?;
    let path = path_arg(&args.path)?;
    let url = remote.url(&path);
    let mut out: Box<dyn Write + Send> = match &args.output {
        Some(f) if f.as_os_str() != "-" => {
            Box::new(std::fs::File::create(f).with_context(|| format!("cannot write {}", f.display()))?)
        }
        _ => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut received = 0u64;
    let mut validator: Option<String> = None;
    let mut progress: Option<Progress> = None;
    let mut resumes = 0;
    loop {
        let resp = remote
            .send_simple(|| {
                let req = remote.request(Method::GET, url.clone()).header("accept-encoding", "identity");
                match (&validator, received) {
                    (Some(etag), n) if n > 0 => req.header("range", format!("bytes={n}-")).header("if-range", etag.as_str()),
                    _ => req,
                }
            })
            .await?;
        if received > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
            bail!("/{path} changed on the edge while it was being downloaded; run the command again");
        }
        if validator.is_none() {
            validator = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
            let total = resp.content_length().unwrap_or(0);
            if total >= SHOW_PROGRESS && args.output.as_ref().is_some_and(|f| f.as_os_str() != "-") {
                progress = Some(Progress::start("downloading", Unit::Bytes, total));
            }
        }
        let mut body = resp.bytes_stream();
        let mut cut = None;
        while let Some(piece) = body.next().await {
            match piece {
                Ok(bytes) => {
                    out.write_all(&bytes).context("writing the download")?;
                    received += bytes.len() as u64;
                    if let Some(p) = &progress {
                        p.inc(bytes.len() as u64);
                    }
                }
                Err(e) => {
                    cut = Some(e);
                    break;
                }
            }
        }
        match cut {
            None => break,
            Some(e) if validator.is_some() && resumes < 5 => {
                resumes += 1;
                let message = format!("connection lost after {} ({e}); resuming", human_bytes(received));
                match &progress {
                    Some(p) => p.say(&message),
                    None => eprintln!("{message}"),
                }
            }
            Some(e) => bail!("the download of /{path} was cut off after {}: {e}", human_bytes(received)),
        }
    }
    out.flush()?;
    if let Some(p) = &progress {
        p.finish();
    }
    Ok(())
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Entry {
    path: String,
    size: u64,
    content_type: String,
    etag: String,
    last_modified: String,
}

/// Every file under `prefix`, page by page.
async fn list_all(remote: &Remote, prefix: &str) -> anyhow::Result<Vec<Entry>> {
    #[derive(serde::Deserialize)]
    struct Page {
        files: Vec<Entry>,
        next_cursor: Option<String>,
    }
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = remote.url("_api/files");
        url.query_pairs_mut().append_pair("prefix", prefix).append_pair("limit", "1000");
        if let Some(c) = &cursor {
            url.query_pairs_mut().append_pair("cursor", c);
        }
        let page: Page = remote
            .send_simple(|| remote.request(Method::GET, url.clone()))
            .await?
            .json()
            .await
            .context("reading a listing page (is --url a turserver edge?)")?;
        all.extend(page.files);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(all),
        }
    }
}

pub async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let remote = Remote::new(&args.remote)?;
    let prefix = args.prefix.as_deref().unwrap_or_default().trim_start_matches('/');
    let files = list_all(&remote, prefix).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &files)?;
        writeln!(out)?;
    } else if args.long {
        for f in &files {
            writeln!(out, "{:>10}  {}  {:<32}  {}", f.size, f.last_modified, f.content_type, f.path)?;
        }
    } else {
        for f in &files {
            writeln!(out, "{}", f.path)?;
        }
    }
    Ok(())
}

pub async fn rm(args: RmArgs) -> anyhow::Result<()> {
    let remote = Remote::new(&args.remote)?;
    if args.paths.is_empty() && args.recursive.is_none() {
        bail!("name the files to remove, or --recursive PREFIX");
    }
    for raw in &args.paths {
        let path = path_arg(raw)?;
        match remote.send(|| remote.request(Method::DELETE, remote.url(&path)), |why| eprintln!("{why}")).await {
            Ok(_) => println!("removed /{path}"),
            Err(RequestError::Refused { status: StatusCode::NOT_FOUND, .. }) => bail!("/{path}: no such file"),
            Err(e) => return Err(remote.explain(e)),
        }
    }
    if let Some(prefix) = &args.recursive {
        let prefix = prefix.trim_start_matches('/');
        if prefix.is_empty() {
            bail!("--recursive needs a folder; to empty the whole site, deploy an empty folder with --delete");
        }
        let folder = if prefix.ends_with('/') { prefix.to_string() } else { format!("{prefix}/") };
        let paths: Vec<String> = list_all(&remote, &folder).await?.into_iter().map(|e| e.path).collect();
        if paths.is_empty() {
            bail!("/{folder}: no files there");
        }
        // One batch whose only entry is the manifest: all go, or none.
        let archive = manifest_archive(&paths)?;
        let resp = remote
            .send_simple(|| {
                remote
                    .request(Method::POST, remote.url("_api/batch"))
                    .header("content-type", "application/x-tar")
                    .body(archive.clone())
            })
            .await?;
        println!("removed {} files under /{folder}", paths.len());
        print_position(&resp);
    }
    Ok(())
}

fn manifest_archive(paths: &[String]) -> anyhow::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    super::deploy::append_manifest(&mut archive, paths)?;
    Ok(archive.into_inner()?)
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let remote = Remote::new(&args.remote)?;
    let doc: serde_json::Value = remote
        .send_simple(|| remote.request(Method::GET, remote.url("_turserver/status")))
        .await?
        .json()
        .await
        .context("reading the status (is --url a turserver edge?)")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let mut rows = Vec::new();
    flatten("", &doc, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
    Ok(())
}

/// A JSON document as `a.b  value` rows.
fn flatten(prefix: &str, value: &serde_json::Value, rows: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, rows);
            }
        }
        serde_json::Value::Null => rows.push((prefix.to_string(), "-".into())),
        serde_json::Value::String(s) => rows.push((prefix.to_string(), s.clone())),
        other => rows.push((prefix.to_string(), other.to_string())),
    }
}

pub async fn deploy_worker(args: WorkerDeployArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let remote = Remote::new(&with_write_token(args.remote))?;
    let resp = remote
        .send_simple(|| {
            remote
                .request(Method::PUT, remote.url("_turserver/worker"))
                .header("content-type", "application/wasm")
                .body(bytes.clone())
        })
        .await
        .context("the edge refused the worker")?;
    println!("{}", resp.text().await.unwrap_or_default().trim());
    Ok(())
}

/// `worker deploy` also takes the token from `TURSERVER_WRITE_TOKEN`, as
/// `serve` does.
fn with_write_token(mut remote: RemoteArgs) -> RemoteArgs {
    if remote.token.is_none() {
        remote.token = std::env::var("TURSERVER_WRITE_TOKEN").ok().filter(|t| !t.is_empty());
    }
    remote
}
