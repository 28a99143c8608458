//! How long a failover takes with 20 slaves on 127.0.0.1, in two phases of each round:
//! - promotion: the current master's daemon is killed (as by `kill -9`); once the next
//!   candidate says its master is unreachable (`peer.master_unreachable_after`, 1 s here), it
//!   is promoted; timed from the promote command until every running slave's status shows the
//!   new master in the new term;
//! - step-down: the killed master is started again; timed from its start (start-up included)
//!   until its status shows it is a slave of the new master in the new term.
//!
//! Every round promotes another cluster: the first slaves in turn, then the first master, and
//! again. Each of them is peered with every other cluster (the rest are peered with those
//! candidates only), so a new master reaches every slave. Median and max over several rounds,
//! in one run; the baseline is one slave, measured in the same run. Target: every reachable
//! slave of 20 follows the new master in under 1 s.
//! `cargo bench --bench failover`

use std::time::{Duration, Instant};

use imcrypt::admin::api::{Role, Status};
use imcrypt::cluster::{Command, Outcome};
use imcrypt::crypto::password::Password;
use imcrypt::demo::{Lab, has_alarm};

const ROUNDS: usize = 7;
/// Slaves promoted in turn (with the first master), when there are that many.
const CANDIDATES: usize = 4;
const UNREACHABLE_AFTER: Duration = Duration::from_secs(1);
const HELLO: Duration = Duration::from_millis(250);
const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "Bench-Passw0rd-failover";

/// A master and `n` slaves, encryption on; returns the ids (the master first) and the
/// clusters promoted in turn.
async fn network(n: usize) -> (tempfile::TempDir, Lab, Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut ids: Vec<String> = vec!["master".into()];
    ids.extend((1..=n).map(|i| format!("slave{i}")));
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut lab = Lab::new(dir.path(), &refs).unwrap();
    let mut candidates: Vec<String> = ids[1..=n.min(CANDIDATES)].to_vec();
    candidates.push(ids[0].clone());
    for c in &candidates {
        for other in &ids {
            if other != c {
                lab.peer(c, other);
            }
        }
    }
    for id in &ids {
        let spec = lab.spec_mut(id);
        spec.hello_interval = HELLO;
        spec.master_unreachable_after = UNREACHABLE_AFTER;
    }
    for id in &ids {
        lab.start(id).await.unwrap();
    }
    lab.daemon("master")
        .unwrap()
        .command(Command::Enable { password: Password::new(PASSWORD), remote: true })
        .await
        .unwrap();
    for s in &ids[1..] {
        lab.wait_until(s, "slave", WAIT, |st| st.role == Role::Slave).await.unwrap();
    }
    (dir, lab, ids, candidates)
}

fn follows(master: &str, term: imcrypt::ids::Term) -> impl Fn(&Status) -> bool + '_ {
    move |s| {
        s.role == Role::Slave
            && s.master.as_ref().is_some_and(|m| m.as_str() == master)
            && s.term == Some(term)
    }
}

/// Polls every cluster of `ids` until each satisfies `ok`.
async fn all_until(lab: &Lab, ids: &[&str], ok: impl Fn(&Status) -> bool) {
    let start = Instant::now();
    let mut pending: Vec<&str> = ids.to_vec();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            if !ok(&lab.status(id).await.unwrap()) {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            assert!(start.elapsed() < WAIT, "still not there after {WAIT:?}: {pending:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One round per promotion: promotion, step-down and (part of the step-down) the restarted
/// daemon's start-up, each sorted.
async fn rounds(lab: &mut Lab, ids: &[String], candidates: &[String]) -> [Vec<Duration>; 3] {
    let mut promotion = Vec::new();
    let mut step_down = Vec::new();
    let mut start_up = Vec::new();
    let mut master = ids[0].clone();
    for r in 0..ROUNDS {
        let next = candidates[r % candidates.len()].clone();
        lab.kill(&master).await.unwrap();
        lab.wait_until(&next, "its master unreachable", WAIT, |s| {
            has_alarm(s, imcrypt::alarm::AlarmName::MasterUnreachable, &master)
        })
        .await
        .unwrap();
        let followers: Vec<&str> =
            ids.iter().map(String::as_str).filter(|id| *id != master && *id != next).collect();

        let t = Instant::now();
        let outcome = lab
            .daemon(&next)
            .unwrap()
            .command(Command::Promote { password: Password::new(PASSWORD), force: false })
            .await
            .unwrap();
        let Outcome::Promoted { term, forced: false, .. } = outcome else {
            panic!("{next}: not promoted as expected: {outcome:?}");
        };
        all_until(lab, &followers, follows(&next, term)).await;
        promotion.push(t.elapsed());

        let t = Instant::now();
        lab.start(&master).await.unwrap();
        start_up.push(t.elapsed());
        all_until(lab, &[&master], follows(&next, term)).await;
        step_down.push(t.elapsed());
        master = next;
    }
    promotion.sort();
    step_down.sort();
    start_up.sort();
    [promotion, step_down, start_up]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        println!(
            "failover on 127.0.0.1, {ROUNDS} rounds each; hellos every {HELLO:?}, \
             master unreachable after {UNREACHABLE_AFTER:?}"
        );
        println!(
            "(with 1 slave no other slave is left to follow: promotion is the promote command)"
        );
        let phases = [
            "promotion (promote -> every slave follows)",
            "step-down (restart -> slave)",
            "  of which the restarted daemon's start-up",
        ];
        let mut base = [Duration::ZERO; 3];
        for n in [1usize, 20] {
            let (_dir, mut lab, ids, candidates) = network(n).await;
            let results = rounds(&mut lab, &ids, &candidates).await;
            for (i, r) in results.iter().enumerate() {
                let (median, max) = (r[r.len() / 2], r[r.len() - 1]);
                if n == 1 {
                    base[i] = median;
                }
                println!(
                    "{n:>3} slave(s), {}: median {}, max {}, median vs 1 slave {:.2}x",
                    phases[i],
                    ms(median),
                    ms(max),
                    median.as_secs_f64() / base[i].as_secs_f64()
                );
            }
            lab.stop_all().await;
        }
        println!("target: every reachable slave of 20 follows the new master in under 1 s");
    });
}
