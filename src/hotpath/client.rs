//! The router's client: async, pipelined over one connection, reconnecting, with a bounded
//! queue for the time the daemon is unreachable.
//!
//! A `Client` owns a driver task. Callers encode their request in their own task (`submit`),
//! queue it, and await its `Pending` answer; the driver numbers and writes requests, a reader
//! task matches answers to requests by id. Many requests are in flight at once.
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
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf, ReadHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

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

/// A submitted request's answer, to await later (pipelining).
pub struct Pending {
    rx: oneshot::Receiver<Result<Answer, ClientError>>,
}

impl Future for Pending {
    type Output = Result<Encrypted, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(Ok(Answer::Sealed(b))) => Ok(Encrypted::Sealed(b)),
            Ok(Ok(Answer::Off)) => Ok(Encrypted::Off),
            Ok(Ok(
                Answer::Status(_)
                | Answer::Indexed(_)
                | Answer::Identified(_)
                | Answer::Rewrapped(_),
            )) => Err(ClientError::Protocol("a non-SEALED answer to ENCRYPT".into())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        })
    }
}

/// A hot-path client. Cheap to share (`Arc<Client>`); all methods take `&self`.
pub struct Client {
    tx: mpsc::UnboundedSender<Job>,
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
    cfg: Arc<ClientConfig>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hotpath::Client({})", self.cfg.endpoint)
    }
}

impl Client {
    /// Starts the client; it connects in the background (and again whenever the connection
    /// is lost). Must be called inside a Tokio runtime.
    pub fn new(cfg: ClientConfig) -> Self {
        let cfg = Arc::new(cfg);
        let (tx, rx) = mpsc::unbounded_channel();
        // Dropping the client closes the queue; the driver still answers (or fails) every
        // request already submitted, then exits by itself.
        tokio::spawn(drive(cfg.clone(), rx));
        Self {
            tx,
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
        self.submit([(metadata, plaintext)].into_iter()).await?.await
    }

    /// Encrypts a batch in one frame; all sealed under one key version, or one error.
    pub async fn encrypt_batch<'r>(
        &self,
        records: impl ExactSizeIterator<Item = (&'r [u8], &'r [u8])> + Clone,
    ) -> Result<Encrypted, ClientError> {
        self.submit(records).await?.await
    }

    /// Queues a batch and returns once it is queued (or at once with an error): await the
    /// `Pending` for the answer. Submitting many before awaiting any pipelines them.
    pub async fn submit<'r>(
        &self,
        records: impl ExactSizeIterator<Item = (&'r [u8], &'r [u8])> + Clone,
    ) -> Result<Pending, ClientError> {
        let count = records.len();
        if let Some((m, _)) = records.clone().find(|(m, _)| m.len() > u16::MAX as usize) {
            return Err(ClientError::MetadataTooLong(m.len()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut f = Vec::with_capacity(frame::encrypt_frame_len(records.clone()));
        frame::encode_encrypt(&mut f, id, records);
        let rx = self.enqueue(id, f, count.max(1)).await?;
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
        if let Some((m, _)) = records.clone().find(|(m, _)| m.len() > u16::MAX as usize) {
            return Err(ClientError::MetadataTooLong(m.len()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut f = Vec::with_capacity(frame::encrypt_frame_len(records.clone()));
        frame::encode_rewrap(&mut f, id, records);
        match self.enqueue(id, f, count.max(1)).await?.await {
            Ok(Ok(Answer::Rewrapped(r))) if r.items.len() == count => Ok(Some(r)),
            Ok(Ok(Answer::Off)) => Ok(None),
            Ok(Ok(_)) => Err(ClientError::Protocol("unexpected answer to REWRAP".into())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Asks whether encryption is on, and with which domain and key version.
    pub async fn status(&self) -> Result<KeyStatus, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut f = Vec::with_capacity(13);
        frame::encode_status_request(&mut f, id);
        match self.enqueue(id, f, 1).await?.await {
            Ok(Ok(Answer::Status(s))) => Ok(s),
            Ok(Ok(_)) => Err(ClientError::Protocol("non-STATUS answer to STATUS".into())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
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
        match self.enqueue(id, f, count.max(1)).await?.await {
            Ok(Ok(Answer::Off)) => Ok(None),
            Ok(Ok(a)) => Ok(Some(a)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Records waiting or in flight now.
    pub fn queued(&self) -> usize {
        self.cfg.max_queue.min(Semaphore::MAX_PERMITS) - self.permits.available_permits()
    }

    async fn enqueue(
        &self,
        id: u64,
        frame: Vec<u8>,
        weight: usize,
    ) -> Result<oneshot::Receiver<Result<Answer, ClientError>>, ClientError> {
        let max = self.cfg.max_queue;
        let w = u32::try_from(weight)
            .ok()
            .filter(|&w| w as usize <= max)
            .ok_or(ClientError::BatchLargerThanQueue { count: weight, max })?;
        let permits = self.permits.clone();
        let permit = match self.cfg.when_full {
            QueuePolicy::Block => {
                permits.acquire_many_owned(w).await.map_err(|_| ClientError::Closed)?
            }
            QueuePolicy::Fail => {
                permits.try_acquire_many_owned(w).map_err(|_| ClientError::QueueFull { max })?
            }
        };
        let (reply, rx) = oneshot::channel();
        let job = Job { id, frame: frame.into(), attempts: 0, reply, _permit: Some(permit) };
        self.tx.send(job).map_err(|_| ClientError::Closed)?;
        Ok(rx)
    }
}

/// The requests written on a connection and not yet answered, in the order they were
/// written. The server answers in request order (docs/hotpath.md, "Request ids"), so
/// an answer is for the front one: no lookup by id on the hot path. An answer for another
/// one in flight is still delivered to it (found by a search); one for none is logged.
type InFlight = Arc<Mutex<VecDeque<Job>>>;

/// Takes the job in flight that `id` answers: the front one, as the server answers in order.
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

async fn connect(cfg: &ClientConfig) -> Result<(Stream, Welcome, Vec<u8>), String> {
    let mut s = open(&cfg.endpoint).await?;
    let mut hello = Vec::new();
    frame::encode_hello(&mut hello, frame::VERSION, frame::VERSION);
    s.write_all(&hello).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(64 << 10);
    loop {
        match frame::decode_response(&buf, 4096).map_err(|e| e.to_string())? {
            Some((Response::Welcome { version: _, max_frame, max_batch }, n)) => {
                buf.drain(..n);
                return Ok((s, Welcome { max_frame, max_batch }, buf));
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

/// The driver: (re)connects, writes queued requests, hands the connection's answers to the
/// reader task, and re-queues or fails what a lost connection left unanswered.
async fn drive(cfg: Arc<ClientConfig>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut retry: VecDeque<Job> = VecDeque::new();
    let mut backoff = cfg.reconnect_min;
    let mut closed = false;
    loop {
        retry.retain(|j| !j.reply.is_closed());
        if closed && retry.is_empty() {
            return;
        }
        let conn = tokio::time::timeout(cfg.connect_timeout, connect(&cfg))
            .await
            .unwrap_or_else(|_elapsed| Err("handshake timed out".into()));
        let (stream, welcome, leftover) = match conn {
            Ok(c) => c,
            Err(why) => {
                tracing::debug!(endpoint = %cfg.endpoint, error = %why, "hot path unreachable");
                // Keep accepting jobs while waiting, so a closed client is noticed.
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        j = rx.recv(), if !closed => match j {
                            Some(j) => retry.push_back(j),
                            None => closed = true,
                        },
                    }
                }
                backoff = (backoff * 2).min(cfg.reconnect_max);
                continue;
            }
        };
        backoff = cfg.reconnect_min;
        tracing::debug!(endpoint = %cfg.endpoint, "hot path connected");
        let inflight: InFlight = Arc::new(Mutex::new(VecDeque::new()));
        let (rd, mut wr) = tokio::io::split(stream);
        let max_answer = u64::from(welcome.max_frame)
            + u64::from(welcome.max_batch) * (FIXED_OVERHEAD as u64 + 255 + 4)
            + 1024;
        let mut reader = tokio::spawn(read_answers(
            rd,
            leftover,
            max_answer.min(u64::from(u32::MAX)) as u32,
            inflight.clone(),
        ));
        // The frames of one write: everything queued, up to 256 KiB.
        let mut frames: Vec<Bytes> = Vec::new();
        let mut reader_done = false;
        loop {
            // Next job: re-sends first, then new requests.
            let job = match retry.pop_front() {
                Some(j) => Some(j),
                None if closed => None,
                None => tokio::select! {
                    j = rx.recv() => j,
                    _ = &mut reader => {
                        reader_done = true;
                        break;
                    }
                },
            };
            let Some(job) = job else {
                closed = true;
                if inflight.lock().expect("not poisoned").is_empty() {
                    reader.abort();
                    return;
                }
                // Wait for the last answers.
                let _ = (&mut reader).await;
                reader_done = true;
                break;
            };
            frames.clear();
            let (mut bytes, mut batch) = (0, Some(job));
            while let Some(job) = batch.take() {
                if let Some(j) = admit(job, welcome) {
                    bytes += j.frame.len();
                    frames.push(j.frame.clone());
                    inflight.lock().expect("not poisoned").push_back(j);
                }
                if bytes < 256 << 10 {
                    batch = retry.pop_front().or_else(|| rx.try_recv().ok());
                }
            }
            if write_frames(&mut wr, &frames).await.is_err() {
                break;
            }
        }
        if !reader_done {
            reader.abort();
            let _ = reader.await;
        }
        // The connection is gone: what it left unanswered is sent again, or fails.
        let mut lost: Vec<Job> = inflight.lock().expect("not poisoned").drain(..).collect();
        lost.sort_by_key(|j| std::cmp::Reverse(j.id));
        let n = lost.len();
        for j in lost {
            if j.attempts >= cfg.max_attempts {
                let attempts = j.attempts;
                j.answer(Err(ClientError::ConnectionLost { attempts }));
            } else {
                retry.push_front(j);
            }
        }
        tracing::info!(endpoint = %cfg.endpoint, unanswered = n, "hot-path connection lost");
    }
}

/// Writes `frames` in order with vectored writes (of at most 64 frames each), so that queued
/// requests go out in one system call without being copied into one buffer first.
async fn write_frames<W: AsyncWrite + Unpin>(wr: &mut W, frames: &[Bytes]) -> std::io::Result<()> {
    const SLICES: usize = 64;
    // The frame being written, and how much of it is written.
    let (mut i, mut done) = (0, 0);
    while i < frames.len() {
        let mut slices = [std::io::IoSlice::new(&[]); SLICES];
        let n = (frames.len() - i).min(SLICES);
        slices[0] = std::io::IoSlice::new(&frames[i][done..]);
        for (s, f) in slices[1..n].iter_mut().zip(&frames[i + 1..]) {
            *s = std::io::IoSlice::new(f);
        }
        let mut written = wr.write_vectored(&slices[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let left = frames[i].len() - done;
            if written < left {
                (done, written) = (done + written, 0);
            } else {
                (i, done, written) = (i + 1, 0, written - left);
            }
        }
    }
    Ok(())
}

/// Checks a job against the server's limits; fails it (and returns `None`) if it cannot fit.
fn admit(mut job: Job, w: Welcome) -> Option<Job> {
    let len = job.frame.len() - frame::LEN_PREFIX;
    let ty = job.frame[frame::LEN_PREFIX];
    let count = if matches!(
        ty,
        frame::kind::ENCRYPT | frame::kind::INDEX | frame::kind::IDENTIFY | frame::kind::REWRAP
    ) {
        u32::from_be_bytes(job.frame[13..17].try_into().expect("4 bytes"))
    } else {
        0
    };
    let err = if len > w.max_frame as usize {
        Some(ClientError::TooLargeForServer { len, max: w.max_frame })
    } else if count > w.max_batch {
        Some(ClientError::BatchTooLarge { count: count as usize, max: w.max_batch })
    } else {
        None
    };
    if let Some(e) = err {
        job.answer(Err(e));
        return None;
    }
    job.attempts += 1;
    Some(job)
}

/// Reads answers until the connection ends, delivering each to its request. SEALED bodies
/// are copied out once (see [`SealedBatch`]); the receive buffer is reused.
async fn read_answers(mut rd: ReadHalf<Stream>, leftover: Vec<u8>, max: u32, inflight: InFlight) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    buf.extend_from_slice(&leftover);
    loop {
        loop {
            let (resp, n) = match frame::decode_response(&buf, max) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable answer from the hot-path server");
                    return;
                }
            };
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
                                frame::RewrappedItem::Done {
                                    record,
                                    from_idx,
                                    to_idx,
                                    room_idx,
                                } => Ok(RewrappedRecord {
                                    record: record.to_vec(),
                                    from_idx,
                                    to_idx,
                                    room_idx,
                                }),
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
                        return;
                    }
                    let e = ClientError::Refused { code, message: message.into_owned() };
                    (request_id, Err(e), closes)
                }
                Response::Welcome { .. } => {
                    tracing::warn!("unexpected second WELCOME from the hot-path server");
                    return;
                }
            };
            buf.advance(n);
            let job = take_answered(&mut inflight.lock().expect("not poisoned"), id);
            match job {
                Some(j) => j.answer(answer),
                None => tracing::warn!(id, "answer for no request in flight"),
            }
            if closes {
                return;
            }
        }
        let want = frame::frame_len(&buf).unwrap_or(0).max(buf.len() + (16 << 10));
        buf.reserve(want.min(max as usize + 4).saturating_sub(buf.len()));
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
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

    /// Takes at most `max` bytes per write, from as many slices as that spans.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            this.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(this.max - n);
                this.got.extend_from_slice(&b[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_frames_arrive_whole_and_in_order_whatever_each_write_takes() {
        // 100 frames of 1..=100 bytes: more than one vectored write's 64 slices.
        let frames: Vec<Bytes> =
            (1..=100u8).map(|n| Bytes::from(vec![n; usize::from(n)])).collect();
        let all: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for max in [1, 7, 100, 4096, usize::MAX] {
            let mut w = Trickle { got: Vec::new(), max, calls: 0 };
            write_frames(&mut w, &frames).await.unwrap();
            assert_eq!(w.got, all, "at most {max} bytes per write");
            if max == usize::MAX {
                assert_eq!(w.calls, 2, "64 frames per write, then the other 36");
            }
        }
    }

    #[tokio::test]
    async fn a_stream_that_takes_nothing_fails_the_write() {
        let mut w = Trickle { got: Vec::new(), max: 0, calls: 0 };
        let e = write_frames(&mut w, &[Bytes::from_static(b"frame")]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WriteZero);
    }
}
