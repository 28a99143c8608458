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

/// Cluster a with encryption on, its hot path also on TCP (mutual TLS) at the returned
/// address; node1 of a has a certificate from a's CA (`imcrypt pki add`).
async fn cluster_with_tcp_hot_path() -> (tempfile::TempDir, Lab, imcrypt::demo::ReservedPort) {
    let (d, mut lab) = mesh(&["a"]);
    let port = imcrypt::demo::ReservedPort::new().unwrap();
    lab.spec_mut("a").hotpath = true;
    lab.spec_mut("a").extra_config =
        format!("[hotpath.tcp]\nlisten = \"127.0.0.1:{}\"\n", port.port());
    let pki = lab.dir().join("pki");
    let r =
        imcrypt(&["pki", "add", "--dir", pki.to_str().unwrap(), "--clusters", "node1"], "").await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    lab.start("a").await.unwrap();
    lab.daemon("a").unwrap().command(enable(false)).await.unwrap();
    (d, lab, port)
}

/// `tcp+tls://127.0.0.1:PORT?…` with the certificate `name`.pem of `pki` (the server is a).
fn tcp_endpoint(port: u16, pki: &std::path::Path, name: &str) -> imcrypt::hotpath::Endpoint {
    let f = |n: &str| pki.join(n).display().to_string();
    format!(
        "tcp+tls://127.0.0.1:{port}?cert={}&key={}&ca={}&server_name=a",
        f(&format!("{name}.pem")),
        f(&format!("{name}.key")),
        f("ca.pem")
    )
    .parse()
    .unwrap()
}

/// TLS handshake and HELLO with `tls`; `Ok` when the server answers WELCOME.
async fn hello_over(port: u16, tls: std::sync::Arc<rustls::ClientConfig>) -> Result<(), String> {
    use imcrypt::hotpath::frame;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut hello = Vec::new();
    frame::encode_hello(&mut hello, 1, 1); // protocol version 1 (docs/hotpath.md)
    s.write_all(&hello).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    loop {
        if let Some((r, _)) = frame::decode_response(&buf, 4096).map_err(|e| e.to_string())? {
            return match r {
                frame::Response::Welcome { .. } => Ok(()),
                other => Err(format!("{other:?}")),
            };
        }
        if s.read_buf(&mut buf).await.map_err(|e| format!("read: {e}"))? == 0 {
            return Err("closed".into());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_on_another_node_seals_over_tcp_with_its_node_certificate() {
    bounded(async {
        let (_d, mut lab, port) = cluster_with_tcp_hot_path().await;
        let pki = lab.dir().join("pki");
        let client = Client::new(ClientConfig::to(tcp_endpoint(port.port(), &pki, "node1")));
        let sealed = wait_for("a's hot path to encrypt over TCP", WAIT, async || {
            seal_one(&client, b"row-1", b"from node1 over TLS").await
        })
        .await;
        let ring = lab.daemon("a").unwrap().key_ring().borrow().clone().unwrap();
        let mut op = RecordOpener::new(&ring, AeadImpl::RustCrypto);
        assert_eq!(&op.open(&sealed, b"row-1").unwrap()[..], b"from node1 over TLS");
        // The Unix socket serves as before, beside it.
        let local = Client::new(ClientConfig::new(lab.hotpath_socket("a")));
        assert!(seal_one(&local, b"row-2", b"local").await.is_some());
        drop((client, local));
        // Another process: `imcrypt archive` on "node1", sealing through the TCP listener.
        let db = lab.dir().join("node1-archive.db");
        let endpoint = match tcp_endpoint(port.port(), &pki, "node1") {
            imcrypt::hotpath::Endpoint::Tls(t) => format!(
                "tcp+tls://{}?cert={}&key={}&ca={}&server_name=a",
                t.addr,
                t.cert.display(),
                t.key.display(),
                t.ca.display()
            ),
            other => panic!("{other:?}"),
        };
        let event = serde_json::json!({"message_id": "m1", "from": "alice@example.com",
            "to": ["bob@example.com"], "timestamp": 1000, "direction": "inbound",
            "body": "sealed on another node"});
        let db_url = format!("sqlite:{}", db.display());
        let r =
            imcrypt(&["archive", "--db", &db_url, "--hotpath", &endpoint], &format!("{event}\n"))
                .await;
        assert_eq!(r.code, 0, "{}", r.stderr);
        let ack: serde_json::Value =
            serde_json::from_str(r.stdout.lines().next().unwrap()).unwrap();
        assert_eq!(ack["result"], "archived", "{ack}");
        let row: (bool, Vec<u8>) = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT encrypted, payload FROM imcrypt_archive", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert!(row.0, "the row is encrypted");
        assert!(!String::from_utf8_lossy(&row.1).contains("sealed on another node"));
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_no_node_of_this_cluster_or_no_certificate_is_refused_in_the_handshake() {
    bounded(async {
        let (_d, mut lab, port) = cluster_with_tcp_hot_path().await;
        let pki = lab.dir().join("pki");
        let p = port.port();
        let cfg = |e: imcrypt::hotpath::Endpoint| match e {
            imcrypt::hotpath::Endpoint::Tls(t) => t.client_config().unwrap(),
            other => panic!("{other:?}"),
        };
        hello_over(p, cfg(tcp_endpoint(p, &pki, "node1"))).await.expect("node1 is welcome");
        // The cluster's own certificate: the right CA, but it names no node.
        let e = hello_over(p, cfg(tcp_endpoint(p, &pki, "a"))).await.unwrap_err();
        assert!(e.contains("alert") || e.contains("closed"), "{e}");
        // Another cluster's CA, though its certificate says node1.
        let other = tempfile::tempdir().unwrap();
        let o = other.path().join("pki");
        let r = imcrypt(&["pki", "init", "--out", o.to_str().unwrap(), "--clusters", "node1"], "")
            .await;
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut foreign = match tcp_endpoint(p, &o, "node1") {
            imcrypt::hotpath::Endpoint::Tls(t) => t,
            other => panic!("{other:?}"),
        };
        foreign.ca = pki.join("ca.pem");
        let e = hello_over(p, foreign.client_config().unwrap()).await.unwrap_err();
        assert!(e.contains("alert") || e.contains("closed"), "{e}");
        // No certificate at all.
        let e = hello_over(p, tls_client_trusting(&pki.join("ca.pem"))).await.unwrap_err();
        assert!(e.contains("alert") || e.contains("closed"), "{e}");
        lab.stop_all().await;
    })
    .await;
}
