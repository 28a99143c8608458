//! The kill campaign of docs/reliability.md, run by `scripts/torture.sh`: a 3-cluster network
//! of real `imcrypt serve` processes on 127.0.0.1 (a master `a`, slaves `b` and `c`), each with
//! its router's hot path and a real `imcrypt archive` process sealing a steady stream of IM
//! events into an SQLite archive; then, cycle after cycle, an administrative act (key rotation,
//! password change, runtime peer change, or none) and `kill -9` of a random daemon at a random
//! moment of it, a restart, and the checks an operator would make:
//!
//! - **convergence**: the three daemons agree on domain, epoch, key versions and primary
//!   version, with `a` master and `b`, `c` its slaves;
//! - **no alarm stuck**: once converged, every alarm clears within a grace period;
//! - **acknowledged means applied, refused means not**: the master's key versions grow by one
//!   for an acknowledged rotation, by none for a refused one, by at most one when the answer
//!   was lost in the kill; an acknowledged password change is the password from then on;
//! - **every acknowledged record decrypts**: at checkpoints and at the end the key set is
//!   downloaded from the master (`imcrypt key download`) and every archive is read back with
//!   `imcrypt view`; each event acknowledged `archived` must be there, encrypted, and decrypt
//!   to the body that was sent; an event refused must not be there.
//!
//! Invariant of the driver itself: every wait is bounded. A cycle that does not converge in
//! time fails the run with the statuses it last saw (exit code 1), it never hangs; every
//! process it started is killed when it ends (`kill_on_drop`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hyper::Method;
use imcrypt::admin::api::{Role, Status};
use imcrypt::admin::client::{Client, ClientError, Target};
use imcrypt::demo::{Lab, cid};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use zeroize::Zeroizing;

/// How long a restarted daemon may take to answer its admin API.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long the network may take to agree again after a restart.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
/// How long an alarm may stay active once the network agrees: above the lab's
/// `master_unreachable_after` (3 s) plus a few hello intervals (0.5 s).
const ALARM_GRACE: Duration = Duration::from_secs(10);
/// How long an administrative request may go unanswered.
const REQUEST_WITHIN: Duration = Duration::from_secs(20);
/// How long the archivers may take to acknowledge what they were given, at a checkpoint.
const DRAIN_WITHIN: Duration = Duration::from_secs(60);
const CLUSTERS: [&str; 3] = ["a", "b", "c"];
const MASTER: &str = "a";

#[derive(Debug, Parser)]
#[command(about = "kill -9 campaign against a 3-cluster imcrypt network (docs/reliability.md)")]
struct Args {
    /// How many daemons to kill.
    #[arg(default_value_t = 1000)]
    kills: u64,
    /// The `imcrypt` binary (default: the one built beside this example).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Seed of the random choices (default: random; printed, so a run can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Work here and keep the files (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Read every archive back every this many kills (and at the end).
    #[arg(long, default_value_t = 100)]
    verify_every: u64,
    /// Milliseconds between two events of one router.
    #[arg(long, default_value_t = 40)]
    event_interval_ms: u64,
}

/// splitmix64: reproducible from the printed seed, no dependency needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A failure of the campaign: the run stops and says this.
#[derive(Debug)]
struct Failure(String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(msg.into()))
}

/// How an administrative request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 2xx: the daemon says it is done.
    Acked,
    /// The daemon answered with an error: nothing may have changed.
    Refused,
    /// No answer (the daemon was killed before or while answering): either.
    Lost,
}

fn answer_of<T>(r: &Result<T, ClientError>) -> Answer {
    match r {
        Ok(_) => Answer::Acked,
        Err(ClientError::Api { .. }) => Answer::Refused,
        Err(_) => Answer::Lost,
    }
}

/// One cluster: its config file (written by the lab) and its `imcrypt serve` process.
struct Daemon {
    id: &'static str,
    config: PathBuf,
    admin: String,
    peer: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn token_file(&self, dir: &Path) -> PathBuf {
        dir.join("state").join(self.id).join("admin.token")
    }
}

/// The counts the run prints (and docs/reliability.md records).
#[derive(Debug, Default)]
struct Counts {
    kills: u64,
    kills_by_op: BTreeMap<&'static str, u64>,
    kills_by_cluster: BTreeMap<&'static str, u64>,
    rotations: BTreeMap<&'static str, u64>,
    password_changes: BTreeMap<&'static str, u64>,
    peer_changes: u64,
    converge_ms: Vec<u64>,
    /// Alarms still active `ALARM_GRACE` after convergence, by name.
    stuck_alarms: BTreeMap<String, u64>,
    /// Alarms seen active at some poll during a cycle, by name (raised and cleared again).
    alarms_seen: BTreeMap<String, u64>,
    /// Acknowledged changes found missing, refused ones found applied (each a bug).
    violations: Vec<String>,
    verifications: u64,
}

/// What the routers were told, per event id.
#[derive(Debug, Default)]
struct Ledger {
    sent: BTreeMap<String, String>,
    archived: BTreeSet<String>,
    refused: BTreeSet<String>,
    other: BTreeMap<String, String>,
}

/// One cluster's router: a real `imcrypt archive` reading events on stdin.
struct Router {
    child: Child,
    feeder: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

struct Campaign {
    dir: PathBuf,
    bin: PathBuf,
    /// Keeps the daemons' ports reserved between a kill and the restart.
    _lab: Lab,
    daemons: BTreeMap<&'static str, Daemon>,
    ca: PathBuf,
    rng: Rng,
    counts: Counts,
    ledger: Arc<Mutex<Ledger>>,
    routers: Vec<Router>,
    stop_feeding: tokio::sync::watch::Sender<bool>,
    /// The password the master has (as far as acknowledgements say).
    password: String,
    /// The other password it may have: the last change was not answered.
    password_alt: Option<String>,
    password_serial: u64,
    /// Key versions on the master after the last cycle.
    versions: usize,
    /// `b` and `c` removed each other at runtime (until re-added or restarted).
    peers_cut: bool,
}

fn parse_toml(path: &Path) -> Result<toml::Table, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?;
    text.parse().map_err(|e| Failure(format!("{}: {e}", path.display())))
}

fn listen_of(t: &toml::Table, section: &str) -> String {
    t.get(section)
        .and_then(|s| s.get("listen"))
        .and_then(|l| l.as_str())
        .unwrap_or_default()
        .to_owned()
}

impl Campaign {
    async fn new(dir: PathBuf, bin: PathBuf, seed: u64) -> Result<Self, Failure> {
        let mut lab = Lab::new(&dir, &CLUSTERS).map_err(|e| Failure(e.to_string()))?;
        for (i, x) in CLUSTERS.iter().enumerate() {
            for y in &CLUSTERS[i + 1..] {
                lab.peer(x, y);
            }
            let spec = lab.spec_mut(x);
            spec.hotpath = true;
            // The campaign is about durability, not about the password rate limits: a password
            // change whose answer was lost may need a second attempt to learn which password holds.
            spec.unlimited_password_attempts = true;
        }
        let mut daemons = BTreeMap::new();
        for id in CLUSTERS {
            let config = lab.write_config(&cid(id)).map_err(|e| Failure(e.to_string()))?;
            let t = parse_toml(&config)?;
            daemons.insert(
                id,
                Daemon {
                    id,
                    admin: listen_of(&t, "admin"),
                    peer: listen_of(&t, "peer"),
                    config,
                    log: dir.join(format!("{id}.log")),
                    child: None,
                },
            );
        }
        Ok(Self {
            ca: dir.join("pki").join("ca.pem"),
            dir,
            bin,
            _lab: lab,
            daemons,
            rng: Rng(seed),
            counts: Counts::default(),
            ledger: Arc::default(),
            routers: Vec::new(),
            stop_feeding: tokio::sync::watch::channel(false).0,
            password: "Torture-Horse-0-battery".into(),
            password_alt: None,
            password_serial: 0,
            versions: 0,
            peers_cut: false,
        })
    }

    fn spawn(&mut self, id: &'static str) -> Result<(), Failure> {
        let d = self.daemons.get_mut(id).expect("a cluster of the campaign");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&d.log)
            .map_err(|e| Failure(format!("cannot open {}: {e}", d.log.display())))?;
        let child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&d.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure(format!("cannot start {}: {e}", self.bin.display())))?;
        d.child = Some(child);
        Ok(())
    }

    fn client(&self, id: &str) -> Result<Client, ClientError> {
        let d = &self.daemons[id];
        let token =
            std::fs::read_to_string(d.token_file(&self.dir)).map_err(|e| ClientError::Read {
                what: "token file",
                path: d.token_file(&self.dir),
                reason: e.to_string(),
            })?;
        Client::new(Target {
            addr: d.admin.clone(),
            server_name: id.to_owned(),
            ca: self.ca.clone(),
            token: Zeroizing::new(token.trim().to_owned()),
        })
    }

    async fn request(
        &self,
        id: &str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<bytes::Bytes, ClientError> {
        let client = self.client(id)?;
        let body = body.map(|b| b.to_string().into_bytes());
        tokio::time::timeout(REQUEST_WITHIN, client.send(method, path, body))
            .await
            .unwrap_or_else(|_| Err(ClientError::Timeout { addr: self.daemons[id].admin.clone() }))
    }

    async fn status(&self, id: &str) -> Result<Status, ClientError> {
        let b = self.request(id, Method::GET, "/v1/status", None).await?;
        serde_json::from_slice(&b).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn wait_ready(&self, id: &str) -> Result<(), Failure> {
        let start = Instant::now();
        loop {
            match self.status(id).await {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > READY_WITHIN => {
                    return fail(format!("{id} did not answer within {READY_WITHIN:?}: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    async fn statuses(&self) -> Result<BTreeMap<&'static str, Status>, ClientError> {
        let mut out = BTreeMap::new();
        for id in CLUSTERS {
            out.insert(id, self.status(id).await?);
        }
        Ok(out)
    }

    /// The network agrees: `a` master, `b` and `c` its slaves, same domain, epoch, key versions
    /// and primary.
    fn agree(s: &BTreeMap<&'static str, Status>) -> bool {
        let m = &s[MASTER];
        m.role == Role::Master
            && s.iter().all(|(id, x)| {
                (*id == MASTER
                    || x.role == Role::Slave
                        && x.master.as_ref().is_some_and(|c| c.as_str() == MASTER))
                    && x.domain == m.domain
                    && x.epoch == m.epoch
                    && x.key_versions == m.key_versions
                    && x.primary_version == m.primary_version
            })
    }

    fn describe(s: &BTreeMap<&'static str, Status>) -> String {
        s.iter()
            .map(|(id, x)| {
                format!(
                    "{id}: {} epoch {:?} versions {} primary {:?} alarms [{}]",
                    x.role,
                    x.epoch.map(|e| e.to_string()),
                    x.key_versions.len(),
                    x.primary_version.map(|v| v.to_string()),
                    x.alarms
                        .iter()
                        .map(|a| format!("{:?}: {}", a.key.name, a.cause))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Waits until the network agrees, then until no alarm is active (or the grace period
    /// ends: what is left is stuck). Returns the master's status and the time to agreement.
    async fn converge(&mut self, since: Instant) -> Result<(Status, Duration), Failure> {
        let mut last = String::from("no status yet");
        let agreed = loop {
            if let Ok(s) = self.statuses().await {
                self.note_alarms(&s);
                if Self::agree(&s) {
                    break s;
                }
                last = Self::describe(&s);
            }
            if since.elapsed() > CONVERGE_WITHIN {
                return fail(format!("no convergence within {CONVERGE_WITHIN:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let took = since.elapsed();
        let calm = Instant::now();
        let mut s = agreed;
        loop {
            if s.values().all(|x| x.alarms.is_empty()) {
                break;
            }
            if calm.elapsed() > ALARM_GRACE {
                for (id, x) in &s {
                    for a in &x.alarms {
                        let name = format!("{:?}", a.key.name);
                        eprintln!("stuck alarm on {id}: {name}: {}", a.cause);
                        *self.counts.stuck_alarms.entry(name).or_default() += 1;
                    }
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            s = match self.statuses().await {
                Ok(s) if Self::agree(&s) => s,
                Ok(s) => {
                    return fail(format!("the network disagreed again: {}", Self::describe(&s)));
                }
                Err(e) => return fail(format!("status failed after convergence: {e}")),
            };
            self.note_alarms(&s);
        }
        Ok((s.remove(MASTER).expect("the master's status"), took))
    }

    fn note_alarms(&mut self, s: &BTreeMap<&'static str, Status>) {
        for (id, x) in s {
            for a in &x.alarms {
                let k = format!("{:?} on {id}", a.key.name);
                *self.counts.alarms_seen.entry(k).or_default() += 1;
            }
        }
    }

    /// Starts the network: daemons, encryption with remote enrolment, the routers.
    async fn start(&mut self, interval: Duration) -> Result<(), Failure> {
        for id in CLUSTERS {
            self.spawn(id)?;
        }
        for id in CLUSTERS {
            self.wait_ready(id).await?;
        }
        let body = serde_json::json!({ "password": self.password, "remote": true });
        self.request(MASTER, Method::POST, "/v1/encryption/enable", Some(body))
            .await
            .map_err(|e| Failure(format!("enable on {MASTER}: {e}")))?;
        let (m, took) = self.converge(Instant::now()).await?;
        self.versions = m.key_versions.len();
        println!(
            "enrolled in {} ms; alarms seen so far: {:?}",
            took.as_millis(),
            self.counts.alarms_seen
        );
        self.counts.alarms_seen.clear();
        for id in CLUSTERS {
            let r = self.start_router(id, interval)?;
            self.routers.push(r);
        }
        Ok(())
    }

    fn start_router(&self, id: &'static str, interval: Duration) -> Result<Router, Failure> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("archive-{id}.log")))
            .map_err(|e| Failure(format!("archiver log: {e}")))?;
        let mut child = Command::new(&self.bin)
            .arg("archive")
            .arg("--db")
            .arg(format!("sqlite:{}", self.archive_db(id).display()))
            .arg("--hotpath")
            .arg(self.dir.join("state").join(id).join("hotpath.sock"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure(format!("cannot start the archiver of {id}: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let ledger = self.ledger.clone();
        let mut stop = self.stop_feeding.subscribe();
        let feeder = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            for n in 1u64.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let mid = format!("{id}-{n:07}");
                let body = format!("torture {id} {n}");
                let line = serde_json::json!({
                    "message_id": mid,
                    "from": "alice@example.com",
                    "to": "bob@example.com",
                    "timestamp": 1_796_029_200_000i64 + n as i64,
                    "direction": "inbound",
                    "body": body,
                });
                ledger.lock().unwrap().sent.insert(mid, body);
                if stdin.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
            // Dropping stdin ends the archiver once it acknowledged everything.
        });
        let ledger = self.ledger.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else { continue };
                let mid = v["message_id"].as_str().unwrap_or_default().to_owned();
                let mut g = ledger.lock().unwrap();
                match v["result"].as_str() {
                    Some("archived") => {
                        g.archived.insert(mid);
                    }
                    Some("refused") => {
                        g.refused.insert(mid);
                    }
                    _ => {
                        g.other.insert(mid, l);
                    }
                }
            }
        });
        Ok(Router { child, feeder, reader })
    }

    fn archive_db(&self, id: &str) -> PathBuf {
        self.dir.join(format!("archive-{id}.db"))
    }

    fn next_password(&mut self) -> String {
        self.password_serial += 1;
        format!("Torture-Horse-{}-battery", self.password_serial)
    }

    /// One cycle: an act, a kill at a random moment of it, the restart, and the checks.
    async fn cycle(&mut self, n: u64) -> Result<(), Failure> {
        let op: &'static str = match self.rng.below(100) {
            0..30 => "rotation",
            30..55 => "password change",
            55..75 => "peer change",
            _ => "archiving only",
        };
        let victim = CLUSTERS[self.rng.below(3) as usize];
        // Half the kills within 5 ms of the request (inside a rotation or a password hash,
        // before its state write or just after), the others up to 60 ms (during the sync to
        // the slaves and the hot paths' key reloads).
        let spread = if self.rng.below(2) == 0 { 5_000 } else { 60_000 };
        let delay = Duration::from_micros(self.rng.below(spread));
        let new_password = self.next_password();
        let before = self.versions;
        // The act and the kill race: the kill lands before, during or after the act and the
        // sync that follows it.
        let mut victim_child = self.daemons.get_mut(victim).and_then(|d| d.child.take());
        let act = async {
            match op {
                "rotation" => {
                    vec![answer_of(
                        &self.request(MASTER, Method::POST, "/v1/keys/rotate", None).await,
                    )]
                }
                "password change" => {
                    let body = serde_json::json!({
                        "old_password": self.password, "new_password": new_password,
                    });
                    vec![answer_of(
                        &self.request(MASTER, Method::POST, "/v1/password", Some(body)).await,
                    )]
                }
                "peer change" => {
                    let (rb, rc) = if self.peers_cut {
                        tokio::join!(self.add_peer("b", "c"), self.add_peer("c", "b"))
                    } else {
                        tokio::join!(
                            self.request("b", Method::DELETE, "/v1/peers/c", None),
                            self.request("c", Method::DELETE, "/v1/peers/b", None),
                        )
                    };
                    vec![answer_of(&rb), answer_of(&rc)]
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    vec![]
                }
            }
        };
        let kill = async {
            tokio::time::sleep(delay).await;
            if let Some(c) = victim_child.as_mut() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        };
        let (answers, ()) = tokio::join!(act, kill);
        drop(victim_child);
        self.counts.kills += 1;
        *self.counts.kills_by_op.entry(op).or_default() += 1;
        *self.counts.kills_by_cluster.entry(victim).or_default() += 1;
        let restarted = Instant::now();
        self.spawn(victim)?;
        self.wait_ready(victim).await?;
        if op == "peer change" {
            self.counts.peer_changes += 1;
            self.peers_cut = !self.peers_cut;
            if !self.peers_cut {
                self.restore_peers().await;
            }
        }
        // A runtime peer change lasts until restart: a restarted b or c has its peer back from
        // the config, so the other side gets it back too.
        if self.peers_cut && victim != MASTER {
            self.peers_cut = false;
            self.restore_peers().await;
        }
        let (master, took) = self.converge(restarted).await.map_err(|e| {
            Failure(format!("kill {n} ({op}, {victim} killed after {delay:?}): {e}"))
        })?;
        self.counts.converge_ms.push(took.as_millis() as u64);
        let after = master.key_versions.len();
        match op {
            "rotation" => {
                let a = answers[0];
                *self.counts.rotations.entry(answer_name(a)).or_default() += 1;
                let ok = match a {
                    Answer::Acked => after == before + 1,
                    Answer::Refused => after == before,
                    Answer::Lost => after == before || after == before + 1,
                };
                if !ok {
                    self.violation(format!(
                        "kill {n}: rotation {a:?} ({victim} killed after {delay:?}): key versions {before} -> {after}"
                    ));
                }
            }
            _ if after != before => self.violation(format!(
                "kill {n}: key versions {before} -> {after} without a rotation ({op})"
            )),
            _ => {}
        }
        self.versions = after;
        if op == "password change" {
            let a = answers[0];
            *self.counts.password_changes.entry(answer_name(a)).or_default() += 1;
            match a {
                Answer::Acked => {
                    self.password = new_password;
                    self.password_alt = None;
                }
                Answer::Refused => {}
                Answer::Lost => self.password_alt = Some(new_password),
            }
            self.check_password(n).await?;
        }
        Ok(())
    }

    /// Learns which password the master holds when the last change went unanswered, and
    /// records a violation when it is not the one the acknowledgements say.
    async fn check_password(&mut self, n: u64) -> Result<(), Failure> {
        let Some(alt) = self.password_alt.take() else { return Ok(()) };
        // A change to a third password tells which of the two is current.
        let probe = self.next_password();
        for candidate in [self.password.clone(), alt] {
            let body = serde_json::json!({ "old_password": candidate, "new_password": probe });
            match self.request(MASTER, Method::POST, "/v1/password", Some(body)).await {
                Ok(_) => {
                    self.password = probe;
                    return Ok(());
                }
                Err(ClientError::Api { code, .. }) if code == "wrong_password" => continue,
                Err(e) => return fail(format!("kill {n}: password probe: {e}")),
            }
        }
        self.violation(format!("kill {n}: neither the old nor the new password is accepted"));
        fail("the master's password is unknown: the campaign cannot go on")
    }

    /// Peers `on` with `peer` at runtime (`imcrypt peers add`).
    async fn add_peer(&self, on: &str, peer: &str) -> Result<bytes::Bytes, ClientError> {
        let body = serde_json::json!({ "id": peer, "address": self.daemons[peer].peer });
        self.request(on, Method::POST, "/v1/peers", Some(body)).await
    }

    async fn restore_peers(&self) {
        // "Already a peer" answers are fine: a restart restored it from the config.
        let _ = tokio::join!(self.add_peer("b", "c"), self.add_peer("c", "b"));
    }

    fn violation(&mut self, msg: String) {
        eprintln!("VIOLATION {msg}");
        self.counts.violations.push(msg);
    }

    /// Downloads the key set and reads every archive back: each event acknowledged
    /// `archived` before this call must decrypt to what was sent.
    async fn verify(&mut self, label: &str) -> Result<Verified, Failure> {
        let (archived, refused) = {
            let g = self.ledger.lock().unwrap();
            (g.archived.clone(), g.refused.clone())
        };
        let pw = self.dir.join("password");
        std::fs::write(&pw, &self.password).map_err(|e| Failure(e.to_string()))?;
        let export = self.dir.join("export.json");
        let (private, public) = self.admin_key_pair()?;
        let out = self
            .run(&[
                "key".as_ref(),
                "download".as_ref(),
                "--config".as_ref(),
                self.daemons[MASTER].config.as_os_str(),
                "--public-key".as_ref(),
                public.as_os_str(),
                "--out".as_ref(),
                export.as_os_str(),
                "--force".as_ref(),
                "--password-file".as_ref(),
                pw.as_os_str(),
            ])
            .await?;
        if !out.status.success() {
            return fail(format!("key download: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let mut v = Verified::default();
        let mut rows = Vec::new();
        for id in CLUSTERS {
            let db = format!("sqlite:{}", self.archive_db(id).display());
            let out = self
                .run(&[
                    "view".as_ref(),
                    "--db".as_ref(),
                    db.as_ref(),
                    "--export".as_ref(),
                    export.as_os_str(),
                    "--private-key".as_ref(),
                    private.as_os_str(),
                    "--output".as_ref(),
                    "json".as_ref(),
                ])
                .await?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                eprintln!(
                    "{label}: view of {id} exited {:?}: {}",
                    out.status.code(),
                    stderr.trim()
                );
                v.undecryptable += stderr.lines().filter(|l| !l.trim().is_empty()).count() as u64;
            }
            rows.push(out.stdout);
        }
        // Every row read was sent before it was read: the bodies sent are taken after the
        // reading (the acknowledgements before it, so that each of them must be found).
        let sent = self.ledger.lock().unwrap().sent.clone();
        let mut seen = BTreeSet::new();
        for out in rows {
            for line in String::from_utf8_lossy(&out).lines() {
                let Ok(row) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                let mid = row["message_id"].as_str().unwrap_or_default().to_owned();
                v.rows += 1;
                if row["encrypted"] != serde_json::Value::Bool(true) {
                    v.plaintext += 1;
                }
                if sent.get(&mid).map(String::as_str) != row["body"].as_str() {
                    v.wrong_body += 1;
                }
                if refused.contains(&mid) {
                    v.refused_but_stored += 1;
                }
                seen.insert(mid);
            }
        }
        for mid in &archived {
            if seen.contains(mid) {
                v.verified += 1;
            } else {
                v.lost += 1;
                if v.lost <= 10 {
                    eprintln!(
                        "{label}: acknowledged {mid} is not in the archive or does not decrypt"
                    );
                }
            }
        }
        v.acknowledged = archived.len() as u64;
        self.counts.verifications += 1;
        Ok(v)
    }

    fn admin_key_pair(&self) -> Result<(PathBuf, PathBuf), Failure> {
        let (sk, pk) = (self.dir.join("admin.pem"), self.dir.join("admin.pub.pem"));
        if !pk.exists() {
            for args in [
                vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out"],
                vec!["pkey", "-pubout", "-out", pk.to_str().unwrap_or_default(), "-in"],
            ] {
                let ok = std::process::Command::new("openssl")
                    .args(args)
                    .arg(&sk)
                    .stderr(Stdio::null())
                    .status()
                    .map_err(|e| Failure(format!("openssl: {e}")))?;
                if !ok.success() {
                    return fail("openssl could not make the administrator's key pair");
                }
            }
        }
        Ok((sk, pk))
    }

    async fn run(&self, args: &[&std::ffi::OsStr]) -> Result<std::process::Output, Failure> {
        let child = Command::new(&self.bin)
            .args(args)
            .env_remove("IMCRYPT_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(120), child)
            .await
            .map_err(|_| Failure(format!("imcrypt {args:?} ran over 120 s")))?
            .map_err(|e| Failure(format!("imcrypt {args:?}: {e}")))
    }

    /// Waits until every event sent so far has its acknowledgement (bounded).
    async fn drain(&self) -> Result<(), Failure> {
        let start = Instant::now();
        loop {
            let pending = {
                let g = self.ledger.lock().unwrap();
                g.sent.len().saturating_sub(g.archived.len() + g.refused.len() + g.other.len())
            };
            if pending == 0 {
                return Ok(());
            }
            if start.elapsed() > DRAIN_WITHIN {
                return fail(format!(
                    "{pending} events still unacknowledged after {DRAIN_WITHIN:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(&mut self) -> Result<Verified, Failure> {
        let _ = self.stop_feeding.send(true);
        for r in &mut self.routers {
            let _ = (&mut r.feeder).await;
        }
        self.drain().await?;
        for r in &mut self.routers {
            let _ = tokio::time::timeout(DRAIN_WITHIN, r.child.wait()).await;
            let _ = (&mut r.reader).await;
        }
        self.verify("final").await
    }

    /// Reads the daemons' and archivers' logs: panics, and every alarm raise by name (also
    /// those raised and cleared between two status polls, which the cycles cannot see).
    fn read_logs(&self) -> (u64, BTreeMap<String, u64>) {
        let (mut panics, mut raises) = (0, BTreeMap::new());
        for id in CLUSTERS {
            for f in [self.daemons[id].log.clone(), self.dir.join(format!("archive-{id}.log"))] {
                let Ok(t) = std::fs::read_to_string(&f) else { continue };
                panics += t.matches("panicked").count() as u64;
                for l in t.lines() {
                    if let Some(rest) = l.split("alarm raised alarm=\"").nth(1) {
                        let name = rest.split('"').next().unwrap_or_default();
                        *raises.entry(format!("{name} on {id}")).or_default() += 1;
                    }
                }
            }
        }
        (panics, raises)
    }
}

fn answer_name(a: Answer) -> &'static str {
    match a {
        Answer::Acked => "acknowledged",
        Answer::Refused => "refused",
        Answer::Lost => "answer lost in the kill",
    }
}

/// What one read-back of the archives found.
#[derive(Debug, Default)]
struct Verified {
    acknowledged: u64,
    verified: u64,
    lost: u64,
    rows: u64,
    plaintext: u64,
    wrong_body: u64,
    refused_but_stored: u64,
    undecryptable: u64,
}

impl Verified {
    fn clean(&self) -> bool {
        self.lost == 0
            && self.plaintext == 0
            && self.wrong_body == 0
            && self.refused_but_stored == 0
            && self.undecryptable == 0
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(args: Args, dir: PathBuf, bin: PathBuf, seed: u64) -> Result<bool, Failure> {
    let mut c = Campaign::new(dir, bin, seed).await?;
    c.start(Duration::from_millis(args.event_interval_ms)).await?;
    let started = Instant::now();
    let mut clean = true;
    for n in 1..=args.kills {
        c.cycle(n).await?;
        if n % args.verify_every == 0 && n < args.kills {
            let v = c.verify(&format!("after {n} kills")).await?;
            if !v.clean() {
                eprintln!("after {n} kills: {v:?}");
                clean = false;
            }
            println!(
                "after {n} kills ({:.0} s): {} acknowledged, {} verified, {} lost, {} rows read",
                started.elapsed().as_secs_f64(),
                v.acknowledged,
                v.verified,
                v.lost,
                v.rows
            );
        }
    }
    let v = c.finish().await?;
    if !v.clean() {
        eprintln!("final read-back: {v:?}");
        clean = false;
    }
    let counts = &c.counts;
    let mut ms = counts.converge_ms.clone();
    ms.sort_unstable();
    let (sent, refused, other) = {
        let g = c.ledger.lock().unwrap();
        (g.sent.len(), g.refused.len(), g.other.len())
    };
    let stuck: u64 = counts.stuck_alarms.values().sum();
    let (panics, raises) = c.read_logs();
    println!("== kill campaign: seed {seed}, {:.0} s", started.elapsed().as_secs_f64());
    println!("kills                      {}", counts.kills);
    println!("  by act                   {:?}", counts.kills_by_op);
    println!("  by cluster               {:?}", counts.kills_by_cluster);
    println!("rotations                  {:?}", counts.rotations);
    println!("password changes           {:?}", counts.password_changes);
    println!("peer changes               {}", counts.peer_changes);
    println!("events sent                {sent}");
    println!("records acknowledged       {}", v.acknowledged);
    println!("records verified           {} (decrypted to the body sent)", v.verified);
    println!("records lost               {}", v.lost);
    println!(
        "rows read back             {} ({} plaintext, {} wrong body, {} undecryptable)",
        v.rows, v.plaintext, v.wrong_body, v.undecryptable
    );
    println!(
        "events refused             {refused} ({} of them stored anyway)",
        v.refused_but_stored
    );
    println!("other acknowledgements     {other}");
    println!("stuck alarms               {stuck} {:?}", counts.stuck_alarms);
    println!("alarms seen in cycles      {:?}", counts.alarms_seen);
    println!("alarm raises in the logs   {raises:?} (enrolment included)");
    println!("acknowledgement violations {}", counts.violations.len());
    println!("panics in logs             {panics}");
    println!(
        "convergence after restart  median {} ms, p90 {} ms, max {} ms",
        percentile(&ms, 0.5),
        percentile(&ms, 0.9),
        ms.last().copied().unwrap_or(0)
    );
    println!("read-backs                 {}", counts.verifications);
    Ok(clean && stuck == 0 && counts.violations.is_empty() && panics == 0 && other == 0)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the OS random source");
        u64::from_le_bytes(b)
    });
    let bin = args.bin.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("the example's path");
        exe.parent().and_then(Path::parent).expect("target/PROFILE/examples").join("imcrypt")
    });
    let (_tmp, dir) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).expect("the campaign directory");
            (None, d.clone())
        }
        None => {
            let t = tempfile::tempdir().expect("a temporary directory");
            let d = t.path().to_owned();
            (Some(t), d)
        }
    };
    println!(
        "kill campaign: {} kills, seed {seed}, in {}, binary {}",
        args.kills,
        dir.display(),
        bin.display()
    );
    match run(args, dir, bin, seed).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("kill campaign: FAILED (see the counts above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kill campaign: FAILED: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
