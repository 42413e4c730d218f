//! Request bodies must keep moving: a body whose next bytes do not arrive
//! within the body timeout fails, as nginx's `client_body_timeout` does, so
//! a client trickling a body never holds what reads it (a worker instance, a
//! staged upload) for longer than that between two reads.

use http_body::{Body, Frame, SizeHint};
use super::clock::Clock;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Why a request body failed.
#[derive(Debug)]
pub enum BodyError {
    /// The connection failed.
    Hyper(hyper::Error),
    /// No bytes arrived for the body timeout.
    Stalled(Duration),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Hyper(e) => e.fmt(f),
            BodyError::Stalled(t) => write!(f, "no request body bytes arrived for {t:?}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// A body whose reads fail once one has waited `timeout`.
pub struct BodyTimeout<B> {
    inner: B,
    timeout: Duration,
    /// The clock of a waiting read.
    clock: Clock,
    waiting: bool,
}

impl<B> BodyTimeout<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        BodyTimeout { inner, timeout, clock: Clock::default(), waiting: false }
    }
}

impl<B: Body<Error = hyper::Error> + Unpin> Body for BodyTimeout<B> {
    type Data = B::Data;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Hyper)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.clock.start(this.timeout);
                }
                match this.clock.poll_out(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Stalled(this.timeout)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl From<BodyError> for wasmtime_wasi_http::Error {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Hyper(e) => wasmtime_wasi_http::Error::Hyper(e),
            BodyError::Stalled(_) => wasmtime_wasi_http::Error::ConnectionReadTimeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;

    /// A body of two frames with a pause of `gap` between them.
    fn paused(gap: Duration) -> impl Body<Data = Bytes, Error = hyper::Error> + Unpin {
        let frames = futures::stream::unfold(0, move |n| async move {
            match n {
                0 => Some((Ok(Frame::data(Bytes::from_static(b"a"))), 1)),
                1 => {
                    tokio::time::sleep(gap).await;
                    Some((Ok(Frame::data(Bytes::from_static(b"b"))), 2))
                }
                _ => None,
            }
        });
        http_body_util::StreamBody::new(Box::pin(frames))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_pauses_past_the_timeout_fails() {
        let body = BodyTimeout::new(paused(Duration::from_secs(11)), Duration::from_secs(10));
        let err = body.collect().await.err().expect("the stalled body fails");
        assert!(matches!(err, BodyError::Stalled(_)), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_coming_is_read_whole() {
        let body = BodyTimeout::new(paused(Duration::from_secs(9)), Duration::from_secs(10));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ab");
    }
}
