//! `imcrypt serve` as systemd runs it, with real processes: the `sd_notify` messages a
//! `Type=notify` unit relies on (READY, WATCHDOG, STOPPING), the shipped unit files checked by
//! `systemd-analyze verify`, SIGHUP reloading the config file (what applies, what is refused,
//! what needs a restart), and `imcrypt support bundle` of a running daemon.

use std::io::BufReader;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imcrypt::demo::ReservedPort;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_imcrypt");
/// How long any one wait of these tests may take before it fails.
const WAIT: Duration = Duration::from_secs(20);

/// A temp dir with a development PKI for clusters `a` and `b` and the config of cluster `a`
/// on reserved ports (kept while the fixture lives).
struct Fixture {
    dir: tempfile::TempDir,
    config: PathBuf,
    peer: ReservedPort,
    admin: ReservedPort,
}

impl Fixture {
    /// `extra` is appended to the config (more sections, nodes, peers).
    fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let out = Command::new(BIN)
            .args(["pki", "init", "--clusters", "a,b", "--out"])
            .arg(&pki)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let port = || ReservedPort::new().expect("a port on 127.0.0.1");
        let f = Fixture { config: dir.path().join("a.toml"), dir, peer: port(), admin: port() };
        f.write(extra);
        f
    }

    /// Rewrites the config file: the base, then `extra`.
    fn write(&self, extra: &str) {
        let text = format!(
            "cluster_id = \"a\"\nstate_dir = \"state\"\n\n[peer]\nlisten = \"127.0.0.1:{}\"\n\
             cert = \"pki/a.pem\"\nkey = \"pki/a.key\"\nca = \"pki/ca.pem\"\n\
             hello_interval = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n\
             [password]\npbkdf2_iterations = 100000\n\n{extra}\n",
            self.peer.port(),
            self.admin.port()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `imcrypt serve` on the config, its log (stderr) in `log`, with `env` set and the
    /// environment of the developer's shell that would change it removed.
    fn serve(&self, log: &str, env: &[(&str, &str)]) -> Daemon {
        let log = self.path(log);
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(&self.config);
        for k in ["RUST_LOG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "NO_COLOR"] {
            cmd.env_remove(k);
        }
        let child = cmd
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// `imcrypt ARGS --config CONFIG`: exit code, stdout, stderr.
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN).args(args).arg("--config").arg(&self.config).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    /// `imcrypt status --output json`, once it answers and `ok` holds.
    fn wait_status(
        &self,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait(what, || {
            let (code, out, _) = self.cli(&["status", "--output", "json"]);
            let s: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| code == 0)?;
            ok(&s).then_some(s)
        })
    }
}

/// A running `imcrypt serve`; killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Waits until the log has a line containing every one of `parts`, and returns that line.
    fn wait_log(&self, parts: &[&str]) -> String {
        wait(&format!("a log line with {parts:?}"), || {
            self.log().lines().find(|l| parts.iter().all(|p| l.contains(p))).map(str::to_owned)
        })
    }

    /// SIGTERM, then the exit status (bounded).
    fn term(self) -> bool {
        self.signal("TERM");
        self.term_after_signal()
    }

    /// The exit status once the daemon ends on a signal already sent (bounded).
    fn term_after_signal(mut self) -> bool {
        wait("the daemon to exit", || self.child.try_wait().unwrap()).success()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it gives a value; fails after [`WAIT`] naming `what`.
fn wait<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "waited {WAIT:?} in vain for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The next datagram on the notify socket, or `None` once `deadline` has passed.
fn next_message(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    None
}

/// Reads datagrams into `seen` until one has the line `line`; fails after [`WAIT`].
fn wait_message(socket: &UnixDatagram, line: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = next_message(socket, deadline)
            .unwrap_or_else(|| panic!("no {line} on NOTIFY_SOCKET within {WAIT:?}: {seen:?}"));
        let found = m.lines().any(|l| l == line);
        seen.push(m);
        if found {
            return;
        }
    }
}

#[test]
fn under_systemd_the_daemon_says_ready_once_it_listens_then_pings_the_watchdog_then_stopping() {
    let f = Fixture::new("[[nodes]]\nid = \"a1\"\narchiver = \"postgresql\"\n");
    let socket_path = f.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let d = f.serve(
        "a.log",
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "2000000")],
    );

    let mut seen = Vec::new();
    wait_message(&socket, "READY=1", &mut seen);
    // READY means the listeners are bound: the admin API answers at once.
    std::net::TcpStream::connect(("127.0.0.1", f.admin.port()))
        .expect("the admin listener is bound when READY=1 is sent");
    let ready = seen.last().unwrap().clone();
    assert!(ready.contains("STATUS=encryption off"), "a status line for systemctl: {ready:?}");
    let (code, out, err) = f.cli(&["status", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"cluster\": \"a\""), "{out}");

    // The core pings every half WATCHDOG_USEC (1 s here): two pings after READY.
    let (t, after_ready) = (Instant::now(), seen.len());
    wait_message(&socket, "WATCHDOG=1", &mut seen);
    wait_message(&socket, "WATCHDOG=1", &mut seen);
    assert!(t.elapsed() < Duration::from_secs(4), "pings every second, took {:?}", t.elapsed());

    d.signal("TERM");
    wait_message(&socket, "STOPPING=1", &mut seen);
    // In that order: nothing says STOPPING before the end, nor READY twice.
    let has = |m: &String, line: &str| m.lines().any(|l| l == line);
    assert_eq!(seen.iter().filter(|m| has(m, "STOPPING=1")).count(), 1, "{seen:?}");
    assert!(has(seen.last().unwrap(), "STOPPING=1"), "{seen:?}");
    assert_eq!(seen.iter().filter(|m| has(m, "READY=1")).count(), 1, "{seen:?}");
    assert!(seen[after_ready..].iter().any(|m| has(m, "WATCHDOG=1")), "{seen:?}");
    let log = d.log();
    assert!(d.term_after_signal(), "exit status after SIGTERM; log:\n{log}");
}

/// `systemd-analyze verify` on `unit` (a file of dist/systemd/ copied into a temp dir with
/// `ExecStart` pointing at the built binary, which verify requires to exist), as instance
/// `name`: its complaints, empty when it has none (it exits 0 even on an unknown key, so its
/// output is what counts).
fn verify(unit: &str, name: &str) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd").join(unit);
    let text = std::fs::read_to_string(&src).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/imcrypt serve"), "{unit}: {text}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(unit), text.replace("/usr/local/bin/imcrypt", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join(name))
        .output()
        .expect("systemd-analyze (scripts/test.sh installs systemd)");
    let complaints =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "systemd-analyze verify {name}: {complaints}");
    complaints
}

#[test]
fn the_shipped_units_pass_systemd_analyze_verify_and_carry_the_hardening() {
    for (unit, name) in
        [("imcrypt.service", "imcrypt.service"), ("imcrypt@.service", "imcrypt@a.service")]
    {
        let complaints = verify(unit, name);
        assert!(complaints.trim().is_empty(), "systemd-analyze verify {name}:\n{complaints}");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd").join(unit),
        )
        .unwrap();
        for line in [
            "Type=notify",
            "WatchdogSec=",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            "User=imcrypt",
            "StateDirectory=imcrypt",
            "RuntimeDirectory=imcrypt",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "LimitCORE=0",
            "MemoryDenyWriteExecute=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "CapabilityBoundingSet=\n",
            "SystemCallFilter=@system-service",
        ] {
            assert!(text.contains(line), "{unit} lacks {line:?}");
        }
    }
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd/imcrypt@.service"),
    )
    .unwrap();
    assert!(template.contains("--config /etc/imcrypt/%i.toml"));
    assert!(template.contains("StateDirectory=imcrypt/%i"));
}

#[test]
fn sighup_applies_peers_and_the_log_level_refuses_a_broken_file_and_names_what_needs_a_restart() {
    let node = "[[nodes]]\nid = \"a1\"\narchiver = \"postgresql\"\n";
    let f = Fixture::new(node);
    let d = f.serve("a.log", &[]);
    f.wait_status("a answering", |s| s["cluster"] == "a");
    assert!(!d.log().contains("DEBUG"), "the default level is info");

    // A peer, an alarm sink and a debug log level, added to the file; then the admin
    // listener moved.
    let b = ReservedPort::new().unwrap();
    let peer = format!("[[peers]]\nid = \"b\"\naddress = \"127.0.0.1:{}\"\n", b.port());
    let nobody = ReservedPort::new().unwrap();
    let sink = format!(
        "[[alarms.sinks]]\nname = \"pager\"\nkind = \"alertmanager\"\nurl = \"http://127.0.0.1:{}\"\n",
        nobody.port()
    );
    f.write(&format!("{node}{peer}{sink}[log]\nlevel = \"debug\"\n"));
    d.signal("HUP");
    f.wait_status("peer b after the reload", |s| {
        s["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["id"] == "b"))
    });
    f.wait_status("sink pager after the reload", |s| {
        s["sinks"].as_array().is_some_and(|k| k.iter().any(|k| k["name"] == "pager"))
    });
    d.wait_log(&["INFO", "log level changed", "from=info", "to=debug"]);
    d.wait_log(&["DEBUG", "configuration reload finished"]);

    let moved = ReservedPort::new().unwrap();
    let text = std::fs::read_to_string(&f.config)
        .unwrap()
        .replace(&format!("127.0.0.1:{}", f.peer.port()), &format!("127.0.0.1:{}", moved.port()));
    std::fs::write(&f.config, text).unwrap();
    d.signal("HUP");
    d.wait_log(&["WARN", "peer.listen", "needs a restart"]);

    // With encryption on, a node added in the file is refused by the rules, as at start.
    let mut enable = Command::new(BIN)
        .args(["encryption", "enable", "--password-stdin", "--config"])
        .arg(&f.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    enable.stdin.take().unwrap().write_all(b"Correct-Horse-9-battery\n").unwrap();
    assert!(enable.wait().unwrap().success());
    let text = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(&f.config, format!("{text}[[nodes]]\nid = \"a2\"\narchiver = \"postgresql\"\n"))
        .unwrap();
    d.signal("HUP");
    d.wait_log(&["ERROR", "configuration change refused", "add node a2"]);
    let s = f.wait_status("a master", |s| s["role"] == "master");
    assert!(s["peers"].as_array().unwrap().iter().any(|p| p["id"] == "b"), "{s}");

    // A file that does not load: refused with the key named; the daemon runs on unchanged.
    f.write(&format!("{node}{peer}[log]\nlevel = \"loud\"\n"));
    d.signal("HUP");
    let refused = d.wait_log(&["ERROR", "configuration not reloaded"]);
    assert!(refused.contains("log.level") && refused.contains("loud"), "{refused}");
    // The CLI cannot read the broken file either: it is told where the daemon is instead.
    let (addr, ca) = (format!("127.0.0.1:{}", f.admin.port()), f.path("pki/ca.pem"));
    let token = f.path("state/admin.token");
    let out = Command::new(BIN)
        .args(["status", "--output", "json", "--server-name", "a", "--addr", &addr, "--ca"])
        .arg(&ca)
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["peers"].as_array().unwrap().iter().any(|p| p["id"] == "b"), "{s}");
    assert!(d.term(), "exit status after SIGTERM");
}

#[test]
fn a_support_bundle_of_a_running_daemon_has_status_and_alarm_history_and_no_secret() {
    const DB_PASSWORD: &str = "Planted-Db-Pa55word";
    let node = format!(
        "[log]\nfile = \"imcrypt.log\"\n\n[db_probe]\ninterval = \"1s\"\n\n[[nodes]]\nid = \"a1\"\narchiver = \"postgresql\"\n\
         db = \"postgres://archiver:{DB_PASSWORD}@127.0.0.1:1/im\"\n"
    );
    let f = Fixture::new(&node);
    let d = f.serve("a.log", &[]);
    // The database is unreachable: an alarm is raised, so the history has an entry.
    f.wait_status("MAcomplianceDbDown raised", |s| {
        s["alarms"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["key"]["name"] == "MAcomplianceDbDown"))
    });

    let out = f.path("bundle.json");
    let (code, stdout, err) = f.cli(&["support", "bundle", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("read it before sending it"), "{stdout}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the bundle is readable by its owner only");

    let text = std::fs::read_to_string(&out).unwrap();
    let token = std::fs::read_to_string(f.path("state/admin.token")).unwrap();
    assert!(!token.trim().is_empty());
    for secret in [token.trim(), DB_PASSWORD] {
        assert!(!text.contains(secret), "the bundle holds a secret:\n{text}");
    }
    let b: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(b["version"]["imcrypt"], env!("CARGO_PKG_VERSION"));
    assert!(b["system"]["kernel"].is_string(), "{}", b["system"]);
    assert_eq!(b["daemon"]["reachable"], true, "{}", b["daemon"]);
    assert_eq!(b["daemon"]["status"]["cluster"], "a");
    let history = b["daemon"]["alarms"]["history"].as_array().unwrap();
    assert!(history.iter().any(|e| e["name"] == "MAcomplianceDbDown"), "{history:?}");
    let config = &b["config"]["redacted"];
    assert_eq!(config["nodes"][0]["db"], "postgres://archiver:***@127.0.0.1:1/im");
    assert_eq!(config["cluster_id"], "a");
    // `[log] file` is set: the bundle carries its end.
    let lines = b["logs"]["last_lines"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l.as_str().unwrap().contains("imcrypt daemon started")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.as_str().unwrap().contains("alarm raised")), "{lines:?}");

    // An existing file is never overwritten.
    let (code, _, err) = f.cli(&["support", "bundle", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);

    // With the daemon down, the bundle says so and still has the rest.
    assert!(d.term());
    let down = f.path("bundle-down.json");
    let (code, _, err) = f.cli(&["support", "bundle", "--out", down.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let b: serde_json::Value =
        serde_json::from_reader(BufReader::new(std::fs::File::open(&down).unwrap())).unwrap();
    assert_eq!(b["daemon"]["reachable"], false);
    assert!(b["daemon"]["error"].as_str().unwrap().contains("cannot connect"), "{}", b["daemon"]);
    assert_eq!(b["config"]["redacted"]["cluster_id"], "a");

    // Without `[log] file` the daemon logs to stderr: the bundle says how to get the journal.
    let plain = Fixture::new("");
    let out = plain.path("bundle.json");
    let (code, _, err) = plain.cli(&["support", "bundle", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let b: serde_json::Value =
        serde_json::from_reader(BufReader::new(std::fs::File::open(&out).unwrap())).unwrap();
    assert!(b["logs"]["collect"].as_str().unwrap().contains("journalctl -u imcrypt"), "{b}");
}

#[test]
fn sighup_starts_moves_and_stops_the_metrics_listener_and_the_counts_carry_on() {
    use support::services::http_get;
    let node = "[[nodes]]\nid = \"a1\"\narchiver = \"postgresql\"\n";
    let f = Fixture::new(node);
    let d = f.serve("a.log", &[]);
    // Admin requests before `[metrics]` exists are counted all the same.
    f.wait_status("a answering", |s| s["cluster"] == "a");
    let (first, second) = (ReservedPort::new().unwrap(), ReservedPort::new().unwrap());
    let metrics =
        |port: &ReservedPort| format!("[metrics]\nlisten = \"127.0.0.1:{}\"\n", port.port());
    let status_requests = |body: &str| -> u64 {
        body.lines()
            .filter(|l| l.starts_with("imcrypt_admin_requests_total{") && l.contains("/v1/status"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };

    f.write(&format!("{node}{}", metrics(&first)));
    d.signal("HUP");
    d.wait_log(&["INFO", "metrics listener moved", &format!("127.0.0.1:{}", first.port())]);
    let (code, body) = http_get(first.port(), "/metrics").expect("metrics on the first port");
    assert_eq!(code, 200, "{body}");
    assert!(status_requests(&body) >= 1, "counted since the start:\n{body}");

    // Moved: the new port serves, the old one is closed; nothing needs a restart.
    f.write(&format!("{node}{}", metrics(&second)));
    d.signal("HUP");
    d.wait_log(&["INFO", "metrics listener moved", &format!("127.0.0.1:{}", second.port())]);
    let (code, body) = http_get(second.port(), "/metrics").expect("metrics on the second port");
    assert_eq!(code, 200, "{body}");
    assert!(http_get(first.port(), "/metrics").is_none(), "the old port still answers");
    assert!(!d.log().contains("key=\"metrics\""), "no restart asked for:\n{}", d.log());

    // A port that is taken: reported with the key, and the listener serves on where it was.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    f.write(&format!(
        "{node}[metrics]\nlisten = \"127.0.0.1:{}\"\n",
        taken.local_addr().unwrap().port()
    ));
    d.signal("HUP");
    let failed = d.wait_log(&["ERROR", "metrics.listen", "not applied"]);
    assert!(failed.contains("still serving on"), "{failed}");
    assert_eq!(http_get(second.port(), "/metrics").map(|(c, _)| c), Some(200));

    // Gone from the file: off.
    f.write(node);
    d.signal("HUP");
    d.wait_log(&["INFO", "metrics listener stopped"]);
    assert!(http_get(second.port(), "/metrics").is_none(), "metrics still served");
    assert!(d.term(), "exit status after SIGTERM");
}
