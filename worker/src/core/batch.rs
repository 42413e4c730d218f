//! A batch body: a tar archive whose regular files are published together
//! (and whose manifest entry, [`MANIFEST_ENTRY`], names files to remove),
//! or (on any bad entry, a cut-off body or a store failure) none is. The
//! archive is read from any `Read` into any [`BatchSink`], so this runs
//! natively in tests as it runs over a request stream in the worker.

use super::{batch_entry, error_response, read_manifest, Response, StoreError, MANIFEST_ENTRY, MAX_MANIFEST};
use std::io::Read;

/// Where a batch's files go: the host's batch, or a fake in tests.
pub trait BatchSink {
    /// Starts the next file.
    fn add(&mut self, path: &str, content_type: &str) -> Result<(), StoreError>;
    /// Appends bytes to the current file.
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError>;
    /// Removes a path when the batch commits.
    fn remove(&mut self, path: &str) -> Result<(), StoreError>;
}

/// Reads `archive` into `sink` entry by entry, in pieces of `buf`'s size:
/// directories are skipped, regular files added, anything else refused. On
/// failure, the response to send; the caller then drops its batch, which
/// discards what was staged.
pub fn read_batch(archive: impl Read, sink: &mut impl BatchSink, buf: &mut [u8]) -> Result<(), Response> {
    let mut archive = tar::Archive::new(archive);
    let bad = |e: std::io::Error| Response::text(400, format!("bad tar archive: {e}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let name = entry.path().map_err(bad)?.to_string_lossy().to_string();
        if !kind.is_file() {
            return Err(Response::text(400, format!("entry {name:?}: only regular files and directories")));
        }
        if name.trim_start_matches("./").trim_start_matches('/') == MANIFEST_ENTRY {
            if entry.size() > MAX_MANIFEST {
                return Err(Response::text(413, format!("{MANIFEST_ENTRY} is larger than {MAX_MANIFEST} bytes")));
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(bad)?;
            for path in read_manifest(&bytes).map_err(|why| Response::text(400, why))? {
                sink.remove(&path).map_err(error_response)?;
            }
            continue;
        }
        let (path, content_type) = batch_entry(&name).map_err(|why| Response::text(400, why))?;
        sink.add(&path, &content_type).map_err(error_response)?;
        loop {
            let n = entry.read(buf).map_err(bad)?;
            if n == 0 {
                break;
            }
            sink.write(&buf[..n]).map_err(error_response)?;
        }
    }
    Ok(())
}
