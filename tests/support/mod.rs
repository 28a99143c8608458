//! Shared by the integration tests: a lab of daemons on 127.0.0.1 in a temp dir, passwords,
//! and bounded waits.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

pub use imcrypt::alarm::AlarmName;
pub use imcrypt::cluster::Command;
pub use imcrypt::crypto::password::Password;
pub use imcrypt::daemon::Status;
pub use imcrypt::demo::{Lab, ReservedPort, has_alarm};

pub const WAIT: Duration = Duration::from_secs(15);
pub const PASSWORD: &str = "Correct-Horse-9-battery";

pub fn pw(s: &str) -> Password {
    Password::new(s)
}

/// A lab of `ids`, fully meshed, in a fresh temp dir (kept alive by the returned guard).
pub fn mesh(ids: &[&str]) -> (tempfile::TempDir, Lab) {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new(dir.path(), ids).unwrap();
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            lab.peer(a, b);
        }
    }
    (dir, lab)
}

pub fn enable(remote: bool) -> Command {
    Command::Enable { password: pw(PASSWORD), remote }
}

pub fn is_slave_of(master: &str) -> impl Fn(&Status) -> bool + '_ {
    move |s| s.role == "slave" && s.master.as_ref().is_some_and(|m| m.as_str() == master)
}

/// Runs `f` with a global time bound, so a broken test fails instead of hanging.
pub async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f).await.expect("test exceeded 120 s");
}

/// Disables encryption on master `id` for the whole domain, acknowledging that the keys were
/// not downloaded (the tests never archived anything under them).
pub fn disable_domain() -> Command {
    Command::DisableOnMaster { password: pw(PASSWORD), i_understand_data_loss: true }
}

/// What the `imcrypt` binary printed and how it exited.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `imcrypt` binary with `args`, writing `stdin` to it, bounded to 60 s; settings the
/// developer's shell may carry (`IMCRYPT_*`) are cleared so each test says what it means.
pub async fn imcrypt(args: &[&str], stdin: &str) -> Out {
    imcrypt_with(Run::default(), args, stdin).await
}

/// Where and with which environment [`imcrypt_with`] runs the binary.
#[derive(Default)]
pub struct Run<'a> {
    /// The working directory (default: the test's).
    pub dir: Option<&'a std::path::Path>,
    /// Environment variables set after `IMCRYPT_*` are cleared.
    pub env: &'a [(&'a str, &'a str)],
}

/// As [`imcrypt`], in `run.dir` with `run.env`.
pub async fn imcrypt_with(run: Run<'_>, args: &[&str], stdin: &str) -> Out {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_imcrypt"));
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("IMCRYPT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(run.env.iter().copied());
    if let Some(d) = run.dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("imcrypt finished within 60 s")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
