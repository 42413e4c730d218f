//! Operating the host: what it reports about itself (`/_turserver/status`),
//! its metrics (`/metrics`) and the last hour's usage (`/_turserver/usage`).
//! It reads the store and the workers; nothing below it imports it.

mod metrics;
mod status;
mod usage;

pub use metrics::Metrics;
pub use usage::{Sources as UsageSources, Usage};
pub use status::render as render_status;
