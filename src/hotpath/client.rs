//! The router's client: async, pipelined over one connection, reconnecting, with a bounded
//! queue for the time the daemon is unreachable.
//!
//! A `Client` owns a driver task. A caller encodes its request in its own task. If the
//! connection is idle and nothing is queued, the caller writes the request and reads its
//! answer itself (`Client::direct`): a single record's round trip takes one task, as a
//! plain socket client's would. Otherwise the request is queued and the driver, in one task
//! per connection, numbers and writes queued requests and matches answers to them by id:
//! many requests are in flight at once. Whoever uses the connection gives it back idle, at a
//! frame boundary, or closes it.
//!
//! Invariants:
//! - Every submitted request resolves exactly once: with the server's answer (ciphertexts,
//!   "encryption is off", or the server's explicit error), or with a `ClientError` saying why it
//!   got none. A request is never silently dropped, and never answered twice.
//! - `Encrypted::Off` is returned only when the server said encryption is off. An unreachable
//!   daemon never looks like "off": requests wait in the queue (up to `max_queue` records),
//!   then block or fail by the configured `QueuePolicy`. So when encryption is on, nothing is
//!   written in plaintext because the daemon was unreachable.
//! - A request whose connection died before its answer is sent again on the next connection,
//!   at most `max_attempts` times in all. Sealing is safe to repeat: a record is delivered to the
//!   caller at most once, so the archive never holds two ciphertexts of one record.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

use super::frame::{self, ErrorCode, Response, SealedIter, StatusInfo};
use super::keys::KeyStatus;
use super::tls::{Endpoint, READ_AHEAD};
use crate::crypto::record::FIXED_OVERHEAD;
use crate::ids::{ClusterId, DomainId, KeyVersion};

/// What a full queue does to the next request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueuePolicy {
    /// Wait for room: the router's delivery slows down, nothing is lost.
    #[default]
    Block,
    /// Fail the request at once with `ClientError::QueueFull`.
    Fail,
}

/// The client's configuration (the router's side).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The daemon's hot-path socket, or its TCP listener and this node's certificate
    /// (`unix:PATH`, a path, or `tcp+tls://HOST:PORT?cert=…&key=…&ca=…`).
    pub endpoint: Endpoint,
    /// Records waiting or in flight at most (the manual's "Max Queue Size").
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    #[serde(default)]
    pub when_full: QueuePolicy,
    /// How many times one request is sent, across reconnections, before it fails.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Connect plus handshake must finish within this.
    #[serde(default = "default_connect_timeout", with = "crate::duration")]
    pub connect_timeout: Duration,
    /// First and longest pause between reconnection attempts (doubling in between).
    #[serde(default = "default_backoff_min", with = "crate::duration")]
    pub reconnect_min: Duration,
    #[serde(default = "default_backoff_max", with = "crate::duration")]
    pub reconnect_max: Duration,
}

fn default_max_queue() -> usize {
    100_000
}
fn default_attempts() -> u32 {
    3
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(10)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(1)
}

impl ClientConfig {
    /// The daemon's Unix socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::to(Endpoint::Unix(path.into()))
    }

    /// `endpoint` (e.g. parsed from a URL: [`Endpoint`]'s `FromStr`).
    pub fn to(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            max_queue: default_max_queue(),
            when_full: QueuePolicy::default(),
            max_attempts: default_attempts(),
            connect_timeout: default_connect_timeout(),
            reconnect_min: default_backoff_min(),
            reconnect_max: default_backoff_max(),
        }
    }
}

/// Why a request got no answer from the server, or the server's explicit refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the hot-path queue is full ({max} records waiting or in flight)")]
    QueueFull { max: usize },
    #[error("a batch of {count} records is larger than the whole queue ({max})")]
    BatchLargerThanQueue { count: usize, max: usize },
    #[error("record metadata of {0} bytes exceeds the protocol's 65,535")]
    MetadataTooLong(usize),
    #[error("request of {len} bytes exceeds the server's maximum frame of {max}")]
    TooLargeForServer { len: usize, max: u32 },
    #[error("batch of {count} records exceeds the server's maximum of {max}")]
    BatchTooLarge { count: usize, max: u32 },
    #[error("the hot-path server refused the request ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error(
        "the connection to the hot-path server was lost {attempts} times before an answer came"
    )]
    ConnectionLost { attempts: u32 },
    #[error("the hot-path server answered with something this client cannot read: {0}")]
    Protocol(String),
    #[error("the hot-path client is shut down")]
    Closed,
}

impl ClientError {
    /// Whether the same request may succeed later (the daemon back, a reservation persisted).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::QueueFull { .. } | ClientError::ConnectionLost { .. } => true,
            ClientError::Refused { code, .. } => code.is_transient(),
            ClientError::BatchLargerThanQueue { .. }
            | ClientError::MetadataTooLong(_)
            | ClientError::TooLargeForServer { .. }
            | ClientError::BatchTooLarge { .. }
            | ClientError::Protocol(_)
            | ClientError::Closed => false,
        }
    }
}

/// The sealed records of one batch, in request order, in one buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBatch {
    /// `count × (record_len u32 | record)`, copied out of the connection's receive buffer in
    /// one allocation of its own size: the receive buffer stays with the connection and is
    /// reused (a slice of it would make every read after an answer allocate and fault in a
    /// fresh buffer, and a caller keeping answers would keep whole receive buffers alive).
    raw: Bytes,
    count: u32,
}

impl SealedBatch {
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records, each in the archived-record format (docs/formats.md).
    pub fn iter(&self) -> SealedIter<'_> {
        SealedIter::new(&self.raw, self.count)
    }

    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }
}

impl std::fmt::Debug for SealedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedBatch({} records)", self.count)
    }
}

/// The server's answer to an encryption request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encrypted {
    Sealed(SealedBatch),
    /// Encryption is off on this cluster: store plaintext, or block, by the router's policy.
    Off,
}

enum Answer {
    Sealed(SealedBatch),
    Off,
    Status(KeyStatus),
    Indexed(BlindIndexes),
    Identified(Vec<[u8; 32]>),
    Rewrapped(Rewrapped),
}

/// The answer to REWRAP: per record, in request order, the record sealed again under
/// `key_version` with the row's blind indexes, or why it was not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrapped {
    pub key_version: KeyVersion,
    pub items: Vec<Result<RewrappedRecord, String>>,
}

/// One archived row's record after a rewrap, and its blind indexes under the new version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrappedRecord {
    pub record: Vec<u8>,
    pub from_idx: [u8; 32],
    pub to_idx: [u8; 32],
    pub room_idx: Option<[u8; 32]>,
}

/// The answer to an INDEX request: one 32-byte blind index per message, in request order,
/// under the domain key version `key_version` (docs/archive.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlindIndexes {
    pub key_version: KeyVersion,
    pub indexes: Vec<[u8; 32]>,
}

type Reply = oneshot::Sender<Result<Answer, ClientError>>;

struct Job {
    id: u64,
    /// Shared with the write in progress: written as it is, never copied into a buffer.
    frame: Bytes,
    /// How many times the frame was written whole on a connection.
    attempts: u32,
    reply: Reply,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Job {
    /// Frees the job's queue places, then delivers its answer: a caller that sees the answer
    /// also sees the queue room it left.
    fn answer(self, r: Result<Answer, ClientError>) {
        let Job { reply, _permit, .. } = self;
        drop(_permit);
        let _ = reply.send(r);
    }
}

/// What an ENCRYPT request's answer means to its caller.
fn encrypted(answer: Result<Answer, ClientError>) -> Result<Encrypted, ClientError> {
    match answer? {
        Answer::Sealed(b) => Ok(Encrypted::Sealed(b)),
        Answer::Off => Ok(Encrypted::Off),
        Answer::Status(_) | Answer::Indexed(_) | Answer::Identified(_) | Answer::Rewrapped(_) => {
            Err(ClientError::Protocol("a non-SEALED answer to ENCRYPT".into()))
        }
    }
}

/// A submitted request's answer, to await later (pipelining).
pub struct Pending {
    rx: oneshot::Receiver<Result<Answer, ClientError>>,
}

impl Future for Pending {
    type Output = Result<Encrypted, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| encrypted(r.unwrap_or(Err(ClientError::Closed))))
    }
}

/// The connection, as callers and the driver share it.
///
/// Invariant: whoever holds the connection (a caller in `Direct`, the driver in
/// `Pipelined`) is the only one writing to it or reading from it, and gives it back at a
/// frame boundary with nothing in flight (`Idle`), or closes it (`Down`).
enum Link {
    /// Not connected: the driver is connecting, or waiting to.
    Down,
    /// Connected, nothing in flight, nobody using it.
    Idle(Conn),
    /// A caller is exchanging its one request on it ([`Client::direct`]).
    Direct,
    /// The driver is pipelining queued requests on it ([`pipeline`]).
    Pipelined,
}

/// A connection with its receive buffer (which may hold the start of the next answer) and
/// the server's limits.
struct Conn {
    stream: Stream,
    buf: BytesMut,
    welcome: Welcome,
}

impl Conn {
    /// Whether the server ended this idle connection (its idle timeout, a restart) or sent
    /// on it unasked since its last use. Nobody reads an idle connection, so this is checked
    /// before it is used again; it costs no system call unless the socket became readable,
    /// as Tokio keeps track of that. A connection that did is not used again.
    fn ended_while_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        Pin::new(&mut self.stream).poll_read(&mut cx, &mut rb).is_ready()
    }
}

/// What the callers and the driver share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the driver: a request queued, the link handed back with requests queued or
    /// lost, or the client dropped. Only the driver waits on it.
    wake: Notify,
}

struct State {
    link: Link,
    /// Requests for the driver to write, in order; re-sends go first.
    queue: VecDeque<Job>,
    /// The `Client` is dropped, or the driver is gone: nothing new is queued.
    closed: bool,
}

impl State {
    /// The client is dropped and nothing it queued is left: the driver's work is over.
    fn is_done(&self) -> bool {
        self.closed && self.queue.is_empty()
    }
}

impl Shared {
    /// The state. A panic while it was held leaves nothing half-done that matters here (every
    /// change is one assignment or one queue operation), and the drops that lock it must not
    /// panic in turn: so a poisoned lock is used as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A caller's use of an idle connection. Dropping it hands the connection back: `Idle` if
/// the exchange ended at a frame boundary (`kept`), else the connection is closed and the
/// driver reconnects. So a caller that gives up halfway (its future dropped) never leaves
/// half a frame or an unread answer on the connection.
struct Lease<'a> {
    shared: &'a Shared,
    conn: Option<Conn>,
    kept: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let conn = self.conn.take();
        let (closing, wake) = {
            let mut st = self.shared.lock();
            let closing = match conn {
                Some(c) if self.kept => {
                    st.link = Link::Idle(c);
                    None
                }
                c => {
                    st.link = Link::Down;
                    c
                }
            };
            let wake = closing.is_some() || !st.queue.is_empty() || st.closed;
            (closing, wake)
        };
        drop(closing);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

/// How a caller's direct exchange ended.
enum Direct {
    /// The connection was down or in use: the request goes through the driver.
    Busy,
    Answered(Result<Answer, ClientError>),
    /// The connection failed before the answer came; `sent` if the frame was written whole.
    Lost {
        sent: bool,
    },
}

/// A hot-path client. Cheap to share (`Arc<Client>`); all methods take `&self`.
pub struct Client {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
    cfg: Arc<ClientConfig>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hotpath::Client({})", self.cfg.endpoint)
    }
}

/// Dropping the client queues nothing more; the driver still answers (or fails) every
/// request already submitted, then exits by itself.
impl Drop for Client {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

impl Client {
    /// Starts the client; it connects in the background (and again whenever the connection
    /// is lost). Must be called inside a Tokio runtime.
    pub fn new(cfg: ClientConfig) -> Self {
        let cfg = Arc::new(cfg);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { link: Link::Down, queue: VecDeque::new(), closed: false }),
            wake: Notify::new(),
        });
        tokio::spawn(drive(shared.clone(), cfg.clone()));
        Self {
            shared,
            permits: Arc::new(Semaphore::new(cfg.max_queue.min(Semaphore::MAX_PERMITS))),
            next_id: AtomicU64::new(1),
            cfg,
        }
    }

    /// Encrypts one record. `metadata` is bound to the ciphertext (e.g. the row's key).
    pub async fn encrypt(
        &self,
        metadata: &[u8],
        plaintext: &[u8],
    ) -> Result<Encrypted, ClientError> {
        self.encrypt_batch([(metadata, plaintext)].into_iter()).await
    }

    /// Encrypts a batch in one frame; all sealed under one key version, or one error.
    pub async fn encrypt_batch<'r>(
        &self,
        records: impl ExactSizeIterator<Item = (&'r [u8], &'r [u8])> + Clone,
    ) -> Result<Encrypted, ClientError> {
        let (id, f, weight) =
            self.records_frame(records, |f, id, r| frame::encode_encrypt(f, id, r))?;
        encrypted(self.call(id, f, weight).await)
    }

    /// Queues a batch and returns once it is queued (or at once with an error): await the
    /// `Pending` for the answer. Submitting many before awaiting any pipelines them.
    pub async fn submit<'r>(
        &self,
        records: impl ExactSizeIterator<Item = (&'r [u8], &'r [u8])> + Clone,
    ) -> Result<Pending, ClientError> {
        let (id, f, weight) =
            self.records_frame(records, |f, id, r| frame::encode_encrypt(f, id, r))?;
        let permit = self.permit(weight).await?;
        let rx = self.push(id, f.into(), 0, permit)?;
        Ok(Pending { rx })
    }

    /// Has the daemon seal archived rows' records again under its primary version, with
    /// their blind indexes under it (`None`: encryption is off). Only on the daemon's rewrap
    /// socket; elsewhere the answer is [`ClientError::Refused`] with `NotPermitted`.
    pub async fn rewrap<'r>(
        &self,
        records: impl ExactSizeIterator<Item = (&'r [u8], &'r [u8])> + Clone,
    ) -> Result<Option<Rewrapped>, ClientError> {
        let count = records.len();
        let (id, f, weight) =
            self.records_frame(records, |f, id, r| frame::encode_rewrap(f, id, r))?;
        match self.call(id, f, weight).await? {
            Answer::Rewrapped(r) if r.items.len() == count => Ok(Some(r)),
            Answer::Off => Ok(None),
            _ => Err(ClientError::Protocol("unexpected answer to REWRAP".into())),
        }
    }

    /// Asks whether encryption is on, and with which domain and key version.
    pub async fn status(&self) -> Result<KeyStatus, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut f = Vec::with_capacity(13);
        frame::encode_status_request(&mut f, id);
        match self.call(id, f, 1).await? {
            Answer::Status(s) => Ok(s),
            _ => Err(ClientError::Protocol("non-STATUS answer to STATUS".into())),
        }
    }

    /// Blind indexes of `messages` under the primary key version (`None`: encryption is
    /// off). Each message counts as one record against the queue.
    pub async fn blind_index<'m>(
        &self,
        messages: impl ExactSizeIterator<Item = &'m [u8]> + Clone,
    ) -> Result<Option<BlindIndexes>, ClientError> {
        let count = messages.len();
        match self.message_list(frame::kind::INDEX, messages).await? {
            Some(Answer::Indexed(b)) if b.indexes.len() == count => Ok(Some(b)),
            None => Ok(None),
            Some(_) => Err(ClientError::Protocol("unexpected answer to INDEX".into())),
        }
    }

    /// Row identities of `messages` under the domain's row identity key, which no rotation
    /// changes (`None`: encryption is off). Each message counts as one record against the queue.
    pub async fn row_identities<'m>(
        &self,
        messages: impl ExactSizeIterator<Item = &'m [u8]> + Clone,
    ) -> Result<Option<Vec<[u8; 32]>>, ClientError> {
        let count = messages.len();
        match self.message_list(frame::kind::IDENTIFY, messages).await? {
            Some(Answer::Identified(ids)) if ids.len() == count => Ok(Some(ids)),
            None => Ok(None),
            Some(_) => Err(ClientError::Protocol("unexpected answer to IDENTIFY".into())),
        }
    }

    /// Sends INDEX or IDENTIFY (`ty`) and waits for its answer; `None` for OFF.
    async fn message_list<'m>(
        &self,
        ty: u8,
        messages: impl ExactSizeIterator<Item = &'m [u8]> + Clone,
    ) -> Result<Option<Answer>, ClientError> {
        if let Some(m) = messages.clone().find(|m| m.len() > u16::MAX as usize) {
            return Err(ClientError::MetadataTooLong(m.len()));
        }
        let count = messages.len();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut f = Vec::new();
        frame::encode_message_list(&mut f, ty, id, messages);
        match self.call(id, f, count.max(1)).await? {
            Answer::Off => Ok(None),
            a => Ok(Some(a)),
        }
    }

    /// Records waiting or in flight now.
    pub fn queued(&self) -> usize {
        self.cfg.max_queue.min(Semaphore::MAX_PERMITS) - self.permits.available_permits()
    }

    /// A request of records, encoded by `encode` under a fresh id, and its weight in the queue.
    fn records_frame<'r, I>(
        &self,
        records: I,
        encode: impl FnOnce(&mut Vec<u8>, u64, I),
    ) -> Result<(u64, Vec<u8>, usize), ClientError>
    where
        I: ExactSizeIterator<Item = (&'r [u8], &'r [u8])> + Clone,
    {
        if let Some((m, _)) = records.clone().find(|(m, _)| m.len() > u16::MAX as usize) {
            return Err(ClientError::MetadataTooLong(m.len()));
        }
        let weight = records.len().max(1);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut f = Vec::with_capacity(frame::encrypt_frame_len(records.clone()));
        encode(&mut f, id, records);
        Ok((id, f, weight))
    }

    /// Sends one request and waits for its answer: on the idle connection itself when it
    /// can ([`Client::direct`]), through the driver's queue otherwise.
    async fn call(&self, id: u64, frame: Vec<u8>, weight: usize) -> Result<Answer, ClientError> {
        let permit = self.permit(weight).await?;
        let attempts = match self.direct(id, &frame).await {
            Direct::Answered(answer) => {
                drop(permit);
                return answer;
            }
            Direct::Busy => 0,
            Direct::Lost { sent } => {
                let unanswered = u32::from(sent);
                tracing::info!(endpoint = %self.cfg.endpoint, unanswered, "hot-path connection lost");
                unanswered
            }
        };
        // A request is always sent once, whatever `max_attempts` says (as through the driver).
        if attempts > 0 && attempts >= self.cfg.max_attempts {
            return Err(ClientError::ConnectionLost { attempts });
        }
        let rx = self.push(id, frame.into(), attempts, permit)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Exchanges one request on the connection if it is idle and nothing is queued before
    /// it: the caller's own task writes the frame and reads the answer, with no hand-over to
    /// the driver and back (each one a wake-up and a poll on the single-record round trip).
    async fn direct(&self, id: u64, frame: &[u8]) -> Direct {
        let conn = {
            let mut st = self.shared.lock();
            if !st.queue.is_empty() || !matches!(st.link, Link::Idle(_)) {
                return Direct::Busy;
            }
            let Link::Idle(conn) = std::mem::replace(&mut st.link, Link::Direct) else {
                unreachable!("checked above")
            };
            conn
        };
        let mut lease = Lease { shared: &self.shared, conn: Some(conn), kept: true };
        let conn = lease.conn.as_mut().expect("leased above");
        if let Err(e) = conn.welcome.check(frame) {
            return Direct::Answered(Err(e));
        }
        let max = conn.welcome.max_answer();
        lease.kept = false;
        if conn.ended_while_idle()
            || conn.stream.write_all(frame).await.is_err()
            || conn.stream.flush().await.is_err()
        {
            return Direct::Lost { sent: false };
        }
        loop {
            match next_answer(&mut conn.buf, max) {
                Ok(Some(a)) if a.id == id => {
                    lease.kept = !a.closes;
                    return Direct::Answered(a.answer);
                }
                Ok(Some(a)) => {
                    tracing::warn!(id = a.id, "answer for no request in flight");
                    if a.closes {
                        return Direct::Lost { sent: true };
                    }
                    continue;
                }
                Ok(None) => {}
                Err(ConnectionEnds) => return Direct::Lost { sent: true },
            }
            reserve(&mut conn.buf, max);
            match conn.stream.read_buf(&mut conn.buf).await {
                Ok(0) | Err(_) => return Direct::Lost { sent: true },
                Ok(_) => {}
            }
        }
    }

    /// `weight` places in the queue, waited for or refused by the configured policy.
    async fn permit(&self, weight: usize) -> Result<OwnedSemaphorePermit, ClientError> {
        let max = self.cfg.max_queue;
        let w = u32::try_from(weight)
            .ok()
            .filter(|&w| w as usize <= max)
            .ok_or(ClientError::BatchLargerThanQueue { count: weight, max })?;
        let permits = self.permits.clone();
        match self.cfg.when_full {
            QueuePolicy::Block => {
                permits.acquire_many_owned(w).await.map_err(|_| ClientError::Closed)
            }
            QueuePolicy::Fail => {
                permits.try_acquire_many_owned(w).map_err(|_| ClientError::QueueFull { max })
            }
        }
    }

    /// Queues a request for the driver; its answer comes through the receiver.
    fn push(
        &self,
        id: u64,
        frame: Bytes,
        attempts: u32,
        permit: OwnedSemaphorePermit,
    ) -> Result<oneshot::Receiver<Result<Answer, ClientError>>, ClientError> {
        let (reply, rx) = oneshot::channel();
        let job = Job { id, frame, attempts, reply, _permit: Some(permit) };
        {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(ClientError::Closed);
            }
            // A re-send goes first, as the driver's do.
            if attempts > 0 {
                st.queue.push_front(job);
            } else {
                st.queue.push_back(job);
            }
        }
        self.shared.wake.notify_one();
        Ok(rx)
    }
}

/// Takes the job in flight that `id` answers: the front one, as the server answers in order.
///
/// The server answers in request order (docs/hotpath.md, "Request ids"), so an answer is
/// for the front one: no lookup by id on the hot path. An answer for another one in flight
/// is still delivered to it (found by a search); one for none is logged.
fn take_answered(inflight: &mut VecDeque<Job>, id: u64) -> Option<Job> {
    if inflight.front().is_some_and(|j| j.id == id) {
        return inflight.pop_front();
    }
    let at = inflight.iter().position(|j| j.id == id)?;
    inflight.remove(at)
}

/// What the server announced in WELCOME.
#[derive(Debug, Clone, Copy)]
struct Welcome {
    max_frame: u32,
    max_batch: u32,
}

impl Welcome {
    /// Whether a request frame fits the server's limits.
    fn check(self, frame: &[u8]) -> Result<(), ClientError> {
        let len = frame.len() - frame::LEN_PREFIX;
        let ty = frame[frame::LEN_PREFIX];
        let count = if matches!(
            ty,
            frame::kind::ENCRYPT | frame::kind::INDEX | frame::kind::IDENTIFY | frame::kind::REWRAP
        ) {
            u32::from_be_bytes(frame[13..17].try_into().expect("4 bytes"))
        } else {
            0
        };
        if len > self.max_frame as usize {
            Err(ClientError::TooLargeForServer { len, max: self.max_frame })
        } else if count > self.max_batch {
            Err(ClientError::BatchTooLarge { count: count as usize, max: self.max_batch })
        } else {
            Ok(())
        }
    }

    /// The largest answer a request within these limits can get.
    fn max_answer(self) -> u32 {
        let max = u64::from(self.max_frame)
            + u64::from(self.max_batch) * (FIXED_OVERHEAD as u64 + 255 + 4)
            + 1024;
        max.min(u64::from(u32::MAX)) as u32
    }
}

/// A connection to the daemon: its Unix socket, or TCP with mutual TLS.
enum Stream {
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<BufReader<TcpStream>>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens the endpoint's transport: the socket, or TCP and the TLS handshake (the TLS files
/// are read at each connection, so renewed certificates count without a restart).
async fn open(endpoint: &Endpoint) -> Result<Stream, String> {
    match endpoint {
        Endpoint::Unix(path) => {
            UnixStream::connect(path).await.map(Stream::Unix).map_err(|e| e.to_string())
        }
        Endpoint::Tls(t) => {
            let config = t.client_config().map_err(|e| e.to_string())?;
            let tcp = TcpStream::connect(&t.addr).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(t.server_name(), BufReader::with_capacity(READ_AHEAD, tcp))
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            Ok(Stream::Tls(Box::new(tls)))
        }
    }
}

async fn connect(cfg: &ClientConfig) -> Result<Conn, String> {
    let mut s = open(&cfg.endpoint).await?;
    let mut hello = Vec::new();
    frame::encode_hello(&mut hello, frame::VERSION, frame::VERSION);
    s.write_all(&hello).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        match frame::decode_response(&buf, 4096).map_err(|e| e.to_string())? {
            Some((Response::Welcome { version: _, max_frame, max_batch }, n)) => {
                buf.advance(n);
                let welcome = Welcome { max_frame, max_batch };
                return Ok(Conn { stream: s, buf, welcome });
            }
            Some((Response::Error { message, .. }, _)) => return Err(message.into_owned()),
            Some((other, _)) => return Err(format!("expected WELCOME, got {other:?}")),
            None => {}
        }
        if s.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("server closed the connection during the handshake".into());
        }
    }
}

/// On the driver's exit, however it exits: nothing more is queued, and what is queued fails.
struct DriverExit<'a>(&'a Shared);

impl Drop for DriverExit<'_> {
    fn drop(&mut self) {
        let left: Vec<Job> = {
            let mut st = self.0.lock();
            st.closed = true;
            st.queue.drain(..).collect()
        };
        for j in left {
            j.answer(Err(ClientError::Closed));
        }
    }
}

/// The driver: (re)connects, pipelines queued requests, and re-queues or fails what a lost
/// connection left unanswered. While the connection is idle it leaves it to the callers.
async fn drive(shared: Arc<Shared>, cfg: Arc<ClientConfig>) {
    let _exit = DriverExit(&shared);
    let mut backoff = cfg.reconnect_min;
    loop {
        {
            let mut st = shared.lock();
            st.queue.retain(|j| !j.reply.is_closed());
            if st.is_done() {
                return;
            }
        }
        let conn = tokio::time::timeout(cfg.connect_timeout, connect(&cfg))
            .await
            .unwrap_or_else(|_elapsed| Err("handshake timed out".into()));
        let conn = match conn {
            Ok(c) => c,
            Err(why) => {
                tracing::debug!(endpoint = %cfg.endpoint, error = %why, "hot path unreachable");
                // Requests queue meanwhile; a dropped client with none queued ends the wait.
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                loop {
                    let notified = shared.wake.notified();
                    if shared.lock().is_done() {
                        return;
                    }
                    tokio::select! {
                        _ = &mut sleep => break,
                        _ = notified => {}
                    }
                }
                backoff = (backoff * 2).min(cfg.reconnect_max);
                continue;
            }
        };
        backoff = cfg.reconnect_min;
        tracing::debug!(endpoint = %cfg.endpoint, "hot path connected");
        shared.lock().link = Link::Idle(conn);
        // Serve the connection until it is lost.
        loop {
            let notified = shared.wake.notified();
            let conn = {
                let mut st = shared.lock();
                match st.link {
                    Link::Down => break,
                    Link::Idle(_) if !st.queue.is_empty() || st.closed => {
                        let Link::Idle(conn) = std::mem::replace(&mut st.link, Link::Pipelined)
                        else {
                            unreachable!("matched above")
                        };
                        Some(conn)
                    }
                    Link::Idle(_) | Link::Direct | Link::Pipelined => None,
                }
            };
            let Some(conn) = conn else {
                notified.await;
                continue;
            };
            match pipeline(&shared, conn).await {
                Ok(conn) => {
                    let mut st = shared.lock();
                    if st.is_done() {
                        return;
                    }
                    st.link = Link::Idle(conn);
                }
                Err(lost) => {
                    shared.lock().link = Link::Down;
                    requeue(&shared, &cfg, lost);
                    break;
                }
            }
        }
    }
}

/// What a lost connection left unanswered is sent again first, in its order, or fails when
/// it was sent `max_attempts` times already.
fn requeue(shared: &Shared, cfg: &ClientConfig, mut lost: Vec<Job>) {
    let n = lost.len();
    lost.sort_by_key(|j| std::cmp::Reverse(j.id));
    let mut failed = Vec::new();
    {
        let mut st = shared.lock();
        for j in lost {
            if j.attempts >= cfg.max_attempts {
                failed.push(j);
            } else {
                st.queue.push_front(j);
            }
        }
    }
    for j in failed {
        let attempts = j.attempts;
        j.answer(Err(ClientError::ConnectionLost { attempts }));
    }
    tracing::info!(endpoint = %cfg.endpoint, unanswered = n, "hot-path connection lost");
}

/// Unwritten bytes the driver takes from the queue at most (a write takes up to
/// [`Outbox::SLICES`] frames of them).
const OUTBOX_MAX: usize = 256 << 10;

/// Pipelines queued requests on `conn` in one task: writes them as they come, reads and
/// delivers their answers, until nothing is queued or in flight (then the connection is
/// handed back, at a frame boundary) or the connection fails (then its unanswered requests
/// are returned).
async fn pipeline(shared: &Shared, conn: Conn) -> Result<Conn, Vec<Job>> {
    let Conn { stream, mut buf, welcome } = conn;
    let max = welcome.max_answer();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut inflight: VecDeque<Job> = VecDeque::new();
    let mut out = Outbox::default();
    // Written since the last flush.
    let mut unflushed = false;
    loop {
        let notified = shared.wake.notified();
        if out.bytes < OUTBOX_MAX {
            let mut st = shared.lock();
            while out.bytes < OUTBOX_MAX {
                let Some(mut job) = st.queue.pop_front() else { break };
                if let Err(e) = welcome.check(&job.frame) {
                    job.answer(Err(e));
                    continue;
                }
                job.attempts += 1;
                out.push(job.frame.clone());
                inflight.push_back(job);
            }
        }
        if out.is_empty() && inflight.is_empty() && !unflushed {
            return Ok(Conn { stream: rd.unsplit(wr), buf, welcome });
        }
        reserve(&mut buf, max);
        let mut slices = [IoSlice::new(&[]); Outbox::SLICES];
        let n = out.slices(&mut slices);
        // What is written is flushed once nothing more is to be written: TLS may keep the end
        // of it buffered when the socket is full (a Unix socket's flush does nothing).
        let write = async {
            if n > 0 {
                wr.write_vectored(&slices[..n]).await.map(Some)
            } else {
                wr.flush().await.map(|()| None)
            }
        };
        tokio::select! {
            biased;
            r = rd.read_buf(&mut buf), if !inflight.is_empty() => {
                if !matches!(r, Ok(n) if n > 0) || deliver(&mut buf, max, &mut inflight).is_err() {
                    return Err(unanswered(inflight, &out));
                }
            }
            r = write, if n > 0 || unflushed => match r {
                Ok(Some(written)) if written > 0 => {
                    out.advance(written);
                    unflushed = true;
                }
                Ok(None) => unflushed = false,
                _ => {
                    drain(&mut rd, &mut buf, max, &mut inflight).await;
                    return Err(unanswered(inflight, &out));
                }
            },
            () = notified => {}
        }
    }
}

/// How long a connection that can no longer be written is read for the answers still due.
/// The daemon's default `drain_timeout`, after which it cuts a closing connection anyway.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Delivers the answers still coming on a connection that can no longer be written, until it
/// ends (or [`DRAIN_WAIT`] passes). A daemon that stops answers every request it has read,
/// then closes; on a Unix socket it stops reading first, so the router's writes fail while
/// those answers are on their way, and without this they would be thrown away and the
/// requests sent again.
async fn drain<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: u32,
    inflight: &mut VecDeque<Job>,
) {
    let answers = async {
        while !inflight.is_empty() {
            reserve(buf, max);
            match rd.read_buf(buf).await {
                Ok(n) if n > 0 => {
                    if deliver(buf, max, inflight).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_WAIT, answers).await;
}

/// What a failed connection leaves unanswered. The requests whose frames were not written
/// whole (the last ones in flight, as frames go out in the order they are taken) were not
/// sent: that attempt does not count.
fn unanswered(inflight: VecDeque<Job>, out: &Outbox) -> Vec<Job> {
    // Saturating: only a server answering ids it was never sent could make it matter.
    let sent = inflight.len().saturating_sub(out.frames.len());
    let mut jobs: Vec<Job> = inflight.into();
    for j in &mut jobs[sent..] {
        j.attempts -= 1;
    }
    jobs
}

/// Frames waiting to be written, in order, and how much of the first is written: written
/// with vectored writes (of at most `SLICES` frames each), so that queued requests go out in
/// one system call without being copied into one buffer first.
#[derive(Default)]
struct Outbox {
    frames: VecDeque<Bytes>,
    /// Bytes of the first frame already written.
    done: usize,
    /// Bytes not yet written.
    bytes: usize,
}

impl Outbox {
    const SLICES: usize = 64;

    fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Fills `slices` with what to write next; returns how many it filled.
    fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; Self::SLICES]) -> usize {
        let mut n = 0;
        for (s, f) in slices.iter_mut().zip(&self.frames) {
            *s = IoSlice::new(if n == 0 { &f[self.done..] } else { f });
            n += 1;
        }
        n
    }

    /// Drops what a write took: `written` bytes from the front.
    fn advance(&mut self, mut written: usize) {
        self.bytes -= written;
        while written > 0 {
            let left = self.frames[0].len() - self.done;
            if written < left {
                (self.done, written) = (self.done + written, 0);
            } else {
                self.frames.pop_front();
                (self.done, written) = (0, written - left);
            }
        }
    }
}

/// The connection cannot carry more answers: it failed, or the server ends it.
struct ConnectionEnds;

/// Delivers every whole answer in `buf` to its request.
fn deliver(
    buf: &mut BytesMut,
    max: u32,
    inflight: &mut VecDeque<Job>,
) -> Result<(), ConnectionEnds> {
    while let Some(Answered { id, answer, closes }) = next_answer(buf, max)? {
        match take_answered(inflight, id) {
            Some(j) => j.answer(answer),
            None => tracing::warn!(id, "answer for no request in flight"),
        }
        if closes {
            return Err(ConnectionEnds);
        }
    }
    Ok(())
}

/// Takes the next whole answer out of `buf` (`None` while it holds none whole).
fn next_answer(buf: &mut BytesMut, max: u32) -> Result<Option<Answered>, ConnectionEnds> {
    let (resp, n) = match frame::decode_response(buf, max) {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!(error = %e, "unreadable answer from the hot-path server");
            return Err(ConnectionEnds);
        }
    };
    let answered = decode(resp);
    buf.advance(n);
    answered.map(Some)
}

/// Room in `buf` for the rest of the answer it holds the start of, or for the next ones.
fn reserve(buf: &mut BytesMut, max: u32) {
    let want = frame::frame_len(buf).unwrap_or(0).max(buf.len() + (16 << 10));
    buf.reserve(want.min(max as usize + 4).saturating_sub(buf.len()));
}

/// An answer frame, read: the answer to request `id`; after it the server closes the
/// connection if `closes`.
struct Answered {
    id: u64,
    answer: Result<Answer, ClientError>,
    closes: bool,
}

/// Reads one answer frame; `Err` when the server ends the connection with it (what is in
/// flight gets no answer on it). SEALED bodies are copied out once (see [`SealedBatch`]), so
/// the receive buffer is reused.
fn decode(resp: Response<'_>) -> Result<Answered, ConnectionEnds> {
    let (id, answer, closes) = match resp {
        Response::Sealed { request_id, records } => {
            let raw = Bytes::copy_from_slice(records.raw());
            let count = records.len() as u32;
            (request_id, Ok(Answer::Sealed(SealedBatch { raw, count })), false)
        }
        Response::Off { request_id } => (request_id, Ok(Answer::Off), false),
        Response::Indexed { request_id, key_version, indexes } => {
            let answer = KeyVersion::new(key_version)
                .map(|key_version| {
                    Answer::Indexed(BlindIndexes {
                        key_version,
                        indexes: indexes
                            .chunks_exact(32)
                            .map(|c| c.try_into().expect("32 bytes"))
                            .collect(),
                    })
                })
                .map_err(|e| ClientError::Protocol(e.to_string()));
            (request_id, answer, false)
        }
        Response::Identified { request_id, identities } => {
            let ids = identities.chunks_exact(32).map(|c| c.try_into().expect("32 bytes"));
            (request_id, Ok(Answer::Identified(ids.collect())), false)
        }
        Response::Rewrapped { request_id, key_version, items } => {
            let answer = KeyVersion::new(key_version)
                .map(|key_version| {
                    let items = items.iter().map(|i| match i {
                        frame::RewrappedItem::Done { record, from_idx, to_idx, room_idx } => {
                            Ok(RewrappedRecord {
                                record: record.to_vec(),
                                from_idx,
                                to_idx,
                                room_idx,
                            })
                        }
                        frame::RewrappedItem::Failed(why) => Err(why.to_owned()),
                    });
                    Answer::Rewrapped(Rewrapped { key_version, items: items.collect() })
                })
                .map_err(|e| ClientError::Protocol(e.to_string()));
            (request_id, answer, false)
        }
        Response::Status { request_id, status } => {
            (request_id, status_of(status).map(Answer::Status), false)
        }
        Response::Error { request_id, code, closes, message } => {
            if request_id == 0 || code.is_transient() && closes {
                // A connection-level error: the driver re-sends what is in flight.
                tracing::warn!(?code, %message, "hot-path server closed the connection");
                return Err(ConnectionEnds);
            }
            let e = ClientError::Refused { code, message: message.into_owned() };
            (request_id, Err(e), closes)
        }
        Response::Welcome { .. } => {
            tracing::warn!("unexpected second WELCOME from the hot-path server");
            return Err(ConnectionEnds);
        }
    };
    Ok(Answered { id, answer, closes })
}

fn status_of(s: StatusInfo) -> Result<KeyStatus, ClientError> {
    Ok(match s {
        StatusInfo::Off => KeyStatus::Off,
        StatusInfo::On { domain, key_version, cluster } => KeyStatus::On {
            domain: DomainId::from_bytes(domain),
            key_version: KeyVersion::new(key_version)
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
            cluster: ClusterId::new(cluster).map_err(|e| ClientError::Protocol(e.to_string()))?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64) -> Job {
        let (reply, _) = oneshot::channel();
        Job { id, frame: Bytes::new(), attempts: 1, reply, _permit: None }
    }

    /// The server answers in order, so an answer takes the front job; one out of order still
    /// reaches its own request, and one for no request in flight takes nothing.
    #[test]
    fn an_answer_takes_the_request_it_answers_and_no_other() {
        let mut inflight: VecDeque<Job> = (1..=4).map(job).collect();
        assert_eq!(take_answered(&mut inflight, 1).map(|j| j.id), Some(1));
        assert_eq!(take_answered(&mut inflight, 3).map(|j| j.id), Some(3));
        assert_eq!(take_answered(&mut inflight, 9).map(|j| j.id), None);
        assert_eq!(take_answered(&mut inflight, 3).map(|j| j.id), None, "answered once only");
        let left: Vec<u64> = inflight.iter().map(|j| j.id).collect();
        assert_eq!(left, [2, 4], "the others stay in flight, in order");
    }

    /// A write that takes at most `max` bytes, from as many slices as that spans.
    fn trickle(got: &mut Vec<u8>, bufs: &[IoSlice<'_>], max: usize) -> usize {
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(max - n);
            got.extend_from_slice(&b[..take]);
            n += take;
        }
        n
    }

    #[test]
    fn queued_frames_go_out_whole_and_in_order_whatever_each_write_takes() {
        // 100 frames of 1..=100 bytes: more than one vectored write's 64 slices.
        let frames: Vec<Bytes> =
            (1..=100u8).map(|n| Bytes::from(vec![n; usize::from(n)])).collect();
        let all: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for max in [1, 7, 100, 4096, usize::MAX] {
            let mut out = Outbox::default();
            frames.iter().for_each(|f| out.push(f.clone()));
            assert_eq!(out.bytes, all.len());
            let (mut got, mut writes) = (Vec::new(), 0);
            while !out.is_empty() {
                let written = {
                    let mut slices = [IoSlice::new(&[]); Outbox::SLICES];
                    let n = out.slices(&mut slices);
                    trickle(&mut got, &slices[..n], max)
                };
                out.advance(written);
                writes += 1;
            }
            assert_eq!(got, all, "at most {max} bytes per write");
            assert_eq!(out.bytes, 0, "nothing left to write");
            if max == usize::MAX {
                assert_eq!(writes, 2, "64 frames per write, then the other 36");
            }
        }
    }
}
