//! A lingering close for client connections, as nginx and Apache do it.
//!
//! A route that refuses a body (413 on its `Content-Length`, 401 before reading it) answers
//! before the client has finished sending. If the server then closed the socket with the rest
//! of the body unread, the kernel would answer the client's next segments with a reset, and the
//! client would see "connection reset" instead of the answer it was sent. So when hyper shuts a
//! connection down, the write side is closed first (the client sees the answer and its end),
//! then whatever the client still sends is read and thrown away — into a fixed buffer, for at
//! most `LINGER_TIME` and `LINGER_BYTES` — before the socket is dropped.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The longest a closing connection is drained.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// The most a closing connection's unread bytes are drained; a larger body is cut with a reset.
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// The drain's buffer, one per closing connection, only while it drains.
const DRAIN_CHUNK: usize = 8 * 1024;

/// A client connection whose shutdown lingers (see the module's comment).
pub struct Lingering {
    stream: TcpStream,
    closing: Option<Closing>,
}

struct Closing {
    deadline: Pin<Box<Sleep>>,
    drained: usize,
    buffer: Box<[u8; DRAIN_CHUNK]>,
}

impl Lingering {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            closing: None,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_none() {
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.closing = Some(Closing {
                deadline: Box::pin(tokio::time::sleep(LINGER_TIME)),
                drained: 0,
                buffer: Box::new([0; DRAIN_CHUNK]),
            });
        }
        let closing = this.closing.as_mut().expect("set above");
        loop {
            if closing.deadline.as_mut().poll(cx).is_ready() || closing.drained >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut closing.buffer[..]);
            match ready!(Pin::new(&mut this.stream).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => closing.drained += buf.filled().len(),
                // The client is gone: nothing left to spare it from.
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}
