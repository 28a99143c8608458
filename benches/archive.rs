//! Archive throughput into PostgreSQL with encryption on and off, in the same run: the same
//! archiver, database and events; one cluster's hot path encrypts, the other's answers OFF.
//! Prints events/s for both and their ratio. Needs PostgreSQL's server binaries (see
//! tests/support/pg.rs); `cargo bench --bench archive`.

#[path = "../tests/support/pg.rs"]
mod pg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use imcrypt::archive::{Archiver, ArchiverConfig, Outcome};
use imcrypt::cluster::Command;
use imcrypt::crypto::password::Password;
use imcrypt::demo::Lab;
use imcrypt::hotpath::{Client, ClientConfig, KeyStatus};

const EVENTS: usize = 20_000;
const BODY: usize = 256;

async fn run(archiver: Arc<Archiver>, prefix: &str) -> f64 {
    let body = "x".repeat(BODY);
    let lines: Vec<String> = (0..EVENTS)
        .map(|i| {
            serde_json::json!({"message_id": format!("{prefix}-{i}"), "from": format!("user{}@example.com", i % 97),
                "to": format!("user{}@example.com", i % 89), "timestamp": i as i64, "direction": "inbound", "body": body})
            .to_string()
        })
        .collect();
    let start = Instant::now();
    let mut hs = Vec::with_capacity(EVENTS);
    for l in lines {
        let a = archiver.clone();
        hs.push(tokio::spawn(async move { a.ingest(&l).await.result }));
    }
    for h in hs {
        assert_eq!(h.await.unwrap(), Outcome::Archived);
    }
    EVENTS as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let pg = pg::Pg::start();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab::new(dir.path(), &["on", "off"]).unwrap();
        for id in ["on", "off"] {
            lab.spec_mut(id).hotpath = true;
            lab.start(id).await.unwrap();
        }
        let enable =
            Command::Enable { password: Password::new("Correct-Horse-9-battery"), remote: false };
        lab.daemon("on").unwrap().command(enable).await.unwrap();
        let c = Client::new(ClientConfig::new(lab.hotpath_socket("on")));
        while !matches!(c.status().await, Ok(KeyStatus::On { .. })) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let url: imcrypt::archive::DbUrl = pg.url().parse().unwrap();
        let mut rates = Vec::new();
        for id in ["on", "off", "on", "off"] {
            let mut cfg = ArchiverConfig::new(url.clone(), lab.hotpath_socket(id));
            cfg.max_queue = EVENTS * 2;
            let a = Arc::new(Archiver::start(cfg).await.unwrap());
            let r = run(a, &format!("{id}-{}", rates.len())).await;
            println!("encryption {id:<3}: {EVENTS} events of {BODY} B: {r:>9.0} events/s");
            rates.push((id, r));
        }
        let best =
            |w: &str| rates.iter().filter(|(i, _)| *i == w).map(|(_, r)| *r).fold(0.0, f64::max);
        let (on, off) = (best("on"), best("off"));
        println!(
            "archive into PostgreSQL: encryption on {on:.0} events/s, off {off:.0} events/s, \
             on/off = {:.2} (best of 2 each)",
            on / off
        );
        lab.stop_all().await;
    });
}
