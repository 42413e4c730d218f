//! The wasm layer: the engine, compiled workers and their on-disk cache,
//! instances (pooled slots, deadlines, reuse), the active worker and its
//! swaps, and the host side of `turserver:store/files` and `kv` with their bindings.
//! It runs a request through a worker and says why one failed; what status
//! that gives is the request pipeline's business.
//!
//! - `engine`: Engine, Linker, epoch clock, compiling and linking workers.
//! - `artifacts`: compiled workers cached on disk, checksummed.
//! - `instance`: per-request Stores, instance reuse, deadlines, [`Invoked`].
//! - `workers`: the active worker, hot swaps (file, database), deploys.
//! - `files`: the host side of `turserver:store/files`.
//! - `kv`: the host side of `turserver:store/kv` (key-value entries).
//! - `bindings`: the only `bindgen!`.

mod artifacts;
mod bindings;
mod engine;
mod files;
mod instance;
mod kv;
mod workers;

/// The generated `turserver:store/files` interface (its types and host traits).
pub use bindings::files as wit;
pub use bindings::kv as kv_wit;
pub use engine::{Runtime, RuntimeConfig};
pub use files::{FilesCtx, FilesError, FilesView, SiteRulesCache};
pub use instance::{InvokeError, Invoked, Worker};
pub use workers::{DeployError, Workers, MAX_WORKER_SIZE};

#[cfg(test)]
pub(crate) mod tests;
