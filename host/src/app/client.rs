//! `turserver worker deploy`: sends a worker component to a running edge.

use super::config::DeployArgs;
use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

pub async fn deploy_worker(args: DeployArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let Some(authority) = args.url.strip_prefix("http://").map(|r| r.trim_end_matches('/')) else {
        bail!("--url must be http://HOST:PORT (got {:?})", args.url);
    };
    let stream = tokio::net::TcpStream::connect(authority).await.with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::put("/_turserver/worker")
        .header(hyper::header::HOST, authority)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", args.token))
        .header(hyper::header::CONTENT_TYPE, "application/wasm")
        .body(Full::new(Bytes::from(bytes)))?;
    let resp = sender.send_request(req).await.context("sending the worker")?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        bail!("the edge refused the worker ({status}): {}", text.trim());
    }
    println!("{}", text.trim());
    Ok(())
}
