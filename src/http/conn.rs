//! One accepted connection's socket, with the time limits hyper leaves to its user.
//!
//! - A request (head and body) must arrive whole within [`REQUEST_TIMEOUT`] of its first
//!   byte; a new connection must deliver its first request within the same time.
//! - A keep-alive connection may wait [`IDLE_TIMEOUT`] between an answer and the next
//!   request: longer than the idle timeout of the proxies that usually sit in front (60 s),
//!   so that they, not stockq, close the connections they keep.
//!
//! hyper's own `header_read_timeout` would also run while a kept connection waits for its
//! next request, so the two limits could not differ; the socket keeps them instead. When a
//! limit passes, the pending read fails and hyper drops the connection.
//!
//! The socket also rewrites the answers hyper writes by itself to requests it cannot parse
//! (an empty 400, 414 or 431, after which the connection closes) into their JSON form,
//! [`answer::automatic`]: the application never answers an error without a body, so an
//! empty one is always hyper's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::http::answer;

pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

pub(crate) struct Guarded {
    stream: TcpStream,
    /// Whether a request is on its way: bytes arrived since the last answer was written.
    receiving: bool,
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// The JSON answer written in place of hyper's automatic one, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
}

impl Guarded {
    pub(crate) fn new(stream: TcpStream) -> Guarded {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let timer = Box::pin(tokio::time::sleep_until(deadline));
        Guarded { stream, receiving: true, deadline, timer, replacing: None }
    }

    /// Called while a read waits: fails it once the deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.timer.deadline() != self.deadline {
            self.timer.as_mut().reset(self.deadline);
        }
        ready!(self.timer.as_mut().poll(cx));
        let limit = if self.receiving { "a request did not arrive whole" } else { "idle connection" };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, limit)))
    }

    fn received(&mut self) {
        if !self.receiving {
            self.receiving = true;
            self.deadline = Instant::now() + REQUEST_TIMEOUT;
        }
    }

    fn answered(&mut self) {
        self.receiving = false;
        self.deadline = Instant::now() + IDLE_TIMEOUT;
    }

    /// Writes the JSON answer that stands for hyper's automatic one.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((answer, written)) = &mut self.replacing else { return Poll::Ready(Ok(())) };
        while *written < answer.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        self.replacing = None;
        Poll::Ready(Ok(()))
    }
}

/// The status of an answer hyper wrote by itself: 400, 414 or 431 with an empty body.
fn automatic_status(buf: &[u8]) -> Option<u16> {
    let status: u16 = std::str::from_utf8(buf.strip_prefix(b"HTTP/1.1 ")?.get(..3)?).ok()?.parse().ok()?;
    if !matches!(status, 400 | 414 | 431) {
        return None;
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 2;
    let empty = buf[..head_end].windows(21).any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0\r\n"));
    empty.then_some(status)
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.received();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_deadline(cx),
            ready => ready,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_none()
            && let Some(status) = automatic_status(buf)
        {
            this.replacing = Some((answer::automatic(status), 0));
        }
        if this.replacing.is_some() {
            ready!(this.poll_replacement(cx))?;
            this.answered();
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?;
        if n > 0 {
            this.answered();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_s_empty_error_answers_are_taken_for_automatic_ones() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(automatic_status(hyper), Some(431));
        let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(automatic_status(bad), Some(400));
        let ours =
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n";
        assert_eq!(automatic_status(ours), None);
        let fine = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(automatic_status(fine), None);
        assert_eq!(automatic_status(b"{\"error\":\"HTTP/1.1 400\"}"), None);
        assert_eq!(automatic_status(b"HTTP/1.1 4"), None);
    }
}
