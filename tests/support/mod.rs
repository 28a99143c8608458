//! Shared by the integration tests: a lab of daemons on 127.0.0.1 in a temp dir, passwords,
//! ports reserved for servers the tests start ([`ReservedPort`]), key pairs made by the real
//! `openssl`, and bounded waits ([`wait_for`]) in place of sleeps; [`prometheus`] starts the
//! real Prometheus, [`services`] real rsyslog and Alertmanager, [`process`] `imcrypt serve` as
//! a process of its own, [`one`] the one-cluster fixture of the CLI tests.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod blackhole;
pub mod one;
pub mod process;
pub mod prometheus;
pub mod services;

pub use imcrypt::admin::api::{Role, Status};
pub use imcrypt::alarm::AlarmName;
pub use imcrypt::cluster::Command;
pub use imcrypt::crypto::password::Password;
pub use imcrypt::demo::{Lab, ReservedPort, has_alarm};
pub use one::{One, s};

/// The program at `path` from Debian's `package`, or a failure that says how to install it.
pub fn debian_binary(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} not found: run scripts/test.sh (it installs Debian's {package} package)"
    );
    p
}

pub const WAIT: Duration = Duration::from_secs(15);
pub const PASSWORD: &str = "Correct-Horse-9-battery";

pub fn pw(s: &str) -> Password {
    Password::new(s)
}

/// A lab of `ids`, fully meshed, in a fresh temp dir (kept alive by the returned guard).
pub fn mesh(ids: &[&str]) -> (tempfile::TempDir, Lab) {
    meshed(ids, Lab::new)
}

/// As [`mesh`], each cluster with a CA of its own, given to its peers (`[[peers]] ca`).
pub fn mesh_own_cas(ids: &[&str]) -> (tempfile::TempDir, Lab) {
    meshed(ids, Lab::with_own_cas)
}

fn meshed(
    ids: &[&str],
    make: fn(&Path, &[&str]) -> Result<Lab, imcrypt::demo::LabError>,
) -> (tempfile::TempDir, Lab) {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = make(dir.path(), ids).unwrap();
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
    move |s| s.role == Role::Slave && s.master.as_ref().is_some_and(|m| m.as_str() == master)
}

/// Runs `f` with a global time bound, so a broken test fails instead of hanging.
pub async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f).await.expect("test exceeded 120 s");
}

/// Polls `check` every 20 ms until it gives a value, and returns it; fails after `timeout`
/// naming `what` it waited for. For things that will happen (a role, a key version, a
/// reachable database); a test that must let time pass to see that something does *not*
/// happen sleeps, and says so.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "waited {timeout:?} in vain for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What [`openssl_key_pair`] asks `openssl genpkey` for.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    /// An RSA key of this many bits.
    Rsa(u32),
    /// An EC key on P-256 (imcrypt refuses it: not RSA).
    EcP256,
}

/// A key pair as an administrator makes one with the real `openssl` binary (scripts/test.sh
/// installs it): `DIR/NAME.pem` (private) and `DIR/NAME.pub.pem` (public).
pub struct KeyPair {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl KeyPair {
    pub fn private_pem(&self) -> String {
        std::fs::read_to_string(&self.private).unwrap()
    }

    pub fn public_pem(&self) -> String {
        std::fs::read_to_string(&self.public).unwrap()
    }
}

/// Makes `DIR/NAME.pem` with `openssl genpkey` and its public half `DIR/NAME.pub.pem` with
/// `openssl pkey -pubout`.
pub fn openssl_key_pair(dir: &Path, name: &str, kind: KeyKind) -> KeyPair {
    let pair = KeyPair {
        private: dir.join(format!("{name}.pem")),
        public: dir.join(format!("{name}.pub.pem")),
    };
    let (algorithm, option) = match kind {
        KeyKind::Rsa(bits) => ("RSA", format!("rsa_keygen_bits:{bits}")),
        KeyKind::EcP256 => ("EC", "ec_paramgen_curve:P-256".to_owned()),
    };
    let (sk, pk) = (pair.private.to_str().unwrap(), pair.public.to_str().unwrap());
    openssl(&["genpkey", "-algorithm", algorithm, "-pkeyopt", &option, "-out", sk]);
    openssl(&["pkey", "-in", sk, "-pubout", "-out", pk]);
    pair
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Disables encryption on master `id` for the whole domain, acknowledging that the keys were
/// not downloaded (the tests never archived anything under them).
pub fn disable_domain() -> Command {
    Command::Disable { password: pw(PASSWORD), i_understand_data_loss: true }
}

/// Disables encryption on the master without acknowledging data loss: refused while the keys
/// were never downloaded, or not since the last rotation.
pub fn disable_unacknowledged() -> Command {
    Command::Disable { password: pw(PASSWORD), i_understand_data_loss: false }
}

/// A TLS 1.3 client config (ring) that trusts only the CA certificates in the PEM file `ca`,
/// with no client certificate: for tests that speak to a listener byte by byte.
pub fn tls_client_trusting(ca: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    std::sync::Arc::new(cfg)
}

/// The administrator's download through the binary: an RSA-3072 key pair made with openssl
/// in `dir` (`NAME.pem`, `NAME.pub.pem`), and the keys of the master configured in `cfg`
/// downloaded for it into `DIR/NAME.export.json` (asserted to succeed).
pub async fn download_keys(dir: &Path, cfg: &str, name: &str) -> (KeyPair, PathBuf) {
    let key = openssl_key_pair(dir, name, KeyKind::Rsa(3072));
    let export = dir.join(format!("{name}.export.json"));
    let args = ["key", "download", "--public-key", s(&key.public), "--out", s(&export)];
    let o =
        imcrypt(&[&args[..], &["--password-stdin", "-c", cfg]].concat(), &format!("{PASSWORD}\n"))
            .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    (key, export)
}

/// `imcrypt key unwrap` of `export` with `key`'s private key into the key ring file `ring`.
pub async fn unwrap_keys(export: &Path, key: &KeyPair, ring: &Path) -> Out {
    let args = ["--export", s(export), "--private-key", s(&key.private), "--out", s(ring)];
    imcrypt(&[&["key", "unwrap"][..], &args].concat(), "").await
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
    // The CLI keeps the daemon's client proof: under the target directory, not in $HOME, and
    // one file per config file, because the tests of one binary run at once against daemons
    // that share server names (a proof of another daemon is no proof here). Without a config
    // file, a file of this call's own: no proof is presented.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let config = args.windows(2).find(|w| w[0] == "-c" || w[0] == "--config").map(|w| {
        let dir = run.dir.map(Path::to_path_buf).unwrap_or_default();
        dir.join(w[1]).to_string_lossy().replace(['/', '.'], "_")
    });
    let key = config.unwrap_or_else(|| {
        format!("call-{}", CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    });
    let proof =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("proof-{}-{key}", std::process::id()));
    cmd.env("IMCRYPT_PROOF_FILE", proof);
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
