//! The hot path wired into the daemon: a router on a slave cluster encrypts through its
//! daemon's socket with the domain key its master made, follows a rotation, and is told
//! "encryption off" after a disable. Records open with the domain's key ring.

mod support;

use imcrypt::crypto::aead::AeadImpl;
use imcrypt::crypto::record::{RecordHeader, RecordOpener};
use imcrypt::hotpath::{Client, ClientConfig, Encrypted};
use support::*;

async fn seal_one(client: &Client, meta: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    match client.encrypt(meta, body).await.unwrap() {
        Encrypted::Sealed(b) => Some(b.to_vecs().remove(0)),
        Encrypted::Off => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_on_a_slave_encrypts_with_the_domain_key_through_rotation_and_disable() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a", "b"]);
        lab.spec_mut("b").hotpath = true;
        for id in ["a", "b"] {
            lab.start(id).await.unwrap();
        }
        let client = Client::new(ClientConfig::new(lab.hotpath_socket("b")));
        // Encryption off: the router is told so, and stores plaintext by its policy.
        assert_eq!(seal_one(&client, b"m0", b"before").await, None);

        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        let mut ring = lab.daemon("b").unwrap().key_ring();
        let first =
            wait_for("b's hot path to start encrypting once b is a slave", WAIT, async || {
                seal_one(&client, b"row-1", b"hello from b").await
            })
            .await;
        let h = RecordHeader::parse(&first).unwrap();
        assert_eq!((h.cluster, h.key_version.get()), ("b", 1));

        lab.daemon("a").unwrap().command(Command::RotateKey).await.unwrap();
        lab.wait_until("b", "key v2", WAIT, |s| s.primary_version.map(|v| v.get()) == Some(2))
            .await
            .unwrap();
        let second = wait_for("new records to use the new primary version", WAIT, async || {
            let r = seal_one(&client, b"row-2", b"after rotation").await.unwrap();
            (RecordHeader::parse(&r).unwrap().key_version.get() == 2).then_some(r)
        })
        .await;

        // The ring b holds (the same as a's export would give) opens both records.
        let held = ring.borrow_and_update().clone().unwrap();
        let mut op = RecordOpener::new(&held, AeadImpl::RustCrypto);
        assert_eq!(&op.open(&first, b"row-1").unwrap()[..], b"hello from b");
        assert_eq!(&op.open(&second, b"row-2").unwrap()[..], b"after rotation");

        lab.daemon("a").unwrap().command(disable_domain()).await.unwrap();
        lab.wait_until("b", "off", WAIT, |s| s.role == Role::Off).await.unwrap();
        wait_for("the router to be told encryption is off after the disable", WAIT, async || {
            seal_one(&client, b"row-3", b"x").await.is_none().then_some(())
        })
        .await;
        drop(client);
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_encrypts_from_its_first_answer_never_saying_off() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a"]);
        lab.spec_mut("a").hotpath = true;
        lab.start("a").await.unwrap();
        lab.daemon("a").unwrap().command(enable(false)).await.unwrap();
        for round in 0..5 {
            lab.restart("a").await.unwrap();
            // A router that was waiting reconnects at once: its very first answer is sealed.
            let client = Client::new(ClientConfig::new(lab.hotpath_socket("a")));
            let first = seal_one(&client, b"row", b"after restart").await;
            assert!(first.is_some(), "round {round}: the first answer after a restart was OFF");
            drop(client);
        }
        lab.stop_all().await;
    })
    .await;
}
