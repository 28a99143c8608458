//! The cost of the audit trail: admin requests per second with the audit on and off, in the
//! same run, on two daemons of one lab (tasks of this process, each request a new HTTPS
//! connection with the token, as the CLI makes them): cluster `on` writes its trail, cluster
//! `off` has `[audit] enabled = false`. Two actions:
//! - `rotate refused`: `POST /v1/keys/rotate` on a cluster where encryption is off, refused by
//!   the state machine: one audit record, no state write (the audit's cost alone);
//! - `remote on/off`: `PUT /v1/encryption/remote` on a master, alternately on and off: a state
//!   write and its records (a real change).
//!
//! Rounds alternate between the two daemons so that both see the same machine load.
//! `cargo bench --bench audit`.

use std::time::{Duration, Instant};

use imcrypt::admin::client::{Client, Target};
use imcrypt::cluster::Command;
use imcrypt::crypto::password::Password;
use imcrypt::demo::Lab;

const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;

fn client(lab: &Lab, id: &str) -> Client {
    let token = std::fs::read_to_string(lab.dir().join(format!("state/{id}/admin.token"))).unwrap();
    Client::new(Target {
        addr: lab.daemon(id).unwrap().admin_addr().to_string(),
        server_name: id.into(),
        ca: lab.dir().join("pki/ca.pem"),
        token: token.trim().to_owned().into(),
    })
    .unwrap()
}

/// Requests per second of `request` (its answer ignored: refusals are the point of one action)
/// over one round.
async fn rate(
    c: &Client,
    request: &mut impl FnMut(u64) -> (hyper::Method, &'static str, Option<Vec<u8>>),
) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < ROUND {
        let (m, path, body) = request(n);
        let _ = c.send(m, path, body).await;
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn compare(
    name: &str,
    lab: &Lab,
    mut request: impl FnMut(u64) -> (hyper::Method, &'static str, Option<Vec<u8>>),
) {
    let (on, off) = (client(lab, "on"), client(lab, "off"));
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        with.push(rate(&on, &mut request).await);
        without.push(rate(&off, &mut request).await);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (w, wo) = (mean(&with), mean(&without));
    println!(
        "{name:<16} audit on {w:>8.0} req/s   audit off {wo:>8.0} req/s   on/off {:.2}x",
        w / wo
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab::new(dir.path(), &["on", "off"]).unwrap();
        lab.spec_mut("off").extra_config = "[audit]\nenabled = false\n".into();
        for id in ["on", "off"] {
            lab.start(id).await.unwrap();
        }
        println!("each request: a new TLS 1.3 connection to the admin API, as the CLI makes it");
        compare("rotate refused", &lab, |_| (hyper::Method::POST, "/v1/keys/rotate", None)).await;
        for id in ["on", "off"] {
            let pw = Password::new("Correct-Horse-9-battery");
            lab.daemon(id)
                .unwrap()
                .command(Command::Enable { password: pw, remote: false })
                .await
                .unwrap();
        }
        compare("remote on/off", &lab, |n| {
            let body = format!("{{\"enabled\": {}}}", n % 2 == 0).into_bytes();
            (hyper::Method::PUT, "/v1/encryption/remote", Some(body))
        })
        .await;
        let log = dir.path().join("state/on/audit.log");
        let records = std::fs::read_to_string(&log).map(|t| t.lines().count()).unwrap_or(0);
        println!("audit records written by `on`: {records}");
        lab.stop_all().await;
    });
}
