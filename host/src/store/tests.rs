//! The store's tests: its pure helpers, and the store itself against a
//! temporary local database.

use super::reads::{parse_encodings, prefix_upper_bound};
use super::writes::{check_expectation, Current};
use super::*;
use sha2::Digest;
use std::sync::Arc;

#[test]
fn encodings_list() {
    assert_eq!(parse_encodings(""), vec![]);
    assert_eq!(parse_encodings("br:10,gzip:12"), vec![("br".to_string(), 10), ("gzip".to_string(), 12)]);
}

#[test]
fn expectations() {
    let c = Current { id: 1, created_at: 0, hash: "abc".into(), size: 3 };
    assert!(check_expectation(None, Some(&c)).is_ok());
    assert!(check_expectation(Some(&Expect::Absent), None).is_ok());
    assert!(check_expectation(Some(&Expect::Absent), Some(&c)).is_err());
    assert!(check_expectation(Some(&Expect::Hash("abc".into())), Some(&c)).is_ok());
    assert!(check_expectation(Some(&Expect::Hash("abd".into())), Some(&c)).is_err());
    assert!(check_expectation(Some(&Expect::Hash("abc".into())), None).is_err());
}

#[test]
fn host_path_check() {
    assert!(validate_path("a/b.txt").is_ok());
    for bad in ["", "/a", "a/", "a//b", "a/../b", ".", "a\\b", "a\0b", "_turserver/worker.wasm"] {
        assert!(validate_path(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn upper_bound_sorts_after_every_extension() {
    assert_eq!(prefix_upper_bound(""), None);
    assert_eq!(prefix_upper_bound("a/"), Some("a0".into()));
    let ub = prefix_upper_bound("img").unwrap();
    for p in ["img", "img/x", "img\u{10FFFF}z", "imgzzzz"] {
        assert!(p < ub.as_str(), "{p}");
    }
    assert!("imh" >= ub.as_str());
}

#[test]
fn urls_are_redacted() {
    assert_eq!(redact_url("https://user:secret@db.example.com/x?authToken=abc"), "https://db.example.com/x");
    assert_eq!(redact_url("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    assert_eq!(redact_url("libsql://db.turso.io#frag"), "libsql://db.turso.io");
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("turserver-store-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn put(store: &Arc<Store>, path: &str, body: &[u8], expect: Option<Expect>) -> Result<(FileMeta, bool), StoreError> {
    let mut upload = store.begin_upload(path, "text/plain", 1 << 30, Some(body.len() as u64), expect).await?;
    upload.write(body).await?;
    upload.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_store_writes_reads_lists_and_deletes() {
    let dir = TempDir::new("roundtrip");
    let store = Arc::new(Store::open_local(&dir.0).await.unwrap());
    assert!(store.is_ready());
    assert_eq!(store.stat("a.txt").await.unwrap(), None);

    let before = store.generation();
    let (meta, created) = put(&store, "a.txt", b"hello world", None).await.unwrap();
    assert!(created);
    assert!(store.generation() > before, "a write changes the generation caches check");
    assert_eq!(meta.size, 11);
    assert_eq!(meta.hash, hex::encode(sha2::Sha256::digest(b"hello world")));
    assert_eq!(store.stat("a.txt").await.unwrap().as_ref(), Some(&meta));
    assert_eq!(store.read(meta.version, "identity", 6, 100).await.unwrap().unwrap(), b"world");
    assert_eq!(store.read_whole(Reader::Public, meta.version, meta.size).await.unwrap(), b"hello world");

    // A body of several chunks reads back whole and across a chunk boundary.
    let big: Vec<u8> = (0..(CHUNK_SIZE * 2 + 100)).map(|i| (i % 251) as u8).collect();
    let (big_meta, _) = put(&store, "dir/big.bin", &big, None).await.unwrap();
    assert_eq!(store.read_whole(Reader::Public, big_meta.version, big_meta.size).await.unwrap(), big);
    let edge = CHUNK_SIZE as u64 - 3;
    let piece = store.read(big_meta.version, "identity", edge, 6).await.unwrap().unwrap();
    assert_eq!(piece, big[edge as usize..edge as usize + 6]);

    let (files, next) = store.list("", None, 1).await.unwrap();
    assert_eq!((files.len(), next.as_deref()), (1, Some("a.txt")));
    let (files, next) = store.list("", next.as_deref(), 10).await.unwrap();
    assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["dir/big.bin"]);
    assert_eq!(next, None);
    assert_eq!(store.list("dir/", None, 10).await.unwrap().0.len(), 1);

    assert!(store.delete("a.txt", None).await.unwrap());
    assert!(!store.delete("a.txt", None).await.unwrap());
    assert_eq!(store.stat("a.txt").await.unwrap(), None);
    // The old version's body is gone with it.
    assert_eq!(store.read(meta.version, "identity", 0, 5).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_check_what_is_there() {
    let dir = TempDir::new("conditional");
    let store = Arc::new(Store::open_local(&dir.0).await.unwrap());
    let (first, _) = put(&store, "x", b"one", Some(Expect::Absent)).await.unwrap();
    assert!(matches!(put(&store, "x", b"two", Some(Expect::Absent)).await, Err(StoreError::PreconditionFailed)));
    let stale = Expect::Hash("0".repeat(64));
    assert!(matches!(put(&store, "x", b"two", Some(stale.clone())).await, Err(StoreError::PreconditionFailed)));
    let (second, created) = put(&store, "x", b"two", Some(Expect::Hash(first.hash.clone()))).await.unwrap();
    assert!(!created);
    assert_eq!(store.read_whole(Reader::Public, second.version, second.size).await.unwrap(), b"two");
    assert!(matches!(store.delete("x", Some(&stale)).await, Err(StoreError::PreconditionFailed)));
    assert!(store.delete("x", Some(&Expect::Hash(second.hash))).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_limit_and_unfinished_ones_store_nothing() {
    let dir = TempDir::new("limits");
    let store = Arc::new(Store::open_local(&dir.0).await.unwrap());
    assert!(matches!(store.begin_upload("big", "a/b", 10, Some(11), None).await, Err(StoreError::TooLarge(10))));
    let mut upload = store.begin_upload("big", "a/b", 10, None, None).await.unwrap();
    assert!(matches!(upload.write(&[0u8; 11]).await, Err(StoreError::TooLarge(10))));
    let mut dropped = store.begin_upload("half", "a/b", 1 << 30, None, None).await.unwrap();
    dropped.write(&vec![1u8; CHUNK_SIZE + 1]).await.unwrap();
    dropped.abort().await;
    assert_eq!(store.stat("big").await.unwrap(), None);
    assert_eq!(store.stat("half").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_document_is_kept_and_replaced() {
    let dir = TempDir::new("site");
    let store = Store::open_local(&dir.0).await.unwrap();
    assert_eq!(store.site_config("site").await.unwrap(), None);
    store.set_site_config("site", "{\"a\":1}").await.unwrap();
    assert_eq!(store.site_config("site").await.unwrap().as_deref(), Some("{\"a\":1}"));
    store.set_site_config("site", "{}").await.unwrap();
    assert_eq!(store.site_config("site").await.unwrap().as_deref(), Some("{}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_own_rows_are_hidden_from_public_reads_and_listings() {
    let dir = TempDir::new("internal");
    let store = Arc::new(Store::open_local(&dir.0).await.unwrap());
    let (own, _) = put(&store, "_turserver/worker.wasm", b"\0asm", None).await.unwrap();
    let (file, _) = put(&store, "a.txt", b"public", None).await.unwrap();
    assert_eq!(store.read_bytes(own.version, "identity", 0, 4).await.unwrap(), None);
    assert_eq!(store.read_whole(Reader::Host, own.version, own.size).await.unwrap(), b"\0asm");
    assert!(store.read_whole(Reader::Public, own.version, own.size).await.is_err());
    assert_eq!(store.read_whole(Reader::Public, file.version, file.size).await.unwrap(), b"public");
    let (files, _) = store.list("", None, 10).await.unwrap();
    assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a.txt"]);
    assert!(store.list("_turserver", None, 10).await.unwrap().0.is_empty());
    // Offsets past a body read nothing, however large.
    for offset in [6, 1 << 32, 1 << 62, u64::MAX] {
        assert_eq!(store.read(file.version, "identity", offset, 4).await.unwrap().unwrap(), b"", "{offset}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_keeps_a_bounded_amount_of_small_bodies_in_memory() {
    let dir = TempDir::new("batch-memory");
    let store = Arc::new(Store::open_local(&dir.0).await.unwrap());
    let mut batch = store.begin_batch(1 << 30).await.unwrap();
    let n = (upload::MAX_BATCH_MEMORY / (512 << 10)) as usize + 8;
    let body = |i: usize| vec![i as u8; 512 << 10];
    for i in 0..n {
        batch.add(&format!("b/{i}.bin"), "application/octet-stream").await.unwrap();
        batch.write(&body(i)).await.unwrap();
    }
    let written = batch.commit().await.unwrap();
    assert_eq!(written.len(), n);
    for (meta, _) in &written {
        let i: usize = meta.path.trim_start_matches("b/").trim_end_matches(".bin").parse().unwrap();
        assert_eq!(store.read_whole(Reader::Public, meta.version, meta.size).await.unwrap(), body(i));
    }
    // The files past the memory budget were staged as chunks, not held.
    let conn = store.conn().await.unwrap();
    let rows = sql::query_all(&conn, "SELECT count(*) FROM files WHERE blob_id IS NOT NULL", ()).await.unwrap();
    let spilled = rows[0].i64(0).unwrap() as usize;
    assert!(spilled >= 8 && spilled < n, "{spilled} of {n} small files staged as chunks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_removes_files_in_the_transaction_that_writes() {
    let dir = TempDir::new("batch-remove");
    let store = Arc::new(Store::open_local(&dir.0).await.unwrap());
    for p in ["site/a.html", "site/old.css", "site/big.bin"] {
        put(&store, p, &vec![b'x'; if p.ends_with(".bin") { 3 << 20 } else { 10 }], None).await.unwrap();
    }
    let paths = |store: Arc<Store>| async move {
        store.list("", None, 10).await.unwrap().0.into_iter().map(|f| f.path).collect::<Vec<_>>()
    };

    // A path both written and removed is refused, whichever comes first.
    let mut batch = store.begin_batch(1 << 30).await.unwrap();
    batch.add("site/a.html", "text/html").await.unwrap();
    assert!(matches!(batch.remove("site/a.html").await, Err(StoreError::Invalid(_))));
    batch.remove("site/old.css").await.unwrap();
    assert!(matches!(batch.add("site/old.css", "text/css").await, Err(StoreError::Invalid(_))));
    batch.abort().await;
    assert_eq!(paths(store.clone()).await, ["site/a.html", "site/big.bin", "site/old.css"], "an aborted batch removes nothing");

    let mut batch = store.begin_batch(1 << 30).await.unwrap();
    batch.add("site/a.html", "text/html").await.unwrap();
    batch.write(b"new").await.unwrap();
    for p in ["site/old.css", "site/big.bin", "site/never-was.txt"] {
        batch.remove(p).await.unwrap();
    }
    let written = batch.commit().await.unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(paths(store.clone()).await, ["site/a.html"]);
    // The removed large file's chunks went with it.
    let conn = store.conn().await.unwrap();
    let rows = sql::query_all(&conn, "SELECT count(*) FROM chunks", ()).await.unwrap();
    assert_eq!(rows[0].i64(0).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_publishes_every_file_and_replaces_old_ones() {
    let dir = TempDir::new("batch-large");
    let store = Arc::new(Store::open_local(&dir.0).await.unwrap());
    put(&store, "many/7.txt", b"old", None).await.unwrap();
    let mut batch = store.begin_batch(1 << 30).await.unwrap();
    let body = |i: usize| format!("file {i} ").repeat(i % 300 + 1).into_bytes();
    for i in 0..450 {
        batch.add(&format!("many/{i}.txt"), "text/plain").await.unwrap();
        batch.write(&body(i)).await.unwrap();
    }
    assert!(matches!(batch.add("many/3.txt", "text/plain").await, Err(StoreError::Invalid(_))), "a path written twice");
    let written = batch.commit().await.unwrap();
    assert_eq!(written.len(), 450);
    let mut versions = std::collections::HashSet::new();
    for (meta, created) in &written {
        let i: usize = meta.path.trim_start_matches("many/").trim_end_matches(".txt").parse().unwrap();
        assert_eq!(*created, i != 7, "{}", meta.path);
        assert!(versions.insert(meta.version), "each file its own version");
        assert_eq!(store.read_whole(Reader::Public, meta.version, meta.size).await.unwrap(), body(i));
        let stat = store.stat(&meta.path).await.unwrap().unwrap();
        assert_eq!((stat.version, stat.encodings.len()), (meta.version, meta.encodings.len()), "{}", meta.path);
    }
    assert_eq!(store.list("many/", None, 1000).await.unwrap().0.len(), 450);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_commit_together_and_each_keeps_its_precondition() {
    let dir = TempDir::new("group-commit");
    let store = Arc::new(Store::open_local(&dir.0).await.unwrap());
    let (old, _) = put(&store, "g/guarded.txt", b"old", None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let store = store.clone();
        let old_hash = old.hash.clone();
        tasks.push(tokio::spawn(async move {
            let (path, expect) = match i % 4 {
                // Wrong expectations: these fail alone.
                0 => (format!("g/guarded-{i}.txt"), Some(Expect::Hash("0".repeat(64)))),
                1 => ("g/guarded.txt".to_string(), Some(Expect::Absent)),
                // The right one, and free writes; two writers share a path.
                2 if i == 2 => ("g/guarded.txt".to_string(), Some(Expect::Hash(old_hash))),
                _ => (format!("g/free-{}.txt", i % 32), None),
            };
            let body = format!("body {i}").into_bytes();
            (i, path.clone(), put(&store, &path, &body, expect).await)
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let (i, path, result) = task.await.unwrap();
        match (i % 4, result) {
            (0 | 1, Err(StoreError::PreconditionFailed)) => {}
            (0 | 1, other) => panic!("write {i} to {path} should fail its precondition: {:?}", other.map(|r| r.0.path)),
            (_, Ok((meta, _))) => {
                ok += 1;
                assert_eq!(meta.path, path);
            }
            (_, Err(e)) => panic!("write {i} to {path} failed: {e}"),
        }
    }
    assert_eq!(ok, 32);
    let (groups, uploads) = (store.commit_groups.get(), store.committed_uploads.get());
    eprintln!("{uploads} uploads in {groups} transactions");
    assert_eq!(uploads, 33, "the 32 and the first write");
    assert!(groups < uploads, "some uploads shared a transaction");
    let (guarded, _) = store.list("g/guarded", None, 100).await.unwrap();
    assert_eq!(guarded.len(), 1, "failed writes left nothing: {:?}", guarded.iter().map(|f| &f.path).collect::<Vec<_>>());
    let now = store.stat("g/guarded.txt").await.unwrap().unwrap();
    assert_eq!(store.read_whole(Reader::Public, now.version, now.size).await.unwrap(), b"body 2");
    // Two writers of one path both succeeded; one of their bodies is there.
    for n in [3u32, 7, 11] {
        let f = store.stat(&format!("g/free-{n}.txt")).await.unwrap().unwrap();
        let body = String::from_utf8(store.read_whole(Reader::Public, f.version, f.size).await.unwrap()).unwrap();
        assert!(body == format!("body {n}") || body == format!("body {}", n + 32), "{body}");
    }
    let conn = store.conn().await.unwrap();
    let staged = sql::query_all(&conn, "SELECT count(*) FROM uploads", ()).await.unwrap();
    assert_eq!(staged[0].i64(0).unwrap(), 0, "nothing left staged");
}

#[test]
fn a_primary_that_reports_its_lock_held_is_worth_another_try() {
    // How a primary reports SQLITE_BUSY: its own code, then the extended one.
    let busy = libsql::Error::RemoteSqliteFailure(3, 5, "database is locked".into());
    assert!(StoreError::write("publishing", busy).is_locked());
    assert!(StoreError::write("publishing", libsql::Error::SqliteFailure(5, "busy".into())).is_locked());
    let constraint = libsql::Error::RemoteSqliteFailure(3, 19, "UNIQUE constraint failed".into());
    assert!(!StoreError::write("publishing", constraint).is_locked());
    assert!(!StoreError::write("publishing", libsql::Error::ConnectionFailed("gone".into())).is_locked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_published_once_another_writer_lets_go_of_the_lock() {
    let dir = TempDir::new("batch-locked");
    let store = Arc::new(Store::open_local(&dir.0).await.unwrap());
    let mut batch = store.begin_batch(1 << 30).await.unwrap();
    batch.add("locked/a.txt", "text/plain").await.unwrap();
    batch.write(b"after the lock").await.unwrap();
    // Another writer holds the lock past the store's busy timeout (5 s).
    let other = store.db.connect().unwrap();
    other.execute("BEGIN IMMEDIATE", ()).await.unwrap();
    let holder = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(5500)).await;
        other.execute("COMMIT", ()).await.unwrap();
    });
    let written = batch.commit().await.expect("published once the lock was free");
    holder.await.unwrap();
    assert_eq!(written.len(), 1);
    let (meta, created) = &written[0];
    assert!(created);
    assert_eq!(store.read_whole(Reader::Public, meta.version, meta.size).await.unwrap(), b"after the lock");
}
