//! turserver: an edge file server. A wasm worker answers every HTTP request;
//! this host runs it and owns the libSQL database (a local file, or an
//! embedded replica kept in sync with a primary).
//!
//! # Layout
//! Folders are layers; a layer imports only those listed after it (checked
//! by a test below), so a request's path reads top to bottom:
//!
//! - [`app`]: wires every layer: configuration, startup, the public port's
//!   routes (host endpoints, the key set's, the change feed, the dashboard
//!   at `/_turserver/ui/`, embedded from `host/ui/`), many sites on one
//!   host (`--sites`: the sites file, routing by host, opening and closing
//!   sites), shutdown;
//!   the client commands
//!   (`deploy`, `put`, `get`, `ls`, `rm`, `status`, `worker deploy`, `keys`,
//!   `token issue`, `url sign`).
//! - `sidecar`: the store over HTTP for workers on Spin (`--sidecar-listen`).
//! - `ops`: `/_turserver/status`, `/metrics` (one registry, metrics
//!   registered by each owner) and the last hour's usage for the dashboard.
//! - `pipeline`: the request's steps before and after the worker:
//!   consistency wait, response cache, access (the write token, signed
//!   tokens and links checked against the key set), invoke.
//! - `wasm`: engine, compiled-worker cache, instances and reuse, the active
//!   worker and swaps, the `turserver:store/files` host side and bindings.
//! - `store`: the libSQL database: reads, writes, uploads, publishing in
//!   groups, the change log, replication and its stats, the background
//!   sync and GC, schema.
//! - `http`: the one accept/serve loop for both ports, host responses,
//!   header names, bearer tokens and signed tokens' rules, lingering
//!   bodies, the send timeout.
//! - `task`: background tasks that die with their owner.
//!
//! The wire protocol between the sidecar and the store adapter is the
//! `turserver-protocol` crate, shared with the adapter.

pub mod app;
mod http;
mod ops;
mod pipeline;
mod sidecar;
mod store;
mod task;
mod wasm;

#[cfg(test)]
mod layers;
