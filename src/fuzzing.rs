//! The entry points of the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer): one function per
//! parser that takes input from outside the process, each fed arbitrary bytes.
//!
//! The parsers themselves stay `pub(crate)`; this one hidden module is what the fuzz crate and
//! `tests/fuzz_corpus.rs` (which replays every seed of `fuzz/corpus/` on the stable toolchain,
//! so a seed that panics fails CI) may call. Not an API: it may change with any release.
//!
//! Invariants every entry point checks: no input panics, aborts or reads out of bounds; what
//! goes in as outside input comes out as a typed error or as a value that passes the same
//! checks the daemon applies next. Each returns `true` when the input was accepted all the way
//! (parsed and validated), so the corpus test can check that the seeds still reach past the
//! parser after a format change.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use zeroize::Zeroizing;

use crate::admin::api;
use crate::cluster::{
    Cluster, ClusterConfig, ComplianceDb, Entropy, NodeId, PeerMessage, PersistedState, Time,
};
use crate::config::Config;
use crate::crypto::aead::AeadImpl;
use crate::crypto::export::{KeyExport, Unwrapper, parse_public_key};
use crate::crypto::keyring::KeyRing;
use crate::crypto::password::{Password, check_policy};
use crate::crypto::random::NonceSource;
use crate::crypto::record::RecordOpener;
use crate::crypto::seal::{NodeKey, Purpose};
use crate::hotpath::frame::{self, Request, Response};
use crate::hotpath::session::{Limits, Next, Session};
use crate::hotpath::{KeySource, MemoryReservations};
use crate::ids::{ClusterId, DomainId};
use crate::store::SealedFile;

/// One fuzz target: its name (the binary in `fuzz/` and the directory under `fuzz/corpus/`)
/// and its entry point.
pub type Target = (&'static str, fn(&[u8]) -> bool);

/// Every fuzz target, in the order `scripts/fuzz.sh` runs them.
pub const TARGETS: &[Target] = &[
    ("peer_message", peer_message),
    ("admin_body", admin_body),
    ("config", config),
    ("key_export", key_export),
    ("sealed_state", sealed_state),
    ("archive_event", archive_event),
    ("frame", frame),
    ("session", session),
    ("record", record),
    ("audit_record", audit_record),
];

/// The entry point of the target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8]) -> bool> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The domain of the fixed key ring the record and hot-path targets use (the seeds are sealed
/// under it).
const DOMAIN: DomainId = DomainId::from_bytes([1; 16]);

fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        let mut r = KeyRing::new(DOMAIN, 1_700_000_000, Zeroizing::new([2; 32]));
        r.rotate(1_700_000_100, Zeroizing::new([3; 32])).expect("a second version");
        r
    })
}

/// The cluster that receives the fuzzed peer messages, and the peer that sends them.
const RECEIVER: &str = "fuzz-b";
const SENDER: &str = "fuzz-a";

fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("a valid cluster id")
}

/// Peer messages as the peer server receives them (one JSON document per line; a line that
/// does not parse is what the server answers 400): each parsed message must serialize back to
/// itself, and is delivered to an eligible cluster that has the sender as its peer. After every
/// message, the state the machine asks to persist must load again as it would at a restart.
pub fn peer_message(data: &[u8]) -> bool {
    let config = ClusterConfig::new(cid(RECEIVER));
    let mut state = PersistedState::new(cid(RECEIVER));
    for n in ["n1", "n2"] {
        state.nodes.insert(NodeId::new(n).expect("valid"), Some(ComplianceDb::SqlServer));
    }
    state.peers.insert(cid(SENDER));
    let mut c = Cluster::new(config.clone(), state, Time::from_unix_millis(1_000_000))
        .expect("a fresh state loads");
    let from = cid(SENDER);
    let mut all = true;
    let mut now = 1_000_000;
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(msg) = serde_json::from_slice::<PeerMessage>(line) else {
            all = false;
            continue;
        };
        let again = serde_json::to_vec(&msg).expect("a peer message serializes");
        let back: PeerMessage = serde_json::from_slice(&again).expect("what we send parses");
        assert_eq!(back, msg, "a peer message changes in a JSON round trip");
        now += 1_000;
        c.handle_peer_message(&from, msg, Time::from_unix_millis(now)).expect("a known peer");
        drain(&mut c, &config, now);
    }
    // Then a long silence: the timers (hello, master unreachable, rotation by age) run.
    now += 10 * 24 * 3600 * 1000;
    let entropy = Entropy { key: Zeroizing::new([9; 32]), domain: [8; 16], salt: [7; 16] };
    c.handle_timeout(Time::from_unix_millis(now), entropy);
    drain(&mut c, &config, now);
    all
}

/// Carries nothing out, but checks that every state the machine persists loads again.
fn drain(c: &mut Cluster, config: &ClusterConfig, now: u64) {
    while let Some(e) = c.poll_effect() {
        if let crate::cluster::Effect::Persist(s) = e {
            let json = serde_json::to_vec(&s).expect("a state serializes");
            let back: PersistedState = serde_json::from_slice(&json).expect("a state re-parses");
            assert_eq!(back, *s, "a persisted state changes in a JSON round trip");
            Cluster::new(config.clone(), back, Time::from_unix_millis(now))
                .expect("a state the machine persisted loads at restart");
        }
    }
}

/// Admin request bodies: the body of every route that takes one, through the same parse and
/// the same value checks the admin API applies before a command reaches the state machine
/// (the password policy, the RSA public key, peer and node names, the archiver), and the route
/// table on the text as a path.
pub fn admin_body(data: &[u8]) -> bool {
    fn parse<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
        serde_json::from_slice(data).ok()
    }
    if let Ok(path) = std::str::from_utf8(data) {
        for method in ["GET", "POST", "PUT", "DELETE"] {
            let _ = api::find(method, path);
        }
    }
    let policy = |p: &Zeroizing<String>| check_policy(&Password::new(p.as_str()), None).is_ok();
    let mut accepted = false;
    if let Some(b) = parse::<api::EnableRequest>(data) {
        accepted |= policy(&b.password);
    }
    if let Some(b) = parse::<api::DisableRequest>(data) {
        accepted |= !b.password.is_empty();
    }
    accepted |= parse::<api::RemoteRequest>(data).is_some();
    if let Some(b) = parse::<api::PasswordChangeRequest>(data) {
        accepted |= policy(&b.new_password);
    }
    if let Some(b) = parse::<api::DownloadRequest>(data)
        && let Ok(r) = parse_public_key(&b.public_key_pem)
    {
        assert!(r.bits() >= 2048, "a weak key was accepted");
        accepted = true;
    }
    if let Some(b) = parse::<api::AddPeerRequest>(data) {
        accepted |= ClusterId::new(b.id.as_str()).is_ok() && b.address.contains(':');
    }
    if let Some(b) = parse::<api::AddNodeRequest>(data) {
        accepted |=
            NodeId::new(b.id.as_str()).is_ok() && ComplianceDb::parse_archiver(&b.archiver).is_ok();
    }
    accepted
}

/// Config files (TOML text): parsed and validated as at start-up (the files the alarm sinks
/// name are not read).
pub fn config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    Config::parse(text, Path::new("/etc/imcrypt")).is_ok()
}

/// The fixed RSA key the key-export seeds are wrapped for: 2048 bits, drawn from a seeded
/// ChaCha20 (a test fixture, not a secret; deterministic, so nothing is committed).
fn unwrapper() -> &'static Unwrapper {
    static U: OnceLock<Unwrapper> = OnceLock::new();
    U.get_or_init(|| Unwrapper::from_key(fuzz_rsa_key()).expect("an RSA key"))
}

fn fuzz_rsa_key() -> rsa::PrivateKey {
    use rand_core::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([42; 32]);
    rsa::PrivateKey::new(&mut rng, 2048).expect("an RSA key")
}

/// Key export documents, as the data viewer reads a download: parsed, then unwrapped with the
/// fixed private key (fingerprint, base64, RSA-OAEP, check values, the ring's consistency).
pub fn key_export(data: &[u8]) -> bool {
    let Ok(doc) = serde_json::from_slice::<KeyExport>(data) else { return false };
    match unwrapper().unwrap_export(&doc) {
        Ok(ring) => {
            assert_eq!(ring.domain(), doc.domain);
            assert_eq!(ring.keys().count(), doc.keys.len(), "an export unwrapped in part");
            true
        }
        Err(_) => false,
    }
}

/// Sealed state files: the bytes of `state.sealed` (header, authentication, JSON), and, since
/// random bytes never authenticate, a JSON document sealed here first so that the state's
/// parser and the start from a loaded state are reached too. A file that loads must start the
/// state machine or be refused with an error.
pub fn sealed_state(data: &[u8]) -> bool {
    let file = SealedFile::new("/fuzz/state.sealed", &NodeKey::from_bytes([5; 32]), Purpose::State);
    let bytes = if data.starts_with(b"IMCSTATE") {
        Zeroizing::new(data.to_vec())
    } else {
        file.seal_json(data)
    };
    let Ok(state) = file.decode::<PersistedState>(&bytes) else { return false };
    let config = ClusterConfig::new(state.cluster.clone());
    let Ok(mut c) = Cluster::new(config, state, Time::from_unix_millis(1_000_000)) else {
        return false;
    };
    while c.poll_effect().is_some() {}
    true
}

/// Archive event lines (JSON, docs/archive.md "Input"), parsed and split into rows.
pub fn archive_event(data: &[u8]) -> bool {
    let Ok(line) = std::str::from_utf8(data) else { return false };
    match crate::archive::event::Event::parse(line) {
        Ok(e) => {
            assert!(!e.rows().is_empty(), "an accepted event has a row per recipient");
            true
        }
        Err(_) => false,
    }
}

/// Hot-path frames, both directions: no read past the input, and a decoded ENCRYPT yields
/// exactly `count` records that re-encode to the same bytes. The first two bytes choose the
/// limits.
pub fn frame(data: &[u8]) -> bool {
    let (limits, bytes) = data.split_at(data.len().min(2));
    let max_frame = 64 + u32::from(limits.first().copied().unwrap_or(0)) * 256;
    let max_batch = u32::from(limits.get(1).copied().unwrap_or(255));
    let mut accepted = false;
    let mut rest = bytes;
    while let Ok(Some((req, n))) = frame::decode_request(rest, max_frame, max_batch) {
        assert!(n <= rest.len());
        accepted = true;
        if let Request::Encrypt { request_id, records } = req {
            assert_eq!(records.iter().count(), records.len());
            let mut again = Vec::new();
            frame::encode_encrypt(
                &mut again,
                request_id,
                records.iter().collect::<Vec<_>>().into_iter(),
            );
            assert_eq!(&again[..], &rest[..n]);
        }
        rest = &rest[n..];
    }
    let mut rest = bytes;
    while let Ok(Some((_, n))) = frame::decode_response(rest, max_frame) {
        assert!(n <= rest.len());
        rest = &rest[n..];
    }
    accepted
}

fn keys() -> &'static KeySource {
    static K: OnceLock<KeySource> = OnceLock::new();
    K.get_or_init(|| {
        let ks = KeySource::new(cid("fuzz"), AeadImpl::Ring, Arc::new(MemoryReservations::new()))
            .expect("a key source");
        ks.set_ring(Some(ring())).expect("the ring is taken");
        ks
    })
}

/// A hot-path server session fed arbitrary bytes after a valid HELLO: every answer frame is
/// well formed, and nothing is answered after a closing error.
pub fn session(data: &[u8]) -> bool {
    let mut input = Vec::new();
    frame::encode_hello(&mut input, 1, 1);
    input.extend_from_slice(data);
    let mut s =
        Session::new(Limits { max_frame: 1 << 16, max_batch: 64 }, NonceSource::from_seed([0; 32]));
    let mut out = Vec::new();
    let p = s.handle(&input, keys(), &mut out, true);
    assert!(p.used <= input.len());
    assert_ne!(p.next, Next::WaitForReservation);
    let mut rest = &out[..];
    let mut closed = false;
    while let Some((r, n)) =
        frame::decode_response(rest, u32::MAX).expect("answers are well formed")
    {
        assert!(!closed, "an answer after a closing error");
        if let Response::Error { closes: true, .. } = r {
            closed = true;
        }
        rest = &rest[n..];
    }
    assert!(rest.is_empty());
    assert_eq!(closed, p.next == Next::Close);
    !closed
}

/// Archived records as the viewer reads them: byte 0 is the metadata length L, bytes 1..1+L
/// the caller's metadata, the rest the record. Opened with both AEAD implementations, which
/// must agree.
pub fn record(data: &[u8]) -> bool {
    let Some((&l, rest)) = data.split_first() else { return false };
    let (metadata, rec) = rest.split_at(rest.len().min(usize::from(l)));
    let a = RecordOpener::new(ring(), AeadImpl::Ring).open(rec, metadata);
    let b = RecordOpener::new(ring(), AeadImpl::RustCrypto).open(rec, metadata);
    match (a, b) {
        (Ok(x), Ok(y)) => {
            assert_eq!(*x, *y, "the AEAD implementations disagree");
            true
        }
        (Err(x), Err(y)) => {
            assert_eq!(x, y, "the AEAD implementations disagree");
            false
        }
        (a, b) => panic!("the AEAD implementations disagree: {:?} vs {:?}", a.is_ok(), b.is_ok()),
    }
}

/// Audit trail lines, as `imcrypt audit verify` and the daemon's start read `audit.log`: each
/// line parsed, the chain checked. A record that parses writes back to a line that parses to
/// the same record. Accepted when the whole input is an intact chain.
pub fn audit_record(data: &[u8]) -> bool {
    use crate::audit::chain::{Verifier, parse_line};
    if let Some(first) = data.split(|&b| b == b'\n').next()
        && let Ok(e) = parse_line(first)
    {
        let again = parse_line(e.line().as_bytes()).expect("a written record parses");
        assert_eq!(again, e, "a record changed on its way through a write");
    }
    let mut v = Verifier::new();
    v.push_bytes(data, Path::new("/fuzz/audit.log")).is_ok() && v.finish().is_ok()
}

#[cfg(test)]
mod tests {
    //! The seed corpus of `fuzz/corpus/`: valid inputs made with the real encoders. Written by
    //! `IMCRYPT_WRITE_SEEDS=1 cargo test --lib fuzzing::tests::write_seed_corpus -- --ignored`
    //! after a format change (the files are committed; `tests/fuzz_corpus.rs` replays them).

    use std::path::PathBuf;

    use rsa::pkcs8::EncodePublicKey;

    use super::*;
    use crate::cluster::Command;
    use crate::cluster::sim::{Network, Op, PASSWORDS};
    use crate::crypto::export::export_ring;
    use crate::crypto::record::RecordSealer;

    struct Seeds {
        dir: PathBuf,
        n: usize,
    }

    impl Seeds {
        fn new(target: &str) -> Self {
            assert!(super::target(target).is_some(), "{target} is not a fuzz target");
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self { dir, n: 0 }
        }

        fn add(&mut self, name: &str, bytes: &[u8]) {
            self.n += 1;
            std::fs::write(self.dir.join(format!("{:02}-{name}", self.n)), bytes).unwrap();
        }
    }

    /// Named seeds of one kind.
    type Named<T> = Vec<(String, T)>;

    /// Master `fuzz-a` and slave `fuzz-b` through enrolment, rotation and disable; every
    /// message in the order sent, and the persisted states along the way.
    fn scenario() -> (Named<PeerMessage>, Named<PersistedState>) {
        let mut net = Network::default();
        let (a, b) = (net.add_cluster(SENDER), net.add_cluster(RECEIVER));
        let mut msgs = Vec::new();
        let mut states = vec![("off".to_owned(), net.get(&b).disk.clone())];
        let run = |net: &mut Network, step: &str, msgs: &mut Named<PeerMessage>| {
            while let Some(e) = net.in_flight().first().cloned() {
                msgs.push((format!("{step}-{}-to-{}", e.from, e.to), e.msg));
                net.apply(&Op::Deliver(0));
            }
        };
        net.peer(&a, &b);
        run(&mut net, "peer", &mut msgs);
        let password = Password::new(PASSWORDS[0]);
        net.command(&a, Command::Enable { password, remote: true }).unwrap();
        run(&mut net, "enable", &mut msgs);
        states.push(("master".into(), net.get(&a).disk.clone()));
        states.push(("slave".into(), net.get(&b).disk.clone()));
        net.command(&a, Command::RotateKey).unwrap();
        run(&mut net, "rotate", &mut msgs);
        states.push(("master-rotated".into(), net.get(&a).disk.clone()));
        let password = Password::new(PASSWORDS[0]);
        net.command(&a, Command::Disable { password, i_understand_data_loss: true }).unwrap();
        run(&mut net, "disable", &mut msgs);
        states.push(("master-tombstone".into(), net.get(&a).disk.clone()));
        states.push(("slave-left".into(), net.get(&b).disk.clone()));
        assert!(net.violations().is_empty(), "{:?}", net.violations());
        (msgs, states)
    }

    #[test]
    #[ignore = "writes fuzz/corpus/; run with IMCRYPT_WRITE_SEEDS=1 after a format change"]
    fn write_seed_corpus() {
        assert!(std::env::var_os("IMCRYPT_WRITE_SEEDS").is_some(), "set IMCRYPT_WRITE_SEEDS=1");
        let (msgs, states) = scenario();

        let mut s = Seeds::new("peer_message");
        let mut from_a = Vec::new();
        for (name, m) in &msgs {
            let json = serde_json::to_vec(m).unwrap();
            s.add(&format!("{name}.json"), &json);
            if name.contains(&format!("{SENDER}-to-")) {
                from_a.extend_from_slice(&json);
                from_a.push(b'\n');
            }
        }
        s.add("master-to-slave-sequence.jsonl", &from_a);

        let pem = fuzz_rsa_key().to_public_key().to_public_key_pem(Default::default()).unwrap();
        let mut s = Seeds::new("admin_body");
        let body = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
        let (p0, p1) = (PASSWORDS[0], PASSWORDS[1]);
        s.add("enable.json", &body(serde_json::json!({"password": p0, "remote": true})));
        s.add(
            "disable.json",
            &body(serde_json::json!({"password": p0, "i_understand_data_loss": true})),
        );
        s.add("remote.json", &body(serde_json::json!({"enabled": false})));
        s.add("password.json", &body(serde_json::json!({"old_password": p0, "new_password": p1})));
        s.add("download.json", &body(serde_json::json!({"password": p0, "public_key_pem": pem})));
        s.add("peer.json", &body(serde_json::json!({"id": "c3", "address": "127.0.0.1:7443"})));
        s.add("node.json", &body(serde_json::json!({"id": "n3", "archiver": "postgresql"})));

        let mut s = Seeds::new("config");
        let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/demo");
        for f in ["a.toml", "b.toml"] {
            s.add(f, &std::fs::read(demo.join(f)).unwrap());
        }

        let mut s = Seeds::new("key_export");
        let to = parse_public_key(&pem).unwrap();
        let two = serde_json::to_vec_pretty(&export_ring(ring(), &to, 1_700_000_200).unwrap());
        s.add("two-versions.json", &two.unwrap());
        let one = KeyRing::new(DOMAIN, 1_700_000_000, Zeroizing::new([2; 32]));
        s.add(
            "one-version.json",
            &serde_json::to_vec(&export_ring(&one, &to, 1).unwrap()).unwrap(),
        );

        let mut s = Seeds::new("sealed_state");
        let file =
            SealedFile::new("/fuzz/state.sealed", &NodeKey::from_bytes([5; 32]), Purpose::State);
        for (name, st) in &states {
            s.add(&format!("{name}.json"), &serde_json::to_vec(st).unwrap());
        }
        let master = serde_json::to_vec(&states[1].1).unwrap();
        s.add("master.sealed", &file.seal_json(&master));

        let mut s = Seeds::new("archive_event");
        s.add(
            "one.json",
            br#"{"message_id":"m1","from":"alice@example.com","to":"bob@example.com","timestamp":"2026-11-26T10:00:00Z","direction":"inbound","body":"hello"}"#,
        );
        s.add(
            "group.json",
            br#"{"message_id":"m-42","from":"alice@example.com","to":["bob@example.com","carol@example.com"],"timestamp":1764151200000,"direction":"outbound","body":"lunch?","room":"team"}"#,
        );

        let hello = {
            let mut v = Vec::new();
            frame::encode_hello(&mut v, 1, 1);
            v
        };
        let requests = {
            let mut v = Vec::new();
            let recs: [(&[u8], &[u8]); 2] = [(b"meta-1", b"hello"), (b"meta-2", &[0; 256])];
            frame::encode_encrypt(&mut v, 7, recs.into_iter());
            frame::encode_status_request(&mut v, 8);
            v
        };
        let mut s = Seeds::new("frame");
        s.add("hello", &[&[0xff, 64][..], &hello].concat());
        s.add("encrypt-status", &[&[0xff, 64][..], &requests].concat());
        let mut s = Seeds::new("session");
        s.add("encrypt-status", &requests);

        let mut s = Seeds::new("record");
        let c = cid("fuzz");
        let nonce = [6; 12];
        let v2 = RecordSealer::new(ring(), &c, AeadImpl::Ring, 0);
        let v1 = RecordSealer::new(&one, &c, AeadImpl::Ring, 0);
        for (name, sealer, meta, pt) in
            [("v2", &v2, &b"row-1"[..], &b"hello"[..]), ("v1-empty-metadata", &v1, b"", b"x")]
        {
            let rec = sealer.seal_with_fixed_nonce_for_docs(&nonce, meta, pt);
            s.add(name, &[&[meta.len() as u8][..], meta, &rec].concat());
        }
    }
}
