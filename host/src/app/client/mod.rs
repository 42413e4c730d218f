//! The client commands: `deploy`, `put`, `get`, `ls`, `rm`, `status`,
//! `worker deploy` and `keys` speak HTTP to a running edge, as any client
//! would; `token issue` signs tokens offline.
//!
//! - this module: the edge's address and token, requests with retries, and
//!   the server's reasons as errors.
//! - `deploy`: a directory published in one batch, sending only what changed.
//! - `files`: one file or folder at a time, the edge's status, the worker.
//! - `keys`: signing keys, the edges' key set, and signed tokens.
//! - `progress`: bars on a terminal, a few plain lines in a pipe.

mod deploy;
mod files;
mod keys;
mod progress;

pub use deploy::deploy;
pub use files::{deploy_worker, get, ls, put, rm, status};
pub use keys::{keys_add, keys_change, keys_generate, keys_ls, token_issue, url_sign};

use super::config::RemoteArgs;
use anyhow::{bail, Context};
use reqwest::{RequestBuilder, Response, StatusCode};
use std::time::Duration;

/// Longest wait between two attempts, whatever `Retry-After` asks.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A running edge, as the client commands reach it.
pub struct Remote {
    base: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
    /// Attempts of a request that keeps failing with 503 or a lost connection.
    attempts: u32,
}

/// Why a request failed after its retries.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The edge answered, refusing it: not retried.
    #[error("{status}: {reason}")]
    Refused { status: StatusCode, reason: String },
    /// No answer, or 503 on every attempt.
    #[error("{0}")]
    Unreachable(String),
}

impl Remote {
    pub fn new(args: &RemoteArgs) -> anyhow::Result<Remote> {
        let mut base = reqwest::Url::parse(&args.url)
            .with_context(|| format!("--url {:?} is not a URL (e.g. http://127.0.0.1:8080)", args.url))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            bail!("--url must be http://HOST[:PORT] or https://HOST[:PORT] (got {:?})", args.url);
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if matches!(&args.token, Some(t) if t.trim().is_empty()) {
            bail!("--token is empty");
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("turserver/", env!("CARGO_PKG_VERSION")));
        // `NAME.localhost` is this machine (RFC 6761), as browsers and curl
        // take it, so one local server's sites can be named without DNS.
        if let Some(host) = base.host_str().filter(|h| h.ends_with(".localhost")) {
            let port = base.port_or_known_default().unwrap_or(80);
            builder = builder.resolve(host, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let http = builder.build().context("starting the HTTP client")?;
        Ok(Remote { base, token: args.token.clone(), http, attempts: args.retries.saturating_add(1) })
    }

    /// The URL of a store path or API route (`_api/files`), percent-encoded.
    pub fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let encoded: Vec<String> = path
            .split('/')
            .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        url.set_path(&format!("{}{}", self.base.path(), encoded.join("/")));
        url
    }

    /// A request with the token attached, when there is one.
    pub fn request(&self, method: reqwest::Method, url: reqwest::Url) -> RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends the request `make` builds, again after a lost connection or a
    /// 503 (waiting as `Retry-After` asks, else backing off), until it gets
    /// another answer. `on_retry` hears why before each new attempt.
    pub async fn send(
        &self,
        mut make: impl FnMut() -> RequestBuilder,
        mut on_retry: impl FnMut(&str),
    ) -> Result<Response, RequestError> {
        let mut backoff = Duration::from_millis(250);
        for attempt in 1..=self.attempts {
            let (why, wait) = match make().send().await {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE || resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                    let wait = retry_after(&resp).unwrap_or(backoff);
                    let status = resp.status();
                    (format!("{status}: {}", reason(resp).await), wait)
                }
                Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    return Err(RequestError::Refused { status, reason: reason(resp).await });
                }
                Err(e) if e.is_builder() => return Err(RequestError::Unreachable(format!("{e:#}"))),
                Err(e) => (describe(&e), backoff),
            };
            if attempt == self.attempts {
                return Err(RequestError::Unreachable(why));
            }
            on_retry(&format!("{why}; retrying in {:.1}s", wait.as_secs_f64()));
            tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        unreachable!("the last attempt returns")
    }

    /// `send` for a request that can be built again, with retries said on
    /// stderr.
    pub async fn send_simple(&self, make: impl FnMut() -> RequestBuilder) -> anyhow::Result<Response> {
        self.send(make, |why| eprintln!("{why}")).await.map_err(|e| self.explain(e))
    }

    /// A request failure as the error a person reads, with what to do.
    pub fn explain(&self, e: RequestError) -> anyhow::Error {
        let url = self.base.as_str();
        match e {
            RequestError::Refused { status, reason } => match status.as_u16() {
                401 => anyhow::anyhow!("{url} asks for a write token ({reason}); pass --token or set TURSERVER_TOKEN"),
                403 => anyhow::anyhow!("{url} refused the token ({reason}); check --token / TURSERVER_TOKEN"),
                _ => anyhow::anyhow!("{url} answered {status}: {reason}"),
            },
            RequestError::Unreachable(why) => {
                let attempts = self.attempts;
                anyhow::anyhow!("{url} did not take the request in {attempts} attempt(s) ({why}); is the edge running, and is --url right?")
            }
        }
    }
}

/// Characters escaped in one path segment.
pub(super) const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The first line of the server's answer, which says why.
async fn reason(resp: Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        "no reason given".into()
    } else {
        line.chars().take(300).collect()
    }
}

/// A transport error with its causes, on one line.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_connect() { "cannot connect".to_string() } else { e.to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A store path in the form the edge reads paths in (as in a URL, where
/// `%` starts an escape): a file named `100%.html` is sent as `100%25.html`.
pub fn wire(path: &str) -> String {
    path.replace('%', "%25")
}

/// A path as the user typed it or a file is named, in store form, or why
/// the edge would refuse it.
pub fn local_store_path(name: &str) -> Result<String, String> {
    turserver_worker::core::store_path(&wire(name))
}

/// `n` bytes as a person reads them.
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
