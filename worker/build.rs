//! The wasm component's shadow stack: 256 KiB instead of the toolchain's
//! 1 MiB. A runtime that instantiates per request (Spin, `wasmtime serve`)
//! resets every byte of a fresh instance's memory when it is done, and the
//! stack is most of it. The deepest the worker goes (a site document nested
//! to serde_json's limit) needs well under a quarter of this; past the
//! stack, a wasm access traps (the stack sits below the data), it never
//! overwrites anything.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=-zstack-size={}", 256 << 10);
    }
}
