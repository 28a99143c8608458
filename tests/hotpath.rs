//! The hot path over real Unix sockets in temp dirs, with real server and client tasks: many
//! clients, a daemon restart mid-stream and one while idle, callers that give up halfway, bad
//! frames, rotation mid-stream, encryption off, the client's queue policies, and a reservation
//! that cannot be persisted. Every test is bounded in time.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imcrypt::crypto::aead::AeadImpl;
use imcrypt::crypto::counter::{BLOCK, Reservations};
use imcrypt::crypto::keyring::KeyRing;
use imcrypt::crypto::record::{RecordHeader, RecordOpener};
use imcrypt::crypto::seal::{NodeKey, Purpose};
use imcrypt::hotpath::frame::{self, ErrorCode, Response};
use imcrypt::hotpath::{
    Client, ClientConfig, ClientError, Encrypted, KeySource, KeyStatus, MemoryReservations,
    QueuePolicy, ReservationStore, ServerConfig, ServerError, UnixSocketConfig, bind_unix, serve,
};
use imcrypt::ids::{ClusterId, DomainId, KeyVersion};
use imcrypt::store::SealedFile;
use support::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use zeroize::Zeroizing;

const LIMIT: Duration = Duration::from_secs(20);

fn ring() -> KeyRing {
    KeyRing::new(DomainId::from_bytes([7; 16]), 1, Zeroizing::new([3; 32]))
}

fn keys_with(store: impl ReservationStore, ring: Option<&KeyRing>) -> Arc<KeySource> {
    let ks = KeySource::new(ClusterId::new("east").unwrap(), AeadImpl::Ring, store).unwrap();
    ks.set_ring(ring).unwrap();
    Arc::new(ks)
}

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    fn start(path: &Path, keys: Arc<KeySource>, config: ServerConfig) -> Self {
        let listener = bind_unix(&UnixSocketConfig::new(path)).unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, keys, config, async move {
            let _ = rx.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        timeout(LIMIT, self.task).await.unwrap().unwrap().unwrap();
    }
}

fn sock(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("hot.sock")
}

fn client(path: &Path) -> Client {
    Client::new(ClientConfig::new(path))
}

fn sealed(e: Encrypted) -> Vec<Vec<u8>> {
    match e {
        Encrypted::Sealed(b) => b.to_vecs(),
        Encrypted::Off => panic!("encryption is on, yet the answer was Off"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_get_each_answer_once_and_it_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let r = ring();
    let keys = keys_with(Arc::new(MemoryReservations::new()), Some(&r));
    let server = Server::start(&path, keys, ServerConfig::default());
    let mut tasks = Vec::new();
    for c in 0..6u32 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let cl = client(&path);
            // Pipelined: submit all, then await all.
            let mut pending = Vec::new();
            let mut sent = Vec::new();
            for j in 0..100u32 {
                let recs: Vec<(Vec<u8>, Vec<u8>)> = (0..1 + j % 5)
                    .map(|k| {
                        (
                            format!("c{c}-r{j}-{k}").into_bytes(),
                            format!("msg {c} {j} {k}").repeat(j as usize % 7 + 1).into_bytes(),
                        )
                    })
                    .collect();
                let it = recs.iter().map(|(m, p)| (&m[..], &p[..]));
                pending.push(cl.submit(it).await.unwrap());
                sent.push(recs);
            }
            let mut got = Vec::new();
            for p in pending {
                got.push(sealed(p.await.unwrap()));
            }
            (sent, got)
        }));
    }
    let mut opener = RecordOpener::new(&r, AeadImpl::RustCrypto);
    let mut total = 0;
    for t in tasks {
        let (sent, got) = timeout(LIMIT, t).await.unwrap().unwrap();
        assert_eq!(sent.len(), got.len());
        for (recs, answers) in sent.iter().zip(&got) {
            assert_eq!(recs.len(), answers.len());
            for ((meta, pt), rec) in recs.iter().zip(answers) {
                assert_eq!(&opener.open(rec, meta).unwrap()[..], &pt[..]);
                total += 1;
            }
        }
    }
    assert_eq!(total, 6 * (20 * (1 + 2 + 3 + 4 + 5)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restart_mid_stream_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let r = ring();
    let node = NodeKey::from_bytes([9; 32]);
    let counters = dir.path().join("counters");
    let keys = keys_with(SealedFile::new(&counters, &node, Purpose::Counters), Some(&r));
    let first = Server::start(&path, keys, ServerConfig::default());

    const N: usize = 400;
    let done = Arc::new(AtomicUsize::new(0));
    let stream = {
        let (path, done) = (path.clone(), done.clone());
        tokio::spawn(async move {
            let cl = Arc::new(client(&path));
            let window = Arc::new(tokio::sync::Semaphore::new(16));
            let mut tasks = Vec::new();
            for i in 0..N {
                let permit = window.clone().acquire_owned().await.unwrap();
                let (cl, done) = (cl.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    let meta = format!("row {i}");
                    let pt = format!("message {i}");
                    let r = cl.encrypt(meta.as_bytes(), pt.as_bytes()).await;
                    done.fetch_add(1, Ordering::SeqCst);
                    drop(permit);
                    (i, r)
                }));
                // Time passes on purpose: a stream at a router's pace, so the restart falls
                // in its middle.
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
    };
    wait_for("100 records answered before the restart", LIMIT, async || {
        (done.load(Ordering::SeqCst) >= 100).then_some(())
    })
    .await;
    first.stop().await;
    // Time passes on purpose: the daemon stays down a moment while the stream goes on.
    tokio::time::sleep(Duration::from_millis(30)).await;
    // The restarted daemon reads the persisted reservations: it resumes past them.
    let keys = keys_with(SealedFile::new(&counters, &node, Purpose::Counters), Some(&r));
    assert!(keys.sealer().unwrap().counter().used() >= BLOCK);
    let second = Server::start(&path, keys, ServerConfig::default());

    let results = timeout(LIMIT, stream).await.unwrap().unwrap();
    assert_eq!(results.len(), N);
    let mut opener = RecordOpener::new(&r, AeadImpl::Ring);
    let (mut ok, mut failed) = (0, 0);
    for (i, res) in results {
        match res {
            Ok(e) => {
                let recs = sealed(e);
                assert_eq!(recs.len(), 1);
                let pt = opener.open(&recs[0], format!("row {i}").as_bytes()).unwrap();
                assert_eq!(&pt[..], format!("message {i}").as_bytes());
                ok += 1;
            }
            Err(e) => {
                assert!(matches!(e, ClientError::ConnectionLost { .. }), "{e}");
                failed += 1;
            }
        }
    }
    assert_eq!(ok + failed, N);
    assert!(ok >= N - 16, "{ok} of {N} sealed: resending after reconnect should save almost all");
    second.stop().await;
    let saved: Reservations =
        SealedFile::new(&counters, &node, Purpose::Counters).load().unwrap().unwrap();
    assert_eq!(saved.get(r.domain(), KeyVersion::FIRST), 2 * BLOCK);
}

/// A caller that gives up halfway (its future dropped once its request is written, before
/// the answer is read) leaves nothing behind: the next caller gets its own record, never the
/// abandoned one's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_mid_request_never_hands_its_answer_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let r = ring();
    let server = Server::start(
        &path,
        keys_with(Arc::new(MemoryReservations::new()), Some(&r)),
        ServerConfig::default(),
    );
    let cl = client(&path);
    let mut opener = RecordOpener::new(&r, AeadImpl::Ring);
    timeout(LIMIT, cl.status()).await.unwrap().unwrap();
    for i in 0..50 {
        {
            // One poll: the request is written and its answer not yet come; then dropped.
            let mut abandoned = std::pin::pin!(cl.encrypt(b"abandoned", b"never read"));
            std::future::poll_fn(|cx| {
                let _ = abandoned.as_mut().poll(cx);
                std::task::Poll::Ready(())
            })
            .await;
        }
        let (meta, pt) = (format!("row {i}"), format!("message {i}"));
        let got = timeout(LIMIT, cl.encrypt(meta.as_bytes(), pt.as_bytes())).await.unwrap();
        let recs = sealed(got.unwrap());
        assert_eq!(recs.len(), 1);
        let opened = opener.open(&recs[0], meta.as_bytes()).expect("its own record");
        assert_eq!(&opened[..], pt.as_bytes());
    }
    server.stop().await;
}

/// A daemon restart while the router is idle costs the next record nothing: the stale
/// connection is found dead before the record is sent on it, so even a client allowed one
/// attempt seals it on the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_idle_does_not_cost_the_next_record_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let r = ring();
    let keys = || keys_with(Arc::new(MemoryReservations::new()), Some(&r));
    let first = Server::start(&path, keys(), ServerConfig::default());
    let cl = Client::new(ClientConfig { max_attempts: 1, ..ClientConfig::new(&path) });
    let mut opener = RecordOpener::new(&r, AeadImpl::Ring);
    let before = sealed(timeout(LIMIT, cl.encrypt(b"row 1", b"before")).await.unwrap().unwrap());
    assert_eq!(&opener.open(&before[0], b"row 1").unwrap()[..], b"before");
    first.stop().await;
    let second = Server::start(&path, keys(), ServerConfig::default());
    let after = timeout(LIMIT, cl.encrypt(b"row 2", b"after")).await.unwrap();
    let after = sealed(after.expect("sealed on the new connection, within one attempt"));
    assert_eq!(&opener.open(&after[0], b"row 2").unwrap()[..], b"after");
    second.stop().await;
}

/// Reads answer frames until EOF.
async fn read_all_answers(s: &mut UnixStream) -> Vec<(u64, Option<ErrorCode>, bool)> {
    let mut buf = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let mut v = Vec::new();
    let mut rest = &buf[..];
    while let Some((r, n)) = frame::decode_response(rest, 1 << 24).unwrap() {
        v.push(match r {
            Response::Error { request_id, code, closes, .. } => (request_id, Some(code), closes),
            Response::Sealed { request_id, .. } | Response::Status { request_id, .. } => {
                (request_id, None, false)
            }
            other => (0, None, matches!(other, Response::Welcome { .. })),
        });
        rest = &rest[n..];
    }
    assert!(rest.is_empty());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_and_a_close_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let keys = keys_with(Arc::new(MemoryReservations::new()), Some(&ring()));
    let config = ServerConfig {
        max_frame: 4096,
        handshake_timeout: Duration::from_millis(150),
        ..Default::default()
    };
    let server = Server::start(&path, keys, config);
    let good = client(&path);
    let mut hello = Vec::new();
    frame::encode_hello(&mut hello, 1, 1);

    let cases: Vec<(&str, Vec<u8>, bool, ErrorCode)> = vec![
        (
            "oversized",
            [&hello[..], &100_000u32.to_be_bytes()].concat(),
            false,
            ErrorCode::FrameTooLarge,
        ),
        (
            "garbled",
            [&hello[..], &[0, 0, 0, 3, 0x02, 0xde, 0xad]].concat(),
            false,
            ErrorCode::Malformed,
        ),
        ("unknown type", [&hello[..], &[0, 0, 0, 1, 0x77]].concat(), false, ErrorCode::UnknownType),
        (
            "truncated",
            [&hello[..], &[0, 0, 0, 40, 0x02, 1, 2]].concat(),
            true,
            ErrorCode::Truncated,
        ),
        (
            "no hello",
            {
                let mut b = Vec::new();
                frame::encode_status_request(&mut b, 5);
                b
            },
            false,
            ErrorCode::HandshakeRequired,
        ),
        ("silent", Vec::new(), false, ErrorCode::HandshakeRequired),
        ("not imcrypt", b"GET / HTTP/1.1\r\n\r\n".to_vec(), false, ErrorCode::FrameTooLarge),
    ];
    for (name, bytes, half_close, code) in cases {
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        if half_close {
            s.shutdown().await.unwrap();
        }
        let answers = read_all_answers(&mut s).await;
        let last = answers.last().unwrap_or_else(|| panic!("{name}: no answer"));
        assert_eq!(last.1, Some(code), "{name}: {answers:?}");
        assert!(last.2, "{name}: the error must announce the close");
        // Meanwhile the well-behaved client is served.
        let recs =
            sealed(timeout(LIMIT, good.encrypt(b"m", name.as_bytes())).await.unwrap().unwrap());
        assert_eq!(recs.len(), 1);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_before_and_after_a_rotation_decrypt_with_their_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let mut r = ring();
    let keys = keys_with(Arc::new(MemoryReservations::new()), Some(&r));
    let server = Server::start(&path, keys.clone(), ServerConfig::default());
    let cl = client(&path);
    let mut versions = Vec::new();
    let mut recs = Vec::new();
    timeout(LIMIT, async {
        for i in 0..300u32 {
            if i == 150 {
                r.rotate(2, Zeroizing::new([4; 32])).unwrap();
                // The state machine's KeyRingChanged effect, carried by the daemon.
                keys.set_ring(Some(&r)).unwrap();
            }
            let rec =
                sealed(cl.encrypt(&i.to_be_bytes(), format!("m{i}").as_bytes()).await.unwrap())
                    .remove(0);
            versions.push(RecordHeader::parse(&rec).unwrap().key_version.get());
            recs.push(rec);
        }
    })
    .await
    .unwrap();
    assert_eq!(versions[..150], [1; 150]);
    assert_eq!(versions[150..], [2; 150]);
    let mut opener = RecordOpener::new(&r, AeadImpl::Ring);
    for (i, rec) in recs.iter().enumerate() {
        let pt = opener.open(rec, &(i as u32).to_be_bytes()).unwrap();
        assert_eq!(&pt[..], format!("m{i}").as_bytes());
    }
    match cl.status().await.unwrap() {
        KeyStatus::On { key_version, .. } => assert_eq!(key_version.get(), 2),
        KeyStatus::Off => panic!("off"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_off_is_an_answer_and_status_follows_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let keys = keys_with(Arc::new(MemoryReservations::new()), None);
    let server = Server::start(&path, keys.clone(), ServerConfig::default());
    let cl = client(&path);
    timeout(LIMIT, async {
        assert_eq!(cl.encrypt(b"", b"x").await.unwrap(), Encrypted::Off);
        assert_eq!(cl.status().await.unwrap(), KeyStatus::Off);
        let r = ring();
        keys.set_ring(Some(&r)).unwrap();
        assert_eq!(
            cl.status().await.unwrap(),
            KeyStatus::On {
                domain: r.domain(),
                key_version: KeyVersion::FIRST,
                cluster: ClusterId::new("east").unwrap()
            }
        );
        assert_eq!(sealed(cl.encrypt(b"", b"x").await.unwrap()).len(), 1);
        keys.set_ring(None).unwrap();
        assert_eq!(cl.encrypt(b"", b"x").await.unwrap(), Encrypted::Off);
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_daemon_is_down_requests_queue_then_fail_or_block_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let cfg = |policy| ClientConfig {
        max_queue: 3,
        when_full: policy,
        reconnect_max: Duration::from_millis(20),
        ..ClientConfig::new(&path)
    };
    let failing = Client::new(cfg(QueuePolicy::Fail));
    let blocking = Arc::new(Client::new(cfg(QueuePolicy::Block)));
    let mut queued = Vec::new();
    for i in 0..3u8 {
        queued.push(failing.submit([(&b"m"[..], &[i][..])].into_iter()).await.unwrap());
    }
    assert_eq!(failing.queued(), 3);
    let full = failing.submit([(&b"m"[..], &b"4"[..])].into_iter()).await;
    assert_eq!(full.err(), Some(ClientError::QueueFull { max: 3 }));
    // A batch takes as many places as it has records.
    let two = blocking.submit([(&b"a"[..], &b"1"[..]), (b"b", b"2")].into_iter()).await.unwrap();
    let b2 = blocking.clone();
    let blocked = tokio::spawn(async move {
        b2.encrypt_batch([(&b"c"[..], &b"3"[..]), (b"d", b"4")].into_iter()).await
    });
    // Time passes on purpose: the caller must still be held back after a while.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!blocked.is_finished(), "a full blocking queue holds the caller back");

    let r = ring();
    let server = Server::start(
        &path,
        keys_with(Arc::new(MemoryReservations::new()), Some(&r)),
        ServerConfig::default(),
    );
    timeout(LIMIT, async {
        for p in queued {
            assert_eq!(sealed(p.await.unwrap()).len(), 1);
        }
        assert_eq!(sealed(two.await.unwrap()).len(), 2);
        assert_eq!(sealed(blocked.await.unwrap().unwrap()).len(), 2);
    })
    .await
    .unwrap();
    assert_eq!(failing.queued(), 0);
    server.stop().await;
}

/// Uses up the counter's current reservation while no new one can be saved: the next batch
/// waits for a reservation (`reservation_wait`), then is refused.
fn use_up_reservations(store: &MemoryReservations, keys: &KeySource) {
    store.fail_saves(true);
    let sealer = keys.sealer().unwrap();
    while sealer.counter().take().is_ok() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_that_cannot_be_persisted_is_an_explicit_error_not_a_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let store = Arc::new(MemoryReservations::new());
    let keys = keys_with(store.clone(), Some(&ring()));
    let config =
        ServerConfig { reservation_wait: Duration::from_millis(150), ..Default::default() };
    let server = Server::start(&path, keys.clone(), config);
    let cl = client(&path);
    use_up_reservations(&store, &keys);
    let e = timeout(LIMIT, cl.encrypt(b"", b"x")).await.unwrap().unwrap_err();
    assert!(
        matches!(e, ClientError::Refused { code: ErrorCode::ReservationUnavailable, .. }),
        "{e}"
    );
    assert!(e.is_transient());
    // The disk is back: the reserver catches up and sealing resumes.
    store.fail_saves(false);
    let rec = timeout(LIMIT, cl.encrypt(b"", b"x")).await.unwrap().unwrap();
    assert_eq!(sealed(rec).len(), 1);
    assert!(store.saved().get(ring().domain(), KeyVersion::FIRST) > BLOCK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_has_its_mode_and_a_live_one_is_never_taken_over() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let l = bind_unix(&UnixSocketConfig::new(&path)).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    assert!(matches!(bind_unix(&UnixSocketConfig::new(&path)), Err(ServerError::InUse(_))));
    drop(l);
    // Stale: the file is there, nobody accepts.
    let cfg = UnixSocketConfig { mode: 0o600, ..UnixSocketConfig::new(&path) };
    let _l = bind_unix(&cfg).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(bind_unix(&UnixSocketConfig::new(&file)), Err(ServerError::NotASocket(_))));
    // No temporary socket is left behind.
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// A raw connection that has said HELLO and read its WELCOME.
async fn greeted(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).await.unwrap();
    let mut hello = Vec::new();
    frame::encode_hello(&mut hello, 1, 1);
    s.write_all(&hello).await.unwrap();
    let mut len = [0u8; 4];
    timeout(LIMIT, s.read_exact(&mut len)).await.unwrap().unwrap();
    let mut welcome = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut welcome).await.unwrap();
    let whole = [&len[..], &welcome].concat();
    let (r, _) = frame::decode_response(&whole, 1 << 20).unwrap().unwrap();
    assert!(matches!(r, Response::Welcome { .. }), "{r:?}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_closes_idle_connections_at_once_not_after_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let keys = keys_with(Arc::new(MemoryReservations::new()), Some(&ring()));
    let drain_timeout = Duration::from_secs(30);
    let server = Server::start(&path, keys, ServerConfig { drain_timeout, ..Default::default() });
    let router = client(&path);
    assert_eq!(sealed(timeout(LIMIT, router.encrypt(b"m", b"x")).await.unwrap().unwrap()).len(), 1);
    let mut idle = greeted(&path).await;
    // A request the server has read, answered before the close.
    let mut status = Vec::new();
    frame::encode_status_request(&mut status, 9);
    idle.write_all(&status).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    server.stop().await;
    // A connection whose thread the stop did not wake would hold `serve` for the drain timeout.
    assert!(t.elapsed() < drain_timeout / 3, "stop took {:?}", t.elapsed());
    let answers = read_all_answers(&mut idle).await;
    assert_eq!(answers, vec![(9, None, false)], "the STATUS answered, then EOF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_reads_no_answers_is_cut_after_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let keys = keys_with(Arc::new(MemoryReservations::new()), Some(&ring()));
    let config = ServerConfig { drain_timeout: Duration::from_millis(300), ..Default::default() };
    let server = Server::start(&path, keys, config);
    let s = greeted(&path).await.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    let ours = s.try_clone().unwrap();
    // Batches the server answers into a socket nobody reads: once both directions are full,
    // the server's connection blocks writing and this writer blocks too.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut s = s;
        let mut batch = Vec::new();
        frame::encode_encrypt(&mut batch, 1, (0..64).map(|_| (&b"m"[..], &[0x5a; 256][..])));
        while s.write_all(&batch).is_ok() {}
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!writer.is_finished(), "the writer must be blocked, not refused");
    server.stop().await;
    // The daemon's end closed (both ways), seen without reading: a read would make room for
    // the daemon's blocked write and let it finish on its own.
    let closed = tokio::task::spawn_blocking(move || {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let limit = Timespec { tv_sec: LIMIT.as_secs() as i64, tv_nsec: 0 };
        let mut fds = [PollFd::new(&ours, PollFlags::RDHUP)];
        let n = poll(&mut fds, Some(&limit)).unwrap();
        // Ends the writer too, if it still runs.
        let _ = ours.shutdown(std::net::Shutdown::Both);
        n == 1 && fds[0].revents().contains(PollFlags::RDHUP)
    });
    assert!(timeout(LIMIT * 2, closed).await.unwrap().unwrap(), "the connection was not cut");
    writer.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_silent_for_the_idle_timeout_is_closed_and_one_that_sends_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let keys = keys_with(Arc::new(MemoryReservations::new()), Some(&ring()));
    let idle_timeout = Duration::from_millis(400);
    // Longer than the test may take (LIMIT): the HELLO's deadline must give way to idleness's.
    let handshake_timeout = Duration::from_secs(60);
    let config = ServerConfig { idle_timeout, handshake_timeout, ..Default::default() };
    let server = Server::start(&path, keys, config);
    let mut s = greeted(&path).await;
    // Twice the idle timeout, with a request every quarter of it: still open.
    for id in 1..=8u64 {
        let mut status = Vec::new();
        frame::encode_status_request(&mut status, id);
        s.write_all(&status).await.unwrap();
        let mut len = [0u8; 4];
        timeout(LIMIT, s.read_exact(&mut len)).await.unwrap().unwrap();
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.unwrap();
        tokio::time::sleep(idle_timeout / 4).await;
    }
    // Then silent: closed (within LIMIT, see `read_all_answers`), with nothing outstanding.
    let t = std::time::Instant::now();
    assert_eq!(read_all_answers(&mut s).await, vec![]);
    assert!(t.elapsed() >= idle_timeout / 2, "closed after {:?}", t.elapsed());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_listener_returns_only_after_its_connection_threads_have_ended() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let store = Arc::new(MemoryReservations::new());
    let keys = keys_with(store.clone(), Some(&ring()));
    // The connection's thread is still waiting for a reservation when the drain timeout cuts
    // its socket: the listener has to wait for it, not leave it behind.
    let config = ServerConfig {
        drain_timeout: Duration::from_millis(200),
        reservation_wait: Duration::from_secs(2),
        ..Default::default()
    };
    let server = Server::start(&path, keys.clone(), config);
    let mut s = greeted(&path).await;
    use_up_reservations(&store, &keys);
    let mut batch = Vec::new();
    frame::encode_encrypt(&mut batch, 1, [(&b"m"[..], &b"x"[..])].into_iter());
    s.write_all(&batch).await.unwrap();
    // Time for the thread to read the frame and start waiting (nothing shows that it has; if
    // it has not yet, the test passes without testing anything, it cannot fail wrongly).
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop().await;
    // Each thread holds the listener's key source: only this test's handle may be left.
    assert_eq!(Arc::strong_count(&keys), 1, "a connection thread outlived its listener");
}

/// Debug lines of the connection threads, as a daemon's log would show them.
fn captured_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        struct To(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for To {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            // Error level elsewhere, so that the error-level span of the test is enabled as the
            // daemon's is at every level.
            .with_env_filter("error,imcrypt::hotpath::connection=debug")
            .with_ansi(false)
            .with_writer(move || To(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_threads_log_lines_name_the_listeners_cluster() {
    use tracing::Instrument;
    let logs = captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let keys = keys_with(Arc::new(MemoryReservations::new()), Some(&ring()));
    let config = ServerConfig { idle_timeout: Duration::from_millis(200), ..Default::default() };
    let listener = bind_unix(&UnixSocketConfig::new(&path)).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    // The span the daemon gives its hot-path task (src/daemon/start.rs).
    let span = tracing::error_span!("cluster", id = %"threads-span-test");
    let task = tokio::spawn(
        serve(listener, keys, config, async move {
            let _ = stopped.await;
        })
        .instrument(span),
    );
    let mut s = greeted(&path).await;
    // Silent: the connection's thread closes it as idle and logs that at debug level.
    assert_eq!(read_all_answers(&mut s).await, vec![]);
    let _ = stop.send(());
    timeout(LIMIT, task).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        text.lines().any(|l| l.contains("cluster{id=threads-span-test}")
            && l.contains("idle hot-path connection closed")),
        "no idle line under the listener's span in:\n{text}"
    );
}
