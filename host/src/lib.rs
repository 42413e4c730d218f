//! turserver: an edge file server. A wasm worker answers every HTTP request;
//! this host runs it and owns the libSQL database (a local file, or an
//! embedded replica kept in sync with a primary).
//!
//! # Layout
//! - [`config`]: command line and environment, validated up front.
//! - [`client`]: `turserver worker deploy`, a client of a running edge.
//! - [`server`]: the hyper server, host endpoints, write access, shutdown.
//! - [`send_timeout`]: connections whose client stopped reading are closed.
//! - [`linger`]: request bodies left unread are drained, so refusals reach the client.
//! - [`runtime`]: Engine, Linker, per-request Stores, deadlines and memory limits.
//! - [`workers`]: the active worker and hot swaps (watched file, database deploys).
//! - [`cache`]: compiled workers cached on disk.
//! - [`status`]: `GET /_turserver/status` and the sync counters behind it.
//! - [`metrics`]: `GET /metrics` (Prometheus).
//! - [`edge_cache`]: the in-memory response cache in front of the worker.
//! - [`sidecar`]: the store over HTTP for workers on Spin (`--sidecar-listen`).
//! - [`bindings`]: the only `bindgen!`, for `turserver:store/files`.
//! - [`files`]: the host side of `turserver:store/files`.
//! - [`store`]: the libSQL database: schema, queries, chunked uploads.
//! - [`sync`]: background sync with the primary and garbage collection.
//! - [`error`]: store errors, classified by what a caller should do.

pub mod bindings;
pub mod cache;
pub mod client;
pub mod config;
pub mod edge_cache;
pub mod error;
pub mod files;
pub mod linger;
pub mod metrics;
pub mod runtime;
pub mod send_timeout;
pub mod server;
pub mod sidecar;
pub mod status;
pub mod store;
pub mod sync;
pub mod workers;
