//! The HTTP layer, beneath everything that answers requests: the one
//! accept/serve loop, the host's own responses, header names, write access
//! from bearer tokens, lingering request bodies and the send timeout. It
//! knows nothing of workers or the store.

mod auth;
pub mod headers;
mod linger;
mod listener;
mod response;
mod send_timeout;

pub use auth::{TokenDigest, WriteAccess};
pub use linger::RequestBody;
#[cfg(test)]
pub use linger::Linger;
pub use listener::{serve, shutdown_signal, Handler};
pub use response::{
    full_body, json_response, json_value, no_content, response, retry_later, text_response, Response, ResponseBody,
};

/// A request as the servers hand it on.
pub type Request = hyper::Request<RequestBody>;
