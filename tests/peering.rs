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
