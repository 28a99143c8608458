//! Start-up time and idle memory of `imcrypt serve` as a real process: time from spawn until
//! the admin API answers `GET /v1/status` (TLS 1.3 and token, as the CLI asks it), and resident memory (VmRSS) after it has idled
//! with two peers for a while. The baseline is `imcrypt --version` (process start alone),
//! measured in the same run. Targets: start-up under 200 ms, idle RSS under 32 MiB.
//! `cargo bench --bench daemon` (builds the release binary first).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imcrypt::admin::client::{Client, Target};
use imcrypt::demo::ReservedPort;

/// True once the admin API of cluster a answers `GET /v1/status` (TLS, with its token).
fn status_ok(rt: &tokio::runtime::Runtime, port: u16, dir: &Path) -> bool {
    let Ok(token) = std::fs::read_to_string(dir.join("state/a/admin.token")) else {
        return false;
    };
    let target = Target {
        addr: format!("127.0.0.1:{port}"),
        server_name: "a".into(),
        ca: dir.join("pki/ca.pem"),
        token: token.trim().to_owned().into(),
    };
    let Ok(client) = Client::new(target) else { return false };
    rt.block_on(client.send(hyper::Method::GET, "/v1/status", None)).is_ok()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/imcrypt");
    let built = Command::new("cargo").args(["build", "--release", "--quiet"]).status().unwrap();
    assert!(built.success());
    let dir = tempfile::tempdir().unwrap();
    let ids = ["a", "b", "c"];
    let mut st = Command::new(&bin)
        .args(["pki", "init", "--out"])
        .arg(dir.path().join("pki"))
        .args(["--clusters", "a,b,c"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    // Reserved until the end: a is restarted on the same ports ten times.
    let reserved: Vec<[ReservedPort; 2]> =
        ids.iter().map(|_| [ReservedPort::new().unwrap(), ReservedPort::new().unwrap()]).collect();
    let ports: Vec<(u16, u16)> = reserved.iter().map(|[p, a]| (p.port(), a.port())).collect();
    for (i, id) in ids.iter().enumerate() {
        let mut t = format!(
            "cluster_id = \"{id}\"\nstate_dir = \"state/{id}\"\n[peer]\nlisten = \"127.0.0.1:{}\"\n\
             cert = \"pki/{id}.pem\"\nkey = \"pki/{id}.key\"\nca = \"pki/ca.pem\"\nhello_interval = \"1s\"\n\
             [admin]\nlisten = \"127.0.0.1:{}\"\n[hotpath.socket]\npath = \"state/{id}/hp.sock\"\n",
            ports[i].0, ports[i].1
        );
        for (j, other) in ids.iter().enumerate() {
            if j != i {
                t.push_str(&format!(
                    "[[peers]]\nid = \"{other}\"\naddress = \"127.0.0.1:{}\"\n",
                    ports[j].0
                ));
            }
        }
        t.push_str(&format!("[[nodes]]\nid = \"{id}1\"\narchiver = \"postgresql\"\n"));
        std::fs::write(dir.path().join(format!("{id}.toml")), t).unwrap();
    }

    // Baseline: the process alone.
    let mut base = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        st = Command::new(&bin).arg("--version").stdout(Stdio::null()).status().unwrap();
        assert!(st.success());
        base.push(t.elapsed());
    }
    base.sort();

    // Start-up: b and c run; a is started 10 times (first start creates its node key).
    let mut others: Vec<_> = ids[1..]
        .iter()
        .map(|id| {
            Command::new(&bin)
                .args(["serve", "--config"])
                .arg(dir.path().join(format!("{id}.toml")))
                .env("RUST_LOG", "warn")
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut startup = Vec::new();
    let mut rss = 0;
    for round in 0..10 {
        let t = Instant::now();
        let mut a = Command::new(&bin)
            .args(["serve", "--config"])
            .arg(dir.path().join("a.toml"))
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while !status_ok(&rt, ports[0].1, dir.path()) {
            assert!(t.elapsed() < Duration::from_secs(10), "a did not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        startup.push(t.elapsed());
        if round == 9 {
            std::thread::sleep(Duration::from_secs(5));
            rss = rss_kib(a.id());
        }
        Command::new("kill").arg("-TERM").arg(a.id().to_string()).status().unwrap();
        a.wait().unwrap();
    }
    for o in &mut others {
        let _ = o.kill();
        let _ = o.wait();
    }
    startup.sort();
    let med = |v: &[Duration]| v[v.len() / 2];
    println!("imcrypt serve, 2 peers, hot path on, 10 starts");
    println!("  process start alone (--version): median {:.1} ms", med(&base).as_secs_f64() * 1e3);
    println!(
        "  start-up until status answers:   median {:.1} ms, max {:.1} ms ({:.1}x the bare process)",
        med(&startup).as_secs_f64() * 1e3,
        startup[startup.len() - 1].as_secs_f64() * 1e3,
        med(&startup).as_secs_f64() / med(&base).as_secs_f64()
    );
    println!("  idle RSS after 5 s with 2 peers: {:.1} MiB (target < 32 MiB)", rss as f64 / 1024.0);
}
