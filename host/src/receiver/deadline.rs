//! A deadline on a connection's first bytes, against clients that open a connection and never
//! send a request (slowloris). hyper's HTTP/1 server has a header timeout, but an HTTP/2
//! connection (gRPC, or OTLP/HTTP over h2c) waits for the client's preface for as long as the
//! client keeps the socket open; wrapped in [`FirstBytes`], a connection that has not sent its
//! first [`HTTP2_PREFACE_LEN`] bytes within the deadline fails with `TimedOut` and is closed.
//!
//! Under TLS the wrapper sees ciphertext: the deadline then covers the start of the handshake
//! (the handshake itself has its own timeout), not the preface inside the encrypted stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Length of the HTTP/2 client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
pub const HTTP2_PREFACE_LEN: usize = 24;

/// An IO stream whose first `remaining` bytes must arrive before a deadline.
#[derive(Debug)]
pub struct FirstBytes<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    remaining: usize,
}

impl<S> FirstBytes<S> {
    /// Wraps `inner`: reads fail with `TimedOut` if the first `bytes` bytes have not arrived
    /// within `within` of now. Must be created inside a tokio runtime.
    pub fn new(inner: S, within: Duration, bytes: usize) -> Self {
        FirstBytes {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            remaining: bytes,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.remaining = this.remaining.saturating_sub(n);
                // Enough bytes, or the end of the stream: the deadline is over.
                if this.remaining == 0 || n == 0 {
                    this.deadline = None;
                }
            }
            Poll::Ready(Err(_)) => {}
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    this.deadline = None;
                    this.remaining = 0;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent no request in time",
                    )));
                }
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for FirstBytes<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_silent_client_times_out_and_a_prompt_one_does_not() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut slow = FirstBytes::new(server, Duration::from_millis(50), 4);
        client.write_all(b"ab").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(slow.read(&mut buf).await.unwrap(), 2);
        let err = slow.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (mut client, server) = tokio::io::duplex(64);
        let mut prompt = FirstBytes::new(server, Duration::from_millis(50), 4);
        client.write_all(b"abcd").await.unwrap();
        assert_eq!(prompt.read(&mut buf).await.unwrap(), 4);
        // Past the first bytes, silence is allowed: the read is still pending after the deadline.
        let later = tokio::time::timeout(Duration::from_millis(150), prompt.read(&mut buf)).await;
        assert!(later.is_err(), "an established connection may be idle");
        client.write_all(b"e").await.unwrap();
        assert_eq!(prompt.read(&mut buf).await.unwrap(), 1);
    }
}
