//! Peering between clusters that each have a CA of their own: real daemons (tasks of this
//! process) on 127.0.0.1, each peer verified against that peer's CA only. Each test is bounded
//! in time and cleans up.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_with_a_ca_each_peer_when_each_is_given_the_others_ca() {
    bounded(async {
        let (_d, mut lab) = mesh_own_cas(&["a", "b"]);
        lab.start("a").await.unwrap();
        lab.start("b").await.unwrap();
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        let a = lab.status("a").await.unwrap();
        let b = lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        assert_eq!(b.domain, a.domain);
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_checked_against_the_wrong_ca_is_refused_in_both_directions() {
    bounded(async {
        let (_d, mut lab) = mesh_own_cas(&["a", "b"]);
        // a verifies b against a's own CA, which did not sign b's certificate.
        lab.spec_mut("a").peer_without_ca.insert(imcrypt::demo::cid("b"));
        lab.start("a").await.unwrap();
        lab.start("b").await.unwrap();
        let link_error = |s: &Status, peer: &str| {
            s.peers.iter().find(|p| p.id.as_str() == peer).and_then(|p| p.link.last_error.clone())
        };
        // a refuses b's certificate when it dials b ...
        let a = lab
            .wait_until("a", "b's certificate refused", WAIT, |s| {
                link_error(s, "b").is_some_and(|e| e.contains("certificate"))
            })
            .await
            .unwrap();
        let e = link_error(&a, "b").unwrap();
        assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
        // ... and b's certificate, which chains to no CA a knows, when b dials a.
        let b = lab
            .wait_until("b", "its link to a refused", WAIT, |s| link_error(s, "a").is_some())
            .await
            .unwrap();
        // Neither has heard from the other.
        for (s, peer) in [(&a, "b"), (&b, "a")] {
            let p = s.peers.iter().find(|p| p.id.as_str() == peer).unwrap();
            assert_eq!(p.last_hello_unix_ms, None, "{p:?}");
        }
        lab.stop_all().await;
    })
    .await;
}

// ----- peering by token: clusters with a CA each, configured with no peer at all ----------

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use imcrypt::audit::Request;
use imcrypt::demo::cid;
use imcrypt::ids::ClusterId;
use imcrypt::peer::establish::PeeringError;

const HOUR: Duration = Duration::from_secs(3600);

/// Clusters `ids`, each with a CA of its own (`imcrypt pki init` per cluster), started with no
/// peer configured: only peering tokens peer them.
async fn unpeered(ids: &[&str]) -> (tempfile::TempDir, Lab) {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::with_own_cas(dir.path(), ids).unwrap();
    for id in ids {
        lab.start(id).await.unwrap();
    }
    (dir, lab)
}

/// A token issued by `issuer` for `for_cluster`.
async fn token(lab: &Lab, issuer: &str, for_cluster: &str, valid_for: Duration) -> String {
    let c = lab.daemon(issuer).unwrap().control();
    let t = c.peering_token(cid(for_cluster), valid_for, Request::local()).await.unwrap();
    t.token.as_str().to_owned()
}

async fn establish(lab: &Lab, on: &str, token: &str) -> Result<ClusterId, PeeringError> {
    lab.daemon(on).unwrap().control().establish_peering(token, Request::local()).await
}

/// The peers of `id` and where each came from.
async fn peers_of(lab: &Lab, id: &str) -> Vec<(String, String)> {
    let l = lab.daemon(id).unwrap().control().peerings().await.unwrap();
    l.peers.into_iter().map(|p| (p.cluster, p.source)).collect()
}

fn by_token(peer: &str) -> Vec<(String, String)> {
    vec![(peer.to_owned(), "token".to_owned())]
}

/// Waits until `id` has heard a hello from `peer` (their link works).
async fn heard(lab: &Lab, id: &str, peer: &str) {
    let what = format!("{id} to hear from {peer}");
    lab.wait_until(id, &what, WAIT, |s| {
        s.peers.iter().any(|p| p.id.as_str() == peer && p.last_hello_unix_ms.is_some())
    })
    .await
    .unwrap();
}

fn audit_text(lab: &Lab, id: &str) -> String {
    std::fs::read_to_string(lab.dir().join(format!("state/{id}/audit.log"))).unwrap_or_default()
}

/// `token` with its JSON document changed by `change`.
fn rewritten(token: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
    let body = token.strip_prefix("imcrypt-peering-v1.").unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
    change(&mut doc);
    format!("imcrypt-peering-v1.{}", URL_SAFE_NO_PAD.encode(doc.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_commands_peer_clusters_with_a_ca_each_and_the_peering_and_enrolment_survive_restarts()
{
    bounded(async {
        let (_d, mut lab) = unpeered(&["a", "b"]).await;
        let cfg = |id: &str| lab.dir().join(format!("{id}.toml"));
        let (cfg_a, cfg_b) = (cfg("a"), cfg("b"));
        let o =
            imcrypt(&["peering", "token", "--for", "b", "--expires", "10m", "-c", s(&cfg_a)], "")
                .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let token = o.stdout.trim().to_owned();
        assert!(token.starts_with("imcrypt-peering-v1.") && !token.contains(char::is_whitespace));
        assert!(o.stderr.contains("valid until") && o.stderr.contains("only once"), "{}", o.stderr);
        // Read from standard input: the token stays out of the shell's history.
        let o = imcrypt(&["peering", "establish", "-c", s(&cfg_b)], &token).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("cluster a is now a peer"), "{}", o.stdout);
        assert_eq!(peers_of(&lab, "a").await, by_token("b"));
        assert_eq!(peers_of(&lab, "b").await, by_token("a"));
        let o = imcrypt(&["peering", "list", "-c", s(&cfg_a)], "").await;
        assert!(o.stdout.contains("b ") && o.stdout.contains("token"), "{}", o.stdout);
        // The token is in no audit record (its secret part is the tail of the text).
        let tail = &token[token.len() - 40..];
        for id in ["a", "b"] {
            let trail = audit_text(&lab, id);
            assert!(trail.contains("peering."), "{id}: {trail}");
            assert!(!trail.contains(tail), "the token is in {id}'s audit trail");
        }

        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        lab.restart("a").await.unwrap();
        lab.restart("b").await.unwrap();
        assert_eq!(peers_of(&lab, "a").await, by_token("b"));
        assert_eq!(peers_of(&lab, "b").await, by_token("a"));
        // Both links work again, each side verifying the other against the CA it learnt.
        heard(&lab, "a", "b").await;
        heard(&lab, "b", "a").await;
        let b = lab.wait_until("b", "still slave of a", WAIT, is_slave_of("a")).await.unwrap();
        assert_eq!(b.domain, lab.status("a").await.unwrap().domain);
        lab.stop_all().await;
    })
    .await;
}

/// `on` presents `token` to a; it is refused by a with a reason containing `why`, and
/// neither a nor `on` changed.
async fn refused(lab: &Lab, on: &str, token: &str, why: &str) {
    let control = |id: &str| lab.daemon(id).unwrap().control();
    let (a, here) = (control("a").peerings().await.unwrap(), control(on).peerings().await.unwrap());
    let e = establish(lab, on, token).await.unwrap_err();
    assert!(matches!(e, PeeringError::Refused { .. }), "{e}");
    assert!(e.to_string().contains(why), "{e}");
    assert_eq!(control("a").peerings().await.unwrap(), a, "nothing changed on a");
    assert_eq!(control(on).peerings().await.unwrap(), here, "nothing changed on {on}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_expired_misaddressed_or_altered_token_is_refused_saying_why_and_changes_nothing() {
    bounded(async {
        let (_d, mut lab) = unpeered(&["a", "b", "c"]).await;
        let for_c = token(&lab, "a", "c", HOUR).await;
        refused(&lab, "b", &for_c, "made for cluster c, not for cluster b").await;

        let good = token(&lab, "a", "b", HOUR).await;
        let altered = rewritten(&good, |d| {
            let mut secret = URL_SAFE_NO_PAD.decode(d["secret"].as_str().unwrap()).unwrap();
            secret[0] ^= 1;
            d["secret"] = URL_SAFE_NO_PAD.encode(secret).into();
        });
        refused(&lab, "b", &altered, "matches no peering token").await;

        let short = token(&lab, "a", "b", Duration::from_millis(300)).await;
        // Lets the token expire (this test must let time pass for that).
        tokio::time::sleep(Duration::from_millis(600)).await;
        refused(&lab, "b", &short, "expired").await;

        // None of the refusals used `good` up; once used, it is refused to anyone.
        establish(&lab, "b", &good).await.unwrap();
        refused(&lab, "c", &good, "already used").await;
        assert_eq!(peers_of(&lab, "a").await, by_token("b"));
        assert!(peers_of(&lab, "c").await.is_empty());

        // Each refusal is in the issuer's audit trail, with its reason.
        let trail = audit_text(&lab, "a");
        let refusals: Vec<&str> = (trail.lines())
            .filter(|l| l.contains("\"peering.accept\"") && l.contains("\"refused\""))
            .collect();
        assert_eq!(refusals.len(), 4, "{trail}");
        assert!(refusals.iter().any(|l| l.contains("expired")), "{refusals:?}");
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_with_another_ca_is_refused_by_the_pin_before_the_token_is_sent() {
    bounded(async {
        let (_d, mut lab) = unpeered(&["a", "b"]).await;
        // The man in the middle: a daemon that calls itself a, with a CA of its own.
        let (_f, mut fake) = unpeered(&["a"]).await;
        let good = token(&lab, "a", "b", HOUR).await;
        let at_fake = fake.peer_listen("a").unwrap().to_string();
        let diverted = rewritten(&good, |d| d["addresses"] = serde_json::json!([at_fake]));
        let e = establish(&lab, "b", &diverted).await.unwrap_err();
        assert!(matches!(e, PeeringError::Pin { .. }), "{e}");
        assert!(e.to_string().contains("nothing of the token was sent"), "{e}");
        assert!(!audit_text(&fake, "a").contains("peering."), "the fake got a request");
        assert!(peers_of(&lab, "b").await.is_empty());
        // The real token is untouched, and works with the real a.
        establish(&lab, "b", &good).await.unwrap();
        lab.stop_all().await;
        fake.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_peering_is_deleted_on_either_side_neither_side_keeps_the_other() {
    bounded(async {
        let (_d, mut lab) = unpeered(&["a", "b"]).await;
        for (deleter, other) in [("b", "a"), ("a", "b")] {
            let t = token(&lab, "a", "b", HOUR).await;
            establish(&lab, "b", &t).await.unwrap();
            heard(&lab, "a", "b").await;
            heard(&lab, "b", "a").await;
            // While peered, each takes the other's certificate (400: `{}` is no peer message).
            for (from, to) in [("a", "b"), ("b", "a")] {
                assert_eq!(post_as_peer(&lab, from, to).await, Ok(400), "{from} -> {to}");
            }
            let c = lab.daemon(deleter).unwrap().control();
            c.delete_peering(cid(other), Request::local()).await.unwrap();
            assert!(peers_of(&lab, deleter).await.is_empty());
            let what = format!("{other} to learn that {deleter} deleted the peering");
            wait_for(&what, WAIT, async || peers_of(&lab, other).await.is_empty().then_some(()))
                .await;
            // Neither lists the other: its link is down and its certificate no longer taken,
            // in either direction.
            for id in ["a", "b"] {
                assert!(lab.status(id).await.unwrap().peers.is_empty(), "{id}");
            }
            for (from, to) in [("a", "b"), ("b", "a")] {
                let e = post_as_peer(&lab, from, to).await.unwrap_err();
                assert!(e.contains("TLS") || e.contains("HTTP"), "{from} -> {to}: {e}");
            }
            assert!(audit_text(&lab, other).contains("\"deleted_by\":\"peer\""));
        }
        lab.stop_all().await;
    })
    .await;
}

/// `POST /v1/peer/message` with body `{}` to `to`'s peer listener, presenting `from`'s own
/// certificate and trusting `to`'s CA: the status, or why there was none.
async fn post_as_peer(lab: &Lab, from: &str, to: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = |id: &str, file: &str| lab.dir().join(format!("pki/{id}/{file}"));
    let files = imcrypt::peer::tls::TlsFiles {
        cert: pki(from, &format!("{from}.pem")),
        key: pki(from, &format!("{from}.key")),
        ca: pki(from, "ca.pem"),
    };
    let tls = imcrypt::peer::tls::PeerTls::load(
        &files,
        &cid(from),
        &[(cid(to), Some(pki(to, "ca.pem")))],
    )
    .unwrap();
    let client = tls.client_for(&cid(to)).unwrap();
    let tcp = tokio::net::TcpStream::connect(lab.peer_listen(to).unwrap()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(to.to_owned()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let req = format!(
        "POST /v1/peer/message HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    // TLS 1.3: a refused client certificate shows at the first read or write, not at connect.
    s.write_all(req.as_bytes()).await.map_err(|e| format!("TLS: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| format!("TLS: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("HTTP: no status in {text:?}"))
}

/// One HTTP/1.1 request over TLS with no client certificate; the whole answer.
async fn without_certificate(lab: &Lab, method: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let client = tls_client_trusting(&lab.dir().join("pki/a/ca.pem"));
    let tcp = tokio::net::TcpStream::connect(lab.peer_listen("a").unwrap()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("a").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_client_certificate_gets_nothing_but_establish() {
    bounded(async {
        let (_d, mut lab) = unpeered(&["a", "b"]).await;
        let t = token(&lab, "a", "b", HOUR).await;
        establish(&lab, "b", &t).await.unwrap();
        // A peer message (an Unpeer in b's name) without b's certificate reaches nothing.
        let r = without_certificate(&lab, "POST", "/v1/peer/message", "\"unpeer\"").await;
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        assert!(r.contains("only POST /v1/peer/establish is served"), "{r}");
        let r = without_certificate(&lab, "GET", "/v1/peer/establish", "").await;
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        let r = without_certificate(&lab, "POST", "/v1/peer/establish", "{}").await;
        assert!(r.starts_with("HTTP/1.1 400") && r.contains("not an establish request"), "{r}");
        assert_eq!(peers_of(&lab, "a").await, by_token("b"), "a still peers b");
        lab.stop_all().await;
    })
    .await;
}
