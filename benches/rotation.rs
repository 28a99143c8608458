//! How long a key rotation on the master takes to reach 20 slaves on 127.0.0.1: the time from
//! the rotate command until every slave's hot path holds the new primary version (the moment
//! the slave has it on disk and in use). Median and max over several rounds, in one run; the
//! baseline is one slave, measured in the same run. Target: under 1 s.
//! `cargo bench --bench rotation`

use std::time::{Duration, Instant};

use imcrypt::cluster::Command;
use imcrypt::crypto::password::Password;
use imcrypt::demo::Lab;

const ROUNDS: usize = 15;

async fn network(n: usize) -> (tempfile::TempDir, Lab, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut ids: Vec<String> = vec!["master".into()];
    ids.extend((1..=n).map(|i| format!("slave{i}")));
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut lab = Lab::new(dir.path(), &refs).unwrap();
    for s in &ids[1..] {
        lab.peer("master", s);
        lab.spec_mut(s).hello_interval = Duration::from_secs(5);
    }
    lab.spec_mut("master").hello_interval = Duration::from_secs(5);
    for id in &ids {
        lab.start(id).await.unwrap();
    }
    let pw = Password::new("Bench-Passw0rd-rotation");
    lab.daemon("master")
        .unwrap()
        .command(Command::Enable { password: pw, remote: true })
        .await
        .unwrap();
    for s in &ids[1..] {
        lab.wait_until(s, "slave", Duration::from_secs(30), |st| {
            st.role == imcrypt::admin::api::Role::Slave
        })
        .await
        .unwrap();
    }
    (dir, lab, ids)
}

async fn rounds(lab: &Lab, slaves: &[String]) -> Vec<Duration> {
    let mut out = Vec::new();
    for _ in 0..ROUNDS {
        let mut rx: Vec<_> = slaves.iter().map(|s| lab.daemon(s).unwrap().key_ring()).collect();
        for r in &mut rx {
            r.borrow_and_update();
        }
        let before = lab.status("master").await.unwrap().primary_version.unwrap();
        let t = Instant::now();
        lab.daemon("master").unwrap().command(Command::RotateKey).await.unwrap();
        for r in &mut rx {
            loop {
                let v = r.borrow_and_update().as_ref().map(|k| k.primary_version());
                if v.is_some_and(|v| v > before) {
                    break;
                }
                tokio::time::timeout(Duration::from_secs(10), r.changed()).await.unwrap().unwrap();
            }
        }
        out.push(t.elapsed());
    }
    out.sort();
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        println!("key rotation: master to slaves on 127.0.0.1, {ROUNDS} rounds each");
        let mut base = Duration::ZERO;
        for n in [1usize, 20] {
            let (_dir, mut lab, ids) = network(n).await;
            let r = rounds(&lab, &ids[1..]).await;
            let (median, max) = (r[r.len() / 2], r[r.len() - 1]);
            if n == 1 {
                base = median;
            }
            println!(
                "{n:>3} slave(s): median {}, max {}, median vs 1 slave {:.2}x",
                ms(median),
                ms(max),
                median.as_secs_f64() / base.as_secs_f64()
            );
            lab.stop_all().await;
        }
        println!("target: all 20 slaves hold the new version in under 1 s");
    });
}
