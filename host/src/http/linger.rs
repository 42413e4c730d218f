//! Request bodies that a handler leaves unread are drained, within bounds,
//! before the connection lets go of them.
//!
//! An answer that refuses an upload (413, 401, 403) is sent before the body
//! has arrived. If the connection then closed with body bytes still unread,
//! the kernel would answer them with a reset, and a client still sending
//! (an HTTP client that fails the whole exchange on a write error, as the
//! store adapter's runtime does) would lose the answer it was sent. So the
//! rest of the body is read and discarded first, as nginx's lingering close
//! does: at most [`LINGER_BYTES`], for at most [`LINGER_TIME`].

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most bytes of an unread body that are read and discarded.
pub const LINGER_BYTES: u64 = 64 << 20;
/// Longest an unread body is drained.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// A request as the servers hand it on: its body must keep moving, and
/// lingers.
pub type RequestBody = Linger<super::body_timeout::BodyTimeout<hyper::body::Incoming>>;

/// A body that can be drained in a task of its own.
pub trait Drainable: Body<Data: Send, Error: Send> + Send + Unpin + 'static {}

impl<B: Body<Data: Send, Error: Send> + Send + Unpin + 'static> Drainable for B {}

/// A request body that, dropped before its end, drains the rest in a task
/// of its own.
pub struct Linger<B: Drainable>(Option<B>);

impl<B: Drainable> Linger<B> {
    pub fn new(body: B) -> Self {
        Linger(Some(body))
    }
}

impl<B: Drainable> Body for Linger<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0.as_ref().map(Body::size_hint).unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl<B: Drainable> Drop for Linger<B> {
    fn drop(&mut self) {
        let Some(body) = self.0.take() else { return };
        // Requests without a body (GETs, as a rule) end here, spawning nothing.
        if body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads and discards what is left of `body`, within the bounds.
async fn drain<B: Body + Unpin>(mut body: B) {
    let mut left = LINGER_BYTES;
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            left = left.saturating_sub(frame.data_ref().map_or(0, |d| d.remaining() as u64));
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, read).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A body of `pieces` frames of `size` bytes, counting what is read.
    fn counted(pieces: usize, size: usize, read: Arc<AtomicU64>) -> impl Body<Data = Bytes, Error = std::io::Error> + Send + Unpin {
        let frames = futures::stream::iter((0..pieces).map(move |_| {
            read.fetch_add(size as u64, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![0u8; size])))
        }));
        StreamBody::new(frames)
    }

    #[tokio::test]
    async fn a_body_dropped_unread_is_drained() {
        let read = Arc::new(AtomicU64::new(0));
        let mut body = Linger::new(counted(4, 1000, read.clone()));
        let _first = body.frame().await;
        drop(body);
        for _ in 0..500 {
            if read.load(Ordering::SeqCst) == 4000 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the rest of the body was not read: {} bytes", read.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn draining_stops_at_the_bound() {
        let read = Arc::new(AtomicU64::new(0));
        let pieces = (LINGER_BYTES >> 20) as usize * 2;
        drain(counted(pieces, 1 << 20, read.clone())).await;
        assert_eq!(read.load(Ordering::SeqCst), LINGER_BYTES);
    }
}
