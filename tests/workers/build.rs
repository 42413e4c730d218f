//! A version starting with `stateless` builds a worker that declares itself
//! stateless, so the host reuses its instances.

fn main() {
    println!("cargo:rerun-if-env-changed=TEST_WORKER_VERSION");
    println!("cargo::rustc-check-cfg=cfg(stateless)");
    if std::env::var("TEST_WORKER_VERSION").is_ok_and(|v| v.starts_with("stateless")) {
        println!("cargo:rustc-cfg=stateless");
    }
}
