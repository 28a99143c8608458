//! `imcrypt serve` as a real process, for tests that need what only a process has of its own:
//! its descriptor limit (run under `prlimit`), its memory (`/proc/PID/status`), its log. Started
//! from a lab's config file, waited for until `imcrypt status` answers (bounded), killed and
//! reaped on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_imcrypt");
/// How long a daemon may take to answer its first `imcrypt status`.
const START: Duration = Duration::from_secs(20);

/// A running `imcrypt serve`.
pub struct Serve {
    child: Child,
    config: PathBuf,
    log: PathBuf,
    nofile: Option<u64>,
}

impl Serve {
    /// Starts `imcrypt serve --config CONFIG`, its stderr in `LOG`, with the soft and hard
    /// descriptor limits set to `nofile` when given (`prlimit`, util-linux), and waits until
    /// its admin API answers.
    pub fn start(config: &Path, log: &Path, nofile: Option<u64>) -> Serve {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("prlimit and imcrypt run");
        let mut s = Serve { child, config: config.to_owned(), log: log.to_owned(), nofile };
        let t = Instant::now();
        while status_json(config).is_none() {
            s.assert_running();
            assert!(
                t.elapsed() < START,
                "daemon did not answer within {START:?}: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// Kills the daemon (as `kill -9` would) and starts it again, logging to `log`.
    pub fn restart(&mut self, log: &Path) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Serve::start(&self.config.clone(), log, self.nofile);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the daemon's log if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("the daemon exited ({st}): {}", self.log_text());
        }
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Descriptors the daemon has open now.
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap().count()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `imcrypt status --output json` against the daemon of `config`; `None` while it does not
/// answer.
pub fn status_json(config: &Path) -> Option<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["status", "--output", "json", "--config"])
        .arg(config)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}
