//! A wait's clock, for the timeouts kept inside poll functions: made at the
//! first wait and reset (not reallocated) at each later one, so a
//! connection pays for the clock only when it has to wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

#[derive(Default)]
pub struct Clock(Option<Pin<Box<Sleep>>>);

impl Clock {
    /// Starts (or restarts) the clock: it runs out `after` from now.
    pub fn start(&mut self, after: Duration) {
        let deadline = tokio::time::Instant::now() + after;
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    pub fn is_started(&self) -> bool {
        self.0.is_some()
    }

    /// Ready once the clock has run out; a clock never started never does.
    pub fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}
