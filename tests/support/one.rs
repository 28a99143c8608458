//! One cluster, `a`, running alone (a task of the test process, with its metrics listener),
//! and the `imcrypt` binary pointed at its config file: the fixture of the tests that drive one
//! daemon through the CLI (administrators and roles, the audit trail). Each test file adds the
//! methods only it needs in an `impl One` of its own.

use std::path::{Path, PathBuf};

use super::prometheus::http_get;
use super::{Lab, Out, PASSWORD, Run, imcrypt_with, mesh};

/// The path as the CLI takes it.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

pub struct One {
    pub dir: tempfile::TempDir,
    pub lab: Lab,
    /// Cluster a's config file.
    pub cfg: String,
}

impl One {
    /// Cluster a, running, encryption off.
    pub async fn start() -> One {
        let (dir, mut lab) = mesh(&["a"]);
        lab.spec_mut("a").metrics = true;
        lab.start("a").await.unwrap();
        let cfg = s(&dir.path().join("a.toml")).to_owned();
        One { dir, lab, cfg }
    }

    /// Cluster a, running, encryption enabled through the CLI with [`PASSWORD`].
    pub async fn enabled() -> One {
        let one = One::start().await;
        let pw = one.file("pw.txt", PASSWORD);
        let o = one.run(None, &["encryption", "enable", "--password-file", &pw]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        one
    }

    /// Writes `text` and a line feed to the file `name` of the test's directory; its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{text}\n")).unwrap();
        s(&p).to_owned()
    }

    /// Cluster a's state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state/a")
    }

    /// `imcrypt ARGS -c CFG` with `token` (none: the config's token file, the first admin).
    pub async fn run(&self, token: Option<&str>, args: &[&str]) -> Out {
        self.run_with_stdin(token, args, "").await
    }

    /// As [`One::run`], with `stdin` on standard input.
    pub async fn run_with_stdin(&self, token: Option<&str>, args: &[&str], stdin: &str) -> Out {
        let args = [args, &["-c", &self.cfg]].concat();
        let env: &[(&str, &str)] = match token {
            Some(t) => &[("IMCRYPT_TOKEN", t)],
            None => &[],
        };
        imcrypt_with(Run { dir: None, env }, &args, stdin).await
    }

    /// The value of one series of cluster a's `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let addr = self.lab.daemon("a").unwrap().metrics_addr().expect("metrics on");
        let (code, body) = http_get(&addr.to_string(), "/metrics").await.unwrap();
        assert_eq!(code, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}
