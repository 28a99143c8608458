//! `imcrypt demo`: the main job in one command, told as an operator would live it. Three
//! clusters on 127.0.0.1; encryption enabled on a and spread to b and c; routers on b and c
//! archive IM traffic (a group chat among it) sealed through their hot paths into an embedded
//! SQLite archive, before and after a key rotation; what a database administrator sees; an
//! administrator who makes an RSA key pair, downloads the key from the master and reads the
//! archive; then a fourth cluster d, master of its own domain, peered with c to raise
//! `MAencryptionMultiMaster` on both sides and clear it.
//!
//! With `--keep` the network stays up after the story, with the commands to try next, until
//! Ctrl-C. Everything lives in one temp dir, removed at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};

use super::archive::{self as story_archive, AFTER, BEFORE, ROOM};
use super::{Lab, LabError, has_alarm};
use crate::admin::api::Status;
use crate::alarm::AlarmName;
use crate::archive::{DbUrl, ViewFilter};
use crate::cluster::Command;
use crate::crypto::export::{KeyExport, Unwrapper};
use crate::crypto::password::Password;
use crate::ids::KeyVersion;

const WAIT: Duration = Duration::from_secs(20);
const PASSWORD: &str = "Demo-Passw0rd-for-a";

fn versions(s: &Status) -> String {
    let v: Vec<String> = s.key_versions.iter().map(|v| v.to_string()).collect();
    format!("[{}]", v.join(", "))
}

/// The domain and its term (`round.slot`), as `imcrypt status` shows them.
fn domain(s: &Status) -> String {
    match (s.domain, s.term) {
        (Some(d), Some(t)) => format!("{d} (term {t})"),
        (Some(d), None) => d.to_string(),
        (None, _) => "-".into(),
    }
}

fn step(step: &'static str) -> impl Fn(String) -> LabError {
    move |reason| LabError::Step { step, reason }
}

pub(crate) async fn run(keep: bool) -> Result<(), LabError> {
    let dir = tempfile::Builder::new()
        .prefix("imcrypt-demo-")
        .tempdir()
        .map_err(|source| LabError::Io { path: std::env::temp_dir(), source })?;
    println!("imcrypt demo: clusters a, b and c on 127.0.0.1 (work dir {})", dir.path().display());
    println!("(RUST_LOG=info shows the daemons' structured logs on stderr)");
    let mut lab = Lab::with_own_cas(dir.path(), &["a", "b", "c"])?;
    let mut result = story(&mut lab).await;
    if result.is_ok() && keep {
        result = keep_running(&lab).await;
    }
    if let Err(e) = &result {
        println!("\nthe demo failed: {e}");
    }
    lab.stop_all().await;
    println!("\nstopped every cluster; cleaning up {}", dir.path().display());
    result
}

async fn story(lab: &mut Lab) -> Result<(), LabError> {
    let archive_path = lab.dir().join("archive.db");
    let db = DbUrl::sqlite(&archive_path);
    println!(
        "\n1. a development CA of its own for each cluster (imcrypt pki init per cluster, \
         pki/ID/), and its certificate, its id as DNS name"
    );
    for id in ["a", "b", "c"] {
        let spec = lab.spec_mut(id);
        spec.hotpath = true;
        spec.nodes = vec![(format!("{id}-node1"), "sqlite".into())];
        spec.archive_db = Some(db.to_string());
        lab.start(id).await?;
    }
    for (x, y) in [("a", "b"), ("a", "c"), ("b", "c")] {
        lab.peer_by_token(x, y).await?;
    }
    println!(
        "2. started a, b and c with no peer configured, and peered each with the other two by \
         token (imcrypt peering token on one, peering establish on the other): mutual TLS 1.3, \
         each verified against the other's own CA; each has a hot path for its router and \
         archives to SQLite (archive.db)"
    );

    enable_and_enroll(lab).await?;

    let b = story_archive::start_archiver(
        &db,
        &lab.hotpath_socket("b"),
        lab.dir().join("b-archiver.sock"),
    )
    .await?;
    let c = story_archive::start_archiver(
        &db,
        &lab.hotpath_socket("c"),
        lab.dir().join("c-archiver.sock"),
    )
    .await?;
    println!("4. routers on b and c hand their IM traffic to the archiver (imcrypt archive)");
    let sockets = [("b", b.socket.as_path()), ("c", c.socket.as_path())];
    let mut numbered = 0;
    route_phase(
        &sockets,
        &BEFORE,
        &mut numbered,
        "messages archived as {rows} rows, sealed through {id}'s hot path",
    )
    .await?;
    println!(
        "   one of them is an ad hoc group chat, room {ROOM}: one row per recipient, three each"
    );

    rotate(lab).await?;
    route_phase(
        &sockets,
        &AFTER,
        &mut numbered,
        "more messages archived as {rows} rows after the rotation",
    )
    .await?;
    drop((b, c));

    what_the_dba_sees(&db, &archive_path).await?;
    let (export, private_pem) = download_key(lab).await?;
    read_the_archive(&db, &export, &private_pem).await?;
    multi_master(lab).await
}

/// Each cluster's router sends its part of one phase of the story (messages numbered on from
/// `numbered`, for their timestamps) and the outcome is printed with `what`, in which `{id}` and
/// `{rows}` stand for the cluster and the rows written.
async fn route_phase(
    sockets: &[(&str, &Path)],
    phase: &[(&str, &[story_archive::Message])],
    numbered: &mut usize,
    what: &str,
) -> Result<(), LabError> {
    for (id, messages) in phase {
        let socket = sockets
            .iter()
            .find(|(s, _)| s == id)
            .map(|(_, p)| *p)
            .ok_or_else(|| step("router")(format!("no archiver on cluster {id}")))?;
        let r = story_archive::route(socket, *numbered, messages).await?;
        *numbered += messages.len();
        let what = what.replace("{id}", id).replace("{rows}", &r.rows.to_string());
        println!("   {id}: {} {what}", r.messages);
    }
    Ok(())
}

async fn enable_and_enroll(lab: &Lab) -> Result<(), LabError> {
    let t = Instant::now();
    lab.daemon("a")?
        .command(Command::Enable { password: Password::new(PASSWORD), remote: true })
        .await?;
    let a = lab.status("a").await?;
    println!(
        "3. encryption enabled on a with \"enable on remote clusters\": a is master of domain {}, key versions {}",
        domain(&a),
        versions(&a)
    );
    for id in ["b", "c"] {
        let s = lab
            .wait_until(id, "slave of a", WAIT, |s| {
                s.role == crate::admin::api::Role::Slave
                    && s.master.as_ref().is_some_and(|m| m.as_str() == "a")
            })
            .await?;
        println!(
            "   {id}: slave of a in domain {}, key versions {} ({} ms after enable)",
            domain(&s),
            versions(&s),
            t.elapsed().as_millis()
        );
    }
    Ok(())
}

async fn rotate(lab: &Lab) -> Result<(), LabError> {
    let t = Instant::now();
    lab.daemon("a")?.command(Command::RotateKey).await?;
    let a = lab.status("a").await?;
    let primary = a.primary_version;
    println!(
        "5. key rotated on a: versions {}, primary {}",
        versions(&a),
        primary.map(|v| v.to_string()).unwrap_or_default()
    );
    for id in ["b", "c"] {
        let s = lab
            .wait_until(id, "holds the new key version", WAIT, |s| s.primary_version == primary)
            .await?;
        if let Some(v) = primary {
            hot_path_uses(lab, id, v).await?;
        }
        println!(
            "   {id}: holds versions {} with primary {} ({} ms after rotation)",
            versions(&s),
            primary.map(|v| v.to_string()).unwrap_or_default(),
            t.elapsed().as_millis()
        );
    }
    Ok(())
}

/// Waits until `id`'s hot path seals under `version`. It takes a new ring a moment after the
/// status shows it (the ring's first reservation is written to disk first); records archived
/// in between would still be sealed under the old version.
async fn hot_path_uses(lab: &Lab, id: &str, version: KeyVersion) -> Result<(), LabError> {
    use crate::hotpath::{Client, ClientConfig, KeyStatus};
    let client = Client::new(ClientConfig::new(lab.hotpath_socket(id)));
    let deadline = Instant::now() + WAIT;
    loop {
        match client.status().await {
            Ok(KeyStatus::On { key_version, .. }) if key_version == version => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(step("rotate")(format!(
                    "the hot path of {id} does not seal under key version {version}"
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn what_the_dba_sees(db: &DbUrl, file: &Path) -> Result<(), LabError> {
    let rows = story_archive::all_rows(db).await?;
    let encrypted = rows.iter().filter(|r| r.encrypted).count();
    println!(
        "6. what a database administrator sees: {} rows, {encrypted} of them encrypted",
        rows.len()
    );
    let row = rows
        .iter()
        .find(|r| r.room_idx.is_some())
        .ok_or_else(|| step("dba")("no group chat row in the archive".into()))?;
    println!("   SELECT * FROM imcrypt_archive WHERE id = {}:", row.id);
    for (column, value) in story_archive::dba_columns(row) {
        println!("     {column:<14} {value}");
    }
    let bytes = story_archive::database_bytes(file);
    let found: Vec<&str> =
        story_archive::bodies().filter(|b| story_archive::contains(&bytes, b)).collect();
    let names = ["alice", "bob@", "carol", "dave", ROOM];
    let named: Vec<&str> =
        names.iter().copied().filter(|n| story_archive::contains(&bytes, n)).collect();
    println!(
        "   no body, no participant, no room: of the {} message bodies, {} and of the names, \
         {} appear anywhere in the database file ({} bytes with its log)",
        story_archive::bodies().count(),
        found.len(),
        named.len(),
        bytes.len()
    );
    if !found.is_empty() || !named.is_empty() {
        return Err(step("dba")(format!("clear text in the database: {found:?} {named:?}")));
    }
    Ok(())
}

/// The administrator makes a key pair where the viewer runs (as `openssl genpkey` would) and
/// downloads the key from the master through the admin API, as `imcrypt key download` does.
async fn download_key(lab: &Lab) -> Result<(KeyExport, zeroize::Zeroizing<String>), LabError> {
    let keygen = step("RSA key pair");
    let key =
        rsa::PrivateKey::new(&mut getrandom::SysRng, 3072).map_err(|e| keygen(e.to_string()))?;
    let private_pem = key.to_pkcs8_pem(Default::default()).map_err(|e| keygen(e.to_string()))?;
    let public_pem = key
        .to_public_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| keygen(e.to_string()))?;
    let dir = lab.dir();
    let pem_bytes = zeroize::Zeroizing::new(private_pem.as_bytes().to_vec());
    crate::store::secret::load_or_create(&dir.join("admin.pem"), 1 << 16, || pem_bytes)
        .map_err(|e| keygen(format!("cannot write admin.pem: {e}")))?;
    std::fs::write(dir.join("admin.pub.pem"), &public_pem)
        .map_err(|source| LabError::Io { path: dir.join("admin.pub.pem"), source })?;
    println!(
        "7. the administrator makes an RSA-3072 key pair where the viewer runs: admin.pem (0600), \
         admin.pub.pem"
    );
    let args = crate::admin::client::ConnectArgs {
        config: Some(dir.join("a.toml")),
        ..Default::default()
    };
    let client = crate::admin::client::Client::new(args.target()?)?;
    let body = crate::admin::api::DownloadRequest {
        password: zeroize::Zeroizing::new(PASSWORD.into()),
        public_key_pem: public_pem,
    };
    let export: KeyExport =
        client.call(hyper::Method::POST, "/v1/keys/download", Some(&body)).await?;
    let text = serde_json::to_string_pretty(&export).map_err(|e| step("export")(e.to_string()))?;
    std::fs::write(dir.join("export.json"), text)
        .map_err(|source| LabError::Io { path: dir.join("export.json"), source })?;
    let v: Vec<String> = export.keys.iter().map(|k| k.version.to_string()).collect();
    println!(
        "   downloaded from master a (admin API, with the password): export.json holds key \
         versions [{}], each wrapped with RSA-OAEP-SHA256 for the key {}…",
        v.join(", "),
        &export.recipient_sha256[..16]
    );
    Ok((export, private_pem))
}

async fn read_the_archive(
    db: &DbUrl,
    export: &KeyExport,
    private_pem: &str,
) -> Result<(), LabError> {
    let unwrap = step("unwrap");
    let ring = Unwrapper::from_pem(private_pem)
        .and_then(|u| u.unwrap_export(export))
        .map_err(|e| unwrap(e.to_string()))?;
    let filter = ViewFilter {
        from: Some("alice@example.com".into()),
        room: Some(ROOM.into()),
        ..Default::default()
    };
    let (rows, bad) = crate::archive::view(db, Some(&ring), &filter).await?;
    if !bad.is_empty() {
        return Err(unwrap(format!("{} rows did not open", bad.len())));
    }
    let mut seen: Vec<String> =
        rows.iter().filter_map(|r| r.key_version.map(|v| v.to_string())).collect();
    seen.sort();
    seen.dedup();
    println!(
        "8. with admin.pem the administrator reads the archive: messages from alice@example.com \
         in room {ROOM}, {} rows under key versions [{}]",
        rows.len(),
        seen.join(", ")
    );
    println!(
        "   (imcrypt view --db sqlite:archive.db --export export.json --private-key admin.pem \
         --from alice@example.com --room {ROOM})"
    );
    for line in crate::archive::view::table(&rows).lines() {
        println!("   {line}");
    }
    Ok(())
}

async fn multi_master(lab: &mut Lab) -> Result<(), LabError> {
    println!(
        "9. cluster d joins later with a CA of its own, and its administrator enables encryption \
         there"
    );
    lab.add_member("d")?;
    lab.start("d").await?;
    lab.daemon("d")?
        .command(Command::Enable { password: Password::new("Other-Passw0rd-for-d"), remote: false })
        .await?;
    let d = lab.status("d").await?;
    println!("   d: master of its own domain {}", domain(&d));

    println!(
        "10. c is restarted with d added to its peers in its config file (with d's CA); d is \
         peered with c the same way"
    );
    lab.peer("c", "d");
    lab.restart("c").await?;
    let c = lab.status("c").await?;
    println!(
        "   c after the restart: {} of {}, versions {} (its state survived)",
        c.role,
        c.master.as_ref().map(|m| m.to_string()).unwrap_or_default(),
        versions(&c)
    );
    lab.restart("d").await?;
    let t = Instant::now();
    for (id, other) in [("c", "d"), ("d", "c")] {
        let s = lab
            .wait_until(id, "MAencryptionMultiMaster raised", WAIT, |s| {
                has_alarm(s, AlarmName::MultiMaster, other)
            })
            .await?;
        let al = s.alarms.iter().find(|x| x.key.name == AlarmName::MultiMaster).expect("checked");
        println!(
            "   {id}: ALARM {} ({}) about {other} after {} ms",
            al.key.name,
            al.severity,
            t.elapsed().as_millis()
        );
        println!("      cause:  {}", al.cause);
        println!("      remedy: {}", al.remedy);
    }
    let (c, d) = (lab.status("c").await?, lab.status("d").await?);
    println!(
        "   no key crossed: c keeps domain {} ({}), d keeps domain {} ({})",
        domain(&c),
        versions(&c),
        domain(&d),
        versions(&d)
    );

    println!("11. d's administrator disables encryption on d (it archived nothing yet)");
    lab.daemon("d")?
        .command(Command::Disable {
            password: Password::new("Other-Passw0rd-for-d"),
            i_understand_data_loss: true,
        })
        .await?;
    let t = Instant::now();
    for (id, other) in [("c", "d"), ("d", "c")] {
        lab.wait_until(id, "MAencryptionMultiMaster cleared", WAIT, |s| {
            !has_alarm(s, AlarmName::MultiMaster, other)
        })
        .await?;
        println!(
            "   {id}: MAencryptionMultiMaster about {other} cleared ({} ms)",
            t.elapsed().as_millis()
        );
    }
    let c = lab.status("c").await?;
    println!("   c is still {} of a with versions {}", c.role, versions(&c));
    Ok(())
}

/// `--keep`: the network stays up, with the commands to try next, until Ctrl-C.
async fn keep_running(lab: &Lab) -> Result<(), LabError> {
    let d = lab.dir().display();
    println!("\nThe network is still running. In another terminal, try:");
    println!("  imcrypt status --config {d}/b.toml");
    println!("  imcrypt peers --config {d}/c.toml");
    println!("  imcrypt alarms --config {d}/c.toml");
    println!("  imcrypt key rotate --config {d}/a.toml");
    println!(
        "  imcrypt view --db sqlite:{d}/archive.db --export {d}/export.json --private-key {d}/admin.pem"
    );
    println!(
        "  imcrypt key download --public-key {d}/admin.pub.pem --out {d}/export2.json --config {d}/a.toml"
    );
    println!("     (the password of a is {PASSWORD})");
    let a = lab.daemon("a")?.admin_addr();
    println!(
        "Or open a's web console, https://{a}/ui/ (docs/console.md), with the token in \
         {d}/state/a/admin.token; its certificate names the cluster \"a\", signed by \
         {d}/pki/ca.pem, so the browser asks you to accept it."
    );
    println!("Press Ctrl-C to stop the clusters and remove {d}.");
    tokio::signal::ctrl_c().await.map_err(|e| step("Ctrl-C")(e.to_string()))?;
    Ok(())
}
