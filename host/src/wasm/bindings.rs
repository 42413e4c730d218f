//! The one `bindgen!` of the host: the `turserver:store/files` and
//! `turserver:store/kv` interfaces the worker imports. The worker's `wasi:http` export is driven through
//! `wasmtime_wasi_http`'s own bindings.

wasmtime::component::bindgen!({
    path: "../wit",
    interfaces: "import turserver:store/files@0.1.5; import turserver:store/kv@0.1.5;",
    imports: { default: async | trappable },
    // The sidecar carries these values as JSON.
    additional_derives: [serde::Serialize, serde::Deserialize],
    // Host functions return `Result<T, FilesError>` and use `?`: a store
    // failure reaches the worker as its `error`, a host bug traps.
    trappable_error_type: {
        "turserver:store/files.error" => crate::wasm::files::FilesError,
    },
    with: {
        // `send` writes to the worker's response stream: wasmtime-wasi's own.
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "turserver:store/files.upload": crate::wasm::files::UploadHandle,
        "turserver:store/files.batch": crate::wasm::files::BatchHandle,
    },
});

pub use turserver::store::{files, kv};
