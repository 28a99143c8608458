//! `imcrypt serve` as real processes: the shipped demo configs (hot path included), status
//! through the admin API, clean shutdown on SIGTERM, state kept across restarts, and refusals
//! with clear messages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use imcrypt::demo::ReservedPort;
use support::process::status_json;

const BIN: &str = env!("CARGO_BIN_EXE_imcrypt");

/// Copies config/demo/NAME.toml into `dir`, moving its ports to ports reserved for it: each
/// element holds its cluster's two until dropped, so keep them while its daemon may (re)start.
fn demo_configs(dir: &Path) -> Vec<(String, PathBuf, [ReservedPort; 2])> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo");
    let port = || ReservedPort::new().expect("a port on 127.0.0.1");
    let ports: Vec<[ReservedPort; 2]> = (0..3).map(|_| [port(), port()]).collect();
    let renumber = |mut text: String| {
        for (i, [p, a]) in ports.iter().enumerate() {
            let (p, a) = (p.port(), a.port());
            text = text.replace(&format!("127.0.0.1:710{}", i + 1), &format!("127.0.0.1:{p}"));
            text = text.replace(&format!("127.0.0.1:720{}", i + 1), &format!("127.0.0.1:{a}"));
        }
        text.replace("pbkdf2_iterations = 600000", "pbkdf2_iterations = 100000")
    };
    let paths: Vec<(String, PathBuf)> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let text = renumber(std::fs::read_to_string(src.join(format!("{id}.toml"))).unwrap());
            let path = dir.join(format!("{id}.toml"));
            std::fs::write(&path, text).unwrap();
            (id.to_string(), path)
        })
        .collect();
    paths.into_iter().zip(ports).map(|((id, path), ports)| (id, path, ports)).collect()
}

/// The demo's PKI (`imcrypt pki init`) and configs in `dir`, as [`demo_configs`] gives them.
fn demo_with_pki(dir: &Path) -> Vec<(String, PathBuf, [ReservedPort; 2])> {
    let pki = dir.join("pki");
    assert_eq!(run(&["pki", "init", "--out", pki.to_str().unwrap(), "--clusters", "a,b,c"]).0, 0);
    demo_configs(dir)
}

fn wait_status(
    config: &Path,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        if let Some(s) = status_json(config)
            && ok(&s)
        {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Daemon(Child, PathBuf);

impl Daemon {
    fn start(config: &Path, log: PathBuf) -> Self {
        Self::start_under(&[], config, log)
    }

    /// As [`Daemon::start`], through `wrapper`: a command line that runs the rest in its own
    /// process (as `prlimit` and `setpriv` do, so the daemon's pid is the child's).
    fn start_under(wrapper: &[&str], config: &Path, log: PathBuf) -> Self {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon(child, log)
    }

    fn term(mut self) -> (bool, String) {
        Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status().unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                break st;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.success(), std::fs::read_to_string(&self.1).unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn demo_configs_serve_report_status_and_stop_cleanly_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    let (code, _) = run(&["pki", "init", "--out", pki.to_str().unwrap(), "--clusters", "a,b,c"]);
    assert_eq!(code, 0);
    let (code, err) = run(&["pki", "init", "--out", pki.to_str().unwrap(), "--clusters", "a"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");

    let cfg = demo_configs(d.path());
    let a = Daemon::start(&cfg[0].1, d.path().join("a.log"));
    let b = Daemon::start(&cfg[1].1, d.path().join("b.log"));
    let s = wait_status(&cfg[0].1, "a connected to b", |s| {
        s["peers"].as_array().is_some_and(|p| {
            p.iter().any(|p| {
                p["id"] == "b"
                    && p["link"]["connected"] == true
                    && p["relation"] != "no hello received yet"
            })
        })
    });
    assert_eq!(s["cluster"], "a");
    assert_eq!(s["role"], "off");
    assert_eq!(s["eligible"], true);
    // The router's hot path listens where the demo config says (docs/archive.md runs
    // `imcrypt archive --hotpath config/demo/state/a/hotpath.sock` against it).
    let hotpath = d.path().join("state/a/hotpath.sock");
    std::os::unix::net::UnixStream::connect(&hotpath)
        .unwrap_or_else(|e| panic!("no hot path at {}: {e}", hotpath.display()));
    let (ok, log) = a.term();
    assert!(ok, "exit status after SIGTERM; log:\n{log}");
    assert!(log.contains("SIGTERM received") && log.contains("imcrypt daemon stopping"), "{log}");
    assert!(!log.contains('\x1b'), "a log written to a file carries no colour codes:\n{log}");
    assert!(b.term().0);

    // Restarted, a finds its node key and state again.
    let state = d.path().join("state/a/state.sealed");
    let before = std::fs::read(&state).unwrap();
    let a = Daemon::start(&cfg[0].1, d.path().join("a2.log"));
    wait_status(&cfg[0].1, "a back", |s| s["cluster"] == "a");
    let (ok, log) = a.term();
    assert!(ok && !log.contains("created node key"), "{log}");

    // A damaged state file stops the start with a clear error, and is left as it is.
    let mut bad = before.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    std::fs::write(&state, &bad).unwrap();
    let (code, err) = run(&["serve", "--config", cfg[0].1.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot be authenticated"), "{err}");
    assert_eq!(std::fs::read(&state).unwrap(), bad);
    std::fs::write(&state, &before).unwrap();

    // A node key readable by others is refused with the fix.
    use std::os::unix::fs::PermissionsExt;
    let key = d.path().join("state/a/node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = run(&["serve", "--config", cfg[0].1.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("chmod 600"), "{err}");

    // A state whose node key is gone is not given a new key: the start names what to restore.
    std::fs::remove_file(&key).unwrap();
    let (code, err) = run(&["serve", "--config", cfg[0].1.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("node key") && err.contains("is missing"), "{err}");
    assert!(!key.exists(), "no new node key was made");

    // A wrong key in the config is named with its line.
    let text =
        std::fs::read_to_string(&cfg[1].1).unwrap().replace("hello_interval", "hello_intervall");
    std::fs::write(&cfg[1].1, text).unwrap();
    let (code, err) = run(&["serve", "--config", cfg[1].1.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(err.contains("hello_intervall") && err.contains("line 16"), "{err}");
}

/// The daemon's log as a terminal shows it: run under `script` (util-linux) for a pty, stopped
/// by SIGTERM after a moment.
fn log_on_a_terminal(config: &Path, no_color: Option<&str>) -> String {
    let cmd = format!("timeout -s TERM 2 {BIN} serve --config {}", config.display());
    let mut c = Command::new("script");
    c.args(["-qec", &cmd, "/dev/null"]).env("RUST_LOG", "info").env_remove("NO_COLOR");
    if let Some(v) = no_color {
        c.env("NO_COLOR", v);
    }
    let out = c.stdin(Stdio::null()).output().expect("script (util-linux) runs a pty");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn logs_are_coloured_on_a_terminal_unless_no_color_is_set() {
    let d = tempfile::tempdir().unwrap();
    let cfg = demo_with_pki(d.path());
    let coloured = log_on_a_terminal(&cfg[0].1, None);
    assert!(coloured.contains("imcrypt daemon") && coloured.contains("\x1b["), "{coloured}");
    let plain = log_on_a_terminal(&cfg[0].1, Some("1"));
    assert!(plain.contains("imcrypt daemon") && !plain.contains('\x1b'), "{plain}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// keys/README.md, "For production: your organisation's CA", followed to the letter: a CA of
/// the organisation's own, a key and a signing request per cluster, signed with the documented
/// extensions; two daemons on the result connect over mutual TLS.
#[test]
fn clusters_run_on_certificates_from_an_organisations_ca() {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    openssl(
        &pki,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "org-ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3650",
            "-subj",
            "/CN=Example Org CA",
        ],
    );
    for id in ["a", "b"] {
        let (key, csr, pem) = (format!("{id}.key"), format!("{id}.csr"), format!("{id}.pem"));
        openssl(
            &pki,
            &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &key],
        );
        openssl(
            &pki,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={id}"),
                "-addext",
                &format!("subjectAltName=DNS:{id}"),
                "-addext",
                "extendedKeyUsage=serverAuth,clientAuth",
                "-out",
                &csr,
            ],
        );
        openssl(
            &pki,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "org-ca.key",
                "-days",
                "365",
                "-copy_extensions",
                "copy",
                "-out",
                &pem,
            ],
        );
        openssl(&pki, &["verify", "-CAfile", "ca.pem", &pem]);
    }
    let cfg = demo_configs(d.path());
    let a = Daemon::start(&cfg[0].1, d.path().join("a.log"));
    let b = Daemon::start(&cfg[1].1, d.path().join("b.log"));
    wait_status(&cfg[0].1, "a connected to b over the organisation's PKI", |s| {
        s["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["id"] == "b" && p["link"]["connected"] == true))
    });
    assert!(a.term().0 && b.term().0);
}

/// What an operator checks of a running daemon's secrets in memory (docs/operations.md,
/// "Secrets in memory"): no core dumps (core size limit 0, soft and hard); key pages locked
/// (VmLck) where the daemon may lock, and where it may not, the warning in its log.
#[test]
fn the_daemon_makes_no_core_dumps_and_locks_its_key_pages_or_says_why_not() {
    let d = tempfile::tempdir().unwrap();
    let cfg = demo_with_pki(d.path());
    let config = &cfg[0].1;
    let proc_field = |pid: u32, file: &str, prefix: &str| -> String {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
        text.lines().find(|l| l.starts_with(prefix)).unwrap_or_default().to_owned()
    };
    let locked_kb = |pid: u32| -> u64 {
        let line = proc_field(pid, "status", "VmLck:");
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmLck in status")
    };
    const WARNING: &str = "cannot lock key pages in memory";

    // As started here: whatever the core limit was, it is 0 now.
    let a = Daemon::start(config, d.path().join("a.log"));
    wait_status(config, "a up", |s| s["cluster"] == "a");
    let pid = a.0.id();
    let core = proc_field(pid, "limits", "Max core file size");
    assert_eq!(core.split_whitespace().collect::<Vec<_>>()[4..6], ["0", "0"], "{core}");
    let may_lock = proc_field(pid, "status", "CapEff:")
        .split_whitespace()
        .nth(1)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0) // CAP_IPC_LOCK
        || !proc_field(pid, "limits", "Max locked memory").contains(" 0 ");
    let vm_lck = locked_kb(pid);
    let (ok, log) = a.term();
    assert!(ok, "{log}");
    if may_lock {
        assert!(vm_lck > 0, "VmLck {vm_lck} kB; log:\n{log}");
        assert!(!log.contains(WARNING), "{log}");
    } else {
        assert!(log.contains(WARNING), "{log}");
    }

    // Without CAP_IPC_LOCK and with no RLIMIT_MEMLOCK room (where this test runs as root, it
    // can take both away): nothing locked, one warning that says what to raise, and it runs.
    if !std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("setpriv (util-linux) is missing: the case without mlock is not run");
        return;
    }
    let a = Daemon::start_under(
        &[
            "prlimit",
            "--memlock=0:0",
            "setpriv",
            "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock",
            "--",
        ],
        config,
        d.path().join("a-nolock.log"),
    );
    wait_status(config, "a up without mlock", |s| s["cluster"] == "a");
    let vm_lck = locked_kb(a.0.id());
    let (ok, log) = a.term();
    assert!(ok, "{log}");
    assert_eq!(vm_lck, 0, "{log}");
    assert_eq!(log.matches(WARNING).count(), 1, "{log}");
    assert!(log.contains("LimitMEMLOCK"), "{log}");
}

/// A daemon under a file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`) that its state
/// outgrows: the state write that crosses the limit fails with a clear error instead of the
/// kernel's SIGXFSZ killing the daemon in the middle of it, and nothing acknowledged is lost.
#[test]
fn a_state_write_past_the_file_size_limit_fails_with_a_clear_error_and_loses_nothing() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let cfg = demo_with_pki(d.path());
    let config = cfg[0].1.to_str().unwrap();
    // The log goes to a pipe: the limit is on files, and the log must tell why the daemon stops.
    let mut child = Command::new("prlimit")
        .args(["--fsize=16384", "--", BIN, "serve", "--config", config])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let child = Daemon(child, d.path().join("unused.log"));
    wait_status(&cfg[0].1, "a up", |s| s["cluster"] == "a");
    let pw = d.path().join("pw.txt");
    std::fs::write(&pw, "Correct-Horse-9-battery\n").unwrap();
    let (code, err) =
        run(&["encryption", "enable", "--password-file", pw.to_str().unwrap(), "-c", config]);
    assert_eq!(code, 0, "{err}");

    // Each rotation adds a key version to the sealed state, until a write crosses 16 KiB.
    let mut acknowledged = 0;
    let refusal = loop {
        let (code, err) = run(&["key", "rotate", "-c", config]);
        if code != 0 {
            break err;
        }
        acknowledged += 1;
        assert!(acknowledged < 1000, "16 KiB should not hold 1,000 key versions");
    };
    assert!(refusal.contains("File too large"), "{refusal}");
    let mut child = child;
    let state_dir = d.path().join("state/a");
    if refusal.contains("audit record") {
        // The audit trail, written before the state, met the limit first: the rotation is
        // refused with nothing changed, and the daemon (not killed by SIGXFSZ) runs on.
        std::thread::sleep(Duration::from_millis(200));
        assert!(child.0.try_wait().unwrap().is_none(), "the daemon runs on");
        let _ = child.0.kill();
        let _ = child.0.wait();
    } else {
        // The state write met it: the daemon stops with the error, rather than run on a state
        // it could lose.
        assert!(refusal.contains("could not be saved"), "{refusal}");
        let t = Instant::now();
        let status = loop {
            if let Some(st) = child.0.try_wait().unwrap() {
                break st;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "the daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = log.join().unwrap();
        assert_eq!(status.signal(), None, "killed by a signal ({status}); log:\n{log}");
        assert!(!status.success());
        assert!(log.contains("File too large"), "{log}");
    }
    assert!(!state_dir.join("state.sealed.tmp").exists(), "the failed write's temporary file");

    // Without the limit, the daemon starts on the last saved state: every acknowledged
    // rotation is there, the refused one is not.
    let a = Daemon::start(&cfg[0].1, d.path().join("a.log"));
    let s = wait_status(&cfg[0].1, "a back", |s| s["cluster"] == "a");
    assert_eq!(s["role"], "master");
    assert_eq!(s["primary_version"], 1 + acknowledged, "{s}");
    assert!(a.term().0);
}
