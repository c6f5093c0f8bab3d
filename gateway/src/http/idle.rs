//! The idle timeout: a connection with no request in flight that has sent nothing for
//! this long is closed. Hyper has no idle timer for HTTP/2, so a client that sends the
//! preface and then nothing would hold a connection slot (and a per-address slot) for
//! ever; for HTTP/1 hyper also starts its header timer when a connection goes idle, so
//! there the smaller of the two applies.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests in flight on one connection, counted by the service.
#[derive(Default)]
pub struct InFlight(AtomicUsize);

/// Held while a request is being answered; dropped with the handler's future.
pub struct Busy(Arc<InFlight>);

impl InFlight {
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.0.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's stream that reads as closed once it has been idle for `idle`.
pub struct IdleIo<T> {
    inner: T,
    in_flight: Arc<InFlight>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether `timer` runs for the current idle spell.
    armed: bool,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, in_flight: Arc<InFlight>, idle: Duration) -> IdleIo<T> {
        IdleIo {
            inner,
            in_flight,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            armed: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.armed = false;
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.in_flight.0.load(Ordering::Acquire) > 0 => {
                // Hyper reads again once the answer is out, and the spell starts then.
                this.armed = false;
                Poll::Pending
            }
            Poll::Pending => {
                if !this.armed {
                    this.timer.as_mut().reset(Instant::now() + this.idle);
                    this.armed = true;
                }
                match this.timer.as_mut().poll(cx) {
                    // End of stream: hyper closes the connection as if the client had.
                    Poll::Ready(()) => Poll::Ready(Ok(())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
