//! The default turserver worker, a `wasi:http` component.
//!
//! # Layout
//! - [`path`]: request-path normalisation (what is refused and why).
//! - [`http`]: header grammar: entity tags, dates, ranges, Accept-Encoding.
//! - [`site`]: site rules (SPA fallback, 404 page, Cache-Control, CORS).
//! - [`core`]: routing and response shaping over a [`core::Store`]; pure and
//!   unit-tested natively.
//! - `wasm` (wasm32 only): the entry point that converts `wasi:http` types,
//!   calls the core, and streams bodies to and from the host.

pub mod core;
pub mod http;
pub mod path;
pub mod site;

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(test)]
mod properties;
