//! The runtime's own tests: which workers link.

use super::{Runtime, RuntimeConfig};
use std::time::Duration;

/// A runtime for tests: no compiled-worker cache, a few instances.
pub(crate) fn test_config(worker_memory_bytes: u64) -> RuntimeConfig {
    RuntimeConfig {
        worker_memory_bytes,
        deadline: Duration::from_secs(5),
        cache_dir: None,
        max_instances: 16,
        send_timeout: Duration::from_secs(60),
    }
}

/// A stand-in worker (it traps if called) importing `files` at
/// `version` with the functions `files_wit` declares.
fn worker_importing(version: &str, files_wit: &str) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    // The repository's WIT brings the wasi:http package the world exports.
    resolve.push_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit")).unwrap();
    let source = format!(
        "package turserver:store@{version};\n\
         interface files {{ {files_wit} }}\n\
         world old-worker {{ import files; export wasi:http/incoming-handler@0.2.0; }}"
    );
    let pkg = resolve.push_str("old.wit", &source).unwrap();
    let world = resolve.select_world(&[pkg], Some("old-worker")).unwrap();
    let mut module = wit_component::dummy_module(&resolve, world, wit_parser::ManglingAndAbi::Standard32);
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8)
        .unwrap();
    wit_component::ComponentEncoder::default().module(&module).unwrap().validate(true).encode().unwrap()
}

const ERROR: &str = "variant error { not-found, unauthorized, forbidden, too-large(u64), \
                     precondition-failed, invalid(string), unavailable(string), internal(string) }";

#[test]
fn workers_built_against_earlier_files_versions_still_link() {
    let runtime = Runtime::new(test_config(16 << 20)).unwrap();
    // 0.1.0 had no `authorize`; 0.1.1 added it; 0.1.2 added `send`; 0.1.3 `check-write`;
    // 0.1.4 `batch.remove`; 0.1.5 the `kv` interface.
    let v010 = worker_importing(
        "0.1.0",
        &format!("{ERROR} read: func(version: u64, encoding: string, offset: u64, len: u64) -> result<list<u8>, error>;"),
    );
    let v011 = worker_importing("0.1.1", &format!("{ERROR} authorize: func(credentials: string);"));
    // 0.1.4 added `batch.remove`: a worker whose batch lacks it still links.
    let v013 = worker_importing(
        "0.1.3",
        &format!(
            "{ERROR} resource batch {{ add: func(path: string, content-type: string) -> result<_, error>; }} \
             begin-batch: func() -> result<batch, error>; check-write: func() -> result<_, error>;"
        ),
    );
    runtime.load(&v010).expect("a 0.1.0 worker links");
    runtime.load(&v011).expect("a 0.1.1 worker links");
    runtime.load(&v013).expect("a 0.1.3 worker links");
    // A 0.1.4 worker imports no `kv` at all.
    let v014 = worker_importing(
        "0.1.4",
        &format!(
            "{ERROR} resource batch {{ remove: func(path: string) -> result<_, error>; }} \
             begin-batch: func() -> result<batch, error>;"
        ),
    );
    runtime.load(&v014).expect("a 0.1.4 worker links");

    // The checks can fail: another major version, or a function this
    // host lacks, is refused.
    let v020 = worker_importing("0.2.0", &format!("{ERROR} authorize: func(credentials: string);"));
    assert!(runtime.load(&v020).is_err());
    let unknown = worker_importing("0.1.1", &format!("{ERROR} frobnicate: func();"));
    let err = runtime.load(&unknown).err().expect("an unknown import is refused");
    assert!(format!("{err:#}").contains("frobnicate"), "{err:#}");
}
