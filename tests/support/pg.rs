//! A throwaway PostgreSQL server for tests: `initdb` and `pg_ctl` from Debian's postgresql
//! package (scripts/test.sh installs it) in a temp dir, on 127.0.0.1 and a port reserved for it
//! while it lives (PostgreSQL binds with `SO_REUSEADDR`, see `imcrypt::demo::ReservedPort`), with
//! trust authentication; stopped and removed on drop. As root (CI), the server runs as the
//! `postgres` user, since initdb refuses to run as root. [`Pg::start_tls`] starts one with
//! `ssl = on` that accepts TLS connections only (`hostssl` in pg_hba.conf).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use imcrypt::demo::ReservedPort;

pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Kept from the first start to the drop, restarts included.
    port: ReservedPort,
    as_postgres: bool,
    /// Server options beyond the port and address (`ssl = on` and its files).
    extra_opts: String,
}

fn find_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("IMCRYPT_PG_BIN") {
        return b.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0)
    });
    found.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/<ver>/bin: \
         run scripts/test.sh (it installs Debian's postgresql package) or set IMCRYPT_PG_BIN",
    )
}

impl Pg {
    /// Creates the cluster and starts the server.
    pub fn start() -> Pg {
        let pg = Pg::init();
        pg.start_server();
        pg
    }

    /// Creates the cluster and starts the server with `fsync` and full-page writes on, as a
    /// production server runs (the tests' servers skip them for speed): for benchmarks.
    pub fn start_durable() -> Pg {
        let mut pg = Pg::init();
        // A later `-c` wins over the test default's `fsync=off`.
        pg.extra_opts = " -c fsync=on -c full_page_writes=on".into();
        pg.start_server();
        pg
    }

    /// Creates the cluster and starts the server with `ssl = on`, presenting the certificate
    /// `cert` (PEM chain) and its key `key`, and accepting TCP connections over TLS only.
    pub fn start_tls(cert: &Path, key: &Path) -> Pg {
        let mut pg = Pg::init();
        let (c, k) = (pg.dir().join("server.crt"), pg.dir().join("server.key"));
        std::fs::copy(cert, &c).unwrap();
        std::fs::copy(key, &k).unwrap();
        // PostgreSQL refuses a key file others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            pg.data().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        if pg.as_postgres {
            chown_to_postgres(pg.dir());
        }
        pg.extra_opts =
            format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", c.display(), k.display());
        pg.start_server();
        pg
    }

    /// `initdb` in a new temp dir; the server is not started.
    fn init() -> Pg {
        let bin = find_bin();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("imcrypt-pg").tempdir_in("/tmp").unwrap();
        if as_postgres {
            chown_to_postgres(dir.path());
        }
        let port = ReservedPort::new().expect("a port on 127.0.0.1");
        let pg = Pg { dir, bin, port, as_postgres, extra_opts: String::new() };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "imcrypt",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port.port()
    }

    /// `postgres://imcrypt@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://imcrypt@127.0.0.1:{}/postgres", self.port())
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&exe).args(args).output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off{}",
            self.port(),
            self.dir.path().display(),
            self.extra_opts
        );
        let log = self.dir.path().join("server.log");
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop_server(&self) {
        let data = self.data();
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "-t", "30", "stop"]);
    }
}

/// Gives `dir` and everything in it to user `postgres` (the server runs as it under root).
fn chown_to_postgres(dir: &Path) {
    let ok = Command::new("chown").args(["-R", "postgres:"]).arg(dir).status().unwrap().success();
    assert!(ok, "cannot chown {} to user postgres", dir.display());
}

fn is_root() -> bool {
    // SAFETY-free: ask `id`, no libc needed.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&exe).args(args).output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}
