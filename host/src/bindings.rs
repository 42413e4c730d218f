//! The one `bindgen!` of the host: the `turserver:store/files` interface the
//! worker imports. The worker's `wasi:http` export is driven through
//! `wasmtime_wasi_http`'s own bindings.

wasmtime::component::bindgen!({
    path: "../wit",
    interfaces: "import turserver:store/files@0.1.1;",
    imports: { default: async | trappable },
    // The sidecar carries these values as JSON.
    additional_derives: [serde::Serialize, serde::Deserialize],
    with: {
        "turserver:store/files.upload": crate::files::UploadHandle,
        "turserver:store/files.batch": crate::files::BatchHandle,
    },
});

pub use turserver::store::files;
