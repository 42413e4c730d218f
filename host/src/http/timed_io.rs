//! A connection's own clocks, kept on its I/O stream:
//!
//! - the send timeout: a response write that makes no progress for it fails;
//!   hyper then drops the connection, and the worker instance streaming into
//!   it sees its stream close and ends. As with nginx's `send_timeout`, this
//!   clock runs only while a write is waiting for the client, so slow
//!   clients that keep reading are never cut off. It sees a connection, not
//!   an h2 stream: each worker response is bounded the same way on its own
//!   (`wasm::instance`), so a stream whose window stays shut is cut too;
//! - the idle timeout: a connection on which no byte has moved either way
//!   for it is closed (HTTP/1.1 keep-alive and h2 alike). It is checked only
//!   when a read has to wait, so busy connections pay nothing for it.

use super::clock::Clock;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An I/O stream whose writes fail once one has waited `timeout`, and whose
/// reads fail once nothing has moved for `idle`.
pub struct TimedIo<S> {
    inner: S,
    timeout: Duration,
    idle: Duration,
    /// The idle clock, started when a read first waits after bytes moved.
    idle_clock: Clock,
    /// Bytes moved since the idle clock was last armed.
    active: bool,
    /// The clock of a waiting write.
    clock: Clock,
    /// A write is waiting: set when one first has to wait, cleared by any
    /// write that goes on.
    waiting: bool,
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, timeout: Duration, idle: Duration) -> Self {
        TimedIo { inner, timeout, idle, idle_clock: Clock::default(), active: true, clock: Clock::default(), waiting: false }
    }

    /// A read that has to wait: fails once the connection has been idle
    /// for the idle timeout.
    fn idle_wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.active || !self.idle_clock.is_started() {
            self.active = false;
            self.idle_clock.start(self.idle);
        }
        match self.idle_clock.poll_out(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the connection was idle for {:?}", self.idle),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Bytes written count as activity (a flush with nothing to send does not).
    fn moved(&mut self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled {
            self.active |= *n > 0;
        }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        if !self.waiting {
            self.waiting = true;
            self.clock.start(self.timeout);
        }
        match self.clock.poll_out(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no response bytes for {:?}", self.timeout),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => match this.idle_wait(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
            ready => {
                this.active |= buf.filled().len() > before;
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.moved(&polled);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.moved(&polled);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_the_reader_never_takes_fails_after_the_timeout() {
        let (client, server) = tokio::io::duplex(1024);
        let mut server = TimedIo::new(server, Duration::from_secs(5), Duration::from_secs(3600));
        // The pipe takes 1 KiB, then the write waits for a reader that never comes.
        let err = server.write_all(&[7u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_served_whole() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = TimedIo::new(server, Duration::from_secs(5), Duration::from_secs(3600));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            loop {
                // Each read comes well within the timeout, though the whole
                // transfer takes far longer than it.
                tokio::time::sleep(Duration::from_secs(3)).await;
                match client.read(&mut buf).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        // Idle first, longer than the timeout: no write is waiting, so no clock runs.
        tokio::time::sleep(Duration::from_secs(60)).await;
        server.write_all(&[7u8; 8192]).await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap().len(), 8192);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = TimedIo::new(server, Duration::from_secs(60), Duration::from_secs(10));
        let mut buf = [0u8; 16];
        // Bytes every 6 s: never idle for 10 s, so reads keep working.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        }
        // Then nothing: the waiting read fails after the idle timeout.
        let started = tokio::time::Instant::now();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
