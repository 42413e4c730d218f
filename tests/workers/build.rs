//! A version starting with `stateless` builds a worker that declares itself
//! stateless, so the host reuses its instances; `hello` builds the plain
//! `wasi:http` baseline, and `hello-fetch` the same with one outbound GET.

fn main() {
    println!("cargo:rerun-if-env-changed=TEST_WORKER_VERSION");
    println!("cargo::rustc-check-cfg=cfg(stateless)");
    println!("cargo::rustc-check-cfg=cfg(hello)");
    println!("cargo::rustc-check-cfg=cfg(fetch)");
    let version = std::env::var("TEST_WORKER_VERSION").unwrap_or_default();
    if version.starts_with("stateless") {
        println!("cargo:rustc-cfg=stateless");
    }
    if version == "hello" || version == "hello-fetch" {
        println!("cargo:rustc-cfg=hello");
    }
    if version == "hello-fetch" {
        println!("cargo:rustc-cfg=fetch");
    }
}
