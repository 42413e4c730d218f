//! Black-box tests: the real `turserver` binary, spoken to over HTTP, with a
//! real sqld primary where replication is involved.

mod access;
mod cache;
mod conformance;
mod dashboard;
mod deploy;
mod feed;
mod hardening;
mod kv;
mod local;
mod operations;
mod queue;
mod replica;
mod sites;
mod soak;
mod spin;
mod swap;
mod support;
