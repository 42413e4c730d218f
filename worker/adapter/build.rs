//! The wasm component's shadow stack: 256 KiB instead of the toolchain's
//! 1 MiB, as for the worker (see its build script): Spin resets a fresh
//! instance's whole memory after each request.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=-zstack-size={}", 256 << 10);
    }
}
