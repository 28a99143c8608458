//! The attacks of issue 17 on the listeners, against real daemons (`imcrypt serve` processes
//! under a descriptor limit of 1024, as a default system gives) on 127.0.0.1: thousands of idle
//! connections to the admin port, idle connections to the peer port beyond the old cap of 256,
//! 1,100 idle hot-path connections and 200 more each holding an incomplete 4 MiB frame. During
//! each, what an operator needs still works: `imcrypt status`, a rotation on the master that
//! reaches the slave (a state write on both), a seal through the slave's hot path; and the
//! daemons stay up. docs/operations.md, "Limits", describes the caps these exercise.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imcrypt::demo::cid;
use imcrypt::hotpath::{Client, ClientConfig, Encrypted, frame};
use support::process::{Serve, status_json};
use support::*;

/// The descriptor limit (soft and hard) the daemons run under.
const NOFILE: u64 = 1024;
/// The hot path's RSS bound under 200 incomplete 4 MiB frames: the daemon's own ~30 MiB, the
/// 64 MiB byte budget (`hotpath.limits.max_buffered`) and 64 KiB-odd per connection, with room
/// to spare. Without the budget the frames alone took 800 MiB.
const RSS_BOUND_MIB: u64 = 160;

/// A master a and its slave b (hot path on), both `imcrypt serve` processes under `NOFILE`.
struct Net {
    _dir: tempfile::TempDir,
    lab: Lab,
    a: Serve,
    b: Serve,
}

impl Net {
    async fn start() -> Net {
        raise_own_descriptor_limit();
        let (dir, mut lab) = mesh(&["a", "b"]);
        lab.spec_mut("b").hotpath = true;
        let a = serve(&lab, "a");
        let b = serve(&lab, "b");
        let pw = dir.path().join("pw.txt");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        let cfg = s(a.config());
        let o = imcrypt(
            &["encryption", "enable", "--remote", "--password-file", s(&pw), "-c", cfg],
            "",
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let net = Net { _dir: dir, lab, a, b };
        net.wait_primary(1).await;
        net
    }

    fn config(&self, id: &str) -> PathBuf {
        self.lab.dir().join(format!("{id}.toml"))
    }

    /// The port of `[section] listen` in `id`'s config file.
    fn port(&self, id: &str, section: &str) -> u16 {
        let text = std::fs::read_to_string(self.config(id)).unwrap();
        let v: toml::Table = toml::from_str(&text).unwrap();
        let listen = v[section]["listen"].as_str().unwrap();
        listen.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Waits until b, the slave, holds key version `v` as primary.
    async fn wait_primary(&self, v: u32) {
        let cfg = self.config("b");
        wait_for(&format!("b to hold key version {v}"), WAIT, async || {
            let cfg = cfg.clone();
            let s = tokio::task::spawn_blocking(move || status_json(&cfg)).await.unwrap()?;
            (s["role"] == "slave" && s["primary_version"] == v).then_some(())
        })
        .await;
    }

    /// What the operator checks during an attack: `imcrypt status` on both, a rotation to
    /// `version` on the master that reaches the slave, a seal on the slave under it; both
    /// daemons still running.
    async fn still_served(&mut self, version: u32) {
        for id in ["a", "b"] {
            let o = imcrypt(&["status", "-c", s(&self.config(id))], "").await;
            assert_eq!(o.code, 0, "imcrypt status on {id} during the attack: {}", o.stderr);
        }
        let o = imcrypt(&["key", "rotate", "-c", s(&self.config("a"))], "").await;
        assert_eq!(o.code, 0, "rotation during the attack: {}", o.stderr);
        assert!(
            o.stdout.contains(&format!("new key version {version} is primary")),
            "{}",
            o.stdout
        );
        self.wait_primary(version).await;
        let client = Client::new(ClientConfig::new(self.lab.hotpath_socket("b")));
        let sealed = wait_for("a seal under the new key on b", WAIT, async || {
            match client.encrypt(b"row", b"during the attack").await {
                Ok(Encrypted::Sealed(b)) => Some(b.to_vecs().remove(0)),
                _ => None,
            }
            .filter(|r| {
                imcrypt::crypto::record::RecordHeader::parse(r)
                    .is_ok_and(|h| h.key_version.get() == version)
            })
        })
        .await;
        assert!(!sealed.is_empty());
        self.a.assert_running();
        self.b.assert_running();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn serve(lab: &Lab, id: &str) -> Serve {
    let config = lab.write_config(&cid(id)).unwrap();
    let log = lab.dir().join(format!("{id}.log"));
    tokio::task::block_in_place(|| Serve::start(&config, &log, Some(NOFILE)))
}

/// The floods below hold thousands of sockets in this process.
fn raise_own_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: l.maximum, maximum: l.maximum });
}

/// `n` idle TCP connections to 127.0.0.1:`port`: connected, never a byte sent.
fn idle_tcp(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_admin_connections_stop_neither_status_nor_state_writes() {
    bounded(async {
        let mut net = Net::start().await;
        let port = net.port("a", "admin");
        let flood = tokio::task::block_in_place(|| idle_tcp(port, 3000));
        assert!(flood.len() >= 2900, "only {} connections made", flood.len());
        let fds = net.a.open_descriptors();
        assert!(fds < 300, "a holds {fds} descriptors under the flood (admin cap 64)");
        net.still_served(2).await;
        // A second wave while the first is still held.
        let more = tokio::task::block_in_place(|| idle_tcp(port, 2000));
        net.still_served(3).await;
        assert!(net.a.open_descriptors() < 300);
        drop((flood, more));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_old_peer_cap_do_not_block_replication() {
    bounded(async {
        let mut net = Net::start().await;
        let port = net.port("b", "peer");
        let flood = tokio::task::block_in_place(|| idle_tcp(port, 600));
        assert!(flood.len() >= 590);
        // a restarts: its link to b needs a new TLS connection through the flood.
        let log = net.lab.dir().join("a-restarted.log");
        tokio::task::block_in_place(|| net.a.restart(&log));
        net.still_served(2).await;
        // Refusals are summarised, never logged one by one.
        let warns = net.b.log_text().lines().filter(|l| l.contains("WARN")).count();
        assert!(warns <= 3, "{warns} WARN lines for 600 refused connections: {}", net.b.log_text());
        drop(flood);
    })
    .await;
}

/// HELLO, then the first 4 MiB - 1 of a 4 MiB ENCRYPT frame, on a connection of its own.
fn incomplete_frame(path: &Path, body: &'static [u8]) -> std::thread::JoinHandle<UnixStream> {
    let mut c = UnixStream::connect(path).unwrap();
    let mut hello = Vec::new();
    frame::encode_hello(&mut hello, 1, 1);
    c.write_all(&hello).unwrap();
    // The WELCOME: the daemon took the HELLO, the connection holds its slot.
    let mut prefix = [0u8; 4];
    std::io::Read::read_exact(&mut c, &mut prefix).unwrap();
    let mut welcome = vec![0; u32::from_be_bytes(prefix) as usize];
    std::io::Read::read_exact(&mut c, &mut welcome).unwrap();
    std::thread::spawn(move || {
        let mut w = c.try_clone().unwrap();
        let _ = w.write_all(&(body.len() as u32).to_be_bytes());
        // Blocks once the daemon stops reading: the rest stays in this socket.
        let _ = w.write_all(&body[..body.len() - 1]);
        c
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_incomplete_4_mib_frames_leave_the_hot_path_small_and_sealing() {
    bounded(async {
        let mut net = Net::start().await;
        let socket = net.lab.hotpath_socket("b");
        let idle: Vec<UnixStream> = tokio::task::block_in_place(|| {
            (0..1100).filter_map(|_| UnixStream::connect(&socket).ok()).collect()
        });
        assert_eq!(idle.len(), 1100);
        let before = net.b.memory_kib("VmRSS");
        static BODY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
            let mut b = vec![0u8; 4 << 20];
            b[0] = 0x02; // ENCRYPT
            b
        });
        let writers: Vec<_> = tokio::task::block_in_place(|| {
            (0..200).map(|_| incomplete_frame(&socket, &BODY[..])).collect()
        });
        // Let the daemon take what it will of the 800 MiB on offer.
        tokio::time::sleep(Duration::from_secs(2)).await;
        net.still_served(2).await;
        let (rss, peak) = (net.b.memory_kib("VmRSS"), net.b.memory_kib("VmHWM"));
        eprintln!(
            "b: RSS {} MiB before the frames, {} MiB with them (peak {} MiB)",
            before / 1024,
            rss / 1024,
            peak / 1024
        );
        assert!(peak / 1024 < RSS_BOUND_MIB, "b's RSS peaked at {} MiB", peak / 1024);
        drop(idle);
        drop(net);
        for w in writers {
            let _ = w.join();
        }
    })
    .await;
}
