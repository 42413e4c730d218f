//! Operating the host: what it reports about itself (`/_turserver/status`)
//! and its metrics (`/metrics`). It reads the store and the workers; nothing
//! below it imports it.

mod metrics;
mod status;

pub use metrics::Metrics;
pub use status::render as render_status;
