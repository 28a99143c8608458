//! One hot-path connection: a thread of its own reads its frames, answers them through a
//! `Session` and writes the answers with blocking I/O; a watcher task on the daemon's runtime
//! keeps its deadlines, its eviction and the listener's shutdown, and ends when the thread does.
//!
//! Why a thread and not a task: the router waits for each answer, and a task waits for its
//! socket through the runtime's reactor, which adds an `epoll_wait` and a wake-up to every round
//! trip. A thread blocked in `read` is woken by the kernel with the bytes. The connections are
//! few and long-lived (a router's one or two, capped by `max_connections`), so a thread each
//! costs little; docs/hotpath.md ("A thread per connection") has the measurements.
//!
//! Invariants:
//! - The thread alone reads and writes the socket. The watcher only shuts it down, after saying
//!   why (`End`), so that the thread's blocked read returns and it knows how to end.
//! - Deadlines (docs/hotpath.md, "Limits"): HELLO within `handshake_timeout` of the accept (of
//!   the end of the TLS handshake, over TCP, which must itself end within that time); after it,
//!   a complete frame at least every `idle_timeout`.
//! - On shutdown the connection answers every frame it has read, then closes (`SHUT_RD` wakes a
//!   thread blocked in `read`); what the router sends later it sends again on a new connection.
//! - The watcher ends only after its thread has ended, so the listener's set of watchers is the
//!   set of open connections. A watcher dropped before (the drain timeout) cuts its socket both
//!   ways: the thread's next read or write fails and it ends.
//! - A frame larger than [`FREE_BUFFER`] is read only once its length is granted from the byte
//!   budget all connections share (`ServerConfig::max_buffered`).

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::frame;
use super::keys::KeySource;
use super::server::{FREE_BUFFER, ServerConfig};
use super::session::{Limits, Next, Session};
use super::tls::READ_AHEAD;
use crate::caps::Ticket;
use crate::crypto::random::NonceSource;
use crate::metrics::HotpathMetrics;

/// The name of every connection's thread (as `top -H` and `/proc/PID/task/*/comm` show it).
pub const CONNECTION_THREAD: &str = "imcrypt-hotpath";

/// What every connection of a listener shares.
pub(super) struct Shared {
    pub(super) keys: Arc<KeySource>,
    pub(super) config: Arc<ServerConfig>,
    pub(super) metrics: Option<Arc<HotpathMetrics>>,
    /// The `max_buffered` byte budget.
    pub(super) budget: Arc<Semaphore>,
    /// Set once when the listener stops.
    pub(super) stop: watch::Receiver<bool>,
    /// The daemon's runtime, for the few waits a connection makes on it (budget, reservation).
    pub(super) runtime: tokio::runtime::Handle,
    /// Held by every connection's thread through its `Arc<Shared>`: the listener's receiver
    /// sees the channel close once the last thread has ended, so that the listener does not
    /// return while a thread may still wait on the runtime it is about to lose.
    pub(super) _alive: mpsc::Sender<()>,
}

/// An accepted socket, taken off the runtime's reactor: its thread blocks on it.
pub(super) enum Socket {
    Unix(Arc<UnixStream>),
    /// With the TLS configuration its handshake uses.
    Tcp(Arc<TcpStream>, Arc<rustls::ServerConfig>),
}

impl Socket {
    pub(super) fn unix(s: tokio::net::UnixStream) -> io::Result<Socket> {
        let s = s.into_std()?;
        s.set_nonblocking(false)?;
        Ok(Socket::Unix(Arc::new(s)))
    }

    pub(super) fn tcp(
        s: tokio::net::TcpStream,
        tls: Arc<rustls::ServerConfig>,
    ) -> io::Result<Socket> {
        let s = s.into_std()?;
        s.set_nonblocking(false)?;
        // Answers are written whole, once per burst of requests: nothing to coalesce.
        let _ = s.set_nodelay(true);
        Ok(Socket::Tcp(Arc::new(s), tls))
    }

    fn shutdown(&self, how: Shutdown) {
        // Fails only when the socket is already closed by the far end: nothing to wake.
        let _ = match self {
            Socket::Unix(s) => s.shutdown(how),
            Socket::Tcp(s, _) => s.shutdown(how),
        };
    }

    fn clone_handle(&self) -> Socket {
        match self {
            Socket::Unix(s) => Socket::Unix(s.clone()),
            Socket::Tcp(s, c) => Socket::Tcp(s.clone(), c.clone()),
        }
    }
}

/// Why the watcher shut a connection's socket down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum End {
    Running = 0,
    /// The listener stops: answer what was received, then close.
    Stop = 1,
    /// A deadline passed: no HELLO in time, or no frame for `idle_timeout`.
    Expired = 2,
    /// Evicted before HELLO to make room for a newer connection.
    Evicted = 3,
}

/// What a connection's thread and its watcher share.
struct Line {
    born: Instant,
    /// When the connection expires, in microseconds after `born`; the thread moves it, later
    /// as frames come, and earlier once (HELLO, when `idle_timeout` is the shorter), which it
    /// tells the watcher through `moved`.
    deadline: AtomicU64,
    moved: Notify,
    end: AtomicU8,
}

impl Line {
    fn new(first: Duration) -> Line {
        Line {
            born: Instant::now(),
            deadline: AtomicU64::new(first.as_micros() as u64),
            moved: Notify::new(),
            end: AtomicU8::new(End::Running as u8),
        }
    }

    fn expire_at(&self, at: Instant) {
        let us = at.saturating_duration_since(self.born).as_micros() as u64;
        self.deadline.store(us, Ordering::Relaxed);
    }

    fn deadline(&self) -> Instant {
        self.born + Duration::from_micros(self.deadline.load(Ordering::Relaxed))
    }

    fn end(&self) -> End {
        match self.end.load(Ordering::Acquire) {
            1 => End::Stop,
            2 => End::Expired,
            3 => End::Evicted,
            _ => End::Running,
        }
    }

    /// Says why, then wakes the thread by shutting the socket down.
    fn cut(&self, socket: &Socket, why: End, how: Shutdown) {
        self.end.store(why as u8, Ordering::Release);
        socket.shutdown(how);
    }
}

/// Starts the connection's thread and returns its watcher, to be run on the listener's set of
/// connections. `None` when no thread could be started (the connection is closed and counted
/// as dropped by the listener).
pub(super) fn start(
    socket: Socket,
    ticket: Ticket,
    may_rewrap: bool,
    shared: &Arc<Shared>,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let ticket = Arc::new(ticket);
    let line = Arc::new(Line::new(shared.config.handshake_timeout));
    let (done_tx, done) = oneshot::channel::<()>();
    // The listener's span (the daemon's names its cluster), which a thread does not inherit.
    let span = tracing::Span::current();
    let thread = {
        let (socket, ticket, line, shared) =
            (socket.clone_handle(), ticket.clone(), line.clone(), shared.clone());
        std::thread::Builder::new().name(CONNECTION_THREAD.into()).spawn(move || {
            let _span = span.entered();
            let r = run(socket, &ticket, &line, may_rewrap, &shared);
            log_end(r, line.end());
            drop(done_tx);
        })
    };
    if let Err(e) = thread {
        ticket.dropped(format!("no thread for the connection: {e}"));
        return None;
    }
    let (stop, grace) = (shared.stop.clone(), shared.config.drain_timeout);
    Some(watch_over(socket, ticket, line, stop, done, grace))
}

fn log_end(r: io::Result<()>, end: End) {
    match (r, end) {
        (_, End::Evicted) => tracing::debug!("hot-path connection without HELLO evicted"),
        (Err(e), _) => tracing::debug!(error = %e, "hot-path connection ended with an error"),
        (Ok(()), _) => {}
    }
}

/// Cuts the socket both ways when dropped while armed: the listener gave up waiting for the
/// connection.
struct CutOnDrop(Option<Socket>);

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.shutdown(Shutdown::Both);
        }
    }
}

/// The watcher: ends when the thread does, and shuts the socket down when a deadline passes,
/// the connection is evicted or the listener stops. Only the reading side first, so that the
/// thread still answers what it has read (and, before HELLO, says why it closes); both ways
/// if the thread has not ended `grace` later (one blocked writing to a router that reads
/// nothing).
async fn watch_over(
    socket: Socket,
    ticket: Arc<Ticket>,
    line: Arc<Line>,
    mut stop: watch::Receiver<bool>,
    mut done: oneshot::Receiver<()>,
    grace: Duration,
) {
    let mut armed = CutOnDrop(Some(socket.clone_handle()));
    loop {
        let at = tokio::time::Instant::from_std(line.deadline());
        tokio::select! {
            _ = &mut done => return,
            _ = ticket.evicted() => {
                line.cut(&socket, End::Evicted, Shutdown::Both);
                break;
            }
            _ = stop.wait_for(|s| *s) => {
                line.cut(&socket, End::Stop, Shutdown::Read);
                break;
            }
            _ = line.moved.notified() => {}
            _ = tokio::time::sleep_until(at) => {
                if Instant::now() >= line.deadline() {
                    line.cut(&socket, End::Expired, Shutdown::Read);
                    break;
                }
            }
        }
    }
    if tokio::time::timeout(grace, &mut done).await.is_err() {
        socket.shutdown(Shutdown::Both);
        let _ = done.await;
    }
    // The thread has ended: nothing left to cut.
    armed.0 = None;
}

/// The thread's work: the TLS handshake over TCP, then the frames.
fn run(
    socket: Socket,
    ticket: &Ticket,
    line: &Line,
    may_rewrap: bool,
    shared: &Shared,
) -> io::Result<()> {
    match socket {
        Socket::Unix(s) => serve(SharedIo(s), ticket, line, may_rewrap, shared),
        Socket::Tcp(s, tls) => {
            let mut conn = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
            let mut io = TcpIo(BufReader::with_capacity(READ_AHEAD, SharedIo(s)));
            // Node certificates are checked inside the handshake (`tls`); the watcher's first
            // deadline bounds it.
            while conn.is_handshaking() {
                conn.complete_io(&mut io)?;
            }
            if line.end() != End::Running {
                return Ok(());
            }
            line.expire_at(Instant::now() + shared.config.handshake_timeout);
            serve(TlsIo { conn, sock: io }, ticket, line, may_rewrap, shared)
        }
    }
}

/// A connection's byte stream: blocking reads and writes, and a close that tells the far end
/// nothing more comes.
trait Transport: Read + Write {
    fn close(&mut self) -> io::Result<()>;
}

/// A socket shared with the watcher (which only shuts it down), read and written through
/// `&S`, as std's sockets allow.
struct SharedIo<S>(Arc<S>);

impl<S> Read for SharedIo<S>
where
    for<'a> &'a S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl<S> Write for SharedIo<S>
where
    for<'a> &'a S: Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for SharedIo<UnixStream> {
    fn close(&mut self) -> io::Result<()> {
        self.0.shutdown(Shutdown::Write)
    }
}

/// The TCP socket beneath TLS: reads through [`READ_AHEAD`] bytes of buffer, writes straight.
struct TcpIo(BufReader<SharedIo<TcpStream>>);

impl Read for TcpIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TcpIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.get_mut().write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.get_mut().write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS connection over [`TcpIo`]. Unlike `rustls::Stream`, which stops after one TLS record
/// (at most 16 KiB) per `read`, a `read` here returns all the plaintext the records already
/// received hold, so that a pipelined burst of frames is answered in one write as on the Unix
/// socket; it blocks only when it has nothing to return.
struct TlsIo {
    conn: rustls::ServerConnection,
    sock: TcpIo,
}

impl TlsIo {
    /// Writes every TLS record rustls holds.
    fn send(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        Ok(())
    }
}

impl Read for TlsIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        loop {
            match self.conn.reader().read(&mut buf[n..]) {
                Ok(0) => return Ok(n),
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        return Ok(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The far end closed without close_notify: what was read is still answered.
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
            // More records only from what the read-ahead buffer holds, once there is something
            // to return: the socket is read (and waited for) only with nothing to return.
            if n > 0 && self.sock.0.buffer().is_empty() {
                return Ok(n);
            }
            // Once there is something to return, an error or the end waits for the next call
            // (each comes again: the socket's, and rustls's, which keeps its error).
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) | Err(_) if n > 0 => return Ok(n),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                if n > 0 {
                    return Ok(n);
                }
                // The alert that says why, if it can be sent.
                let _ = self.send();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if let Err(e) = self.send() {
                return if n > 0 { Ok(n) } else { Err(e) };
            }
        }
    }
}

impl Write for TlsIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        self.send()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()?;
        self.send()
    }
}

impl Transport for TlsIo {
    fn close(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.send()?;
        self.sock.0.get_ref().0.shutdown(Shutdown::Write)
    }
}

/// Reads, `Session::handle`, writes, until the connection ends.
fn serve<T: Transport>(
    mut stream: T,
    ticket: &Ticket,
    line: &Line,
    may_rewrap: bool,
    shared: &Shared,
) -> io::Result<()> {
    let (config, keys) = (&*shared.config, &*shared.keys);
    let limits = Limits { max_frame: config.max_frame, max_batch: config.max_batch };
    let timed = shared.metrics.clone();
    let mut session = Session::new(limits, NonceSource::from_os())
        .with_metrics(shared.metrics.clone())
        .with_rewrap(may_rewrap);
    // When the bytes that completed the requests being answered were read (metrics on only).
    let mut read_at = timed.as_ref().map(|_| Instant::now());
    // Received bytes are `inbuf[start..filled]`; the rest of `inbuf` is room to read into.
    // It grows as reads need (zeroed once), to FREE_BUFFER once the router has said HELLO.
    let mut inbuf: Vec<u8> = Vec::new();
    let (mut start, mut filled) = (0, 0);
    // The share of `max_buffered` held for a frame larger than FREE_BUFFER being read.
    let mut granted: Option<OwnedSemaphorePermit> = None;
    let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut wait_until: Option<Instant> = None;
    let mut stopping = false;
    loop {
        let give_up = wait_until.is_some_and(|d| Instant::now() >= d);
        let was_greeted = session.greeted();
        let p = session.handle(&inbuf[start..filled], keys, &mut out, give_up);
        start += p.used;
        if p.used > 0 && session.greeted() {
            line.expire_at(Instant::now() + config.idle_timeout);
        }
        if !was_greeted && session.greeted() {
            // A router, not a stray connection: it keeps its slot.
            ticket.establish();
            line.moved.notify_one();
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            // TLS may keep the end of the answers buffered; they must reach the router before
            // this thread waits for its next request.
            stream.flush()?;
            out.clear();
            if out.capacity() > 1 << 20 {
                out.shrink_to(64 << 10);
            }
        }
        if let (Some(m), Some(t)) = (&timed, read_at) {
            let n = session.take_answered();
            if n > 0 {
                m.observe(n, t.elapsed());
            }
        }
        match p.next {
            Next::Close => return stream.close(),
            Next::WaitForReservation => {
                let d = *wait_until.get_or_insert(Instant::now() + config.reservation_wait);
                let left = d.saturating_duration_since(Instant::now());
                let wait = keys.wait_for_reservation(left.min(Duration::from_millis(50)));
                shared.runtime.block_on(wait);
                continue;
            }
            Next::NeedMore => wait_until = None,
        }
        if stopping {
            // Everything received is answered; what the client sends later it will resend.
            return stream.close();
        }
        // Compact, and make room for at least the rest of the frame at the front.
        if start == filled {
            (start, filled) = (0, 0);
        } else if start > 0 {
            inbuf.copy_within(start..filled, 0);
            (start, filled) = (0, filled - start);
        }
        let next = frame::frame_len(&inbuf[..filled]).unwrap_or(0);
        if next <= FREE_BUFFER {
            if granted.take().is_some() {
                // The large frame is answered: its share goes back, and so does its memory.
                inbuf.truncate(FREE_BUFFER.max(filled));
                inbuf.shrink_to_fit();
            }
        } else if granted.as_ref().is_none_or(|g| g.num_permits() < next) {
            if !session.greeted() {
                Session::before_hello(&mut out, next);
                stream.write_all(&out)?;
                return stream.close();
            }
            drop(granted.take());
            // Nothing more is read until the budget grants the whole frame.
            let want = u32::try_from(next).expect("frames are at most max_frame, a u32");
            match wait_for_budget(shared, want, line.deadline()) {
                Some(g) => granted = Some(g),
                None => return stream.close(),
            }
        }
        let mut want = next.max(filled + (16 << 10));
        if session.greeted() {
            want = want.max(FREE_BUFFER);
        }
        if inbuf.len() < want {
            inbuf.resize(want, 0);
        }
        let n = match stream.read(&mut inbuf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) if line.end() != End::Running => 0,
            Err(e) => return Err(e),
        };
        if read_at.is_some() {
            read_at = Some(Instant::now());
        }
        filled += n;
        match line.end() {
            End::Running if n > 0 => {}
            End::Running => {
                if filled > start {
                    Session::truncated(&mut out, filled - start);
                    stream.write_all(&out)?;
                }
                return stream.close();
            }
            End::Stop => stopping = true,
            End::Expired if session.greeted() => {
                tracing::debug!(idle = ?config.idle_timeout, "idle hot-path connection closed");
                return stream.close();
            }
            End::Expired => {
                frame::encode_error(
                    &mut out,
                    0,
                    frame::ErrorCode::HandshakeRequired,
                    true,
                    "no HELLO received in time",
                );
                stream.write_all(&out)?;
                return stream.close();
            }
            End::Evicted => return Ok(()),
        }
    }
}

/// Waits until the budget grants `want` bytes: `None` when the listener stops or the
/// connection reaches `idle_by` (its deadline) first.
fn wait_for_budget(shared: &Shared, want: u32, idle_by: Instant) -> Option<OwnedSemaphorePermit> {
    let mut stop = shared.stop.clone();
    let budget = shared.budget.clone();
    shared.runtime.block_on(async move {
        tokio::select! {
            g = budget.acquire_many_owned(want) => Some(g.expect("the budget is never closed")),
            _ = stop.wait_for(|s| *s) => None,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(idle_by)) => None,
        }
    })
}
