//! The hot path against the in-process baseline, from one run: ring AES-256-GCM sealing
//! 256-byte records in-process (the baseline), then over the Unix socket with one record per
//! request (sequential round trips: p50/p99 latency and records/s), pipelined single records,
//! and batches of 64 records per frame (sequential and pipelined), each with its ratio to the
//! baseline.
//!
//! Server and client run in this one process on separate Tokio runtimes (server: one worker
//! per core, as the daemon's runtime; client: current-thread) and share the machine's cores,
//! as a daemon and a router on one host would. Counter reservations go to a real sealed file in a temp dir.
//! Last, metrics on vs off: a second listener on the same key source counts into a metrics
//! registry (`serve_with`, as every daemon does), the first counts nothing (no registry at
//! all); pipelined 64-record batches run on the two in back-to-back pairs, and the median of
//! the pairs' ratios is printed with their range (target >= 0.97).
//! Then TCP with mutual TLS vs the Unix socket: a third listener serves both (`serve_all`, a
//! development PKI from `Lab::new`, the router holding node1's certificate); pipelined
//! 64-record batches alternate between them in pairs, as above (target >= 0.5).
//! And the hot path against its limits, measured in the same run: a bare Unix-socket ping-pong
//! of the single-record request's and answer's sizes between this process and a child (this
//! binary again, as an echo peer: two processes, as router and daemon), the round-trip limit
//! (target: single-record p50 <= 1.3x its p50); and in-process full-record sealing, the
//! throughput limit (target: 64-record frames, 16 in flight on two connections, >= 0.8x);
//! and, beside it, the transport's own limit: the same frames' bytes over two connections to
//! a child that answers with a SEALED answer's bytes and does nothing else (blocking I/O on
//! both ends). Each limit runs back to back with its hot-path figure in rounds (the order
//! rotating), and the median of the rounds' ratios is printed with their range: the
//! ping-pong's own time moves by an order of magnitude with the state of the machine's
//! virtual CPUs. Each run of a round also notes the share of the CPUs' busy time that the
//! host took (steal, from `/proc/stat`): the limits' ratios are the medians of the rounds
//! with under 5% stolen in every run, and the rounds go on (up to 24) until 8 such were had;
//! with fewer than 3, the bench prints the median of all rounds with the host's share and
//! judges neither limit target ("steal not measured" where `/proc/stat` cannot tell).
//! The throughput rounds also take the CPU time (`/proc/self/task/*/schedstat`) that the
//! server runtime's threads (the daemon) and the client runtime's thread (the router) spend
//! per record of the batched run, against in-process sealing's time per record; from them the
//! bench prints what the machine's CPUs, all busy, would carry at that cost per record: with
//! both ends on them, and with the daemon alone on them.
//! `cargo bench --bench hotpath`; `IMCRYPT_BENCH_MS` sets the time per figure (default 1000).

#[path = "common/mod.rs"]
mod common;
#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/steal.rs"]
mod steal;

use common::rate;
use std::collections::VecDeque;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpu::Cpu;
use steal::{STEAL_LIMIT, Steal};

use imcrypt::crypto::aead::{AeadImpl, AeadKey};
use imcrypt::crypto::counter::HARD_LIMIT;
use imcrypt::crypto::keyring::KeyRing;
use imcrypt::crypto::random::{NonceSource, new_key};
use imcrypt::crypto::record::RecordSealer;
use imcrypt::crypto::seal::{NodeKey, Purpose};
use imcrypt::hotpath::{
    CONNECTION_THREAD, Client, ClientConfig, Encrypted, KeySource, ServerConfig, TcpTls,
    UnixSocketConfig, bind_unix, serve, serve_all, serve_with,
};
use imcrypt::ids::{ClusterId, DomainId};
use imcrypt::metrics::Metrics;
use imcrypt::store::SealedFile;

const SIZE: usize = 256;
const BATCH: usize = 64;
/// Rounds of paired runs: metrics off/on and Unix socket/TCP; and the least number of rounds
/// of the limits (each limit with its hot-path figure).
const ROUNDS: usize = 8;
/// Rounds of the limits run at most while fewer than `ROUNDS` of them were quiet (under
/// `STEAL_LIMIT` stolen by the host in each of their runs), counted apart for the latency
/// rounds and the throughput rounds.
const MAX_ROUNDS: usize = 24;
/// The server runtime's threads.
const SERVER_THREADS: &str = "hotpath-server";
/// The daemon's threads, whose CPU time is the daemon's in the throughput rounds: its runtime's
/// and its connections' own.
const DAEMON_THREADS: &[&str] = &[SERVER_THREADS, CONNECTION_THREAD];

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn count(e: Encrypted) -> usize {
    match e {
        Encrypted::Sealed(b) => b.len(),
        Encrypted::Off => panic!("encryption is off"),
    }
}

/// Sequential requests of `n` records: latency percentiles and records/s.
async fn round_trips(
    c: &Client,
    budget: Duration,
    recs: &[(Vec<u8>, Vec<u8>)],
) -> (Vec<Duration>, f64) {
    let it = || recs.iter().map(|(m, p)| (&m[..], &p[..]));
    for _ in 0..2000 {
        count(c.encrypt_batch(it()).await.unwrap());
    }
    let mut lat = Vec::new();
    let mut n = 0;
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        n += count(c.encrypt_batch(it()).await.unwrap());
        lat.push(t.elapsed());
    }
    let r = n as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (lat, r)
}

/// `window` requests of `recs` in flight at all times: records/s.
async fn pipelined(
    c: &Client,
    budget: Duration,
    recs: &[(Vec<u8>, Vec<u8>)],
    window: usize,
) -> f64 {
    let it = || recs.iter().map(|(m, p)| (&m[..], &p[..]));
    let mut q = VecDeque::with_capacity(window);
    let mut n = 0;
    let mut start = Instant::now();
    let mut warm = true;
    loop {
        while q.len() < window {
            q.push_back(c.submit(it()).await.unwrap());
        }
        n += count(q.pop_front().unwrap().await.unwrap());
        if warm && start.elapsed() > budget / 5 {
            (warm, n, start) = (false, 0, Instant::now());
        }
        if !warm && start.elapsed() >= budget {
            break;
        }
    }
    let r = n as f64 / start.elapsed().as_secs_f64();
    for p in q {
        count(p.await.unwrap());
    }
    r
}

/// `ROUNDS` back-to-back pairs of pipelined 64-record runs on `a` and `b`, each round swapping
/// which goes first so that neither gains from going second: (rate of a, rate of b) per pair.
async fn paired(
    a: &Client,
    b: &Client,
    budget: Duration,
    batch: &[(Vec<u8>, Vec<u8>)],
) -> Vec<(f64, f64)> {
    let mut pairs = Vec::new();
    for round in 0..ROUNDS {
        pairs.push(if round % 2 == 0 {
            let ra = pipelined(a, budget, batch, 16).await;
            (ra, pipelined(b, budget, batch, 16).await)
        } else {
            let rb = pipelined(b, budget, batch, 16).await;
            (pipelined(a, budget, batch, 16).await, rb)
        });
    }
    pairs
}

/// b/a of each pair, sorted.
fn sorted_ratios(pairs: &[(f64, f64)]) -> Vec<f64> {
    let mut r: Vec<f64> = pairs.iter().map(|(a, b)| b / a).collect();
    r.sort_by(f64::total_cmp);
    r
}

/// The echo peer of [`PingPong`], in the child process: answers every `req`-byte message
/// with `ans` bytes until the parent hangs up; with blocking I/O, or `tokio`'s `UnixStream`
/// on a current-thread runtime (an endpoint written the ordinary way with Tokio).
fn echo(path: &str, req: usize, ans: usize, tokio: bool) {
    let (mut q, a) = (vec![0u8; req], vec![0xa5u8; ans]);
    let mut s = UnixStream::connect(path).expect("the parent listens");
    if !tokio {
        while s.read_exact(&mut q).is_ok() {
            if s.write_all(&a).is_err() {
                break;
            }
        }
        return;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        s.set_nonblocking(true).unwrap();
        let mut s = tokio::net::UnixStream::from_std(s).unwrap();
        while s.read_exact(&mut q).await.is_ok() {
            if s.write_all(&a).await.is_err() {
                break;
            }
        }
    });
}

/// A bare ping-pong: sequential `req`-byte messages answered with `ans` bytes by a child
/// process (this binary again, as the daemon's process would be) over a Unix socket. With
/// blocking I/O on both ends it is the round-trip limit of the machine; with Tokio on both
/// ends (the parent's side run as a task of the client's runtime, as the hot path's callers
/// are), the limit of any endpoint that waits for its socket through epoll, as Tokio does.
/// The child lives as long as this value, so runs can alternate with the hot path's.
struct PingPong {
    stream: Option<UnixStream>,
    tokio: Option<tokio::net::UnixStream>,
    child: std::process::Child,
    q: Vec<u8>,
    a: Vec<u8>,
}

impl PingPong {
    /// `tokio`: both ends on Tokio (call inside the client's runtime).
    fn start(dir: &Path, req: usize, ans: usize, tokio: bool) -> PingPong {
        let path = dir.join(if tokio { "ping-tokio.sock" } else { "ping.sock" });
        let listener = UnixListener::bind(&path).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .env(ECHO_ENV, format!("{},{req},{ans},{tokio}", path.display()))
            .spawn()
            .unwrap();
        let (stream, _) = listener.accept().unwrap();
        let (stream, tokio) = if tokio {
            stream.set_nonblocking(true).unwrap();
            (None, Some(tokio::net::UnixStream::from_std(stream).unwrap()))
        } else {
            (Some(stream), None)
        };
        PingPong { stream, tokio, child, q: vec![0x5au8; req], a: vec![0u8; ans] }
    }

    /// Round trips for `budget` after a warm-up: their times, sorted.
    async fn run(mut self, budget: Duration) -> (Self, Vec<Duration>) {
        let mut lat = Vec::new();
        if let Some(s) = &mut self.stream {
            let mut round = || {
                s.write_all(&self.q).unwrap();
                s.read_exact(&mut self.a).unwrap();
            };
            for _ in 0..2000 {
                round();
            }
            let start = Instant::now();
            while start.elapsed() < budget {
                let t = Instant::now();
                round();
                lat.push(t.elapsed());
            }
        } else {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let s = self.tokio.as_mut().expect("one of the two");
            for _ in 0..2000 {
                s.write_all(&self.q).await.unwrap();
                s.read_exact(&mut self.a).await.unwrap();
            }
            let start = Instant::now();
            while start.elapsed() < budget {
                let t = Instant::now();
                s.write_all(&self.q).await.unwrap();
                s.read_exact(&mut self.a).await.unwrap();
                lat.push(t.elapsed());
            }
        }
        lat.sort();
        (self, lat)
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        drop(self.stream.take());
        drop(self.tokio.take());
        let _ = self.child.wait();
    }
}

/// Set in the child of [`PingPong`]: `PATH,REQUEST_BYTES,ANSWER_BYTES,TOKIO`.
const ECHO_ENV: &str = "IMCRYPT_BENCH_ECHO";

/// Set in the child of [`Transport`]: `PATH,REQUEST_BYTES,ANSWER_BYTES,CONNECTIONS`.
const STREAM_ENV: &str = "IMCRYPT_BENCH_STREAM";

/// The peer of [`Transport`], in the child process: `conns` connections, each served by a
/// thread that reads what has arrived (up to 256 KiB) and answers each complete `req`-byte
/// frame in it with `ans` bytes, all of one read's answers in one write, as the hot-path
/// server writes what one read's frames produced; until the parent hangs up.
fn stream_echo(path: &str, req: usize, ans: usize, conns: usize) {
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let mut s = UnixStream::connect(path).expect("the parent listens");
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 << 10];
                let answers = vec![0xa5u8; ans * (buf.len() / req + 1)];
                // Bytes of a frame not yet complete: their content does not matter.
                let mut partial = 0;
                loop {
                    let n = match s.read(&mut buf[partial..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let frames = (partial + n) / req;
                    partial = (partial + n) % req;
                    if s.write_all(&answers[..frames * ans]).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// The transport's own throughput limit: the 2-connection batched run's bytes, with nothing
/// done to them. Per connection, `req`-byte frames (one 64-record ENCRYPT's size) go to a
/// child process (this binary again, as the daemon's process would be), `window` in flight,
/// and come back as `ans`-byte answers (one SEALED answer's size); blocking I/O on both ends,
/// a writer and a reader thread per connection here, a thread per connection in the child.
/// No socket-based service can move these records faster on this host. The child lives as
/// long as this value, so runs can alternate with the hot path's.
struct Transport {
    conns: Vec<UnixStream>,
    child: std::process::Child,
    req: usize,
    ans: usize,
}

impl Transport {
    fn start(dir: &Path, req: usize, ans: usize, conns: usize) -> Transport {
        let path = dir.join("stream.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .env(STREAM_ENV, format!("{},{req},{ans},{conns}", path.display()))
            .spawn()
            .unwrap();
        let conns = (0..conns).map(|_| listener.accept().unwrap().0).collect();
        Transport { conns, child, req, ans }
    }

    /// Frames answered per second over all connections, for `budget` after a warm-up of a
    /// fifth of it; every frame sent is answered before this returns.
    fn run(&self, budget: Duration, window: usize) -> f64 {
        let (req, ans) = (vec![0x5au8; self.req], self.ans);
        std::thread::scope(|scope| {
            let runs: Vec<_> = self
                .conns
                .iter()
                .map(|conn| {
                    let (mut wr, mut rd) = (conn.try_clone().unwrap(), conn.try_clone().unwrap());
                    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    // One token per frame in flight: the reader takes it before the answer.
                    let (sent, answered) = std::sync::mpsc::sync_channel::<()>(window - 1);
                    let halt = stop.clone();
                    let req = &req;
                    scope.spawn(move || {
                        while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                            sent.send(()).unwrap();
                            wr.write_all(req).unwrap();
                        }
                    });
                    scope.spawn(move || {
                        let mut a = vec![0u8; ans];
                        let (mut n, mut start, mut warm) = (0u64, Instant::now(), true);
                        let mut rate = None;
                        while answered.recv().is_ok() {
                            rd.read_exact(&mut a).unwrap();
                            n += 1;
                            if warm && start.elapsed() > budget / 5 {
                                (warm, n, start) = (false, 0, Instant::now());
                            }
                            if !warm && rate.is_none() && start.elapsed() >= budget {
                                rate = Some(n as f64 / start.elapsed().as_secs_f64());
                                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        rate.expect("the run lasted its budget")
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).sum()
        })
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.conns.clear();
        let _ = self.child.wait();
    }
}

/// A round's worst share stolen over its runs; `None` if any run's could not be measured.
type Stolen = Option<f64>;

/// Under `STEAL_LIMIT` stolen in each of the round's runs.
fn is_quiet(stolen: Stolen) -> bool {
    stolen.is_some_and(|s| s < STEAL_LIMIT)
}

/// How many of `rounds` were quiet.
fn quiet_count<T>(rounds: &[(T, Stolen)]) -> usize {
    rounds.iter().filter(|r| is_quiet(r.1)).count()
}

/// Whether steal was measured in every round (it is not where `/proc/stat` cannot tell).
fn measured<T>(rounds: &[(T, Stolen)]) -> bool {
    rounds.iter().all(|r| r.1.is_some())
}

/// The rounds a ratio of the limits is taken from.
struct Used<T> {
    rounds: Vec<T>,
    /// The words that say which rounds.
    note: String,
    /// Whether the ratio may be held against its target: steal was not measured (as before
    /// the filter), or enough rounds were quiet.
    judged: bool,
}

/// The quiet rounds, if at least 3 were; otherwise all of them, with the host's share, so
/// that nobody mistakes the figure for one of this machine (and it is not judged).
fn quiet<T: Copy>(rounds: &[(T, Stolen)]) -> Used<T> {
    let all = || rounds.iter().map(|r| r.0).collect();
    let limit = STEAL_LIMIT * 100.0;
    if !measured(rounds) {
        let note = format!("median of {} rounds (steal not measured)", rounds.len());
        return Used { rounds: all(), note, judged: true };
    }
    if quiet_count(rounds) >= 3 {
        let quiet: Vec<T> = rounds.iter().filter(|r| is_quiet(r.1)).map(|r| r.0).collect();
        let note = format!(
            "median of the {} rounds of {} with under {limit:.0}% of the CPUs' busy time stolen \
             by the host in each run",
            quiet.len(),
            rounds.len()
        );
        return Used { rounds: quiet, note, judged: true };
    }
    let (steal, _, _) = spread(rounds.iter().map(|r| r.1.unwrap_or(0.0) * 100.0).collect());
    let note = format!(
        "median of all {} rounds, only {} of them with under {limit:.0}% of the CPUs' busy time \
         stolen by the host in each run (median of the rounds' worst runs {steal:.0}%: the \
         host's load, not this machine's limit)",
        rounds.len(),
        quiet_count(rounds)
    );
    Used { rounds: all(), note, judged: false }
}

/// "met" or "NOT met"; or, for a ratio of too few quiet rounds, that the run cannot tell.
fn verdict(met: bool, judged: bool) -> &'static str {
    match (judged, met) {
        (false, _) => "not judged (too few quiet rounds)",
        (true, true) => "met",
        (true, false) => "NOT met",
    }
}

/// The median of `v` (the upper one of an even count) and its range.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    if let Ok(v) = std::env::var(STREAM_ENV) {
        let mut it = v.rsplitn(4, ',');
        let conns = it.next().unwrap().parse().unwrap();
        let ans = it.next().unwrap().parse().unwrap();
        let req = it.next().unwrap().parse().unwrap();
        return stream_echo(it.next().unwrap(), req, ans, conns);
    }
    if let Ok(v) = std::env::var(ECHO_ENV) {
        let mut it = v.rsplitn(4, ',');
        let tokio = it.next().unwrap() == "true";
        let ans = it.next().unwrap().parse().unwrap();
        let req = it.next().unwrap().parse().unwrap();
        return echo(it.next().unwrap(), req, ans, tokio);
    }
    let budget = Duration::from_millis(
        std::env::var("IMCRYPT_BENCH_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000),
    );
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let ring = KeyRing::new(DomainId::from_bytes([1; 16]), 0, new_key());
    let cluster = ClusterId::new("bench").unwrap();
    let pt = vec![0x5au8; SIZE];

    // Baseline: in-process, one core, ring.
    let key = AeadKey::new(AeadImpl::Ring, &[7; 32]);
    let mut buf = Vec::with_capacity(SIZE + 16);
    let baseline = rate(budget, || {
        buf.clear();
        buf.extend_from_slice(&pt);
        key.seal_in_place(&[0; 12], b"", &mut buf, 0);
        black_box(&buf);
    });
    let sealer = RecordSealer::new(&ring, &cluster, AeadImpl::Ring, 0);
    sealer.counter().commit_reservation(HARD_LIMIT);
    let mut nonces = NonceSource::from_os();
    let mut out = Vec::with_capacity(SIZE + 64);
    // The size of one sealed record, for the ping-pong's answer.
    let sealed_len = {
        let mut o = Vec::new();
        sealer.seal_into(&mut nonces, b"msg-0001", &pt, &mut o).unwrap();
        o.len()
    };
    let mut seal_record = || {
        out.clear();
        sealer.seal_into(&mut nonces, b"msg-0001", &pt, &mut out).unwrap();
        black_box(&out);
    };
    let record = rate(budget, &mut seal_record);

    // The service.
    let dir = tempfile::tempdir().unwrap();
    let rec = |i: usize| (format!("msg-{i:04}").into_bytes(), pt.clone());
    let one: Vec<_> = vec![rec(0)];
    let batch: Vec<_> = (0..BATCH).map(rec).collect();
    // The sizes of the ENCRYPT request for `recs` and of its SEALED answer (length prefix,
    // type, request id, count, then per record its length and the record), for the limits.
    let sizes = |recs: &[(Vec<u8>, Vec<u8>)]| {
        let mut request = Vec::new();
        imcrypt::hotpath::frame::encode_encrypt(
            &mut request,
            1,
            recs.iter().map(|(m, p)| (&m[..], &p[..])),
        );
        (request.len(), 4 + 1 + 8 + 4 + recs.len() * (4 + sealed_len))
    };
    // The round-trip limit, with the sizes of one record's request and answer.
    let (request_len, answer_len) = sizes(&one);
    let ping = PingPong::start(dir.path(), request_len, answer_len, false);
    let path = dir.path().join("hot.sock");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let node = NodeKey::from_bytes([2; 32]);
    let keys = KeySource::new(
        cluster.clone(),
        AeadImpl::Ring,
        SealedFile::new(dir.path().join("counters"), &node, Purpose::Counters),
    )
    .unwrap();
    keys.set_ring(Some(&ring)).unwrap();
    let keys = Arc::new(keys);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let _g = server_rt.enter();
        let l = bind_unix(&UnixSocketConfig::new(&path)).unwrap();
        server_rt.spawn(serve(l, keys.clone(), ServerConfig::default(), async move {
            let _ = stopped.await;
        }))
    };
    // The same service with metrics on.
    let metrics = Metrics::new();
    let counted_path = dir.path().join("hot-metrics.sock");
    let (stop_counted, stopped_counted) = tokio::sync::oneshot::channel::<()>();
    let counted_server = {
        let _g = server_rt.enter();
        let l = bind_unix(&UnixSocketConfig::new(&counted_path)).unwrap();
        let m = Some(metrics.hotpath());
        server_rt.spawn(serve_with(l, keys.clone(), ServerConfig::default(), m, async move {
            let _ = stopped_counted.await;
        }))
    };
    // The same service on a Unix socket and on TCP with mutual TLS, from one listener set.
    let pki = tempfile::tempdir().unwrap();
    imcrypt::demo::Lab::new(pki.path(), &["bench", "node1"]).unwrap();
    let pki_file = |n: &str| pki.path().join("pki").join(n);
    let both_path = dir.path().join("hot-both.sock");
    let (stop_both, stopped_both) = tokio::sync::oneshot::channel::<()>();
    let (both_server, tcp_addr) = {
        let _g = server_rt.enter();
        let l = bind_unix(&UnixSocketConfig::new(&both_path)).unwrap();
        let files = imcrypt::peer::tls::TlsFiles {
            cert: pki_file("bench.pem"),
            key: pki_file("bench.key"),
            ca: pki_file("ca.pem"),
        };
        let tls = imcrypt::hotpath::server_config(&files, vec!["node1".into()]).unwrap();
        let std_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_tcp.set_nonblocking(true).unwrap();
        let addr = std_tcp.local_addr().unwrap();
        let tcp = TcpTls { listener: tokio::net::TcpListener::from_std(std_tcp).unwrap(), tls };
        let task = server_rt.spawn(serve_all(
            l,
            Some(tcp),
            None,
            keys,
            ServerConfig::default(),
            None,
            async move {
                let _ = stopped_both.await;
            },
        ));
        (task, addr)
    };
    let tcp_endpoint: imcrypt::hotpath::Endpoint = format!(
        "tcp+tls://{tcp_addr}?cert={}&key={}&ca={}&server_name=bench",
        pki_file("node1.pem").display(),
        pki_file("node1.key").display(),
        pki_file("ca.pem").display()
    )
    .parse()
    .unwrap();
    let mut tcp_ratios = Vec::new();
    // The limits, in rounds: (blocking ping-pong p50, Tokio ping-pong p50, single-record
    // p50) and (in-process full-record sealing, 2-connection batched) records/s.
    let mut latency_rounds = Vec::new();
    let mut throughput_rounds = Vec::new();
    // The transport's limit, with the sizes of a 64-record request and its answer.
    let (batch_request, batch_answer) = sizes(&batch);
    let transport = Transport::start(dir.path(), batch_request, batch_answer, 2);

    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Metrics on/off ratios of the pairs, sorted.
    let mut metrics_ratios = Vec::new();
    let rows = client_rt.block_on(async {
        let c = Client::new(ClientConfig::new(&path));
        let (lat1, r1) = round_trips(&c, budget, &one).await;
        let p1 = pipelined(&c, budget, &one, 256).await;
        let (lat64, r64) = round_trips(&c, budget, &batch).await;
        let p64 = pipelined(&c, budget, &batch, 16).await;
        // Two connections (two clients), as a router with two delivery threads would have.
        let mut ts = Vec::new();
        for _ in 0..2 {
            let (path, batch) = (path.clone(), batch.clone());
            ts.push(tokio::spawn(async move {
                let c = Client::new(ClientConfig::new(&path));
                pipelined(&c, budget, &batch, 16).await
            }));
        }
        let mut p64x2 = 0.0;
        for t in ts {
            p64x2 += t.await.unwrap();
        }
        // Metrics off and on in pairs, each pair back to back so that drift (heat, the other
        // tenants of the machine) falls on both alike, and each round swapping which goes
        // first, so neither gains from going second. The ratio is the median of the pairs'.
        let on = Client::new(ClientConfig::new(&counted_path));
        let pairs = paired(&c, &on, budget / 2, &batch).await;
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (off_best, on_best) = (
            median(pairs.iter().map(|p| p.0).collect()),
            median(pairs.iter().map(|p| p.1).collect()),
        );
        metrics_ratios = sorted_ratios(&pairs);
        // TCP + TLS against the Unix socket of the same listener set, in pairs likewise.
        let unix = Client::new(ClientConfig::new(&both_path));
        let tcp = Client::new(ClientConfig::to(tcp_endpoint));
        let tcp_pairs = paired(&unix, &tcp, budget / 2, &batch).await;
        tcp_ratios = sorted_ratios(&tcp_pairs);
        let (unix_med, tcp_med) = (
            median(tcp_pairs.iter().map(|p| p.0).collect()),
            median(tcp_pairs.iter().map(|p| p.1).collect()),
        );
        // The limits against the hot path, in pairs likewise: the ping-pongs' runs and a run
        // of single-record round trips back to back (each round rotating which goes first),
        // then in-process sealing, the bare transport and 64-record frames on two connections
        // (rotating likewise). A virtual CPU that sleeps between round trips, or another tenant's
        // burst, then weighs on all figures of a round alike instead of on one figure of the
        // run. The round trips run in a task of the client's runtime, as a router's delivery
        // task would: as the runtime's `block_on` future itself they would cost one more
        // non-blocking poll of epoll per answer (Tokio 1.54's current-thread scheduler polls
        // the driver before it polls a woken `block_on` future).
        let single = Arc::new(Client::new(ClientConfig::new(&path)));
        let one = Arc::new(one.clone());
        let mut tokio_ping = Some(PingPong::start(dir.path(), request_len, answer_len, true));
        let mut ping = Some(ping);
        let two = [Client::new(ClientConfig::new(&path)), Client::new(ClientConfig::new(&path))];
        let mut round = 0;
        while round < ROUNDS
            || (round < MAX_ROUNDS
                && measured(&latency_rounds)
                && measured(&throughput_rounds)
                && (quiet_count(&latency_rounds) < ROUNDS
                    || quiet_count(&throughput_rounds) < ROUNDS))
        {
            let (mut blocking, mut tokio, mut hot) = (None, None, None);
            let mut stolen: Stolen = Some(0.0);
            for leg in 0..3 {
                let steal = Steal::start();
                match (round + leg) % 3 {
                    0 => {
                        let (p, lat) = ping.take().unwrap().run(budget / 2).await;
                        (ping, blocking) = (Some(p), Some(pct(&lat, 0.5)));
                    }
                    1 => {
                        let p = tokio_ping.take().unwrap();
                        let (p, lat) = tokio::spawn(p.run(budget / 2)).await.unwrap();
                        (tokio_ping, tokio) = (Some(p), Some(pct(&lat, 0.5)));
                    }
                    _ => {
                        let (c, one) = (single.clone(), one.clone());
                        let task =
                            tokio::spawn(async move { round_trips(&c, budget / 2, &one).await });
                        hot = Some(pct(&task.await.unwrap().0, 0.5));
                    }
                }
                stolen = stolen.zip(steal.share()).map(|(a, b)| a.max(b));
            }
            latency_rounds.push(((blocking.unwrap(), tokio.unwrap(), hot.unwrap()), stolen));
            let (mut local, mut bare, mut hot) = (None, None, None);
            // CPU time per record of the batched run: the daemon's and the router's.
            let mut hot_cpu = None;
            let mut stolen: Stolen = Some(0.0);
            for leg in 0..3 {
                let steal = Steal::start();
                match (round + leg) % 3 {
                    0 => local = Some(rate(budget / 2, &mut seal_record)),
                    1 => bare = Some(transport.run(budget / 2, 16) * BATCH as f64),
                    _ => {
                        let cpu = Cpu::start(DAEMON_THREADS);
                        let (x, y) = tokio::join!(
                            pipelined(&two[0], budget / 2, &batch, 16),
                            pipelined(&two[1], budget / 2, &batch, 16)
                        );
                        let r = x + y;
                        (hot, hot_cpu) = (Some(r), cpu.used().map(|u| (u.named / r, u.this / r)));
                    }
                }
                stolen = stolen.zip(steal.share()).map(|(a, b)| a.max(b));
            }
            let local = local.unwrap();
            // In-process sealing's cost per record is its time per record on its one thread
            // (1 / its rate), so that the ceilings below are in the ratio's own terms.
            let cpu = hot_cpu.map(|(daemon, router)| PerRecord {
                daemon: daemon * local,
                router: router * local,
            });
            let t = Throughput { local, bare: bare.unwrap(), hot: hot.unwrap(), cpu };
            throughput_rounds.push((t, stolen));
            round += 1;
        }
        vec![
            ("unix socket: 64/frame, 16 in flight", unix_med, None),
            ("tcp+mTLS:    64/frame, 16 in flight", tcp_med, None),
            ("metrics off: 64/frame, 16 in flight", off_best, None),
            ("metrics on:  64/frame, 16 in flight", on_best, None),
            ("one record per request", r1, Some(lat1)),
            ("  pipelined, 256 in flight", p1, None),
            ("64 records per frame", r64, Some(lat64)),
            ("  pipelined, 16 frames in flight", p64, None),
            ("  same, 2 connections", p64x2, None),
        ]
    });
    let _ = stop.send(());
    let _ = stop_counted.send(());
    let _ = stop_both.send(());
    server_rt.block_on(both_server).unwrap().unwrap();
    server_rt.block_on(server).unwrap().unwrap();
    server_rt.block_on(counted_server).unwrap().unwrap();
    let counted = metrics.encode_counters();
    assert!(
        counted
            .lines()
            .any(|l| l.starts_with("imcrypt_hotpath_records_total ") && !l.ends_with(" 0")),
        "the metrics-on listener counted its records:\n{counted}"
    );

    println!(
        "hot path, AES-256-GCM, {SIZE}-byte records, {cores} cores shared by client and server \
         ({} ms per figure)",
        budget.as_millis()
    );
    println!(
        "{:<36} {:>13} {:>9} {:>10} {:>10} {:>10}",
        "", "records/s", "vs base", "p50", "p99", "p99.9"
    );
    let row = |name: &str, r: f64, lat: Option<&Vec<Duration>>| {
        let (p50, p99, p999) = match lat {
            Some(l) => (
                format!("{:.1?}", pct(l, 0.5)),
                format!("{:.1?}", pct(l, 0.99)),
                format!("{:.1?}", pct(l, 0.999)),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!("{name:<36} {r:>13.0} {:>8.3}x {p50:>10} {p99:>10} {p999:>10}", r / baseline);
    };
    row("baseline: ring AEAD in-process", baseline, None);
    row("  full record in-process", record, None);
    for (name, r, lat) in &rows {
        row(name, *r, lat.as_ref());
    }
    let (off, on) = (rows[2].1, rows[3].1);
    let rows = &rows[4..];
    // The batched target: 64-record frames, pipelined, on the better of 1 and 2 connections.
    let batched = rows[3].1.max(rows[4].1) / baseline;
    let p99 = pct(rows[0].2.as_ref().unwrap(), 0.99);
    let ratios = metrics_ratios;
    let ratio = ratios[ratios.len() / 2];
    println!(
        "metrics on vs off, batched (64/frame, 16 in flight): {ratio:.3}x, median of {} pairs \
         (range {:.3}-{:.3}; medians of the rates {:.3}x); target >= 0.97: {}",
        ratios.len(),
        ratios[0],
        ratios[ratios.len() - 1],
        on / off,
        if ratio >= 0.97 { "met" } else { "NOT met" }
    );
    let tcp = tcp_ratios[tcp_ratios.len() / 2];
    println!(
        "tcp+mTLS vs unix socket, batched (64/frame, 16 in flight): {tcp:.3}x, median of {} \
         pairs (range {:.3}-{:.3}); target >= 0.5: {}",
        tcp_ratios.len(),
        tcp_ratios[0],
        tcp_ratios[tcp_ratios.len() - 1],
        if tcp >= 0.5 { "met" } else { "NOT met" }
    );
    println!(
        "targets: batched >= 0.5x baseline: {} ({batched:.3}x); single-record p99 < 100 us: {} ({p99:.1?})",
        if batched >= 0.5 { "met" } else { "NOT met" },
        if p99 < Duration::from_micros(100) { "met" } else { "NOT met" },
    );
    // Against the limits of this machine, in rounds (above), the quiet ones if there are
    // enough of them.
    let (latency_used, throughput_used) = (quiet(&latency_rounds), quiet(&throughput_rounds));
    let ratio = |f: fn(&(Duration, Duration, Duration)) -> (Duration, Duration)| {
        spread(
            latency_used
                .rounds
                .iter()
                .map(|r| {
                    let (limit, hot) = f(r);
                    hot.as_secs_f64() / limit.as_secs_f64()
                })
                .collect(),
        )
    };
    let (latency, lat_min, lat_max) = ratio(|r| (r.0, r.2));
    let (floor, floor_min, floor_max) = ratio(|r| (r.1, r.2));
    let (tokio_pp, tokio_min, tokio_max) = ratio(|r| (r.0, r.1));
    let per_round =
        |f: fn(&Throughput) -> f64| spread(throughput_used.rounds.iter().map(f).collect());
    let (two, two_min, two_max) = per_round(|r| r.hot / r.local);
    let (wire, wire_min, wire_max) = per_round(|r| r.bare / r.local);
    let (over, over_min, over_max) = per_round(|r| r.hot / r.bare);
    let p50s = |f: fn(&(Duration, Duration, Duration)) -> Duration| {
        let mut v: Vec<Duration> = latency_used.rounds.iter().map(f).collect();
        v.sort();
        format!("{:.1?}-{:.1?}", v[0], v[v.len() - 1])
    };
    println!(
        "limits, p50 per round used: bare ping-pong of {} B / {answer_len} B between two \
         processes, blocking I/O {}, Tokio on both ends {}; single-record round trip {}",
        request_len,
        p50s(|r| r.0),
        p50s(|r| r.1),
        p50s(|r| r.2),
    );
    println!(
        "limits, {}; ranges in parentheses: single-record p50 = {latency:.2}x \
         ({lat_min:.2}-{lat_max:.2}) of the blocking ping-pong's, target <= 1.3: {}; \
         {floor:.2}x ({floor_min:.2}-{floor_max:.2}) of the Tokio ping-pong's, which is itself \
         {tokio_pp:.2}x ({tokio_min:.2}-{tokio_max:.2}) of the blocking one's",
        latency_used.note,
        verdict(latency <= 1.3, latency_used.judged),
    );
    println!(
        "limits, {}; ranges in parentheses: batched (64/frame, 16 in flight, 2 \
         connections) against in-process full-record sealing: {two:.3}x ({two_min:.3}-\
         {two_max:.3}), target >= 0.8: {}",
        throughput_used.note,
        verdict(two >= 0.8, throughput_used.judged),
    );
    // The ratio's two sides, so that a change of the ratio can be told apart: the hot path
    // faster, or in-process sealing slower.
    let (local, local_min, local_max) = per_round(|r| r.local);
    let (hot, hot_min, hot_max) = per_round(|r| r.hot);
    println!(
        "limits, the same rounds, medians of the rounds' rates (ranges in parentheses): \
         in-process full-record sealing {local:.0} ({local_min:.0}-{local_max:.0}) records/s, \
         the batched run {hot:.0} ({hot_min:.0}-{hot_max:.0}) records/s",
    );
    println!(
        "limits, {}; ranges in parentheses: the same bytes over the same 2 connections with \
         nothing done to them ({batch_request} B frames, 16 in flight, blocking I/O on both \
         ends) move {wire:.3}x ({wire_min:.3}-{wire_max:.3}) of in-process sealing's \
         records/s; the hot path reaches {over:.3}x ({over_min:.3}-{over_max:.3}) of that",
        throughput_used.note,
    );
    // What one record costs each end in CPU time, against what sealing it in-process costs.
    let cpu: Vec<PerRecord> = throughput_used.rounds.iter().filter_map(|r| r.cpu).collect();
    if cpu.len() < throughput_used.rounds.len() {
        println!(
            "limits: CPU time per record not measured (the threads' /proc/self/task/*/schedstat \
             could not be read)"
        );
    } else {
        let f = |f: fn(&PerRecord) -> f64| spread(cpu.iter().map(f).collect());
        let (daemon, daemon_min, daemon_max) = f(|c| c.daemon);
        let (router, router_min, router_max) = f(|c| c.router);
        let (both, both_min, both_max) = f(|c| c.daemon + c.router);
        let n = cores as f64;
        println!(
            "limits, the same rounds, medians of the rounds' figures (which need not add up); ranges in \
             parentheses: CPU time per record of the batched run against in-process sealing's \
             time per record: the daemon's threads {daemon:.2}x ({daemon_min:.2}-\
             {daemon_max:.2}), the router's thread {router:.2}x ({router_min:.2}-\
             {router_max:.2}), together {both:.2}x ({both_min:.2}-{both_max:.2}); at that cost \
             per record, {cores} CPUs busy all the time would carry {:.3}x of in-process \
             sealing's rate with both ends on them (the batched run reached {two:.3}x), and \
             {:.3}x with the daemon alone on them",
            n / both,
            n / daemon,
        );
    }
}

/// One throughput round's figures (records/s).
#[derive(Clone, Copy)]
struct Throughput {
    /// In-process full-record sealing, on this thread.
    local: f64,
    /// The bare transport.
    bare: f64,
    /// 64-record frames, 16 in flight, on two connections.
    hot: f64,
    /// `None` where `/proc` cannot tell.
    cpu: Option<PerRecord>,
}

/// CPU time per record of the batched run, as a multiple of in-process sealing's time per
/// record: the daemon's (the server runtime's threads) and the router's (the client
/// runtime's thread). Its window is the CPUs' average use over the whole batched run, whose
/// rate leaves out the warm-up: the warm-up runs at about the same rate, and the filling and
/// draining of the pipeline (under a millisecond each, at lower load) can only make both
/// figures a little low, by well under 1%.
#[derive(Clone, Copy)]
struct PerRecord {
    daemon: f64,
    router: f64,
}
