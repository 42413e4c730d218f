//! The HTTP layer, beneath everything that answers requests: the one
//! accept/serve loop with the connection limit and each connection's clocks
//! (header read, idle, send, request body), the checks every request passes
//! (Host, Authorization), the host's own responses, header names, write
//! access from bearer tokens (the write token, or signed tokens with path
//! rules), and lingering request bodies. It knows nothing
//! of workers or the store.

mod auth;
mod body_timeout;
mod clock;
pub mod headers;
mod linger;
mod listener;
mod request;
mod response;
mod timed_io;
pub mod tokens;

pub use auth::{bearer_token, Refusal, TokenDigest, WriteAccess};
pub use linger::RequestBody;
pub use listener::{raise_fd_limit, serve, shutdown_signal, ConnectionQuota, Connections, Handler, Limits, REFUSING_AT_ONCE};
pub use response::{
    full_body, json_response, json_value, method_not_allowed, no_content, response, retry_later, text_response,
    Response, ResponseBody,
};

/// A request as the servers hand it on.
pub type Request = hyper::Request<RequestBody>;

/// A request body as the servers hand it on: its pieces must come within
/// `timeout` of each other, and what is left unread is drained.
pub fn request_body(body: hyper::body::Incoming, timeout: std::time::Duration) -> RequestBody {
    linger::Linger::new(body_timeout::BodyTimeout::new(body, timeout))
}
