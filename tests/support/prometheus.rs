//! The real Prometheus (Debian's `prometheus`, installed by scripts/test.sh) for the tests: a
//! throwaway server in a temp dir on a reserved 127.0.0.1 port that scrapes the given targets
//! every second, killed when dropped; its HTTP API queried over plain HTTP; and `promtool`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ReservedPort;

/// A Debian binary of the `prometheus` package, or a failure that says how to get it.
pub fn prometheus_binary(name: &str) -> PathBuf {
    super::debian_binary(&format!("/usr/bin/{name}"), "prometheus")
}

/// `promtool ARGS` with `stdin`, bounded to 60 s: (exit code, stdout + stderr).
pub async fn promtool(args: &[&str], stdin: &[u8]) -> (i32, String) {
    let mut child = tokio::process::Command::new(prometheus_binary("promtool"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("promtool finished within 60 s")
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A plain HTTP/1.0 GET (the server then closes after the answer, never chunks it):
/// (status code, body).
pub async fn http_get(addr: &str, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_owned()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One series of an instant query's answer: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A running Prometheus; killed (and its temp dir removed) on drop.
pub struct Prometheus {
    child: tokio::process::Child,
    port: ReservedPort,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping each `(cluster, metrics address)` every second, with the
    /// label `cluster` on its series, and waits until it is ready (at most 30 s).
    pub async fn start(targets: &[(&str, SocketAddr)]) -> Self {
        let bin = prometheus_binary("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: imcrypt\n    static_configs:\n",
        );
        for (cluster, addr) in targets {
            config.push_str(&format!(
                "      - targets: ['{addr}']\n        labels: {{ cluster: '{cluster}' }}\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = ReservedPort::new().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = tokio::process::Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", port.port()))
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let p = Self { child, port, _dir: dir };
        let start = tokio::time::Instant::now();
        loop {
            if let Ok((200, _)) = http_get(&p.addr(), "/-/ready").await {
                return p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Prometheus not ready within 30 s: {}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port.port())
    }

    /// What Prometheus logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through `/api/v1/query`: every series with its labels and value.
    pub async fn query(&self, promql: &str) -> Vec<Sample> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (code, body) = http_get(&self.addr(), &path).await.unwrap();
        assert_eq!(code, 200, "query {promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "query {promql}: {body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// `query`'s answer as `cluster label -> value`.
    pub async fn by_cluster(&self, promql: &str) -> BTreeMap<String, f64> {
        self.query(promql)
            .await
            .into_iter()
            .map(|(l, v)| (l.get("cluster").cloned().unwrap_or_default(), v))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
