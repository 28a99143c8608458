//! A Unix stream socket that the runtime watches for readability only, for both ends of the
//! hot path's socket.
//!
//! Why: Tokio's `UnixStream` asks epoll for readability and writability at once. On a Unix
//! stream socket the kernel signals "writable" again every time the peer reads what was
//! written, so on a request/answer connection each end is woken once more per round trip for
//! nothing: five `epoll_wait` returns per single-record round trip instead of two (strace), and
//! each of those wakes costs the reading end a wake-up of the other end's thread. Here writes
//! are tried directly (the socket buffer is rarely full: frames are small and answered in
//! order); only a write that would block registers for writability, through a duplicate of
//! the descriptor (epoll keys its registrations on the descriptor), until a write finds room
//! at its first try again.
//!
//! Invariants:
//! - Each registered descriptor (the socket, and its duplicate while a write waits) is owned
//!   by its `AsyncFd`, never replaced, and closed only after that `AsyncFd` has deregistered
//!   it, which is what registering a descriptor with the runtime requires.
//! - A connection holds a second descriptor while its writes wait for room; the daemon's
//!   descriptor budget counts two per hot-path Unix connection (`Config::listener_caps`). A
//!   duplicate that cannot be had (no descriptor left) fails the write, and with it the
//!   connection, as any I/O error does; the client sends its unanswered requests again on
//!   its next connection.
//! - Like Tokio's sockets, it must be polled inside a Tokio runtime.
//! - Reads behave as Tokio's: a read shorter than the room given means the socket is drained
//!   (readiness is cleared without a read that would block; a later edge sets it again).

// The second module with `unsafe` code (after `crypto::locked`): registering a descriptor
// with the runtime, and reading into the caller's uninitialised buffer, as Tokio's own
// sockets do. Each block says why it holds.
#![allow(unsafe_code)]

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub(crate) struct QuietUnixStream {
    /// Registered for writability since a write had to wait for room; dropped (deregistered,
    /// then closed) when a write finds room without having waited since the last one.
    writable: Option<AsyncFd<OwnedFd>>,
    /// A write would have blocked since the last write that went through: the connection is
    /// writing faster than its peer reads, and keeps its registration for writability
    /// rather than make and drop one per write.
    waited: bool,
    io: AsyncFd<StdUnixStream>,
}

impl QuietUnixStream {
    /// Takes over a connected socket from Tokio's `UnixStream`.
    pub(crate) fn from_tokio(s: tokio::net::UnixStream) -> io::Result<Self> {
        let s = s.into_std()?;
        s.set_nonblocking(true)?;
        // SAFETY: the `AsyncFd` owns the socket, nothing here replaces it (no `get_mut`, no
        // `into_inner`), and dropping the `AsyncFd` deregisters before the socket closes.
        let io = unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }?;
        Ok(Self { writable: None, waited: false, io })
    }

    /// Registers a duplicate of the descriptor for writability.
    fn watch_writable(&mut self) -> io::Result<&AsyncFd<OwnedFd>> {
        if self.writable.is_none() {
            let dup = OwnedFd::from(self.io.get_ref().try_clone()?);
            // SAFETY: as in `from_tokio`: the duplicate is owned by this `AsyncFd` alone and
            // closed only when it drops, after deregistering.
            let w = unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE) }?;
            self.writable = Some(w);
        }
        Ok(self.writable.as_ref().expect("registered above"))
    }
}

impl AsyncRead for QuietUnixStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.io.poll_read_ready(cx))?;
            // SAFETY: `read` only writes initialised bytes into the slice, and nothing here
            // de-initialises any of it.
            let room = unsafe { buf.unfilled_mut() };
            let want = room.len();
            match guard.try_io(|s| Ok(rustix::io::read(s.get_ref(), &mut *room)?.0.len())) {
                Ok(Ok(n)) => {
                    // SAFETY: `read` initialised the first `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    if n > 0 && n < want {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl QuietUnixStream {
    /// Tries `write` until it goes through, waiting for room through the duplicate
    /// descriptor when it would block.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&StdUnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match write(self.io.get_ref()) {
                Ok(n) => {
                    // Room without a wait since the last write: the registration for
                    // writability goes (and its wake-ups with it). A connection whose writes
                    // keep finding the buffer full (heavy pipelining) keeps it.
                    if !std::mem::take(&mut self.waited) {
                        self.writable = None;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.waited = true,
                Err(e) => return Poll::Ready(Err(e)),
            }
            let w = self.watch_writable()?;
            let mut guard = ready!(w.poll_write_ready(cx))?;
            // Writable or not, try again: the write says.
            guard.clear_ready();
        }
    }
}

impl AsyncWrite for QuietUnixStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |mut s| s.write(data))
    }

    /// The client writes the frames it has queued with one call, none copied into a buffer.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |mut s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A write larger than both socket buffers must wait for room (through the duplicate
    /// registered for writability) and still arrive whole and in order.
    #[tokio::test]
    async fn a_write_that_finds_the_buffer_full_waits_for_room_and_arrives_whole() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (mut a, mut b) =
            (QuietUnixStream::from_tokio(a).unwrap(), QuietUnixStream::from_tokio(b).unwrap());
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
            a
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!writer.is_finished(), "8 MiB cannot fit in the socket buffers: the write waits");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), b.read_to_end(&mut got))
            .await
            .expect("the waiting write was woken when room came")
            .unwrap();
        let mut a = writer.await.unwrap();
        assert!(got == data, "{} bytes of {} arrived, or out of order", got.len(), data.len());
        // The other way, a write that finds room at once.
        b.write_all(b"answer").await.unwrap();
        let mut back = [0u8; 6];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"answer");
    }
}
