//! `imcrypt demo`: the main job in one command. Three clusters on 127.0.0.1, encryption
//! enabled on a and spread to b and c, a key rotation, and a fourth cluster d, master of its
//! own domain, peered with c to raise `MAencryptionMultiMaster` on both sides and clear it.

use std::time::{Duration, Instant};

use super::{Lab, LabError, has_alarm};
use crate::alarm::AlarmName;
use crate::cluster::Command;
use crate::crypto::password::Password;
use crate::daemon::Status;

const WAIT: Duration = Duration::from_secs(20);

fn versions(s: &Status) -> String {
    let v: Vec<String> = s.key_versions.iter().map(|v| v.to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn domain(s: &Status) -> String {
    s.domain.map(|d| d.to_string()).unwrap_or_else(|| "-".into())
}

pub async fn run() -> Result<(), LabError> {
    let dir = tempfile::Builder::new()
        .prefix("imcrypt-demo-")
        .tempdir()
        .map_err(|source| LabError::Io { path: std::env::temp_dir(), source })?;
    println!("imcrypt demo: clusters a, b and c on 127.0.0.1 (work dir {})", dir.path().display());
    println!("(RUST_LOG=info shows the daemons' structured logs on stderr)");
    let result = story(dir.path()).await;
    if let Err(e) = &result {
        println!("\nthe demo failed: {e}");
    }
    println!("\ncleaning up {}", dir.path().display());
    result
}

async fn story(dir: &std::path::Path) -> Result<(), LabError> {
    let mut lab = Lab::new(dir, &["a", "b", "c", "d"])?;
    println!("\n1. a development CA and one certificate per cluster, its id as DNS name (pki/)");
    for (x, y) in [("a", "b"), ("a", "c"), ("b", "c")] {
        lab.peer(x, y);
    }
    for id in ["a", "b", "c"] {
        lab.start(id).await?;
    }
    println!("2. started a, b and c, each peered with the other two over mutual TLS 1.3");

    let password = Password::new("Demo-Passw0rd-for-a");
    let t = Instant::now();
    lab.daemon("a")?.command(Command::Enable { password: password.clone(), remote: true }).await?;
    let a = lab.status("a").await?;
    println!(
        "3. encryption enabled on a with \"enable on remote clusters\": a is master of domain {}, key versions {}",
        domain(&a),
        versions(&a)
    );
    for id in ["b", "c"] {
        let s = lab
            .wait_until(id, "slave of a", WAIT, |s| {
                s.role == "slave" && s.master.as_ref().is_some_and(|m| m.as_str() == "a")
            })
            .await?;
        println!(
            "   {id}: slave of a in domain {}, key versions {} ({} ms after enable)",
            domain(&s),
            versions(&s),
            t.elapsed().as_millis()
        );
    }

    let t = Instant::now();
    lab.daemon("a")?.command(Command::RotateKey).await?;
    let a = lab.status("a").await?;
    let primary = a.primary_version;
    println!(
        "4. key rotated on a: versions {}, primary {}",
        versions(&a),
        primary.map(|v| v.to_string()).unwrap_or_default()
    );
    for id in ["b", "c"] {
        let s = lab
            .wait_until(id, "holds the new key version", WAIT, |s| s.primary_version == primary)
            .await?;
        println!(
            "   {id}: holds versions {} with primary {} ({} ms after rotation)",
            versions(&s),
            primary.map(|v| v.to_string()).unwrap_or_default(),
            t.elapsed().as_millis()
        );
    }

    println!("5. cluster d starts on its own and its administrator enables encryption there");
    lab.start("d").await?;
    lab.daemon("d")?
        .command(Command::Enable { password: Password::new("Other-Passw0rd-for-d"), remote: false })
        .await?;
    let d = lab.status("d").await?;
    println!("   d: master of its own domain {}", domain(&d));

    println!("6. c is restarted with d added to its peers; d is peered with c");
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

    println!("7. d's administrator disables encryption on d (it archived nothing yet)");
    lab.daemon("d")?
        .command(Command::DisableOnMaster {
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

    lab.stop_all().await;
    println!("8. stopped a, b, c and d");
    Ok(())
}
