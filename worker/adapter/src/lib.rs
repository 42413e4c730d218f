//! The store adapter: a component that exports `turserver:store/files` and
//! carries every call over `wasi:http` to a turserver host started with
//! `--sidecar-listen`, so the worker runs unchanged where the host cannot
//! link it directly (Spin). The wire protocol is the `turserver-protocol`
//! crate, which the host's sidecar parses with.
//!
//! - [`wire`]: the sidecar URL (plain Rust, unit-tested natively).
//! - `wasm`: the component itself (wasm32 only).
//!
//! Configuration: with the `spin` feature, Spin variables `sidecar_url` and
//! `sidecar_token` (secret); without, environment variables
//! `TURSERVER_SIDECAR_URL` and `TURSERVER_SIDECAR_TOKEN` (e.g. `wasmtime
//! serve --env`).

pub mod wire;

#[cfg(target_arch = "wasm32")]
mod wasm;
